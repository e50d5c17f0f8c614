// Tests for the GuardedUpstream decorator (upstream/guarded_upstream.hpp), which wires
// the rate budget, circuit breaker and backoff around an Upstream. It runs on a fake
// clock whose sleeper records each delay and moves the clock instead of waiting.
#include "upstream/guarded_upstream.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/resilience_options.hpp"
#include "tests/support/run_awaitable.hpp"
#include "tests/support/scripted_upstream.hpp"
#include "upstream/model.hpp"
#include "upstream/resilience.hpp"

namespace sproxy::upstream {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using std::chrono::system_clock;
using test::breaker_options;
using test::budget_options;
using test::kT0;
using test::kWallT0;

// ---------------------------------------------------------------------------------------
// GuardedUpstream fakes

class FakeClock final : public GuardedUpstream::Clock {
 public:
  SteadyTime now() const override { return steady_; }
  system_clock::time_point wall_now() const override { return wall_; }
  void advance(SteadyDuration d) {
    steady_ += d;
    wall_ += std::chrono::duration_cast<system_clock::duration>(d);
  }
  void advance_to(SteadyTime t) {
    if (t > steady_) advance(t - steady_);
  }

 private:
  SteadyTime steady_ = kT0;
  system_clock::time_point wall_ = kWallT0;
};

// Records every delay and moves the fake clock to the wake-up time instead of waiting.
// It yields to the io_context first, so that concurrent sleepers interleave as they
// would on real timers.
class FakeSleeper final : public GuardedUpstream::Sleeper {
 public:
  explicit FakeSleeper(std::shared_ptr<FakeClock> clock) : clock_(std::move(clock)) {}
  asio::awaitable<boost::system::error_code> sleep(SteadyDuration d) override {
    delays.push_back(d);
    const SteadyTime wake = clock_->now() + d;
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    clock_->advance_to(wake);
    co_return boost::system::error_code{};
  }
  std::vector<SteadyDuration> delays;

 private:
  std::shared_ptr<FakeClock> clock_;
};

ApiResponse answer(unsigned status) {
  ApiResponse r;
  r.status = status;
  if (status < 400) {
    r.body = envelope_success(nlohmann::json::array());
  } else {
    ApiError e = status == 404 ? errors::store_not_found() : errors::internal_error();
    e.status = status;
    r.body = envelope_error(e);
  }
  return r;
}

ApiResponse too_many_requests(std::optional<std::string> retry_after) {
  ApiResponse r;
  r.status = 429;
  r.body = envelope_error(errors::rate_limited(1));
  r.retry_after = std::move(retry_after);
  return r;
}

using test::ScriptedUpstream;

constexpr const char* kStores =
    "/client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/stores";

ApiRequest request(Method m, std::string body = "") {
  return ApiRequest{m, kStores, std::move(body)};
}
ApiRequest get() { return request(Method::get); }
ApiRequest post() { return request(Method::post, R"({"name":"main"})"); }

CallResult transport(UpstreamErrc e) { return make_error_code(e); }

class GuardedUpstreamTest : public ::testing::Test {
 protected:
  GuardedUpstreamTest() {
    options.budget = budget_options(10, 300s);
    options.breaker = breaker_options(3, 30s);
    options.backoff = BackoffOptions{100ms, 1000ms};
    options.max_retries = 2;
    options.retry_window = 3s;
    options.write_budget_wait = 2s;
    options.default_retry_after = 60s;
  }

  GuardedUpstream& guarded() {
    if (!guarded_) {
      guarded_ = std::make_unique<GuardedUpstream>(inner, options, clock, sleeper,
                                                   [this] { return random; });
    }
    return *guarded_;
  }

  CallResult call(ApiRequest r) { return test::run_awaitable(ioc, guarded().call(std::move(r))); }

  unsigned status_of(ApiRequest r) {
    CallResult res = call(std::move(r));
    if (!res) {
      ADD_FAILURE() << "transport error " << res.error().message();
      return 0;
    }
    return res->status;
  }

