// The read-through cache's shared state and its fills, shared by the files that
// implement ReadThroughCache (read_through.cpp: reads; fill.cpp: whole-view fetches and
// fills; write_through.cpp: writes and purges). Not part of the cache's interface.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "cache/flight.hpp"
#include "cache/generations.hpp"
#include "cache/policy.hpp"
#include "cache/read_through.hpp"
#include "cache/snapshot.hpp"
#include "cache/storage.hpp"

namespace sproxy::cache {
class FleetTier;
}

namespace sproxy::cache::detail {

namespace asio = boost::asio;
using policy::View;
using upstream::ApiError;
using upstream::ApiRequest;
using upstream::ApiResponse;
using upstream::CallResult;
using upstream::RouteKind;

Answer answer_from_error(const ApiError& e, Outcome outcome);
Answer answer_from_response(ApiResponse r, Outcome outcome);
Answer answer_from_call(CallResult r, Outcome outcome);
Answer answer_with_body(unsigned status, SharedBytes body, Outcome outcome, Micros age);

// The upstream's rate-limit headers of the latest answer behind a fetch.
struct RateLimitHeaders {
  std::optional<std::string> ratelimit;
  std::optional<std::string> ratelimit_policy;

  void take_from(const ApiResponse& r) {
    ratelimit = r.ratelimit;
    ratelimit_policy = r.ratelimit_policy;
  }
  void copy_to(Answer& a) const {
    a.ratelimit = ratelimit;
    a.ratelimit_policy = ratelimit_policy;
  }
};

// A whole-view fetch: the view's value, or the upstream's non-2xx answer, or a transport
// failure (a 2xx that does not parse counts as bad_response).
struct Fetched {
  std::shared_ptr<const CachedValue> value;
  std::optional<ApiResponse> refusal;
  boost::system::error_code error;
  RateLimitHeaders ratelimit;  // of the last upstream answer (a paged fetch makes several)
  std::chrono::nanoseconds upstream_time{0};  // summed over its calls
};

// The outcome of one fill, shared by every waiter of its flight.
struct FillResult {
  std::shared_ptr<const CachedValue> value;  // what to answer from, when there is one
  EntryMeta meta;                            // the value's stored lifetime
  bool stored = false;                       // value is in storage (memos may hang off it)
  Outcome outcome = Outcome::miss;           // miss | stale
  std::optional<Answer> direct;              // the answer itself when there is no value
  RateLimitHeaders ratelimit;                // of the fill's upstream answer, for `value`
  std::optional<std::chrono::nanoseconds> upstream_time;  // of the fill's calls
  // The leader's client was refused for its share of the rate budget (no upstream call
  // was made for it): the answer is the leader's own, not one for its waiters.
  bool client_refused = false;
};

struct FillFlight : Flight<FillResult> {
  Generations::Ticket ticket;  // taken when the flight started, before its upstream call
  Micros started_at = 0;       // when the request of its leader arrived (its `now`)
};

// Which writes of an account overlap in time. A write that met no other write of its
// account from its start to its answer may apply an additive change (the quota's usage)
// to an entry fetched before it started; any overlap makes that a doubt.
class WriteTracker {
 public:
  using Token = std::uint64_t;
  Token begin(const std::string& account);
  // Whether the write begun with `token` overlapped no other; ends it. Call once.
  bool end(const std::string& account, Token token);

 private:
  struct Account {
    std::size_t in_flight = 0;
    std::uint64_t events = 0;  // begins and ends so far
  };
  std::mutex mu_;
  std::unordered_map<std::string, Account> accounts_;  // only accounts with writes in flight
};

// The cache's shared state. Lives as long as the ReadThroughCache or any fill still
// running in the background (fills hold a shared_ptr to it).
struct Core {
  // Settings read on every request; replaced field by field on reconfigure.
  struct Settings {
    std::atomic<bool> enabled{true};
    std::atomic<Micros> ttl_stores{0}, ttl_store{0}, ttl_secrets{0}, ttl_quota{0};
    std::atomic<Micros> ttl_negative{0};
    std::atomic<Micros> stale_if_error{0};
    std::atomic<Micros> refresh_ahead{0};
    std::atomic<Micros> stale_while_revalidate{0};
    std::atomic<std::size_t> max_waiters{0};
    std::atomic<std::int64_t> max_wait_ms{0};
  };

