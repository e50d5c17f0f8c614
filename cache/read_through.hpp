// ReadThroughCache: the proxy's view of the upstream. Reads are answered from cache
// (with TTLs per kind, miss coalescing, negative caching and stale-if-error); writes are
// forwarded and then invalidate exactly what they change before the answer is returned
// (read-your-writes through the same proxy).
//
// Contract:
// - `read` takes a read route (list_stores, get_store, list_secrets, get_secret,
//   get_quota). Secret lists and gets are answered from a whole-store snapshot (every
//   secret of the store, fetched with per_page=100 over all pages, once per TTL) through
//   the model's list engine, filtered by the viewer's visibility; store lists likewise
//   from one account snapshot, filtered by the viewer's stores (paging and result_info
//   count only what the viewer sees; one cached snapshot serves every viewer, each
//   viewer's pages memoized under their own key). An upstream error
//   answer (4xx) is passed on as it is (404s negatively cached for a short TTL).
// - `write` takes a write route and its request, forwards it unchanged, and invalidates
//   before returning. A fill that started before a write's invalidation never stores
//   its (pre-write) result afterwards (generation counters).
// - Every upstream answer is checked before it is stored or passed on
//   (policy::is_api_answer): a 2xx must be a success envelope with the route's result
//   shape, any other status a failure envelope. One that is not is an upstream failure
//   (502 upstream_unavailable: bad_response; a 429 the contract's rate-limit error):
//   never stored, never replacing an entry, counted in upstream_bad_answers.
// - Transport failures, 5xx and 429 from the upstream: the last good entry is served
//   (Outcome::stale) while younger than stale_if_error; otherwise the failure is
//   returned as an ApiError-shaped answer (502/503/504/429).
// - Refresh ahead (refresh_ahead_ms): a read of a positive entry within that long before
//   its expiry (and within the last quarter of its TTL) is answered from the entry (HIT)
//   and starts one background refresh.
//   Stale-while-revalidate (stale_while_revalidate_ms): a read of a positive entry expired
//   by less than that is answered from it (STALE) and starts one background refresh;
//   later it is an ordinary miss. A background refresh is the key's fill flight (at most
//   one per key; a foreground miss joins it), runs detached on the reader's executor,
//   stores only when no invalidation happened since it started, and on failure leaves the
//   entry as it is (stale-if-error rules apply). Negative entries are never refreshed so.
// - With caching disabled (config or a TTL of 0 for that kind), reads pass through
//   (Outcome::bypass).
// - Warm start (cache/persist.hpp): export_records copies out the views' main entries
//   (not memoized list pages, rebuilt on demand); restore stores such records back with
//   their original stored_at and fresh_until, so a restored entry is fresh only until
//   its original expiry (capped at the current TTL of its kind) and afterwards only
//   servable as stale (stale-if-error, stale-while-revalidate). Restored entries carry
//   their invalidation tags: writes and purges erase them like any other entry.
//
// Time: callers pass `now` (microseconds since the epoch); the only clock read here is the
// steady clock around upstream calls, to report their duration (Answer::upstream_time).
// Thread safety: one instance is shared by all io threads; state is sharded with short
// critical sections and no lock is held across an await. Coalesced waiters resume on
// their own executors. Bounded: at most max_waiters waiters per key, each waiting at most
// max_wait_ms (then 503 / 504).
// Secret values: write bodies pass through and are never stored, logged or copied into
// any cache entry.
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
#include "config/config.hpp"
#include "upstream/model.hpp"
#include "upstream/route.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::cache {

using upstream::Micros;

enum class Outcome { hit, miss, stale, bypass };
std::string_view to_string(Outcome o);  // "HIT" | "MISS" | "STALE" | "BYPASS"

// What a caller may see. Secrets: `all` sees every secret; otherwise a secret is visible
// when its scopes include at least one of `services` (sorted, unique). Stores: a stores
// list shows only the stores in `stores` (sorted, unique), or every store when it is
// empty (independent of `all`: a store limit binds admins too).
struct Viewer {
  bool all = true;
  std::vector<std::string> services;
  std::vector<std::string> stores;
};

// True when `viewer` may see `secret` (the rule above). Pure; no allocation.
bool is_visible(const Viewer& viewer, const upstream::Secret& secret) noexcept;
// True when `viewer` may see the store with this id in a stores list. Pure; no allocation.
bool is_visible_store(const Viewer& viewer, std::string_view store_id) noexcept;

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
};

class CachedValue;  // cache/snapshot.hpp

// One main cache entry, as exported for (and restored from) the warm-start file.
struct CacheRecord {
  std::string key;
  std::string tag;
  EntryMeta meta;
  std::shared_ptr<const CachedValue> value;
};

class ReadThroughCache {
 public:
  ReadThroughCache(config::CacheConfig cfg, std::shared_ptr<upstream::Upstream> upstream);
  ~ReadThroughCache();
  ReadThroughCache(const ReadThroughCache&) = delete;
  ReadThroughCache& operator=(const ReadThroughCache&) = delete;

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
  // `request.client` names the client the write is charged to.
  boost::asio::awaitable<Answer> write(upstream::Route route, upstream::ApiRequest request,
                                       Micros now);

  void purge_all();
  void purge_account(const std::string& account_id);
  void purge_store(const std::string& account_id, const std::string& store_id);

  // The main entries kept at `now`, shard by shard (each shard locked only while its
  // entries are copied by pointer), least recently used first within a shard.
  std::vector<CacheRecord> export_records(Micros now) const;
  // Stores `records` in order (the storage's byte budget evicts the least recently used
  // first). Snapshot sequence numbers of the records must be unique among them; later
  // fills are numbered past them. Meant for an empty cache before serving. Records that
  // cannot be fresh or stale at `now`, were stored "after" now (clock went back), are
  // of a kind no longer cached, or are memo pages are skipped. Returns how many stored.
  std::size_t restore(std::vector<CacheRecord> records, Micros now);

  CacheStats stats() const;
  // Replaces TTLs and limits (reload); existing entries keep their expiry.
  void reconfigure(const config::CacheConfig& cfg);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace sproxy::cache
