// The upstream guard against a real rate-limited upstream: two `secrets-proxy`
// processes. The stand-in serves its embedded store over HTTP with the emulation
// section's Cloudflare-style rate limit on and its cache off, so every request that
// reaches it is counted (its /metrics, requests_total of the API routes). The proxy under
// test is an http upstream client of it with a small rate budget.
//
// What is asserted are counts at the stand-in and the answers the proxy gives; waits
// are bounded sleeps across the stand-in's block window, never assertions on how long
// the proxy's work took.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/http_test_client.hpp"
#include "tests/support/proxy_process.hpp"
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
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// The proxy's own credentials at the stand-in, and its client's token.
const std::string kUpstreamToken = "standin-upstream-token-5d1e";
const std::string kUpstreamEmail = "proxy@example.com";
const std::string kUpstreamApiKey = "standin-global-api-key-93c0aa71f2";
const std::string kClientToken = "standin-client-token-77b2";

// The proxy's budget: 40 requests per 10 s, all of it usable.
constexpr int kBudget = 40;
constexpr int kBudgetWindowS = 10;

std::string account(int i) {
  char id[33];
  std::snprintf(id, sizeof id, "%032x", 0xac000 + i);
  return id;
}

std::string stores_of(int i) { return api_base(account(i)) + "/stores"; }

