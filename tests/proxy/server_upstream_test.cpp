// What the server tells about its upstream and itself: upstream answers carried through,
// metrics scraped over HTTP, readiness and the admin status.
#include "tests/proxy/server_fixture.hpp"

namespace sproxy::proxy {
namespace {

using namespace server_testing;

// ---------------------------------------------------------------------------------------
// Upstream answers carried through

// Answers every call with a 429 carrying Retry-After.
class RateLimitedUpstream final : public upstream::Upstream {
 public:
  asio::awaitable<upstream::CallResult> call(upstream::ApiRequest) override {
    upstream::ApiResponse res;
    res.status = 429;
    res.body = upstream::envelope_error(errors::rate_limited(30));
    res.retry_after = "30";
    co_return res;
  }
  std::string describe() const override { return "rate-limited"; }
};

TEST(ProxyServerUpstream, PassesRetryAfterOfARateLimitedUpstreamToTheClient) {
  HarnessOptions options = default_options();
  options.wrap_upstream = [](std::shared_ptr<upstream::Upstream>) {
    return std::make_shared<RateLimitedUpstream>();
  };
  ServerHarness harness(options);
  auto client = harness.connect();
  auto res = client.get(api_base(kAccount) + "/stores", kReader);
  EXPECT_EQ(res.result_int(), 429) << res.body();
  EXPECT_EQ(header(res, http::field::retry_after), "30");
  EXPECT_THAT(error_codes(res), ElementsAre(971));
}

// A steady clock that stands still: the emulator's window never moves under the test.
class StillClock final : public upstream::GuardedUpstream::Clock {
 public:
  upstream::SteadyTime now() const override { return upstream::SteadyTime{std::chrono::hours(1)}; }
  std::chrono::system_clock::time_point wall_now() const override {
    return std::chrono::system_clock::time_point{std::chrono::hours(24 * 365 * 56)};
  }
};

TEST(ProxyServerUpstream, PassesRatelimitHeadersOfAnUpstreamAnswerToTheClient) {
  HarnessOptions options = default_options();
  upstream::RateLimitEmulatorOptions limit;
  limit.requests = 5;
  limit.window = std::chrono::seconds(60);
  options.wrap_upstream = [limit](std::shared_ptr<upstream::Upstream> inner) {
    return std::make_shared<upstream::RateLimitEmulator>(std::move(inner), limit,
                                                         std::make_shared<const StillClock>());
  };
  ServerHarness harness(options);
  auto client = harness.connect();

  auto miss = client.get(api_base(kAccount) + "/stores", kReader);
  ASSERT_EQ(miss.result_int(), 200) << miss.body();
  EXPECT_EQ(header(miss, "X-Cache"), "MISS");
  EXPECT_EQ(header(miss, "Ratelimit"), upstream::format_ratelimit(4, std::chrono::seconds(60)));
  EXPECT_EQ(header(miss, "Ratelimit-Policy"),
            upstream::format_ratelimit_policy(5, std::chrono::seconds(60)));

  // A hit made no upstream call: it has no budget to report.
  auto hit = client.get(api_base(kAccount) + "/stores", kReader);
  ASSERT_EQ(hit.result_int(), 200) << hit.body();
  EXPECT_EQ(header(hit, "X-Cache"), "HIT");
  EXPECT_EQ(hit.count("Ratelimit"), 0u);
  EXPECT_EQ(hit.count("Ratelimit-Policy"), 0u);
}

// ---------------------------------------------------------------------------------------
// Metrics, scraped over HTTP

// One sample of a text exposition: the metric name, its label text and value.
struct Sample {
  std::string name;
  std::string labels;  // the text between the braces, or empty
  double value = 0;
};

std::vector<Sample> parse_exposition(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line.front() == '#') continue;
    const auto space = line.rfind(' ');
    if (space == std::string::npos) continue;
    Sample s;
    std::string series = line.substr(0, space);
    s.value = std::stod(line.substr(space + 1));
    if (const auto brace = series.find('{'); brace != std::string::npos) {
      s.name = series.substr(0, brace);
      s.labels = series.substr(brace + 1, series.size() - brace - 2);
    } else {
      s.name = series;
    }
    out.push_back(std::move(s));
  }
  return out;
}

