// The model's JSON: resources to and from JSON (an upstream's answers are checked, not
// trusted), and the response envelope (model.hpp).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "upstream/model.hpp"

namespace sproxy::upstream {

using nlohmann::json;

// ---------------------------------------------------------------------------------------
// Resources

std::string_view to_string(SecretStatus s) {
  switch (s) {
    case SecretStatus::pending:
      return "pending";
    case SecretStatus::active:
      return "active";
  }
  return "pending";
}

std::optional<SecretStatus> secret_status_from(std::string_view name) {
  if (name == "pending") return SecretStatus::pending;
  if (name == "active") return SecretStatus::active;
  return std::nullopt;
}

void sort_unique(std::vector<std::string>& scopes) {
  std::sort(scopes.begin(), scopes.end());
  scopes.erase(std::unique(scopes.begin(), scopes.end()), scopes.end());
}

json to_json(const Store& s) {
  return json{{"id", s.id},
              {"account_id", s.account_id},
              {"name", s.name},
              {"created", format_timestamp(s.created)},
              {"modified", format_timestamp(s.modified)}};
}

json to_json(const Secret& s) {
  json j = json::object();
  j["id"] = s.id;
  j["store_id"] = s.store_id;
  j["name"] = s.name;
  j["comment"] = s.comment ? json(*s.comment) : json(nullptr);
  j["scopes"] = s.scopes;
  j["status"] = std::string(to_string(s.status));
  j["created"] = format_timestamp(s.created);
  j["modified"] = format_timestamp(s.modified);
  return j;
}

namespace {

// A JSON string as dump() writes it: printable ASCII without '"' or '\' is copied as it
// is; anything else goes through the library, so escapes and invalid UTF-8 come out the
// same.
void append_json_string(std::string& out, std::string_view s) {
  const bool plain = std::all_of(
      s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e && c != '"' && c != '\\'; });
  if (!plain) {
    out += json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
    return;
  }
  out += '"';
  out += s;
  out += '"';
}

}  // namespace

void append_json(std::string& out, const Secret& s) {
  // nlohmann::json objects keep their keys sorted: the same order here.
  out += R"({"comment":)";
  if (s.comment) {
    append_json_string(out, *s.comment);
  } else {
    out += "null";
  }
  // Timestamps are digits and punctuation: nothing to escape.
  out += R"(,"created":")";
  append_timestamp(out, s.created);
  out += '"';
  out += R"(,"id":)";
  append_json_string(out, s.id);
  out += R"(,"modified":")";
  append_timestamp(out, s.modified);
  out += '"';
  out += R"(,"name":)";
  append_json_string(out, s.name);
  out += R"(,"scopes":[)";
  for (std::size_t i = 0; i < s.scopes.size(); ++i) {
    if (i > 0) out += ',';
    append_json_string(out, s.scopes[i]);
  }
  out += R"(],"status":)";
  append_json_string(out, to_string(s.status));
  out += R"(,"store_id":)";
  append_json_string(out, s.store_id);
  out += '}';
}

json to_json(const Quota& q) { return json{{"secrets", {{"quota", q.quota}, {"usage", q.usage}}}}; }

namespace {

ApiError bad_upstream_resource() { return errors::upstream_failure("bad_upstream_resource"); }

const std::string* string_member(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return nullptr;
  return it->get_ptr<const std::string*>();
}

std::optional<Micros> time_member(const json& j, const char* key) {
  const std::string* s = string_member(j, key);
  if (s == nullptr) return std::nullopt;
  return parse_timestamp(*s);
}

std::optional<long> integer_member(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  if (it->is_number_unsigned()) {
    const auto v = it->get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(std::numeric_limits<long>::max())) return std::nullopt;
    return static_cast<long>(v);
  }
  if (it->is_number_integer()) return static_cast<long>(it->get<std::int64_t>());
  return std::nullopt;
}

}  // namespace

Result<Store> store_from_json(const json& j) {
  if (!j.is_object()) return bad_upstream_resource();
  const std::string* id = string_member(j, "id");
  const std::string* account_id = string_member(j, "account_id");
  const std::string* name = string_member(j, "name");
  const auto created = time_member(j, "created");
  const auto modified = time_member(j, "modified");
  if (id == nullptr || id->empty() || account_id == nullptr || name == nullptr || !created ||
      !modified) {
    return bad_upstream_resource();
  }
  return Store{*id, *account_id, *name, *created, *modified};
}

