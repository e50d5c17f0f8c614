#include "upstream/model.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <limits>
#include <stdexcept>

namespace sproxy::upstream {

using nlohmann::json;

// ---------------------------------------------------------------------------------------
// Errors

namespace errors {
namespace {

ApiError single(unsigned status, int code, std::string message) {
  ApiError e;
  e.status = status;
  e.errors.push_back(ApiMessage{code, std::move(message), {}});
  return e;
}

// "token" or "token: detail" (an empty detail adds nothing).
std::string with_detail(std::string_view token, std::string_view detail) {
  std::string s(token);
  if (!detail.empty()) {
    s += ": ";
    s += detail;
  }
  return s;
}

}  // namespace

ApiError invalid_json_body() { return single(400, 1001, "invalid_json_body"); }
ApiError validation(std::string_view token) { return single(400, 1001, std::string(token)); }
ApiError name_taken(std::string_view name) {
  return single(400, 1003, with_detail("secret_name_already_exists", name));
}
ApiError store_not_found() { return single(404, 1001, "store_not_found"); }
ApiError secret_not_found() { return single(404, 1001, "secret_not_found"); }
ApiError store_not_empty() { return single(409, 1003, "store_not_empty"); }
ApiError maximum_stores_exceeded() { return single(400, 1003, "maximum_stores_exceeded"); }
ApiError maximum_secrets_exceeded(long max) {
  return single(400, 1003, "maximum_secrets_exceeded: max " + std::to_string(max));
}
ApiError secret_value_too_long() { return single(400, 1001, "secret_value_too_long"); }
ApiError secret_name_immutable() { return single(400, 1001, "secret_name_immutable"); }
ApiError no_route() { return single(404, 7000, "No route for that URI"); }
ApiError invalid_account_route(std::string_view path) {
  ApiError e;
  e.status = 400;
  std::string msg = "Could not route to ";
  msg += path;
  msg += ", perhaps your object identifier is invalid?";
  e.errors.push_back(ApiMessage{7003, std::move(msg), {}});
  e.errors.push_back(ApiMessage{7000, "No route for that URI", {}});
  return e;
}
ApiError method_not_allowed() { return single(405, 7001, "Method not allowed for this route"); }
ApiError missing_credentials() {
  return single(400, 9106, "Missing X-Auth-Key, X-Auth-Email or Authorization headers");
}
ApiError invalid_request_headers() { return single(400, 6003, "Invalid request headers"); }
ApiError malformed_authorization() {
  ApiError e = invalid_request_headers();
  e.errors.front().error_chain.push_back(
      ApiMessage{6111, "Invalid format for Authorization header", {}});
  return e;
}
ApiError authentication_error() { return single(403, 10000, "Authentication error"); }
ApiError rate_limited(long retry_after_seconds) {
  ApiError e = single(429, 971, "Please wait and consider throttling your request speed");
  e.retry_after_seconds = retry_after_seconds;
  return e;
}
ApiError payload_too_large() { return single(413, 1001, "request_body_too_large"); }
ApiError headers_too_large() { return single(431, 1001, "request_headers_too_large"); }
ApiError service_unavailable(std::string_view detail) {
  return single(503, 1002, with_detail("service_unavailable", detail));
}
ApiError upstream_failure(std::string_view detail) {
  return single(502, 1002, with_detail("upstream_unavailable", detail));
}
ApiError gateway_timeout() { return single(504, 1002, "upstream_timeout"); }
ApiError internal_error() { return single(500, 1002, "internal_error"); }

}  // namespace errors

// ---------------------------------------------------------------------------------------
// Identifiers and time

namespace {

bool is_lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

constexpr Micros kMicrosPerSecond = 1'000'000;
constexpr std::int64_t kSecondsPerDay = 86'400;

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

struct CivilDate {
  std::int64_t year;
  unsigned month;
  unsigned day;
};

CivilDate civil_from_days(std::int64_t z) {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t y = static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2 ? 1 : 0);
  return {y, m, d};
}

bool is_leap_year(std::int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

unsigned days_in_month(std::int64_t y, unsigned m) {
  static constexpr std::array<unsigned, 12> kDays = {31, 28, 31, 30, 31, 30,
                                                     31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap_year(y) ? 29 : kDays[m - 1];
}

// Floor division / modulo, so times before the epoch format correctly.
std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  std::int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// `v` in decimal, zero-padded to `width` digits.
void append_padded(std::string& out, std::int64_t v, int width) {
  if (v < 0) {
    out += std::to_string(v);
    return;
  }
  char digits[20];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (int i = n; i < width; ++i) out += '0';
  while (n > 0) out += digits[--n];
}

// Parses exactly `n` decimal digits at `pos`.
std::optional<unsigned> parse_digits(std::string_view s, std::size_t pos, std::size_t n) {
  if (pos + n > s.size()) return std::nullopt;
  unsigned v = 0;
  for (std::size_t i = pos; i < pos + n; ++i) {
    if (!is_digit(s[i])) return std::nullopt;
    v = v * 10 + static_cast<unsigned>(s[i] - '0');
  }
  return v;
}

}  // namespace

bool is_valid_id(std::string_view id) {
  return id.size() == 32 && std::all_of(id.begin(), id.end(), is_lower_hex);
}

std::string new_id() {
  std::array<unsigned char, 16> b{};
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) {
    throw std::runtime_error("RAND_bytes failed: the CSPRNG is unavailable");
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(32);
  for (unsigned char c : b) {
    out += kHex[c >> 4];
    out += kHex[c & 0x0f];
  }
  return out;
}

void append_timestamp(std::string& out, Micros t) {
  const std::int64_t secs = floor_div(t, kMicrosPerSecond);
  const std::int64_t micros = t - secs * kMicrosPerSecond;
  const std::int64_t days = floor_div(secs, kSecondsPerDay);
  const std::int64_t sod = secs - days * kSecondsPerDay;
  const CivilDate date = civil_from_days(days);

  append_padded(out, date.year, 4);
  out += '-';
  append_padded(out, date.month, 2);
  out += '-';
  append_padded(out, date.day, 2);
  out += 'T';
  append_padded(out, sod / 3600, 2);
  out += ':';
  append_padded(out, (sod / 60) % 60, 2);
  out += ':';
  append_padded(out, sod % 60, 2);
  out += '.';
  append_padded(out, micros, 6);
  out += 'Z';
}

std::string format_timestamp(Micros t) {
  std::string out;
  out.reserve(27);
  append_timestamp(out, t);
  return out;
}

std::optional<Micros> parse_timestamp(std::string_view s) {
  // YYYY-MM-DDTHH:MM:SS[.fffffffff]Z
  if (s.size() < 20) return std::nullopt;
  const auto year = parse_digits(s, 0, 4);
  const auto month = parse_digits(s, 5, 2);
  const auto day = parse_digits(s, 8, 2);
  const auto hour = parse_digits(s, 11, 2);
  const auto minute = parse_digits(s, 14, 2);
  const auto second = parse_digits(s, 17, 2);
  if (!year || !month || !day || !hour || !minute || !second) return std::nullopt;
  if (s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
      s[16] != ':') {
    return std::nullopt;
  }
  if (*month < 1 || *month > 12 || *day < 1 || *day > days_in_month(*year, *month) || *hour > 23 ||
      *minute > 59 || *second > 59) {
    return std::nullopt;
  }

  std::size_t pos = 19;
  Micros fraction = 0;
  if (s[pos] == '.') {
    ++pos;
    const std::size_t start = pos;
    while (pos < s.size() && is_digit(s[pos])) {
      if (pos - start < 6) fraction = fraction * 10 + (s[pos] - '0');
      ++pos;
    }
    const std::size_t n = pos - start;
    if (n == 0 || n > 9) return std::nullopt;
    for (std::size_t i = n; i < 6; ++i) fraction *= 10;
  }
  if (pos + 1 != s.size() || (s[pos] != 'Z' && s[pos] != 'z')) return std::nullopt;

  const std::int64_t days = days_from_civil(*year, *month, *day);
  const std::int64_t secs = days * kSecondsPerDay + *hour * 3600 + *minute * 60 + *second;
  return secs * kMicrosPerSecond + fraction;
}

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
// Validation

namespace {

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
