// The rate-limit emulator (fixed window, 429 + block), the emulator behind the client-side
// guard, the configured emulation chain and make_upstream's emulation around the store.
#include "tests/upstream/emulation_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace emulation_testing;

// ---------------------------------------------------------------------------------------
// RateLimitEmulator

class RateLimitEmulatorTest : public ::testing::Test {
 protected:
  RateLimitEmulator& emulator(RateLimitEmulatorOptions options) {
    decorator_ = std::make_unique<RateLimitEmulator>(inner, options, clock);
    return *decorator_;
  }
  CallResult call(ApiRequest r = get()) {
    return test::run_awaitable(ioc, decorator_->call(std::move(r)));
  }

  // Expects the emulator's 429: contract body, Retry-After and headers, `seconds` left.
  static void expect_refused(const CallResult& r, long seconds, const std::string& policy) {
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->status, 429u);
    EXPECT_EQ(r->body, envelope_error(errors::rate_limited(seconds)));
    EXPECT_EQ(r->retry_after, std::to_string(seconds));
    EXPECT_EQ(r->ratelimit, "\"default\";r=0;t=" + std::to_string(seconds));
    EXPECT_EQ(r->ratelimit_policy, policy);
  }

  asio::io_context ioc;
  std::shared_ptr<FakeClock> clock = std::make_shared<FakeClock>();
  std::shared_ptr<ScriptedUpstream> inner = std::make_shared<ScriptedUpstream>();

 private:
  std::unique_ptr<RateLimitEmulator> decorator_;
};

TEST_F(RateLimitEmulatorTest, UsesCloudflaresLimitsByDefault) {
  const RateLimitEmulatorOptions o = emulator({}).options();
  EXPECT_EQ(o.requests, 1200);
  EXPECT_EQ(o.window, 300s);
  EXPECT_EQ(o.block, 300s);
  const CallResult r = call();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->ratelimit, R"("default";r=1199;t=300)");
  EXPECT_EQ(r->ratelimit_policy, R"("burst";q=1200;w=300)");
}

TEST_F(RateLimitEmulatorTest, PutsRateLimitHeadersWithDecreasingRemainingOnEveryAnswer) {
  emulator({.requests = 5, .window = 60s, .block = 300s});
  std::vector<std::optional<std::string>> ratelimits;
  for (int i = 0; i < 5; ++i) {
    const CallResult r = call();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200u);
    EXPECT_EQ(r->retry_after, std::nullopt);
    EXPECT_EQ(r->ratelimit_policy, R"("burst";q=5;w=60)");
    ratelimits.push_back(r->ratelimit);
    clock->advance(10s);
  }
  EXPECT_EQ(ratelimits,
            (std::vector<std::optional<std::string>>{
                R"("default";r=4;t=60)", R"("default";r=3;t=50)", R"("default";r=2;t=40)",
                R"("default";r=1;t=30)", R"("default";r=0;t=20)"}));
  EXPECT_EQ(inner->calls(), 5u);
}

TEST_F(RateLimitEmulatorTest, ReplacesTheInnerRateLimitHeadersButKeepsItsAnswer) {
  ApiResponse scripted;
  scripted.status = 404;
  scripted.body = envelope_error(errors::secret_not_found());
  scripted.ratelimit = R"("default";r=999;t=1)";
  scripted.ratelimit_policy = R"("burst";q=999;w=1)";
  inner->then(scripted);
  emulator({.requests = 10, .window = 60s, .block = 60s});
  const CallResult r = call();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404u);
  EXPECT_EQ(r->body, scripted.body);
  EXPECT_EQ(r->ratelimit, R"("default";r=9;t=60)");
  EXPECT_EQ(r->ratelimit_policy, R"("burst";q=10;w=60)");
}

TEST_F(RateLimitEmulatorTest, CountsRequestsWhoseInnerCallFailed) {
  inner->then(CallResult(make_error_code(UpstreamErrc::connection_reset)));
  emulator({.requests = 2, .window = 60s, .block = 60s});
  const CallResult failed = call();
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error(), make_error_code(UpstreamErrc::connection_reset));
  const CallResult next = call();
  ASSERT_TRUE(next);
  EXPECT_EQ(next->ratelimit, R"("default";r=0;t=60)");
}

