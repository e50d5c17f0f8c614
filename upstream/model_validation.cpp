// Validation of names, scopes, comments and values, and the parsers of write request
// bodies built on it (model.hpp).
#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upstream/model.hpp"

namespace sproxy::upstream {

using nlohmann::json;

// ---------------------------------------------------------------------------------------
// Validation

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool is_name_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) || c == '_' || c == '-';
}

constexpr std::size_t kMaxNameBytes = 255;

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view s) {
  std::size_t i = 0;
  const std::size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + len > n) return false;
    const auto c1 = static_cast<unsigned char>(s[i + 1]);
    if (c1 < lo || c1 > hi) return false;
    for (std::size_t k = 2; k < len; ++k) {
      const auto ck = static_cast<unsigned char>(s[i + k]);
      if (ck < 0x80 || ck > 0xBF) return false;
    }
    i += len;
  }
  return true;
}

}  // namespace

Status validate_name(std::string_view name) {
  if (name.empty()) return errors::validation("secret_name_empty");
  if (name.size() > kMaxNameBytes || !std::all_of(name.begin(), name.end(), is_name_char)) {
    return errors::validation("secret_name_invalid");
  }
  return Ok{};
}

bool is_known_scope(std::string_view scope) {
  return std::find(std::begin(kScopeNames), std::end(kScopeNames), scope) != std::end(kScopeNames);
}

Result<std::vector<std::string>> validate_scopes(const json& scopes) {
  if (!scopes.is_array() || scopes.empty()) return errors::validation("secret_scope_invalid");
  std::vector<std::string> out;
  out.reserve(scopes.size());
  for (const auto& s : scopes) {
    if (!s.is_string() || !is_known_scope(s.get_ref<const std::string&>())) {
      return errors::validation("secret_scope_invalid");
    }
    out.push_back(s.get<std::string>());
  }
  sort_unique(out);
  return out;
}

Result<std::optional<std::string>> validate_comment(const json& comment) {
  if (comment.is_null()) return std::optional<std::string>{};
  if (!comment.is_string()) return errors::invalid_json_body();
  const auto& s = comment.get_ref<const std::string&>();
  if (s.size() > kMaxCommentBytes) return errors::validation("secret_comment_too_long");
  return std::optional<std::string>{s};
}

Status validate_value(std::string_view value, std::size_t max_bytes) {
  if (value.empty()) return errors::validation("secret_value_empty");
  if (value.size() > max_bytes) return errors::secret_value_too_long();
  if (!is_valid_utf8(value)) return errors::validation("secret_value_invalid");
  return Ok{};
}

// ---------------------------------------------------------------------------------------
// Body parsers

