// A shared_ptr that one thread replaces while others read it.
//
// `load` returns the object current when it was called and keeps it alive for as long as
// the caller holds it; after `store` returns, every `load` sees the new object. The
// object a `store` replaces is released outside the lock, by whichever holder lets go of
// it last.
//
// A mutex guards the pointer rather than std::atomic<std::shared_ptr>: libstdc++ 12's
// atomic<shared_ptr>::load reads the pointer and then releases its internal lock with a
// relaxed store, so a concurrent store's write is not ordered after that read (a data
// race in the C++ memory model, reported by ThreadSanitizer). Readers here are rare (a
// connection's first request, a TLS handshake), so an uncontended lock costs nothing
// measurable.
#pragma once

#include <memory>
#include <mutex>
#include <utility>

namespace sproxy::proxy {

template <typename T>
class SharedSlot {
 public:
  SharedSlot() = default;
  explicit SharedSlot(std::shared_ptr<T> initial) : value_(std::move(initial)) {}
  SharedSlot(const SharedSlot&) = delete;
  SharedSlot& operator=(const SharedSlot&) = delete;

  std::shared_ptr<T> load() const {
    const std::lock_guard lock(mutex_);
    return value_;
  }

  void store(std::shared_ptr<T> next) {
    {
      const std::lock_guard lock(mutex_);
      value_.swap(next);
    }
    // `next` now holds the replaced object; it is released here, outside the lock.
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<T> value_;
};

}  // namespace sproxy::proxy
