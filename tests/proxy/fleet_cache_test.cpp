// Fleet mode's shared cache end to end: three `secrets-proxy` processes with a
// `fleet.cache` on one real redis-server, in front of a fourth as the stand-in upstream
// (embedded store, cache off, 300 ms of latency per call, every API request counted in
// its /metrics).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <latch>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/fleet_member.hpp"
#include "tests/support/http_test_client.hpp"
#include "tests/support/proxy_process.hpp"
#include "tests/support/redis_server.hpp"
#include "tests/support/server_harness.hpp"
#include "tests/support/standin.hpp"
#include "tests/support/temp_dir.hpp"
#include "upstream/crypto.hpp"

#ifndef SPROXY_BINARY
#error "SPROXY_BINARY must point at the secrets-proxy executable"
#endif

namespace sproxy::test {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

const std::string kUpstreamToken = "fleet-cache-upstream-token-5e1b";
const std::string kClientToken = "fleet-cache-client-token-c0a7";
const std::string kPurgeToken = "fleet-cache-purge-token-77d2";
const std::string kAccount = "f1ee7cac0000000000000000000000bb";
const std::string kKeyEnv = "SPROXY_FLEET_CACHE_TEST_KEY";

class FleetCache : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv(kKeyEnv.c_str(), std::string(64, 'a').c_str(), 1);
    json cfg = standin_config(
        dir_.path(), json::array({json{{"name", "proxy"},
                                       {"token_sha256", upstream::sha256_hex(kUpstreamToken)},
                                       {"accounts", {"*"}},
                                       {"permissions", {"read", "write", "admin"}}}}));
    cfg["emulation"] = {{"latency_ms", 300}};
    standin_ = std::make_unique<ProxyProcess>(
        SPROXY_BINARY, write_json_file(dir_.path(), "standin.json", cfg), dir_.path(), "standin");
    auto c = standin_->connect();
    const auto store =
        c->post(api_base(kAccount) + "/stores", R"({"name":"fleet"})", bearer(kUpstreamToken));
    ASSERT_EQ(store.result_int(), 200) << store.body();
    store_ = json::parse(store.body())["result"]["id"].get<std::string>();
    const auto created = c->post(
        secrets(),
        json::array({{{"name", "S"}, {"value", "v"}, {"scopes", {"workers"}}, {"comment", "one"}}})
            .dump(),
        bearer(kUpstreamToken));
    ASSERT_EQ(created.result_int(), 200) << created.body();
    secret_ = json::parse(created.body())["result"][0]["id"].get<std::string>();
    for (const char* name : {"member-a", "member-b", "member-c"}) members_.push_back(start(name));
  }
  void TearDown() override { ::unsetenv(kKeyEnv.c_str()); }

  std::string secrets() const { return api_base(kAccount) + "/stores/" + store_ + "/secrets"; }
  std::string secret() const { return secrets() + "/" + secret_; }

  std::unique_ptr<ProxyProcess> start(const std::string& name) {
    json cfg = {{"listen", {{"address", "127.0.0.1"}, {"port", 0}, {"threads", 2}}},
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
                {"cache", {{"ttl", {{"secrets_ms", 600'000}}}}},
                {"audit", {{"enabled", false}}},
                {"log", {{"file", (dir_.path() / (name + ".log")).string()}}},
                {"fleet", fleet_section(redis_, dir_.path(), name, "fleet-cache-test")}};
    cfg["fleet"]["cache"] = {{"key_env", kKeyEnv}};
    auto p = std::make_unique<ProxyProcess>(
        SPROXY_BINARY, write_json_file(dir_.path(), name + ".json", cfg), dir_.path(), name);
    // Subscribed and resynchronized before the test goes on: the resynchronization fences
    // the fills running then (they store nothing), which would make a second fill.
    EXPECT_TRUE(poll_until([&] { return metric_value(*p, "secrets_proxy_fleet_synced") == 1; }))
        << name;
    return p;
  }

  long secrets_requests_seen() const {
    return api_requests_seen(*standin_,
                             [](std::string_view route) { return route.ends_with("/secrets"); });
  }

  // `per_member` concurrent GETs of the secret on each member, released together.
  std::vector<TestResponse> stampede(int per_member) {
    const std::size_t n = members_.size() * static_cast<std::size_t>(per_member);
    std::vector<TestResponse> out(n);
    std::latch go(static_cast<std::ptrdiff_t>(n));
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        auto client = members_[i % members_.size()]->connect();
        go.arrive_and_wait();
        out[i] = client->get(secret(), bearer(kClientToken));
      });
    }
    for (auto& t : threads) t.join();
    return out;
  }

  TempDir dir_;
  RedisServer redis_;
  std::unique_ptr<ProxyProcess> standin_;
  std::vector<std::unique_ptr<ProxyProcess>> members_;
  std::string store_, secret_;
};

TEST_F(FleetCache, AStampedeOverThreeProcessesMakesOneUpstreamRequest) {
  const long before = secrets_requests_seen();
  for (const auto& r : stampede(4)) {
    ASSERT_EQ(r.result_int(), 200) << r.body();
    EXPECT_EQ(json::parse(r.body())["result"]["comment"], "one");
  }
  EXPECT_EQ(secrets_requests_seen() - before, 1);
  long hits = 0;
  for (const auto& m : members_) {
    const json status = json::parse(m->connect()->get("/admin/status", bearer(kPurgeToken)).body());
    const json& cache = status["result"]["fleet"]["cache"];
    EXPECT_TRUE(cache["connected"].get<bool>());
    hits += cache["hits"].get<long>();
  }
  EXPECT_EQ(hits, 2) << "the two processes that did not fill used the shared entry";
  const std::string metrics = members_[1]->connect()->get("/metrics").body();
  EXPECT_THAT(metrics, HasSubstr("secrets_proxy_fleet_redis_connected{connection=\"cache\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("secrets_proxy_fleet_cache_lookups_total{outcome="));
}

TEST_F(FleetCache, AfterAWriteNoProcessIsServedTheSharedEntryFromBefore) {
  auto a = members_[0]->connect();
  ASSERT_EQ(a->get(secret(), bearer(kClientToken)).result_int(), 200);
  const auto patched = a->patch(secret(), R"({"comment":"two"})", bearer(kClientToken));
  ASSERT_EQ(patched.result_int(), 200) << patched.body();
  for (std::size_t i = 1; i < members_.size(); ++i) {
    const auto r = members_[i]->connect()->get(secret(), bearer(kClientToken));
    ASSERT_EQ(r.result_int(), 200) << r.body();
    EXPECT_EQ(json::parse(r.body())["result"]["comment"], "two") << "member " << i;
  }
}

TEST_F(FleetCache, APurgeDropsTheSharedEntries) {
  ASSERT_EQ(members_[0]->connect()->get(secret(), bearer(kClientToken)).result_int(), 200);
  const long before = secrets_requests_seen();
  const auto purged = members_[0]->connect()->post(
      "/admin/purge", json{{"account_id", kAccount}}.dump(), bearer(kPurgeToken));
  ASSERT_EQ(purged.result_int(), 200) << purged.body();
  ASSERT_EQ(members_[1]->connect()->get(secret(), bearer(kClientToken)).result_int(), 200);
  EXPECT_EQ(secrets_requests_seen() - before, 1) << "B found no shared entry to use";
}

}  // namespace
}  // namespace sproxy::test
