// Miss coalescing: one Flight per in-progress fill; every reader of that key waits on it
// and shares its one result (a shared_ptr to it: nothing is copied per waiter).
//
// Contract:
// - complete(result) stores the result once and wakes every waiter, in the order they
//   joined. Each waiter resumes on its own executor (the one its coroutine runs on),
//   whatever thread completes the flight: the waiters of one executor are woken by one
//   post() to it, which resumes them one after another, never by a call on the
//   completing thread. The lock is not held while waking.
// - A reader waits in three steps, without a coroutine frame of its own: join() takes a
//   seat, which is settled at once (ready when the result is there, overloaded when
//   max_waiters already wait) or waiting; park(seat, max_wait) suspends a waiting seat
//   until the result is there or max_wait passes (or the awaiting coroutine is
//   cancelled); settle(seat) tells which (ready, overloaded or timed_out).
//   A waiter that gives up leaves the flight in O(1) (it is only marked; the list is
//   compacted now and then), so many waiters timing out together cost O(n), not O(n^2);
//   the fill itself keeps going.
// - A waiter belongs to its executor's io_context: when that context shuts down first,
//   the waiting coroutine is destroyed with it (like any pending operation of the
//   context) and leaves the flight, which never wakes it.
// Thread safety: all members are safe to call from any thread. A waiter is only touched
// on its own executor, so a waiter's executor must be single-threaded or a strand (one
// io_context per thread, as the server runs).
#pragma once

#include <algorithm>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace sproxy::cache {

enum class WaitStatus { ready, overloaded, timed_out };

template <class Result>
class Flight {
  struct Waiter;

 public:
  struct Waited {
    WaitStatus status = WaitStatus::timed_out;
    std::shared_ptr<const Result> result;  // set when status is ready; shared by all waiters
  };

  void complete(Result result) {
    auto shared = std::make_shared<const Result>(std::move(result));
    std::lock_guard lock(mu_);
    if (result_) return;
    result_ = std::move(shared);
    std::vector<std::shared_ptr<Waiter>> wake;
    wake.reserve(active_);
    for (auto& w : waiters_) {
      if (!w->left) wake.push_back(std::move(w));
    }
    waiters_.clear();
    active_ = 0;
    // One post per executor, in join order within each: a thousand waiters on one
    // io_context are resumed back to back by one handler. Posted under the lock, so a
    // waiter whose context is shutting down has either left (forget) or is posted to
    // while that context still exists.
    while (!wake.empty()) {
      const auto ex = wake.front()->executor;
      auto others = std::stable_partition(wake.begin(), wake.end(),
                                          [&](const auto& w) { return w->executor == ex; });
      std::vector<std::shared_ptr<Waiter>> batch(std::make_move_iterator(wake.begin()),
                                                 std::make_move_iterator(others));
      wake.erase(wake.begin(), others);
      boost::asio::post(ex, [batch = std::move(batch)] {
        for (const auto& w : batch) w->resume();
        // Their deadlines go only once every waiter of the batch has had its turn.
        for (const auto& w : batch) {
          if (w->timer) w->timer->cancel();
        }
      });
    }
  }

  // A reader's place in the flight, from join() to settle().
  class Seat {
   public:
    bool waiting() const { return waiter_ != nullptr; }

   private:
    friend class Flight;
    Waited done_;                     // the answer when join() needed no waiting
    std::shared_ptr<Waiter> waiter_;  // set while waiting
  };

  // Takes a place among the waiters (on `ex`, the caller's executor), or settles at once:
  // ready when the result is there, overloaded when max_waiters already wait.
  Seat join(std::size_t max_waiters, const boost::asio::any_io_executor& ex) {
    Seat seat;
    std::lock_guard lock(mu_);
    if (result_) {
      seat.done_ = Waited{WaitStatus::ready, result_};
    } else if (active_ >= max_waiters) {
      seat.done_ = Waited{WaitStatus::overloaded, {}};
    } else {
      seat.waiter_ = std::make_shared<Waiter>(this, ex);
      waiters_.push_back(seat.waiter_);
      ++active_;
    }
    return seat;
  }

  // For a waiting seat: suspends until complete() wakes it, max_wait passes, or the
  // awaiting coroutine is cancelled. Must be awaited on the executor given to join().
  boost::asio::awaitable<void> park(const Seat& seat, std::chrono::milliseconds max_wait) {
    return boost::asio::async_initiate<decltype(boost::asio::use_awaitable), void()>(
        [w = seat.waiter_, max_wait](auto handler) {
          Waiter::start(w, std::move(handler), max_wait);
        },
        boost::asio::use_awaitable);
  }

