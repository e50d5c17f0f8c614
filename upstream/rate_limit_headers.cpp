// The parsers of the rate-limit headers: Retry-After, Ratelimit and Ratelimit-Policy
// (resilience.hpp).
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upstream/resilience.hpp"

namespace sproxy::upstream {

namespace {

using std::chrono::seconds;

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A non-negative decimal integer made only of digits, saturating at `max`.
std::optional<long long> parse_digits(std::string_view s, long long max) {
  if (s.empty()) return std::nullopt;
  long long v = 0;
  for (char c : s) {
    if (!is_digit(c)) return std::nullopt;
    if (v > (max - (c - '0')) / 10) {
      v = max;
      continue;  // keep validating the remaining characters
    }
    v = v * 10 + (c - '0');
  }
  return v;
}

// ---- A small parser for RFC 8941 structured-field lists: just enough to read the
// integer parameters of each member. Inner lists are treated as malformed.

struct SfParam {
  std::string_view key;
  std::optional<long long> integer;  // set when the value is an sf-integer
};
struct SfMember {
  std::vector<SfParam> params;
  std::optional<long long> param(std::string_view key) const {
    // RFC 8941: a repeated parameter key keeps its last value.
    std::optional<long long> v;
    for (const auto& p : params) {
      if (p.key == key) v = p.integer;
    }
    return v;
  }
};

class SfListParser {
 public:
  explicit SfListParser(std::string_view s) : s_(s) {}

  std::optional<std::vector<SfMember>> parse() {
    std::vector<SfMember> out;
    skip_ows();
    if (at_end()) return out;
    for (;;) {
      SfMember m;
      if (!bare_item(nullptr)) return std::nullopt;
      if (!params(m.params)) return std::nullopt;
      out.push_back(std::move(m));
      skip_ows();
      if (at_end()) return out;
      if (s_[i_] != ',') return std::nullopt;
      ++i_;
      skip_ows();
      if (at_end()) return std::nullopt;  // trailing comma
    }
  }

 private:
  bool at_end() const { return i_ >= s_.size(); }
  void skip_ows() {
    while (!at_end() && (s_[i_] == ' ' || s_[i_] == '\t')) ++i_;
  }
  void skip_sp() {
    while (!at_end() && s_[i_] == ' ') ++i_;
  }

  static bool is_tchar(char c) {
    return is_alpha(c) || is_digit(c) ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  }
  static bool is_key_char(char c) {
    return (c >= 'a' && c <= 'z') || is_digit(c) || c == '_' || c == '-' || c == '.' || c == '*';
  }

  bool params(std::vector<SfParam>& out) {
    while (!at_end() && s_[i_] == ';') {
      ++i_;
      skip_sp();
      const std::size_t start = i_;
      if (at_end() || !((s_[i_] >= 'a' && s_[i_] <= 'z') || s_[i_] == '*')) return false;
      while (!at_end() && is_key_char(s_[i_])) ++i_;
      SfParam p{s_.substr(start, i_ - start), std::nullopt};
      if (!at_end() && s_[i_] == '=') {
        ++i_;
        if (!bare_item(&p.integer)) return false;
      }
      out.push_back(p);
    }
    return true;
  }

  // Consumes one bare item; stores it in *integer when it is an sf-integer.
  bool bare_item(std::optional<long long>* integer) {
    if (at_end()) return false;
    const char c = s_[i_];
    if (c == '-' || is_digit(c)) return number(integer);
    if (c == '"') return string();
    if (is_alpha(c) || c == '*') {
      while (!at_end() && (is_tchar(s_[i_]) || s_[i_] == ':' || s_[i_] == '/')) ++i_;
      return true;
    }
    if (c == ':') {  // byte sequence
      const std::size_t end = s_.find(':', i_ + 1);
      if (end == std::string_view::npos) return false;
      i_ = end + 1;
      return true;
    }
    if (c == '?') {  // boolean
      if (i_ + 1 >= s_.size() || (s_[i_ + 1] != '0' && s_[i_ + 1] != '1')) return false;
      i_ += 2;
      return true;
    }
    return false;
  }

  bool number(std::optional<long long>* integer) {
    bool negative = false;
    if (s_[i_] == '-') {
      negative = true;
      ++i_;
    }
    const std::size_t start = i_;
    while (!at_end() && is_digit(s_[i_])) ++i_;
    const std::size_t int_digits = i_ - start;
    if (int_digits == 0 || int_digits > 15) return false;
    if (!at_end() && s_[i_] == '.') {  // decimal: valid, but not an integer
      ++i_;
      const std::size_t frac = i_;
      while (!at_end() && is_digit(s_[i_])) ++i_;
      return i_ > frac && i_ - frac <= 3 && int_digits <= 12;
    }
    auto v = parse_digits(s_.substr(start, int_digits), std::numeric_limits<long long>::max());
    if (!v) return false;
    if (integer != nullptr) *integer = negative ? -*v : *v;
    return true;
  }

