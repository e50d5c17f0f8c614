// Shared fixture of the GuardedUpstream tests (guarded_upstream_*_test.cpp): a fake clock
// whose sleeper records each delay and moves the clock instead of waiting, and a scripted
// inner upstream.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/resilience_options.hpp"
#include "tests/support/run_awaitable.hpp"
#include "tests/support/scripted_upstream.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/model.hpp"
#include "upstream/resilience.hpp"

namespace sproxy::upstream::guarded_testing {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using std::chrono::system_clock;
using test::breaker_options;
using test::budget_options;
using test::kT0;
using test::kWallT0;

// ---------------------------------------------------------------------------------------
// GuardedUpstream fakes

class FakeClock final : public GuardedUpstream::Clock {
 public:
  SteadyTime now() const override { return steady_; }
  system_clock::time_point wall_now() const override { return wall_; }
  void advance(SteadyDuration d) {
    steady_ += d;
    wall_ += std::chrono::duration_cast<system_clock::duration>(d);
  }
  void advance_to(SteadyTime t) {
    if (t > steady_) advance(t - steady_);
  }

 private:
  SteadyTime steady_ = kT0;
  system_clock::time_point wall_ = kWallT0;
};

// Records every delay and moves the fake clock to the wake-up time instead of waiting.
// It yields to the io_context first, so that concurrent sleepers interleave as they
// would on real timers.
class FakeSleeper final : public GuardedUpstream::Sleeper {
 public:
  explicit FakeSleeper(std::shared_ptr<FakeClock> clock) : clock_(std::move(clock)) {}
  asio::awaitable<boost::system::error_code> sleep(SteadyDuration d) override {
    delays.push_back(d);
    const SteadyTime wake = clock_->now() + d;
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    clock_->advance_to(wake);
    co_return boost::system::error_code{};
  }
  std::vector<SteadyDuration> delays;

 private:
  std::shared_ptr<FakeClock> clock_;
};

inline ApiResponse answer(unsigned status) {
  ApiResponse r;
  r.status = status;
  if (status < 400) {
    r.body = envelope_success(nlohmann::json::array());
  } else {
    ApiError e = status == 404 ? errors::store_not_found() : errors::internal_error();
    e.status = status;
    r.body = envelope_error(e);
  }
  return r;
}

inline ApiResponse too_many_requests(std::optional<std::string> retry_after) {
  ApiResponse r;
  r.status = 429;
  r.body = envelope_error(errors::rate_limited(1));
  r.retry_after = std::move(retry_after);
  return r;
}

using test::ScriptedUpstream;

constexpr const char* kStores =
    "/client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/stores";

inline ApiRequest request(Method m, std::string body = "") {
  return ApiRequest{m, kStores, std::move(body)};
}
inline ApiRequest get() { return request(Method::get); }
inline ApiRequest post() { return request(Method::post, R"({"name":"main"})"); }

inline CallResult transport(UpstreamErrc e) { return make_error_code(e); }

class GuardedUpstreamTest : public ::testing::Test {
 protected:
  GuardedUpstreamTest() {
    options.budget = budget_options(10, 300s);
    options.breaker = breaker_options(3, 30s);
    options.backoff = BackoffOptions{100ms, 1000ms};
    options.max_retries = 2;
    options.retry_window = 3s;
    options.write_budget_wait = 2s;
    options.default_retry_after = 60s;
  }

  GuardedUpstream& guarded() {
    if (!guarded_) {
      guarded_ = std::make_unique<GuardedUpstream>(inner, options, clock, sleeper,
                                                   [this] { return random; });
    }
    return *guarded_;
  }

  CallResult call(ApiRequest r) { return test::run_awaitable(ioc, guarded().call(std::move(r))); }

  unsigned status_of(ApiRequest r) {
    CallResult res = call(std::move(r));
    if (!res) {
      ADD_FAILURE() << "transport error " << res.error().message();
      return 0;
    }
    return res->status;
  }

  // Expects the decorator's own 429: the contract body and Retry-After in seconds.
  void expect_synthesized_429(const CallResult& r, long seconds) {
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(r->status, 429u);
    EXPECT_EQ(r->body, envelope_error(errors::rate_limited(seconds)));
    EXPECT_EQ(r->retry_after, std::to_string(seconds));
  }

  // Spends a whole budget of two requests per 10 s at kT0 and kT0 + 5 s, then moves
  // the clock to kT0 + `at`.
  void spend_two_of_two(SteadyDuration at) {
    options.budget = budget_options(2, 10s);
    ASSERT_EQ(status_of(get()), 200u);
    clock->advance(5s);
    ASSERT_EQ(status_of(get()), 200u);
    clock->advance_to(kT0 + at);
  }

  void destroy_guarded() { guarded_.reset(); }

  asio::io_context ioc;
  GuardedUpstreamOptions options;
  double random = 1.0;  // clamped just below 1: every delay is its ceiling
  std::shared_ptr<FakeClock> clock = std::make_shared<FakeClock>();
  std::shared_ptr<FakeSleeper> sleeper = std::make_shared<FakeSleeper>(clock);
  std::shared_ptr<ScriptedUpstream> inner = std::make_shared<ScriptedUpstream>();

 private:
  std::unique_ptr<GuardedUpstream> guarded_;
};

using GuardedUpstreamBudget = GuardedUpstreamTest;
using GuardedUpstreamRetries = GuardedUpstreamTest;
using GuardedUpstreamBreaker = GuardedUpstreamTest;

}  // namespace sproxy::upstream::guarded_testing
