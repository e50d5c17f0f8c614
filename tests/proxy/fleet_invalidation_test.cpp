// Fleet mode's invalidation across processes, end to end: three `secrets-proxy` processes
// (A, B, C) in fleet mode on one real redis-server, in front of a fourth one as the
// stand-in upstream (embedded store, cache off, every API request it answers counted in
// its /metrics). Their caches keep secrets for minutes, so only the fleet's messages can
// make B and C drop what A's write changed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/fleet_member.hpp"
#include "tests/support/http_test_client.hpp"
#include "tests/support/proxy_process.hpp"
#include "tests/support/redis_server.hpp"
#include "tests/support/server_harness.hpp"
#include "tests/support/standin.hpp"
#include "upstream/crypto.hpp"

#ifndef SPROXY_BINARY
#error "SPROXY_BINARY must point at the secrets-proxy executable"
#endif

namespace sproxy::test {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using ::testing::HasSubstr;

const std::string kUpstreamToken = "fleet-sync-upstream-token-51d2";
const std::string kClientToken = "fleet-sync-client-token-77ab";
const std::string kPurgeToken = "fleet-sync-purge-token-03c5";
const std::string kAccount = "f1ee75cc0000000000000000000000aa";

class FleetInvalidation : public ::testing::Test {
 protected:
  void SetUp() override {
    const json cfg = standin_config(
        dir_.path(), json::array({json{{"name", "proxy"},
                                       {"token_sha256", upstream::sha256_hex(kUpstreamToken)},
                                       {"accounts", {"*"}},
                                       {"permissions", {"read", "write", "admin"}}}}));
    standin_ = std::make_unique<ProxyProcess>(
        SPROXY_BINARY, write_json_file(dir_.path(), "standin.json", cfg), dir_.path(), "standin");
    auto c = standin_->connect();
    const auto store =
        c->post(api_base(kAccount) + "/stores", R"({"name":"fleet"})", bearer(kUpstreamToken));
    ASSERT_EQ(store.result_int(), 200) << store.body();
    store_ = json::parse(store.body())["result"]["id"].get<std::string>();
    const auto created = c->post(
        secrets(),
        json::array(
            {{{"name", "S"}, {"value", "v"}, {"scopes", {"workers"}}, {"comment", "before"}}})
            .dump(),
        bearer(kUpstreamToken));
    ASSERT_EQ(created.result_int(), 200) << created.body();
    secret_ = json::parse(created.body())["result"][0]["id"].get<std::string>();
  }

  // A fleet member: an http upstream client of the stand-in, caching for 10 minutes.
  // `login`: another Redis ACL user than the fixture's; `wait_synced`: return only once
  // the member is subscribed and in sync.
  std::unique_ptr<ProxyProcess> start_member(const std::string& name, int max_unsynced_ms,
                                             const RedisLogin& login = {},
                                             bool wait_synced = true) {
    json fleet = fleet_section(redis_, dir_.path(), name, "fleet-sync-test", login);
    fleet["max_unsynced_ms"] = max_unsynced_ms;
    const json cfg = {
        {"listen", {{"address", "127.0.0.1"}, {"port", 0}, {"threads", 1}}},
        {"clients",
         {{{"name", "writer"},
           {"token_sha256", upstream::sha256_hex(kClientToken)},
           {"services", {"workers"}},
           {"accounts", {"*"}},
           {"permissions", {"read", "write"}}},
          {{"name", "operator"},
           {"token_sha256", upstream::sha256_hex(kPurgeToken)},
           {"accounts", {"*"}},
           {"permissions", {"admin"}}}}},
        {"upstream",
         {{"kind", "http"},
          {"base_url", standin_->base_url()},
          {"token_file", write_secret_file(dir_.path(), "upstream-token", kUpstreamToken)},
          {"max_retries", 0}}},
        {"cache", {{"ttl", {{"secrets_ms", 600'000}, {"store_ms", 600'000}}}}},
        {"audit", {{"enabled", false}}},
        {"log", {{"file", (dir_.path() / (name + ".log")).string()}}},
        {"fleet", fleet}};
    auto p = std::make_unique<ProxyProcess>(
        SPROXY_BINARY, write_json_file(dir_.path(), name + ".json", cfg), dir_.path(), name);
    // Bounded: subscribed and resynchronized (its cache is trusted) before the test goes on.
    if (wait_synced) {
      EXPECT_TRUE(poll([&] { return metric(*p, "secrets_proxy_fleet_synced") == 1; }))
          << log_of(name);
    }
    return p;
  }