  bool string() {
    ++i_;  // opening quote
    while (!at_end()) {
      const char c = s_[i_++];
      if (c == '"') return true;
      if (c == '\\') {
        if (at_end() || (s_[i_] != '"' && s_[i_] != '\\')) return false;
        ++i_;
      } else if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
        return false;
      }
    }
    return false;  // unterminated
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

constexpr std::array<std::string_view, 7> kWeekdays = {"Sun", "Mon", "Tue", "Wed",
                                                       "Thu", "Fri", "Sat"};
constexpr std::array<std::string_view, 12> kMonths = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

std::optional<int> two_digits(std::string_view s) {
  if (s.size() != 2 || !is_digit(s[0]) || !is_digit(s[1])) return std::nullopt;
  return (s[0] - '0') * 10 + (s[1] - '0');
}

// IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
std::optional<std::chrono::system_clock::time_point> parse_imf_fixdate(std::string_view s) {
  if (s.size() != 29) return std::nullopt;
  if (std::find(kWeekdays.begin(), kWeekdays.end(), s.substr(0, 3)) == kWeekdays.end()) {
    return std::nullopt;
  }
  if (s.substr(3, 2) != ", " || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' || s[19] != ':' ||
      s[22] != ':' || s.substr(25) != " GMT") {
    return std::nullopt;
  }
  const auto day = two_digits(s.substr(5, 2));
  const auto month_it = std::find(kMonths.begin(), kMonths.end(), s.substr(8, 3));
  const auto year = parse_digits(s.substr(12, 4), 9999);
  const auto hour = two_digits(s.substr(17, 2));
  const auto minute = two_digits(s.substr(20, 2));
  const auto second = two_digits(s.substr(23, 2));
  if (!day || month_it == kMonths.end() || !year || !hour || !minute || !second) {
    return std::nullopt;
  }
  if (*hour > 23 || *minute > 59 || *second > 60) return std::nullopt;  // 60: a leap second
  const std::chrono::year_month_day ymd{
      std::chrono::year{static_cast<int>(*year)},
      std::chrono::month{static_cast<unsigned>(month_it - kMonths.begin() + 1)},
      std::chrono::day{static_cast<unsigned>(*day)}};
  if (!ymd.ok()) return std::nullopt;
  return std::chrono::sys_days{ymd} + std::chrono::hours{*hour} + std::chrono::minutes{*minute} +
         std::chrono::seconds{*second};
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Header parsers

std::optional<seconds> parse_retry_after(std::string_view value,
                                         std::chrono::system_clock::time_point wall_now) {
  value = trim_ows(value);
  if (value.empty()) return std::nullopt;
  if (is_digit(value.front())) {
    auto v = parse_digits(value, kMaxRetryAfter.count());
    if (!v) return std::nullopt;
    return seconds{*v};
  }
  auto at = parse_imf_fixdate(value);
  if (!at) return std::nullopt;
  if (*at <= wall_now) return seconds{0};
  // Round up: calling one second late is harmless, one second early is refused again.
  const auto delay = std::chrono::ceil<seconds>(*at - wall_now);
  return std::min(delay, kMaxRetryAfter);
}

std::string format_http_date(std::chrono::system_clock::time_point t) {
  const auto secs = std::chrono::floor<seconds>(t);
  const auto day = std::chrono::floor<std::chrono::days>(secs);
  const std::chrono::year_month_day ymd{day};
  const std::chrono::weekday wd{day};
  const std::chrono::hh_mm_ss hms{secs - day};
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.3s, %02u %.3s %04d %02d:%02d:%02d GMT",
                kWeekdays[wd.c_encoding()].data(), static_cast<unsigned>(ymd.day()),
                kMonths[static_cast<unsigned>(ymd.month()) - 1].data(),
                static_cast<int>(ymd.year()), static_cast<int>(hms.hours().count()),
                static_cast<int>(hms.minutes().count()), static_cast<int>(hms.seconds().count()));
  return buf;
}

std::optional<RateLimitRemaining> parse_ratelimit(std::string_view value) {
  auto members = SfListParser(value).parse();
  if (!members) return std::nullopt;
  std::optional<RateLimitRemaining> best;
  for (const SfMember& m : *members) {
    const auto r = m.param("r");
    const auto t = m.param("t");
    if (!r || !t || *r < 0 || *t < 0) continue;
    RateLimitRemaining h;
    h.remaining = static_cast<long>(std::min<long long>(*r, std::numeric_limits<long>::max()));
    h.reset = seconds{std::min<long long>(*t, kMaxRetryAfter.count())};
    if (!best || h.remaining < best->remaining ||
        (h.remaining == best->remaining && h.reset > best->reset)) {
      best = h;
    }
  }
  return best;
}

std::vector<RatePolicy> parse_ratelimit_policy(std::string_view value) {
  std::vector<RatePolicy> out;
  auto members = SfListParser(value).parse();
  if (!members) return out;
  for (const SfMember& m : *members) {
    const auto q = m.param("q");
    const auto w = m.param("w");
    if (!q || !w || *q < 1 || *w < 1) continue;
    out.push_back(RatePolicy{static_cast<long>(std::min<long long>(*q, kMaxRateCapacity)),
                             seconds{std::min<long long>(*w, kMaxPolicyWindow.count())}});
    if (out.size() == kMaxAnnouncedPolicies) break;
  }
  return out;
}

}  // namespace sproxy::upstream
