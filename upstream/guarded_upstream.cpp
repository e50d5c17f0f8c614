#include "upstream/guarded_upstream.hpp"

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <optional>
#include <stdexcept>
#include <utility>

#include "upstream/model.hpp"

namespace sproxy::upstream {

namespace detail {

struct GuardedState {
  GuardedState(std::shared_ptr<Upstream> inner_upstream, GuardedUpstreamOptions o,
               std::shared_ptr<const GuardedUpstream::Clock> c,
               std::shared_ptr<GuardedUpstream::Sleeper> sl, Backoff::RandomSource random)
      : inner(std::move(inner_upstream)),
        options(o),
        clock(std::move(c)),
        sleeper(std::move(sl)),
        budget(o.budget),
        fallback(fallback_budget(o)),
        shares(o.budget, o.client_share),
        breaker(o.breaker),
        backoff(o.backoff, std::move(random)) {}

  // The local share of the budget a fleet process keeps to while Redis cannot be asked.
  static std::unique_ptr<RateBudget> fallback_budget(const GuardedUpstreamOptions& o) {
    if (!o.fleet) return nullptr;
    if (!(o.fallback_share > 0.0 && o.fallback_share <= 1.0)) {
      throw std::invalid_argument("guarded upstream: fallback_share must be in (0, 1]");
    }
    RateBudgetOptions share = o.budget;
    const auto scaled = [&](long limit) {
      return std::max(1L, static_cast<long>(static_cast<double>(limit) * o.fallback_share));
    };
    share.limit = scaled(share.limit);
    if (share.burst_limit > 0) share.burst_limit = scaled(share.burst_limit);
    return std::make_unique<RateBudget>(share);
  }

  struct Counters {
    std::atomic<std::uint64_t> calls{0};
    std::atomic<std::uint64_t> upstream_attempts{0};
    std::atomic<std::uint64_t> retries{0};
    std::atomic<std::uint64_t> budget_refusals{0};
    std::atomic<std::uint64_t> client_share_refusals{0};
    std::atomic<std::uint64_t> blocked_refusals{0};
    std::atomic<std::uint64_t> circuit_refusals{0};
    std::atomic<std::uint64_t> write_waits{0};
    std::atomic<std::uint64_t> upstream_429s{0};
    std::atomic<std::uint64_t> fleet_grants{0};
    std::atomic<std::uint64_t> fallback_grants{0};
  };