  // Expects the decorator's own 429: the contract body and Retry-After in seconds.
  void expect_synthesized_429(const CallResult& r, long seconds) {
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->status, 429u);
    EXPECT_EQ(r->body, envelope_error(errors::rate_limited(seconds)));
    EXPECT_EQ(r->retry_after, std::to_string(seconds));
  }

  // Spends a whole budget of two requests per 10 s at kT0 and kT0 + 5 s, then moves
  // the clock to kT0 + `at`.
  void spend_two_of_two(SteadyDuration at) {
    options.budget = budget_options(2, 10s);
    ASSERT_EQ(status_of(get()), 200u);
    clock->advance(5s);
    ASSERT_EQ(status_of(get()), 200u);
    clock->advance_to(kT0 + at);
  }

  void destroy_guarded() { guarded_.reset(); }

  asio::io_context ioc;
  GuardedUpstreamOptions options;
  double random = 1.0;  // clamped just below 1: every delay is its ceiling
  std::shared_ptr<FakeClock> clock = std::make_shared<FakeClock>();
  std::shared_ptr<FakeSleeper> sleeper = std::make_shared<FakeSleeper>(clock);
  std::shared_ptr<ScriptedUpstream> inner = std::make_shared<ScriptedUpstream>();

 private:
  std::unique_ptr<GuardedUpstream> guarded_;
};

using GuardedUpstreamBudget = GuardedUpstreamTest;
using GuardedUpstreamRetries = GuardedUpstreamTest;
using GuardedUpstreamBreaker = GuardedUpstreamTest;

// ---------------------------------------------------------------------------------------
// GuardedUpstream: rate budget and upstream rate limits

