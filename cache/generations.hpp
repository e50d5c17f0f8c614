// Generation counters per invalidation tag: the guard against stale refills.
//
// A fill takes a Ticket for its tag before it asks the upstream; it stores its result
// only through commit_if_current, which runs the store under the tag's stripe lock and
// only when no invalidation of that tag (bump) and no purge (bump_all) happened since
// the ticket was taken. An invalidation bumps first and erases entries afterwards, so
// a fill that committed just before the bump is erased, and one that commits after it
// sees the new generation and stores nothing: pre-write data never outlives the write.
//
// Bounded: at most `max_tracked` tags per stripe are remembered; when a stripe is full
// it forgets all of them and raises its floor (the value an unknown tag reads as) past
// every value it handed out, so a forgotten tag can only look changed, never unchanged.
//
// Thread safety: all methods are safe to call concurrently. Lock order: a stripe lock may
// be held while taking a storage shard lock (inside commit), never the other way round.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace sproxy::cache {

class Generations {
 public:
  struct Ticket {
    std::uint64_t epoch = 0;
    std::uint64_t generation = 0;
    bool operator==(const Ticket&) const = default;
  };

  explicit Generations(std::size_t stripes = 32, std::size_t max_tracked = 4096);
  ~Generations();
  Generations(const Generations&) = delete;
  Generations& operator=(const Generations&) = delete;

  Ticket current(std::string_view tag) const;
  // Every ticket taken for `tag` before this call stops being current.
  void bump(std::string_view tag);
  // Every ticket taken before this call stops being current (purges).
  void bump_all();

  // Bumps `tag` and runs `update()` under the tag's stripe lock: every ticket taken for
  // `tag` before stops being current, and the updates of one tag run one at a time (a
  // write applying its answer to cached entries). `update` must not block or take a
  // stripe lock.
  template <class F>
  void bump_and_run(std::string_view tag, F&& update) {
    Stripe& s = stripe_for(tag);
    std::lock_guard lock(s.mu);
    bump_locked(s, tag);
    std::forward<F>(update)();
  }

  // Runs `store()` under the tag's stripe lock if `ticket` is still current; returns
  // whether it ran. `store` must not block or take a stripe lock.
  template <class F>
  bool commit_if_current(std::string_view tag, const Ticket& ticket, F&& store) {
    Stripe& s = stripe_for(tag);
    std::lock_guard lock(s.mu);
    if (read_locked(s, tag) != ticket) return false;
    std::forward<F>(store)();
    return true;
  }

 private:
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  struct Stripe {
    mutable std::mutex mu;
    std::unordered_map<std::string, std::uint64_t, Hash, std::equal_to<>> generation;
    std::uint64_t floor = 0;
  };

  Stripe& stripe_for(std::string_view tag) const;
  Ticket read_locked(const Stripe& s, std::string_view tag) const;
  void bump_locked(Stripe& s, std::string_view tag);

  std::size_t stripe_count_;
  std::size_t max_tracked_;
  std::unique_ptr<Stripe[]> stripes_;
  std::atomic<std::uint64_t> counter_{0};
  // Written only while every stripe lock is held, read under any one of them.
  std::uint64_t epoch_ = 0;
};

}  // namespace sproxy::cache
