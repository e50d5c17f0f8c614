// GuardedUpstream: an Upstream decorator that keeps secrets-proxy a good citizen of the
// Cloudflare API (1,200 requests per 5 minutes per user; over it, every call is refused
// with 429 for 5 minutes), with the policies of resilience.hpp: a rate budget with
// per-client shares, honouring the upstream's 429 and Ratelimit headers, retries with
// backoff, and a circuit breaker. Where a call is refused locally it gets a synthesized
// 429 with the contract's body and a Retry-After, or UpstreamErrc::circuit_open while
// the breaker is open; the cache above serves stale or passes it on. The rules of each
// policy are written next to the code that applies it (guarded_upstream.cpp).
//
// Time: every policy reads the injected Clock and waits through the injected Sleeper
// (defaults: the system clocks, a steady_timer); tests inject fakes and never sleep.
// Thread safety: one instance is shared by every io thread; the policies lock briefly,
// nothing is held across an await. Clock, Sleeper, random source and inner upstream
// must be safe to call concurrently.
// Ownership: holds the inner upstream; calls in flight keep the shared state alive.
// Cancellation: no deadline of its own beyond the bounded waits (the inner upstream
// has the request timeout, the fleet's Redis its command deadline); a call destroyed
// mid-flight hands back its breaker probe.
// Fleet mode (options.fleet): each admission also takes a token of the fleet's shared
// budget (or, while Redis cannot be asked, of the local fallback share), and an upstream
// 429 blocks the whole fleet.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "upstream/fleet_budget.hpp"
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
  // Fleet mode: the budget's limits and upstream 429 blocks are shared with every process
  // of the fleet through Redis (null: this process alone). While Redis cannot be asked,
  // this process keeps to fallback_share of each limit on its own, and goes back to the
  // shared budget as soon as Redis answers again.
  std::shared_ptr<FleetBudget> fleet;
  double fallback_share = 0.5;  // in (0, 1]
  // Told once per change between the shared budget (true) and the fallback (false); may
  // be called on any io thread, never with a lock held.
  std::function<void(bool shared)> on_fleet_mode;
};

// Counters for metrics; monotonic since construction.
struct GuardedUpstreamStats {
  std::uint64_t calls = 0;                  // calls into the decorator
  std::uint64_t upstream_attempts = 0;      // calls made to the inner upstream
  std::uint64_t retries = 0;                // of those, retries
  std::uint64_t budget_refusals = 0;        // synthesized 429: budget or Ratelimit exhausted
  std::uint64_t client_share_refusals = 0;  // synthesized 429: the client's share is spent
  std::uint64_t blocked_refusals = 0;       // synthesized 429: inside an upstream Retry-After
  std::uint64_t circuit_refusals = 0;       // circuit_open answers
  std::uint64_t write_waits = 0;            // times a write waited for a token
  std::uint64_t upstream_429s = 0;          // 429 answers received from the upstream
  std::uint64_t fleet_grants = 0;           // tokens granted by the fleet's shared budget
  std::uint64_t fallback_grants = 0;        // tokens granted by the local fallback share
  bool fleet_mode = false;                  // a fleet budget is configured
  bool fleet_shared = false;                // ... and the last call reached it (gauge)
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
  std::optional<std::int64_t> activation_delay() const override;

  // State for the admin endpoint and metrics, at the injected clock's now.
  RateBudgetSnapshot budget_snapshot() const;
  CircuitSnapshot breaker_snapshot() const;
  GuardedUpstreamStats stats() const;
  const GuardedUpstreamOptions& options() const;

 private:
  std::shared_ptr<detail::GuardedState> state_;  // shared with the calls in flight
};

}  // namespace sproxy::upstream