// Retry-After as whole seconds; nullopt when missing or not a number.
std::optional<long> retry_after(const TestResponse& res) {
  const auto it = res.find("Retry-After");
  if (it == res.end()) return std::nullopt;
  try {
    return std::stol(std::string(it->value()));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::string header(const TestResponse& res, const char* name) {
  const auto it = res.find(name);
  return it == res.end() ? std::string() : std::string(it->value());
}

// The contract's 429: the envelope with error 971.
void expect_rate_limited_envelope(const TestResponse& res) {
  ASSERT_EQ(res.result_int(), 429u) << res.body();
  const json body = json::parse(res.body());
  EXPECT_EQ(body["success"], false);
  ASSERT_EQ(body["errors"].size(), 1u) << res.body();
  EXPECT_EQ(body["errors"][0]["code"], 971);
  EXPECT_EQ(body["errors"][0]["message"], "Please wait and consider throttling your request speed");
}

class StandInRateLimit : public ::testing::Test {
 protected:
  // The stand-in: embedded store, no cache, Cloudflare's limit emulated as given. The
  // proxy may authenticate with the token or the email + key; the test itself spends
  // the stand-in's quota with the token.
  std::unique_ptr<ProxyProcess> start_standin(long limit, int window_s, int block_s) {
    json cfg = standin_config(
        dir_.path(), json::array({json{{"name", "proxy-by-token"},
                                       {"token_sha256", upstream::sha256_hex(kUpstreamToken)},
                                       {"accounts", {"*"}},
                                       {"permissions", {"read", "write", "admin"}}},
                                  json{{"name", "proxy-by-key"},
                                       {"email", kUpstreamEmail},
                                       {"key_sha256", upstream::sha256_hex(kUpstreamApiKey)},
                                       {"accounts", {"*"}},
                                       {"permissions", {"read", "write", "admin"}}}}));
    cfg["emulation"] = {{"rate_limit", true},
                        {"rate_limit_requests", limit},
                        {"rate_limit_window_s", window_s},
                        {"rate_limit_block_s", block_s}};
    return std::make_unique<ProxyProcess>(
        SPROXY_BINARY, write_json_file(dir_.path(), "standin.json", cfg), dir_.path(), "standin");
  }

  // The proxy under test, an http upstream client of `standin` with the small budget.
  // `credential`: the upstream section's credential keys; `cache`: its cache section.
  std::unique_ptr<ProxyProcess> start_proxy(const ProxyProcess& standin, json credential,
                                            json cache) {
    json upstream = {{"kind", "http"},
                     {"base_url", standin.base_url()},
                     {"rate_limit_requests", kBudget},
                     {"rate_limit_window_s", kBudgetWindowS},
                     {"rate_limit_margin", 0},
                     // One client spends the whole budget here: no per-client share.
                     {"client_share", 1},
                     {"max_retries", 0}};
    upstream.update(credential);
    const json cfg = {{"listen", {{"address", "127.0.0.1"}, {"port", 0}, {"threads", 1}}},
                      {"clients",
                       {{{"name", "reader"},
                         {"token_sha256", upstream::sha256_hex(kClientToken)},
                         {"services", {"workers"}},
                         {"accounts", {"*"}},
                         {"permissions", {"read"}}}}},
                      {"upstream", upstream},
                      {"cache", cache},
                      {"audit", {{"enabled", false}}}};
    return std::make_unique<ProxyProcess>(
        SPROXY_BINARY, write_json_file(dir_.path(), "proxy.json", cfg), dir_.path(), "proxy");
  }

  // API requests the stand-in has answered (any status), from its /metrics.
  static long api_requests_seen(const ProxyProcess& standin) {
    return test::api_requests_seen(standin, [](std::string_view route) {
      return route.starts_with("/stores") || route == "/quota";
    });
  }

  TempDir dir_;
};

TEST_F(StandInRateLimit, ABurstOfDistinctReadsNeverTakesTheProxyOverItsBudget) {
  // The stand-in's own limit is far above the proxy's budget: only the budget limits.
  auto standin = start_standin(/*limit=*/1000, /*window_s=*/60, /*block_s=*/60);
  auto proxy = start_proxy(
      *standin, {{"token_file", write_secret_file(dir_.path(), "token", kUpstreamToken)}},
      {{"ttl", {{"stores_ms", 60'000}}},
       {"refresh_ahead_ms", 0},
       {"stale_while_revalidate_ms", 0}});
  auto client = proxy->connect();
  const auto hot = client->get(stores_of(0), bearer(kClientToken));
  ASSERT_EQ(hot.result_int(), 200u) << hot.body();
  ASSERT_EQ(header(hot, "X-Cache"), "MISS");

  // Half as many again distinct reads as the budget holds, each followed by a hot read.
  constexpr int kDistinct = kBudget * 3 / 2;
  int served = 0;
  int refused = 0;
  for (int i = 1; i <= kDistinct; ++i) {
    const auto res = client->get(stores_of(i), bearer(kClientToken));
    if (res.result_int() == 200) {
      ++served;
      EXPECT_EQ(refused, 0) << "read " << i << " was served after an earlier one was refused";
    } else {
      ++refused;
      expect_rate_limited_envelope(res);
      const auto wait = retry_after(res);
      ASSERT_TRUE(wait.has_value()) << "read " << i << ": no Retry-After";
      EXPECT_GE(*wait, 1);
      EXPECT_LE(*wait, kBudgetWindowS);
    }
    const auto again = client->get(stores_of(0), bearer(kClientToken));
    EXPECT_EQ(again.result_int(), 200u) << "hot read after read " << i << ": " << again.body();
    EXPECT_EQ(header(again, "X-Cache"), "HIT");
  }

  const long seen = api_requests_seen(*standin);
  EXPECT_LE(seen, kBudget);
  EXPECT_EQ(seen, 1 + served);  // the hot read's fill, then one call per read served
  EXPECT_GE(refused, kDistinct + 1 - kBudget);  // answered by the proxy alone

  EXPECT_EQ(proxy->stop(), 0);
  EXPECT_EQ(standin->stop(), 0);
  EXPECT_THAT(proxy->log(), Not(HasSubstr(kUpstreamToken)));
  EXPECT_THAT(proxy->log(), Not(HasSubstr(kClientToken)));
}

TEST_F(StandInRateLimit, AnUpstream429StopsEveryCallUntilItsRetryAfterWhileStaleIsServed) {
  constexpr long kStandinLimit = 5;
  constexpr auto kBlock = 2s;
  auto standin = start_standin(kStandinLimit, /*window_s=*/60, /*block_s=*/2);
  auto proxy =
      start_proxy(*standin,
                  {{"email_file", write_secret_file(dir_.path(), "email", kUpstreamEmail)},
                   {"api_key_file", write_secret_file(dir_.path(), "api_key", kUpstreamApiKey)}},
                  {{"ttl", {{"stores_ms", 500}}},
                   {"stale_if_error_ms", 60'000},
                   {"refresh_ahead_ms", 0},
                   {"stale_while_revalidate_ms", 0}});
  auto client = proxy->connect();

  // A cached entry (the stand-in's first request), then the test spends the rest of the
  // stand-in's quota itself, as another user of the same account would.
  const auto warm = client->get(stores_of(0), bearer(kClientToken));
  ASSERT_EQ(warm.result_int(), 200u) << warm.body();
  const auto warmed_at = Clock::now();
  {
    auto direct = standin->connect();
    for (long i = 1; i < kStandinLimit; ++i) {
      const auto res = direct->get(stores_of(100), bearer(kUpstreamToken));
      ASSERT_EQ(res.result_int(), 200u) << res.body();
    }
  }
  ASSERT_EQ(api_requests_seen(*standin), kStandinLimit);

  // The next miss exceeds the stand-in's limit: its 429 says Retry-After: 2.
  const auto exceeded = client->get(stores_of(1), bearer(kClientToken));
  const auto blocked_at = Clock::now();
  expect_rate_limited_envelope(exceeded);
  EXPECT_EQ(retry_after(exceeded), 2);
  const long seen_at_block = api_requests_seen(*standin);
  ASSERT_EQ(seen_at_block, kStandinLimit + 1);

  // Inside the window: the cached entry keeps being served (stale once its TTL has
  // passed), every miss gets 429 with the time that is left, and nothing reaches the
  // stand-in. Bounded: at most 30 rounds, none started later than 1.6 s into the block.
  int rounds = 0;
  int stale_served = 0;
  std::optional<long> previous_wait;
  for (int i = 0; i < 30 && Clock::now() - blocked_at < 1600ms; ++i, ++rounds) {
    const auto sent_at = Clock::now();
    const auto cached = client->get(stores_of(0), bearer(kClientToken));
    EXPECT_EQ(cached.result_int(), 200u) << cached.body();
    // Sent after its TTL had certainly passed: it can only be the stale entry.
    if (sent_at - warmed_at > 600ms) {
      EXPECT_EQ(header(cached, "X-Cache"), "STALE") << "round " << i;
      ++stale_served;
    }
    const auto miss_sent_at = Clock::now();
    const auto miss = client->get(stores_of(10 + i), bearer(kClientToken));
    expect_rate_limited_envelope(miss);
    const auto wait = retry_after(miss);
    ASSERT_TRUE(wait.has_value()) << "round " << i << ": no Retry-After";
    EXPECT_GE(*wait, 1);
    EXPECT_LE(*wait, 2);
    if (previous_wait) {
      EXPECT_LE(*wait, *previous_wait) << "round " << i;
    }
    previous_wait = wait;
    // More than a second after the 429 reached the proxy, less than one is left.
    if (miss_sent_at - blocked_at > 1050ms) {
      EXPECT_EQ(*wait, 1) << "round " << i;
    }
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_GT(rounds, 3);
  EXPECT_GT(stale_served, 0);
  EXPECT_EQ(api_requests_seen(*standin), seen_at_block) << "a call reached the stand-in";

  // After the window, calls resume: a miss is fetched, and the expired entry refreshed.
  const auto window_end = blocked_at + kBlock + 300ms;
  std::this_thread::sleep_until(window_end);
  const auto resumed = client->get(stores_of(1), bearer(kClientToken));
  EXPECT_EQ(resumed.result_int(), 200u) << resumed.body();
  EXPECT_EQ(header(resumed, "X-Cache"), "MISS");
  const auto refreshed = client->get(stores_of(0), bearer(kClientToken));
  EXPECT_EQ(refreshed.result_int(), 200u) << refreshed.body();
  EXPECT_EQ(header(refreshed, "X-Cache"), "MISS");
  EXPECT_EQ(api_requests_seen(*standin), seen_at_block + 2);

  EXPECT_EQ(proxy->stop(), 0);
  EXPECT_EQ(standin->stop(), 0);
  for (const std::string& secret : {kUpstreamApiKey, kClientToken}) {
    EXPECT_THAT(proxy->log(), Not(HasSubstr(secret)));
    EXPECT_THAT(standin->log(), Not(HasSubstr(secret)));
  }
}

}  // namespace
}  // namespace sproxy::test
