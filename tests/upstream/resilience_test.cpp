// Tests for the rate budget, client shares, circuit breaker and backoff
// (upstream/resilience.hpp). Time is explicit everywhere: the policies take `now`.
#include "upstream/resilience.hpp"

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
#include "upstream/guarded_upstream.hpp"
#include "upstream/model.hpp"

namespace sproxy::upstream {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using std::chrono::system_clock;
using test::breaker_options;
using test::budget_options;
using test::kT0;

// ---------------------------------------------------------------------------------------
// RateBudget

int acquire_all(RateBudget& b, int tries, SteadyTime now) {
  int granted = 0;
  for (int i = 0; i < tries; ++i) granted += b.try_acquire(now).granted ? 1 : 0;
  return granted;
}

TEST(RateBudget, AdmitsNoMoreThanItsCapacityFromABurstLargerThanIt) {
  RateBudget b(budget_options(1200, 300s));
  EXPECT_EQ(acquire_all(b, 5000, kT0), 1200);
  const BudgetDecision refused = b.try_acquire(kT0 + 1s);
  EXPECT_FALSE(refused.granted);
  EXPECT_EQ(refused.reason, BudgetRefusal::exhausted);
  EXPECT_EQ(refused.wait, 299s);
}

TEST(RateBudget, LeavesTheSafetyMarginUnused) {
  RateBudget defaults;                                     // 1,200 per 300 s, 10% margin
  EXPECT_EQ(acquire_all(defaults, 2000, kT0 + 10s), 180);  // the 200/s burst limit first
  RateBudget b(budget_options(1200, 300s, 0.10));
  EXPECT_EQ(acquire_all(b, 2000, kT0), 1080);
  RateBudget quarter(budget_options(20, 300s, 0.25));
  EXPECT_EQ(acquire_all(quarter, 100, kT0), 15);
  RateBudget tiny(budget_options(1, 300s, 0.5));
  EXPECT_EQ(acquire_all(tiny, 10, kT0), 1);  // never below one request per window
}

TEST(RateBudget, ReturnsEachTokenOneWindowAfterItWasSpent) {
  RateBudget b(budget_options(10, 300s));
  EXPECT_EQ(acquire_all(b, 6, kT0), 6);
  EXPECT_EQ(acquire_all(b, 10, kT0 + 100s), 4);
  EXPECT_EQ(acquire_all(b, 10, kT0 + 299s), 0);
  EXPECT_EQ(b.try_acquire(kT0 + 299s).wait, 1s);
  EXPECT_EQ(acquire_all(b, 10, kT0 + 300s), 6);
  EXPECT_EQ(b.try_acquire(kT0 + 300s).wait, 100s);
  EXPECT_EQ(acquire_all(b, 10, kT0 + 400s), 4);
}

TEST(RateBudget, NeverAdmitsMoreThanItsCapacityInAnyWindowUnderSteadyPressure) {
  // A caller knocking every 50 ms for 20 minutes. A classic token bucket (burst C,
  // refill C/window) would admit up to 2C in the window after the first burst.
  const long capacity = 100;
  const auto window = 60s;
  RateBudget b(budget_options(capacity, window));
  std::vector<SteadyTime> admitted;
  for (SteadyTime t = kT0; t < kT0 + 20min; t += 50ms) {
    if (b.try_acquire(t).granted) admitted.push_back(t);
  }
  ASSERT_GT(admitted.size(), static_cast<std::size_t>(capacity * 19));  // the rate is used
  for (std::size_t i = 0; i < admitted.size(); ++i) {
    const auto end = std::lower_bound(admitted.begin(), admitted.end(), admitted[i] + window);
    ASSERT_LE(end - (admitted.begin() + static_cast<long>(i)), capacity)
        << "window starting at " << i;
  }
}

TEST(RateBudget, BurstLimitSpreadsRequestsOverItsShortWindow) {
  RateBudgetOptions o = budget_options(1000, 300s);
  o.burst_limit = 20;
  o.burst_window = 1s;
  RateBudget b(o);
  EXPECT_EQ(acquire_all(b, 100, kT0), 20);
  EXPECT_EQ(b.try_acquire(kT0 + 400ms).wait, 600ms);
  EXPECT_EQ(acquire_all(b, 100, kT0 + 1s), 20);
}

TEST(RateBudget, RefusesEverythingUntilABlockEnds) {
  RateBudget b(budget_options(10, 300s));
  b.block_until(kT0 + 60s);
  b.block_until(kT0 + 30s);  // an earlier end does not shorten the block
  const BudgetDecision d = b.try_acquire(kT0 + 15s);
  EXPECT_FALSE(d.granted);
  EXPECT_EQ(d.reason, BudgetRefusal::blocked);
  EXPECT_EQ(d.wait, 45s);
  EXPECT_FALSE(b.try_acquire(kT0 + 60s - 1ms).granted);
  EXPECT_TRUE(b.try_acquire(kT0 + 60s).granted);
}

TEST(RateBudget, AllowsAtMostTheUpstreamsRemainingUntilItsResetPasses) {
  RateBudget b(budget_options(100, 300s));
  b.observe_remaining({3, 30s}, kT0);
  EXPECT_EQ(acquire_all(b, 10, kT0 + 1s), 3);
  const BudgetDecision d = b.try_acquire(kT0 + 10s);
  EXPECT_EQ(d.reason, BudgetRefusal::upstream_remaining);
  EXPECT_EQ(d.wait, 20s);
  EXPECT_EQ(acquire_all(b, 10, kT0 + 30s), 10);
}

TEST(RateBudget, ALateAnswerForTheSameUpstreamWindowNeverRaisesTheRemaining) {
  RateBudget b(budget_options(100, 300s));
  b.observe_remaining({2, 30s}, kT0);
  b.observe_remaining({40, 29s}, kT0 + 1s);  // same reset time, sent before the first
  EXPECT_EQ(acquire_all(b, 10, kT0 + 1s), 2);
  b.observe_remaining({5, 60s}, kT0 + 31s);  // a new window replaces it
  EXPECT_EQ(acquire_all(b, 10, kT0 + 31s), 5);
}

TEST(RateBudget, AnnouncedPolicyLowersTheCapacityButNeverRaisesIt) {
  RateBudget b(budget_options(100, 300s));
  b.observe_policies({{10, 60s}});
  EXPECT_EQ(acquire_all(b, 50, kT0), 10);
  EXPECT_EQ(b.try_acquire(kT0).wait, 60s);
  EXPECT_EQ(acquire_all(b, 50, kT0 + 60s), 10);

  RateBudget generous(budget_options(10, 300s));
  generous.observe_policies({{5000, 300s}});
  EXPECT_EQ(acquire_all(generous, 50, kT0), 10);
}

TEST(RateBudget, SnapshotReportsCapacityRemainingRefillAndBlocks) {
  RateBudget b(budget_options(600, 300s, 0.5));
  RateBudgetSnapshot s = b.snapshot(kT0);
  EXPECT_EQ(s.capacity, 300);
  EXPECT_EQ(s.window, 300s);
  EXPECT_EQ(s.remaining, 300);
  EXPECT_DOUBLE_EQ(s.refill_per_second, 1.0);
  EXPECT_FALSE(s.blocked_until);
  EXPECT_FALSE(s.upstream_remaining);

  EXPECT_EQ(acquire_all(b, 20, kT0), 20);
  b.observe_remaining({7, 10s}, kT0);
  b.observe_policies({{60, 60s}});
  s = b.snapshot(kT0 + 1s);
  EXPECT_EQ(s.upstream_remaining, 7);
  EXPECT_EQ(s.upstream_reset_at, kT0 + 10s);
  EXPECT_EQ(s.remaining, 7);
  EXPECT_DOUBLE_EQ(s.refill_per_second, 0.5);  // the announced 60 per 60 s, halved by the margin
  EXPECT_THAT(s.announced, ::testing::ElementsAre(RatePolicy{60, 60s}));

  b.block_until(kT0 + 90s);
  s = b.snapshot(kT0 + 2s);
  EXPECT_EQ(s.blocked_until, kT0 + 90s);
  EXPECT_EQ(s.remaining, 0);
  s = b.snapshot(kT0 + 400s);
  EXPECT_FALSE(s.blocked_until);
  EXPECT_FALSE(s.upstream_remaining);
  EXPECT_EQ(s.remaining, 30);
}

TEST(RateBudget, GrantsExactlyItsCapacityToThreadsRacingForIt) {
  RateBudget b(budget_options(500, 300s));
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] { granted += acquire_all(b, 1000, kT0); });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(granted.load(), 500);
}

