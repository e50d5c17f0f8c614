#include "upstream/model.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <optional>
#include <stdexcept>
#include <string>

namespace sproxy::upstream {

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

}  // namespace sproxy::upstream