namespace {

std::optional<json> parse_json(std::string_view body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

// A required name: missing or empty -> secret_name_empty, not a string -> invalid_json_body.
Result<std::string> required_name(const json& obj) {
  auto it = obj.find("name");
  if (it == obj.end()) return errors::validation("secret_name_empty");
  if (!it->is_string()) return errors::invalid_json_body();
  const auto& name = it->get_ref<const std::string&>();
  if (auto st = validate_name(name); !st) return st.error();
  return name;
}

Result<std::vector<std::string>> required_scopes(const json& obj) {
  auto it = obj.find("scopes");
  if (it == obj.end()) return errors::validation("secret_scope_invalid");
  // Cloudflare names an empty list apart from a wrong one on create and duplicate.
  if (it->is_array() && it->empty()) return errors::validation("secret_scopes_empty");
  return validate_scopes(*it);
}

Result<std::optional<std::string>> optional_comment(const json& obj) {
  auto it = obj.find("comment");
  if (it == obj.end()) return std::optional<std::string>{};
  return validate_comment(*it);
}

Result<std::string> checked_value(const json& v, std::size_t max_value_bytes) {
  if (!v.is_string()) return errors::invalid_json_body();
  const auto& s = v.get_ref<const std::string&>();
  if (auto st = validate_value(s, max_value_bytes); !st) return st.error();
  return s;
}

}  // namespace

Result<StoreCreate> parse_store_create(std::string_view body) {
  auto j = parse_json(body);
  if (!j || !j->is_object()) return errors::invalid_json_body();
  auto name = required_name(*j);
  if (!name) return name.error();
  return StoreCreate{std::move(name).value()};
}

Result<std::vector<SecretCreate>> parse_secret_create(std::string_view body,
                                                      std::size_t max_value_bytes) {
  auto j = parse_json(body);
  if (!j || !j->is_array() || j->empty()) return errors::invalid_json_body();
  // Reject any shape problem before any rule violation, so the answer does not depend on
  // which item happens to come first.
  for (const auto& item : *j) {
    if (!item.is_object()) return errors::invalid_json_body();
  }

  std::vector<SecretCreate> out;
  out.reserve(j->size());
  for (const auto& item : *j) {
    SecretCreate c;
    auto name = required_name(item);
    if (!name) return name.error();
    c.name = std::move(name).value();

    auto value_it = item.find("value");
    if (value_it == item.end()) return errors::validation("secret_value_empty");
    auto value = checked_value(*value_it, max_value_bytes);
    if (!value) return value.error();
    c.value = std::move(value).value();

    auto scopes = required_scopes(item);
    if (!scopes) return scopes.error();
    c.scopes = std::move(scopes).value();

    auto comment = optional_comment(item);
    if (!comment) return comment.error();
    c.comment = std::move(comment).value();

    const bool repeated = std::any_of(
        out.begin(), out.end(), [&](const SecretCreate& prev) { return prev.name == c.name; });
    if (repeated) return errors::name_taken(c.name);
    out.push_back(std::move(c));
  }
  return out;
}

Result<SecretPatch> parse_secret_patch(std::string_view body, std::size_t max_value_bytes) {
  auto j = parse_json(body);
  if (!j || !j->is_object()) return errors::invalid_json_body();
  if (j->contains("name")) return errors::secret_name_immutable();

  SecretPatch p;
  if (auto it = j->find("value"); it != j->end()) {
    auto value = checked_value(*it, max_value_bytes);
    if (!value) return value.error();
    p.value = std::move(value).value();
  }
  if (auto it = j->find("scopes"); it != j->end()) {
    auto scopes = validate_scopes(*it);
    if (!scopes) return scopes.error();
    p.scopes = std::move(scopes).value();
  }
  if (auto it = j->find("comment"); it != j->end()) {
    auto comment = validate_comment(*it);
    if (!comment) return comment.error();
    p.comment = std::move(comment).value();
  }
  return p;
}

Result<SecretDuplicate> parse_secret_duplicate(std::string_view body) {
  auto j = parse_json(body);
  if (!j || !j->is_object()) return errors::invalid_json_body();
  SecretDuplicate d;
  auto name = required_name(*j);
  if (!name) return name.error();
  d.name = std::move(name).value();
  auto scopes = required_scopes(*j);
  if (!scopes) return scopes.error();
  d.scopes = std::move(scopes).value();
  auto comment = optional_comment(*j);
  if (!comment) return comment.error();
  d.comment = std::move(comment).value();
  return d;
}

Result<BulkDelete> parse_bulk_delete(std::string_view body) {
  auto j = parse_json(body);
  if (!j || !j->is_object()) return errors::invalid_json_body();
  auto ids = j->find("ids");
  if (ids == j->end() || !ids->is_array() || ids->empty()) return errors::invalid_json_body();
  BulkDelete out;
  out.ids.reserve(ids->size());
  for (const auto& id : *ids) {
    if (!id.is_string()) return errors::invalid_json_body();
    const auto& s = id.get_ref<const std::string&>();
    if (std::find(out.ids.begin(), out.ids.end(), s) == out.ids.end()) out.ids.push_back(s);
  }
  return out;
}

}  // namespace sproxy::upstream