  struct Counters {
    std::atomic<std::uint64_t> hits{0}, misses{0}, stale_served{0}, coalesced_waits{0},
        invalidations{0}, upstream_calls{0}, internal_errors{0}, refreshes{0}, bad_answers{0},
        write_updates{0};
  };

  Core(const config::CacheConfig& cfg, std::shared_ptr<upstream::Upstream> u,
       std::unique_ptr<Storage> s)
      : up(std::move(u)),
        storage(s ? std::move(s)
                  : std::make_unique<ShardedLruStorage>(
                        StorageLimits{cfg.max_bytes, cfg.max_entry_bytes}, cfg.shards)) {
    apply(cfg);
  }

  void apply(const config::CacheConfig& cfg) {
    const config::CacheTtlConfig& t = cfg.ttl;
    settings.ttl_stores = policy::ttl_of(View::stores, t);
    settings.ttl_store = policy::ttl_of(View::store, t);
    settings.ttl_secrets = policy::ttl_of(View::secrets, t);
    settings.ttl_quota = policy::ttl_of(View::quota, t);
    settings.ttl_negative = std::max<std::int64_t>(t.negative_ms, 0) * policy::kMicrosPerMilli;
    settings.stale_if_error =
        std::max<std::int64_t>(cfg.stale_if_error_ms, 0) * policy::kMicrosPerMilli;
    settings.refresh_ahead =
        std::max<std::int64_t>(cfg.refresh_ahead_ms, 0) * policy::kMicrosPerMilli;
    settings.stale_while_revalidate =
        std::max<std::int64_t>(cfg.stale_while_revalidate_ms, 0) * policy::kMicrosPerMilli;
    settings.max_waiters = std::max<std::size_t>(cfg.max_waiters, 1);
    settings.max_wait_ms = std::max(cfg.max_wait_ms, 1);
    settings.enabled = cfg.enabled;
  }

  policy::RefreshWindows refresh_windows() const {
    return {settings.refresh_ahead.load(std::memory_order_relaxed),
            settings.stale_while_revalidate.load(std::memory_order_relaxed)};
  }

  Micros ttl(View v) const {
    switch (v) {
      case View::stores:
        return settings.ttl_stores;
      case View::store:
        return settings.ttl_store;
      case View::secrets:
        return settings.ttl_secrets;
      case View::quota:
        return settings.ttl_quota;
    }
    return 0;
  }

  // How long past its expiry a positive entry is kept: for whichever is longer,
  // stale-if-error or stale-while-revalidate.
  Micros keep_stale() const {
    return std::max<Micros>(settings.stale_if_error, settings.stale_while_revalidate);
  }

  // The number of a snapshot or stored answer whose data has just arrived (see next_seq).
  std::uint64_t take_seq() { return next_seq.fetch_add(1, std::memory_order_relaxed) + 1; }

  asio::awaitable<CallResult> call(ApiRequest req) {
    counters.upstream_calls.fetch_add(1, std::memory_order_relaxed);
    co_return co_await up->call(std::move(req));
  }

  // The same, adding the call's duration to `spent` (a caller's local, alive across the
  // await because the caller awaits this directly).
  asio::awaitable<CallResult> timed_call(ApiRequest req, std::chrono::nanoseconds* spent) {
    const auto started = std::chrono::steady_clock::now();
    CallResult r = co_await call(std::move(req));
    *spent += std::chrono::steady_clock::now() - started;
    co_return r;
  }

