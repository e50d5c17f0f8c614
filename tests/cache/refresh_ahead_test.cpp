// Refresh ahead and stale-while-revalidate: reads near or just past an entry's expiry are
// answered from the entry while one background refresh (the key's fill flight) runs.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/cache/cache_fixture.hpp"

namespace sproxy::cache::testing {
namespace {

using test::Fault;

nlohmann::json json_of(const Answer& a) { return nlohmann::json::parse(*a.body); }

class RefreshAheadTest : public CacheFixture {
 protected:
  RefreshAheadTest() {
    cfg.refresh_ahead_ms = 2'000;
    cfg.stale_while_revalidate_ms = 5'000;
  }

  // The secrets snapshot's expiry when it was filled at kT0.
  static constexpr Micros kSecretsExpiry = kT0 + 10'000 * kMs;
};

TEST_F(RefreshAheadTest, AnswersReadsInsideTheWindowAtOnceWithOneRefreshThenServesItsData) {
  const std::string secret = create_secret_directly("A", {"workers"}, "old");
  ASSERT_EQ(read(secret_path(secret), kT0).outcome, Outcome::miss);
  const std::size_t calls = fake->calls();
  patch_comment_directly(secret, "new");

  // The refresh's upstream call is held: every reader is answered without it.
  fake->hold(RouteKind::list_secrets);
  const Micros t = kSecretsExpiry - 1'500 * kMs;
  for (int i = 0; i < 50; ++i) {
    const Answer a = read(i % 2 ? secrets_path() : secret_path(secret), t + i);
    ASSERT_EQ(a.outcome, Outcome::hit) << i;
    ASSERT_EQ(a.status, 200u) << i;
    const auto j = json_of(a);
    ASSERT_EQ(i % 2 ? j["result"][0]["comment"] : j["result"]["comment"], "old") << i;
  }
  test::run_ready(ioc);
  EXPECT_EQ(fake->held(), 1u);
  EXPECT_EQ(fake->calls(), calls + 1);
  EXPECT_EQ(cache->stats().refreshes, 1u);
  EXPECT_EQ(cache->stats().hits, 50u);

  fake->release();
  test::run_ready(ioc);
  // The refreshed snapshot (stored at t) is served, with no further upstream call.
  const Answer after = read(secret_path(secret), t + 100);
  EXPECT_EQ(after.outcome, Outcome::hit);
  EXPECT_EQ(json_of(after)["result"]["comment"], "new");
  EXPECT_EQ(after.age, 100);
  EXPECT_EQ(fake->calls(), calls + 1);
  EXPECT_EQ(cache->stats().refreshes, 1u);
}

TEST_F(RefreshAheadTest, DoesNotRefreshBeforeTheWindow) {
  const std::string secret = create_secret_directly("A");
  ASSERT_EQ(read(secret_path(secret), kT0).outcome, Outcome::miss);
  const std::size_t calls = fake->calls();
  EXPECT_EQ(read(secret_path(secret), kSecretsExpiry - 2'000 * kMs - 1).outcome, Outcome::hit);
  test::run_ready(ioc);
  EXPECT_EQ(fake->calls(), calls);
  EXPECT_EQ(cache->stats().refreshes, 0u);
}

TEST_F(RefreshAheadTest, RefreshesOnlyInTheLastQuarterOfAShortLivedEntry) {
  // A 2 s TTL with a 2 s refresh-ahead window: refreshing on every read of the entry's
  // life would mean back-to-back upstream calls; only its last quarter counts.
  cfg.ttl.secrets_ms = 2'000;
  cache->reconfigure(cfg);
  const std::string secret = create_secret_directly("A");
  ASSERT_EQ(read(secret_path(secret), kT0).outcome, Outcome::miss);
  const std::size_t calls = fake->calls();

  EXPECT_EQ(read(secret_path(secret), kT0 + 1'499 * kMs).outcome, Outcome::hit);
  test::run_ready(ioc);
  EXPECT_EQ(fake->calls(), calls);
  EXPECT_EQ(cache->stats().refreshes, 0u);

  EXPECT_EQ(read(secret_path(secret), kT0 + 1'500 * kMs).outcome, Outcome::hit);
  test::run_ready(ioc);
  EXPECT_EQ(fake->calls(), calls + 1);
  EXPECT_EQ(cache->stats().refreshes, 1u);
}

TEST_F(RefreshAheadTest, RefreshesEveryCachedKindAhead) {
  struct Case {
    std::string path;
    Micros ttl;
  };
  const std::vector<Case> cases = {{"/stores", cfg.ttl.stores_ms * kMs},
                                   {"/stores/" + store_id, cfg.ttl.store_ms * kMs},
                                   {secrets_path(), cfg.ttl.secrets_ms * kMs},
                                   {"/quota", cfg.ttl.quota_ms * kMs}};
  std::uint64_t refreshes = 0;
  for (const auto& c : cases) {
    cache->purge_all();
    ASSERT_EQ(read(c.path, kT0).outcome, Outcome::miss) << c.path;
    const std::size_t calls = fake->calls();
    EXPECT_EQ(read(c.path, kT0 + c.ttl - kMs).outcome, Outcome::hit) << c.path;
    test::run_ready(ioc);
    EXPECT_EQ(fake->calls(), calls + 1) << c.path;
    EXPECT_EQ(cache->stats().refreshes, ++refreshes) << c.path;
    // The refreshed entry is fresh past the old expiry.
    EXPECT_EQ(read(c.path, kT0 + c.ttl + kMs).outcome, Outcome::hit) << c.path;
    EXPECT_EQ(fake->calls(), calls + 1) << c.path;
  }
}

TEST_F(RefreshAheadTest, ServesAReadJustPastExpiryStaleWithOneRefresh) {
  const std::string secret = create_secret_directly("A", {"workers"}, "old");
  ASSERT_EQ(read(secret_path(secret), kT0).outcome, Outcome::miss);
  const std::size_t calls = fake->calls();
  patch_comment_directly(secret, "new");

  fake->hold(RouteKind::list_secrets);
  for (int i = 0; i < 20; ++i) {
    // From just past expiry to just inside the end of the window.
    const Micros t = i == 19 ? kSecretsExpiry + 5'000 * kMs - 1 : kSecretsExpiry + i;
    const Answer a = read(secret_path(secret), t);
    ASSERT_EQ(a.outcome, Outcome::stale) << i;
    ASSERT_EQ(json_of(a)["result"]["comment"], "old") << i;
    ASSERT_EQ(a.age, t - kT0) << i;
  }
  test::run_ready(ioc);
  EXPECT_EQ(fake->calls(), calls + 1);
  EXPECT_EQ(cache->stats().refreshes, 1u);
  EXPECT_EQ(cache->stats().stale_served, 20u);

  fake->release();
  test::run_ready(ioc);
  const Answer after = read(secret_path(secret), kSecretsExpiry + 1'000 * kMs);
  EXPECT_EQ(after.outcome, Outcome::hit);
  EXPECT_EQ(json_of(after)["result"]["comment"], "new");
  EXPECT_EQ(fake->calls(), calls + 1);
}

TEST_F(RefreshAheadTest, MissesPastTheStaleWhileRevalidateWindow) {
  const std::string secret = create_secret_directly("A", {"workers"}, "old");
  ASSERT_EQ(read(secret_path(secret), kT0).outcome, Outcome::miss);
  patch_comment_directly(secret, "new");
  const std::size_t calls = fake->calls();
  const Answer a = read(secret_path(secret), kSecretsExpiry + 5'000 * kMs);
  EXPECT_EQ(a.outcome, Outcome::miss);
  EXPECT_EQ(json_of(a)["result"]["comment"], "new");
  EXPECT_EQ(fake->calls(), calls + 1);
  EXPECT_EQ(cache->stats().refreshes, 0u);
}

TEST_F(RefreshAheadTest, LetsAForegroundMissJoinTheRefreshInFlight) {
  const std::string secret = create_secret_directly("A", {"workers"}, "old");
  ASSERT_EQ(read(secret_path(secret), kT0).outcome, Outcome::miss);
  const std::size_t calls = fake->calls();
  patch_comment_directly(secret, "new");

  fake->hold(RouteKind::list_secrets);
  ASSERT_EQ(read(secret_path(secret), kSecretsExpiry - kMs).outcome, Outcome::hit);
  test::run_until(ioc, [&] { return fake->held() == 1; });
  // Past the stale window: an ordinary miss, which waits on the refresh already running.
  auto reader =
      test::spawn(ioc.get_executor(), cache->read(route(Method::get, base() + secret_path(secret)),
                                                  {}, kSecretsExpiry + 6'000 * kMs));
  test::run_ready(ioc);
  EXPECT_FALSE(reader->done());
  EXPECT_EQ(cache->stats().coalesced_waits, 1u);

  fake->release();
  test::run_until(ioc, [&] { return reader->done(); });
  EXPECT_EQ(reader->get().outcome, Outcome::miss);
  EXPECT_EQ(json_of(reader->get())["result"]["comment"], "new");
  EXPECT_EQ(fake->calls(), calls + 1);
}

TEST_F(RefreshAheadTest, DoesNotStoreARefreshThatReadDataBeforeAWrite) {
  const std::string secret = create_secret_directly("A", {"workers"}, "before");
  ASSERT_EQ(read(secret_path(secret), kT0).outcome, Outcome::miss);

  // The refresh's upstream answer is computed now (pre-write) and held in flight.
  fake->hold(RouteKind::list_secrets);
  const Micros t = kSecretsExpiry - kMs;
  ASSERT_EQ(read(secret_path(secret), t).outcome, Outcome::hit);
  test::run_until(ioc, [&] { return fake->held() == 1; });

  const Answer w = write(Method::patch, secret_path(secret), R"({"comment":"after"})", t + 1);
  ASSERT_EQ(w.status, 200u);
  fake->release();
  test::run_ready(ioc);

  // The refresh was not stored: the next read goes upstream and sees the write.
  const std::size_t calls = fake->calls(RouteKind::list_secrets);
  const Answer after = read(secret_path(secret), t + 2);
  EXPECT_EQ(after.outcome, Outcome::miss);
  EXPECT_EQ(json_of(after)["result"]["comment"], "after");
  EXPECT_EQ(fake->calls(RouteKind::list_secrets), calls + 1);
}

TEST_F(RefreshAheadTest, KeepsTheEntryWhenTheRefreshFails) {
  const std::string secret = create_secret_directly("A", {"workers"}, "old");
  ASSERT_EQ(read(secret_path(secret), kT0).outcome, Outcome::miss);
  patch_comment_directly(secret, "new");
  fake->fail_next(Fault::http(503));
  ASSERT_EQ(read(secret_path(secret), kSecretsExpiry - kMs).outcome, Outcome::hit);
  test::run_ready(ioc);
  EXPECT_EQ(cache->stats().refreshes, 1u);

  // Still the old entry, still fresh until its own expiry, then stale while it refreshes.
  const Answer hit = read(secret_path(secret), kSecretsExpiry - kMs + 1);
  EXPECT_EQ(hit.outcome, Outcome::hit);
  EXPECT_EQ(json_of(hit)["result"]["comment"], "old");
  EXPECT_EQ(cache->stats().internal_errors, 0u);
}

TEST_F(RefreshAheadTest, DoesNotRefreshNegativeEntries) {
  const std::string missing = "/stores/00000000000000000000000000000000";
  ASSERT_EQ(read(missing, kT0).status, 404u);
  const std::size_t calls = fake->calls();
  // negative_ms is 2000: every read before expiry is inside the refresh-ahead window.
  EXPECT_EQ(read(missing, kT0 + 1'500 * kMs).outcome, Outcome::hit);
  test::run_ready(ioc);
  EXPECT_EQ(fake->calls(), calls);
  // Past expiry it is a miss, never stale.
  EXPECT_EQ(read(missing, kT0 + 2'000 * kMs + 1).outcome, Outcome::miss);
  EXPECT_EQ(cache->stats().refreshes, 0u);
}

TEST_F(RefreshAheadTest, KeepsExactExpiryWhenBothAreOff) {
  config::CacheConfig off = cfg;
  off.refresh_ahead_ms = 0;
  off.stale_while_revalidate_ms = 0;
  cache->reconfigure(off);
  const std::string secret = create_secret_directly("A");
  ASSERT_EQ(read(secret_path(secret), kT0).outcome, Outcome::miss);
  const std::size_t calls = fake->calls();
  EXPECT_EQ(read(secret_path(secret), kSecretsExpiry - 1).outcome, Outcome::hit);
  test::run_ready(ioc);
  EXPECT_EQ(fake->calls(), calls);
  EXPECT_EQ(read(secret_path(secret), kSecretsExpiry).outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(), calls + 1);
  EXPECT_EQ(cache->stats().refreshes, 0u);
}

}  // namespace
}  // namespace sproxy::cache::testing