TEST_F(RateLimitEmulatorTest, RefusesTheRequestOverTheLimitWith429AndRetryAfter) {
  auto& e = emulator({.requests = 3, .window = 60s, .block = 300s});
  for (int i = 0; i < 3; ++i) ASSERT_EQ(call()->status, 200u);
  clock->advance(5s);
  expect_refused(call(), 300, R"("burst";q=3;w=60)");
  EXPECT_EQ(inner->calls(), 3u);
  const RateLimitEmulatorStats s = e.stats();
  EXPECT_EQ(s.calls, 4u);
  EXPECT_EQ(s.admitted, 3u);
  EXPECT_EQ(s.refused, 1u);
  EXPECT_EQ(s.blocks, 1u);
}

TEST_F(RateLimitEmulatorTest, RefusesEveryCallForTheWholeBlockWithoutCallingTheInner) {
  auto& e = emulator({.requests = 3, .window = 60s, .block = 300s});
  for (int i = 0; i < 3; ++i) ASSERT_EQ(call()->status, 200u);
  expect_refused(call(), 300, R"("burst";q=3;w=60)");  // the block starts at kT0
  // Long past the 60 s window, still inside the block; a part second rounds up.
  for (const auto at : {1s, 59s, 60s, 61s, 150s, 299s}) {
    clock->set(kT0 + at);
    expect_refused(call(), 300 - at.count(), R"("burst";q=3;w=60)");
  }
  clock->set(kT0 + 299s + 500ms);
  expect_refused(call(), 1, R"("burst";q=3;w=60)");
  EXPECT_EQ(inner->calls(), 3u);
  EXPECT_EQ(e.stats().refused, 8u);
  EXPECT_EQ(e.stats().blocks, 1u);
}

TEST_F(RateLimitEmulatorTest, ResumesWithAFreshWindowWhenTheBlockEnds) {
  auto& e = emulator({.requests = 3, .window = 60s, .block = 300s});
  for (int i = 0; i < 3; ++i) ASSERT_EQ(call()->status, 200u);
  ASSERT_EQ(call()->status, 429u);
  clock->set(kT0 + 300s);
  for (long remaining = 2; remaining >= 0; --remaining) {
    const CallResult r = call();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200u);
    EXPECT_EQ(r->ratelimit, "\"default\";r=" + std::to_string(remaining) + ";t=60");
  }
  EXPECT_EQ(inner->calls(), 6u);
  // The fresh window has its own limit: exceeding it blocks again.
  expect_refused(call(), 300, R"("burst";q=3;w=60)");
  EXPECT_EQ(e.stats().blocks, 2u);
}

TEST_F(RateLimitEmulatorTest, ResetsTheCountAtTheEndOfTheWindow) {
  emulator({.requests = 3, .window = 60s, .block = 300s});
  for (int i = 0; i < 3; ++i) ASSERT_EQ(call()->status, 200u);
  clock->set(kT0 + 60s);
  for (long remaining = 2; remaining >= 0; --remaining) {
    const CallResult r = call();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200u) << remaining;
    EXPECT_EQ(r->ratelimit, "\"default\";r=" + std::to_string(remaining) + ";t=60");
  }
  EXPECT_EQ(inner->calls(), 6u);
}

TEST_F(RateLimitEmulatorTest, DescribesItsLimitsAndTheInnerUpstream) {
  EXPECT_EQ(emulator({}).describe(), "rate_limit(1200/300s, block=300s, scripted)");
}

TEST(RateLimitEmulator, RejectsOptionsThatCannotWork) {
  auto inner = std::make_shared<ScriptedUpstream>();
  EXPECT_THROW(RateLimitEmulator(nullptr), std::invalid_argument);
  EXPECT_THROW(RateLimitEmulator(inner, {.requests = 0, .window = 300s, .block = 300s}),
               std::invalid_argument);
  EXPECT_THROW(RateLimitEmulator(inner, {.requests = 10, .window = 0s, .block = 300s}),
               std::invalid_argument);
  EXPECT_THROW(RateLimitEmulator(inner, {.requests = 10, .window = 300s, .block = 0s}),
               std::invalid_argument);
}

