// Conformance suite for cache storage: every Storage implementation (and configuration)
// is listed in StorageImplementations and must pass every TYPED_TEST below.
#include "cache/storage.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace sproxy::cache {
namespace {

// A value of a chosen size.
class Blob final : public CacheObject {
 public:
  explicit Blob(std::size_t n, char fill = 'x') : data_(n, fill) {}
  std::size_t byte_size() const noexcept override { return sizeof(Blob) + data_.capacity(); }
  const std::string& data() const { return data_; }

 private:
  std::string data_;
};

std::shared_ptr<const CacheObject> blob(std::size_t n, char fill = 'x') {
  return std::make_shared<const Blob>(n, fill);
}

constexpr Micros kNow = 1'000'000;

EntryMeta meta_for(Micros fresh_for, Micros keep_for) {
  return EntryMeta{kNow, kNow + fresh_for, kNow + keep_for};
}

struct OneShardLru {
  static std::unique_ptr<Storage> make(StorageLimits limits) {
    return std::make_unique<ShardedLruStorage>(limits, 1);
  }
};
struct SixteenShardLru {
  static std::unique_ptr<Storage> make(StorageLimits limits) {
    return std::make_unique<ShardedLruStorage>(limits, 16);
  }
};

template <class Impl>
class StorageConformance : public ::testing::Test {
 protected:
  std::unique_ptr<Storage> make(std::size_t max_bytes = 1 << 20,
                                std::size_t max_entry_bytes = 1 << 18) {
    return Impl::make(StorageLimits{max_bytes, max_entry_bytes});
  }
};

using StorageImplementations = ::testing::Types<OneShardLru, SixteenShardLru>;
TYPED_TEST_SUITE(StorageConformance, StorageImplementations);

TYPED_TEST(StorageConformance, FindsNothingUnderAnUnknownKey) {
  auto s = this->make();
  EXPECT_FALSE(s->lookup("nope", kNow).has_value());
  EXPECT_EQ(s->stats().entries, 0u);
}

TYPED_TEST(StorageConformance, ReturnsTheInsertedValueAndItsTimes) {
  auto s = this->make();
  auto v = blob(10);
  ASSERT_EQ(s->insert("k", "t/", v, meta_for(100, 200), kNow), InsertResult::stored);
  auto found = s->lookup("k", kNow);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->value.get(), v.get());
  EXPECT_EQ(found->meta.stored_at, kNow);
  EXPECT_EQ(found->meta.fresh_until, kNow + 100);
  EXPECT_EQ(found->meta.keep_until, kNow + 200);
}

TYPED_TEST(StorageConformance, ReplacesTheEntryUnderTheSameKey) {
  auto s = this->make();
  auto first = blob(1000);
  auto second = blob(10);
  s->insert("k", "t/", first, meta_for(100, 200), kNow);
  s->insert("k", "u/", second, meta_for(50, 60), kNow);
  auto found = s->lookup("k", kNow);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->value.get(), second.get());
  EXPECT_EQ(found->meta.keep_until, kNow + 60);
  EXPECT_EQ(s->stats().entries, 1u);
  EXPECT_EQ(s->stats().bytes, s->charge("k", "u/", *second));
  // The entry now lives under its new tag only.
  EXPECT_EQ(s->erase_tag_prefix("t/"), 0u);
  EXPECT_EQ(s->erase_tag_prefix("u/"), 1u);
}

TYPED_TEST(StorageConformance, KeepsAnExpiredEntryUntilItsKeepTime) {
  auto s = this->make();
  s->insert("k", "t/", blob(10), meta_for(100, 200), kNow);
  auto stale = s->lookup("k", kNow + 150);
  ASSERT_TRUE(stale.has_value());
  EXPECT_LT(stale->meta.fresh_until, kNow + 150);
  EXPECT_TRUE(s->lookup("k", kNow + 199).has_value());
}

TYPED_TEST(StorageConformance, ForgetsAnEntryOnceItsKeepTimeHasCome) {
  auto s = this->make();
  s->insert("k", "t/", blob(10), meta_for(100, 200), kNow);
  EXPECT_FALSE(s->lookup("k", kNow + 200).has_value());
  EXPECT_EQ(s->stats().entries, 0u);
  EXPECT_EQ(s->stats().bytes, 0u);
}

