#include "cache/read_through.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>

#include "cache/policy.hpp"
#include "tests/cache/cache_fixture.hpp"

namespace sproxy::cache::testing {
namespace {

using test::Fault;
using upstream::UpstreamErrc;

nlohmann::json json_of(const Answer& a) { return nlohmann::json::parse(*a.body); }

class ReadThroughCacheTest : public CacheFixture {};

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

// ---------------------------------------------------------------------------------------
// Stale-if-error

struct FailureCase {
  const char* name;
  Fault fault;
};

class StaleIfError : public CacheFixture, public ::testing::WithParamInterface<FailureCase> {};

TEST_P(StaleIfError, ServesTheLastGoodEntryWhenTheUpstreamFails) {
  const std::string secret = create_secret_directly("A");
  const std::vector<std::string> paths = {"/stores", "/stores/" + store_id, secrets_path(),
                                          secret_path(secret), "/quota"};
  std::vector<std::string> good;
  for (const auto& p : paths) good.push_back(body(read(p, kT0)));
  fake->fail_always(GetParam().fault);
  const Micros expired = kT0 + 40'000 * kMs;  // past every TTL, within stale_if_error
  for (std::size_t i = 0; i < paths.size(); ++i) {
    const Answer a = read(paths[i], expired);
    EXPECT_EQ(a.outcome, Outcome::stale) << paths[i];
    EXPECT_EQ(a.status, 200u) << paths[i];
    EXPECT_EQ(body(a), good[i]) << paths[i];
    EXPECT_EQ(a.age, 40'000 * kMs) << paths[i];
  }
  EXPECT_EQ(cache->stats().stale_served, paths.size());
}

INSTANTIATE_TEST_SUITE_P(
    UpstreamFailures, StaleIfError,
    ::testing::Values(FailureCase{"http500", Fault::http(500)},
                      FailureCase{"http503", Fault::http(503)},
                      FailureCase{"rate_limited", Fault::too_many_requests(30)},
                      FailureCase{"timeout", Fault::transport(UpstreamErrc::timeout)},
                      FailureCase{"reset", Fault::transport(UpstreamErrc::connection_reset)},
                      FailureCase{"unreachable", Fault::transport(UpstreamErrc::unreachable)}),
    [](const ::testing::TestParamInfo<FailureCase>& i) { return std::string(i.param.name); });

TEST_F(ReadThroughCacheTest, PassesOnAnUpstreamNoInsteadOfServingStale) {
  read("/quota", kT0);
  for (unsigned status : {400u, 401u, 403u, 404u}) {
    cache->purge_all();
    read("/quota", kT0);
    fake->fail_next(Fault::http(status));
    const Answer a = read("/quota", kT0 + 6'000 * kMs);
    EXPECT_EQ(a.status, status);
    EXPECT_EQ(a.outcome, Outcome::miss);
  }
}

TEST_F(ReadThroughCacheTest, StopsServingStaleOnceStaleIfErrorHasPassed) {
  read("/quota", kT0);
  fake->fail_always(Fault::http(503));
  const Micros fresh_until = kT0 + cfg.ttl.quota_ms * kMs;
  const Micros limit = fresh_until + cfg.stale_if_error_ms * kMs;
  EXPECT_EQ(read("/quota", limit - 1).outcome, Outcome::stale);
  const Answer gone = read("/quota", limit);
  EXPECT_EQ(gone.status, 503u);
  EXPECT_EQ(gone.outcome, Outcome::miss);
}

TEST_F(ReadThroughCacheTest, TurnsTransportFailuresIntoGatewayErrorsWhenNothingIsCached) {
  fake->fail_next(Fault::transport(UpstreamErrc::timeout));
  const Answer timeout = read("/quota", kT0);
  EXPECT_EQ(timeout.status, 504u);
  EXPECT_EQ(body(timeout), upstream::envelope_error(upstream::errors::gateway_timeout()));
  fake->fail_next(Fault::transport(UpstreamErrc::connection_reset));
  const Answer reset = read("/quota", kT0);
  EXPECT_EQ(reset.status, 502u);
  EXPECT_EQ(json_of(reset)["errors"][0]["code"], 1002);
}

TEST_F(ReadThroughCacheTest, PassesServerErrorsAndRateLimitsThroughWhenNothingIsCached) {
  fake->fail_next(Fault::http(503));
  const Answer unavailable = read(secrets_path(), kT0);
  EXPECT_EQ(unavailable.status, 503u);
  fake->fail_next(Fault::too_many_requests(42));
  const Answer limited = read(secrets_path(), kT0);
  EXPECT_EQ(limited.status, 429u);
  EXPECT_EQ(limited.retry_after, "42");
  EXPECT_EQ(body(limited), upstream::envelope_error(upstream::errors::rate_limited(42)));
}

// ---------------------------------------------------------------------------------------
// Upstream answers that are not API answers

struct GarbageCase {
  const char* name;
  // The garbage body, made from the good body of the same read.
  std::function<std::string(const std::string& good)> body;
};

class GarbageAnswer : public CacheFixture,
                      public ::testing::WithParamInterface<std::tuple<const char*, GarbageCase>> {
 protected:
  std::string path() const {
    const std::string which = std::get<0>(GetParam());
    return which == std::string("store") ? "/stores/" + store_id : "/quota";
  }
  std::string garbage() { return std::get<1>(GetParam()).body(direct(base() + path()).body); }
};

TEST_P(GarbageAnswer, IsAnsweredAs502UpstreamUnavailableAndNotCached) {
  const std::string bad = garbage();
  fake->fail_next(Fault::raw_answer(200, bad));
  const Answer a = read(path(), kT0);
  EXPECT_EQ(a.status, 502u);
  EXPECT_EQ(body(a), upstream::envelope_error(upstream::errors::upstream_failure("bad_response")));
  EXPECT_EQ(cache->stats().upstream_bad_answers, 1u);
  // Nothing was stored: the next read asks again and gets the good answer.
  const Answer next = read(path(), kT0);
  EXPECT_EQ(next.status, 200u);
  EXPECT_EQ(next.outcome, Outcome::miss);
  EXPECT_EQ(body(next), direct(base() + path()).body);
  EXPECT_EQ(fake->calls(), 2u);
}

TEST_P(GarbageAnswer, NeverReplacesTheGoodEntryWhichIsServedStaleInstead) {
  const std::string good = body(read(path(), kT0));
  const std::string bad = garbage();
  const Micros expired = kT0 + 30'000 * kMs;  // past the TTL, within stale_if_error
  for (int i = 0; i < 2; ++i) {
    fake->fail_next(Fault::raw_answer(200, bad));
    const Answer a = read(path(), expired + i);
    EXPECT_EQ(a.status, 200u);
    EXPECT_EQ(a.outcome, Outcome::stale);
    EXPECT_EQ(body(a), good);
  }
  EXPECT_EQ(cache->stats().upstream_bad_answers, 2u);
}

INSTANTIATE_TEST_SUITE_P(
    StoreAndQuota, GarbageAnswer,
    ::testing::Combine(
        ::testing::Values("store", "quota"),
        ::testing::Values(
            GarbageCase{"not_json", [](const std::string&) { return "<html>OK</html>"; }},
            GarbageCase{"json_not_an_envelope",
                        [](const std::string& good) {
                          return nlohmann::json::parse(good)["result"].dump();
                        }},
            GarbageCase{"success_false",
                        [](const std::string& good) {
                          auto j = nlohmann::json::parse(good);
                          j["success"] = false;
                          return j.dump();
                        }},
            GarbageCase{
                "wrong_result_shape",
                [](const std::string& good) {
                  auto j = nlohmann::json::parse(good);
                  j["result"] = nlohmann::json::array();
                  return j.dump();
                }},
            GarbageCase{"truncated",
                        [](const std::string& good) { return good.substr(0, good.size() / 2); }})),
    [](const auto& i) {
      return std::string(std::get<0>(i.param)) + "_" + std::get<1>(i.param).name;
    });

TEST_F(ReadThroughCacheTest, WrapsAnErrorWithoutAnEnvelopeInTheApisEnvelope) {
  const std::string html = "<html><body>502 Bad Gateway</body></html>";
  for (unsigned status : {500u, 502u, 503u, 403u, 404u}) {
    fake->fail_next(Fault::raw_answer(status, html));
    const Answer a = read("/quota", kT0);
    EXPECT_EQ(a.status, 502u) << status;
    EXPECT_EQ(body(a), upstream::envelope_error(upstream::errors::upstream_failure("bad_response")))
        << status;
  }
  // A list page too, and a read that bypasses the cache.
  fake->fail_next(Fault::raw_answer(502, html));
  EXPECT_EQ(body(read(secrets_path(), kT0)),
            upstream::envelope_error(upstream::errors::upstream_failure("bad_response")));
  fake->fail_next(Fault::raw_answer(502, html));
  const Answer bypassed = read("/stores/not-a-valid-id", kT0);
  EXPECT_EQ(bypassed.outcome, Outcome::bypass);
  EXPECT_EQ(bypassed.status, 502u);
  EXPECT_EQ(json_of(bypassed)["errors"][0]["message"], "upstream_unavailable: bad_response");
  EXPECT_EQ(cache->stats().upstream_bad_answers, 7u);
}

TEST_F(ReadThroughCacheTest, KeepsA429WithoutAnEnvelopeARateLimitInTheApisEnvelope) {
  fake->fail_next(Fault::raw_answer(429, "<html>Too Many Requests</html>"));
  const Answer a = read("/quota", kT0);
  EXPECT_EQ(a.status, 429u);
  EXPECT_EQ(a.retry_after, std::to_string(policy::kDefaultRetryAfterSeconds));
  EXPECT_EQ(body(a), upstream::envelope_error(
                         upstream::errors::rate_limited(policy::kDefaultRetryAfterSeconds)));
}

TEST_F(ReadThroughCacheTest, PassesOnAnUpstreamErrorWithItsEnvelopeAsItIs) {
  const std::string envelope = upstream::envelope_error(upstream::errors::validation("odd"));
  fake->fail_next(Fault::raw_answer(400, envelope));
  const Answer a = read("/quota", kT0);
  EXPECT_EQ(a.status, 400u);
  EXPECT_EQ(body(a), envelope);
  EXPECT_EQ(cache->stats().upstream_bad_answers, 0u);
}

TEST_F(ReadThroughCacheTest, NeverPassesOnAWritesGarbageSuccessButStillInvalidates) {
  const std::vector<std::string> garbage = {"<html>OK</html>", "{}",
                                            R"({"success":true,"errors":[],"result":{}})"};
  for (std::size_t i = 0; i < garbage.size(); ++i) {
    ASSERT_EQ(json_of(read("/quota", kT0))["result"]["secrets"]["usage"], i);
    fake->fail_next(Fault::raw_answer(200, garbage[i]).after_apply());
    const std::string name = "S" + std::to_string(i);
    const Answer w = write(Method::post, secrets_path(),
                           R"([{"name":")" + name + R"(","value":"v","scopes":["workers"]}])", kT0);
    EXPECT_EQ(w.status, 502u) << garbage[i];
    EXPECT_EQ(json_of(w)["errors"][0]["message"], "upstream_unavailable: bad_response");
    // The write was applied upstream, and the quota entry it changes was invalidated.
    EXPECT_EQ(json_of(read("/quota", kT0))["result"]["secrets"]["usage"], i + 1) << garbage[i];
  }
  EXPECT_EQ(cache->stats().upstream_bad_answers, garbage.size());
}

// ---------------------------------------------------------------------------------------
// Negative caching

TEST_F(ReadThroughCacheTest, CachesAnUnknownStoreForTheNegativeTtl) {
  const std::string unknown(32, 'c');
  for (const std::string& p : {"/stores/" + unknown, "/stores/" + unknown + "/secrets",
                               "/stores/" + unknown + "/secrets/" + std::string(32, 'd')}) {
    cache->purge_all();
    fake->reset_counts();
    const Answer first = read(p, kT0);
    EXPECT_EQ(first.status, 404u) << p;
    EXPECT_EQ(json_of(first)["errors"][0]["message"], "store_not_found") << p;
    EXPECT_EQ(read(p, kT0 + cfg.ttl.negative_ms * kMs - 1).outcome, Outcome::hit) << p;
    EXPECT_EQ(fake->calls(), 1u) << p;
    EXPECT_EQ(read(p, kT0 + cfg.ttl.negative_ms * kMs).outcome, Outcome::miss) << p;
    EXPECT_EQ(fake->calls(), 2u) << p;
  }
}

TEST_F(ReadThroughCacheTest, DropsANegativeEntryOnAnyWriteToThatStore) {
  const std::string unknown(32, 'c');
  ASSERT_EQ(read("/stores/" + unknown + "/secrets", kT0).status, 404u);
  // A write to that store (it fails: the store does not exist) still drops the entry.
  write(Method::post, "/stores/" + unknown + "/secrets",
        R"([{"name":"N","value":"v","scopes":["dex"]}])", kT0);
  EXPECT_EQ(read("/stores/" + unknown + "/secrets", kT0).outcome, Outcome::miss);
}

TEST_F(ReadThroughCacheTest, KeepsAKnownMissingStoreA404EvenForAnInvalidQuery) {
  const std::string unknown(32, 'c');
  ASSERT_EQ(read("/stores/" + unknown + "/secrets", kT0).status, 404u);
  const Answer a = read("/stores/" + unknown + "/secrets?page=0", kT0);
  EXPECT_EQ(a.status, 404u);
  EXPECT_EQ(json_of(a)["errors"][0]["message"], "store_not_found");
}

TEST_F(ReadThroughCacheTest, DoesNotCacheNegativeAnswersWithANegativeTtlOfZero) {
  cfg.ttl.negative_ms = 0;
  SetUp();
  const std::string unknown(32, 'c');
  EXPECT_EQ(read("/stores/" + unknown, kT0).status, 404u);
  EXPECT_EQ(read("/stores/" + unknown, kT0).outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(), 2u);
}

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
