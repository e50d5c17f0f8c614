// Policies that make secrets-proxy a good citizen of the Cloudflare API: a rate budget,
// a circuit breaker, retry backoff with full jitter, and parsers for the rate-limit
// headers (Retry-After, Ratelimit, Ratelimit-Policy). GuardedUpstream
// (guarded_upstream.hpp) wires them around an Upstream.
//
// Contract: pure policy objects. Nothing here does I/O or reads a clock: every method
// whose answer depends on time takes `now` (a steady_clock time point; the HTTP-date
// parser takes the wall-clock `now`). Tests drive them with explicit times.
//
// Thread safety: RateBudget and CircuitBreaker are meant to be shared by every io
// thread; each method takes an internal mutex for a short critical section and never
// blocks otherwise (no I/O, no waiting, no allocation beyond the budget's history
// deque). Backoff is immutable after construction; its random source must itself be
// safe to call concurrently (the default one is thread-local).
// Errors: constructors throw std::invalid_argument on options that cannot work (a
// start-up error); nothing else throws except std::bad_alloc. The parsers return
// nullopt / an empty vector on anything malformed: header bytes come from an upstream.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sproxy::upstream {

// Time on the monotonic clock. (Named so as not to collide with the `Clock` /
// `TimePoint` aliases that implementation files declare locally.)
using SteadyTime = std::chrono::steady_clock::time_point;
using SteadyDuration = std::chrono::steady_clock::duration;

// ---------------------------------------------------------------------------------------
// Header parsers

// Retry-After (RFC 9110 / RFC 7231 section 7.1.3): delta-seconds ("120") or an
// IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), surrounding whitespace tolerated.
// Returns the delay from `wall_now`: a date in the past gives 0 s. Saturates at
// kMaxRetryAfter. nullopt when malformed (including the obsolete RFC 850 / asctime
// date forms, negative numbers and out-of-range dates).
std::optional<std::chrono::seconds> parse_retry_after(
    std::string_view value, std::chrono::system_clock::time_point wall_now);
inline constexpr std::chrono::seconds kMaxRetryAfter{365L * 24 * 3600};

// The IMF-fixdate of a wall-clock time (seconds precision), e.g. for tests and logs.
std::string format_http_date(std::chrono::system_clock::time_point t);

// `Ratelimit: "default";r=<remaining>;t=<seconds>` (IETF httpapi-ratelimit-headers,
// structured-field list). When the list holds several members, the most restrictive
// one (smallest r; on a tie the longest t) is returned. Members without integer r and
// t >= 0 are skipped; nullopt when none is usable or the field is malformed.
struct RateLimitRemaining {
  long remaining = 0;
  std::chrono::seconds reset{0};  // r holds until this much time has passed
  bool operator==(const RateLimitRemaining&) const = default;
};
std::optional<RateLimitRemaining> parse_ratelimit(std::string_view value);

// `Ratelimit-Policy: "burst";q=<quota>;w=<window seconds>`: every member with
// integer q >= 1 and w >= 1 (at most 4 are kept, q capped at kMaxRateCapacity, w at one
// day). Empty when none is usable or the field is malformed.
struct RatePolicy {
  long quota = 0;
  std::chrono::seconds window{0};
  bool operator==(const RatePolicy&) const = default;
};
std::vector<RatePolicy> parse_ratelimit_policy(std::string_view value);

inline constexpr long kMaxRateCapacity = 100'000;
// What is kept of the policies an upstream announces (by the parser and the budget).
inline constexpr std::size_t kMaxAnnouncedPolicies = 4;
inline constexpr std::chrono::seconds kMaxPolicyWindow{24 * 3600};

// ---------------------------------------------------------------------------------------
// RateBudget