TYPED_TEST(StorageConformance, RefusesAnEntryAlreadyPastItsKeepTime) {
  auto s = this->make();
  EXPECT_EQ(s->insert("k", "t/", blob(10), meta_for(0, 0), kNow), InsertResult::expired);
  EXPECT_FALSE(s->lookup("k", kNow).has_value());
}

TYPED_TEST(StorageConformance, RefusesAnEntryOverMaxEntryBytesAndDropsTheOlderVersion) {
  auto s = this->make(1 << 20, 4096);
  s->insert("k", "t/", blob(100), meta_for(100, 200), kNow);
  EXPECT_EQ(s->insert("k", "t/", blob(8192), meta_for(100, 200), kNow), InsertResult::too_large);
  EXPECT_FALSE(s->lookup("k", kNow).has_value());
  EXPECT_EQ(s->stats().bytes, 0u);
  EXPECT_GE(s->stats().rejected, 1u);
}

TYPED_TEST(StorageConformance, ChargesKeyTagValueAndOverhead) {
  auto s = this->make();
  const std::string key(300, 'k');
  const std::string tag(200, 't');
  auto v = blob(1000);
  const std::size_t charged = s->charge(key, tag, *v);
  EXPECT_GT(charged, key.size() + tag.size() + v->byte_size());
  s->insert(key, tag, v, meta_for(100, 200), kNow);
  EXPECT_EQ(s->stats().bytes, charged);
}

TYPED_TEST(StorageConformance, ErasesOneKeyAndNothingElse) {
  auto s = this->make();
  s->insert("a", "t/", blob(10), meta_for(100, 200), kNow);
  s->insert("b", "t/", blob(10), meta_for(100, 200), kNow);
  EXPECT_TRUE(s->erase("a"));
  EXPECT_FALSE(s->erase("a"));
  EXPECT_FALSE(s->lookup("a", kNow).has_value());
  EXPECT_TRUE(s->lookup("b", kNow).has_value());
}

TYPED_TEST(StorageConformance, ErasesEveryEntryWhoseTagStartsWithThePrefix) {
  auto s = this->make();
  s->insert("k1", "acct1/store/s1/", blob(10), meta_for(100, 200), kNow);
  s->insert("k2", "acct1/store/s1/memo", blob(10), meta_for(100, 200), kNow);
  s->insert("k3", "acct1/store/s2/", blob(10), meta_for(100, 200), kNow);
  s->insert("k4", "acct1/stores", blob(10), meta_for(100, 200), kNow);
  s->insert("k5", "acct2/store/s1/", blob(10), meta_for(100, 200), kNow);

  EXPECT_EQ(s->erase_tag_prefix("acct1/store/s1/"), 2u);
  EXPECT_FALSE(s->lookup("k1", kNow).has_value());
  EXPECT_FALSE(s->lookup("k2", kNow).has_value());
  EXPECT_TRUE(s->lookup("k3", kNow).has_value());
  EXPECT_TRUE(s->lookup("k4", kNow).has_value());

  EXPECT_EQ(s->erase_tag_prefix("acct1/"), 2u);
  EXPECT_TRUE(s->lookup("k5", kNow).has_value());
  EXPECT_EQ(s->stats().entries, 1u);
}

TYPED_TEST(StorageConformance, ClearsEverything) {
  auto s = this->make();
  for (int i = 0; i < 50; ++i) {
    s->insert("k" + std::to_string(i), "t" + std::to_string(i % 3), blob(100), meta_for(100, 200),
              kNow);
  }
  s->clear();
  EXPECT_EQ(s->stats().entries, 0u);
  EXPECT_EQ(s->stats().bytes, 0u);
  EXPECT_FALSE(s->lookup("k1", kNow).has_value());
}

TYPED_TEST(StorageConformance, NeverExceedsItsByteBudget) {
  const std::size_t budget = 64 * 1024;
  auto s = this->make(budget, 8 * 1024);
  for (int i = 0; i < 500; ++i) {
    s->insert("key-" + std::to_string(i), "tag/", blob(1000), meta_for(100, 200), kNow);
    ASSERT_LE(s->stats().bytes, budget);
  }
  const auto st = s->stats();
  EXPECT_GT(st.evictions, 0u);
  EXPECT_GT(st.entries, 0u);
  EXPECT_LT(st.entries, 500u);
}

