#include "upstream/emulation.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <random>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "upstream/model.hpp"

namespace sproxy::upstream {

namespace detail {

struct FaultInjectionState {
  FaultInjectionState(std::shared_ptr<Upstream> inner_upstream, FaultInjectionOptions o,
                      std::shared_ptr<FaultInjectingUpstream::Sleeper> sl,
                      FaultInjectingUpstream::RandomSource r)
      : inner(std::move(inner_upstream)),
        options(o),
        sleeper(std::move(sl)),
        random(std::move(r)) {}

  const std::shared_ptr<Upstream> inner;
  const FaultInjectionOptions options;
  const std::shared_ptr<FaultInjectingUpstream::Sleeper> sleeper;
  const FaultInjectingUpstream::RandomSource random;
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> injected_errors{0};
};

struct RateLimitEmulatorState {
  RateLimitEmulatorState(std::shared_ptr<Upstream> inner_upstream, RateLimitEmulatorOptions o,
                         std::shared_ptr<const RateLimitEmulator::Clock> c)
      : inner(std::move(inner_upstream)),
        clock(std::move(c)),
        limit(o),
        policy(format_ratelimit_policy(o.requests, o.window)) {}

  const std::shared_ptr<Upstream> inner;
  const std::shared_ptr<const RateLimitEmulator::Clock> clock;
  FixedWindowRateLimit limit;
  const std::string policy;  // the Ratelimit-Policy value, the same on every answer
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> admitted{0};
  std::atomic<std::uint64_t> refused{0};
  std::atomic<std::uint64_t> blocks{0};
};

}  // namespace detail

namespace {

namespace asio = boost::asio;
using detail::FaultInjectionState;
using detail::RateLimitEmulatorState;
using std::chrono::seconds;

void bump(std::atomic<std::uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }
std::uint64_t get(const std::atomic<std::uint64_t>& c) { return c.load(std::memory_order_relaxed); }

double thread_local_uniform() {
  thread_local std::mt19937_64 engine = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }();
  thread_local std::uniform_real_distribution<double> dist(0.0, 1.0);
  return dist(engine);
}

bool inject_error(const FaultInjectionState& s) {
  const double rate = s.options.error_rate;
  if (rate <= 0.0) return false;
  if (rate >= 1.0) return true;
  double u = s.random();
  if (!(u >= 0.0)) u = 0.0;  // also NaN
  if (u >= 1.0) u = std::nextafter(1.0, 0.0);
  return u < rate;
}

ApiResponse internal_error_answer() {
  const ApiError e = errors::internal_error();
  ApiResponse r;
  r.status = e.status;
  r.body = envelope_error(e);
  return r;
}

asio::awaitable<CallResult> fault_injecting_call(std::shared_ptr<FaultInjectionState> s,
                                                 ApiRequest request) {
  bump(s->calls);
  if (s->options.latency > std::chrono::milliseconds::zero()) {
    const boost::system::error_code ec = co_await s->sleeper->sleep(s->options.latency);
    if (ec) co_return CallResult(make_error_code(UpstreamErrc::shutting_down));
  }
  if (inject_error(*s)) {
    bump(s->injected_errors);
    co_return internal_error_answer();
  }
  co_return co_await s->inner->call(std::move(request));
}

// Whole seconds, rounded up: a client told to wait t seconds must not arrive early.
seconds ceil_seconds(SteadyDuration d) { return std::chrono::ceil<seconds>(d); }

CallResult refusal(const RateLimitVerdict& v, const std::string& policy) {
  const long secs = static_cast<long>(v.retry_after.count());
  ApiResponse r;
  r.status = 429;
  r.body = envelope_error(errors::rate_limited(secs));
  r.retry_after = std::to_string(secs);
  r.ratelimit = format_ratelimit(0, v.reset);
  r.ratelimit_policy = policy;
  return r;
}

asio::awaitable<CallResult> rate_limited_call(std::shared_ptr<RateLimitEmulatorState> s,
                                              ApiRequest request) {
  bump(s->calls);
  const RateLimitVerdict v = s->limit.admit(s->clock->now());
  if (!v.admitted) {
    bump(s->refused);
    if (v.block_started) bump(s->blocks);
    co_return refusal(v, s->policy);
  }
  bump(s->admitted);
  CallResult result = co_await s->inner->call(std::move(request));
  if (result) {
    result->ratelimit = format_ratelimit(v.remaining, v.reset);
    result->ratelimit_policy = s->policy;
  }
  co_return result;
}

std::string format_ms(std::chrono::milliseconds d) { return std::to_string(d.count()) + "ms"; }

}  // namespace

std::string format_ratelimit(long remaining, seconds reset) {
  return "\"default\";r=" + std::to_string(remaining) + ";t=" + std::to_string(reset.count());
}

std::string format_ratelimit_policy(long quota, seconds window) {
  return "\"burst\";q=" + std::to_string(quota) + ";w=" + std::to_string(window.count());
}

// ---------------------------------------------------------------------------------------
// FaultInjectingUpstream

FaultInjectingUpstream::FaultInjectingUpstream(std::shared_ptr<Upstream> inner,
                                               FaultInjectionOptions options,
                                               std::shared_ptr<Sleeper> sleeper,
                                               RandomSource random) {
  if (!inner) throw std::invalid_argument("fault injection: no inner upstream");
  if (options.latency < std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("fault injection: latency must not be negative");
  }
  if (!(options.error_rate >= 0.0 && options.error_rate <= 1.0)) {
    throw std::invalid_argument("fault injection: error_rate must be between 0 and 1");
  }
  if (!sleeper) sleeper = GuardedUpstream::timer_sleeper();
  if (!random) random = thread_local_uniform;
  state_ = std::make_shared<detail::FaultInjectionState>(std::move(inner), options,
                                                         std::move(sleeper), std::move(random));
}

