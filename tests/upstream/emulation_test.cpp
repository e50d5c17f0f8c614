// Tests for the stand-in Cloudflare decorators (upstream/emulation.hpp): the fault
// injector (latency and 500s) and the rate-limit emulator (fixed window, 429 + block).
// Time is explicit: a fake clock the test moves, a fake sleeper that records each delay
// instead of waiting, a scripted random source, and a small scripted inner upstream
// that counts its calls.
#include "upstream/emulation.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cmath>
#include <deque>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/run_awaitable.hpp"
#include "tests/support/scripted_upstream.hpp"
#include "upstream/factory.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/model.hpp"

namespace sproxy::upstream {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using std::chrono::system_clock;

const SteadyTime kT0 = SteadyTime{} + 1000h;

// ---------------------------------------------------------------------------------------
// Fakes

class FakeClock final : public GuardedUpstream::Clock {
 public:
  SteadyTime now() const override {
    std::lock_guard lock(mu_);
    return now_;
  }
  system_clock::time_point wall_now() const override {
    return system_clock::time_point{} +
           std::chrono::duration_cast<system_clock::duration>(now().time_since_epoch());
  }
  void advance(SteadyDuration d) {
    std::lock_guard lock(mu_);
    now_ += d;
  }
  void set(SteadyTime t) {
    std::lock_guard lock(mu_);
    now_ = t;
  }

 private:
  mutable std::mutex mu_;
  SteadyTime now_ = kT0;
};

// Records every delay and returns at once (after a post, so the wait is a real
// suspension); `fail_with` makes the wait end in that error instead.
class FakeSleeper final : public GuardedUpstream::Sleeper {
 public:
  asio::awaitable<boost::system::error_code> sleep(SteadyDuration d) override {
    delays.push_back(d);
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    co_return fail_with;
  }
  std::vector<SteadyDuration> delays;
  boost::system::error_code fail_with;
};

using test::ScriptedUpstream;

constexpr const char* kStores =
    "/client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/stores";

ApiRequest get(std::string target = kStores) { return ApiRequest{Method::get, target, ""}; }

// A random source that plays back the given draws, in order.
FaultInjectingUpstream::RandomSource draws(std::vector<double> values) {
  auto queue = std::make_shared<std::deque<double>>(values.begin(), values.end());
  return [queue] {
    if (queue->empty()) throw std::logic_error("random source: no more scripted draws");
    const double v = queue->front();
    queue->pop_front();
    return v;
  };
}

const std::string kInternalErrorBody = envelope_error(errors::internal_error());

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

RateLimitVerdict admitted(long remaining, std::chrono::seconds reset) {
  return RateLimitVerdict{true, remaining, reset, 0s, false};
}
RateLimitVerdict refused(std::chrono::seconds left, bool block_started = false) {
  return RateLimitVerdict{false, 0, left, left, block_started};
}

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
