// ReadThroughCache: hits, misses and TTLs, whole-store views, writes and invalidation, and
// no stale refill.
#include "tests/cache/read_through_fixture.hpp"

namespace sproxy::cache::testing {
namespace {

// ---------------------------------------------------------------------------------------
// Hits, misses and TTLs

TEST_F(ReadThroughCacheTest, ServesARepeatedReadOfEveryKindFromCache) {
  const std::string secret = create_secret_directly("API_KEY");
  const std::vector<std::string> paths = {"/stores", "/stores/" + store_id, secrets_path(),
                                          secret_path(secret), "/quota"};
  for (const auto& p : paths) {
    cache->purge_all();
    const Answer first = read(p, kT0);
    EXPECT_EQ(first.outcome, Outcome::miss) << p;
    EXPECT_EQ(first.status, 200u) << p;
    const std::size_t calls = fake->calls();
    const Answer second = read(p, kT0 + 1000);
    EXPECT_EQ(second.outcome, Outcome::hit) << p;
    EXPECT_EQ(body(second), body(first)) << p;
    EXPECT_EQ(second.age, 1000) << p;
    EXPECT_EQ(fake->calls(), calls) << p;
  }
}

TEST_F(ReadThroughCacheTest, TryReadAnswersAHitAtOnceAndLeavesAMissToRead) {
  const std::string secret = create_secret_directly("API_KEY");
  const std::vector<std::string> paths = {"/stores", "/stores/" + store_id, secrets_path(),
                                          secret_path(secret), "/quota"};
  const Viewer all;
  ReadScratch scratch;
  for (const auto& p : paths) {
    cache->purge_all();
    const auto stats = cache->stats();
    const std::size_t before = fake->calls();
    EXPECT_FALSE(
        cache->try_read(route(Method::get, base() + p), all, kT0, ioc.get_executor(), scratch))
        << p;
    EXPECT_EQ(fake->calls(), before) << p;
    EXPECT_EQ(cache->stats().misses, stats.misses) << p;
    EXPECT_EQ(cache->stats().hits, stats.hits) << p;

    const Answer filled = read(p, kT0);
    EXPECT_EQ(filled.outcome, Outcome::miss) << p;
    const std::size_t calls = fake->calls();
    const auto hit = cache->try_read(route(Method::get, base() + p), all, kT0 + 1000,
                                     ioc.get_executor(), scratch);
    ASSERT_TRUE(hit) << p;
    EXPECT_EQ(hit->outcome, Outcome::hit) << p;
    EXPECT_EQ(hit->status, 200u) << p;
    EXPECT_EQ(body(*hit), body(filled)) << p;
    EXPECT_EQ(hit->age, 1000) << p;
    EXPECT_EQ(cache->stats().hits, stats.hits + 1) << p;
    EXPECT_EQ(fake->calls(), calls) << p;
    // Past the TTL the entry is not served: read() refetches it.
    EXPECT_FALSE(cache->try_read(route(Method::get, base() + p), all, kT0 + 3'600'000 * kMs,
                                 ioc.get_executor(), scratch))
        << p;
  }
}

TEST_F(ReadThroughCacheTest, TryReadDependsOnNothingItsScratchHeldBefore) {
  const std::string secret = create_secret_directly("API_KEY");
  const Answer get = read(secret_path(secret), kT0);
  const Answer list = read(secrets_path() + "?per_page=5", kT0);
  ReadScratch scratch{"junk/store/junk/secrets", "junk/store/junk/secrets#1|junk"};
  const auto get_hit = cache->try_read(route(Method::get, base() + secret_path(secret)), Viewer{},
                                       kT0 + 1, ioc.get_executor(), scratch);
  ASSERT_TRUE(get_hit);
  EXPECT_EQ(body(*get_hit), body(get));
  scratch.memo_key = "junk";
  const auto list_hit = cache->try_read(route(Method::get, base() + secrets_path() + "?per_page=5"),
                                        Viewer{}, kT0 + 1, ioc.get_executor(), scratch);
  ASSERT_TRUE(list_hit);
  EXPECT_EQ(list_hit->outcome, Outcome::hit);
  EXPECT_EQ(body(*list_hit), body(list));
}

TEST_F(ReadThroughCacheTest, KeepsItsEntriesInTheStorageItIsGiven) {
  auto given = std::make_unique<ShardedLruStorage>(StorageLimits{}, 1);
  Storage* storage = given.get();
  cache = std::make_unique<ReadThroughCache>(cfg, fake, std::move(given));
  const std::string secret = create_secret_directly("API_KEY");
  ASSERT_EQ(read(secret_path(secret), kT0).status, 200u);
  EXPECT_EQ(storage->stats().entries, 1u);
  storage->clear();
  EXPECT_EQ(read(secret_path(secret), kT0 + 1).outcome, Outcome::miss);
}

TEST_F(ReadThroughCacheTest, TryReadGivesEachViewerItsOwnAnswerAndRefusesABadQueryLocally) {
  const std::string secret = create_secret_directly("API_KEY", {"workers"});
  ASSERT_EQ(read(secret_path(secret), kT0).status, 200u);
  Viewer other;
  other.all = false;
  other.services = {"dex"};
  ReadScratch scratch;
  const auto hidden = cache->try_read(route(Method::get, base() + secret_path(secret)), other,
                                      kT0 + 1, ioc.get_executor(), scratch);
  ASSERT_TRUE(hidden);
  EXPECT_EQ(hidden->status, 404u);
  EXPECT_EQ(body(*hidden), body(read(secret_path(secret), kT0 + 1, ReadOptions{false, other})));

  const std::size_t calls = fake->calls();
  const auto refused = cache->try_read(route(Method::get, base() + secrets_path() + "?page=0"),
                                       Viewer{}, kT0 + 1, ioc.get_executor(), scratch);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 400u);
  EXPECT_EQ(fake->calls(), calls);
}

TEST_F(ReadThroughCacheTest, AnswersLikeTheUpstreamForEveryKind) {
  const std::string secret = create_secret_directly("API_KEY", {"dex", "workers"}, "hello");
  for (const auto& p : {std::string("/stores"), "/stores/" + store_id, secrets_path(),
                        secret_path(secret), std::string("/quota")}) {
    const auto expected = direct(base() + p);
    const Answer miss = read(p, kT0);
    EXPECT_EQ(miss.status, expected.status) << p;
    EXPECT_EQ(body(miss), expected.body) << p;
    EXPECT_EQ(body(read(p, kT0)), expected.body) << p;
  }
}

TEST_F(ReadThroughCacheTest, RefetchesEachKindOnceItsOwnTtlHasPassed) {
  const std::string secret = create_secret_directly("API_KEY");
  struct Case {
    std::string path;
    Micros ttl;
  };
  const std::vector<Case> cases = {{"/stores", cfg.ttl.stores_ms * kMs},
                                   {"/stores/" + store_id, cfg.ttl.store_ms * kMs},
                                   {secrets_path(), cfg.ttl.secrets_ms * kMs},
                                   {secret_path(secret), cfg.ttl.secrets_ms * kMs},
                                   {"/quota", cfg.ttl.quota_ms * kMs}};
  Micros start = kT0;
  for (const auto& c : cases) {
    cache->purge_all();
    ASSERT_EQ(read(c.path, start).outcome, Outcome::miss) << c.path;
    EXPECT_EQ(read(c.path, start + c.ttl - 1).outcome, Outcome::hit) << c.path;
    const std::size_t calls = fake->calls();
    EXPECT_EQ(read(c.path, start + c.ttl).outcome, Outcome::miss) << c.path;
    EXPECT_GT(fake->calls(), calls) << c.path;
    EXPECT_EQ(read(c.path, start + c.ttl + 1).outcome, Outcome::hit) << c.path;
  }
}

TEST_F(ReadThroughCacheTest, SeesADirectUpstreamChangeOnlyAfterTheTtl) {
  const std::string secret = create_secret_directly("API_KEY", {"workers"}, "old");
  ASSERT_EQ(json_of(read(secret_path(secret), kT0))["result"]["comment"], "old");
  patch_comment_directly(secret, "new");
  EXPECT_EQ(json_of(read(secret_path(secret), kT0 + 5 * kMs))["result"]["comment"], "old");
  EXPECT_EQ(json_of(read(secret_path(secret), kT0 + cfg.ttl.secrets_ms * kMs))["result"]["comment"],
            "new");
}

// ---------------------------------------------------------------------------------------
// Whole-store views

TEST_F(ReadThroughCacheTest, AnswersEveryListQueryAndGetOfAStoreFromOneUpstreamFetch) {
  std::vector<std::string> ids;
  for (int i = 0; i < 30; ++i) ids.push_back(create_secret_directly("S" + std::to_string(i)));
  fake->reset_counts();
  const std::vector<std::string> queries = {
      "",           "?page=2",         "?per_page=5&page=3", "?order=name&direction=desc",
      "?search=s1", "?scopes=workers", "?per_page=100",      "?page=99"};
  for (const auto& q : queries) {
    const Answer a = read(secrets_path() + q, kT0 + 10);
    EXPECT_EQ(a.status, 200u) << q;
    EXPECT_EQ(body(a), direct(base() + secrets_path() + q).body) << q;
  }
  for (const auto& id : ids) EXPECT_EQ(read(secret_path(id), kT0 + 20).status, 200u);
  EXPECT_EQ(fake->calls(), 1u);
  EXPECT_EQ(fake->calls(RouteKind::list_secrets), 1u);
  EXPECT_EQ(fake->targets().front(), base() + secrets_path() + "?per_page=100&page=1");
}

TEST_F(ReadThroughCacheTest, FetchesEveryPageOfALargeStore) {
  options.max_secrets_per_account = 1000;
  SetUp();
  std::vector<upstream::SecretCreate> batch;
  for (int i = 0; i < 250; ++i) {
    batch.push_back(upstream::SecretCreate{"K" + std::to_string(1000 + i), "v", {"workers"}, {}});
  }
  ASSERT_TRUE(fake->store().create_secrets(kAccount, store_id, std::move(batch), kT0).ok());
  fake->reset_counts();

  const Answer last = read(secrets_path() + "?per_page=100&page=3&order=name", kT0);
  EXPECT_EQ(fake->calls(RouteKind::list_secrets), 3u);
  EXPECT_EQ(json_of(last)["result"].size(), 50u);
  EXPECT_EQ(json_of(last)["result_info"]["total_count"], 250);
  EXPECT_EQ(body(last), direct(base() + secrets_path() + "?per_page=100&page=3&order=name").body);
  // The 250th secret (on the upstream's third page) is known to gets.
  const std::string id = json_of(last)["result"].back()["id"];
  EXPECT_EQ(read(secret_path(id), kT0).status, 200u);
  EXPECT_EQ(fake->calls(RouteKind::list_secrets), 3u);
}

TEST_F(ReadThroughCacheTest, AnswersAGetOfASecretNotInTheSnapshotWithSecretNotFound) {
  create_secret_directly("A");
  read(secrets_path(), kT0);
  const std::size_t calls = fake->calls();
  for (const std::string& id : {std::string(32, 'e'), std::string("not-an-id")}) {
    const Answer a = read(secret_path(id), kT0);
    EXPECT_EQ(a.status, 404u);
    EXPECT_EQ(body(a), upstream::envelope_error(upstream::errors::secret_not_found()));
  }
  EXPECT_EQ(fake->calls(), calls);
}

TEST_F(ReadThroughCacheTest, AnswersInvalidListQueriesLocallyWithoutCallingUpstream) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {secrets_path() + "?page=0", "invalid_page_parameter"},
      {secrets_path() + "?per_page=101", "invalid_per_page_parameter"},
      {secrets_path() + "?order=size", "invalid_order_parameter"},
      {secrets_path() + "?direction=up", "invalid_direction_parameter"},
      {secrets_path() + "?scopes=nope", "secret_scope_invalid"},
      {"/stores?page=-1", "invalid_page_parameter"}};
  for (const auto& [path, token] : cases) {
    const Answer a = read(path, kT0);
    EXPECT_EQ(a.status, 400u) << path;
    EXPECT_EQ(json_of(a)["errors"][0]["message"], token) << path;
    EXPECT_EQ(body(a), direct(base() + path).body) << path;
  }
  EXPECT_EQ(fake->calls(), 0u);
}