TEST(RateLimitEmulator, AdmitsExactlyTheQuotaToCallersOnSeveralThreads) {
  constexpr int kThreads = 4;
  constexpr int kCallsPerThread = 500;
  constexpr long kQuota = 1000;
  auto clock = std::make_shared<FakeClock>();
  auto inner = std::make_shared<ScriptedUpstream>();
  RateLimitEmulator e(inner, {.requests = kQuota, .window = 300s, .block = 300s}, clock);
  std::atomic<int> ok{0};
  std::atomic<int> too_many{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      asio::io_context ioc;
      for (int i = 0; i < kCallsPerThread; ++i) {
        const CallResult r = test::run_awaitable(ioc, e.call(get()));
        if (r && r->status == 200) ++ok;
        if (r && r->status == 429) ++too_many;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kQuota);
  EXPECT_EQ(too_many.load(), kThreads * kCallsPerThread - kQuota);
  EXPECT_EQ(inner->calls(), static_cast<std::size_t>(kQuota));
  EXPECT_EQ(e.stats().blocks, 1u);
}

// ---------------------------------------------------------------------------------------
// The emulator as the proxy meets it: behind GuardedUpstream, the client-side guard.

TEST(RateLimitEmulator, KeepsAGuardedClientFromEverBeingBlocked) {
  auto clock = std::make_shared<FakeClock>();
  auto inner = std::make_shared<ScriptedUpstream>();
  auto emulated = std::make_shared<RateLimitEmulator>(inner, RateLimitEmulatorOptions{}, clock);
  GuardedUpstream guarded(emulated, GuardedUpstreamOptions{}, clock,
                          std::make_shared<FakeSleeper>(), [] { return 0.0; });
  asio::io_context ioc;
  // A read every 50 ms for 15 minutes: 18,000 reads against 1,200 per 5 minutes.
  int served = 0;
  for (int i = 0; i < 18'000; ++i) {
    const CallResult r = test::run_awaitable(ioc, guarded.call(get()));
    ASSERT_TRUE(r) << r.error().message();
    if (r->status == 200) ++served;
    clock->advance(50ms);
  }
  EXPECT_EQ(emulated->stats().blocks, 0u);
  EXPECT_EQ(emulated->stats().refused, 0u);
  EXPECT_GT(served, 2 * 1000);  // the guard still uses most of the limit
  EXPECT_EQ(static_cast<std::size_t>(served), inner->calls());
}

// ---------------------------------------------------------------------------------------
// with_emulation: the configured chain

TEST(WithEmulation, LeavesTheUpstreamAloneWhenEverythingIsOff) {
  auto inner = std::make_shared<ScriptedUpstream>();
  EXPECT_EQ(with_emulation(inner, config::EmulationConfig{}), inner);
}

TEST(WithEmulation, UsesOneFaultInjectorWithoutTheRateLimit) {
  config::EmulationConfig cfg;
  cfg.latency_ms = 120;
  cfg.error_rate = 0.5;
  EXPECT_EQ(with_emulation(std::make_shared<ScriptedUpstream>(), cfg)->describe(),
            "faults(latency=120ms, error_rate=0.5, scripted)");
  cfg.error_rate = 0.0;
  EXPECT_EQ(with_emulation(std::make_shared<ScriptedUpstream>(), cfg)->describe(),
            "faults(latency=120ms, error_rate=0, scripted)");
}

TEST(WithEmulation, PutsTheLatencyOutsideAndTheErrorsInsideTheRateLimit) {
  config::EmulationConfig cfg;
  cfg.rate_limit = true;
  cfg.rate_limit_requests = 50;
  cfg.rate_limit_window_s = 10;
  cfg.rate_limit_block_s = 20;
  EXPECT_EQ(with_emulation(std::make_shared<ScriptedUpstream>(), cfg)->describe(),
            "rate_limit(50/10s, block=20s, scripted)");
  cfg.latency_ms = 30;
  cfg.error_rate = 0.25;
  EXPECT_EQ(with_emulation(std::make_shared<ScriptedUpstream>(), cfg)->describe(),
            "faults(latency=30ms, error_rate=0, rate_limit(50/10s, block=20s, "
            "faults(latency=0ms, error_rate=0.25, scripted)))");
}

TEST(WithEmulation, CountsInjectedErrorsAgainstTheLimitAndGivesThemItsHeaders) {
  config::EmulationConfig cfg;
  cfg.rate_limit = true;
  cfg.rate_limit_requests = 2;
  cfg.error_rate = 1.0;
  auto inner = std::make_shared<ScriptedUpstream>();
  auto chain = with_emulation(inner, cfg);
  asio::io_context ioc;
  const CallResult first = test::run_awaitable(ioc, chain->call(get()));
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 500u);
  EXPECT_EQ(first->body, kInternalErrorBody);
  EXPECT_EQ(first->ratelimit, R"("default";r=1;t=300)");
  EXPECT_EQ(test::run_awaitable(ioc, chain->call(get()))->status, 500u);
  EXPECT_EQ(test::run_awaitable(ioc, chain->call(get()))->status, 429u);
  EXPECT_EQ(inner->calls(), 0u);
}

