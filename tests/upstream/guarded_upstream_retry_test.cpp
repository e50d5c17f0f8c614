// GuardedUpstream's retries with backoff and its circuit breaker, on the fake clock of
// guarded_upstream_fixture.hpp.
#include "tests/upstream/guarded_upstream_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace guarded_testing;

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

}  // namespace
}  // namespace sproxy::upstream