// The sum of every sample of `name` whose labels contain each of `labels`.
double metric_sum(const std::vector<Sample>& samples, const std::string& name,
                  const std::vector<std::string>& labels = {}) {
  double sum = 0;
  for (const auto& s : samples) {
    if (s.name != name) continue;
    bool all = true;
    for (const auto& l : labels) all = all && s.labels.find(l) != std::string::npos;
    if (all) sum += s.value;
  }
  return sum;
}

class ProxyServerMetrics : public ::testing::Test {
 protected:
  static HarnessOptions metered_options() {
    HarnessOptions o = default_options();
    o.metrics = true;
    return o;
  }
  ServerHarness harness_{metered_options()};

  std::string scrape_text() {
    auto client = harness_.connect();
    auto res = client.get("/metrics");
    EXPECT_EQ(res.result_int(), 200) << res.body();
    EXPECT_EQ(header(res, http::field::content_type), kMetricsContentType);
    return res.body();
  }
  std::vector<Sample> scrape() { return parse_exposition(scrape_text()); }
};

TEST_F(ProxyServerMetrics, CountsAMissThenAHitInRequestAndCacheCounters) {
  const std::string stores = api_base(kAccount) + "/stores";
  const std::string route =
      "route=\"" + std::string(upstream::route_template(upstream::RouteKind::list_stores)) + "\"";
  const auto before = scrape();
  EXPECT_EQ(metric_sum(before, "secrets_proxy_requests_total", {route}), 0);

  auto client = harness_.connect();
  ASSERT_EQ(header(client.get(stores, kReader), "X-Cache"), "MISS");
  ASSERT_EQ(header(client.get(stores, kReader), "X-Cache"), "HIT");

  const auto after = scrape();
  EXPECT_EQ(metric_sum(after, "secrets_proxy_requests_total",
                       {route, "method=\"GET\"", "status=\"200\"", "cache=\"miss\""}),
            1);
  EXPECT_EQ(metric_sum(after, "secrets_proxy_requests_total",
                       {route, "method=\"GET\"", "status=\"200\"", "cache=\"hit\""}),
            1);
  EXPECT_EQ(metric_sum(after, "secrets_proxy_cache_hits_total") -
                metric_sum(before, "secrets_proxy_cache_hits_total"),
            1);
  EXPECT_EQ(metric_sum(after, "secrets_proxy_cache_misses_total") -
                metric_sum(before, "secrets_proxy_cache_misses_total"),
            1);
  // The first scrape is itself a request, recorded under its own route.
  EXPECT_GE(
      metric_sum(after, "secrets_proxy_requests_total", {"route=\"/metrics\"", "cache=\"none\""}),
      1);
  // One upstream call, for the miss; the hit made none.
  EXPECT_EQ(metric_sum(after, "secrets_proxy_upstream_requests_total", {"outcome=\"ok\""}), 1);
  EXPECT_GE(metric_sum(after, "secrets_proxy_open_connections"), 1);
}

TEST_F(ProxyServerMetrics, ServesMetricsWithoutCredentialsAndOnlyToGet) {
  auto client = harness_.connect();
  EXPECT_EQ(client.get("/metrics").result_int(), 200);
  expect_error(client.post("/metrics", "{}"), errors::method_not_allowed());
}

TEST_F(ProxyServerMetrics, NeverExposesSecretValuesNamesOrTokens) {
  auto client = harness_.connect();
  auto store =
      client.post(api_base(kAccount) + "/stores", json{{"name", "canary-store"}}.dump(), kAdmin);
  ASSERT_EQ(store.result_int(), 200) << store.body();
  const std::string store_id = body_json(store)["result"]["id"].get<std::string>();
  const std::string secrets = api_base(kAccount) + "/stores/" + store_id + "/secrets";
  auto created = client.post(
      secrets,
      json::array({{{"name", "CANARY_NAME"}, {"value", kSecretValue}, {"scopes", {"workers"}}}})
          .dump(),
      kWriter);
  ASSERT_EQ(created.result_int(), 200) << created.body();
  const std::string secret_id = body_json(created)["result"][0]["id"].get<std::string>();
  EXPECT_EQ(client.get(secrets + "/" + secret_id, kReader).result_int(), 200);
  EXPECT_EQ(client.get(secrets + "?search=" + kSecretValue, kReader).result_int(), 200);
  // Refused requests carry request bytes too; none of them may become a label.
  EXPECT_GE(client.get(secrets + "/" + kSecretValue, bearer("t-unknown-canary")).result_int(),
            400u);
  EXPECT_GE(client.get(secrets, bearer("t-unknown-canary")).result_int(), 400u);

  const std::string text = scrape_text();
  ASSERT_THAT(text, HasSubstr("secrets_proxy_requests_total"));
  for (const std::string& canary :
       {kSecretValue, std::string("CANARY_NAME"), std::string("canary-store"), store_id, secret_id,
        kAccount, std::string("t-admin"), std::string("t-writer"), std::string("t-reader"),
        std::string("t-unknown-canary"), kAdminPurgeToken}) {
    EXPECT_THAT(text, Not(HasSubstr(canary))) << canary;
  }
}