TEST_F(GuardedUpstreamBudget, NeverCallsTheUpstreamMoreOftenThanTheBudgetDuringABurst) {
  std::vector<CallResult> results;
  for (int i = 0; i < 25; ++i) results.push_back(call(get()));
  EXPECT_EQ(inner->calls(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(results[i]->status, 200u);
  for (int i = 10; i < 25; ++i) expect_synthesized_429(results[i], 300);
  EXPECT_EQ(guarded().stats().budget_refusals, 15u);
  EXPECT_EQ(guarded().budget_snapshot().remaining, 0);
}

ApiRequest get_for(std::string client) {
  ApiRequest r = get();
  r.client = std::move(client);
  return r;
}

TEST_F(GuardedUpstreamBudget, RefusesAClientOverItsShareWhileAnotherClientsCallsGo) {
  options.budget = budget_options(20, 300s);
  options.client_share = 0.25;  // 5 calls per client per window
  std::vector<CallResult> greedy;
  for (int i = 0; i < 8; ++i) greedy.push_back(call(get_for("greedy")));
  EXPECT_EQ(inner->calls(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(greedy[i]->status, 200u);
  for (int i = 5; i < 8; ++i) {
    expect_synthesized_429(greedy[i], 300);
    EXPECT_TRUE(greedy[i]->client_refused);
  }
  // The refusals spent nothing of the budget everyone shares.
  EXPECT_EQ(guarded().budget_snapshot().remaining, 15);
  EXPECT_EQ(status_of(get_for("other")), 200u);
  EXPECT_EQ(inner->calls(), 6u);
  EXPECT_EQ(guarded().stats().client_share_refusals, 3u);
  EXPECT_EQ(guarded().stats().budget_refusals, 0u);
  // Its share frees up as its calls leave the window.
  clock->advance(300s);
  EXPECT_EQ(status_of(get_for("greedy")), 200u);
}

TEST_F(GuardedUpstreamBudget, RefusesAWriteOverItsClientsShareAtOnce) {
  options.budget = budget_options(4, 300s);
  options.client_share = 0.5;
  for (int i = 0; i < 2; ++i) ASSERT_EQ(status_of(get_for("a")), 200u);
  ApiRequest write = post();
  write.client = "a";
  const CallResult refused = call(write);
  expect_synthesized_429(refused, 300);
  EXPECT_TRUE(refused->client_refused);
  EXPECT_EQ(guarded().stats().write_waits, 0u);
  EXPECT_EQ(inner->calls(), 2u);
}

TEST_F(GuardedUpstreamBudget, DoesNotChargeAClientForACallTheSharedBudgetRefused) {
  options.budget = budget_options(4, 300s);
  options.client_share = 0.5;                                     // 2 per client
  for (int i = 0; i < 4; ++i) ASSERT_EQ(status_of(get()), 200u);  // the budget is spent
  clock->advance(100s);
  const CallResult refused = call(get_for("b"));
  expect_synthesized_429(refused, 200);
  EXPECT_FALSE(refused->client_refused);
  clock->advance(200s);  // the budget is whole again; b's refused call is still in its window
  // b's share is whole: both of its calls go.
  EXPECT_EQ(status_of(get_for("b")), 200u);
  EXPECT_EQ(status_of(get_for("b")), 200u);
}

TEST_F(GuardedUpstreamBudget, KeepsTheSafetyMarginOfTheBudgetUnspent) {
  options.budget = budget_options(20, 300s, 0.25);
  for (int i = 0; i < 25; ++i) (void)call(get());
  EXPECT_EQ(inner->calls(), 15u);
}

TEST_F(GuardedUpstreamBudget, CallsTheUpstreamAgainOnceSpentTokensReturn) {
  for (int i = 0; i < 10; ++i) ASSERT_EQ(status_of(get()), 200u);
  clock->advance(299s);
  expect_synthesized_429(call(get()), 1);
  clock->advance(1s);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(status_of(get()), 200u);
  EXPECT_EQ(inner->calls(), 20u);
}

TEST_F(GuardedUpstreamBudget, HonoursRetryAfterSecondsOfAnUpstream429) {
  inner->then(too_many_requests("120"));
  const CallResult first = call(get());
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 429u);  // the upstream's own answer, passed on
  EXPECT_EQ(first->retry_after, "120");

  expect_synthesized_429(call(get()), 120);
  clock->advance(100s);
  expect_synthesized_429(call(get()), 20);
  expect_synthesized_429(call(post()), 20);  // too long for a write to wait
  EXPECT_TRUE(sleeper->delays.empty());
  EXPECT_EQ(inner->calls(), 1u);
  EXPECT_EQ(guarded().budget_snapshot().blocked_until, clock->now() + 20s);

  clock->advance(20s);
  EXPECT_EQ(status_of(get()), 200u);
  EXPECT_EQ(inner->calls(), 2u);
  EXPECT_EQ(guarded().stats().upstream_429s, 1u);
  EXPECT_EQ(guarded().stats().blocked_refusals, 3u);
}

TEST_F(GuardedUpstreamBudget, HonoursRetryAfterGivenAsAnHttpDate) {
  inner->then(too_many_requests(format_http_date(clock->wall_now() + 90s)));
  EXPECT_EQ(status_of(get()), 429u);
  clock->advance(89s);
  expect_synthesized_429(call(get()), 1);
  EXPECT_EQ(inner->calls(), 1u);
  clock->advance(1s);
  EXPECT_EQ(status_of(get()), 200u);
  EXPECT_EQ(inner->calls(), 2u);
}

TEST_F(GuardedUpstreamBudget, BlocksForTheDefaultWhenA429HasNoUsableRetryAfter) {
  inner->then(too_many_requests(std::nullopt));
  const CallResult first = call(get());
  ASSERT_TRUE(first);
  EXPECT_EQ(first->retry_after, "60");  // filled in for the client
  clock->advance(59s);
  expect_synthesized_429(call(get()), 1);
  clock->advance(1s);
  inner->then(too_many_requests("tomorrow"));
  EXPECT_EQ(call(get())->retry_after, "60");
  clock->advance(59s);
  EXPECT_EQ(call(get())->status, 429u);
  EXPECT_EQ(inner->calls(), 2u);
}

TEST_F(GuardedUpstreamBudget, CapsTheBlockOfAnAbsurdRetryAfter) {
  options.max_retry_after = 600s;
  inner->then(too_many_requests("86400"));
  (void)call(get());
  clock->advance(599s);
  EXPECT_EQ(call(get())->status, 429u);
  clock->advance(1s);
  EXPECT_EQ(status_of(get()), 200u);
}

TEST_F(GuardedUpstreamBudget, LowersTheAllowanceToTheUpstreamsRatelimitRemaining) {
  ApiResponse first = answer(200);
  first.ratelimit = R"("default";r=2;t=30)";
  inner->then(first);
  EXPECT_EQ(status_of(get()), 200u);
  EXPECT_EQ(status_of(get()), 200u);
  EXPECT_EQ(status_of(get()), 200u);
  expect_synthesized_429(call(get()), 30);
  EXPECT_EQ(inner->calls(), 3u);
  EXPECT_EQ(guarded().budget_snapshot().upstream_remaining, 0);
  clock->advance(30s);
  EXPECT_EQ(status_of(get()), 200u);
  EXPECT_EQ(inner->calls(), 4u);
}

TEST_F(GuardedUpstreamBudget, LowersTheCapacityToTheUpstreamsRatelimitPolicy) {
  ApiResponse first = answer(200);
  first.ratelimit_policy = R"("burst";q=4;w=60)";
  inner->then(first);
  for (int i = 0; i < 8; ++i) (void)call(get());
  EXPECT_EQ(inner->calls(), 4u);
  EXPECT_THAT(guarded().budget_snapshot().announced, ::testing::ElementsAre(RatePolicy{4, 60s}));
  clock->advance(60s);
  for (int i = 0; i < 8; ++i) (void)call(get());
  EXPECT_EQ(inner->calls(), 8u);
}

TEST_F(GuardedUpstreamBudget, AWriteWaitsForATokenDueWithinItsWaitThenCallsTheUpstream) {
  spend_two_of_two(9s);
  expect_synthesized_429(call(get()), 1);  // reads never wait
  EXPECT_EQ(status_of(post()), 200u);
  EXPECT_THAT(sleeper->delays, ::testing::ElementsAre(1s));
  EXPECT_EQ(clock->now(), kT0 + 10s);
  EXPECT_EQ(inner->calls(), 3u);
  EXPECT_EQ(inner->requests().back().method, Method::post);
  EXPECT_EQ(guarded().stats().write_waits, 1u);
}

TEST_F(GuardedUpstreamBudget, AWriteGets429AtOnceWhenNoTokenIsDueWithinItsWait) {
  spend_two_of_two(6s);
  expect_synthesized_429(call(post()), 4);
  EXPECT_TRUE(sleeper->delays.empty());
  EXPECT_EQ(inner->calls(), 2u);
}

TEST_F(GuardedUpstreamBudget, WritesWaitingForOneTokenLetOneThroughAndTheOtherGets429) {
  spend_two_of_two(9s);
  auto a = test::spawn(ioc.get_executor(), guarded().call(post()));
  auto b = test::spawn(ioc.get_executor(), guarded().call(request(Method::del)));
  test::run_until(ioc, [&] { return a->done() && b->done(); });
  EXPECT_THAT(sleeper->delays, ::testing::ElementsAre(1s, 1s));  // both waited
  const CallResult& ra = a->get();
  const CallResult& rb = b->get();
  ASSERT_TRUE(ra);
  ASSERT_TRUE(rb);
  const CallResult& winner = ra->status == 200 ? ra : rb;
  const CallResult& loser = ra->status == 200 ? rb : ra;
  EXPECT_EQ(winner->status, 200u);
  // The next token is due at kT0 + 15 s, past both writes' wait (kT0 + 11 s).
  expect_synthesized_429(loser, 5);
  EXPECT_EQ(inner->calls(), 3u);
}

TEST_F(GuardedUpstreamBudget, AWriteWaitsOutAShortUpstreamRetryAfter) {
  inner->then(too_many_requests("1"));
  EXPECT_EQ(status_of(get()), 429u);
  EXPECT_EQ(status_of(post()), 200u);
  EXPECT_THAT(sleeper->delays, ::testing::ElementsAre(1s));
  EXPECT_EQ(inner->calls(), 2u);
}

// ---------------------------------------------------------------------------------------
// GuardedUpstream: retries

TEST_F(GuardedUpstreamRetries, RetriesAReadAfter5xxAndTimeoutAndReturnsTheSuccess) {
  inner->then(answer(503));
  inner->then(transport(UpstreamErrc::timeout));
  inner->then(answer(200));
  EXPECT_EQ(status_of(get()), 200u);
  EXPECT_EQ(inner->calls(), 3u);
  // Full jitter with a random source at its top: each delay is its ceiling.
  EXPECT_THAT(sleeper->delays, ::testing::ElementsAre(100ms, 200ms));
  EXPECT_EQ(guarded().stats().retries, 2u);
}

TEST_F(GuardedUpstreamRetries, DrawsEachBackoffDelayWithinItsFullJitterBounds) {
  options.breaker = breaker_options(100, 30s);
  random = 0.5;
  inner->always(answer(500));
  EXPECT_EQ(status_of(get()), 500u);
  ASSERT_EQ(sleeper->delays.size(), 2u);
  EXPECT_EQ(sleeper->delays[0], 50ms);   // in [0, 100 ms]
  EXPECT_EQ(sleeper->delays[1], 100ms);  // in [0, 200 ms]
  random = 0.0;
  sleeper->delays.clear();
  EXPECT_EQ(status_of(get()), 500u);
  EXPECT_THAT(sleeper->delays, ::testing::ElementsAre(0ms, 0ms));
}

TEST_F(GuardedUpstreamRetries, GivesUpOnAReadAfterMaxRetriesWithTheLastAnswer) {
  inner->then(answer(502));
  inner->then(answer(503));
  inner->then(answer(504));
  inner->then(answer(200));
  EXPECT_EQ(status_of(get()), 504u);
  EXPECT_EQ(inner->calls(), 3u);
}

TEST_F(GuardedUpstreamRetries, RetriesAReadAfterEveryRetryableTransportFailure) {
  for (UpstreamErrc e : {UpstreamErrc::timeout, UpstreamErrc::unreachable,
                         UpstreamErrc::connection_reset, UpstreamErrc::bad_response}) {
    inner->then(transport(e));
    EXPECT_EQ(status_of(get()), 200u) << make_error_code(e).message();
  }
  EXPECT_EQ(inner->calls(), 8u);
}

TEST_F(GuardedUpstreamRetries, DoesNotRetryAReadAfterATlsErrorOrALocalOverload) {
  for (UpstreamErrc e : {UpstreamErrc::tls_error, UpstreamErrc::overloaded}) {
    inner->then(transport(e));
    const CallResult r = call(get());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), make_error_code(e));
  }
  EXPECT_EQ(inner->calls(), 2u);
}

TEST_F(GuardedUpstreamRetries, StopsRetryingWhenTheBackoffWouldEndPastTheRetryWindow) {
  inner->on_call([clock = clock] { clock->advance(1500ms); });
  inner->always(answer(503));
  EXPECT_EQ(status_of(get()), 503u);
  // 0 -> 1.5 s, backoff 100 ms, 1.6 -> 3.1 s; a 200 ms backoff would end at 3.3 s > 3 s.
  EXPECT_EQ(inner->calls(), 2u);
  EXPECT_THAT(sleeper->delays, ::testing::ElementsAre(100ms));
}

TEST_F(GuardedUpstreamRetries, SpendsATokenOnEveryRetryAndKeepsTheRealAnswerWhenOutOfThem) {
  options.budget = budget_options(2, 300s);
  inner->always(answer(503));
  EXPECT_EQ(status_of(get()), 503u);  // not turned into a 429
  EXPECT_EQ(inner->calls(), 2u);
  EXPECT_EQ(guarded().budget_snapshot().remaining, 0);
}

TEST_F(GuardedUpstreamRetries, NeverRetriesAWriteAfterATimeoutResetOr5xx) {
  inner->then(transport(UpstreamErrc::timeout));
  const CallResult timed_out = call(post());
  ASSERT_FALSE(timed_out);
  EXPECT_EQ(timed_out.error(), make_error_code(UpstreamErrc::timeout));
  inner->then(transport(UpstreamErrc::connection_reset));
  EXPECT_FALSE(call(request(Method::del)));
  inner->then(answer(503));
  EXPECT_EQ(status_of(request(Method::patch, R"({"comment":"x"})")), 503u);
  EXPECT_EQ(inner->calls(), 3u);
  EXPECT_TRUE(sleeper->delays.empty());
}

TEST_F(GuardedUpstreamRetries, RetriesAWriteThatNeverReachedTheUpstream) {
  inner->then(transport(UpstreamErrc::unreachable));
  inner->then(answer(200));
  EXPECT_EQ(status_of(post()), 200u);
  ASSERT_EQ(inner->calls(), 2u);
  EXPECT_EQ(inner->requests()[1].method, Method::post);
  EXPECT_EQ(inner->requests()[1].body, R"({"name":"main"})");
  EXPECT_EQ(inner->requests()[1].target, kStores);
}

TEST_F(GuardedUpstreamRetries, NeverRetriesA4xxOrA429) {
  inner->then(answer(404));
  EXPECT_EQ(status_of(get()), 404u);
  inner->then(answer(400));
  EXPECT_EQ(status_of(get()), 400u);
  inner->then(too_many_requests("0"));
  EXPECT_EQ(status_of(get()), 429u);
  EXPECT_EQ(inner->calls(), 3u);
  EXPECT_TRUE(sleeper->delays.empty());
}

// ---------------------------------------------------------------------------------------
// GuardedUpstream: circuit breaker

TEST_F(GuardedUpstreamBreaker, OpensAfterConsecutiveFailuresAndThenFailsFast) {
  options.max_retries = 0;
  inner->always(answer(503));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(status_of(get()), 503u);
  const CallResult r = call(get());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(UpstreamErrc::circuit_open));
  EXPECT_EQ(inner->calls(), 3u);
  const CircuitSnapshot s = guarded().breaker_snapshot();
  EXPECT_EQ(s.state, CircuitState::open);
  EXPECT_EQ(s.consecutive_failures, 3);
  EXPECT_EQ(s.opened_count, 1u);
  EXPECT_EQ(guarded().stats().circuit_refusals, 1u);
  EXPECT_EQ(guarded().budget_snapshot().remaining, 7);  // fast failures spend no token
}

