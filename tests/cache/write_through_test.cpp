// Write-through: a write's answer updates the cached entries it changed, so reading its
// effects back costs no upstream call, and every answer read back is the one the
// embedded store itself gives.
#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "cache/read_through.hpp"
#include "tests/cache/cache_fixture.hpp"

namespace sproxy::cache::testing {
namespace {

using nlohmann::json;
using test::Fault;

// Long enough that no secret turns active during a test: a write's answer says
// `pending`, and so does the store when read back.
constexpr Micros kActivationDelay = 3'600'000'000;

class WriteThroughTest : public CacheFixture {
 protected:
  WriteThroughTest() {
    options.activation_delay = kActivationDelay;
    options.max_stores_per_account = 3;
  }

  // Moves the upstream's clock (so each write gets its own `modified`).
  void tick() {
    upstream_now_ += kMs;
    fake->set_now(upstream_now_);
  }

  // The paths a client reads back after a write, the ids of every secret included.
  std::vector<std::string> read_back_paths() {
    std::vector<std::string> paths = {secrets_path(),
                                      secrets_path() + "?search=co",
                                      secrets_path() + "?scopes=dex",
                                      secrets_path() + "?order=name&direction=desc",
                                      secrets_path() + "?per_page=1&page=2",
                                      "/quota",
                                      "/stores",
                                      "/stores/" + store_id};
    const json list = json::parse(direct(base() + secrets_path() + "?per_page=100").body);
    for (const auto& s : list["result"]) paths.push_back(secret_path(s["id"]));
    return paths;
  }

  // `path` read through the cache is a hit and says what the store says.
  void expect_hit_as_upstream(const std::string& path, Micros now, ReadOptions opt = {},
                              const std::string& upstream_path = {}) {
    const Answer a = read(path, now, opt);
    const upstream::ApiResponse want =
        direct(base() + (upstream_path.empty() ? path : upstream_path), upstream_now_);
    EXPECT_EQ(a.outcome, Outcome::hit) << path;
    EXPECT_EQ(a.status, want.status) << path;
    EXPECT_EQ(json::parse(body(a)), json::parse(want.body)) << path;
  }

  void expect_everything_read_back(Micros now) {
    for (const auto& p : read_back_paths()) expect_hit_as_upstream(p, now);
    expect_hit_as_upstream(secrets_path(), now, dex_viewer(), secrets_path() + "?scopes=dex");
  }

  static ReadOptions dex_viewer() {
    ReadOptions opt;
    opt.viewer = Viewer{false, {"dex"}};
    return opt;
  }

  void prime(Micros now) {
    for (const auto& p : read_back_paths()) ASSERT_EQ(read(p, now).status, 200u) << p;
    ASSERT_EQ(read(secrets_path(), now, dex_viewer()).status, 200u);
  }

