#include "cache/storage.hpp"

#include <algorithm>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>

namespace sproxy::cache {

namespace {

struct KeyHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

// A second, independent mix for shard selection, so the shard choice does not correlate
// with the bucket choice inside the shard's own hash table.
std::size_t shard_mix(std::string_view key) noexcept {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : key) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return static_cast<std::size_t>(h ^ (h >> 29));
}

}  // namespace

struct ShardedLruStorage::Shard {
  struct Node;
  struct TagGroup {
    Node* head = nullptr;  // intrusive list of the group's entries
  };
  using TagMap = std::map<std::string, TagGroup, std::less<>>;

  struct Node {
    std::string key;
    TagMap::iterator group;
    std::shared_ptr<const CacheObject> value;
    EntryMeta meta;
    std::size_t charged = 0;
    Node* lru_prev = nullptr;  // towards most recently used
    Node* lru_next = nullptr;  // towards least recently used
    Node* tag_prev = nullptr;
    Node* tag_next = nullptr;
  };

  mutable std::mutex mu;
  std::unordered_map<std::string_view, Node*, KeyHash, std::equal_to<>> index;
  TagMap tags;
  Node* mru = nullptr;
  Node* lru = nullptr;
  std::size_t bytes = 0;
  std::size_t budget = 0;
  std::size_t max_entry = 0;
  std::uint64_t evictions = 0;
  std::uint64_t expirations = 0;
  std::uint64_t rejected = 0;

  ~Shard() {
    for (auto& [k, n] : index) delete n;
  }

  void lru_unlink(Node* n) {
    (n->lru_prev ? n->lru_prev->lru_next : mru) = n->lru_next;
    (n->lru_next ? n->lru_next->lru_prev : lru) = n->lru_prev;
    n->lru_prev = n->lru_next = nullptr;
  }
  void lru_push_front(Node* n) {
    n->lru_prev = nullptr;
    n->lru_next = mru;
    if (mru) mru->lru_prev = n;
    mru = n;
    if (!lru) lru = n;
  }
  void tag_link(Node* n, TagMap::iterator g) {
    n->group = g;
    n->tag_prev = nullptr;
    n->tag_next = g->second.head;
    if (g->second.head) g->second.head->tag_prev = n;
    g->second.head = n;
  }
  void tag_unlink(Node* n) {
    auto g = n->group;
    (n->tag_prev ? n->tag_prev->tag_next : g->second.head) = n->tag_next;
    if (n->tag_next) n->tag_next->tag_prev = n->tag_prev;
    n->tag_prev = n->tag_next = nullptr;
    if (!g->second.head) tags.erase(g);
  }
  TagMap::iterator tag_group(std::string_view tag) {
    auto it = tags.find(tag);
    if (it == tags.end()) it = tags.emplace(std::string(tag), TagGroup{}).first;
    return it;
  }

  // Unlinks `n` from every structure; the caller deletes it after unlocking by chaining
  // it on `graveyard` (through lru_next), so values die outside the critical section.
  void remove(Node* n, Node*& graveyard) {
    index.erase(std::string_view(n->key));
    lru_unlink(n);
    tag_unlink(n);
    bytes -= n->charged;
    n->lru_next = graveyard;
    graveyard = n;
  }

  void evict_to(std::size_t limit, const Node* keep, Node*& graveyard) {
    while (bytes > limit && lru && lru != keep) {
      remove(lru, graveyard);
      ++evictions;
    }
  }

  static void bury(Node* graveyard) {
    while (graveyard) {
      Node* next = graveyard->lru_next;
      delete graveyard;
      graveyard = next;
    }
  }
};

ShardedLruStorage::ShardedLruStorage(StorageLimits limits, int shards)
    : shard_count_(static_cast<std::size_t>(std::max(1, shards))),
      shards_(std::make_unique<Shard[]>(shard_count_)) {
  set_limits(limits);
}

ShardedLruStorage::~ShardedLruStorage() = default;

ShardedLruStorage::Shard& ShardedLruStorage::shard_for(std::string_view key) {
  return shards_[shard_mix(key) % shard_count_];
}

std::size_t ShardedLruStorage::charge(std::string_view key, std::string_view tag,
                                      const CacheObject& value) const {
  // The tag is charged per entry although a group stores it once: an over-estimate that
  // also covers the group's map node.
  return kEntryOverhead + key.size() + tag.size() + value.byte_size();
}

std::optional<Found> ShardedLruStorage::lookup(std::string_view key, Micros now) {
  Shard& s = shard_for(key);
  Shard::Node* graveyard = nullptr;
  std::optional<Found> out;
  {
    std::lock_guard lock(s.mu);
    auto it = s.index.find(key);
    if (it == s.index.end()) return std::nullopt;
    Shard::Node* n = it->second;
    if (now >= n->meta.keep_until) {
      s.remove(n, graveyard);
      ++s.expirations;
    } else {
      s.lru_unlink(n);
      s.lru_push_front(n);
      out.emplace(Found{n->value, n->meta});
    }
  }
  Shard::bury(graveyard);
  return out;
}

