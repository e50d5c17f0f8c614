// Tests for the GuardedUpstream decorator (upstream/guarded_upstream.hpp), which wires
// the rate budget, circuit breaker and backoff around an Upstream. It runs on a fake
// clock whose sleeper records each delay and moves the clock instead of waiting. Here: the
// rate budget and upstream rate limits, and the plumbing.
#include "tests/upstream/guarded_upstream_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace guarded_testing;

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