TEST_F(GuardedUpstreamBreaker, CountsEveryFailedAttemptOfARetriedRead) {
  inner->always(transport(UpstreamErrc::connection_reset));
  EXPECT_FALSE(call(get()));
  EXPECT_EQ(inner->calls(), 3u);
  EXPECT_EQ(guarded().breaker_snapshot().state, CircuitState::open);
}

TEST_F(GuardedUpstreamBreaker, DoesNotCount4xxOr429AsFailures) {
  options.max_retries = 0;
  inner->then(answer(500), 2);
  inner->then(answer(404));
  inner->then(answer(500), 2);
  inner->then(too_many_requests("1"));
  inner->then(answer(500), 2);
  for (int i = 0; i < 5; ++i) (void)call(get());
  EXPECT_EQ(guarded().breaker_snapshot().consecutive_failures, 2);
  (void)call(get());  // the 429
  clock->advance(1s);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(status_of(get()), 500u);
  EXPECT_EQ(guarded().breaker_snapshot().state, CircuitState::closed);
  EXPECT_EQ(inner->calls(), 8u);
}

TEST_F(GuardedUpstreamBreaker, LetsASingleProbeThroughWhenHalfOpenAndClosesOnItsSuccess) {
  options.max_retries = 0;
  inner->then(answer(503), 3);
  for (int i = 0; i < 3; ++i) (void)call(get());
  clock->advance(30s);
  inner->hold();
  auto probe = test::spawn(ioc.get_executor(), guarded().call(get()));
  test::run_until(ioc, [&] { return inner->held() == 1; });
  const CallResult meanwhile = call(get());
  ASSERT_FALSE(meanwhile);
  EXPECT_EQ(meanwhile.error(), make_error_code(UpstreamErrc::circuit_open));
  EXPECT_EQ(inner->calls(), 4u);
  inner->release();
  test::run_until(ioc, [&] { return probe->done(); });
  ASSERT_TRUE(probe->get());
  EXPECT_EQ(probe->get()->status, 200u);
  EXPECT_EQ(guarded().breaker_snapshot().state, CircuitState::closed);
  EXPECT_EQ(status_of(get()), 200u);
  EXPECT_EQ(status_of(get()), 200u);
  EXPECT_EQ(inner->calls(), 6u);
}