Result<Secret> secret_from_json(const json& j) {
  if (!j.is_object()) return bad_upstream_resource();
  Secret s;
  const std::string* id = string_member(j, "id");
  const std::string* store_id = string_member(j, "store_id");
  const std::string* name = string_member(j, "name");
  const std::string* status = string_member(j, "status");
  const auto created = time_member(j, "created");
  const auto modified = time_member(j, "modified");
  if (id == nullptr || id->empty() || store_id == nullptr || name == nullptr || status == nullptr ||
      !created || !modified) {
    return bad_upstream_resource();
  }
  s.id = *id;
  s.store_id = *store_id;
  s.name = *name;
  s.created = *created;
  s.modified = *modified;
  const auto parsed_status = secret_status_from(*status);
  if (!parsed_status) return bad_upstream_resource();
  s.status = *parsed_status;

  // A missing comment is the same as null.
  if (auto it = j.find("comment"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) return bad_upstream_resource();
    s.comment = it->get<std::string>();
  }

  // Scopes are kept as the upstream names them (a scope newer than this proxy is not a
  // reason to drop the secret), but normalised to the model's sorted, unique form.
  auto scopes = j.find("scopes");
  if (scopes == j.end() || !scopes->is_array()) return bad_upstream_resource();
  for (const auto& sc : *scopes) {
    if (!sc.is_string()) return bad_upstream_resource();
    s.scopes.push_back(sc.get<std::string>());
  }
  sort_unique(s.scopes);
  return s;
}

Result<Quota> quota_from_json(const json& j) {
  if (!j.is_object()) return bad_upstream_resource();
  auto secrets = j.find("secrets");
  if (secrets == j.end() || !secrets->is_object()) return bad_upstream_resource();
  const auto quota = integer_member(*secrets, "quota");
  const auto usage = integer_member(*secrets, "usage");
  if (!quota || !usage) return bad_upstream_resource();
  return Quota{*quota, *usage};
}

// ---------------------------------------------------------------------------------------
// Envelope

namespace {

json to_json(const ApiMessage& m) {
  json j = json::object();
  j["code"] = m.code;
  j["message"] = m.message;
  if (!m.error_chain.empty()) {
    json chain = json::array();
    for (const auto& c : m.error_chain) chain.push_back(to_json(c));
    j["error_chain"] = std::move(chain);
  }
  return j;
}

// Bytes that are not UTF-8 (e.g. an echoed request path) are replaced, never thrown on.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace

json to_json(const ResultInfo& info) {
  return json{{"page", info.page},
              {"per_page", info.per_page},
              {"count", info.count},
              {"total_count", info.total_count},
              {"total_pages", info.total_pages}};
}

std::string envelope_success(const json& result, const std::optional<ResultInfo>& info) {
  return envelope_success_raw(dump(result), info);
}

// Built by hand so the keys keep the contract's order (nlohmann::json sorts keys).
void append_envelope_success_raw(std::string& out, std::string_view result_json,
                                 const std::optional<ResultInfo>& info) {
  out += kEnvelopeSuccessHead;
  out += result_json;
  if (info) {
    out += R"(,"result_info":{"page":)";
    out += std::to_string(info->page);
    out += R"(,"per_page":)";
    out += std::to_string(info->per_page);
    out += R"(,"count":)";
    out += std::to_string(info->count);
    out += R"(,"total_count":)";
    out += std::to_string(info->total_count);
    out += R"(,"total_pages":)";
    out += std::to_string(info->total_pages);
    out += '}';
  }
  out += '}';
}

// In a string sized up front: cached envelopes keep their capacity for as long as they
// live.
std::string envelope_success_raw(std::string_view result_json,
                                 const std::optional<ResultInfo>& info) {
  constexpr std::size_t kResultInfoBytes = 128;  // keys and five numbers, with room
  std::string out;
  out.reserve(kEnvelopeSuccessHead.size() + result_json.size() + 1 + (info ? kResultInfoBytes : 0));
  append_envelope_success_raw(out, result_json, info);
  return out;
}

std::string envelope_error(const ApiError& error) {
  json errs = json::array();
  for (const auto& m : error.errors) errs.push_back(to_json(m));
  std::string out = R"({"success":false,"errors":)";
  out += dump(errs);
  out += R"(,"messages":[],"result":null})";
  return out;
}

}  // namespace sproxy::upstream