TEST(RateBudget, RejectsOptionsThatCannotWork) {
  EXPECT_THROW(RateBudget(budget_options(0, 300s)), std::invalid_argument);
  EXPECT_THROW(RateBudget(budget_options(10, 0s)), std::invalid_argument);
  EXPECT_THROW(RateBudget(budget_options(10, 300s, 1.0)), std::invalid_argument);
  EXPECT_THROW(RateBudget(budget_options(10, 300s, -0.1)), std::invalid_argument);
  RateBudgetOptions o = budget_options(10, 300s);
  o.burst_limit = 5;
  o.burst_window = 0s;
  EXPECT_THROW(RateBudget{o}, std::invalid_argument);
}

// ---------------------------------------------------------------------------------------
// ClientShares

RateBudgetOptions shared_options() {
  RateBudgetOptions o = budget_options(100, 300s);
  o.burst_limit = 20;
  o.burst_window = 1s;
  return o;
}

int acquire_all(ClientShares& s, std::string_view client, int tries, SteadyTime now) {
  int granted = 0;
  for (int i = 0; i < tries; ++i) granted += s.try_acquire(client, now).granted ? 1 : 0;
  return granted;
}

TEST(ClientShares, GivesEachClientItsShareOfEveryConfiguredLimit) {
  ClientShares shares(shared_options(), 0.25);
  EXPECT_EQ(shares.capacities(), (std::vector<long>{25, 5}));
  // The burst share: 5 per second.
  EXPECT_EQ(acquire_all(shares, "a", 8, kT0), 5);
  const BudgetDecision refused = shares.try_acquire("a", kT0 + 500ms);
  EXPECT_FALSE(refused.granted);
  EXPECT_EQ(refused.reason, BudgetRefusal::exhausted);
  EXPECT_EQ(refused.wait, 500ms);
  // The window's share: 25 per 5 minutes, whatever the pace.
  for (int s = 1; s < 10; ++s) acquire_all(shares, "a", 5, kT0 + std::chrono::seconds(s));
  EXPECT_EQ(shares.remaining("a", kT0 + 10s), 0);
  const BudgetDecision later = shares.try_acquire("a", kT0 + 10s);
  EXPECT_FALSE(later.granted);
  EXPECT_EQ(later.wait, 290s);  // the first of them leaves the window at kT0 + 300 s
  EXPECT_TRUE(shares.try_acquire("a", kT0 + 300s).granted);
}

