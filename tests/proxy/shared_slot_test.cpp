#include "proxy/shared_slot.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

namespace sproxy::proxy {
namespace {

// Each object knows its own number in two places; a torn or freed object would disagree.
struct Numbered {
  explicit Numbered(int n) : number(n), copy(n) {}
  ~Numbered() { number = copy = -1; }
  int number;
  int copy;
};

TEST(SharedSlot, GivesWhatWasStoredLast) {
  SharedSlot<const Numbered> slot(std::make_shared<const Numbered>(1));
  EXPECT_EQ(slot.load()->number, 1);
  slot.store(std::make_shared<const Numbered>(2));
  EXPECT_EQ(slot.load()->number, 2);
  slot.store(nullptr);
  EXPECT_EQ(slot.load(), nullptr);
}

TEST(SharedSlot, KeepsALoadedObjectAliveAfterItIsReplaced) {
  SharedSlot<const Numbered> slot(std::make_shared<const Numbered>(1));
  const auto held = slot.load();
  slot.store(std::make_shared<const Numbered>(2));
  EXPECT_EQ(held->number, 1);
  EXPECT_EQ(held.use_count(), 1);  // the slot let go of it; the reader still has it
}

// Readers on several threads while one thread keeps replacing the object: every read is
// a whole object that was stored, and numbers never go backwards for one reader. Run in
// the ThreadSanitizer build (label "threads"), this also proves the slot race-free.
TEST(SharedSlot, ReadersSeeWholeObjectsInStoreOrderWhileOneThreadReplacesThem) {
  constexpr int kStores = 20'000;
  SharedSlot<const Numbered> slot(std::make_shared<const Numbered>(0));
  std::atomic<bool> done{false};
  std::vector<int> bad(3, 0);
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&, r] {
      int last = 0;
      for (int i = 0; i < 1'000'000 && !done.load(); ++i) {
        const auto seen = slot.load();
        if (seen->number != seen->copy || seen->number < last || seen->number > kStores) {
          ++bad[r];
        }
        last = seen->number;
      }
    });
  }
  for (int n = 1; n <= kStores; ++n) slot.store(std::make_shared<const Numbered>(n));
  done = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad, std::vector<int>(3, 0));
  EXPECT_EQ(slot.load()->number, kStores);
}

}  // namespace
}  // namespace sproxy::proxy
