// Tests for the stand-in Cloudflare decorators (upstream/emulation.hpp): the fault
// injector (latency and 500s) and the fixed-window rate-limit policy. Time is explicit:
// a fake clock the test moves, a fake sleeper that records each delay instead of waiting,
// a scripted random source, and a small scripted inner upstream that counts its calls.
#include "tests/upstream/emulation_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace emulation_testing;

// ---------------------------------------------------------------------------------------
// FaultInjectingUpstream

class FaultInjectingUpstreamTest : public ::testing::Test {
 protected:
  FaultInjectingUpstream& faults(FaultInjectionOptions options,
                                 FaultInjectingUpstream::RandomSource random = {}) {
    decorator_ =
        std::make_unique<FaultInjectingUpstream>(inner, options, sleeper, std::move(random));
    return *decorator_;
  }
  CallResult call(ApiRequest r = get()) {
    return test::run_awaitable(ioc, decorator_->call(std::move(r)));
  }

  asio::io_context ioc;
  std::shared_ptr<FakeSleeper> sleeper = std::make_shared<FakeSleeper>();
  std::shared_ptr<ScriptedUpstream> inner = std::make_shared<ScriptedUpstream>();

 private:
  std::unique_ptr<FaultInjectingUpstream> decorator_;
};

TEST_F(FaultInjectingUpstreamTest, WaitsTheConfiguredLatencyBeforeEveryCall) {
  faults({.latency = 250ms, .error_rate = 0.0});
  for (int i = 0; i < 3; ++i) {
    const CallResult r = call();
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->status, 200u);
  }
  EXPECT_EQ(sleeper->delays, (std::vector<SteadyDuration>{250ms, 250ms, 250ms}));
  EXPECT_EQ(inner->calls(), 3u);
}

TEST_F(FaultInjectingUpstreamTest, DelaysInjectedErrorsLikeRealAnswers) {
  faults({.latency = 40ms, .error_rate = 1.0});
  const CallResult r = call();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500u);
  EXPECT_EQ(sleeper->delays, (std::vector<SteadyDuration>{40ms}));
}

TEST_F(FaultInjectingUpstreamTest, DoesNotWaitWhenNoLatencyIsConfigured) {
  faults({.latency = 0ms, .error_rate = 0.0});
  ASSERT_TRUE(call());
  EXPECT_TRUE(sleeper->delays.empty());
  EXPECT_EQ(inner->calls(), 1u);
}

TEST_F(FaultInjectingUpstreamTest, PassesTheInnerAnswerThroughUnchanged) {
  ApiResponse scripted;
  scripted.status = 404;
  scripted.body = envelope_error(errors::store_not_found());
  scripted.retry_after = "7";
  scripted.ratelimit = R"("default";r=3;t=9)";
  scripted.ratelimit_policy = R"("burst";q=10;w=60)";
  inner->then(scripted);
  faults({.latency = 5ms, .error_rate = 0.0});
  const std::string target = std::string(kStores) + "?page=2";
  const CallResult r = call(get(target));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404u);
  EXPECT_EQ(r->body, scripted.body);
  EXPECT_EQ(r->retry_after, scripted.retry_after);
  EXPECT_EQ(r->ratelimit, scripted.ratelimit);
  EXPECT_EQ(r->ratelimit_policy, scripted.ratelimit_policy);
  EXPECT_EQ(inner->targets(), std::vector<std::string>{target});
}

TEST_F(FaultInjectingUpstreamTest, PassesATransportFailureOfTheInnerUpstreamThrough) {
  inner->then(CallResult(make_error_code(UpstreamErrc::timeout)));
  faults({.latency = 0ms, .error_rate = 0.0});
  const CallResult r = call();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(UpstreamErrc::timeout));
}

TEST_F(FaultInjectingUpstreamTest, AnswersEveryCallWith500WithoutCallingTheInnerAtRateOne) {
  auto& d = faults({.latency = 0ms, .error_rate = 1.0}, draws({}));  // no draw needed
  for (int i = 0; i < 50; ++i) {
    const CallResult r = call();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 500u);
    EXPECT_EQ(r->body, kInternalErrorBody);
    EXPECT_EQ(r->retry_after, std::nullopt);
  }
  EXPECT_EQ(inner->calls(), 0u);
  EXPECT_EQ(d.stats().calls, 50u);
  EXPECT_EQ(d.stats().injected_errors, 50u);
}