TEST_F(ReadThroughCacheTest, ShowsARestrictedViewerOnlyTheSecretsOfItsServices) {
  const std::string w = create_secret_directly("W", {"workers"});
  const std::string d = create_secret_directly("D", {"dex"});
  const std::string both = create_secret_directly("B", {"ai_gateway", "dex"});
  ReadOptions opt;
  opt.viewer = Viewer{false, {"dex"}};
  const Answer list = read(secrets_path(), kT0, opt);
  const auto j = json_of(list);
  ASSERT_EQ(j["result"].size(), 2u);
  EXPECT_EQ(j["result_info"]["total_count"], 2);
  for (const auto& s : j["result"]) EXPECT_NE(s["id"], w);
  EXPECT_EQ(read(secret_path(d), kT0, opt).status, 200u);
  EXPECT_EQ(read(secret_path(both), kT0, opt).status, 200u);
  const Answer hidden = read(secret_path(w), kT0, opt);
  EXPECT_EQ(hidden.status, 404u);
  EXPECT_EQ(body(hidden), upstream::envelope_error(upstream::errors::secret_not_found()));
  // The unrestricted viewer of the same snapshot still sees all three.
  EXPECT_EQ(json_of(read(secrets_path(), kT0))["result"].size(), 3u);
  EXPECT_EQ(fake->calls(), 1u);
}

