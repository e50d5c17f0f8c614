// Each client's share of the upstream rate budget, through the read-through cache: only a
// request that leads an upstream call is charged to its client (a miss or revalidation
// that leads a fill, a write); hits and coalesced waiters cost nothing; a client over
// its share gets 429 while every other client's calls still go upstream.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "tests/cache/cache_fixture.hpp"
#include "upstream/guarded_upstream.hpp"

namespace sproxy::cache::testing {
namespace {

using namespace std::chrono_literals;

// The guard's clock, standing still: the tests need no time to pass within a window.
class StillClock final : public upstream::GuardedUpstream::Clock {
 public:
  upstream::SteadyTime now() const override { return upstream::SteadyTime{} + 1000h; }
  std::chrono::system_clock::time_point wall_now() const override {
    return std::chrono::system_clock::time_point{} + 1000h;
  }
};

// 40 calls per 5 minutes shared, a quarter (10) per client.
constexpr long kShare = 10;

class ClientShareTest : public CacheFixture {
 protected:
  ClientShareTest() { options.max_secrets_per_account = 200; }

  void SetUp() override {
    CacheFixture::SetUp();
    upstream::GuardedUpstreamOptions o;
    o.budget.limit = 4 * kShare;
    o.budget.window = 300s;
    o.budget.burst_limit = 0;
    o.budget.safety_margin = 0;
    o.client_share = 0.25;
    o.max_retries = 0;
    guard = std::make_shared<upstream::GuardedUpstream>(fake, o, std::make_shared<StillClock>());
    cache = std::make_unique<ReadThroughCache>(cfg, guard);
  }

  Answer read_as(const std::string& client, const std::string& path, Micros now,
                 bool revalidate = false) {
    ReadOptions o;
    o.client = client;
    o.revalidate = revalidate;
    return read(path, now, std::move(o));
  }

  static std::string unknown_store(int i) {
    char id[33];
    std::snprintf(id, sizeof id, "%032x", i + 1);
    return "/stores/" + std::string(id);
  }

