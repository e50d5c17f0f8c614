// FleetTier: fleet mode's second-level cache. A process that misses locally asks Redis
// before the upstream; what one process fetched, every process can use. Only fills touch
// it: a cache hit never does.
//
// Contract:
// - claim() runs one Lua script: it reads the entry's generation (the store's for a
//   store's views, the account's for its stores list and quota; see fleet_channel.hpp)
//   and the shared entry. An entry stored under that same generation and fresh beyond
//   `min_fresh_until` is returned (found). Otherwise the script takes the entry's fill
//   lock (SET NX PX lock_ttl) and the caller leads: it calls the upstream and then
//   share()s. When another process holds the lock, claim() polls (poll_min doubling to
//   poll_max) until the entry appears, the lock is released (then it takes it), or
//   max_wait passes (then it calls the upstream itself). A fleet-wide stampede on one
//   key thus costs one upstream call.
// - share() stores a fill's value (a snapshot or a stored answer, 2xx or a cached 404)
//   for its remaining freshness, only if the generation is still the one claim() read
//   (a write in between makes the fetched data suspect), and releases the lock if this
//   claim holds it. Without a value it only releases the lock.
// - Entries are sealed with AES-256-GCM under the fleet's key: a Redis reader learns ids
//   and sizes, never names, comments or scopes. The generation and freshness stand in
//   clear before the sealed part (the script compares them); the Redis key, generation
//   and freshness are authenticated with it. An entry that does not open (another key,
//   tampered with) is a miss, and is overwritten by the next fill.
// - Redis failures never fail a read: claim() then says `alone` and the fill calls the
//   upstream; share() failures are counted.
// Keys, in the account's hash slot: {<prefix>:acct:<account>}:l2:<entry key> (the entry)
// and {<prefix>:acct:<account>}:fill:<entry key> (its fill lock).
// Thread safety: any thread; commands are serialized by the connection.
#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "cache/storage.hpp"
#include "upstream/redis_connection.hpp"
#include "upstream/redis_script.hpp"

namespace sproxy::cache {

class CachedValue;

struct FleetTierOptions {
  std::string key_prefix;
  std::string seal_key;  // 32 bytes
  std::string origin;    // this process's id (the value of the locks it takes)
  std::chrono::milliseconds lock_ttl{5'000};
  std::chrono::milliseconds max_wait{5'000};
  std::chrono::milliseconds poll_min{2};
  std::chrono::milliseconds poll_max{50};
  std::function<Micros()> wall_clock;  // epoch microseconds; required
};

struct FleetTierStats {
  std::uint64_t hits = 0;         // claims answered from the shared entry
  std::uint64_t hits_waited = 0;  // ... of those, after waiting for another process's fill
  std::uint64_t misses = 0;       // claims that led a fill (took the lock)
  std::uint64_t waited_out = 0;   // claims that waited max_wait and called the upstream
  std::uint64_t errors = 0;       // claims Redis could not answer
  std::uint64_t undecodable = 0;  // shared entries that did not open or decode
  std::uint64_t stored = 0;       // values shared
  std::uint64_t store_errors = 0;
  std::uint64_t purges = 0;
};

class FleetTier {
 public:
  // What a miss may do.
  struct Claim {
    enum class Kind { found, lead, alone };
    Kind kind = Kind::alone;
    std::shared_ptr<const CachedValue> value;  // found
    EntryMeta meta;                            // found
    std::string entry_key;                     // Redis keys (empty: not shareable)
    std::string generation_key;
    std::string lock_key;
    std::string generation;  // as read (empty: unknown, nothing will be shared)
    std::string lock_token;  // set while this claim holds the lock
  };

  // Throws std::invalid_argument without a connection, a 32-byte key or a wall clock.
  FleetTier(std::shared_ptr<upstream::RedisConnection> redis, FleetTierOptions options);

  // For the entry `key` (policy::entry_key) with invalidation `tag`. `next_seq` numbers a
  // found snapshot on the local cache's sequence.
  boost::asio::awaitable<Claim> claim(std::string key, std::string tag, Micros min_fresh_until,
                                      std::function<std::uint64_t()> next_seq);
  // `value` may be null (release only).
  boost::asio::awaitable<void> share(Claim claim, std::shared_ptr<const CachedValue> value,
                                     EntryMeta meta, std::string key, std::string tag);
  // Drops shared entries: one store's (account and store set), one account's (store
  // empty), or every account's (both empty). The latter two walk the keys with SCAN.
  boost::asio::awaitable<bool> purge(std::string account, std::string store);

  FleetTierStats stats() const;
  upstream::RedisConnection& connection() const { return *redis_; }

 private:
  struct Counters {
    // hits: found without waiting (FleetTierStats::hits adds the waited ones).
    std::atomic<std::uint64_t> hits{0}, hits_waited{0}, misses{0}, waited_out{0}, errors{0},
        undecodable{0}, stored{0}, store_errors{0}, purges{0};
  };
  bool open_entry(Claim& c, const std::string& blob, const std::string& key,
                  const std::function<std::uint64_t()>& next_seq);
  boost::asio::awaitable<bool> purge_matching(std::string pattern);

  const std::shared_ptr<upstream::RedisConnection> redis_;
  const FleetTierOptions options_;
  upstream::RedisScript claim_script_;
  upstream::RedisScript share_script_;
  std::atomic<std::uint64_t> next_token_{0};
  Counters counters_;
};

}  // namespace sproxy::cache
