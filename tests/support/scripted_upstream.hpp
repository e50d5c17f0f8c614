// ScriptedUpstream: an Upstream whose answers a test scripts, for testing what sits in
// front of an upstream (the guard, emulation decorators, metrics) without a store.
// - Each call takes the next scripted result; once the script is used up, every call gets
//   what `always` set, else a 200 success envelope with an empty list, or an exception
//   after `throw_when_exhausted()`.
// - Records every request (method, target, body) and counts calls.
// - `on_call` runs a hook on each call (a test advancing its fake clock, as a slow
//   upstream would); `hold` keeps calls waiting on a timer until `release`.
// Thread safety: call() and the accessors may run on any thread; hold/release belong to
// the thread running the io_context the held calls wait on.
// Header-only; link sproxy_upstream.
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "upstream/model.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::test {

class ScriptedUpstream final : public upstream::Upstream {
 public:
  using CallResult = upstream::CallResult;

  ScriptedUpstream() = default;
  explicit ScriptedUpstream(std::vector<CallResult> script)
      : script_(std::make_move_iterator(script.begin()), std::make_move_iterator(script.end())) {}

  std::string describe() const override { return "scripted"; }

  boost::asio::awaitable<CallResult> call(upstream::ApiRequest request) override {
    std::optional<CallResult> result;
    std::function<void()> hook;
    bool hold = false;
    {
      std::lock_guard lock(mu_);
      requests_.push_back(request);
      if (!script_.empty()) {
        result = std::move(script_.front());
        script_.pop_front();
      } else if (always_) {
        result = *always_;
      } else if (!throw_when_exhausted_) {
        result = ok_answer();
      }
      hook = on_call_;
      hold = holding_;
    }
    if (!result) throw std::runtime_error("ScriptedUpstream: script exhausted");
    if (hook) hook();
    if (hold) {
      auto timer = std::make_shared<boost::asio::steady_timer>(
          co_await boost::asio::this_coro::executor, boost::asio::steady_timer::time_point::max());
      {
        std::lock_guard lock(mu_);
        held_.push_back(timer);
      }
      (void)co_await timer->async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    }
    co_return std::move(*result);
  }

  // The next `times` calls answer `r` (after what is already scripted).
  void then(CallResult r, int times = 1) {
    std::lock_guard lock(mu_);
    for (int i = 0; i < times; ++i) script_.push_back(r);
  }
  // Calls past the script answer `r`.
  void always(CallResult r) {
    std::lock_guard lock(mu_);
    always_ = std::move(r);
  }
  // Calls past the script (and without `always`) throw std::runtime_error.
  void throw_when_exhausted() {
    std::lock_guard lock(mu_);
    throw_when_exhausted_ = true;
  }
  // Runs `hook` on every call, before it answers.
  void on_call(std::function<void()> hook) {
    std::lock_guard lock(mu_);
    on_call_ = std::move(hook);
  }
  // From now on calls wait until release().
  void hold() {
    std::lock_guard lock(mu_);
    holding_ = true;
  }
  std::size_t held() const {
    std::lock_guard lock(mu_);
    return held_.size();
  }
  void release() {
    std::vector<std::shared_ptr<boost::asio::steady_timer>> held;
    {
      std::lock_guard lock(mu_);
      holding_ = false;
      held.swap(held_);
    }
    for (auto& t : held) t->cancel();
  }

  std::size_t calls() const {
    std::lock_guard lock(mu_);
    return requests_.size();
  }
  std::vector<upstream::ApiRequest> requests() const {
    std::lock_guard lock(mu_);
    return requests_;
  }
  std::vector<std::string> targets() const {
    std::lock_guard lock(mu_);
    std::vector<std::string> out;
    for (const auto& r : requests_) out.push_back(r.target);
    return out;
  }

  // A 200 success envelope with an empty list: the answer past the script by default.
  static upstream::ApiResponse ok_answer() {
    upstream::ApiResponse r;
    r.status = 200;
    r.body = upstream::envelope_success(nlohmann::json::array());
    return r;
  }

 private:
  mutable std::mutex mu_;
  std::deque<CallResult> script_;
  std::optional<CallResult> always_;
  bool throw_when_exhausted_ = false;
  std::function<void()> on_call_;
  bool holding_ = false;
  std::vector<std::shared_ptr<boost::asio::steady_timer>> held_;
  std::vector<upstream::ApiRequest> requests_;
};

}  // namespace sproxy::test
