// Stand-in Cloudflare behaviour: Upstream decorators that make one secrets-proxy, serving
// its embedded store over HTTP, behave like the real Secrets Store API when it is the
// upstream of another secrets-proxy (tests, benchmarks). Both are off unless configured
// (config::EmulationConfig; make_upstream wires them).
//
// - FaultInjectingUpstream: every call first waits a fixed latency (like a remote API),
//   then a configurable fraction of calls is answered 500 with the contract's
//   internal_error envelope instead of reaching the inner upstream.
// - RateLimitEmulator: Cloudflare's fixed-window limit (default 1,200 requests per
//   300 s). Every answer carries `Ratelimit: "default";r=<remaining>;t=<seconds>` and
//   `Ratelimit-Policy: "burst";q=<quota>;w=<window>` (the contract's spelling). The
//   request that exceeds the limit, and every call after it for the block window
//   (default 300 s), is refused with 429, body envelope_error(errors::rate_limited(s)),
//   Retry-After = s, the whole seconds left in the block; the inner upstream is not
//   called while blocked. The first request after the block opens a fresh window.
//   A window opens with the first request after the previous one ended (a fixed
//   window, not a sliding one: a client can spend N at the end of one window and N
//   more at the start of the next, as on the real service).
//   The inner upstream's own Ratelimit / Ratelimit-Policy are replaced by the
//   emulator's; its status, body and Retry-After are kept. A transport failure of the
//   inner upstream still spent a request.
//   FixedWindowRateLimit is the policy alone, a pure object taking `now`.
// - with_emulation(): the configured chain around an upstream (make_upstream uses it).
//
// Time: the decorators read their injected Clock and wait through their injected
// Sleeper (the GuardedUpstream interfaces); the defaults are steady_clock and a
// steady_timer on the caller's executor. Tests inject fakes and never sleep.
// Thread safety: one decorator is shared by every io thread. FixedWindowRateLimit
// takes a mutex for a few comparisons; nothing is held across an await. The Clock,
// Sleeper, random source and inner upstream must be safe to call concurrently.
// Ownership: each decorator holds its inner upstream; a call keeps the shared state
// alive, so a decorator may be destroyed while calls are in flight.
// Errors: constructors throw std::invalid_argument on options that cannot work (a
// start-up error). A latency wait that ends in error (operation_aborted at shutdown)
// fails the call with UpstreamErrc::shutting_down. Nothing else fails on its own.
// Cancellation: no deadline of their own beyond the fixed latency; the inner upstream
// enforces its request timeout.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "config/config.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/resilience.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {

namespace detail {
struct FaultInjectionState;  // defined in emulation.cpp
struct RateLimitEmulatorState;
}  // namespace detail

// ---------------------------------------------------------------------------------------
// FaultInjectingUpstream

struct FaultInjectionOptions {
  std::chrono::milliseconds latency{0};  // awaited before every call; 0 = none
  double error_rate = 0.0;               // 0..1: fraction of calls answered 500
};

// Counters for metrics; monotonic since construction.
struct FaultInjectionStats {
  std::uint64_t calls = 0;            // calls into the decorator
  std::uint64_t injected_errors = 0;  // of those, answered 500 without the inner upstream
};

class FaultInjectingUpstream final : public Upstream {
 public:
  using Sleeper = GuardedUpstream::Sleeper;
  // Uniform in [0, 1); values outside are clamped. Must be safe to call concurrently.
  // A call is answered 500 when its draw is below error_rate (no draw at rate 0 or 1).
  using RandomSource = std::function<double()>;

  // Throws std::invalid_argument when `inner` is null, latency is negative or
  // error_rate is not within [0, 1]. A null sleeper waits on a steady_timer; an empty
  // random source is a thread-local Mersenne Twister seeded from std::random_device.
  FaultInjectingUpstream(std::shared_ptr<Upstream> inner, FaultInjectionOptions options,
                         std::shared_ptr<Sleeper> sleeper = nullptr, RandomSource random = {});
  ~FaultInjectingUpstream() override;
  FaultInjectingUpstream(const FaultInjectingUpstream&) = delete;
  FaultInjectingUpstream& operator=(const FaultInjectingUpstream&) = delete;

  boost::asio::awaitable<CallResult> call(ApiRequest request) override;
  // e.g. "faults(latency=200ms, error_rate=0.05, embedded)".
  std::string describe() const override;
  std::optional<std::int64_t> activation_delay() const override;

