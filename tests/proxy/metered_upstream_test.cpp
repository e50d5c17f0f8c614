// Upstream call outcomes and the MeteredUpstream decorator that counts them.
#include "tests/proxy/metrics_fixture.hpp"

namespace sproxy::proxy {
namespace {

using namespace metrics_testing;

// ---------------------------------------------------------------------------------------
// Upstream outcomes and MeteredUpstream

CallResult answer(unsigned status) {
  ApiResponse r;
  r.status = status;
  r.body = R"({"success":true})";
  return r;
}

TEST(ClassifyUpstreamResult, MapsStatusesAndTransportErrorsToOutcomes) {
  EXPECT_EQ(classify_upstream_result(answer(200)), UpstreamOutcome::ok);
  EXPECT_EQ(classify_upstream_result(answer(304)), UpstreamOutcome::ok);
  EXPECT_EQ(classify_upstream_result(answer(404)), UpstreamOutcome::http_4xx);
  EXPECT_EQ(classify_upstream_result(answer(429)), UpstreamOutcome::http_429);
  EXPECT_EQ(classify_upstream_result(answer(500)), UpstreamOutcome::http_5xx);
  EXPECT_EQ(classify_upstream_result(answer(503)), UpstreamOutcome::http_5xx);
  auto err = [](UpstreamErrc e) { return classify_upstream_result(make_error_code(e)); };
  EXPECT_EQ(err(UpstreamErrc::timeout), UpstreamOutcome::timeout);
  EXPECT_EQ(err(UpstreamErrc::unreachable), UpstreamOutcome::unreachable);
  EXPECT_EQ(err(UpstreamErrc::connection_reset), UpstreamOutcome::reset);
  EXPECT_EQ(err(UpstreamErrc::tls_error), UpstreamOutcome::tls);
  EXPECT_EQ(err(UpstreamErrc::bad_response), UpstreamOutcome::other);
  EXPECT_EQ(err(UpstreamErrc::circuit_open), UpstreamOutcome::other);
  // An error code from another category is never mistaken for one of ours.
  EXPECT_EQ(classify_upstream_result(boost::system::error_code(
                static_cast<int>(UpstreamErrc::timeout), boost::system::generic_category())),
            UpstreamOutcome::other);
}

using test::ScriptedUpstream;

// Each reading is `step` later than the one before.
class SteppingClock final : public upstream::GuardedUpstream::Clock {
 public:
  explicit SteppingClock(std::chrono::nanoseconds step) : step_(step) {}
  upstream::SteadyTime now() const override {
    return upstream::SteadyTime{} + step_ * readings_.fetch_add(1);
  }
  std::chrono::system_clock::time_point wall_now() const override {
    return std::chrono::system_clock::time_point{};
  }

 private:
  std::chrono::nanoseconds step_;
  mutable std::atomic<long> readings_{0};
};

TEST(MeteredUpstream, CountsEachCallsOutcomeAndLatency) {
  std::vector<CallResult> script = {
      answer(200),
      answer(201),
      answer(404),
      answer(429),
      answer(503),
      make_error_code(UpstreamErrc::timeout),
      make_error_code(UpstreamErrc::unreachable),
      make_error_code(UpstreamErrc::connection_reset),
      make_error_code(UpstreamErrc::tls_error),
      make_error_code(UpstreamErrc::bad_response),
  };
  const std::size_t calls = script.size();
  auto inner = std::make_shared<ScriptedUpstream>(std::move(script));
  auto metrics = std::make_shared<Metrics>("1.2.3");
  MeteredUpstream metered(inner, metrics, std::make_shared<SteppingClock>(3ms));

  for (std::size_t i = 0; i < calls; ++i) {
    (void)test::run_awaitable(metered.call(ApiRequest{Method::get, "/client/v4/x", ""}));
  }

  const auto e = scrape(*metrics);
  const std::string n = "secrets_proxy_upstream_requests_total";
  EXPECT_EQ(e.value(n, {{"outcome", "ok"}}), 2.0);
  EXPECT_EQ(e.value(n, {{"outcome", "http_4xx"}}), 1.0);
  EXPECT_EQ(e.value(n, {{"outcome", "http_429"}}), 1.0);
  EXPECT_EQ(e.value(n, {{"outcome", "http_5xx"}}), 1.0);
  EXPECT_EQ(e.value(n, {{"outcome", "timeout"}}), 1.0);
  EXPECT_EQ(e.value(n, {{"outcome", "unreachable"}}), 1.0);
  EXPECT_EQ(e.value(n, {{"outcome", "reset"}}), 1.0);
  EXPECT_EQ(e.value(n, {{"outcome", "tls"}}), 1.0);
  EXPECT_EQ(e.value(n, {{"outcome", "other"}}), 1.0);
  const std::string h = "secrets_proxy_upstream_duration_seconds";
  EXPECT_EQ(e.value(h + "_count"), static_cast<double>(calls));
  EXPECT_NEAR(*e.value(h + "_sum"), 0.003 * static_cast<double>(calls), 1e-9);
  EXPECT_EQ(e.value(h + "_bucket", {{"le", "0.0025"}}), 0.0);
  EXPECT_EQ(e.value(h + "_bucket", {{"le", "0.005"}}), static_cast<double>(calls));
}

TEST(MeteredUpstream, PassesRequestsAndAnswersThroughUnchanged) {
  ApiResponse scripted;
  scripted.status = 429;
  scripted.body = R"({"success":false})";
  scripted.retry_after = "17";
  scripted.ratelimit = R"("default";r=0;t=17)";
  auto inner = std::make_shared<ScriptedUpstream>(std::vector<CallResult>{scripted});
  auto metrics = std::make_shared<Metrics>("1.2.3");
  auto metered = std::make_shared<MeteredUpstream>(inner, metrics);
  EXPECT_EQ(metered->describe(), "scripted");

  const ApiRequest request{Method::post, "/client/v4/accounts/a/secrets_store/stores",
                           R"({"name":"s"})"};
  const CallResult r = test::run_awaitable(metered->call(request));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429u);
  EXPECT_EQ(r->body, scripted.body);
  EXPECT_EQ(r->retry_after, scripted.retry_after);
  EXPECT_EQ(r->ratelimit, scripted.ratelimit);
  ASSERT_EQ(inner->requests().size(), 1u);
  EXPECT_EQ(inner->requests()[0].method, Method::post);
  EXPECT_EQ(inner->requests()[0].target, request.target);
  EXPECT_EQ(inner->requests()[0].body, request.body);
}

TEST(MeteredUpstream, CountsAnEscapedExceptionAsOtherAndRethrowsIt) {
  auto inner = std::make_shared<ScriptedUpstream>();
  inner->throw_when_exhausted();
  auto metrics = std::make_shared<Metrics>("1.2.3");
  MeteredUpstream metered(inner, metrics);
  EXPECT_THROW((void)test::run_awaitable(metered.call(ApiRequest{})), std::runtime_error);
  const auto e = scrape(*metrics);
  EXPECT_EQ(e.value("secrets_proxy_upstream_requests_total", {{"outcome", "other"}}), 1.0);
  EXPECT_EQ(e.value("secrets_proxy_upstream_duration_seconds_count"), 1.0);
}

TEST(MeteredUpstream, RefusesANullInnerUpstreamOrMetrics) {
  auto inner = std::make_shared<ScriptedUpstream>(std::vector<CallResult>{});
  auto metrics = std::make_shared<Metrics>("1.2.3");
  EXPECT_THROW(MeteredUpstream(nullptr, metrics), std::invalid_argument);
  EXPECT_THROW(MeteredUpstream(inner, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace sproxy::proxy