  // An upstream answer to a `kind` request that is not an API answer becomes the failure
  // it stands for (policy::replace_non_api_answer), and is counted. `pages`: a 2xx is a
  // list page, which its parser checks.
  CallResult checked(RouteKind kind, CallResult r, Micros now, bool pages = false) {
    if (!r || policy::is_api_answer(kind, *r, pages)) return r;
    counters.bad_answers.fetch_add(1, std::memory_order_relaxed);
    return policy::replace_non_api_answer(std::move(*r), now);
  }

  void invalidate(const std::vector<std::string>& tags) {
    for (const auto& tag : tags) {
      // Bump first, erase second: a fill committing in between is erased, one committing
      // after sees the bump (see generations.hpp).
      gens.bump(tag);
      storage->erase_tag_prefix(tag);
      counters.invalidations.fetch_add(1, std::memory_order_relaxed);
    }
  }

  Settings settings;
  Counters counters;
  // Fleet mode (ReadThroughCache::join_fleet): written once before serving.
  std::shared_ptr<WritePublisher> publisher;
  bool fleet_gated = false;
  // The fleet's second-level cache, asked by fills before the upstream (null: none).
  std::shared_ptr<FleetTier> tier;
  // Writes of this process from their start until their publish returned: while any
  // runs, Redis's generations may not count it yet, so fills take no shared entry (one
  // taken then could predate the write, and the writer's own message evicts nothing).
  std::atomic<int> writes_unpublished{0};
  // Whether a fill may take the fleet's shared entry now.
  bool may_take_shared() const {
    return writes_unpublished.load(std::memory_order_acquire) == 0 &&
           (!publisher || publisher->all_published());
  }
  std::atomic<Micros> serve_cached_until{std::numeric_limits<Micros>::max()};
  // Whether a read at `now` may be answered from a cached entry: always without fleet
  // mode (no atomic is read), in fleet mode until the sync deadline.
  bool may_serve_cached(Micros now) const {
    return !fleet_gated || now < serve_cached_until.load(std::memory_order_acquire);
  }
  std::shared_ptr<upstream::Upstream> up;
  const std::unique_ptr<Storage> storage;
  Generations gens;
  // Per store tag: bumped before a write's deletes are applied, so a create whose answer
  // arrives after a delete of what it created does not add it back.
  Generations deletions;
  WriteTracker writes;
  // Numbers snapshots and stored answers in the order their data arrived.
  std::atomic<std::uint64_t> next_seq{0};

  std::mutex flights_mu;
  std::unordered_map<std::string, std::shared_ptr<FillFlight>> flights;
};

struct FillJob {
  View view = View::stores;
  std::string account;
  std::string store;
  std::string key;
  std::string tag;
  Micros now = 0;
  Generations::Ticket ticket;
  std::string client;  // whose request leads the fill: its upstream calls are charged to it
  // Led by a read with Cache-Control: no-cache: no cached data answers it, not even the
  // fleet's shared entry.
  bool revalidate = false;
};

// A whole view's fetch, each of its upstream calls made for `client` (see ApiRequest).
asio::awaitable<Fetched> fetch_view(std::shared_ptr<Core> core, View view, std::string account,
                                    std::string store, Micros now, std::string client);
// The fill of the entry that serves `route` (its view's key and invalidation tag).
FillJob fill_job(View view, const upstream::Route& route, Micros now, std::string_view client);
// Completes `flight` with `result` and removes it from the flights of `key`.
void finish_flight(Core& core, const std::shared_ptr<FillFlight>& flight, const std::string& key,
                   FillResult result);
// Runs the fill in the background on `ex`, so it completes (and stores its result)
// even when every waiter has given up.
void launch_fill(asio::any_io_executor ex, std::shared_ptr<Core> core,
                 std::shared_ptr<FillFlight> flight, FillJob job);

}  // namespace sproxy::cache::detail

namespace sproxy::cache {

struct ReadThroughCache::Impl : detail::Core {
  using Core::Core;
};

}  // namespace sproxy::cache