TEST_F(GuardedUpstreamBreaker, ReopensWhenTheProbeFails) {
  options.max_retries = 0;
  inner->then(answer(503), 4);
  for (int i = 0; i < 3; ++i) (void)call(get());
  clock->advance(30s);
  EXPECT_EQ(status_of(get()), 503u);  // the probe
  CircuitSnapshot s = guarded().breaker_snapshot();
  EXPECT_EQ(s.state, CircuitState::open);
  EXPECT_EQ(s.opened_count, 2u);
  EXPECT_FALSE(call(get()));
  EXPECT_EQ(inner->calls(), 4u);
  clock->advance(30s);
  EXPECT_EQ(status_of(get()), 200u);
  EXPECT_EQ(guarded().breaker_snapshot().state, CircuitState::closed);
}

TEST_F(GuardedUpstreamBreaker, HandsBackAProbeTheBudgetRefused) {
  options.max_retries = 0;
  options.budget = budget_options(3, 300s);
  inner->then(answer(503), 3);
  for (int i = 0; i < 3; ++i) (void)call(get());
  clock->advance(30s);
  expect_synthesized_429(call(get()), 270);  // half-open, but no token for the probe
  clock->advance(270s);
  EXPECT_EQ(status_of(get()), 200u);  // the next call may probe
  EXPECT_EQ(guarded().breaker_snapshot().state, CircuitState::closed);
}

