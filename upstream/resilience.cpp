#include "upstream/resilience.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <utility>

namespace sproxy::upstream {

namespace {

using std::chrono::seconds;

// Two Ratelimit headers whose reset times differ by at most this describe the same
// upstream window (t is whole seconds, and the answers took different times to arrive).
constexpr SteadyDuration kSameResetTolerance = std::chrono::seconds(2);

long usable_capacity(long limit, double margin) {
  // The epsilon keeps e.g. 10 * (1 - 0.3) = 6.9999999 from flooring to 6.
  const double usable = std::floor(static_cast<double>(limit) * (1.0 - margin) + 1e-9);
  return std::max(1L, static_cast<long>(usable));
}

double seconds_of(SteadyDuration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

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