TEST(ClientShares, LeavesOtherClientsUntouchedByOneClientsSpending) {
  ClientShares shares(shared_options(), 0.25);
  EXPECT_EQ(acquire_all(shares, "greedy", 100, kT0), 5);
  EXPECT_EQ(acquire_all(shares, "other", 5, kT0), 5);
  EXPECT_EQ(shares.remaining("third", kT0), 5);
}

TEST(ClientShares, ChargesNothingForCallsWithoutAClientOrWhenTheShareIsWhole) {
  ClientShares shares(shared_options(), 0.25);
  EXPECT_EQ(acquire_all(shares, "", 1000, kT0), 1000);
  EXPECT_EQ(shares.tracked_clients(), 0u);
  ClientShares whole(shared_options(), 1.0);
  EXPECT_FALSE(whole.enabled());
  EXPECT_EQ(acquire_all(whole, "a", 1000, kT0), 1000);
  EXPECT_EQ(whole.tracked_clients(), 0u);
}

TEST(ClientShares, GivesBackTheLatestAdmission) {
  ClientShares shares(shared_options(), 0.25);
  EXPECT_EQ(acquire_all(shares, "a", 5, kT0), 5);
  shares.give_back("a");
  EXPECT_TRUE(shares.try_acquire("a", kT0).granted);
  EXPECT_FALSE(shares.try_acquire("a", kT0).granted);
}

TEST(ClientShares, AlwaysLeavesAClientAtLeastOneCall) {
  ClientShares shares(budget_options(3, 300s), 0.01);
  EXPECT_EQ(shares.capacities(), (std::vector<long>{1}));
  EXPECT_EQ(acquire_all(shares, "a", 3, kT0), 1);
}