TEST_F(FaultInjectingUpstreamTest, NeverInjectsAnErrorAtRateZero) {
  auto& d = faults({.latency = 0ms, .error_rate = 0.0}, draws({}));  // no draw needed
  for (int i = 0; i < 50; ++i) {
    const CallResult r = call();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200u);
  }
  EXPECT_EQ(inner->calls(), 50u);
  EXPECT_EQ(d.stats().injected_errors, 0u);
}

TEST_F(FaultInjectingUpstreamTest, InjectsAnErrorExactlyWhenTheDrawIsBelowTheRate) {
  faults({.latency = 0ms, .error_rate = 0.3},
         draws({0.0, 0.3, 0.29999, 0.9, -1.0, 7.0, std::numeric_limits<double>::quiet_NaN()}));
  std::vector<unsigned> statuses;
  for (int i = 0; i < 7; ++i) statuses.push_back(call()->status);
  // Out-of-range draws are clamped into [0, 1): -1 and NaN to 0, 7 to just below 1.
  EXPECT_EQ(statuses, (std::vector<unsigned>{500, 200, 500, 200, 500, 200, 500}));
  EXPECT_EQ(inner->calls(), 3u);
}

TEST_F(FaultInjectingUpstreamTest, HonoursTheErrorRateOverASampleWithAFixedSeed) {
  auto engine = std::make_shared<std::mt19937_64>(20260301);
  auto& d = faults({.latency = 0ms, .error_rate = 0.25},
                   [engine] { return std::uniform_real_distribution<double>(0.0, 1.0)(*engine); });
  constexpr int kSample = 4000;
  int errors = 0;
  for (int i = 0; i < kSample; ++i) {
    const CallResult r = call();
    ASSERT_TRUE(r);
    if (r->status == 500) {
      ++errors;
      EXPECT_EQ(r->body, kInternalErrorBody);
    } else {
      EXPECT_EQ(r->status, 200u);
    }
  }
  // 1,000 expected; the standard deviation is about 27.
  EXPECT_NEAR(errors, 1000, 100);
  EXPECT_EQ(inner->calls(), static_cast<std::size_t>(kSample - errors));
  EXPECT_EQ(d.stats().injected_errors, static_cast<std::uint64_t>(errors));
  EXPECT_EQ(d.stats().calls, static_cast<std::uint64_t>(kSample));
}

TEST_F(FaultInjectingUpstreamTest, FailsTheCallAsShuttingDownWhenTheLatencyWaitIsAborted) {
  sleeper->fail_with = asio::error::operation_aborted;
  faults({.latency = 100ms, .error_rate = 0.0});
  const CallResult r = call();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(UpstreamErrc::shutting_down));
  EXPECT_EQ(inner->calls(), 0u);
}

TEST_F(FaultInjectingUpstreamTest, DescribesItsSettingsAndTheInnerUpstream) {
  EXPECT_EQ(faults({.latency = 200ms, .error_rate = 0.05}).describe(),
            "faults(latency=200ms, error_rate=0.05, scripted)");
}

TEST(FaultInjectingUpstream, RejectsOptionsThatCannotWork) {
  auto inner = std::make_shared<ScriptedUpstream>();
  EXPECT_THROW(FaultInjectingUpstream(nullptr, {}), std::invalid_argument);
  EXPECT_THROW(FaultInjectingUpstream(inner, {.latency = -1ms, .error_rate = 0.0}),
               std::invalid_argument);
  for (double rate : {-0.01, 1.01, std::numeric_limits<double>::quiet_NaN()}) {
    EXPECT_THROW(FaultInjectingUpstream(inner, {.latency = 0ms, .error_rate = rate}),
                 std::invalid_argument)
        << rate;
  }
}

TEST(FaultInjectingUpstream, WaitsOnARealTimerOfTheCallersExecutorByDefault) {
  asio::io_context ioc;
  FaultInjectingUpstream d(std::make_shared<ScriptedUpstream>(),
                           {.latency = 3ms, .error_rate = 0.0});
  const auto started = std::chrono::steady_clock::now();
  const CallResult r = test::run_awaitable(ioc, d.call(get()));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200u);
  EXPECT_GE(std::chrono::steady_clock::now() - started, 3ms);
}

