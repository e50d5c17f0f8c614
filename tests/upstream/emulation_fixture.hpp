// Shared fakes of the stand-in Cloudflare decorator tests (emulation_*test.cpp): a fake
// clock the test moves, a fake sleeper that records each delay instead of waiting, a
// scripted random source and a small scripted inner upstream that counts its calls.
#pragma once

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
#include "upstream/emulation.hpp"
#include "upstream/factory.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/model.hpp"

namespace sproxy::upstream::emulation_testing {

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

inline ApiRequest get(std::string target = kStores) { return ApiRequest{Method::get, target, ""}; }

// A random source that plays back the given draws, in order.
inline FaultInjectingUpstream::RandomSource draws(std::vector<double> values) {
  auto queue = std::make_shared<std::deque<double>>(values.begin(), values.end());
  return [queue] {
    if (queue->empty()) throw std::logic_error("random source: no more scripted draws");
    const double v = queue->front();
    queue->pop_front();
    return v;
  };
}

const std::string kInternalErrorBody = envelope_error(errors::internal_error());

inline RateLimitVerdict admitted(long remaining, std::chrono::seconds reset) {
  return RateLimitVerdict{true, remaining, reset, 0s, false};
}
inline RateLimitVerdict refused(std::chrono::seconds left, bool block_started = false) {
  return RateLimitVerdict{false, 0, left, left, block_started};
}

}  // namespace sproxy::upstream::emulation_testing
