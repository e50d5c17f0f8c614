// ReadThroughCache: bypass and revalidation, memory bounds, purge, stats and reconfigure,
// the Ratelimit headers of answers, and outcome names.
#include "tests/cache/read_through_fixture.hpp"

namespace sproxy::cache::testing {
namespace {

// ---------------------------------------------------------------------------------------
// Bypass and revalidation

TEST_F(ReadThroughCacheTest, PassesEveryReadThroughWhenDisabled) {
  cfg.enabled = false;
  SetUp();
  const std::string secret = create_secret_directly("A");
  for (const auto& p : {std::string("/stores"), secrets_path() + "?order=name", secret_path(secret),
                        std::string("/quota")}) {
    const std::size_t calls = fake->calls();
    const Answer a = read(p, kT0);
    const Answer b = read(p, kT0);
    EXPECT_EQ(a.outcome, Outcome::bypass) << p;
    EXPECT_EQ(b.outcome, Outcome::bypass) << p;
    EXPECT_EQ(body(a), direct(base() + p).body) << p;
    EXPECT_EQ(fake->calls(), calls + 2) << p;
  }
  EXPECT_EQ(cache->stats().entries, 0u);
}

TEST_F(ReadThroughCacheTest, PassesOnlyTheKindWithAZeroTtlThrough) {
  cfg.ttl.quota_ms = 0;
  SetUp();
  read("/quota", kT0);
  EXPECT_EQ(read("/quota", kT0).outcome, Outcome::bypass);
  read("/stores", kT0);
  EXPECT_EQ(read("/stores", kT0).outcome, Outcome::hit);
}

TEST_F(ReadThroughCacheTest, StillFiltersByViewerWhenBypassing) {
  cfg.enabled = false;
  SetUp();
  const std::string w = create_secret_directly("W", {"workers"});
  create_secret_directly("D", {"dex"});
  ReadOptions opt;
  opt.viewer = Viewer{false, {"dex"}};
  const Answer list = read(secrets_path(), kT0, opt);
  EXPECT_EQ(list.outcome, Outcome::bypass);
  EXPECT_EQ(json_of(list)["result"].size(), 1u);
  EXPECT_EQ(json_of(list)["result_info"]["total_count"], 1);
  EXPECT_EQ(read(secret_path(w), kT0, opt).status, 404u);
  EXPECT_EQ(read(secret_path(w), kT0).status, 200u);
}

TEST_F(ReadThroughCacheTest, RevalidatesOneReadOnNoCacheAndRefreshesTheEntry) {
  const std::string secret = create_secret_directly("A", {"workers"}, "old");
  read(secret_path(secret), kT0);
  patch_comment_directly(secret, "new");
  EXPECT_EQ(json_of(read(secret_path(secret), kT0 + 1))["result"]["comment"], "old");

  ReadOptions no_cache;
  no_cache.revalidate = true;
  const std::size_t calls = fake->calls();
  const Answer fresh = read(secret_path(secret), kT0 + 2, no_cache);
  EXPECT_EQ(fresh.outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(), calls + 1);
  EXPECT_EQ(json_of(fresh)["result"]["comment"], "new");
  // The refreshed entry now serves plain reads.
  const Answer after = read(secret_path(secret), kT0 + 3);
  EXPECT_EQ(after.outcome, Outcome::hit);
  EXPECT_EQ(json_of(after)["result"]["comment"], "new");
}

// ---------------------------------------------------------------------------------------
// Memory bounds

TEST_F(ReadThroughCacheTest, DoesNotCacheAnEntryOverMaxEntryBytes) {
  cfg.max_entry_bytes = 2048;
  SetUp();
  for (int i = 0; i < 20; ++i) create_secret_directly("SECRET_" + std::to_string(i));
  EXPECT_EQ(read(secrets_path(), kT0).status, 200u);
  EXPECT_EQ(read(secrets_path(), kT0).outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(RouteKind::list_secrets), 2u);
  // Small entries are still cached.
  read("/quota", kT0);
  EXPECT_EQ(read("/quota", kT0).outcome, Outcome::hit);
}

TEST_F(ReadThroughCacheTest, EvictsLeastRecentlyUsedEntriesAtTheByteBudget) {
  cfg.max_bytes = 8 * 1024;
  cfg.shards = 1;
  SetUp();
  // Quota answers of many accounts (one entry each) overflow the budget.
  std::vector<std::string> accounts;
  for (int i = 0; i < 40; ++i) {
    char buf[33];
    std::snprintf(buf, sizeof buf, "%032x", 0x1000 + i);
    accounts.emplace_back(buf);
  }
  for (const auto& a : accounts) {
    read_target(base(a) + "/quota", kT0);
    read_target(base(accounts.front()) + "/quota", kT0);  // keep the first one hot
    ASSERT_LE(cache->stats().bytes, cfg.max_bytes);
  }
  EXPECT_GT(cache->stats().evictions, 0u);
  EXPECT_EQ(read_target(base(accounts.front()) + "/quota", kT0).outcome, Outcome::hit);
  EXPECT_EQ(read_target(base(accounts[1]) + "/quota", kT0).outcome, Outcome::miss);
}

// ---------------------------------------------------------------------------------------
// Purge, stats, reconfigure

TEST_F(ReadThroughCacheTest, PurgesOneStore) {
  options.max_stores_per_account = 2;
  SetUp();
  const std::string other = create_store_directly("other");
  read(secrets_path(), kT0);
  read("/stores/" + other + "/secrets", kT0);
  read("/stores", kT0);
  cache->purge_store(kAccount, store_id);
  EXPECT_EQ(read(secrets_path(), kT0).outcome, Outcome::miss);
  EXPECT_EQ(read("/stores/" + other + "/secrets", kT0).outcome, Outcome::hit);
  EXPECT_EQ(read("/stores", kT0).outcome, Outcome::hit);
}

TEST_F(ReadThroughCacheTest, PurgesOneAccount) {
  read("/quota", kT0);
  read(secrets_path(), kT0);
  read_target(base(kOtherAccount) + "/quota", kT0);
  cache->purge_account(kAccount);
  EXPECT_EQ(read("/quota", kT0).outcome, Outcome::miss);
  EXPECT_EQ(read(secrets_path(), kT0).outcome, Outcome::miss);
  EXPECT_EQ(read_target(base(kOtherAccount) + "/quota", kT0).outcome, Outcome::hit);
}

TEST_F(ReadThroughCacheTest, PurgesEverything) {
  read("/quota", kT0);
  read_target(base(kOtherAccount) + "/quota", kT0);
  cache->purge_all();
  EXPECT_EQ(cache->stats().entries, 0u);
  EXPECT_EQ(read("/quota", kT0).outcome, Outcome::miss);
  EXPECT_EQ(read_target(base(kOtherAccount) + "/quota", kT0).outcome, Outcome::miss);
}

TEST_F(ReadThroughCacheTest, CountsHitsMissesCallsInvalidationsAndWriteUpdates) {
  read("/quota", kT0);
  read("/quota", kT0);
  read("/quota", kT0);
  write(Method::post, secrets_path(), R"([{"name":"N","value":"v","scopes":["dex"]}])", kT0);
  CacheStats s = cache->stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.upstream_calls, 2u);
  EXPECT_EQ(s.write_updates, 1u);  // the quota, updated from the create's answer
  EXPECT_EQ(s.invalidations, 0u);
  EXPECT_EQ(s.entries, 1u);
  fake->fail_next(Fault::http(500));
  write(Method::post, secrets_path(), R"([{"name":"M","value":"v","scopes":["dex"]}])", kT0);
  s = cache->stats();
  EXPECT_EQ(s.invalidations, 2u);  // the store and the quota
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.bytes, 0u);
}

