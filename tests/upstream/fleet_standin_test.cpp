// Fleet mode end to end: two or three `secrets-proxy` processes in fleet mode on one real
// redis-server, in front of another one as the stand-in upstream (embedded store, cache
// off, so every API request that reaches it is counted in its /metrics; optionally
// Cloudflare's rate limit emulated). Together they keep to ONE rate budget, so the
// stand-in never blocks them; with Redis down each keeps to its fallback share and says
// so in its log.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
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
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kUpstreamToken = "fleet-upstream-token-0c4d";
const std::string kClientToken = "fleet-client-token-9a1e";
constexpr int kBudget = 20;  // per kWindowS, for the whole fleet
constexpr int kWindowS = 60;

std::string stores_of(int i) {
  char id[33];
  std::snprintf(id, sizeof id, "%032x", 0xf1ee7000 + i);
  return api_base(id) + "/stores";
}

class FleetStandIn : public ::testing::Test {
 protected:
  // `limit_per_window`: Cloudflare's rate limit emulated per kWindowS (0: none).
  std::unique_ptr<ProxyProcess> start_standin(int limit_per_window = 0) {
    json cfg = standin_config(
        dir_.path(), json::array({json{{"name", "proxy"},
                                       {"token_sha256", upstream::sha256_hex(kUpstreamToken)},
                                       {"accounts", {"*"}},
                                       {"permissions", {"read", "write", "admin"}}}}));
    if (limit_per_window > 0) {
      cfg["emulation"] = {{"rate_limit", true},
                          {"rate_limit_requests", limit_per_window},
                          {"rate_limit_window_s", kWindowS},
                          {"rate_limit_block_s", kWindowS}};
    }
    return std::make_unique<ProxyProcess>(
        SPROXY_BINARY, write_json_file(dir_.path(), "standin.json", cfg), dir_.path(), "standin");
  }

  // A fleet member: an http upstream client of `standin` sharing kBudget through Redis.
  // `login`: another Redis user or password than the fixture's; `url`: another Redis URL.
  std::unique_ptr<ProxyProcess> start_member(const ProxyProcess& standin, const std::string& name,
                                             const RedisLogin& login = {},
                                             const std::string& url = "") {
    json fleet = fleet_section(redis_, dir_.path(), name, "fleet-test", login);
    if (!url.empty()) fleet["redis"]["url"] = url;
    fleet["fallback_share"] = 0.5;
    fleet["redis"]["reconnect_min_ms"] = 0;
    fleet["redis"]["reconnect_max_ms"] = 0;
    const json cfg = {
        {"listen", {{"address", "127.0.0.1"}, {"port", 0}, {"threads", 1}}},
        {"clients",
         {{{"name", "reader"},
           {"token_sha256", upstream::sha256_hex(kClientToken)},
           {"services", {"workers"}},
           {"accounts", {"*"}},
           {"permissions", {"read"}}}}},
        {"upstream",
         {{"kind", "http"},
          {"base_url", standin.base_url()},
          {"token_file", write_secret_file(dir_.path(), "upstream-token", kUpstreamToken)},
          {"rate_limit_requests", kBudget},
          {"rate_limit_window_s", kWindowS},
          {"rate_limit_margin", 0},
          {"client_share", 1},
          {"max_retries", 0}}},
        {"audit", {{"enabled", false}}},
        {"log", {{"file", (dir_.path() / (name + ".log")).string()}}},
        {"fleet", fleet}};
    return std::make_unique<ProxyProcess>(
        SPROXY_BINARY, write_json_file(dir_.path(), name + ".json", cfg), dir_.path(), name);
  }

  // What a member logged (its log.file).
  std::string log_of(const std::string& name) const {
    return read_text_file(dir_.path() / (name + ".log"));
  }

  // API requests the stand-in has answered, from its /metrics.
  static long api_requests_seen(const ProxyProcess& standin) {
    return test::api_requests_seen(
        standin, [](std::string_view route) { return route.starts_with("/stores"); });
  }

  // Distinct misses through `members` in turn; how many were served (200).
  int read_distinct(const std::vector<ProxyProcess*>& members, int first, int count) {
    std::vector<std::unique_ptr<HttpTestClient>> clients;
    for (ProxyProcess* p : members) clients.push_back(p->connect());
    int served = 0;
    for (int i = first; i < first + count; ++i) {
      const auto res = clients[i % clients.size()]->get(stores_of(i), bearer(kClientToken));
      EXPECT_TRUE(res.result_int() == 200 || res.result_int() == 429) << res.body();
      served += res.result_int() == 200 ? 1 : 0;
    }
    return served;
  }

  TempDir dir_;
  RedisServer redis_;
};