  std::string secrets() const { return api_base(kAccount) + "/stores/" + store_ + "/secrets"; }
  std::string secret() const { return secrets() + "/" + secret_; }
  std::string log_of(const std::string& name) const {
    return read_text_file(dir_.path() / (name + ".log"));
  }

  // The comment `p` answers for the secret, and whether it came from its cache.
  static std::pair<std::string, std::string> read_comment(const ProxyProcess& p,
                                                          const std::string& target) {
    const auto res = p.connect()->get(target, bearer(kClientToken));
    if (res.result_int() != 200) return {"status " + std::to_string(res.result_int()), ""};
    const auto j = json::parse(res.body());
    return {j["result"]["comment"].is_string() ? j["result"]["comment"].get<std::string>() : "",
            std::string(res["X-Cache"])};
  }

  void patch_comment(const ProxyProcess& p, const std::string& comment) {
    const auto res =
        p.connect()->patch(secret(), json{{"comment", comment}}.dump(), bearer(kClientToken));
    ASSERT_EQ(res.result_int(), 200) << res.body();
  }

  static double metric(const ProxyProcess& p, const std::string& name,
                       const std::string& labels = "") {
    return metric_value(p, name, labels);
  }

  // API requests the stand-in has answered.
  double standin_requests() const {
    return metric(*standin_, "secrets_proxy_requests_total", "route=\"/stores");
  }

  static bool poll(const std::function<bool()>& done) { return poll_until(done); }