// ---------------------------------------------------------------------------------------
// Writes and invalidation

struct WriteCase {
  const char* name;
  Method method;
  std::function<std::string(const std::string& store, const std::string& secret)> path;
  std::function<std::string(const std::string& secret)> body;
};

class SecretWriteInvalidation : public CacheFixture,
                                public ::testing::WithParamInterface<WriteCase> {};

// A write whose answer is lost may or may not have happened: it invalidates what it may
// have changed (a successful write updates the cache instead: write_through_test.cpp).
TEST_P(SecretWriteInvalidation, RefreshesTheStoreAndQuotaButNotTheStoresListWhenTheAnswerIsLost) {
  const WriteCase& c = GetParam();
  const std::string secret = create_secret_directly("FIRST", {"workers"}, "c");
  create_secret_directly("SECOND", {"dex"});
  ASSERT_EQ(read(secrets_path(), kT0).outcome, Outcome::miss);
  ASSERT_EQ(read(secret_path(secret), kT0).outcome, Outcome::hit);
  ASSERT_EQ(read("/quota", kT0).outcome, Outcome::miss);
  ASSERT_EQ(read("/stores", kT0).outcome, Outcome::miss);
  ASSERT_EQ(read("/stores/" + store_id, kT0).outcome, Outcome::miss);

  fake->fail_next(Fault::transport(UpstreamErrc::connection_reset).after_apply());
  const Answer w = write(c.method, c.path(store_id, secret), c.body(secret), kT0 + 1);
  ASSERT_EQ(w.status, 502u) << body(w);
  EXPECT_EQ(w.outcome, Outcome::bypass);

  const Micros later = kT0 + 2;
  const Answer list = read(secrets_path(), later);
  EXPECT_EQ(list.outcome, Outcome::miss);
  EXPECT_EQ(body(list), direct(base() + secrets_path(), later).body);
  const Answer get = read(secret_path(secret), later);
  EXPECT_EQ(get.status, direct(base() + secret_path(secret), later).status);
  EXPECT_EQ(body(get), direct(base() + secret_path(secret), later).body);
  const Answer quota = read("/quota", later);
  EXPECT_EQ(quota.outcome, Outcome::miss);
  EXPECT_EQ(body(quota), direct(base() + "/quota", later).body);
  EXPECT_EQ(read("/stores", later).outcome, Outcome::hit);
}