  const std::shared_ptr<Upstream> inner;
  const GuardedUpstreamOptions options;
  const std::shared_ptr<const GuardedUpstream::Clock> clock;
  const std::shared_ptr<GuardedUpstream::Sleeper> sleeper;
  RateBudget budget;
  const std::unique_ptr<RateBudget> fallback;  // fleet mode only
  std::atomic<bool> fleet_shared{true};
  ClientShares shares;
  CircuitBreaker breaker;
  const Backoff backoff;
  Counters counters;
};

}  // namespace detail

namespace {

namespace asio = boost::asio;
using detail::GuardedState;

void bump(std::atomic<std::uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

class SystemClock final : public GuardedUpstream::Clock {
 public:
  SteadyTime now() const override { return std::chrono::steady_clock::now(); }
  std::chrono::system_clock::time_point wall_now() const override {
    return std::chrono::system_clock::now();
  }
};

class TimerSleeper final : public GuardedUpstream::Sleeper {
 public:
  asio::awaitable<boost::system::error_code> sleep(SteadyDuration d) override {
    asio::steady_timer timer(co_await asio::this_coro::executor, d);
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    co_return ec;
  }
};

bool is_read(Method m) { return m == Method::get || m == Method::head; }

std::optional<UpstreamErrc> upstream_errc(const boost::system::error_code& ec) {
  if (ec.category() != upstream_category()) return std::nullopt;
  return static_cast<UpstreamErrc>(ec.value());
}

enum class Verdict { success, failure, neutral };

// What an attempt's outcome tells the circuit breaker about the upstream's health:
// transport failures (timeout, unreachable, connection_reset, bad_response, tls_error)
// and 5xx are failures, every other answer (2xx-4xx, 429 included) a success;
// overloaded and shutting_down are local and count as neither.
Verdict verdict_of(const CallResult& r) {
  if (r) return r->status >= 500 ? Verdict::failure : Verdict::success;
  switch (upstream_errc(r.error()).value_or(UpstreamErrc::ok)) {
    case UpstreamErrc::timeout:
    case UpstreamErrc::unreachable:
    case UpstreamErrc::connection_reset:
    case UpstreamErrc::bad_response:
    case UpstreamErrc::tls_error:
      return Verdict::failure;
    default:
      // Local conditions (overloaded, shutting_down, ...) and foreign error codes say
      // nothing about the upstream.
      return Verdict::neutral;
  }
}

bool is_retryable(bool read, const CallResult& r) {
  if (r) return read && r->status >= 500;
  const auto e = upstream_errc(r.error());
  if (!e) return false;
  if (!read) return *e == UpstreamErrc::unreachable;  // provably never sent
  switch (*e) {
    case UpstreamErrc::timeout:
    case UpstreamErrc::unreachable:
    case UpstreamErrc::connection_reset:
    case UpstreamErrc::bad_response:
      return true;
    default:
      return false;
  }
}

long whole_seconds_at_least_one(SteadyDuration d) {
  return std::max<long>(1, static_cast<long>(std::chrono::ceil<std::chrono::seconds>(d).count()));
}

CallResult synthesized_429(SteadyDuration wait) {
  const long secs = whole_seconds_at_least_one(wait);
  ApiResponse r;
  r.status = 429;
  r.body = envelope_error(errors::rate_limited(secs));
  r.retry_after = std::to_string(secs);
  return r;
}

// Settles a breaker permit exactly once; a permit left unsettled (the coroutine was
// destroyed mid-call, or an exception escaped) is handed back so that a half-open
// breaker does not wait for a probe that will never report.
class PermitGuard {
 public:
  PermitGuard(CircuitBreaker& breaker, CircuitPermit permit) : breaker_(breaker), permit_(permit) {}
  ~PermitGuard() {
    if (!settled_) breaker_.on_abandon(permit_);
  }
  PermitGuard(const PermitGuard&) = delete;
  PermitGuard& operator=(const PermitGuard&) = delete;

  // Hands the permit on unsettled (to the PermitGuard of the attempt that uses it).
  CircuitPermit release() {
    settled_ = true;
    return permit_;
  }

  void settle(Verdict v, SteadyTime now) {
    settled_ = true;
    switch (v) {
      case Verdict::success:
        breaker_.on_success(permit_);
        return;
      case Verdict::failure:
        breaker_.on_failure(permit_, now);
        return;
      case Verdict::neutral:
        breaker_.on_abandon(permit_);
        return;
    }
  }

 private:
  CircuitBreaker& breaker_;
  CircuitPermit permit_;
  bool settled_ = false;
};

// Feeds what an upstream answer says about the rate limit into the budget: Ratelimit /
// Ratelimit-Policy headers on any answer adjust it; a 429 blocks every upstream call
// until its Retry-After (delta-seconds or IMF-fixdate; capped at max_retry_after), or
// default_retry_after when it has none or an unreadable one. The upstream's own 429 is
// returned as is (its retry_after filled in when it had none).
// Returns the block an upstream 429 started (to share with the fleet).
std::optional<SteadyDuration> observe_answer(GuardedState& s, ApiResponse& r, SteadyTime now) {
  if (r.ratelimit) {
    if (auto h = parse_ratelimit(*r.ratelimit)) s.budget.observe_remaining(*h, now);
  }
  if (r.ratelimit_policy) {
    // An unreadable header leaves the announced limits as they were.
    auto policies = parse_ratelimit_policy(*r.ratelimit_policy);
    if (!policies.empty()) s.budget.observe_policies(std::move(policies));
  }
  if (r.status != 429) return std::nullopt;
  bump(s.counters.upstream_429s);
  std::optional<std::chrono::seconds> delay;
  if (r.retry_after) delay = parse_retry_after(*r.retry_after, s.clock->wall_now());
  SteadyDuration block =
      delay ? SteadyDuration(*delay) : SteadyDuration(s.options.default_retry_after);
  block = std::min(block, SteadyDuration(s.options.max_retry_after));
  s.budget.block_until(now + block);
  // Tell the client how long the proxy will refuse, when the upstream did not say.
  if (!delay) r.retry_after = std::to_string(whole_seconds_at_least_one(block));
  return block;
}

void note_fleet_mode(GuardedState& s, bool shared) {
  if (s.fleet_shared.exchange(shared) != shared && s.options.on_fleet_mode) {
    s.options.on_fleet_mode(shared);
  }
}

// A token of the budget: the local one alone; in fleet mode first the fleet's shared one
// (or, while Redis cannot be asked, the local fallback share), then the local one, which
// still applies what this process's own upstream answers said (Ratelimit headers, a
// 429's block). A token the fleet granted and the local budget then refuses is not
// returned: the fleet errs towards fewer calls.
asio::awaitable<BudgetDecision> take_budget_token(std::shared_ptr<GuardedState> s) {
  if (!s->options.fleet) co_return s->budget.try_acquire(s->clock->now());
  const FleetBudgetDecision shared = co_await s->options.fleet->try_acquire();
  note_fleet_mode(*s, shared.reached);
  const SteadyTime now = s->clock->now();
  if (shared.reached) {
    if (!shared.granted) co_return BudgetDecision{false, shared.reason, shared.wait};
    bump(s->counters.fleet_grants);
  } else {
    const BudgetDecision own = s->fallback->try_acquire(now);
    if (!own.granted) co_return own;
    bump(s->counters.fallback_grants);
  }
  co_return s->budget.try_acquire(now);
}

// One admission for the next attempt (a retry is an attempt like any other). Returns the
// breaker permit when the attempt may go, otherwise the answer to give the caller.
// The checks, in order (a half-open probe refused by a later one is handed back):
// - Circuit breaker: while it is open every call fails fast with circuit_open, and
//   spends no token.
// - Client share: a call made for a client (ApiRequest::client) also needs a token of
//   that client's share of the budget (client_share of each configured limit), taken
//   before the budget's own and handed back when the budget refuses. A client over its
//   share gets at once, read or write, a synthesized 429 with retry_after = the seconds
//   until its share frees a call, and client_refused set; the budget is not touched, so
//   every other client's calls go as before. Calls without a client are charged to
//   nobody's share.
// - Rate budget: without a token a read gets at once, and a write after waiting at most
//   write_budget_wait (until `wait_until`; only on its first attempt, and only when the
//   token is due within what is left of the wait), a synthesized 429 with the contract's
//   body (envelope_error(errors::rate_limited(s))) and retry_after = s, the whole seconds
//   until a token is due. Inside an upstream 429's Retry-After every call gets the same.
struct Admission {
  std::optional<CircuitPermit> permit;
  std::optional<CallResult> refusal;
};

asio::awaitable<Admission> admit(std::shared_ptr<GuardedState> s, std::string client,
                                 SteadyTime wait_until, bool is_retry) {
  SteadyTime now = s->clock->now();
  for (;;) {
    CircuitPermit permit = s->breaker.try_enter(now);
    if (!permit.allowed) {
      if (!is_retry) bump(s->counters.circuit_refusals);
      co_return Admission{std::nullopt, CallResult(make_error_code(UpstreamErrc::circuit_open))};
    }
    // The client's own share first: a client over it is refused without touching the
    // budget everyone shares.
    const BudgetDecision own = s->shares.try_acquire(client, now);
    if (!own.granted) {
      s->breaker.on_abandon(permit);
      if (!is_retry) bump(s->counters.client_share_refusals);
      CallResult refusal = synthesized_429(own.wait);
      refusal->client_refused = true;
      co_return Admission{std::nullopt, std::move(refusal)};
    }
    BudgetDecision d;
    {
      // Held across the fleet's Redis round trip: a call destroyed meanwhile hands it back.
      PermitGuard held(s->breaker, permit);
      d = co_await take_budget_token(s);
      permit = held.release();
    }
    if (d.granted) co_return Admission{permit, std::nullopt};
    s->shares.give_back(client);
    s->breaker.on_abandon(permit);
    now = s->clock->now();
    if (!is_retry && now + d.wait <= wait_until) {
      // The token is due before the write's wait runs out; someone else may take it
      // first, so check again when woken.
      bump(s->counters.write_waits);
      const boost::system::error_code ec = co_await s->sleeper->sleep(d.wait);
      if (ec) {
        co_return Admission{std::nullopt, CallResult(make_error_code(UpstreamErrc::shutting_down))};
      }
      now = s->clock->now();
      continue;
    }
    if (!is_retry) {
      bump(d.reason == BudgetRefusal::blocked ? s->counters.blocked_refusals
                                              : s->counters.budget_refusals);
    }
    co_return Admission{std::nullopt, synthesized_429(d.wait)};
  }
}

// Retries: a read is retried on timeout, unreachable, connection_reset, bad_response
// and 5xx; a write only on unreachable (the request provably never left). Never on a
// 4xx or 429, nor on tls_error / overloaded / circuit_open / rate_limited /
// shutting_down. At most max_retries retries, with full-jitter exponential backoff; no
// retry whose backoff would end later than retry_window after the call began. Each
// retry needs admission like the first attempt; without it the last real answer is
// returned (a 5xx is not turned into a 429).
asio::awaitable<CallResult> guarded_call(std::shared_ptr<GuardedState> s, ApiRequest request) {
  bump(s->counters.calls);
  const bool read = is_read(request.method);
  const SteadyTime started = s->clock->now();
  const SteadyTime write_wait_until =
      read ? started : started + SteadyDuration(s->options.write_budget_wait);
  const SteadyTime retry_deadline = started + SteadyDuration(s->options.retry_window);

  std::optional<CallResult> last;  // the previous attempt's answer, when retrying
  for (int attempt = 0;; ++attempt) {
    Admission admission = co_await admit(s, request.client, write_wait_until, last.has_value());
    if (!admission.permit) {
      // A retry that may not go returns the real answer it would have replaced.
      if (last) co_return std::move(*last);
      co_return std::move(*admission.refusal);
    }

    PermitGuard guard(s->breaker, *admission.permit);
    bump(s->counters.upstream_attempts);
    if (attempt > 0) bump(s->counters.retries);
    const bool may_retry = attempt < s->options.max_retries;
    // Keep the request for a retry; hand the last attempt the original. (A named
    // local, not a conditional expression inside co_await: GCC 12 miscompiles the
    // temporary that one materializes.)
    ApiRequest outgoing;
    if (may_retry) {
      outgoing = request;
    } else {
      outgoing = std::move(request);
    }
    CallResult result = co_await s->inner->call(std::move(outgoing));
    const SteadyTime now = s->clock->now();
    std::optional<SteadyDuration> block;
    if (result) block = observe_answer(*s, *result, now);
    guard.settle(verdict_of(result), now);
    if (block && s->options.fleet) {
      // One process told to wait: the whole fleet waits (best effort; this process's own
      // block holds either way).
      (void)co_await s->options.fleet->block_for(
          std::chrono::ceil<std::chrono::milliseconds>(*block));
    }

    if (!may_retry || !is_retryable(read, result)) co_return result;
    const SteadyDuration delay = s->backoff.delay(attempt);
    if (now + delay > retry_deadline) co_return result;
    last = std::move(result);
    const boost::system::error_code ec = co_await s->sleeper->sleep(delay);
    if (ec) co_return std::move(*last);
  }
}

}  // namespace

std::shared_ptr<const GuardedUpstream::Clock> GuardedUpstream::system_clock() {
  static const auto clock = std::make_shared<const SystemClock>();
  return clock;
}

std::shared_ptr<GuardedUpstream::Sleeper> GuardedUpstream::timer_sleeper() {
  return std::make_shared<TimerSleeper>();
}

GuardedUpstream::GuardedUpstream(std::shared_ptr<Upstream> inner, GuardedUpstreamOptions options,
                                 std::shared_ptr<const Clock> clock,
                                 std::shared_ptr<Sleeper> sleeper, Backoff::RandomSource random) {
  if (!inner) throw std::invalid_argument("guarded upstream: no inner upstream");
  if (options.max_retries < 0) {
    throw std::invalid_argument("guarded upstream: max_retries must not be negative");
  }
  using std::chrono::milliseconds;
  if (options.retry_window < milliseconds::zero() ||
      options.write_budget_wait < milliseconds::zero() ||
      options.default_retry_after < milliseconds::zero() ||
      options.max_retry_after < milliseconds::zero()) {
    throw std::invalid_argument("guarded upstream: waits and windows must not be negative");
  }
  if (!clock) clock = system_clock();
  if (!sleeper) sleeper = timer_sleeper();
  state_ = std::make_shared<detail::GuardedState>(std::move(inner), options, std::move(clock),
                                                  std::move(sleeper), std::move(random));
}

GuardedUpstream::~GuardedUpstream() = default;

boost::asio::awaitable<CallResult> GuardedUpstream::call(ApiRequest request) {
  return guarded_call(state_, std::move(request));
}

boost::asio::awaitable<std::size_t> GuardedUpstream::preconnect(std::size_t connections) {
  const std::shared_ptr<detail::GuardedState> state = state_;
  const std::size_t open = co_await state->inner->preconnect(connections);
  co_return open;
}

std::optional<std::int64_t> GuardedUpstream::activation_delay() const {
  return state_->inner->activation_delay();
}

std::string GuardedUpstream::describe() const {
  return "guarded(" + state_->inner->describe() + ")";
}

RateBudgetSnapshot GuardedUpstream::budget_snapshot() const {
  return state_->budget.snapshot(state_->clock->now());
}

CircuitSnapshot GuardedUpstream::breaker_snapshot() const {
  return state_->breaker.snapshot(state_->clock->now());
}

GuardedUpstreamStats GuardedUpstream::stats() const {
  const auto& c = state_->counters;
  auto get = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  GuardedUpstreamStats s;
  s.calls = get(c.calls);
  s.upstream_attempts = get(c.upstream_attempts);
  s.retries = get(c.retries);
  s.budget_refusals = get(c.budget_refusals);
  s.client_share_refusals = get(c.client_share_refusals);
  s.blocked_refusals = get(c.blocked_refusals);
  s.circuit_refusals = get(c.circuit_refusals);
  s.write_waits = get(c.write_waits);
  s.upstream_429s = get(c.upstream_429s);
  s.fleet_grants = get(c.fleet_grants);
  s.fallback_grants = get(c.fallback_grants);
  s.fleet_mode = state_->options.fleet != nullptr;
  s.fleet_shared = s.fleet_mode && state_->fleet_shared.load();
  return s;
}

const GuardedUpstreamOptions& GuardedUpstream::options() const { return state_->options; }

}  // namespace sproxy::upstream