TYPED_TEST(StorageConformance, KeepsARecentlyUsedEntryWhileEvicting) {
  auto s = this->make(64 * 1024, 8 * 1024);
  auto hot = blob(500);
  s->insert("hot", "tag/", hot, meta_for(100, 200), kNow);
  for (int i = 0; i < 500; ++i) {
    s->insert("cold-" + std::to_string(i), "tag/", blob(1000), meta_for(100, 200), kNow);
    ASSERT_TRUE(s->lookup("hot", kNow).has_value()) << "evicted after " << i << " inserts";
  }
  EXPECT_GT(s->stats().evictions, 0u);
}

TYPED_TEST(StorageConformance, ShrinksToANewSmallerBudget) {
  auto s = this->make(1 << 20, 1 << 16);
  for (int i = 0; i < 100; ++i) {
    s->insert("k" + std::to_string(i), "t/", blob(2000), meta_for(100, 200), kNow);
  }
  s->set_limits(StorageLimits{32 * 1024, 1 << 16});
  s->insert("last", "t/", blob(10), meta_for(100, 200), kNow);
  EXPECT_LE(s->stats().bytes, 32u * 1024u);
}

TYPED_TEST(StorageConformance, AccountsBytesExactlyUnderConcurrentUse) {
  auto s = this->make(256 * 1024, 16 * 1024);
  std::atomic<bool> failed{false};
  auto worker = [&](int id) {
    for (int i = 0; i < 2000; ++i) {
      const std::string key = "k" + std::to_string((i * 7 + id) % 300);
      const std::string tag = "t" + std::to_string(i % 5) + "/";
      switch (i % 4) {
        case 0:
        case 1:
          s->insert(key, tag, blob(100 + (i % 700)), meta_for(100, 200), kNow);
          break;
        case 2:
          if (auto f = s->lookup(key, kNow); f && !f->value) failed = true;
          break;
        case 3:
          if (i % 40 == 3) {
            s->erase_tag_prefix(tag);
          } else {
            s->erase(key);
          }
          break;
      }
    }
  };
  std::thread a(worker, 1), b(worker, 2);
  a.join();
  b.join();
  EXPECT_FALSE(failed);
  EXPECT_LE(s->stats().bytes, 256u * 1024u);
  s->erase_tag_prefix("t");
  EXPECT_EQ(s->stats().entries, 0u);
  EXPECT_EQ(s->stats().bytes, 0u);
}

// Ordering detail of the LRU implementation itself (one shard, so one LRU list).
TEST(ShardedLruStorage, EvictsTheLeastRecentlyUsedEntryFirst) {
  auto v = blob(1000);
  ShardedLruStorage probe(StorageLimits{1 << 20, 1 << 20}, 1);
  const std::size_t one = probe.charge("a", "t/", *v);
  ShardedLruStorage s(StorageLimits{3 * one, 1 << 20}, 1);
  s.insert("a", "t/", blob(1000), meta_for(100, 200), kNow);
  s.insert("b", "t/", blob(1000), meta_for(100, 200), kNow);
  s.insert("c", "t/", blob(1000), meta_for(100, 200), kNow);
  ASSERT_TRUE(s.lookup("a", kNow).has_value());  // b is now the least recently used
  s.insert("d", "t/", blob(1000), meta_for(100, 200), kNow);
  EXPECT_TRUE(s.lookup("a", kNow).has_value());
  EXPECT_FALSE(s.lookup("b", kNow).has_value());
  EXPECT_TRUE(s.lookup("c", kNow).has_value());
  EXPECT_TRUE(s.lookup("d", kNow).has_value());
  EXPECT_EQ(s.stats().evictions, 1u);
}

TEST(ShardedLruStorage, ReleasesAValueOnlyWhenTheLastReaderDropsIt) {
  ShardedLruStorage s(StorageLimits{1 << 20, 1 << 20}, 4);
  s.insert("k", "t/", blob(10), meta_for(100, 200), kNow);
  auto held = s.lookup("k", kNow)->value;
  std::weak_ptr<const CacheObject> watch = held;
  s.erase("k");
  EXPECT_FALSE(watch.expired());
  held.reset();
  EXPECT_TRUE(watch.expired());
}

}  // namespace
}  // namespace sproxy::cache
