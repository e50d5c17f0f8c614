#include "upstream/resilience.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <stdexcept>
#include <utility>

namespace sproxy::upstream {

namespace {

using std::chrono::seconds;

constexpr seconds kMaxPolicyWindow{24 * 3600};
constexpr std::size_t kMaxAnnouncedPolicies = 4;
// Two Ratelimit headers whose reset times differ by at most this describe the same
// upstream window (t is whole seconds, and the answers took different times to arrive).
constexpr SteadyDuration kSameResetTolerance = std::chrono::seconds(2);

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

long usable_capacity(long limit, double margin) {
  // The epsilon keeps e.g. 10 * (1 - 0.3) = 6.9999999 from flooring to 6.
  const double usable = std::floor(static_cast<double>(limit) * (1.0 - margin) + 1e-9);
  return std::max(1L, static_cast<long>(usable));
}

double seconds_of(SteadyDuration d) { return std::chrono::duration<double>(d).count(); }

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

// ---------------------------------------------------------------------------------------
// RateBudget

RateBudget::RateBudget(RateBudgetOptions options) : options_(options) {
  if (options_.limit < 1 || options_.limit > kMaxRateCapacity) {
    throw std::invalid_argument("rate budget: limit must be in 1.." +
                                std::to_string(kMaxRateCapacity));
  }
  if (options_.window <= std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("rate budget: window must be positive");
  }
  if (options_.burst_limit < 0 || options_.burst_limit > kMaxRateCapacity) {
    throw std::invalid_argument("rate budget: burst_limit must be in 0.." +
                                std::to_string(kMaxRateCapacity));
  }
  if (options_.burst_limit > 0 && options_.burst_window <= std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("rate budget: burst_window must be positive");
  }
  if (!(options_.safety_margin >= 0.0 && options_.safety_margin < 1.0)) {
    throw std::invalid_argument("rate budget: safety_margin must be in [0, 1)");
  }
  configured_.push_back(
      Limit{usable_capacity(options_.limit, options_.safety_margin), options_.window});
  if (options_.burst_limit > 0) {
    configured_.push_back(Limit{usable_capacity(options_.burst_limit, options_.safety_margin),
                                options_.burst_window});
  }
  recompute_history_bounds_locked();
}

void RateBudget::recompute_history_bounds_locked() {
  history_cap_ = 0;
  history_window_ = SteadyDuration::zero();
  for (const auto* set : {&configured_, &announced_limits_}) {
    for (const Limit& l : *set) {
      history_cap_ = std::max(history_cap_, static_cast<std::size_t>(l.capacity));
      history_window_ = std::max(history_window_, l.window);
    }
  }
}

void RateBudget::trim_locked(SteadyTime now) {
  while (!admitted_.empty() && admitted_.front() + history_window_ <= now) admitted_.pop_front();
  while (admitted_.size() > history_cap_) admitted_.pop_front();
  if (upstream_remaining_ && now >= upstream_reset_at_) upstream_remaining_.reset();
}

long RateBudget::count_within_locked(const Limit& l, SteadyTime now) const {
  // Admissions in (now - window, now].
  const auto first = std::upper_bound(admitted_.begin(), admitted_.end(), now - l.window);
  return static_cast<long>(admitted_.end() - first);
}

BudgetDecision RateBudget::try_acquire(SteadyTime now) {
  std::lock_guard lock(mu_);
  trim_locked(now);

  BudgetDecision d;
  auto refuse = [&](SteadyDuration wait, BudgetRefusal why) {
    if (wait > d.wait) {
      d.wait = wait;
      d.reason = why;
    }
  };
  if (now < blocked_until_) refuse(blocked_until_ - now, BudgetRefusal::blocked);
  if (upstream_remaining_ && *upstream_remaining_ <= 0) {
    refuse(upstream_reset_at_ - now, BudgetRefusal::upstream_remaining);
  }
  for (const auto* set : {&configured_, &announced_limits_}) {
    for (const Limit& l : *set) {
      const std::size_t n = admitted_.size();
      const auto cap = static_cast<std::size_t>(l.capacity);
      if (n < cap) continue;
      // The cap-th newest admission must have left the window.
      const SteadyTime back_at = admitted_[n - cap] + l.window;
      if (back_at > now) refuse(back_at - now, BudgetRefusal::exhausted);
    }
  }
  if (d.reason != BudgetRefusal::none) return d;

  admitted_.push_back(admitted_.empty() ? now : std::max(now, admitted_.back()));
  while (admitted_.size() > history_cap_) admitted_.pop_front();
  if (upstream_remaining_) --*upstream_remaining_;
  d.granted = true;
  return d;
}

void RateBudget::block_until(SteadyTime until) {
  std::lock_guard lock(mu_);
  blocked_until_ = std::max(blocked_until_, until);
}

void RateBudget::observe_remaining(RateLimitRemaining header, SteadyTime now) {
  // t = 0: the upstream's window resets now, so r caps nothing.
  if (header.reset <= seconds::zero()) return;
  const long r = std::max(0L, header.remaining);
  const SteadyTime reset_at = now + header.reset;
  std::lock_guard lock(mu_);
  trim_locked(now);
  const bool same_window = upstream_remaining_ &&
                           reset_at - upstream_reset_at_ <= kSameResetTolerance &&
                           upstream_reset_at_ - reset_at <= kSameResetTolerance;
  if (same_window) {
    // Answers arrive out of order: within one window, remaining only goes down.
    upstream_remaining_ = std::min(*upstream_remaining_, r);
    upstream_reset_at_ = std::max(upstream_reset_at_, reset_at);
  } else {
    upstream_remaining_ = r;
    upstream_reset_at_ = reset_at;
  }
}

void RateBudget::observe_policies(std::vector<RatePolicy> policies) {
  std::vector<RatePolicy> valid;
  std::vector<Limit> limits;
  for (const RatePolicy& p : policies) {
    if (p.quota < 1 || p.window <= seconds::zero()) continue;
    valid.push_back(
        RatePolicy{std::min(p.quota, kMaxRateCapacity), std::min(p.window, kMaxPolicyWindow)});
    limits.push_back(
        Limit{usable_capacity(valid.back().quota, options_.safety_margin), valid.back().window});
    if (valid.size() == kMaxAnnouncedPolicies) break;
  }
  std::lock_guard lock(mu_);
  if (valid == announced_) return;
  announced_ = std::move(valid);
  announced_limits_ = std::move(limits);
  recompute_history_bounds_locked();
}

RateBudgetSnapshot RateBudget::snapshot(SteadyTime now) const {
  std::lock_guard lock(mu_);
  RateBudgetSnapshot s;
  s.capacity = configured_.front().capacity;
  s.window = options_.window;
  s.announced = announced_;
  long remaining = std::numeric_limits<long>::max();
  double rate = std::numeric_limits<double>::max();
  for (const auto* set : {&configured_, &announced_limits_}) {
    for (const Limit& l : *set) {
      remaining = std::min(remaining, std::max(0L, l.capacity - count_within_locked(l, now)));
      rate = std::min(rate, static_cast<double>(l.capacity) / seconds_of(l.window));
    }
  }
  if (upstream_remaining_ && now < upstream_reset_at_) {
    s.upstream_remaining = std::max(0L, *upstream_remaining_);
    s.upstream_reset_at = upstream_reset_at_;
    remaining = std::min(remaining, *s.upstream_remaining);
  }
  if (now < blocked_until_) {
    s.blocked_until = blocked_until_;
    remaining = 0;
  }
  s.remaining = remaining;
  s.refill_per_second = rate;
  return s;
}

// ---------------------------------------------------------------------------------------
// ClientShares

ClientShares::ClientShares(const RateBudgetOptions& budget, double share) {
  if (!(share > 0.0 && share <= 1.0)) {
    throw std::invalid_argument("client shares: share must be in (0, 1]");
  }
  const RateBudget validated(budget);  // throws on options that cannot work
  (void)validated;
  if (share >= 1.0) return;
  auto add = [&](long limit, std::chrono::milliseconds window) {
    const long capacity = usable_capacity(limit, budget.safety_margin);
    const auto own = static_cast<long>(std::floor(static_cast<double>(capacity) * share + 1e-9));
    limits_.push_back(Limit{std::max(1L, own), window});
    longest_ = std::max<SteadyDuration>(longest_, window);
    history_cap_ = std::max(history_cap_, static_cast<std::size_t>(limits_.back().capacity));
  };
  add(budget.limit, budget.window);
  if (budget.burst_limit > 0) add(budget.burst_limit, budget.burst_window);
}

void ClientShares::trim(History& h, SteadyTime now) const {
  while (!h.empty() && h.front() + longest_ <= now) h.pop_front();
  while (h.size() > history_cap_) h.pop_front();
}

void ClientShares::drop_idle_locked(SteadyTime now) {
  std::erase_if(admitted_, [&](const auto& entry) {
    return entry.second.empty() || entry.second.back() + longest_ <= now;
  });
  drop_idle_at_ = std::max(kInitialDropIdleAt, 2 * admitted_.size());
}

BudgetDecision ClientShares::try_acquire(std::string_view client, SteadyTime now) {
  BudgetDecision d;
  if (limits_.empty() || client.empty()) {
    d.granted = true;
    return d;
  }
  std::lock_guard lock(mu_);
  auto it = admitted_.find(client);
  if (it == admitted_.end()) {
    if (admitted_.size() >= drop_idle_at_) drop_idle_locked(now);
    it = admitted_.emplace(std::string(client), History{}).first;
  }
  History& h = it->second;
  trim(h, now);
  for (const Limit& l : limits_) {
    const auto cap = static_cast<std::size_t>(l.capacity);
    if (h.size() < cap) continue;
    const SteadyTime back_at = h[h.size() - cap] + l.window;
    if (back_at > now && back_at - now > d.wait) {
      d.wait = back_at - now;
      d.reason = BudgetRefusal::exhausted;
    }
  }
  if (d.reason != BudgetRefusal::none) return d;
  h.push_back(h.empty() ? now : std::max(now, h.back()));
  d.granted = true;
  return d;
}

void ClientShares::give_back(std::string_view client) {
  if (limits_.empty() || client.empty()) return;
  std::lock_guard lock(mu_);
  auto it = admitted_.find(client);
  if (it != admitted_.end() && !it->second.empty()) it->second.pop_back();
}

long ClientShares::remaining(std::string_view client, SteadyTime now) const {
  long out = std::numeric_limits<long>::max();
  std::lock_guard lock(mu_);
  auto it = admitted_.find(client);
  for (const Limit& l : limits_) {
    long used = 0;
    if (it != admitted_.end()) {
      const History& h = it->second;
      used = static_cast<long>(h.end() - std::upper_bound(h.begin(), h.end(), now - l.window));
    }
    out = std::min(out, std::max(0L, l.capacity - used));
  }
  return out;
}

std::vector<long> ClientShares::capacities() const {
  std::vector<long> out;
  for (const Limit& l : limits_) out.push_back(l.capacity);
  return out;
}

std::size_t ClientShares::tracked_clients() const {
  std::lock_guard lock(mu_);
  return admitted_.size();
}

// ---------------------------------------------------------------------------------------
// CircuitBreaker

std::string_view to_string(CircuitState s) {
  switch (s) {
    case CircuitState::closed:
      return "closed";
    case CircuitState::open:
      return "open";
    case CircuitState::half_open:
      return "half_open";
  }
  return "unknown";
}

CircuitBreaker::CircuitBreaker(CircuitBreakerOptions options) : options_(options) {
  if (options_.failure_threshold < 1) {
    throw std::invalid_argument("circuit breaker: failure_threshold must be at least 1");
  }
  if (options_.open_duration <= std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("circuit breaker: open_duration must be positive");
  }
}

CircuitPermit CircuitBreaker::try_enter(SteadyTime now) {
  std::lock_guard lock(mu_);
  CircuitPermit p;
  switch (state_) {
    case CircuitState::closed:
      p.allowed = true;
      p.generation = generation_;
      return p;
    case CircuitState::open: {
      const SteadyTime until = opened_at_ + options_.open_duration;
      if (now < until) {
        p.retry_in = until - now;
        return p;
      }
      state_ = CircuitState::half_open;
      break;
    }
    case CircuitState::half_open: {
      // A probe that has reported nothing for a whole cool-down is presumed lost.
      const SteadyTime lost_at = probe_started_ + options_.open_duration;
      if (probe_in_flight_ && now < lost_at) {
        p.retry_in = lost_at - now;
        return p;
      }
      break;
    }
  }
  ++generation_;  // a new probe: the answers of any earlier one no longer count
  probe_in_flight_ = true;
  probe_started_ = now;
  p.allowed = true;
  p.probe = true;
  p.generation = generation_;
  return p;
}

void CircuitBreaker::open_locked(SteadyTime now) {
  state_ = CircuitState::open;
  opened_at_ = now;
  ++opened_count_;
  ++generation_;
  probe_in_flight_ = false;
}

void CircuitBreaker::on_success(const CircuitPermit& permit) {
  std::lock_guard lock(mu_);
  if (!permit.allowed || permit.generation != generation_) return;
  if (state_ == CircuitState::half_open) {
    if (!permit.probe) return;
    state_ = CircuitState::closed;
    probe_in_flight_ = false;
    ++generation_;
  }
  consecutive_failures_ = 0;
}

void CircuitBreaker::on_failure(const CircuitPermit& permit, SteadyTime now) {
  std::lock_guard lock(mu_);
  if (!permit.allowed || permit.generation != generation_) return;
  switch (state_) {
    case CircuitState::closed:
      if (++consecutive_failures_ >= options_.failure_threshold) open_locked(now);
      return;
    case CircuitState::half_open:
      if (!permit.probe) return;
      ++consecutive_failures_;
      open_locked(now);
      return;
    case CircuitState::open:
      return;
  }
}

void CircuitBreaker::on_abandon(const CircuitPermit& permit) {
  std::lock_guard lock(mu_);
  if (!permit.probe || permit.generation != generation_) return;
  if (state_ == CircuitState::half_open) probe_in_flight_ = false;
}

CircuitSnapshot CircuitBreaker::snapshot(SteadyTime now) const {
  std::lock_guard lock(mu_);
  CircuitSnapshot s;
  s.state = state_;
  s.consecutive_failures = consecutive_failures_;
  s.opened_count = opened_count_;
  if (state_ == CircuitState::open) {
    const SteadyTime until = opened_at_ + options_.open_duration;
    if (now < until) {
      s.open_until = until;
    } else {
      s.state = CircuitState::half_open;
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------
// Backoff

namespace {

double thread_local_uniform() {
  thread_local std::mt19937_64 engine = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }();
  thread_local std::uniform_real_distribution<double> dist(0.0, 1.0);
  return dist(engine);
}

}  // namespace

Backoff::Backoff(BackoffOptions options, RandomSource random)
    : options_(options), random_(random ? std::move(random) : RandomSource(thread_local_uniform)) {
  if (options_.base <= std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("backoff: base must be positive");
  }
  if (options_.cap < options_.base) {
    throw std::invalid_argument("backoff: cap must be at least base");
  }
}

std::chrono::milliseconds Backoff::ceiling(int attempt) const {
  const long long base = options_.base.count();
  const long long cap = options_.cap.count();
  long long c = base;
  for (int i = 0; i < attempt && c < cap; ++i) c = c > cap / 2 ? cap : c * 2;  // no overflow
  return std::chrono::milliseconds{std::min(c, cap)};
}

std::chrono::milliseconds Backoff::delay(int attempt) const {
  double u = random_();
  if (!(u >= 0.0)) u = 0.0;  // also NaN
  if (u >= 1.0) u = std::nextafter(1.0, 0.0);
  const long long c = ceiling(attempt).count();
  // Uniform over the c + 1 whole milliseconds 0..c.
  const auto ms = static_cast<long long>(std::floor(u * static_cast<double>(c + 1)));
  return std::chrono::milliseconds{std::min(ms, c)};
}

}  // namespace sproxy::upstream
