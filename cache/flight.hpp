// Miss coalescing: one Flight per in-progress fill; every reader of that key waits on it
// and receives a copy of its one result.
//
// Contract:
// - complete(result) stores the result once and wakes every waiter. Each waiter resumes
//   on its own executor (the one its coroutine runs on), whatever thread completes the
//   flight: waking is a post() to that executor, never a call on the completing thread.
// - wait(max_waiters, max_wait) suspends until the result is there, or returns at once
//   with WaitStatus::overloaded when max_waiters are already waiting, or with
//   WaitStatus::timed_out after max_wait (also when the waiting coroutine is cancelled).
//   A waiter that gives up leaves the flight; the fill itself keeps going.
// Thread safety: all members are safe to call from any thread. A waiter's timer is only
// touched on its own executor, so a waiter's executor must be single-threaded or a
// strand (one io_context per thread, as the server runs).
#pragma once

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace sproxy::cache {

enum class WaitStatus { ready, overloaded, timed_out };

template <class Result>
class Flight : public std::enable_shared_from_this<Flight<Result>> {
 public:
  struct Waited {
    WaitStatus status = WaitStatus::timed_out;
    std::optional<Result> result;
  };

  void complete(Result result) {
    std::vector<std::shared_ptr<Waiter>> wake;
    {
      std::lock_guard lock(mu_);
      if (result_) return;
      result_.emplace(std::move(result));
      wake.swap(waiters_);
    }
    for (auto& w : wake) {
      // Moving the expiry into the past cancels a pending wait, and makes a wait that
      // has not started yet complete at once.
      boost::asio::post(w->timer.get_executor(),
                        [w] { w->timer.expires_at(boost::asio::steady_timer::time_point{}); });
    }
  }

  boost::asio::awaitable<Waited> wait(std::size_t max_waiters, std::chrono::milliseconds max_wait) {
    auto self = this->shared_from_this();
    auto w = std::make_shared<Waiter>(co_await boost::asio::this_coro::executor);
    w->timer.expires_after(max_wait);
    {
      std::lock_guard lock(mu_);
      if (result_) co_return Waited{WaitStatus::ready, result_};
      if (waiters_.size() >= max_waiters) co_return Waited{WaitStatus::overloaded, {}};
      waiters_.push_back(w);
    }
    // Either completes on expiry (timeout), or is cut short by complete() or by the
    // caller's cancellation; the result decides which.
    (void)co_await w->timer.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    std::lock_guard lock(mu_);
    if (result_) co_return Waited{WaitStatus::ready, result_};
    waiters_.erase(std::remove(waiters_.begin(), waiters_.end(), w), waiters_.end());
    co_return Waited{WaitStatus::timed_out, {}};
  }

 private:
  struct Waiter {
    explicit Waiter(boost::asio::any_io_executor ex) : timer(std::move(ex)) {}
    boost::asio::steady_timer timer;
  };

  mutable std::mutex mu_;
  std::optional<Result> result_;
  std::vector<std::shared_ptr<Waiter>> waiters_;
};

}  // namespace sproxy::cache
