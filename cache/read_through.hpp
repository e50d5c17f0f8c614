// ReadThroughCache: the proxy's view of the upstream. Reads are answered from cached
// views (whole-store and whole-account snapshots, stored answers) filtered for the
// caller's Viewer; misses on one key share one upstream fill; writes are forwarded and
// update (or invalidate) what they change before answering (read-your-writes). What to store, for
// how long, and whether an entry is served as a hit or stale and refreshed, is decided
// by cache/policy.hpp; entries live in a Storage (cache/storage.hpp).
//
// Time: callers pass `now` (microseconds since the epoch); the only clock read here is
// the steady clock around upstream calls (Answer::upstream_time).
// Thread safety: one instance serves every io thread; state is sharded with short
// critical sections and no lock is held across an await. Waiters resume on their own
// executors; at most max_waiters per key, each at most max_wait_ms (then 503 / 504).
// Errors are answers (an ApiError-shaped body with its status), never exceptions.
// Secret values: write bodies pass through and are never stored, logged or copied.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cache/shared_bytes.hpp"
#include "cache/storage.hpp"
#include "cache/viewer.hpp"
#include "config/config.hpp"
#include "upstream/model.hpp"
#include "upstream/route.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::cache {

using upstream::Micros;

enum class Outcome { hit, miss, stale, bypass };
std::string_view to_string(Outcome o);  // "HIT" | "MISS" | "STALE" | "BYPASS"

struct ReadOptions {
  // The client sent Cache-Control: no-cache: the entry is not used; the read joins a fill
  // that started after it arrived, or leads one (coalesced like a miss).
  bool revalidate = false;
  Viewer viewer;
  // The client the read is made for: every upstream call it leads is made for it
  // (ApiRequest::client, charged to its share of the rate budget). Empty: no client's.
  std::string client;
};

// Buffers a read reuses for the keys it builds (its view's entry key, a list's memo
// key). The caller owns it and passes it to every read it makes (a connection keeps one
// for all its requests), so a hit allocates nothing once the buffers have grown. It
// carries nothing from one read to the next.
struct ReadScratch {
  std::string entry_key;
  std::string memo_key;
};

// An answer ready to send: status and pre-serialized envelope bytes, shared with their
// owner (no copy).
struct Answer {
  unsigned status = 200;
  SharedBytes body;
  Outcome outcome = Outcome::bypass;
  Micros age = 0;                          // how old the cached data is (for the Age header)
  std::optional<std::string> retry_after;  // for 429 answers
  // The upstream's Ratelimit / Ratelimit-Policy headers, verbatim, when this answer
  // came from an upstream call made for it (a miss, a stale answer after a failed
  // refresh, a bypass, a write, a passed-through error); unset on cached hits.
  std::optional<std::string> ratelimit;
  std::optional<std::string> ratelimit_policy;
  // Time spent in the upstream calls made for this answer (all pages of a fill; every
  // waiter of a coalesced fill gets the fill's time); unset when no call was made for it.
  std::optional<std::chrono::nanoseconds> upstream_time;
};

struct CacheStats {
  std::uint64_t entries = 0;
  std::uint64_t bytes = 0;
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t stale_served = 0;
  std::uint64_t coalesced_waits = 0;
  std::uint64_t evictions = 0;
  std::uint64_t invalidations = 0;
  std::uint64_t upstream_calls = 0;
  std::uint64_t internal_errors = 0;  // exceptions that escaped a background fill
  std::uint64_t refreshes = 0;        // background refreshes started (refresh ahead, SWR)
  // Upstream answers that were not API answers (garbage 2xx bodies, errors without an
  // envelope): answered as 502 upstream_unavailable (or stale), never stored.
  std::uint64_t upstream_bad_answers = 0;
  // Cached entries a write updated in place from its answer (write-through).
  std::uint64_t write_updates = 0;
};

class CachedValue;  // cache/snapshot.hpp
class FleetTier;    // cache/fleet_tier.hpp

// Fleet mode (cache/fleet_sync.hpp): hears what every write may have changed, before the
// write's answer is returned, so that the fleet's other processes drop it. Bounded in
// time by its implementation; never fails (a failure is the publisher's to count).
class WritePublisher {
 public:
  virtual ~WritePublisher() = default;
  virtual boost::asio::awaitable<void> publish(std::string account,
                                               std::vector<std::string> tags) = 0;
  // Whether every publish so far has reached the fleet (the generations in Redis count
  // every write of this process). Until then this process's fills take no shared entry.
  virtual bool all_published() const { return true; }
};

// One main cache entry, as exported for (and restored from) the warm-start file.
struct CacheRecord {
  std::string key;
  std::string tag;
  EntryMeta meta;
  std::shared_ptr<const CachedValue> value;
};

class ReadThroughCache {
 public:
  // `storage` holds the entries (any Storage; tests/cache/storage_test.cpp is the suite
  // an implementation must pass); null: a ShardedLruStorage sized by `cfg`. Its limits
  // follow `cfg` on reconfigure.
  ReadThroughCache(config::CacheConfig cfg, std::shared_ptr<upstream::Upstream> upstream,
                   std::unique_ptr<Storage> storage = nullptr);
  ~ReadThroughCache();
  ReadThroughCache(const ReadThroughCache&) = delete;
  ReadThroughCache& operator=(const ReadThroughCache&) = delete;

