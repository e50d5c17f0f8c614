// HTTP caching decisions of the read-through cache, kept apart from storage: which
// cached view answers a read route, its key and invalidation tag, its TTL, whether an
// upstream answer may be stored (and for how long), when a stored entry is fresh or
// still servable as stale, which tags a write invalidates, and how the cache talks to
// the upstream (targets it builds, how a transport failure becomes an API error).
//
// Pure functions over values; no clocks (callers pass `now`), no I/O, thread-safe.
//
// Keys and tags. Every cache entry belongs to exactly one invalidation tag:
//   "<account>/stores"            the account's stores list (and its memoized pages)
//   "<account>/quota"             the account's quota
//   "<account>/store/<store>/"    one store: its GET answer, its whole-store secrets
//                                 snapshot, memoized list answers, negative entries
// Tags nest under "<account>/", so a purge of an account erases by that prefix.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cache/storage.hpp"
#include "config/config.hpp"
#include "upstream/list_query.hpp"
#include "upstream/model.hpp"
#include "upstream/route.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::cache {
class CachedValue;  // cache/snapshot.hpp
}

namespace sproxy::cache::policy {

using upstream::Micros;

inline constexpr Micros kMicrosPerMilli = 1000;

// The cached view a read route is answered from.
enum class View {
  stores,   // whole-account stores snapshot: GET /stores (any page/order)
  store,    // one store's GET answer
  secrets,  // whole-store secrets snapshot: GET .../secrets (any query) and GET .../secrets/{id}
  quota,    // GET /quota
};

// nullopt for routes that are not cacheable reads (writes).
std::optional<View> view_of(upstream::RouteKind kind);
std::string_view to_string(View v);

// TTL of a view in microseconds; 0 means "do not cache this view".
Micros ttl_of(View v, const config::CacheTtlConfig& ttl);

// The invalidation tag of a view's entries (see the file comment).
std::string tag_of(View v, std::string_view account_id, std::string_view store_id);
// The same, written into `out` (cleared first).
void tag_of(std::string& out, View v, std::string_view account_id, std::string_view store_id);
// Prefix covering every tag of an account / of a store.
std::string account_prefix(std::string_view account_id);
std::string store_tag(std::string_view account_id, std::string_view store_id);
// The key of a view's main entry: its snapshot or its stored answer.
std::string entry_key(View v, std::string_view account_id, std::string_view store_id);
// The same, written into `out` (cleared first) so the hit path can reuse a buffer.
void entry_key(std::string& out, View v, std::string_view account_id, std::string_view store_id);
// The view whose main entry `key` is (the inverse of entry_key); nullopt for anything
// else, memo keys included.
std::optional<View> view_of_entry_key(std::string_view key);
// The tag of memoized list answers of a view (nested under the view's own tag, so
// invalidating the view drops them; a new snapshot drops the previous one's).
std::string memo_tag(View v, std::string_view account_id, std::string_view store_id);

// Appends the key of a memoized list answer within one snapshot (identified by its
// sequence number) to `out` (cleared first), so the hit path can reuse a buffer.
// The query is normalized: equal queries written differently share one key. A stores
// list key names the viewer's stores (`viewer_stores`, sorted, unique; empty = any).
void memo_key(std::string& out, std::string_view entry_key, std::uint64_t snapshot_seq,
              const upstream::StoreListQuery& q, const std::vector<std::string>& viewer_stores);
// True for the key of a memoized list answer (as opposed to a view's main entry).
bool is_memo_key(std::string_view key) noexcept;
void memo_key(std::string& out, std::string_view entry_key, std::uint64_t snapshot_seq,
              const upstream::SecretListQuery& q, bool viewer_all,
              const std::vector<std::string>& viewer_services);

// ---------------------------------------------------------------------------------------
// Storability and freshness

// What an upstream answer to a fill means for the cache.
enum class Verdict {
  store,     // 2xx: store it for the view's TTL
  negative,  // 404 store_not_found / secret_not_found: store it for ttl.negative_ms
  refuse,    // any other 4xx: an upstream "no", passed on, not stored, never masked by stale
  failure,   // 5xx or 429: pass on unless a stale entry can be served instead
};
Verdict classify(const upstream::ApiResponse& response);

// Freshness window of an entry stored at `now`.
struct Lifetime {
  Micros fresh_until = 0;
  Micros keep_until = 0;  // fresh_until + the stale allowance passed in, for positive entries
};
Lifetime lifetime(Micros now, Micros ttl, Micros stale_if_error, bool negative);

bool is_fresh(Micros fresh_until, Micros now);
// A stale entry may stand in for a failed upstream until stale_if_error has passed
// since its expiry. Storage keeps it until keep_until, which the read-through cache sets
// from the longer of stale_if_error and stale_while_revalidate.
bool servable_as_stale(Micros fresh_until, Micros now, Micros stale_if_error);

// True for an entry that holds data: a snapshot, or a stored 2xx answer. A stored error
// (a negative entry) is not: it is never served stale nor refreshed in the background,
// only refetched once it expires.
bool is_positive(const CachedValue& value) noexcept;

// The background refresh windows of the cache's settings (0 turns one off).
struct RefreshWindows {
  // Before expiry: a positive entry read within this long of its expiry is refreshed
  // (the window is capped at the last 1/kRefreshAheadShare of the entry's life, so a
  // TTL not much longer than the window does not turn into back-to-back refreshes).
  Micros refresh_ahead = 0;
  // After expiry: a positive entry expired by less than this is served stale.
  Micros stale_while_revalidate = 0;
};
inline constexpr Micros kRefreshAheadShare = 4;

// How a read serves the entry it found.
enum class Serve {
  miss,   // not at all: the read fetches (or joins the fetch) and waits
  hit,    // fresh: answered from the entry
  stale,  // expired but within stale-while-revalidate: answered from the entry
};
struct ReadDecision {
  Serve serve = Serve::miss;
  bool refresh = false;  // start one background refresh of the entry's view
  bool operator==(const ReadDecision&) const = default;
};

// What a read (not a revalidation) does with the entry it found at `now`.
ReadDecision decide_read(const EntryMeta& entry, bool positive, Micros now,
                         const RefreshWindows& windows);

// ---------------------------------------------------------------------------------------
// Invalidation

// The tags a write invalidates. `response` (when the write got an answer) lets a store
// create name the store it made. Every write invalidates, whatever its outcome: a write
// that failed in transport or with a 5xx may still have been applied.
std::vector<std::string> invalidated_tags(const upstream::Route& write_route,
                                          const upstream::ApiResponse* response);

// ---------------------------------------------------------------------------------------
// Checking upstream answers

// True when `response` is an answer the API gives to a request of `kind`: a 2xx holds a
// success envelope (`success: true`) whose result has the route's shape (a store, a
// secret, the quota, an array of stores or secrets; anything for a delete), and any other
// status holds a failure envelope (`success: false`, a non-empty `errors` array of
// {code, message}). With `result_checked_elsewhere` a 2xx is not looked at (list pages:
// their parser checks them). Parses the body: only for answers from the upstream.
bool is_api_answer(upstream::RouteKind kind, const upstream::ApiResponse& response,
                   bool result_checked_elsewhere = false);

// What an upstream answer that is not an API answer (is_api_answer false) becomes:
// - a 429: the contract's rate-limit error with the upstream's Retry-After (its seconds
//   when it gives any, else kDefaultRetryAfterSeconds), since whoever said it, it means
//   "slow down";
// - anything else (a 2xx with a garbage body, a 5xx HTML page, a 4xx without an
//   envelope): UpstreamErrc::bad_response, which the cache answers as 502
//   upstream_unavailable (or with a stale entry, stale-if-error). A 4xx without the API's
//   envelope did not come from the Secrets Store API (every API answer is an envelope):
//   it is a load balancer, a firewall or a wrong base_url refusing the proxy's own
//   request, which the client can neither fix nor should be told is its fault; passed
//   on as a 4xx it would also erase good cached entries (an upstream "no"), so it is an
//   upstream failure like a 5xx.
// The Ratelimit headers of a 429 are kept. `wall_now` reads an HTTP-date Retry-After.
upstream::CallResult replace_non_api_answer(upstream::ApiResponse response, Micros wall_now);
inline constexpr long kDefaultRetryAfterSeconds = 60;

// ---------------------------------------------------------------------------------------
// Talking to the upstream

// The request target of a route, rebuilt from its parts (query re-encoded in order).
std::string upstream_target(const upstream::Route& route);
// One page of a whole-view fetch: .../stores?per_page=100&page=N or
// .../stores/{id}/secrets?per_page=100&page=N.
std::string page_target(View v, std::string_view account_id, std::string_view store_id, long page);
inline constexpr long kFetchPerPage = 100;
// A hard stop for a runaway whole-view fetch (an upstream that never ends its pages).
inline constexpr long kMaxFetchPages = 1000;

// The API error a transport failure becomes when nothing can be served instead:
// timeout -> 504; overloaded/circuit open/shutting down -> 503; local rate limit -> 429;
// anything else -> 502.
upstream::ApiError transport_error(boost::system::error_code ec);

}  // namespace sproxy::cache::policy