  TempDir dir_;
  RedisServer redis_;
  std::unique_ptr<ProxyProcess> standin_;
  std::string store_;
  std::string secret_;
};

TEST_F(FleetInvalidation, AWriteOnOneProcessIsServedByTheOthersRightAfter) {
  auto a = start_member("member-a", 1000);
  auto b = start_member("member-b", 1000);
  auto c = start_member("member-c", 1000);
  for (const ProxyProcess* p : {b.get(), c.get()}) {
    EXPECT_EQ(read_comment(*p, secret()).first, "before");
    EXPECT_EQ(read_comment(*p, secret()),
              std::make_pair(std::string("before"), std::string("HIT")));
  }
  patch_comment(*a, "after");
  EXPECT_EQ(metric(*a, "secrets_proxy_fleet_invalidations_published_total", "outcome=\"ok\""), 1);
  // The message reaches B and C within moments of the write's answer; bounded poll.
  for (const ProxyProcess* p : {b.get(), c.get()}) {
    int reads = 0;
    EXPECT_TRUE(poll([&] {
      ++reads;
      return read_comment(*p, secret()).first == "after";
    }));
    EXPECT_EQ(metric(*p, "secrets_proxy_fleet_invalidations_received_total", "outcome=\"applied\""),
              1);
    // And the list of the store too.
    const auto list = p->connect()->get(secrets(), bearer(kClientToken));
    EXPECT_THAT(list.body(), HasSubstr("\"after\""));
  }
  // A's own message changed nothing in A: its write had already updated its cache.
  EXPECT_EQ(read_comment(*a, secret()), std::make_pair(std::string("after"), std::string("HIT")));
  EXPECT_EQ(metric(*a, "secrets_proxy_fleet_invalidations_received_total", "outcome=\"own\""), 1);
}

TEST_F(FleetInvalidation, WithRedisDownEntriesAreServedForMaxUnsyncedThenReadsGoUpstream) {
  auto a = start_member("member-a", 3000);
  auto b = start_member("member-b", 3000);
  EXPECT_EQ(read_comment(*b, secret()).first, "before");
  const double before = standin_requests();
  redis_.stop();
  // Still within max_unsynced_ms of the loss: a hit.
  EXPECT_EQ(read_comment(*b, secret()), std::make_pair(std::string("before"), std::string("HIT")));
  EXPECT_EQ(standin_requests(), before);
  // Writes keep working (the publish fails at once, counted).
  patch_comment(*a, "after");
  EXPECT_EQ(metric(*a, "secrets_proxy_fleet_invalidations_published_total", "outcome=\"failed\""),
            1);
  // Past the bound every read goes upstream, and so sees the write.
  EXPECT_TRUE(poll([&] { return read_comment(*b, secret()).second == "MISS"; }));
  EXPECT_EQ(read_comment(*b, secret()), std::make_pair(std::string("after"), std::string("MISS")));
  EXPECT_EQ(metric(*b, "secrets_proxy_fleet_synced"), 0);
  EXPECT_EQ(metric(*b, "secrets_proxy_fleet_subscribed"), 0);
  EXPECT_THAT(log_of("member-b"), HasSubstr("lost the subscription to invalidations"));
}

TEST_F(FleetInvalidation, AfterARedisRestartTheProcessesResyncAndDropWhatChanged) {
  // A long bound: during the outage B keeps serving what it holds.
  auto a = start_member("member-a", 600'000);
  auto b = start_member("member-b", 600'000);
  EXPECT_EQ(read_comment(*b, secret()).first, "before");
  redis_.stop();
  EXPECT_TRUE(poll([&] { return metric(*b, "secrets_proxy_fleet_synced") == 0; }));
  patch_comment(*a, "after");  // not published: Redis is down
  EXPECT_EQ(read_comment(*b, secret()), std::make_pair(std::string("before"), std::string("HIT")));
  redis_.start();
  // B subscribes again, finds it holds entries for a store whose generation it cannot
  // vouch for, and drops them.
  EXPECT_TRUE(poll([&] { return metric(*b, "secrets_proxy_fleet_synced") == 1; }));
  EXPECT_GE(metric(*b, "secrets_proxy_fleet_resync_invalidations_total"), 1);
  EXPECT_EQ(read_comment(*b, secret()).first, "after");
  EXPECT_EQ(read_comment(*b, secret()), std::make_pair(std::string("after"), std::string("HIT")));
  EXPECT_THAT(log_of("member-b"), HasSubstr("cached entries are trusted again"));
}

TEST_F(FleetInvalidation, APurgeOnOneProcessIsPublishedToTheOthers) {
  auto a = start_member("member-a", 1000);
  auto b = start_member("member-b", 1000);
  EXPECT_EQ(read_comment(*b, secret()).first, "before");
  // Changed behind the fleet's back (straight at the upstream): only a purge tells B.
  const auto changed = standin_->connect()->patch(secret(), json{{"comment", "upstream"}}.dump(),
                                                  bearer(kUpstreamToken));
  ASSERT_EQ(changed.result_int(), 200) << changed.body();
  EXPECT_EQ(read_comment(*b, secret()), std::make_pair(std::string("before"), std::string("HIT")));
  const auto purged = a->connect()->post(
      "/admin/purge", json{{"account_id", kAccount}, {"store_id", store_}}.dump(),
      bearer(kPurgeToken));
  ASSERT_EQ(purged.result_int(), 200) << purged.body();
  // Answered once published, and recorded like every other request.
  EXPECT_EQ(metric(*a, "secrets_proxy_requests_total", "route=\"/admin/purge\""), 1);
  EXPECT_TRUE(poll([&] { return read_comment(*b, secret()).first == "upstream"; }));
  // /admin/status shows the fleet's state.
  const auto status = b->connect()->get("/admin/status", bearer(kPurgeToken));
  ASSERT_EQ(status.result_int(), 200) << status.body();
  const json fleet = json::parse(status.body())["result"]["fleet"];
  EXPECT_EQ(fleet["subscribed"], true);
  EXPECT_EQ(fleet["synced"], true);
  EXPECT_EQ(fleet["channel"], "fleet-sync-test:inval");
  EXPECT_EQ(fleet["received"], 1);
}

TEST_F(FleetInvalidation, WithRedisPausedCachedEntriesAreStillAnsweredAsHits) {
  // Ten secrets, each cached by A.
  std::vector<std::string> targets = {secret()};
  for (int i = 1; i < 10; ++i) {
    const auto created = standin_->connect()->post(secrets(),
                                                   json::array({{{"name", "S" + std::to_string(i)},
                                                                 {"value", "v"},
                                                                 {"scopes", {"workers"}},
                                                                 {"comment", "before"}}})
                                                       .dump(),
                                                   bearer(kUpstreamToken));
    ASSERT_EQ(created.result_int(), 200) << created.body();
    targets.push_back(secrets() + "/" +
                      json::parse(created.body())["result"][0]["id"].get<std::string>());
  }
  auto a = start_member("member-a", 600'000);
  for (const auto& t : targets) EXPECT_EQ(read_comment(*a, t).first, "before");
  const double upstream_before = standin_requests();

  // Redis holds back every client's commands for 30 s. (Redis 7.0 holds back a CLIENT
  // UNPAUSE too, so the pause ends with the server, after the hits.) A probe command sent
  // now stays unanswered for as long as the pause lasts.
  ASSERT_EQ(redis_.command({"CLIENT", "PAUSE", "30000", "ALL"}).text, "OK");
  std::atomic<bool> probe_answered{false};
  std::thread probe([&] {
    try {
      redis_.command({"PING"});
    } catch (const std::exception&) {
      // The server stopped under it: the end of the pause.
    }
    probe_answered = true;
  });
  int hits = 0;
  for (int i = 0; i < 200; ++i) {
    const auto [comment, cache] = read_comment(*a, targets[i % targets.size()]);
    hits += comment == "before" && cache == "HIT" ? 1 : 0;
  }
  // Every hit was answered while Redis was still paused.
  EXPECT_FALSE(probe_answered);
  EXPECT_EQ(hits, 200);
  EXPECT_EQ(standin_requests(), upstream_before);
  redis_.stop();
  probe.join();
  EXPECT_TRUE(probe_answered);
}

TEST_F(FleetInvalidation, AWriterIsCheckedAgainstTheScopesAnotherProcessJustSet) {
  // B's Redis user may not subscribe: B never hears of A's writes, and keeps serving what
  // it holds (a long max_unsynced_ms), so only the generation check can tell it.
  redis_.command(
      {"ACL", "SETUSER", "deaf", "on", ">deaf-password", "~*", "+@all", "resetchannels"});
  auto a = start_member("member-a", 600'000);
  auto b = start_member("member-b", 600'000, RedisLogin{"deaf", "deaf-password"},
                        /*wait_synced=*/false);
  EXPECT_EQ(read_comment(*b, secret()).first, "before");  // cached by B, scopes [workers]
  const auto moved =
      a->connect()->patch(secret(), json{{"scopes", {"dex"}}}.dump(), bearer(kPurgeToken));
  ASSERT_EQ(moved.result_int(), 200) << moved.body();
  // The workers writer on B is refused at once, as on A.
  const auto refused =
      b->connect()->patch(secret(), json{{"comment", "mine"}}.dump(), bearer(kClientToken));
  EXPECT_EQ(refused.result_int(), 404) << refused.body();
  const auto upstream_view = standin_->connect()->get(secret(), bearer(kUpstreamToken));
  EXPECT_THAT(upstream_view.body(), HasSubstr("\"before\""));
  EXPECT_THAT(log_of("member-b"), HasSubstr("refused SUBSCRIBE"));
}

}  // namespace
}  // namespace sproxy::test