// ---------------------------------------------------------------------------------------
// Readiness

TEST_F(ProxyServer, IsReadyWithTheEmbeddedStoreWithoutCredentials) {
  auto client = harness_.connect();
  auto res = client.get("/readyz");
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_EQ(body_json(res), json({{"status", "ready"}}));
  expect_error(client.post("/readyz", "{}"), errors::method_not_allowed());
}

// A loopback port nothing listens on (bound, then released).
unsigned short closed_loopback_port() {
  asio::io_context ioc;
  asio::ip::tcp::acceptor acceptor(ioc, {asio::ip::make_address("127.0.0.1"), 0});
  return acceptor.local_endpoint().port();
}

TEST(ProxyServerReadiness, IsNotReadyWhileAnUnreachableUpstreamLeavesTheCacheEmpty) {
  HarnessOptions options = default_options();
  options.remote_upstream = true;
  const unsigned short port = closed_loopback_port();
  options.wrap_upstream = [port](std::shared_ptr<upstream::Upstream>) {
    upstream::HttpUpstreamOptions http_options;
    http_options.base_url =
        upstream::parse_base_url("http://127.0.0.1:" + std::to_string(port) + "/client/v4");
    http_options.token = "upstream-token-for-tests";
    http_options.connect_timeout = std::chrono::milliseconds(500);
    http_options.request_timeout = std::chrono::milliseconds(1'000);
    return std::make_shared<upstream::HttpUpstream>(http_options);
  };
  ServerHarness harness(options);
  auto client = harness.connect();
  expect_error(client.get("/readyz"), errors::service_unavailable("not_ready"));

  // A read that fails in transport is no HTTP answer and caches nothing.
  EXPECT_GE(client.get(api_base(kAccount) + "/stores", kReader).result_int(), 500u);
  expect_error(client.get("/readyz"), errors::service_unavailable("not_ready"));
}

TEST(ProxyServerReadiness, BecomesReadyOnceARemoteUpstreamHasAnswered) {
  HarnessOptions options = default_options();
  options.remote_upstream = true;
  ServerHarness harness(options);
  auto client = harness.connect();
  expect_error(client.get("/readyz"), errors::service_unavailable("not_ready"));

  ASSERT_EQ(client.get(api_base(kAccount) + "/stores", kReader).result_int(), 200);
  EXPECT_EQ(client.get("/readyz").result_int(), 200);
  // With the cache emptied, the recent answer alone keeps it ready.
  harness.cache().purge_all();
  ASSERT_EQ(harness.cache().stats().entries, 0u);
  EXPECT_EQ(client.get("/readyz").result_int(), 200);
}

// Answers every call with 503: an HTTP answer, so the upstream is reachable.
class FailingHttpUpstream final : public upstream::Upstream {
 public:
  asio::awaitable<upstream::CallResult> call(upstream::ApiRequest) override {
    upstream::ApiResponse res;
    res.status = 503;
    res.body = upstream::envelope_error(errors::service_unavailable("down"));
    co_return res;
  }
  std::string describe() const override { return "failing"; }
};

TEST(ProxyReadiness, CountsAnUpstreamAnswerOnlyWithinThirtySeconds) {
  auto clock = std::make_shared<const StillClock>();
  auto reachability =
      std::make_shared<UpstreamReachability>(std::make_shared<FailingHttpUpstream>(), clock);
  ReadinessOptions options;
  options.reachability = reachability;
  const upstream::SteadyTime at = clock->now();
  EXPECT_FALSE(is_ready(options, 0, at));

  asio::io_context ioc;
  auto result = test::run_awaitable(
      ioc, reachability->call(upstream::ApiRequest{upstream::Method::get, "/x", {}}));
  ASSERT_TRUE(result.has_value());
  ASSERT_EQ(reachability->last_answer(), at);
  EXPECT_TRUE(is_ready(options, 0, at + std::chrono::seconds(30)));
  EXPECT_FALSE(is_ready(options, 0, at + std::chrono::seconds(31)));
  EXPECT_TRUE(is_ready(options, 1, at + std::chrono::seconds(31)));
  options.embedded_upstream = true;
  EXPECT_TRUE(is_ready(options, 0, at + std::chrono::hours(1)));
}

// ---------------------------------------------------------------------------------------
// Admin status

TEST_F(ProxyServer, AdminStatusNeedsTheAdminTokenOrAnAdminClient) {
  auto client = harness_.connect();
  expect_error(client.get("/admin/status"), errors::missing_credentials());
  expect_error(client.get("/admin/status", bearer("t-unknown")), errors::authentication_error());
  expect_error(client.get("/admin/status", kReader), errors::authentication_error());
  expect_error(client.get("/admin/status", kWriter), errors::authentication_error());
  expect_error(client.post("/admin/status", "{}", kAdmin), errors::method_not_allowed());
  EXPECT_EQ(client.get("/admin/status", kAdmin).result_int(), 200);
  EXPECT_EQ(client.get("/admin/status", bearer(kAdminPurgeToken)).result_int(), 200);
}

TEST_F(ProxyServer, AdminStatusReportsCacheStatsOfAnUnguardedUpstream) {
  auto client = harness_.connect();
  ASSERT_EQ(client.get(api_base(kAccount) + "/stores", kReader).result_int(), 200);
  ASSERT_EQ(client.get(api_base(kAccount) + "/stores", kReader).result_int(), 200);
  auto res = client.get("/admin/status", bearer(kAdminPurgeToken));
  ASSERT_EQ(res.result_int(), 200) << res.body();
  const json body = body_json(res);
  EXPECT_EQ(body["success"], true);
  const json& result = body["result"];
  EXPECT_EQ(result["guarded"], false);
  EXPECT_EQ(result["cache"]["hits"], 1);
  EXPECT_EQ(result["cache"]["misses"], 1);
  EXPECT_EQ(result["cache"]["entries"], harness_.cache().stats().entries);
  EXPECT_GE(result["cache"]["entries"].get<long>(), 1);
  EXPECT_FALSE(result.contains("rate_budget"));
  EXPECT_FALSE(result.contains("breaker"));
}

TEST(ProxyServerAdminStatus, ReportsTheRateBudgetAndBreakerOfAGuardedUpstream) {
  HarnessOptions options = default_options();
  options.guard = true;
  ServerHarness harness(options);
  auto client = harness.connect();
  ASSERT_EQ(client.get(api_base(kAccount) + "/stores", kReader).result_int(), 200);
  // The budget only refills between these snapshots: the answer lies between them.
  const upstream::RateBudgetSnapshot before = harness.guard()->budget_snapshot();
  auto res = client.get("/admin/status", kAdmin);
  ASSERT_EQ(res.result_int(), 200) << res.body();
  const upstream::RateBudgetSnapshot after = harness.guard()->budget_snapshot();
  const json result = body_json(res)["result"];
  EXPECT_EQ(result["guarded"], true);
  EXPECT_EQ(result["rate_budget"]["capacity"], after.capacity);
  EXPECT_EQ(result["rate_budget"]["window_seconds"],
            std::chrono::duration_cast<std::chrono::seconds>(after.window).count());
  EXPECT_GE(result["rate_budget"]["remaining"].get<long>(), before.remaining);
  EXPECT_LE(result["rate_budget"]["remaining"].get<long>(), after.remaining);
  EXPECT_TRUE(result["rate_budget"]["blocked_for_seconds"].is_null());
  EXPECT_EQ(result["breaker"]["state"], "closed");
  EXPECT_EQ(result["breaker"]["consecutive_failures"], 0);
  EXPECT_EQ(result["cache"]["misses"], 1);
}

}  // namespace
}  // namespace sproxy::proxy