  std::shared_ptr<upstream::GuardedUpstream> guard;
};

TEST_F(ClientShareTest, AClientOverItsShareGets429WhileAnotherClientsMissStillGoesUpstream) {
  for (int i = 0; i < kShare; ++i) {
    // Each a miss of its own key that leads a fill.
    ASSERT_EQ(read_as("greedy", unknown_store(i), kT0).status, 404u);
  }
  const Answer refused = read_as("greedy", "/quota", kT0);
  EXPECT_EQ(refused.status, 429u);
  EXPECT_EQ(refused.retry_after, "300");
  EXPECT_EQ(body(refused), upstream::envelope_error(upstream::errors::rate_limited(300)));
  EXPECT_EQ(fake->calls(), static_cast<std::size_t>(kShare));

  const Answer other = read_as("other", "/quota", kT0);
  EXPECT_EQ(other.status, 200u);
  EXPECT_EQ(other.outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(), static_cast<std::size_t>(kShare) + 1);
  EXPECT_EQ(guard->stats().client_share_refusals, 1u);
}

TEST_F(ClientShareTest, RandomUnknownStoreIdsFromOneClientStopReachingTheUpstreamAtItsShare) {
  int refused = 0;
  for (int i = 0; i < 100; ++i) {
    if (read_as("prober", unknown_store(i), kT0).status == 429) ++refused;
  }
  EXPECT_EQ(fake->calls(), static_cast<std::size_t>(kShare));
  EXPECT_EQ(refused, 100 - kShare);
  // The ids it did fetch are negatively cached: asking again costs nothing.
  EXPECT_EQ(read_as("prober", unknown_store(0), kT0).status, 404u);
  EXPECT_EQ(read_as("prober", unknown_store(0), kT0).outcome, Outcome::hit);
  // Writes by another client still go.
  upstream::ApiRequest create{Method::post, base() + secrets_path(),
                              R"([{"name":"A","value":"v","scopes":["workers"]}])", "writer"};
  const Answer w =
      test::run_awaitable(ioc, cache->write(route(Method::post, create.target), create, kT0));
  EXPECT_EQ(w.status, 200u);
}

TEST_F(ClientShareTest, NoCacheReadsFromOneClientAreBoundedByItsShare) {
  ASSERT_EQ(read_as("reader", "/quota", kT0).status, 200u);
  for (int i = 1; i <= 3 * kShare; ++i) {
    const Answer a = read_as("reader", "/quota", kT0 + i, /*revalidate=*/true);
    // Over its share, the entry it holds is what it gets.
    EXPECT_EQ(a.status, 200u);
  }
  EXPECT_EQ(fake->calls(), static_cast<std::size_t>(kShare));
  const Answer other = read_as("other", "/quota", kT0 + 100, /*revalidate=*/true);
  EXPECT_EQ(other.outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(), static_cast<std::size_t>(kShare) + 1);
}

TEST_F(ClientShareTest, HitsAndCoalescedWaitsCostAClientNothing) {
  // One call fills the entry; every later read is a hit, however many.
  for (int i = 0; i < 5 * kShare; ++i) {
    ASSERT_EQ(read_as("reader", "/quota", kT0).status, 200u);
  }
  EXPECT_EQ(fake->calls(), 1u);
  // Waiters of another client's fill are charged nothing either.
  fake->hold(RouteKind::get_quota);
  auto leader = test::spawn(ioc.get_executor(),
                            cache->read(route(Method::get, base() + "/quota"),
                                        ReadOptions{true, {}, "other"}, kT0 + 10'000 * kMs));
  std::vector<std::shared_ptr<test::Spawned<Answer>>> waiters;
  for (int i = 0; i < 3 * kShare; ++i) {
    waiters.push_back(test::spawn(
        ioc.get_executor(), cache->read(route(Method::get, base() + "/quota"),
                                        ReadOptions{true, {}, "reader"}, kT0 + 10'000 * kMs)));
  }
  test::run_until(ioc, [&] { return fake->held() == 1; });
  fake->release();
  test::run_until(ioc, [&] {
    return std::all_of(waiters.begin(), waiters.end(), [](auto& w) { return w->done(); });
  });
  for (auto& w : waiters) EXPECT_EQ(w->get().status, 200u);
  EXPECT_EQ(fake->calls(), 2u);
  EXPECT_EQ(guard->stats().client_share_refusals, 0u);
}

TEST_F(ClientShareTest, AWaiterOfALeaderRefusedForItsShareFetchesForItself) {
  // A store of two list pages.
  std::vector<upstream::SecretCreate> batch;
  for (int i = 0; i < 101; ++i) {
    batch.push_back(upstream::SecretCreate{"S" + std::to_string(i), "v", {"workers"}, {}});
  }
  ASSERT_TRUE(fake->store().create_secrets(kAccount, store_id, std::move(batch), kT0).ok());
  // The greedy client has one call left.
  for (int i = 0; i < kShare - 1; ++i) read_as("greedy", unknown_store(i), kT0);
  fake->reset_counts();
  // It leads the store's fill; its first page goes, and another client's read joins
  // the fill meanwhile. Its second page is refused for its share: that refusal is the
  // greedy client's own, and the other read fetches the store for itself.
  fake->hold(RouteKind::list_secrets);
  auto greedy =
      test::spawn(ioc.get_executor(), cache->read(route(Method::get, base() + secrets_path()),
                                                  ReadOptions{false, {}, "greedy"}, kT0));
  test::run_until(ioc, [&] { return fake->held() == 1; });
  auto other =
      test::spawn(ioc.get_executor(), cache->read(route(Method::get, base() + secrets_path()),
                                                  ReadOptions{false, {}, "other"}, kT0));
  test::run_ready(ioc);
  EXPECT_EQ(cache->stats().coalesced_waits, 1u);
  fake->release();
  test::run_until(ioc, [&] { return greedy->done() && other->done(); });
  EXPECT_EQ(greedy->get().status, 429u);
  EXPECT_EQ(other->get().status, 200u);
  EXPECT_EQ(other->get().outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(), 3u);  // greedy's first page, then both pages for the other
}

}  // namespace
}  // namespace sproxy::cache::testing
