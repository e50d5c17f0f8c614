// Miss coalescing: one Flight per in-progress fill; every reader of that key waits on it
// and shares its one result (a shared_ptr to it: nothing is copied per waiter).
//
// Contract:
// - complete(result) stores the result once and wakes every waiter, in the order they
//   joined. Each waiter resumes on its own executor (the one its coroutine runs on),
//   whatever thread completes the flight: waking is a post() to that executor, never a
//   call on the completing thread. The lock is not held while waking.
// - wait(max_waiters, max_wait) suspends until the result is there, or returns at once
//   with WaitStatus::overloaded when max_waiters are already waiting, or with
//   WaitStatus::timed_out after max_wait (also when the waiting coroutine is cancelled).
//   A waiter that gives up leaves the flight in O(1) (it is only marked; the list is
//   compacted now and then), so many waiters timing out together cost O(n), not O(n^2);
//   the fill itself keeps going.
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
    std::shared_ptr<const Result> result;  // set when status is ready; shared by all waiters
  };

  void complete(Result result) {
    auto shared = std::make_shared<const Result>(std::move(result));
    std::vector<std::shared_ptr<Waiter>> wake;
    {
      std::lock_guard lock(mu_);
      if (result_) return;
      result_ = std::move(shared);
      wake.reserve(active_);
      for (auto& w : waiters_) {
        if (!w->left) wake.push_back(std::move(w));
      }
      waiters_.clear();
      active_ = 0;
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
      if (active_ >= max_waiters) co_return Waited{WaitStatus::overloaded, {}};
      waiters_.push_back(w);
      ++active_;
    }
    // Either completes on expiry (timeout), or is cut short by complete() or by the
    // caller's cancellation; the result decides which.
    (void)co_await w->timer.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    std::lock_guard lock(mu_);
    if (result_) co_return Waited{WaitStatus::ready, result_};
    w->left = true;
    --active_;
    // Amortized O(1): the list is at most about twice the waiters still in it.
    if (waiters_.size() > 2 * active_ + 16) {
      std::erase_if(waiters_, [](const std::shared_ptr<Waiter>& x) { return x->left; });
    }
    co_return Waited{WaitStatus::timed_out, {}};
  }

 private:
  struct Waiter {
    explicit Waiter(boost::asio::any_io_executor ex) : timer(std::move(ex)) {}
    boost::asio::steady_timer timer;
    bool left = false;  // gave up (timed out or cancelled); guarded by mu_
  };

  mutable std::mutex mu_;
  std::shared_ptr<const Result> result_;
  std::vector<std::shared_ptr<Waiter>> waiters_;  // in join order; may hold `left` ones
  std::size_t active_ = 0;                        // waiters_ not `left`
};

}  // namespace sproxy::cache