// ---------------------------------------------------------------------------------------
// GuardedUpstream: plumbing

TEST_F(GuardedUpstreamTest, DescribesItselfAroundTheInnerUpstream) {
  EXPECT_EQ(guarded().describe(), "guarded(scripted)");
}

TEST_F(GuardedUpstreamTest, RejectsAMissingInnerUpstreamOrNegativeOptions) {
  EXPECT_THROW(GuardedUpstream(nullptr), std::invalid_argument);
  options.max_retries = -1;
  EXPECT_THROW(GuardedUpstream(inner, options), std::invalid_argument);
  options.max_retries = 0;
  options.write_budget_wait = -1ms;
  EXPECT_THROW(GuardedUpstream(inner, options), std::invalid_argument);
}

TEST_F(GuardedUpstreamTest, KeepsItsStateAliveForCallsInFlightAfterItIsDestroyed) {
  inner->hold();
  auto pending = test::spawn(ioc.get_executor(), guarded().call(get()));
  test::run_until(ioc, [&] { return inner->held() == 1; });
  destroy_guarded();
  inner->release();
  test::run_until(ioc, [&] { return pending->done(); });
  EXPECT_EQ(pending->get()->status, 200u);
}

TEST(GuardedUpstreamTimerSleeper, WaitsOnTheCallersExecutorForTheGivenTime) {
  asio::io_context ioc;
  auto sleeper = GuardedUpstream::timer_sleeper();
  const auto start = std::chrono::steady_clock::now();
  const boost::system::error_code ec = test::run_awaitable(ioc, sleeper->sleep(5ms));
  EXPECT_FALSE(ec);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 5ms);
}

}  // namespace
}  // namespace sproxy::upstream
