// Test helpers to drive coroutines from a test body, deterministically, on an
// io_context run by the test's own thread:
// - run_awaitable(ioc, aw): runs `aw` to completion and returns its value (rethrows its
//   exception). Returns as soon as `aw` is done; other work (e.g. a background fill)
//   stays queued for the next run.
// - spawn(ex, aw) -> Spawned<T>: starts `aw` and collects its result, so a test can
//   interleave several coroutines and step the io_context in between (run_until).
// - run_until(ioc, pred): runs handlers one at a time until pred() holds; fails the
//   test (throws) if the io_context runs out of work first.
// Header-only; never sleeps.
#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <utility>

namespace sproxy::test {

// The result of a spawned coroutine, filled in when it completes (from any thread).
template <class T>
class Spawned {
 public:
  bool done() const { return done_.load(std::memory_order_acquire); }
  // The value; throws the coroutine's exception, or std::logic_error if not done.
  T& get() {
    if (!done()) throw std::logic_error("Spawned::get before completion");
    if (error_) std::rethrow_exception(error_);
    return *value_;
  }

  void set(std::exception_ptr e, std::optional<T> v) {
    error_ = e;
    value_ = std::move(v);
    done_.store(true, std::memory_order_release);
  }

 private:
  std::atomic<bool> done_{false};
  std::exception_ptr error_;
  std::optional<T> value_;
};

template <>
class Spawned<void> {
 public:
  bool done() const { return done_.load(std::memory_order_acquire); }
  void get() {
    if (!done()) throw std::logic_error("Spawned::get before completion");
    if (error_) std::rethrow_exception(error_);
  }
  void set(std::exception_ptr e) {
    error_ = e;
    done_.store(true, std::memory_order_release);
  }

 private:
  std::atomic<bool> done_{false};
  std::exception_ptr error_;
};

template <class Executor, class T>
std::shared_ptr<Spawned<T>> spawn(Executor ex, boost::asio::awaitable<T> aw) {
  auto out = std::make_shared<Spawned<T>>();
  if constexpr (std::is_void_v<T>) {
    boost::asio::co_spawn(ex, std::move(aw), [out](std::exception_ptr e) { out->set(e); });
  } else {
    boost::asio::co_spawn(ex, std::move(aw), [out](std::exception_ptr e, T v) {
      if (e) {
        out->set(e, std::nullopt);
      } else {
        out->set(nullptr, std::optional<T>(std::move(v)));
      }
    });
  }
  return out;
}

template <class Pred>
void run_until(boost::asio::io_context& ioc, Pred pred) {
  ioc.restart();
  while (!pred()) {
    if (ioc.run_one() == 0) {
      throw std::runtime_error("run_until: io_context ran out of work before the condition held");
    }
  }
}

// Runs `ioc` until `done()` holds, for at most `within` (real events from other processes
// or servers: Redis, a child process); false when it never did.
template <class Pred>
bool run_until_within(boost::asio::io_context& ioc, Pred done,
                      std::chrono::milliseconds within = std::chrono::seconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  ioc.restart();
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    ioc.run_one_for(std::chrono::milliseconds(20));
  }
  return true;
}

// Runs every ready handler without blocking (e.g. to let spawned coroutines reach their
// first real suspension point).
inline void run_ready(boost::asio::io_context& ioc) {
  ioc.restart();
  ioc.poll();
}

template <class T>
T run_awaitable(boost::asio::io_context& ioc, boost::asio::awaitable<T> aw) {
  auto task = spawn(ioc.get_executor(), std::move(aw));
  run_until(ioc, [&] { return task->done(); });
  if constexpr (std::is_void_v<T>) {
    task->get();
  } else {
    return std::move(task->get());
  }
}

template <class T>
T run_awaitable(boost::asio::awaitable<T> aw) {
  boost::asio::io_context ioc;
  if constexpr (std::is_void_v<T>) {
    run_awaitable(ioc, std::move(aw));
  } else {
    return run_awaitable(ioc, std::move(aw));
  }
}

}  // namespace sproxy::test