INSTANTIATE_TEST_SUITE_P(
    EveryKind, SecretWriteInvalidation,
    ::testing::Values(
        WriteCase{
            "create", Method::post,
            [](const std::string& st, const std::string&) { return "/stores/" + st + "/secrets"; },
            [](const std::string&) {
              return std::string(R"([{"name":"NEW","value":"v","scopes":["workers"]}])");
            }},
        WriteCase{"patch", Method::patch,
                  [](const std::string& st, const std::string& s) {
                    return "/stores/" + st + "/secrets/" + s;
                  },
                  [](const std::string&) { return std::string(R"({"comment":"changed"})"); }},
        WriteCase{"delete", Method::del,
                  [](const std::string& st, const std::string& s) {
                    return "/stores/" + st + "/secrets/" + s;
                  },
                  [](const std::string&) { return std::string(); }},
        WriteCase{
            "bulk_delete", Method::del,
            [](const std::string& st, const std::string&) { return "/stores/" + st + "/secrets"; },
            [](const std::string& s) { return R"({"ids":[")" + s + R"("]})"; }},
        WriteCase{
            "duplicate", Method::post,
            [](const std::string& st, const std::string& s) {
              return "/stores/" + st + "/secrets/" + s + "/duplicate";
            },
            [](const std::string&) { return std::string(R"({"name":"COPY","scopes":["dex"]})"); }}),
    [](const ::testing::TestParamInfo<WriteCase>& i) { return std::string(i.param.name); });