InsertResult ShardedLruStorage::insert(std::string_view key, std::string_view tag,
                                       std::shared_ptr<const CacheObject> value, EntryMeta meta,
                                       Micros now) {
  Shard& s = shard_for(key);
  const std::size_t charged = value ? charge(key, tag, *value) : 0;
  InsertResult result = InsertResult::stored;
  if (!value || meta.keep_until <= now) result = InsertResult::expired;

  // Allocate outside the lock; dropped unused when the key already exists.
  auto fresh = std::make_unique<Shard::Node>();
  fresh->key.assign(key);
  Shard::Node* graveyard = nullptr;
  {
    std::lock_guard lock(s.mu);
    if (result == InsertResult::stored && (charged > s.max_entry || charged > s.budget)) {
      result = InsertResult::too_large;
    }
    auto it = s.index.find(key);
    if (result != InsertResult::stored) {
      // A refused newer version must not leave the older one behind.
      if (it != s.index.end()) s.remove(it->second, graveyard);
      ++s.rejected;
    } else {
      Shard::Node* n = nullptr;
      if (it != s.index.end()) {
        n = it->second;
        s.bytes -= n->charged;
        s.lru_unlink(n);
        if (n->group->first != tag) {
          s.tag_unlink(n);
          s.tag_link(n, s.tag_group(tag));
        }
        // The old value is released after unlocking (swapped into `value`).
        std::swap(n->value, value);
      } else {
        n = fresh.release();
        s.index.emplace(std::string_view(n->key), n);
        s.tag_link(n, s.tag_group(tag));
        n->value = std::move(value);
      }
      n->meta = meta;
      n->charged = charged;
      s.bytes += charged;
      s.lru_push_front(n);
      s.evict_to(s.budget, n, graveyard);
    }
  }
  Shard::bury(graveyard);
  return result;
}

bool ShardedLruStorage::erase(std::string_view key) {
  Shard& s = shard_for(key);
  Shard::Node* graveyard = nullptr;
  {
    std::lock_guard lock(s.mu);
    auto it = s.index.find(key);
    if (it == s.index.end()) return false;
    s.remove(it->second, graveyard);
  }
  Shard::bury(graveyard);
  return true;
}

std::size_t ShardedLruStorage::erase_tag_prefix(std::string_view prefix) {
  std::size_t erased = 0;
  for (std::size_t i = 0; i < shard_count_; ++i) {
    Shard& s = shards_[i];
    Shard::Node* graveyard = nullptr;
    {
      std::lock_guard lock(s.mu);
      auto g = s.tags.lower_bound(prefix);
      while (g != s.tags.end() && std::string_view(g->first).starts_with(prefix)) {
        auto next = std::next(g);
        // Removing the group's last node erases the group (and invalidates `g`).
        for (Shard::Node* n = g->second.head; n;) {
          Shard::Node* following = n->tag_next;
          s.remove(n, graveyard);
          ++erased;
          n = following;
        }
        g = next;
      }
    }
    Shard::bury(graveyard);
  }
  return erased;
}

void ShardedLruStorage::clear() {
  for (std::size_t i = 0; i < shard_count_; ++i) {
    Shard& s = shards_[i];
    Shard::Node* graveyard = nullptr;
    {
      std::lock_guard lock(s.mu);
      while (s.mru) s.remove(s.mru, graveyard);
    }
    Shard::bury(graveyard);
  }
}

void ShardedLruStorage::export_entries(Micros now, std::vector<StoredEntry>& out) const {
  for (std::size_t i = 0; i < shard_count_; ++i) {
    const Shard& s = shards_[i];
    std::lock_guard lock(s.mu);
    out.reserve(out.size() + s.index.size());
    for (const Shard::Node* n = s.lru; n; n = n->lru_prev) {
      if (now >= n->meta.keep_until) continue;  // gone for lookup; its removal is lookup's
      out.push_back(StoredEntry{n->key, n->group->first, n->value, n->meta});
    }
  }
}

StorageStats ShardedLruStorage::stats() const {
  StorageStats out;
  for (std::size_t i = 0; i < shard_count_; ++i) {
    const Shard& s = shards_[i];
    std::lock_guard lock(s.mu);
    out.entries += s.index.size();
    out.bytes += s.bytes;
    out.evictions += s.evictions;
    out.expirations += s.expirations;
    out.rejected += s.rejected;
  }
  return out;
}

void ShardedLruStorage::set_limits(StorageLimits limits) {
  const std::size_t per_shard = limits.max_bytes / shard_count_;
  for (std::size_t i = 0; i < shard_count_; ++i) {
    Shard& s = shards_[i];
    Shard::Node* graveyard = nullptr;
    {
      std::lock_guard lock(s.mu);
      s.budget = per_shard;
      s.max_entry = limits.max_entry_bytes;
      s.evict_to(s.budget, nullptr, graveyard);
    }
    Shard::bury(graveyard);
  }
}

}  // namespace sproxy::cache