TEST(ClientShares, ForgetsClientsWhoseCallsHaveAllLeftTheWindow) {
  ClientShares shares(shared_options(), 0.25);
  for (int i = 0; i < 200; ++i) shares.try_acquire("old" + std::to_string(i), kT0);
  EXPECT_EQ(shares.tracked_clients(), 200u);
  for (int i = 0; i < 200; ++i) shares.try_acquire("new" + std::to_string(i), kT0 + 301s);
  EXPECT_LE(shares.tracked_clients(), 200u + 64u);
  // A client still within its window is kept, with what it spent.
  EXPECT_EQ(shares.remaining("new0", kT0 + 301s), 4);
}

TEST(ClientShares, RejectsASharesOutsideZeroToOne) {
  EXPECT_THROW(ClientShares(shared_options(), 0.0), std::invalid_argument);
  EXPECT_THROW(ClientShares(shared_options(), -0.5), std::invalid_argument);
  EXPECT_THROW(ClientShares(shared_options(), 1.5), std::invalid_argument);
  EXPECT_THROW(ClientShares(budget_options(0, 300s), 0.5), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------
// CircuitBreaker

void fail(CircuitBreaker& b, int times, SteadyTime now) {
  for (int i = 0; i < times; ++i) {
    const CircuitPermit p = b.try_enter(now);
    ASSERT_TRUE(p.allowed);
    b.on_failure(p, now);
  }
}

TEST(CircuitBreaker, OpensAfterTheThresholdOfConsecutiveFailures) {
  CircuitBreaker b(breaker_options(3, 30s));
  fail(b, 2, kT0);
  b.on_success(b.try_enter(kT0));  // a success resets the count
  fail(b, 2, kT0);
  EXPECT_EQ(b.snapshot(kT0).state, CircuitState::closed);
  EXPECT_EQ(b.snapshot(kT0).consecutive_failures, 2);
  fail(b, 1, kT0 + 1s);
  const CircuitSnapshot s = b.snapshot(kT0 + 1s);
  EXPECT_EQ(s.state, CircuitState::open);
  EXPECT_EQ(s.opened_count, 1u);
  EXPECT_EQ(s.open_until, kT0 + 31s);
}

TEST(CircuitBreaker, RefusesEveryCallWhileOpen) {
  CircuitBreaker b(breaker_options(1, 30s));
  fail(b, 1, kT0);
  const CircuitPermit p = b.try_enter(kT0 + 10s);
  EXPECT_FALSE(p.allowed);
  EXPECT_EQ(p.retry_in, 20s);
  EXPECT_FALSE(b.try_enter(kT0 + 30s - 1ms).allowed);
}

TEST(CircuitBreaker, LetsExactlyOneProbeThroughWhenHalfOpenAndClosesOnItsSuccess) {
  CircuitBreaker b(breaker_options(2, 30s));
  fail(b, 2, kT0);
  EXPECT_EQ(b.snapshot(kT0 + 30s).state, CircuitState::half_open);
  const CircuitPermit probe = b.try_enter(kT0 + 30s);
  ASSERT_TRUE(probe.allowed);
  EXPECT_TRUE(probe.probe);
  EXPECT_FALSE(b.try_enter(kT0 + 31s).allowed);
  EXPECT_FALSE(b.try_enter(kT0 + 45s).allowed);
  b.on_success(probe);
  const CircuitSnapshot s = b.snapshot(kT0 + 46s);
  EXPECT_EQ(s.state, CircuitState::closed);
  EXPECT_EQ(s.consecutive_failures, 0);
  const CircuitPermit next = b.try_enter(kT0 + 46s);
  EXPECT_TRUE(next.allowed);
  EXPECT_FALSE(next.probe);
}

TEST(CircuitBreaker, ReopensForAnotherCoolDownWhenTheProbeFails) {
  CircuitBreaker b(breaker_options(2, 30s));
  fail(b, 2, kT0);
  const CircuitPermit probe = b.try_enter(kT0 + 30s);
  b.on_failure(probe, kT0 + 31s);
  CircuitSnapshot s = b.snapshot(kT0 + 31s);
  EXPECT_EQ(s.state, CircuitState::open);
  EXPECT_EQ(s.opened_count, 2u);
  EXPECT_EQ(s.open_until, kT0 + 61s);
  EXPECT_FALSE(b.try_enter(kT0 + 60s).allowed);
  EXPECT_TRUE(b.try_enter(kT0 + 61s).probe);
}

TEST(CircuitBreaker, IgnoresAnswersToCallsAdmittedBeforeItChangedState) {
  CircuitBreaker b(breaker_options(2, 30s));
  const CircuitPermit early = b.try_enter(kT0);  // admitted while closed, answers late
  fail(b, 2, kT0);
  const CircuitPermit probe = b.try_enter(kT0 + 30s);
  b.on_success(early);             // must not close the breaker: the probe decides
  b.on_failure(early, kT0 + 30s);  // nor re-open it
  EXPECT_EQ(b.snapshot(kT0 + 30s).state, CircuitState::half_open);
  EXPECT_EQ(b.snapshot(kT0 + 30s).opened_count, 1u);
  b.on_success(probe);
  EXPECT_EQ(b.snapshot(kT0 + 30s).state, CircuitState::closed);
}

TEST(CircuitBreaker, LetsTheNextCallProbeWhenAProbeIsAbandonedOrLost) {
  CircuitBreaker b(breaker_options(1, 30s));
  fail(b, 1, kT0);
  const CircuitPermit abandoned = b.try_enter(kT0 + 30s);
  b.on_abandon(abandoned);
  const CircuitPermit lost = b.try_enter(kT0 + 31s);
  ASSERT_TRUE(lost.probe);
  EXPECT_FALSE(b.try_enter(kT0 + 60s).allowed);
  const CircuitPermit replacement = b.try_enter(kT0 + 61s);  // lost for a whole cool-down
  ASSERT_TRUE(replacement.probe);
  b.on_success(lost);  // the lost probe's late answer no longer counts
  EXPECT_EQ(b.snapshot(kT0 + 62s).state, CircuitState::half_open);
  b.on_success(replacement);
  EXPECT_EQ(b.snapshot(kT0 + 62s).state, CircuitState::closed);
}

TEST(CircuitBreaker, RejectsOptionsThatCannotWork) {
  EXPECT_THROW(CircuitBreaker(breaker_options(0, 30s)), std::invalid_argument);
  EXPECT_THROW(CircuitBreaker(breaker_options(3, 0s)), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------
// Backoff

TEST(Backoff, CeilingDoublesFromTheBaseUntilTheCap) {
  Backoff b(BackoffOptions{100ms, 1000ms});
  EXPECT_EQ(b.ceiling(0), 100ms);
  EXPECT_EQ(b.ceiling(1), 200ms);
  EXPECT_EQ(b.ceiling(3), 800ms);
  EXPECT_EQ(b.ceiling(4), 1000ms);
  EXPECT_EQ(b.ceiling(1'000'000), 1000ms);
}

TEST(Backoff, DrawsTheDelayUniformlyBetweenZeroAndTheCeiling) {
  double u = 0;
  Backoff b(BackoffOptions{100ms, 1000ms}, [&u] { return u; });
  u = 0.0;
  EXPECT_EQ(b.delay(2), 0ms);
  u = 0.5;
  EXPECT_EQ(b.delay(0), 50ms);
  EXPECT_EQ(b.delay(2), 200ms);
  u = 0.9999999;
  EXPECT_EQ(b.delay(1), 200ms);
  u = 7.0;  // a broken source is clamped into the range
  EXPECT_EQ(b.delay(5), 1000ms);
  u = -1.0;
  EXPECT_EQ(b.delay(5), 0ms);
}

TEST(Backoff, DefaultRandomSourceStaysWithinTheBoundsAndVaries) {
  Backoff b(BackoffOptions{100ms, 1000ms});
  std::set<long long> seen;
  for (int i = 0; i < 500; ++i) {
    const auto d = b.delay(1);
    ASSERT_GE(d, 0ms);
    ASSERT_LE(d, 200ms);
    seen.insert(d.count());
  }
  EXPECT_GT(seen.size(), 50u);
}

TEST(Backoff, RejectsOptionsThatCannotWork) {
  EXPECT_THROW(Backoff(BackoffOptions{0ms, 100ms}), std::invalid_argument);
  EXPECT_THROW(Backoff(BackoffOptions{100ms, 50ms}), std::invalid_argument);
}

}  // namespace
}  // namespace sproxy::upstream