TEST_F(ReadThroughCacheTest, LeavesOtherStoresCachedWhenOneStoreIsWritten) {
  options.max_stores_per_account = 2;
  SetUp();
  const std::string other = create_store_directly("other");
  const std::string other_path = "/stores/" + other + "/secrets";
  ASSERT_EQ(read(other_path, kT0).outcome, Outcome::miss);
  ASSERT_EQ(read("/stores/" + other, kT0).outcome, Outcome::miss);
  ASSERT_EQ(
      write(Method::post, secrets_path(), R"([{"name":"N","value":"v","scopes":["dex"]}])", kT0)
          .status,
      200u);
  EXPECT_EQ(read(other_path, kT0).outcome, Outcome::hit);
  EXPECT_EQ(read("/stores/" + other, kT0).outcome, Outcome::hit);
}

TEST_F(ReadThroughCacheTest, UpdatesTheStoresListAndQuotaAndCachesTheStoresDeletion) {
  create_secret_directly("A");
  read("/stores", kT0);
  read("/stores/" + store_id, kT0);
  read(secrets_path(), kT0);
  read("/quota", kT0);
  const Answer del = write(Method::del, "/stores/" + store_id + "?force=true", {}, kT0);
  ASSERT_EQ(del.status, 200u) << body(del);

  const Answer stores = read("/stores", kT0);
  EXPECT_EQ(stores.outcome, Outcome::hit);
  EXPECT_EQ(json_of(stores)["result"].size(), 0u);
  const Answer store = read("/stores/" + store_id, kT0);
  EXPECT_EQ(store.outcome, Outcome::hit);
  EXPECT_EQ(store.status, 404u);
  EXPECT_EQ(read(secrets_path(), kT0).status, 404u);
  EXPECT_EQ(json_of(read("/quota", kT0))["result"]["secrets"]["usage"], 0);
}

TEST_F(ReadThroughCacheTest, AddsACreatedStoreToTheCachedStoresList) {
  options.max_stores_per_account = 2;
  SetUp();
  ASSERT_EQ(json_of(read("/stores", kT0))["result"].size(), 1u);
  const Answer created = write(Method::post, "/stores", R"({"name":"second"})", kT0);
  ASSERT_EQ(created.status, 200u) << body(created);
  const Answer stores = read("/stores", kT0);
  EXPECT_EQ(stores.outcome, Outcome::hit);
  EXPECT_EQ(json_of(stores)["result"].size(), 2u);
}