struct RateBudgetOptions {
  // The account's limit: at most `limit` requests in any `window` (Cloudflare: 1,200
  // requests per 5 minutes per user, all of its tokens together).
  long limit = 1'200;
  std::chrono::milliseconds window{300'000};
  // A short-window limit (Cloudflare: 200 requests per second per IP). 0 disables it.
  long burst_limit = 200;
  std::chrono::milliseconds burst_window{1'000};
  // Fraction of every limit left unused, for other users of the same account and for
  // calls in flight: the usable capacity is max(1, floor(limit * (1 - margin))).
  double safety_margin = 0.10;
};

// Why a request was refused.
enum class BudgetRefusal {
  none,
  exhausted,           // the local budget (configured or announced limits) is spent
  upstream_remaining,  // the upstream's Ratelimit header said no request is left
  blocked,             // the upstream answered 429: no call until its Retry-After
};

struct BudgetDecision {
  bool granted = false;
  BudgetRefusal reason = BudgetRefusal::none;
  // When refused: the time until a request may be admitted again, assuming nobody else
  // takes that token first (> 0).
  SteadyDuration wait{0};
};

struct RateBudgetSnapshot {
  // The configured account limit after the safety margin, and its window.
  long capacity = 0;
  std::chrono::milliseconds window{0};
  // Requests that would be admitted right now, every constraint considered.
  long remaining = 0;
  // The sustained rate allowed by the most restrictive limit (tokens per second).
  double refill_per_second = 0;
  // No upstream call before this time (an upstream 429); unset when not blocked.
  std::optional<SteadyTime> blocked_until;
  // What the upstream's Ratelimit header still allows (its r minus the requests
  // admitted since) and when that cap lapses; unset when none is in force.
  std::optional<long> upstream_remaining;
  std::optional<SteadyTime> upstream_reset_at;
  // The limits the upstream announced in Ratelimit-Policy (before the margin).
  std::vector<RatePolicy> announced;
};

// The request budget that keeps the proxy under the account's rate limit.
//
// Shape: a token bucket whose tokens come back exactly one window after they were
// spent (a sliding-window bucket). A classic bucket (burst C, refill C/window) would
// let 2C requests through in one window after an idle period - enough to get the whole
// account refused for 5 minutes. Here every limit holds over ANY interval of its window
// length: at most capacity requests in (t - window, t] for every t. The sustained rate is
// capacity / window, as with a classic bucket.
//
// Constraints, all of which must allow a request:
// - the configured account limit and the burst limit (each minus the safety margin);
// - limits announced by the upstream in Ratelimit-Policy (minus the margin): they can
//   only lower what the configuration allows, never raise it (the configured limit is
//   the operator's share of the account). They count the admissions the budget still
//   remembers (at most the largest capacity, over the longest window in force);
// - the upstream's Ratelimit r/t: at most r more requests until t seconds have passed
//   (a newer header for the same reset time can only lower it; one with a different
//   reset time replaces it);
// - an upstream 429: nothing until its Retry-After (block_until).
// Admission times are kept sorted: a `now` older than the latest admission (callers on
// other threads read the clock before taking the lock) is recorded as that latest time,
// which only delays the token's return.
class RateBudget {
 public:
  // Throws std::invalid_argument when limit < 1, window <= 0, burst_limit < 0 (or > 0
  // with burst_window <= 0), safety_margin outside [0, 1), or limits > kMaxRateCapacity.
  explicit RateBudget(RateBudgetOptions options = {});

  // Takes one token when every constraint allows it.
  BudgetDecision try_acquire(SteadyTime now);

  // No request is admitted before `until` (later of this and any earlier block).
  void block_until(SteadyTime until);
  // Applies a Ratelimit header received at `now`.
  void observe_remaining(RateLimitRemaining header, SteadyTime now);
  // Applies a Ratelimit-Policy header (replaces the announced limits; empty: none).
  void observe_policies(std::vector<RatePolicy> policies);

  RateBudgetSnapshot snapshot(SteadyTime now) const;
  const RateBudgetOptions& options() const { return options_; }

 private:
  struct Limit {
    long capacity;  // after the margin
    SteadyDuration window;
  };

  void recompute_history_bounds_locked();
  void trim_locked(SteadyTime now);
  long count_within_locked(const Limit& l, SteadyTime now) const;

  const RateBudgetOptions options_;
  mutable std::mutex mu_;
  std::vector<Limit> configured_;  // account limit first, then the burst limit
  std::vector<Limit> announced_limits_;
  std::vector<RatePolicy> announced_;
  std::size_t history_cap_ = 0;       // largest capacity in force
  SteadyDuration history_window_{0};  // longest window in force
  std::deque<SteadyTime> admitted_;   // sorted admission times, newest at the back
  SteadyTime blocked_until_{};
  std::optional<long> upstream_remaining_;
  SteadyTime upstream_reset_at_{};
};

// ---------------------------------------------------------------------------------------
// ClientShares

// Each client's share of a RateBudget's configured limits, so that one client cannot spend
// what every other client needs: for each configured limit (the account window and the
// burst window), a client is admitted at most max(1, floor(capacity * share)) times in any
// interval of that window's length, capacity being the limit after the safety margin.
// Sliding windows exactly like RateBudget's. Limits announced by the upstream are not
// shared out (they can only lower the budget itself).
//
// Clients are named (the proxy's configured clients); an empty name is nobody's and always
// admitted, uncharged. Memory: one entry per client admitted within the longest window,
// at most the largest share of admission times each; entries whose admissions have all
// left the window are dropped as new clients come (so renamed or removed clients go too).
// Thread safety: every method locks briefly; nothing blocks.
class ClientShares {
 public:
  // Throws std::invalid_argument when share is not in (0, 1] or the budget's options do
  // not work (see RateBudget). A share of 1 disables the shares: everyone is admitted.
  ClientShares(const RateBudgetOptions& budget, double share);

  bool enabled() const { return !limits_.empty(); }
  // Admits one call of `client` and records it, or refuses with the wait until the
  // client's share frees a call (reason exhausted).
  BudgetDecision try_acquire(std::string_view client, SteadyTime now);
  // Takes back the latest admission of `client` (the call did not go after all).
  void give_back(std::string_view client);
  // What `client` may still make right now, over every limit (the smallest).
  long remaining(std::string_view client, SteadyTime now) const;
  // The per-client capacity of each configured limit (account first), empty when disabled.
  std::vector<long> capacities() const;
  std::size_t tracked_clients() const;

 private:
  struct Limit {
    long capacity;
    SteadyDuration window;
  };
  struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using History = std::deque<SteadyTime>;

  void trim(History& h, SteadyTime now) const;
  void drop_idle_locked(SteadyTime now);

  std::vector<Limit> limits_;
  SteadyDuration longest_{0};
  std::size_t history_cap_ = 0;
  mutable std::mutex mu_;
  std::unordered_map<std::string, History, NameHash, std::equal_to<>> admitted_;
  std::size_t drop_idle_at_ = kInitialDropIdleAt;
  static constexpr std::size_t kInitialDropIdleAt = 64;
};

// ---------------------------------------------------------------------------------------
// CircuitBreaker

struct CircuitBreakerOptions {
  int failure_threshold = 5;                        // consecutive failures that open it
  std::chrono::milliseconds open_duration{30'000};  // cool-down before the probe
};

enum class CircuitState { closed, open, half_open };
std::string_view to_string(CircuitState s);

// The breaker's answer to one call. Outcomes are reported with the permit so that a
// late answer to a call admitted before a state change (or an earlier probe) is ignored.
struct CircuitPermit {
  bool allowed = false;
  bool probe = false;  // the single half-open trial call
  std::uint64_t generation = 0;
  SteadyDuration retry_in{0};  // when refused: until the next probe may go
};

struct CircuitSnapshot {
  // `open` whose cool-down has passed is reported as half_open (the next call probes).
  CircuitState state = CircuitState::closed;
  int consecutive_failures = 0;
  std::uint64_t opened_count = 0;        // times it opened (including re-opens)
  std::optional<SteadyTime> open_until;  // when open: end of the cool-down
};

// Closed: every call goes; `failure_threshold` consecutive failures open it.
// Open: every call is refused until `open_duration` has passed since it opened.
// Half-open: exactly one probe goes; its success closes the breaker, its failure opens
// it again for another cool-down. A probe that ends without a verdict (on_abandon:
// refused by the rate budget, cancelled, a local error) lets the next call probe;
// a probe that reports nothing for a whole open_duration is presumed lost, and the
// next call probes instead.
// What counts as a failure is the caller's decision (GuardedUpstream: transport
// errors and 5xx; 4xx and 429 are successes: the upstream answered).
class CircuitBreaker {
 public:
  // Throws std::invalid_argument when failure_threshold < 1 or open_duration <= 0.
  explicit CircuitBreaker(CircuitBreakerOptions options = {});

  CircuitPermit try_enter(SteadyTime now);
  void on_success(const CircuitPermit& permit);
  void on_failure(const CircuitPermit& permit, SteadyTime now);
  void on_abandon(const CircuitPermit& permit);

  CircuitSnapshot snapshot(SteadyTime now) const;
  const CircuitBreakerOptions& options() const { return options_; }

 private:
  void open_locked(SteadyTime now);

  const CircuitBreakerOptions options_;
  mutable std::mutex mu_;
  CircuitState state_ = CircuitState::closed;
  int consecutive_failures_ = 0;
  std::uint64_t opened_count_ = 0;
  std::uint64_t generation_ = 0;
  SteadyTime opened_at_{};
  bool probe_in_flight_ = false;
  SteadyTime probe_started_{};
};

// ---------------------------------------------------------------------------------------
// Backoff

struct BackoffOptions {
  std::chrono::milliseconds base{100};
  std::chrono::milliseconds cap{1'000};
};

// Exponential backoff with full jitter: the delay before retry number `attempt`
// (0 for the first retry) is uniform in [0, min(cap, base * 2^attempt)].
class Backoff {
 public:
  // Uniform in [0, 1). Values outside are clamped. Must be safe to call concurrently.
  using RandomSource = std::function<double()>;

  // Throws std::invalid_argument when base <= 0 or cap < base. An empty `random` uses a
  // thread-local Mersenne Twister seeded from std::random_device.
  explicit Backoff(BackoffOptions options = {}, RandomSource random = {});

  std::chrono::milliseconds ceiling(int attempt) const;
  std::chrono::milliseconds delay(int attempt) const;
  const BackoffOptions& options() const { return options_; }

 private:
  BackoffOptions options_;
  RandomSource random_;
};

}  // namespace sproxy::upstream