  // What the seat came to: the shared result, overloaded, or timed_out (a waiter that
  // gives up here leaves the flight).
  Waited settle(Seat& seat) {
    if (!seat.waiter_) return std::move(seat.done_);
    std::lock_guard lock(mu_);
    const std::shared_ptr<Waiter> w = std::move(seat.waiter_);
    if (result_) return Waited{WaitStatus::ready, result_};
    w->left = true;
    w->timer.reset();
    --active_;
    // Amortized O(1): the list is at most about twice the waiters still in it.
    if (waiters_.size() > 2 * active_ + 16) {
      std::erase_if(waiters_, [](const std::shared_ptr<Waiter>& x) { return x->left; });
    }
    return Waited{WaitStatus::timed_out, {}};
  }

 private:
  // Takes `w` out of the flight for good (its coroutine and its context are going away;
  // so must the waiter, timer included). O(waiters): only on shutdown.
  void forget(Waiter& w) {
    std::lock_guard lock(mu_);
    if (!w.left && !result_) --active_;
    w.left = true;
    std::erase_if(waiters_, [&](const std::shared_ptr<Waiter>& x) { return x.get() == &w; });
  }

  using Parked = boost::asio::any_completion_handler<void()>;

  struct Waiter {
    Waiter(Flight* f, boost::asio::any_io_executor ex)
        : flight(f), executor(std::move(ex)), timer(std::in_place, executor) {}

    // Parks `handler` (the suspended coroutine) until resume() or the deadline. The
    // timer's pending wait owns the parked handler: when the io_context shuts down
    // before either, destroying that wait destroys the coroutine too.
    template <class Handler>
    static void start(const std::shared_ptr<Waiter>& w, Handler handler,
                      std::chrono::milliseconds max_wait) {
      // Swapped in: Boost 1.81's move assignment of any_completion_handler recurses.
      Parked(std::move(handler)).swap(w->parked);
      // The type-erased handler takes over the caller's cancellation slot and hands
      // cancellation on through its own.
      auto slot = w->parked.get_cancellation_slot();
      if (slot.is_connected()) {
        slot.assign([weak = std::weak_ptr<Waiter>(w)](boost::asio::cancellation_type) {
          if (auto alive = weak.lock(); alive && alive->timer) alive->timer->cancel();
        });
      }
      w->timer->expires_after(max_wait);
      w->timer->async_wait([owner = Owner{w}](const boost::system::error_code&) {
        // Expired, or cancelled by the caller: give up. Cancelled by resume(): the
        // handler is gone already.
        owner.w->resume();
      });
    }

    // Runs on the waiter's executor: the coroutine continues inline, at most once. The
    // deadline is left to the caller (complete() cancels it after the whole batch).
    void resume() {
      if (!parked) return;
      auto handler = std::move(parked);
      parked = nullptr;
      std::move(handler)();
    }

    // Held by the timer's wait; drops a handler still parked when that wait is
    // destroyed without running (its io_context shut down).
    struct Owner {
      std::shared_ptr<Waiter> w;
      explicit Owner(std::shared_ptr<Waiter> waiter) : w(std::move(waiter)) {}
      Owner(Owner&&) noexcept = default;
      Owner& operator=(Owner&&) = delete;
      ~Owner() {
        if (!w || !w->parked) return;
        // Still parked, so the coroutine (which holds the flight) is alive: leave the
        // flight first, so that complete() never posts to the dying context.
        w->flight->forget(*w);
        w->parked = nullptr;
      }
    };

    Flight* flight;                         // valid while the waiter is parked
    boost::asio::any_io_executor executor;  // the waiting coroutine's
    // The deadline; dropped once the waiter gave up, as a waiter may stay listed until
    // the next compaction (perhaps after its io_context is gone).
    std::optional<boost::asio::steady_timer> timer;
    Parked parked;
    bool left = false;  // gave up (timed out or cancelled); guarded by mu_
  };

  mutable std::mutex mu_;
  std::shared_ptr<const Result> result_;
  std::vector<std::shared_ptr<Waiter>> waiters_;  // in join order; may hold `left` ones
  std::size_t active_ = 0;                        // waiters_ not `left`
};

}  // namespace sproxy::cache