TEST_F(ReadThroughCacheTest, InvalidatesWhenTheWriteAnswerIsLostInTransport) {
  const std::string secret = create_secret_directly("A", {"workers"}, "before");
  read(secret_path(secret), kT0);
  fake->fail_next(Fault::transport(UpstreamErrc::connection_reset).after_apply());
  const Answer w = write(Method::patch, secret_path(secret), R"({"comment":"after"})", kT0);
  EXPECT_EQ(w.status, 502u);
  EXPECT_EQ(json_of(read(secret_path(secret), kT0))["result"]["comment"], "after");
}

TEST_F(ReadThroughCacheTest, InvalidatesWhenTheWriteGetsAServerError) {
  const std::string secret = create_secret_directly("A", {"workers"}, "before");
  read(secret_path(secret), kT0);
  fake->fail_next(Fault::http(500).after_apply());
  EXPECT_EQ(write(Method::patch, secret_path(secret), R"({"comment":"after"})", kT0).status, 500u);
  EXPECT_EQ(json_of(read(secret_path(secret), kT0))["result"]["comment"], "after");
}

TEST_F(ReadThroughCacheTest, ForwardsWriteRequestsUnchanged) {
  const std::string target = base() + secrets_path();
  const std::string payload = R"([{"name":"X","value":"super-secret-value","scopes":["dex"]}])";
  upstream::ApiRequest req{Method::post, target, payload};
  const Answer a = test::run_awaitable(ioc, cache->write(route(Method::post, target), req, kT0));
  EXPECT_EQ(a.status, 200u);
  EXPECT_EQ(fake->targets().back(), target);
  EXPECT_EQ(fake->store().reveal_value_for_test(store_id, json_of(a)["result"][0]["id"]).value(),
            "super-secret-value");
  // Nothing the cache serves afterwards carries the value.
  EXPECT_EQ(body(read(secrets_path(), kT0)).find("super-secret-value"), std::string::npos);
}

// ---------------------------------------------------------------------------------------
// No stale refill

TEST_F(ReadThroughCacheTest, DoesNotStoreAFillThatReadDataBeforeAWrite) {
  const std::string secret = create_secret_directly("A", {"workers"}, "before");
  // The fill's upstream answer is computed now (pre-write) and held in flight.
  fake->hold(RouteKind::list_secrets);
  auto reader = test::spawn(ioc.get_executor(),
                            cache->read(route(Method::get, base() + secret_path(secret)), {}, kT0));
  test::run_until(ioc, [&] { return fake->held() == 1; });

  // The write goes through (not held) and invalidates while the fill is in flight.
  const Answer w = write(Method::patch, secret_path(secret), R"({"comment":"after"})", kT0 + 1);
  ASSERT_EQ(w.status, 200u);

  fake->release();
  test::run_until(ioc, [&] { return reader->done(); });
  // The reader that asked before the write may see the old data...
  EXPECT_EQ(json_of(reader->get())["result"]["comment"], "before");
  // ...but it was not stored: the next read goes upstream and sees the write.
  const std::size_t calls = fake->calls(RouteKind::list_secrets);
  const Answer after = read(secret_path(secret), kT0 + 2);
  EXPECT_EQ(after.outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(RouteKind::list_secrets), calls + 1);
  EXPECT_EQ(json_of(after)["result"]["comment"], "after");
}

TEST_F(ReadThroughCacheTest, DoesNotLetAReadAfterAWriteJoinAFillStartedBeforeIt) {
  const std::string secret = create_secret_directly("A", {"workers"}, "before");
  fake->hold(RouteKind::list_secrets);
  auto early = test::spawn(ioc.get_executor(),
                           cache->read(route(Method::get, base() + secret_path(secret)), {}, kT0));
  test::run_until(ioc, [&] { return fake->held() == 1; });
  ASSERT_EQ(write(Method::patch, secret_path(secret), R"({"comment":"after"})", kT0 + 1).status,
            200u);
  fake->release();  // stop holding new calls; the early one is released too

  const Answer late = read(secret_path(secret), kT0 + 2);
  EXPECT_EQ(json_of(late)["result"]["comment"], "after");
  test::run_until(ioc, [&] { return early->done(); });
}

}  // namespace
}  // namespace sproxy::cache::testing