  Micros upstream_now_ = kT0;
};

// ---------------------------------------------------------------------------------------
// Every secret write kind

struct SecretWriteCase {
  const char* name;
  Method method;
  std::function<std::string(const std::string& store, const std::string& secret)> path;
  std::function<std::string(const std::string& secret)> body;
};

class SecretWriteThrough : public WriteThroughTest,
                           public ::testing::WithParamInterface<SecretWriteCase> {};

TEST_P(SecretWriteThrough, ReadsBackEveryEffectWithTheWriteAsItsOnlyUpstreamCall) {
  const SecretWriteCase& c = GetParam();
  const std::string secret = create_secret_directly("FIRST", {"workers"}, "cold");
  create_secret_directly("SECOND", {"dex"});
  prime(kT0);
  fake->reset_counts();
  tick();

  const Answer w = write(c.method, c.path(store_id, secret), c.body(secret), kT0 + 1);
  ASSERT_LT(w.status, 300u) << body(w);
  EXPECT_EQ(fake->calls(), 1u);
  EXPECT_GE(cache->stats().write_updates, 1u);

  expect_everything_read_back(kT0 + 2);
  expect_hit_as_upstream(secret_path(secret), kT0 + 2);  // a 404 once deleted
  EXPECT_EQ(fake->calls(), 1u) << "a read went upstream";
}

INSTANTIATE_TEST_SUITE_P(
    EveryKind, SecretWriteThrough,
    ::testing::Values(
        SecretWriteCase{
            "create", Method::post,
            [](const std::string& st, const std::string&) { return "/stores/" + st + "/secrets"; },
            [](const std::string&) {
              return std::string(
                  R"([{"name":"NEW","value":"v","scopes":["dex"],"comment":"copper"},)"
                  R"({"name":"NEW2","value":"w","scopes":["workers","dex"]}])");
            }},
        SecretWriteCase{"patch_scopes", Method::patch,
                        [](const std::string& st, const std::string& s) {
                          return "/stores/" + st + "/secrets/" + s;
                        },
                        [](const std::string&) { return std::string(R"({"scopes":["dex"]})"); }},
        SecretWriteCase{
            "patch_value", Method::patch,
            [](const std::string& st, const std::string& s) {
              return "/stores/" + st + "/secrets/" + s;
            },
            [](const std::string&) { return std::string(R"({"value":"new","comment":"cool"})"); }},
        SecretWriteCase{"delete", Method::del,
                        [](const std::string& st, const std::string& s) {
                          return "/stores/" + st + "/secrets/" + s;
                        },
                        [](const std::string&) { return std::string(); }},
        SecretWriteCase{
            "bulk_delete", Method::del,
            [](const std::string& st, const std::string&) { return "/stores/" + st + "/secrets"; },
            [](const std::string& s) { return R"({"ids":[")" + s + R"("]})"; }},
        SecretWriteCase{"duplicate", Method::post,
                        [](const std::string& st, const std::string& s) {
                          return "/stores/" + st + "/secrets/" + s + "/duplicate";
                        },
                        [](const std::string&) {
                          return std::string(R"({"name":"COPY","scopes":["dex"],"comment":"co"})");
                        }}),
    [](const ::testing::TestParamInfo<SecretWriteCase>& i) { return std::string(i.param.name); });

TEST_F(WriteThroughTest, ListsASecretAWriteLeftPendingAsTheUpstreamDoesWithNoActivationDelay) {
  options.activation_delay = 0;
  SetUp();
  create_secret_directly("A");
  prime(kT0);
  fake->reset_counts();
  tick();
  const Answer w =
      write(Method::post, secrets_path(), R"([{"name":"NEW","value":"v","scopes":["dex"]}])", kT0);
  ASSERT_EQ(json::parse(body(w))["result"][0]["status"], "pending");
  // The upstream itself says `active` at once: so does the cache.
  expect_everything_read_back(upstream_now_);
  EXPECT_EQ(fake->calls(), 1u);
}

TEST_F(WriteThroughTest, RefreshesAPendingSecretWhenItsActivationDelayHasPassed) {
  options.activation_delay = 5'000 * kMs;
  SetUp();
  create_secret_directly("A");
  prime(kT0);
  tick();
  const Answer w =
      write(Method::post, secrets_path(), R"([{"name":"NEW","value":"v","scopes":["dex"]}])", kT0);
  ASSERT_EQ(w.status, 200u);
  const std::string id = json::parse(body(w))["result"][0]["id"];
  const Answer pending = read(secret_path(id), upstream_now_ + 4'999 * kMs);
  EXPECT_EQ(pending.outcome, Outcome::hit);
  EXPECT_EQ(json::parse(body(pending))["result"]["status"], "pending");
  // Once the upstream says `active`, the entry is no longer fresh: it is fetched again.
  fake->set_now(upstream_now_ + 5'000 * kMs);
  const Answer active = read(secret_path(id), upstream_now_ + 5'000 * kMs);
  EXPECT_EQ(active.outcome, Outcome::miss);
  EXPECT_EQ(json::parse(body(active))["result"]["status"], "active");
}

// ---------------------------------------------------------------------------------------
// Store writes

TEST_F(WriteThroughTest, ACreatedStoreIsReadBackFromTheCacheAtOnce) {
  prime(kT0);
  fake->reset_counts();
  tick();
  const Answer created = write(Method::post, "/stores", R"({"name":"second"})", kT0 + 1);
  ASSERT_EQ(created.status, 200u) << body(created);
  const std::string id = json::parse(body(created))["result"]["id"];
  expect_hit_as_upstream("/stores", kT0 + 2);
  expect_hit_as_upstream("/stores?order=name&direction=desc", kT0 + 2);
  expect_hit_as_upstream("/quota", kT0 + 2);
  expect_hit_as_upstream("/stores/" + id, kT0 + 2);
  expect_hit_as_upstream("/stores/" + id + "/secrets", kT0 + 2);
  EXPECT_EQ(fake->calls(), 1u);
  // Secrets created in it next are added to its (empty) cached list.
  tick();
  ASSERT_EQ(write(Method::post, "/stores/" + id + "/secrets",
                  R"([{"name":"IN_NEW","value":"v","scopes":["dex"]}])", kT0 + 3)
                .status,
            200u);
  expect_hit_as_upstream("/stores/" + id + "/secrets", kT0 + 4);
  expect_hit_as_upstream("/quota", kT0 + 4);
  EXPECT_EQ(fake->calls(), 2u);
}

TEST_F(WriteThroughTest, AForcedStoreDeleteTakesItsCachedSecretsOutOfTheQuota) {
  create_secret_directly("A");
  create_secret_directly("B");
  const std::string other = create_store_directly("other");
  prime(kT0);
  fake->reset_counts();
  tick();
  const Answer del = write(Method::del, "/stores/" + store_id + "?force=true", {}, kT0 + 1);
  ASSERT_EQ(del.status, 200u) << body(del);
  expect_hit_as_upstream("/stores", kT0 + 2);
  expect_hit_as_upstream("/quota", kT0 + 2);
  EXPECT_EQ(json::parse(body(read("/quota", kT0 + 2)))["result"]["secrets"]["usage"], 0);
  // The deleted store and its secrets answer the upstream's 404 from the cache.
  expect_hit_as_upstream("/stores/" + store_id, kT0 + 2);
  expect_hit_as_upstream(secrets_path(), kT0 + 2);
  expect_hit_as_upstream(secrets_path() + "?per_page=5", kT0 + 2);
  EXPECT_EQ(fake->calls(), 1u);
  EXPECT_EQ(read("/stores/" + other, kT0 + 2).status, 200u);
}

TEST_F(WriteThroughTest, AForcedStoreDeleteWithoutItsSecretsCachedRefetchesTheQuota) {
  create_secret_directly("A");
  ASSERT_EQ(read("/quota", kT0).status, 200u);
  ASSERT_EQ(read("/stores", kT0).status, 200u);
  tick();
  ASSERT_EQ(write(Method::del, "/stores/" + store_id + "?force=true", {}, kT0 + 1).status, 200u);
  const Answer quota = read("/quota", kT0 + 2);
  EXPECT_EQ(quota.outcome, Outcome::miss);
  EXPECT_EQ(json::parse(body(quota))["result"]["secrets"]["usage"], 0);
  expect_hit_as_upstream("/stores", kT0 + 2);
}

// ---------------------------------------------------------------------------------------
// Ordering and doubt

class WriteOrderingTest : public WriteThroughTest {
 protected:
  // Starts a write whose upstream answer is computed now (the store applies it) and held
  // in flight until fake->release(); later calls are not held.
  auto start_held_write(Method m, const std::string& path, std::string body, Micros now,
                        RouteKind kind) {
    fake->hold(kind);
    upstream::ApiRequest req{m, base() + path, std::move(body)};
    auto spawned = test::spawn(ioc.get_executor(), cache->write(route(m, req.target), req, now));
    test::run_until(ioc, [&] { return fake->held() == 1; });
    fake->stop_holding();
    return spawned;
  }
};

TEST_F(WriteOrderingTest, AnOlderPatchAnsweredLastDoesNotUndoANewerOne) {
  const std::string secret = create_secret_directly("A", {"workers"}, "zero");
  prime(kT0);
  tick();
  auto first = start_held_write(Method::patch, secret_path(secret), R"({"comment":"one"})", kT0 + 1,
                                RouteKind::patch_secret);
  tick();
  ASSERT_EQ(write(Method::patch, secret_path(secret), R"({"comment":"two"})", kT0 + 2).status,
            200u);
  fake->release();
  test::run_until(ioc, [&] { return first->done(); });
  ASSERT_EQ(first->get().status, 200u);

  const Answer get = read(secret_path(secret), kT0 + 3);
  EXPECT_EQ(json::parse(body(get))["result"]["comment"], "two");
  expect_everything_read_back(kT0 + 3);
}

TEST_F(WriteOrderingTest, ACreateAnsweredAfterADeleteOfWhatItCreatedDoesNotBringItBack) {
  create_secret_directly("A");
  prime(kT0);
  tick();
  auto create = start_held_write(Method::post, secrets_path(),
                                 R"([{"name":"NEW","value":"v","scopes":["dex"]}])", kT0 + 1,
                                 RouteKind::create_secrets);
  // Another client learned the new id (the store already holds it) and deletes it.
  const json listed = json::parse(direct(base() + secrets_path() + "?search=NEW").body);
  ASSERT_EQ(listed["result"].size(), 1u);
  const std::string id = listed["result"][0]["id"];
  tick();
  ASSERT_EQ(write(Method::del, secret_path(id), {}, kT0 + 2).status, 202u);
  fake->release();
  test::run_until(ioc, [&] { return create->done(); });
  ASSERT_EQ(create->get().status, 200u);

  const Answer get = read(secret_path(id), kT0 + 3);
  EXPECT_EQ(get.status, 404u) << body(get);
  const Answer list = read(secrets_path(), kT0 + 3);
  EXPECT_EQ(json::parse(body(list)),
            json::parse(direct(base() + secrets_path(), upstream_now_).body));
}

TEST_F(WriteOrderingTest, AQuotaFetchedWhileACreateWasInFlightIsNotCountedTwice) {
  create_secret_directly("A");
  ASSERT_EQ(read(secrets_path(), kT0).status, 200u);
  tick();
  auto create = start_held_write(Method::post, secrets_path(),
                                 R"([{"name":"NEW","value":"v","scopes":["dex"]}])", kT0 + 1,
                                 RouteKind::create_secrets);
  // The quota is first fetched now: the store already counts the new secret.
  const Answer during = read("/quota", kT0 + 1);
  ASSERT_EQ(json::parse(body(during))["result"]["secrets"]["usage"], 2);
  fake->release();
  test::run_until(ioc, [&] { return create->done(); });
  ASSERT_EQ(create->get().status, 200u);

  const Answer quota = read("/quota", kT0 + 2);
  EXPECT_EQ(json::parse(body(quota))["result"]["secrets"]["usage"], 2);
  expect_hit_as_upstream(secrets_path(), kT0 + 2);
}

TEST_F(WriteOrderingTest, OverlappingCreatesBothReachTheListAndTheQuotaStaysExact) {
  create_secret_directly("A");
  prime(kT0);
  tick();
  auto first = start_held_write(Method::post, secrets_path(),
                                R"([{"name":"ONE","value":"v","scopes":["dex"]}])", kT0 + 1,
                                RouteKind::create_secrets);
  tick();
  ASSERT_EQ(write(Method::post, secrets_path(), R"([{"name":"TWO","value":"v","scopes":["dex"]}])",
                  kT0 + 2)
                .status,
            200u);
  fake->release();
  test::run_until(ioc, [&] { return first->done(); });
  ASSERT_EQ(first->get().status, 200u);

  expect_hit_as_upstream(secrets_path(), kT0 + 3);
  EXPECT_EQ(json::parse(body(read("/quota", kT0 + 3)))["result"]["secrets"]["usage"], 3);
}

TEST_F(WriteOrderingTest, AForcedStoreDeleteOverlappingACreateLeavesTheQuotaExact) {
  create_secret_directly("A");
  prime(kT0);
  tick();
  auto create = start_held_write(Method::post, secrets_path(),
                                 R"([{"name":"NEW","value":"v","scopes":["dex"]}])", kT0 + 1,
                                 RouteKind::create_secrets);
  tick();
  // The store goes with both secrets, the one the cache has not seen yet included.
  ASSERT_EQ(write(Method::del, "/stores/" + store_id + "?force=true", {}, kT0 + 2).status, 200u);
  fake->release();
  test::run_until(ioc, [&] { return create->done(); });
  ASSERT_EQ(create->get().status, 200u);

  EXPECT_EQ(json::parse(body(read("/quota", kT0 + 3)))["result"]["secrets"]["usage"], 0);
  expect_hit_as_upstream("/stores", kT0 + 3);
}

TEST_F(WriteThroughTest, AWriteTheUpstreamRefusesStillInvalidates) {
  create_secret_directly("A");
  prime(kT0);
  // Changed behind the cache's back; a refused write must not keep the old list.
  patch_comment_directly(json::parse(direct(base() + secrets_path()).body)["result"][0]["id"],
                         "behind");
  tick();
  const Answer refused =
      write(Method::post, secrets_path(), R"([{"name":"A","value":"v","scopes":["dex"]}])", kT0);
  ASSERT_EQ(refused.status, 400u);
  const Answer list = read(secrets_path(), kT0 + 1);
  EXPECT_EQ(list.outcome, Outcome::miss);
  EXPECT_EQ(json::parse(body(list))["result"][0]["comment"], "behind");
}

// ---------------------------------------------------------------------------------------
// Property: random write sequences read back as the embedded store answers them

TEST_F(WriteThroughTest, RandomWriteSequencesReadBackAsTheStoreAnswersWithOneCallPerWrite) {
  const std::vector<std::vector<std::string>> scope_sets = {
      {"workers"}, {"dex"}, {"workers", "dex"}, {"ai_gateway", "dex", "access"}};
  for (unsigned seed = 1; seed <= 12; ++seed) {
    SetUp();  // a fresh store and cache
    upstream_now_ = kT0;
    fake->set_now(upstream_now_);
    std::mt19937 rng(seed);
    auto pick = [&](std::size_t n) {
      return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
    };
    create_secret_directly("S0", {"workers"}, "seed");
    prime(kT0);
    fake->reset_counts();
    int name = 1;
    std::size_t writes = 0;
    for (int step = 0; step < 20; ++step) {
      tick();
      const json listed = json::parse(direct(base() + secrets_path() + "?per_page=100").body);
      std::vector<std::string> ids;
      for (const auto& s : listed["result"]) ids.push_back(s["id"]);
      const auto scopes = json(scope_sets[pick(scope_sets.size())]).dump();
      const std::size_t op = ids.empty() ? 0 : pick(5);
      Answer w;
      if (op == 0) {
        const std::string n1 = "N" + std::to_string(name++), n2 = "N" + std::to_string(name++);
        w = write(Method::post, secrets_path(),
                  R"([{"name":")" + n1 + R"(","value":"v","scopes":)" + scopes + R"(},{"name":")" +
                      n2 + R"(","value":"v","scopes":["workers"],"comment":"c)" + n2 + R"("}])",
                  kT0 + step);
      } else if (op == 1) {
        const std::string body = pick(2) == 0 ? R"({"scopes":)" + scopes + "}"
                                              : R"({"comment":"p)" + std::to_string(step) + R"("})";
        w = write(Method::patch, secret_path(ids[pick(ids.size())]), body, kT0 + step);
      } else if (op == 2) {
        w = write(Method::del, secret_path(ids[pick(ids.size())]), {}, kT0 + step);
      } else if (op == 3) {
        const std::size_t i = pick(ids.size());
        json bulk = {{"ids", json::array({ids[i]})}};
        if (ids.size() > 1) bulk["ids"].push_back(ids[(i + 1 + pick(ids.size() - 1)) % ids.size()]);
        w = write(Method::del, secrets_path(), bulk.dump(), kT0 + step);
      } else {
        w = write(Method::post, secret_path(ids[pick(ids.size())]) + "/duplicate",
                  R"({"name":"D)" + std::to_string(name++) + R"(","scopes":)" + scopes + "}",
                  kT0 + step);
      }
      ASSERT_LT(w.status, 300u) << "seed " << seed << " step " << step << ": " << body(w);
      ++writes;
      expect_everything_read_back(kT0 + step);
      ASSERT_EQ(fake->calls(), writes) << "seed " << seed << " step " << step;
    }
  }
}

}  // namespace
}  // namespace sproxy::cache::testing
