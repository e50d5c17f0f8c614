// Cache storage: a narrow key -> entry store that only stores, looks up and erases.
// It knows nothing of HTTP: what to store, for how long and what a write invalidates
// are decided by cache/policy.hpp and passed in as plain values.
//
// Contract:
// - An entry is a key, an invalidation tag, an immutable value shared by pointer, and
//   three times: when it was stored, until when it is fresh, and until when it may be
//   kept at all (`keep_until`, past which it is gone: lookup never returns it).
// - lookup(key, now) returns the entry (fresh or not) while now < keep_until and marks it
//   most recently used. Freshness is the caller's decision (meta.fresh_until).
// - insert replaces any entry under the same key. An entry is refused when its charged
//   size exceeds max_entry_bytes (or the budget of its shard) or when it is already past
//   keep_until; otherwise least recently used entries are evicted until everything fits
//   in max_bytes.
// - erase(key); erase_tag_prefix(prefix) erases every entry whose tag starts with
//   `prefix`; clear().
// - export_entries(now, out) appends a copy of every entry kept at `now` (key, tag, the
//   shared value, meta), least recently used first within a shard, so that inserting
//   them in order rebuilds each shard's recency. It is not one atomic snapshot: shards
//   are copied one at a time, each under its own lock for only as long as the copy.
// - Byte accounting charges keys, tags, the value's own estimate of its heap bytes and a
//   fixed per-entry overhead for the index and list nodes, so the budget bounds real
//   memory, not just payload bytes.
//
// Thread safety: every method is safe to call concurrently. ShardedLruStorage splits
// entries over shards by key hash, each shard with its own mutex, budget share and LRU
// list; critical sections do no allocation-heavy work beyond the node being inserted and
// never call out to user code (values are destroyed after the lock is released).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upstream/model.hpp"

namespace sproxy::cache {

using upstream::Micros;

// Base of every cached value: immutable once stored, shared by pointer with readers.
class CacheObject {
 public:
  virtual ~CacheObject() = default;
  // Estimated heap bytes held by this object (including itself).
  virtual std::size_t byte_size() const noexcept = 0;
};

struct EntryMeta {
  Micros stored_at = 0;
  Micros fresh_until = 0;
  Micros keep_until = 0;
};

struct Found {
  std::shared_ptr<const CacheObject> value;
  EntryMeta meta;
};

struct StorageLimits {
  std::size_t max_bytes = 256 * 1024 * 1024;
  std::size_t max_entry_bytes = 4 * 1024 * 1024;
};

struct StorageStats {
  std::uint64_t entries = 0;
  std::uint64_t bytes = 0;
  std::uint64_t evictions = 0;  // entries dropped to make room (not expiry, not erase)
  std::uint64_t expirations = 0;
  std::uint64_t rejected = 0;  // inserts refused (too large or already expired)
};

enum class InsertResult { stored, too_large, expired };

// One entry as export_entries copies it out.
struct StoredEntry {
  std::string key;
  std::string tag;
  std::shared_ptr<const CacheObject> value;
  EntryMeta meta;
};

class Storage {
 public:
  virtual ~Storage() = default;
  virtual std::optional<Found> lookup(std::string_view key, Micros now) = 0;
  virtual InsertResult insert(std::string_view key, std::string_view tag,
                              std::shared_ptr<const CacheObject> value, EntryMeta meta,
                              Micros now) = 0;
  virtual bool erase(std::string_view key) = 0;
  virtual std::size_t erase_tag_prefix(std::string_view prefix) = 0;
  virtual void clear() = 0;
  virtual void export_entries(Micros now, std::vector<StoredEntry>& out) const = 0;
  virtual StorageStats stats() const = 0;
  // New limits apply from the next insert (which evicts down to the new budget).
  virtual void set_limits(StorageLimits limits) = 0;
  // The bytes an entry with this key, tag and value would be charged.
  virtual std::size_t charge(std::string_view key, std::string_view tag,
                             const CacheObject& value) const = 0;
};

// Sharded LRU with a byte budget split evenly over the shards.
class ShardedLruStorage final : public Storage {
 public:
  ShardedLruStorage(StorageLimits limits, int shards);
  ~ShardedLruStorage() override;
  ShardedLruStorage(const ShardedLruStorage&) = delete;
  ShardedLruStorage& operator=(const ShardedLruStorage&) = delete;

  std::optional<Found> lookup(std::string_view key, Micros now) override;
  InsertResult insert(std::string_view key, std::string_view tag,
                      std::shared_ptr<const CacheObject> value, EntryMeta meta,
                      Micros now) override;
  bool erase(std::string_view key) override;
  std::size_t erase_tag_prefix(std::string_view prefix) override;
  void clear() override;
  void export_entries(Micros now, std::vector<StoredEntry>& out) const override;
  StorageStats stats() const override;
  void set_limits(StorageLimits limits) override;
  std::size_t charge(std::string_view key, std::string_view tag,
                     const CacheObject& value) const override;

  // Fixed bytes charged per entry for its index slot, list links and bookkeeping.
  static constexpr std::size_t kEntryOverhead = 160;
  // Fixed bytes charged per distinct tag (its index node), plus the tag's length.
  static constexpr std::size_t kTagOverhead = 96;

 private:
  struct Shard;
  Shard& shard_for(std::string_view key);
  std::size_t shard_count_;
  std::unique_ptr<Shard[]> shards_;
};

}  // namespace sproxy::cache
