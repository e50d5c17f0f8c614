#include "cache/generations.hpp"

#include <algorithm>

namespace sproxy::cache {

Generations::Generations(std::size_t stripes, std::size_t max_tracked)
    : stripe_count_(std::max<std::size_t>(1, stripes)),
      max_tracked_(std::max<std::size_t>(1, max_tracked)),
      stripes_(std::make_unique<Stripe[]>(stripe_count_)) {}

Generations::~Generations() = default;

Generations::Stripe& Generations::stripe_for(std::string_view tag) const {
  return stripes_[Hash{}(tag) % stripe_count_];
}

Generations::Ticket Generations::read_locked(const Stripe& s, std::string_view tag) const {
  auto it = s.generation.find(tag);
  return Ticket{epoch_, it == s.generation.end() ? s.floor : it->second};
}

Generations::Ticket Generations::current(std::string_view tag) const {
  const Stripe& s = stripe_for(tag);
  std::lock_guard lock(s.mu);
  return read_locked(s, tag);
}

void Generations::bump(std::string_view tag) {
  Stripe& s = stripe_for(tag);
  std::lock_guard lock(s.mu);
  bump_locked(s, tag);
}

void Generations::bump_locked(Stripe& s, std::string_view tag) {
  const std::uint64_t next = counter_.fetch_add(1, std::memory_order_relaxed) + 1;
  auto it = s.generation.find(tag);
  if (it != s.generation.end()) {
    it->second = next;
    return;
  }
  if (s.generation.size() >= max_tracked_) {
    // Forget everything; unknown tags now read as a value above all handed out before.
    s.generation.clear();
    s.floor = next;
  }
  s.generation.emplace(std::string(tag), next);
}

void Generations::bump_all() {
  // Lock every stripe (in index order; commits hold at most one) so no commit can sit
  // between its check and its store while the epoch changes.
  for (std::size_t i = 0; i < stripe_count_; ++i) stripes_[i].mu.lock();
  ++epoch_;
  for (std::size_t i = stripe_count_; i-- > 0;) stripes_[i].mu.unlock();
}

}  // namespace sproxy::cache