// ---------------------------------------------------------------------------------------
// FixedWindowRateLimit (the policy, explicit now)

TEST(FixedWindowRateLimit, AdmitsTheQuotaThenBlocksForTheBlockWindow) {
  FixedWindowRateLimit limit({.requests = 3, .window = 60s, .block = 300s});
  EXPECT_EQ(limit.admit(kT0), admitted(2, 60s));
  EXPECT_EQ(limit.admit(kT0 + 10s), admitted(1, 50s));
  EXPECT_EQ(limit.admit(kT0 + 10500ms), admitted(0, 50s));  // 49.5 s left rounds up
  EXPECT_EQ(limit.admit(kT0 + 20s), refused(300s, true));
  EXPECT_EQ(limit.admit(kT0 + 20s), refused(300s));
  EXPECT_EQ(limit.admit(kT0 + 319s), refused(1s));
  EXPECT_EQ(limit.admit(kT0 + 320s), admitted(2, 60s));
}

TEST(FixedWindowRateLimit, OpensAFreshWindowWhenTheLastOneEnded) {
  FixedWindowRateLimit limit({.requests = 2, .window = 60s, .block = 300s});
  EXPECT_EQ(limit.admit(kT0 + 5s), admitted(1, 60s));
  EXPECT_EQ(limit.admit(kT0 + 64s), admitted(0, 1s));
  EXPECT_EQ(limit.admit(kT0 + 65s), admitted(1, 60s));  // the window began at kT0 + 5 s
  EXPECT_EQ(limit.admit(kT0 + 200s), admitted(1, 60s));
}

TEST(FixedWindowRateLimit, StartsAFreshWindowAfterABlockShorterThanTheWindow) {
  FixedWindowRateLimit limit({.requests = 2, .window = 300s, .block = 60s});
  EXPECT_EQ(limit.admit(kT0), admitted(1, 300s));
  EXPECT_EQ(limit.admit(kT0), admitted(0, 300s));
  EXPECT_EQ(limit.admit(kT0 + 10s), refused(60s, true));
  EXPECT_EQ(limit.admit(kT0 + 70s), admitted(1, 300s));
}

TEST(FixedWindowRateLimit, NeverAnnouncesMoreThanTheWindowOrBlockToARacingOlderNow) {
  FixedWindowRateLimit limit({.requests = 1, .window = 60s, .block = 300s});
  EXPECT_EQ(limit.admit(kT0), admitted(0, 60s));
  EXPECT_EQ(limit.admit(kT0 - 1ms), refused(300s, true));
  EXPECT_EQ(limit.admit(kT0 - 2ms), refused(300s));  // not 301 s

  FixedWindowRateLimit other({.requests = 2, .window = 60s, .block = 300s});
  EXPECT_EQ(other.admit(kT0), admitted(1, 60s));
  EXPECT_EQ(other.admit(kT0 - 1ms), admitted(0, 60s));  // not 61 s
}

TEST(FixedWindowRateLimit, RejectsOptionsThatCannotWork) {
  EXPECT_THROW(FixedWindowRateLimit({.requests = 0, .window = 60s, .block = 60s}),
               std::invalid_argument);
  EXPECT_THROW(FixedWindowRateLimit({.requests = 1, .window = 0s, .block = 60s}),
               std::invalid_argument);
  EXPECT_THROW(FixedWindowRateLimit({.requests = 1, .window = 60s, .block = 0s}),
               std::invalid_argument);
}

TEST(RateLimitHeaders, AreWrittenAsTheContractSpellsThem) {
  EXPECT_EQ(format_ratelimit(1199, 300s), R"("default";r=1199;t=300)");
  EXPECT_EQ(format_ratelimit_policy(1200, 300s), R"("burst";q=1200;w=300)");
  // What GuardedUpstream (the proxy's client side) reads back.
  EXPECT_EQ(parse_ratelimit(format_ratelimit(7, 42s)), (RateLimitRemaining{7, 42s}));
  EXPECT_EQ(parse_ratelimit_policy(format_ratelimit_policy(1200, 300s)),
            (std::vector<RatePolicy>{{1200, 300s}}));
}

}  // namespace
}  // namespace sproxy::upstream