TEST_F(FleetStandIn, TwoProcessesTogetherKeepToOneRateBudget) {
  auto standin = start_standin();
  auto a = start_member(*standin, "member-a");
  auto b = start_member(*standin, "member-b");
  EXPECT_EQ(read_distinct({a.get(), b.get()}, 0, 2 * kBudget), kBudget);
  EXPECT_EQ(api_requests_seen(*standin), kBudget);
  const std::string metrics = a->connect()->get("/metrics").body();
  EXPECT_THAT(metrics, HasSubstr("secrets_proxy_fleet_budget_shared 1"));
  EXPECT_THAT(log_of("member-a"), HasSubstr("fleet mode: redis " + redis_.tcp_url()));
  EXPECT_THAT(log_of("member-a") + log_of("member-b"), Not(HasSubstr(redis_.password())));
}

TEST_F(FleetStandIn, ThreeProcessesHammeringDistinctMissesNeverPushTheUpstreamIntoItsBlock) {
  // The stand-in enforces Cloudflare's limit at exactly the fleet's budget: one request
  // more within the window and it blocks everyone for the whole window.
  auto standin = start_standin(kBudget);
  auto a = start_member(*standin, "member-a");
  auto b = start_member(*standin, "member-b");
  auto c = start_member(*standin, "member-c");
  EXPECT_EQ(read_distinct({a.get(), b.get(), c.get()}, 0, 3 * kBudget), kBudget);
  EXPECT_EQ(api_requests_seen(*standin), kBudget);
  EXPECT_LE(std::max(0.0, metric_value(*standin, "secrets_proxy_requests_total", "status=\"429\"")),
            0.0);
  for (const ProxyProcess* p : {a.get(), b.get(), c.get()}) {
    EXPECT_LE(std::max(0.0, metric_value(*p, "secrets_proxy_upstream_429_total")), 0.0);
    EXPECT_EQ(metric_value(*p, "secrets_proxy_fleet_budget_shared"), 1);
  }
}

TEST_F(FleetStandIn, WithRedisDownEachProcessKeepsToItsFallbackShareAndSaysSoOnce) {
  auto standin = start_standin();
  auto a = start_member(*standin, "member-a");
  auto b = start_member(*standin, "member-b");
  redis_.stop();
  // Each may spend half the budget on its own: together no more than the whole.
  EXPECT_EQ(read_distinct({a.get(), b.get()}, 0, 2 * kBudget), kBudget);
  EXPECT_EQ(api_requests_seen(*standin), kBudget);
  for (const auto& [name, p] : {std::pair{"member-a", a.get()}, std::pair{"member-b", b.get()}}) {
    const std::string log = log_of(name);
    const auto first = log.find("keeping to the local fallback share 0.5");
    ASSERT_NE(first, std::string::npos) << log;
    EXPECT_EQ(log.find("keeping to the local fallback share", first + 1), std::string::npos);
    EXPECT_THAT(p->connect()->get("/metrics").body(),
                HasSubstr("secrets_proxy_fleet_budget_shared 0"));
  }
}

}  // namespace
}  // namespace sproxy::test

namespace sproxy::test {
namespace {

// Redis refusing the member (a wrong password) or a TLS handshake that cannot succeed
// (rediss:// to a plain server) is not a start-up error: the member serves, under its
// fallback share of the budget and without trusting its cache beyond max_unsynced_ms,
// and logs the reason (never the password).
class FleetMisconfiguredRedis : public FleetStandIn {
 protected:
  void expect_degraded(const std::string& name, ProxyProcess& member, const std::string& reason,
                       const std::string& secret) {
    auto client = member.connect();
    EXPECT_EQ(client->get(stores_of(0), bearer(kClientToken)).result_int(), 200);
    EXPECT_TRUE(poll_until([&] {
      return log_of(name).find("lost the subscription to invalidations") != std::string::npos;
    }));
    const std::string log = log_of(name);
    EXPECT_THAT(log, HasSubstr("keeping to the local fallback share 0.5"));
    EXPECT_THAT(log, HasSubstr(reason));
    EXPECT_THAT(log, Not(HasSubstr(secret)));
    const std::string metrics = member.connect()->get("/metrics").body();
    EXPECT_THAT(metrics, HasSubstr("secrets_proxy_fleet_budget_shared 0"));
    EXPECT_THAT(metrics, HasSubstr("secrets_proxy_fleet_synced 0"));
  }
};

TEST_F(FleetMisconfiguredRedis, AWrongPasswordIsTheDegradedModeWithRedisReasonInTheLog) {
  auto standin = start_standin();
  const std::string wrong = "not-the-password-" + redis_.password();
  auto a = start_member(*standin, "member-a", RedisLogin{"", wrong});
  expect_degraded("member-a", *a, "redis refused AUTH", wrong);
}

TEST_F(FleetMisconfiguredRedis, TlsToAPlainServerIsTheDegradedModeWithTheHandshakeFailureInTheLog) {
  auto standin = start_standin();
  auto a =
      start_member(*standin, "member-a", {}, "rediss://127.0.0.1:" + std::to_string(redis_.port()));
  // A plain server takes the ClientHello for the start of a command and waits for the
  // rest: the handshake times out (fleet.redis.connect_timeout_ms).
  expect_degraded("member-a", *a,
                  "TLS handshake with redis timed out (does the server speak TLS on that port?)",
                  redis_.password());
}

}  // namespace
}  // namespace sproxy::test
