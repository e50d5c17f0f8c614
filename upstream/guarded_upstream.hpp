// GuardedUpstream: an Upstream decorator that keeps secrets-proxy a good citizen of the
// Cloudflare API (1,200 requests per 5 minutes per user; over it, every call is refused
// with 429 for 5 minutes). It wraps the real upstream with the policies of
// resilience.hpp:
//
// - Rate budget (RateBudget): a call goes upstream only with a token. Without one, a
//   read (GET/HEAD) gets at once, and a write after waiting at most write_budget_wait
//   for a token, a synthesized 429 with the contract's body
//   (envelope_error(errors::rate_limited(s))) and retry_after = s, the whole seconds
//   until a token is due. A write is not made to wait when the token is not due within
//   what is left of that wait. The cache above serves stale or passes the 429 on.
// - Client shares (ClientShares): a call made for a client (ApiRequest::client) also
//   needs a token of that client's share of the budget (client_share of each configured
//   limit), taken before the budget's own and handed back when the budget refuses. A
//   client over its share gets at once, read or write, a synthesized 429 as above with
//   retry_after = the seconds until its share frees a call, and client_refused set; the
//   budget is not touched, so every other client's calls go as before. Calls without a
//   client are charged to nobody's share.
// - Upstream 429: no upstream call until its Retry-After (delta-seconds or IMF-fixdate;
//   capped at max_retry_after) has passed, default_retry_after when it has none or an
//   unreadable one; meanwhile every call gets a synthesized 429 as above. The upstream's
//   own 429 is returned as is (its retry_after filled in when it had none).
//   Ratelimit / Ratelimit-Policy headers on any answer adjust the budget.
// - Retries: a read is retried on timeout, unreachable, connection_reset, bad_response
//   and 5xx; a write only on unreachable (the request provably never left). Never on a
//   4xx or 429, nor on tls_error / overloaded / circuit_open / rate_limited /
//   shutting_down. At most max_retries retries; full-jitter exponential backoff
//   (Backoff); no retry whose backoff would end later than retry_window after the call
//   began. Each retry needs a token and the breaker's permission; without them the
//   last real answer is returned (a 5xx is not turned into a 429).
// - Circuit breaker (CircuitBreaker): transport failures (timeout, unreachable,
//   connection_reset, bad_response, tls_error) and 5xx count as failures, every other
//   answer (2xx-4xx, including 429) as a success; overloaded and shutting_down are local
//   and count as neither. While it is open every call fails fast with
//   UpstreamErrc::circuit_open (no token spent); the cache serves stale.
// Order of the checks for each attempt: breaker, then the client's share, then budget (a
// half-open probe refused by either is handed back). A retry is an attempt like any other.
//
// Time: the decorator reads its injected Clock (steady time for every policy, wall time
// only to read an HTTP-date Retry-After) and waits through its injected Sleeper; the
// defaults are the system clocks and a steady_timer on the caller's executor. Tests
// inject fakes and never sleep.
// Thread safety: one GuardedUpstream is shared by every io thread; the policies lock
// briefly, nothing is held across an await. The Clock, Sleeper, random source and inner
// upstream must be safe to call concurrently.
// Ownership: holds the inner upstream; each call keeps the shared state alive, so the
// decorator may be destroyed while calls are in flight.
// Cancellation: no deadline of its own beyond the bounded waits above; the inner
// upstream enforces its request timeout. A call destroyed mid-flight hands back any
// half-open probe it held.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "upstream/resilience.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {

namespace detail {
struct GuardedState;  // defined in guarded_upstream.cpp
}  // namespace detail

struct GuardedUpstreamOptions {
  RateBudgetOptions budget;
  // Each client's share of every configured limit of `budget`, in (0, 1]; 1 disables.
  double client_share = 0.25;
  CircuitBreakerOptions breaker;
  BackoffOptions backoff;
  int max_retries = 2;                                    // retries after the first attempt
  std::chrono::milliseconds retry_window{3'000};          // no retry ends its backoff later
  std::chrono::milliseconds write_budget_wait{2'000};     // how long a write waits for a token
  std::chrono::milliseconds default_retry_after{60'000};  // block after a bare 429
  std::chrono::milliseconds max_retry_after{3'600'000};   // longest Retry-After honoured
};

// Counters for metrics; monotonic since construction.
struct GuardedUpstreamStats {
  std::uint64_t calls = 0;              // calls into the decorator
  std::uint64_t upstream_attempts = 0;  // calls made to the inner upstream
  std::uint64_t retries = 0;            // of those, retries
  std::uint64_t budget_refusals = 0;    // synthesized 429: budget or Ratelimit exhausted
  std::uint64_t client_share_refusals = 0;  // synthesized 429: the client's share is spent
  std::uint64_t blocked_refusals = 0;   // synthesized 429: inside an upstream Retry-After
  std::uint64_t circuit_refusals = 0;   // circuit_open answers
  std::uint64_t write_waits = 0;        // times a write waited for a token
  std::uint64_t upstream_429s = 0;      // 429 answers received from the upstream
};

class GuardedUpstream final : public Upstream {
 public:
  class Clock {
   public:
    virtual ~Clock() = default;
    virtual SteadyTime now() const = 0;
    // Wall-clock time, only to turn an HTTP-date Retry-After into a delay.
    virtual std::chrono::system_clock::time_point wall_now() const = 0;
  };
  class Sleeper {
   public:
    virtual ~Sleeper() = default;
    // Suspends the calling coroutine for `d`; an error (e.g. operation_aborted at
    // shutdown) ends the wait early.
    virtual boost::asio::awaitable<boost::system::error_code> sleep(SteadyDuration d) = 0;
  };
  // The process clocks (steady_clock, system_clock).
  static std::shared_ptr<const Clock> system_clock();
  // A steady_timer on the awaiting coroutine's executor.
  static std::shared_ptr<Sleeper> timer_sleeper();

  // Throws std::invalid_argument when `inner` is null or the options cannot work
  // (see RateBudget, CircuitBreaker, Backoff; negative retries or waits). Null clock /
  // sleeper / empty random use the defaults.
  GuardedUpstream(std::shared_ptr<Upstream> inner, GuardedUpstreamOptions options = {},
                  std::shared_ptr<const Clock> clock = nullptr,
                  std::shared_ptr<Sleeper> sleeper = nullptr, Backoff::RandomSource random = {});
  ~GuardedUpstream() override;
  GuardedUpstream(const GuardedUpstream&) = delete;
  GuardedUpstream& operator=(const GuardedUpstream&) = delete;

  boost::asio::awaitable<CallResult> call(ApiRequest request) override;
  // The inner upstream's: opening a connection is not an API request, it takes no budget.
  boost::asio::awaitable<std::size_t> preconnect(std::size_t connections) override;
  // "guarded(" + inner->describe() + ")".
  std::string describe() const override;

  // State for the admin endpoint and metrics, at the injected clock's now.
  RateBudgetSnapshot budget_snapshot() const;
  CircuitSnapshot breaker_snapshot() const;
  GuardedUpstreamStats stats() const;
  const GuardedUpstreamOptions& options() const;

 private:
  std::shared_ptr<detail::GuardedState> state_;  // shared with the calls in flight
};

}  // namespace sproxy::upstream