  // A read route (list_stores, get_store, list_secrets, get_secret, get_quota). Secret
  // lists and gets are answered from the store's snapshot (every secret, fetched a
  // hundred per page over all pages, once per TTL) through the model's list engine;
  // store lists likewise from the account's snapshot. Paging and result_info count only
  // what the viewer sees; each viewer's list pages are memoized under their own key.
  // An upstream 4xx is passed on (404s cached for ttl.negative_ms). Every upstream
  // answer is checked first (policy::is_api_answer): one that is not an API answer is
  // an upstream failure (502 bad_response, or the contract's 429), never stored.
  // Transport failures, 5xx and 429: the last good entry is served (Outcome::stale)
  // while younger than stale_if_error, else the failure is the answer (502/503/504/429).
  // Refresh ahead and stale-while-revalidate (policy::decide_read) answer from the entry
  // and start one background refresh: the key's fill flight (foreground misses join it),
  // run detached on the reader's executor, stored only if nothing was invalidated since
  // it started, leaving the entry as it is on failure. With caching off (config or a
  // TTL of 0 for the view) reads pass through (Outcome::bypass).
  boost::asio::awaitable<Answer> read(upstream::Route route, ReadOptions options, Micros now);
  // The answer of a read (no revalidation) when it is at hand without waiting: a fresh
  // hit, a stale entry servable while a refresh runs, a refused query. nullopt when
  // `read` has to be awaited (a miss, an expired entry, a bypassed route); nothing is
  // counted then, so the caller's `read` counts it once. A refresh a hit calls for runs
  // on `ex`. Never suspends; the same answer `read` would give. `scratch` lends its
  // buffers for the call only.
  // A background refresh started so is made for `client` (see ReadOptions::client).
  std::optional<Answer> try_read(const upstream::Route& route, const Viewer& viewer, Micros now,
                                 const boost::asio::any_io_executor& ex, ReadScratch& scratch,
                                 std::string_view client = {});
  // Forwards a write unchanged and, before returning, brings the cache up to date:
  // - a 2xx API answer is applied to the cached entries it changed (write-through, see
  //   write_effect.hpp): the store's secrets, the account's stores and the quota are
  //   updated in place, for every viewer at once, so reading them back costs no upstream
  //   call; an entry the answer cannot be applied to with certainty is invalidated;
  // - any other ending (an error, a timeout, a garbage answer, the coroutine destroyed
  //   mid-call) invalidates the tags the write may have changed (policy::invalidated_tags).
  // Either way a fill that started before the write never stores its (older) result.
  // `request.client` names the client the write is charged to.
  boost::asio::awaitable<Answer> write(upstream::Route route, upstream::ApiRequest request,
                                       Micros now);

  void purge_all();
  void purge_account(const std::string& account_id);
  void purge_store(const std::string& account_id, const std::string& store_id);

  // The main entries kept at `now`, shard by shard (each shard locked only while its
  // entries are copied by pointer), least recently used first within a shard.
  std::vector<CacheRecord> export_records(Micros now) const;
  // Warm start (cache/persist.hpp): restored entries keep their stored_at and
  // fresh_until (capped at their kind's current TTL), so one is fresh only until its
  // original expiry and then servable only as stale; they carry their invalidation tags.
  // Stores `records` in order (the storage's byte budget evicts the least recently used
  // first). Snapshot sequence numbers of the records must be unique among them; later
  // fills are numbered past them. Meant for an empty cache before serving. Records that
  // cannot be fresh or stale at `now`, were stored "after" now (clock went back), are
  // of a kind no longer cached, or are memo pages are skipped. Returns how many stored.
  std::size_t restore(std::vector<CacheRecord> records, Micros now);

  CacheStats stats() const;

  // Fleet mode (cache/fleet_sync.hpp). Call join_fleet once, before serving: from then on
  // every write hands the tags it may have changed (policy::invalidated_tags) to
  // `publisher` before it returns, and a read serves a cached entry only while its `now`
  // is before the deadline set by set_serve_cached_until (initially: always); past it,
  // every read goes upstream as a miss does (coalesced, stored). Without join_fleet the
  // read path does not look at the deadline at all.
  void join_fleet(std::shared_ptr<WritePublisher> publisher);
  // Fleet mode's second-level cache (cache/fleet_tier.hpp). Call once, before serving:
  // from then on a fill asks `tier` before the upstream and shares what it fetched.
  // Hits never ask it.
  void share_fills(std::shared_ptr<FleetTier> tier);
  // Drops the shared entries an /admin/purge of the same scope drops here (see
  // FleetTier::purge); false when Redis could not be asked. No-op without a tier.
  boost::asio::awaitable<bool> purge_shared(std::string account_id, std::string store_id);
  void set_serve_cached_until(Micros deadline);
  // Drops the entries of `tags` (bump, then erase: a fill that started before never
  // stores), as a local write's invalidation does.
  void invalidate_tags(const std::vector<std::string>& tags);
  // No fill started before this call stores its result (entries stay as they are).
  void fence_fills();
  // The distinct invalidation tags of the main entries held at `now`.
  std::vector<std::string> cached_tags(Micros now) const;

  // Replaces TTLs and limits (reload); existing entries keep their expiry.
  void reconfigure(const config::CacheConfig& cfg);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace sproxy::cache