  FaultInjectionStats stats() const;
  const FaultInjectionOptions& options() const;

 private:
  std::shared_ptr<detail::FaultInjectionState> state_;  // shared with the calls in flight
};

// ---------------------------------------------------------------------------------------
// RateLimitEmulator

struct RateLimitEmulatorOptions {
  long requests = 1200;              // admitted per window
  std::chrono::seconds window{300};  // fixed window
  std::chrono::seconds block{300};   // every call refused this long once exceeded
};

// The emulator's decision for one request, with what its headers announce.
struct RateLimitVerdict {
  bool admitted = false;
  long remaining = 0;                   // Ratelimit r: requests left after this one
  std::chrono::seconds reset{0};        // Ratelimit t: until the window (or block) ends, >= 1
  std::chrono::seconds retry_after{0};  // refused only: until the block ends, >= 1
  bool block_started = false;           // this request exceeded the limit
  bool operator==(const RateLimitVerdict&) const = default;
};

// The fixed-window policy alone. Pure: no clock, no I/O; `now` is a parameter.
// Thread safe: one mutex, held for a few comparisons. A `now` slightly older than one
// already seen (callers racing to the lock) counts in the current window.
class FixedWindowRateLimit {
 public:
  // Throws std::invalid_argument unless requests >= 1, window >= 1 s and block >= 1 s.
  explicit FixedWindowRateLimit(RateLimitEmulatorOptions options = {});

  // Counts one request arriving at `now` and decides it.
  RateLimitVerdict admit(SteadyTime now);
  const RateLimitEmulatorOptions& options() const { return options_; }

 private:
  const RateLimitEmulatorOptions options_;
  std::mutex mu_;
  std::optional<SteadyTime> window_start_;  // none until the first request of a window
  long used_ = 0;                           // admitted in the current window
  std::optional<SteadyTime> blocked_until_;
};

// Counters for metrics; monotonic since construction.
struct RateLimitEmulatorStats {
  std::uint64_t calls = 0;     // calls into the decorator
  std::uint64_t admitted = 0;  // passed to the inner upstream
  std::uint64_t refused = 0;   // answered 429 by the emulator
  std::uint64_t blocks = 0;    // times the limit was exceeded and a block began
};

class RateLimitEmulator final : public Upstream {
 public:
  using Clock = GuardedUpstream::Clock;

  // Throws std::invalid_argument when `inner` is null or the options cannot work (see
  // FixedWindowRateLimit). A null clock is the process's steady_clock.
  RateLimitEmulator(std::shared_ptr<Upstream> inner, RateLimitEmulatorOptions options = {},
                    std::shared_ptr<const Clock> clock = nullptr);
  ~RateLimitEmulator() override;
  RateLimitEmulator(const RateLimitEmulator&) = delete;
  RateLimitEmulator& operator=(const RateLimitEmulator&) = delete;

  boost::asio::awaitable<CallResult> call(ApiRequest request) override;
  // e.g. "rate_limit(1200/300s, block=300s, embedded)".
  std::string describe() const override;
  std::optional<std::int64_t> activation_delay() const override;

  RateLimitEmulatorStats stats() const;
  const RateLimitEmulatorOptions& options() const;

 private:
  std::shared_ptr<detail::RateLimitEmulatorState> state_;  // shared with the calls in flight
};

// ---------------------------------------------------------------------------------------
// Wiring

// `upstream` wrapped as `cfg` asks, or `upstream` itself when emulation is off. With the
// rate limit on, the chain is the real service's: the latency (the network round trip)
// outermost, so that 429s are delayed too; then the limit, which counts every request
// that arrives; the injected 500s innermost (the origin failing behind the edge, still
// a counted request carrying the Ratelimit headers):
//   faults(latency) -> rate_limit -> faults(error_rate) -> upstream.
// Without it, one FaultInjectingUpstream does both. Throws std::invalid_argument on
// values the loader would have refused.
std::shared_ptr<Upstream> with_emulation(std::shared_ptr<Upstream> upstream,
                                         const config::EmulationConfig& cfg);

// Header values as the emulator writes them.
std::string format_ratelimit(long remaining, std::chrono::seconds reset);
std::string format_ratelimit_policy(long quota, std::chrono::seconds window);

}  // namespace sproxy::upstream