TEST(WithEmulation, RefusesValuesTheLoaderWouldHaveRefused) {
  auto inner = std::make_shared<ScriptedUpstream>();
  config::EmulationConfig negative_latency;
  negative_latency.latency_ms = -1;
  EXPECT_THROW(with_emulation(inner, negative_latency), std::invalid_argument);
  config::EmulationConfig nan_rate;
  nan_rate.error_rate = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(with_emulation(inner, nan_rate), std::invalid_argument);
  config::EmulationConfig no_requests;
  no_requests.rate_limit = true;
  no_requests.rate_limit_requests = 0;
  EXPECT_THROW(with_emulation(inner, no_requests), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------
// make_upstream: the emulation around the real embedded store

class MakeUpstreamEmulation : public ::testing::Test {
 protected:
  MakeUpstreamEmulation()
      : dir_(std::filesystem::path(::testing::TempDir()) /
             ("sproxy_emulation_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    cfg.upstream.kind = config::UpstreamKind::embedded;
    cfg.store.data_path = (dir_ / "store.db").string();
    cfg.store.key_env = "SPROXY_EMULATION_TEST_UNSET_KEY_VARIABLE";
    cfg.store.key_file = (dir_ / "store.key").string();
  }
  ~MakeUpstreamEmulation() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  config::Config cfg;

 private:
  std::filesystem::path dir_;
};

TEST_F(MakeUpstreamEmulation, BuildsThePlainStoreWhenEmulationIsOff) {
  EXPECT_EQ(make_upstream(cfg)->describe(), "embedded");
}

TEST_F(MakeUpstreamEmulation, PutsTheConfiguredRateLimitInFrontOfTheStore) {
  cfg.emulation.rate_limit = true;
  cfg.emulation.rate_limit_requests = 2;
  // The context outlives the upstream: the store's threads post their answers to it, so
  // they are joined (the upstream destroyed) before it goes.
  asio::io_context ioc;
  auto upstream = make_upstream(cfg);
  EXPECT_EQ(upstream->describe(), "rate_limit(2/300s, block=300s, embedded)");
  const CallResult first = test::run_awaitable(ioc, upstream->call(get()));
  ASSERT_TRUE(first) << first.error().message();
  EXPECT_EQ(first->status, 200u);
  EXPECT_EQ(nlohmann::json::parse(first->body).at("result"), nlohmann::json::array());
  EXPECT_EQ(first->ratelimit, R"("default";r=1;t=300)");
  EXPECT_EQ(first->ratelimit_policy, R"("burst";q=2;w=300)");
  ASSERT_EQ(test::run_awaitable(ioc, upstream->call(get()))->status, 200u);
  const CallResult refused = test::run_awaitable(ioc, upstream->call(get()));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 429u);
  EXPECT_EQ(refused->retry_after, "300");
}

TEST_F(MakeUpstreamEmulation, ReportsAnUnusableEmulationAsAStartUpError) {
  cfg.emulation.error_rate = 2.0;
  EXPECT_THROW(make_upstream(cfg), std::runtime_error);
}

}  // namespace
}  // namespace sproxy::upstream