TEST_F(ReadThroughCacheTest, AppliesNewTtlsAfterReconfigure) {
  read("/quota", kT0);
  config::CacheConfig shorter = cfg;
  shorter.ttl.quota_ms = 1'000;
  cache->reconfigure(shorter);
  // The existing entry keeps its expiry...
  EXPECT_EQ(read("/quota", kT0 + 2'000 * kMs).outcome, Outcome::hit);
  // ...new entries get the new TTL.
  EXPECT_EQ(read("/quota", kT0 + cfg.ttl.quota_ms * kMs).outcome, Outcome::miss);
  EXPECT_EQ(read("/quota", kT0 + cfg.ttl.quota_ms * kMs + 1'000 * kMs).outcome, Outcome::miss);
}

TEST_F(ReadThroughCacheTest, StopsCachingWhenReconfiguredOff) {
  read("/quota", kT0);
  config::CacheConfig off = cfg;
  off.enabled = false;
  cache->reconfigure(off);
  EXPECT_EQ(read("/quota", kT0).outcome, Outcome::bypass);
  EXPECT_EQ(cache->stats().entries, 0u);
  cache->reconfigure(cfg);
  EXPECT_EQ(read("/quota", kT0).outcome, Outcome::miss);
}

TEST_F(ReadThroughCacheTest, ForwardsMalformedStoreIdsWithoutCachingThem) {
  const Answer a = read("/stores/not-a-store-id/secrets", kT0);
  EXPECT_EQ(a.status, 404u);
  EXPECT_EQ(a.outcome, Outcome::bypass);
  EXPECT_EQ(cache->stats().entries, 0u);
}

// ---------------------------------------------------------------------------------------
// Ratelimit headers

// Stamps every answer of the inner upstream with Ratelimit headers whose r counts down
// per call, so a test can tell which upstream answer an Answer's headers came from.
class RateLimitStampingUpstream final : public upstream::Upstream {
 public:
  explicit RateLimitStampingUpstream(std::shared_ptr<upstream::Upstream> inner)
      : inner_(std::move(inner)) {}

  boost::asio::awaitable<upstream::CallResult> call(upstream::ApiRequest request) override {
    upstream::CallResult r = co_await inner_->call(std::move(request));
    const long n = ++calls_;
    if (r) {
      r->ratelimit = ratelimit_after(n);
      r->ratelimit_policy = kPolicy;
    }
    co_return r;
  }
  std::string describe() const override { return "stamping(" + inner_->describe() + ")"; }

  static std::string ratelimit_after(long calls) {
    return "\"default\";r=" + std::to_string(1000 - calls) + ";t=60";
  }
  static constexpr char kPolicy[] = "\"default\";q=1200;w=300";
  long calls() const { return calls_; }

 private:
  std::shared_ptr<upstream::Upstream> inner_;
  long calls_ = 0;
};

class RateLimitHeadersTest : public CacheFixture {
 protected:
  void SetUp() override {
    CacheFixture::SetUp();
    stamping = std::make_shared<RateLimitStampingUpstream>(fake);
    cache = std::make_unique<ReadThroughCache>(cfg, stamping);
  }
  // The headers of the latest upstream answer.
  void expect_latest_headers(const Answer& a, const std::string& what) {
    EXPECT_EQ(a.ratelimit, RateLimitStampingUpstream::ratelimit_after(stamping->calls())) << what;
    EXPECT_EQ(a.ratelimit_policy, RateLimitStampingUpstream::kPolicy) << what;
  }
  std::shared_ptr<RateLimitStampingUpstream> stamping;
};

TEST_F(RateLimitHeadersTest, CarriesTheFillsHeadersOnAMissButNotOnTheHitsAfterIt) {
  const std::string secret = create_secret_directly("A");
  for (const auto& p : {std::string("/stores"), "/stores/" + store_id, secrets_path(),
                        secret_path(secret), std::string("/quota")}) {
    cache->purge_all();
    const Answer miss = read(p, kT0);
    ASSERT_EQ(miss.outcome, Outcome::miss) << p;
    expect_latest_headers(miss, p);
    const Answer hit = read(p, kT0 + 1);
    ASSERT_EQ(hit.outcome, Outcome::hit) << p;
    EXPECT_FALSE(hit.ratelimit.has_value()) << p;
    EXPECT_FALSE(hit.ratelimit_policy.has_value()) << p;
  }
}

TEST_F(RateLimitHeadersTest, CarriesTheHeadersOfANegativeMiss) {
  const Answer a = read("/stores/" + std::string(32, 'e'), kT0);
  ASSERT_EQ(a.status, 404u);
  ASSERT_EQ(a.outcome, Outcome::miss);
  expect_latest_headers(a, "store_not_found");
}

TEST_F(RateLimitHeadersTest, CarriesTheHeadersOfWrites) {
  const Answer ok = write(Method::post, secrets_path(),
                          R"([{"name":"X","value":"v","scopes":["workers"]}])", kT0);
  ASSERT_EQ(ok.status, 200u);
  expect_latest_headers(ok, "created");
  const std::string secret = json_of(ok)["result"][0]["id"];
  fake->fail_next(Fault::http(500));
  const Answer failed = write(Method::patch, secret_path(secret), R"({"comment":"c"})", kT0);
  ASSERT_EQ(failed.status, 500u);
  expect_latest_headers(failed, "failed write");
}

TEST_F(RateLimitHeadersTest, CarriesTheHeadersOfPassedThroughErrors) {
  fake->fail_next(Fault::http(503));
  const Answer unavailable = read(secrets_path(), kT0);
  ASSERT_EQ(unavailable.status, 503u);
  expect_latest_headers(unavailable, "503");
  fake->fail_next(Fault::too_many_requests(42));
  const Answer limited = read("/quota", kT0);
  ASSERT_EQ(limited.status, 429u);
  expect_latest_headers(limited, "429");
  fake->fail_next(Fault::http(403));
  const Answer refused = read("/stores", kT0);
  ASSERT_EQ(refused.status, 403u);
  expect_latest_headers(refused, "403");
}

TEST_F(RateLimitHeadersTest, CarriesTheFailedRefreshsHeadersOnAStaleAnswer) {
  read("/quota", kT0);
  fake->fail_next(Fault::too_many_requests(30));
  const Answer stale = read("/quota", kT0 + 40'000 * kMs);
  ASSERT_EQ(stale.outcome, Outcome::stale);
  expect_latest_headers(stale, "stale after 429");
}

TEST_F(RateLimitHeadersTest, CarriesNoHeadersWhenTheUpstreamNeverAnswered) {
  fake->fail_next(Fault::transport(UpstreamErrc::timeout));
  const Answer a = read("/quota", kT0);
  ASSERT_EQ(a.status, 504u);
  EXPECT_FALSE(a.ratelimit.has_value());
  EXPECT_FALSE(a.ratelimit_policy.has_value());
}

TEST_F(RateLimitHeadersTest, CarriesTheHeadersOfBypassedReadsFilteredOrNot) {
  cfg.enabled = false;
  SetUp();
  const std::string w = create_secret_directly("W", {"workers"});
  create_secret_directly("D", {"dex"});
  ReadOptions dex;
  dex.viewer = Viewer{false, {"dex"}};

  const Answer plain = read("/quota", kT0);
  ASSERT_EQ(plain.outcome, Outcome::bypass);
  expect_latest_headers(plain, "bypass");
  const Answer list = read(secrets_path(), kT0, dex);
  ASSERT_EQ(list.outcome, Outcome::bypass);
  ASSERT_EQ(json_of(list)["result"].size(), 1u);
  expect_latest_headers(list, "filtered list");
  const Answer hidden = read(secret_path(w), kT0, dex);
  ASSERT_EQ(hidden.status, 404u);
  expect_latest_headers(hidden, "hidden secret");
}

TEST(CacheOutcome, NamesEachOutcomeForTheCacheStatusHeader) {
  EXPECT_EQ(to_string(Outcome::hit), "HIT");
  EXPECT_EQ(to_string(Outcome::miss), "MISS");
  EXPECT_EQ(to_string(Outcome::stale), "STALE");
  EXPECT_EQ(to_string(Outcome::bypass), "BYPASS");
}

TEST(CacheViewer, SeesASecretSharingAnyOfItsServices) {
  upstream::Secret s;
  s.scopes = {"dex", "workers"};
  EXPECT_TRUE(is_visible(Viewer{}, s));
  EXPECT_TRUE(is_visible(Viewer{false, {"workers"}}, s));
  EXPECT_TRUE(is_visible(Viewer{false, {"access", "dex"}}, s));
  EXPECT_FALSE(is_visible(Viewer{false, {"access"}}, s));
  EXPECT_FALSE(is_visible(Viewer{false, {}}, s));
}

TEST_F(ReadThroughCacheTest, ReportsUpstreamTimeOnlyForAnswersThatCalledTheUpstream) {
  const Answer miss = read("/quota", kT0);
  ASSERT_EQ(miss.outcome, Outcome::miss);
  ASSERT_TRUE(miss.upstream_time.has_value());
  EXPECT_GE(miss.upstream_time->count(), 0);
  const Answer hit = read("/quota", kT0);
  ASSERT_EQ(hit.outcome, Outcome::hit);
  EXPECT_FALSE(hit.upstream_time.has_value());
  const Answer written =
      write(Method::post, secrets_path(), R"([{"name":"N","value":"v","scopes":["dex"]}])", kT0);
  EXPECT_TRUE(written.upstream_time.has_value());
  // A bad query is answered locally.
  EXPECT_FALSE(read(secrets_path() + "?per_page=0", kT0).upstream_time.has_value());
}

}  // namespace
}  // namespace sproxy::cache::testing