FaultInjectingUpstream::~FaultInjectingUpstream() = default;

boost::asio::awaitable<CallResult> FaultInjectingUpstream::call(ApiRequest request) {
  return fault_injecting_call(state_, std::move(request));
}

std::optional<std::int64_t> FaultInjectingUpstream::activation_delay() const {
  return state_->inner->activation_delay();
}

std::string FaultInjectingUpstream::describe() const {
  std::ostringstream rate;
  rate << state_->options.error_rate;
  return "faults(latency=" + format_ms(state_->options.latency) + ", error_rate=" + rate.str() +
         ", " + state_->inner->describe() + ")";
}

FaultInjectionStats FaultInjectingUpstream::stats() const {
  return FaultInjectionStats{get(state_->calls), get(state_->injected_errors)};
}

const FaultInjectionOptions& FaultInjectingUpstream::options() const { return state_->options; }

// ---------------------------------------------------------------------------------------
// FixedWindowRateLimit

FixedWindowRateLimit::FixedWindowRateLimit(RateLimitEmulatorOptions options) : options_(options) {
  if (options_.requests < 1) {
    throw std::invalid_argument("rate limit emulation: requests must be at least 1");
  }
  if (options_.window < seconds{1} || options_.block < seconds{1}) {
    throw std::invalid_argument("rate limit emulation: window and block must be at least 1 s");
  }
}

RateLimitVerdict FixedWindowRateLimit::admit(SteadyTime now) {
  std::lock_guard lock(mu_);
  if (blocked_until_) {
    if (now < *blocked_until_) {
      // A racing caller's older `now` must not announce more than the block itself.
      const seconds left = std::min(ceil_seconds(*blocked_until_ - now), options_.block);
      return RateLimitVerdict{false, 0, left, left, false};
    }
    blocked_until_.reset();
    window_start_.reset();
  }
  if (!window_start_ || now - *window_start_ >= options_.window) {
    window_start_ = now;
    used_ = 0;
  }
  if (used_ < options_.requests) {
    ++used_;
    const seconds reset =
        std::min(ceil_seconds(*window_start_ + options_.window - now), options_.window);
    return RateLimitVerdict{true, options_.requests - used_, reset, seconds{0}, false};
  }
  // This request exceeds the limit: refuse everything for the block window.
  blocked_until_ = now + options_.block;
  return RateLimitVerdict{false, 0, options_.block, options_.block, true};
}

// ---------------------------------------------------------------------------------------
// RateLimitEmulator

RateLimitEmulator::RateLimitEmulator(std::shared_ptr<Upstream> inner,
                                     RateLimitEmulatorOptions options,
                                     std::shared_ptr<const Clock> clock) {
  if (!inner) throw std::invalid_argument("rate limit emulation: no inner upstream");
  if (!clock) clock = GuardedUpstream::system_clock();
  state_ =
      std::make_shared<detail::RateLimitEmulatorState>(std::move(inner), options, std::move(clock));
}

RateLimitEmulator::~RateLimitEmulator() = default;

boost::asio::awaitable<CallResult> RateLimitEmulator::call(ApiRequest request) {
  return rate_limited_call(state_, std::move(request));
}

std::optional<std::int64_t> RateLimitEmulator::activation_delay() const {
  return state_->inner->activation_delay();
}

std::string RateLimitEmulator::describe() const {
  const RateLimitEmulatorOptions& o = state_->limit.options();
  return "rate_limit(" + std::to_string(o.requests) + "/" + std::to_string(o.window.count()) +
         "s, block=" + std::to_string(o.block.count()) + "s, " + state_->inner->describe() + ")";
}

RateLimitEmulatorStats RateLimitEmulator::stats() const {
  const auto& s = *state_;
  return RateLimitEmulatorStats{get(s.calls), get(s.admitted), get(s.refused), get(s.blocks)};
}

const RateLimitEmulatorOptions& RateLimitEmulator::options() const {
  return state_->limit.options();
}

// ---------------------------------------------------------------------------------------
// Wiring

std::shared_ptr<Upstream> with_emulation(std::shared_ptr<Upstream> upstream,
                                         const config::EmulationConfig& cfg) {
  const std::chrono::milliseconds latency{cfg.latency_ms};
  // Checked here too: an out-of-range value would otherwise just switch the fault off.
  if (latency < std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("emulation: latency_ms must not be negative");
  }
  if (!(cfg.error_rate >= 0.0 && cfg.error_rate <= 1.0)) {
    throw std::invalid_argument("emulation: error_rate must be between 0 and 1");
  }
  const bool faults = latency > std::chrono::milliseconds::zero() || cfg.error_rate > 0.0;
  if (!cfg.rate_limit) {
    if (!faults) return upstream;
    return std::make_shared<FaultInjectingUpstream>(std::move(upstream),
                                                    FaultInjectionOptions{latency, cfg.error_rate});
  }
  if (cfg.error_rate > 0.0) {
    upstream = std::make_shared<FaultInjectingUpstream>(
        std::move(upstream),
        FaultInjectionOptions{std::chrono::milliseconds::zero(), cfg.error_rate});
  }
  upstream = std::make_shared<RateLimitEmulator>(
      std::move(upstream),
      RateLimitEmulatorOptions{cfg.rate_limit_requests, seconds{cfg.rate_limit_window_s},
                               seconds{cfg.rate_limit_block_s}});
  if (latency > std::chrono::milliseconds::zero()) {
    upstream = std::make_shared<FaultInjectingUpstream>(std::move(upstream),
                                                        FaultInjectionOptions{latency, 0.0});
  }
  return upstream;
}

}  // namespace sproxy::upstream
