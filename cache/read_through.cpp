#include "cache/read_through.hpp"

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>
#include <chrono>
#include <mutex>
#include <unordered_map>

#include "cache/flight.hpp"
#include "cache/generations.hpp"
#include "cache/policy.hpp"
#include "cache/snapshot.hpp"
#include "cache/storage.hpp"
#include "upstream/list_query.hpp"

namespace sproxy::cache {

namespace {

namespace asio = boost::asio;
using policy::View;
using upstream::ApiError;
using upstream::ApiRequest;
using upstream::ApiResponse;
using upstream::CallResult;
using upstream::RouteKind;

Answer answer_from_error(const ApiError& e, Outcome outcome) {
  Answer a;
  a.status = e.status;
  a.body = SharedBytes(upstream::envelope_error(e));
  a.outcome = outcome;
  if (e.retry_after_seconds) a.retry_after = std::to_string(*e.retry_after_seconds);
  return a;
}

Answer answer_from_response(ApiResponse r, Outcome outcome) {
  Answer a;
  a.status = r.status;
  a.body = SharedBytes(std::move(r.body));
  a.outcome = outcome;
  a.retry_after = std::move(r.retry_after);
  a.ratelimit = std::move(r.ratelimit);
  a.ratelimit_policy = std::move(r.ratelimit_policy);
  return a;
}

Answer answer_from_call(CallResult r, Outcome outcome) {
  if (!r) return answer_from_error(policy::transport_error(r.error()), outcome);
  return answer_from_response(std::move(*r), outcome);
}

Answer answer_with_body(unsigned status, SharedBytes body, Outcome outcome, Micros age) {
  Answer a;
  a.status = status;
  a.body = std::move(body);
  a.outcome = outcome;
  a.age = age < 0 ? 0 : age;
  return a;
}

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

}  // namespace

std::string_view to_string(Outcome o) {
  switch (o) {
    case Outcome::hit:
      return "HIT";
    case Outcome::miss:
      return "MISS";
    case Outcome::stale:
      return "STALE";
    case Outcome::bypass:
      return "BYPASS";
  }
  return "BYPASS";
}

namespace {

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
        invalidations{0}, upstream_calls{0}, internal_errors{0}, refreshes{0}, bad_answers{0};
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
  std::shared_ptr<upstream::Upstream> up;
  const std::unique_ptr<Storage> storage;
  Generations gens;
  std::atomic<std::uint64_t> next_seq{0};

  std::mutex flights_mu;
  std::unordered_map<std::string, std::shared_ptr<FillFlight>> flights;
};

// What a read asks, decided before any lookup.
struct ReadPlan {
  View view = View::stores;
  std::optional<upstream::StoreListQuery> stores_query;
  std::optional<upstream::SecretListQuery> secrets_query;
};

asio::awaitable<Fetched> fetch_list_view(std::shared_ptr<Core> core, View view, std::string account,
                                         std::string store, Micros now, std::string client) {
  Fetched out;
  std::vector<upstream::Secret> secrets;
  std::vector<upstream::Store> stores;
  for (long page = 1; page <= policy::kMaxFetchPages; ++page) {
    ApiRequest req;
    req.method = upstream::Method::get;
    req.target = policy::page_target(view, account, store, page);
    req.client = client;
    CallResult r = co_await core->timed_call(std::move(req), &out.upstream_time);
    if (r) out.ratelimit.take_from(*r);
    const RouteKind kind = view == View::secrets ? RouteKind::list_secrets : RouteKind::list_stores;
    r = core->checked(kind, std::move(r), now, /*pages=*/true);
    if (!r) {
      out.error = r.error();
      co_return out;
    }
    if (r->status < 200 || r->status >= 300) {
      out.refusal = std::move(*r);
      co_return out;
    }
    std::size_t got = 0;
    long total_pages = 0;
    if (view == View::secrets) {
      auto p = parse_secrets_page(r->body);
      if (!p) {
        core->counters.bad_answers.fetch_add(1, std::memory_order_relaxed);
        out.error = upstream::UpstreamErrc::bad_response;
        co_return out;
      }
      got = p->items.size();
      total_pages = p->total_pages;
      for (auto& s : p->items) secrets.push_back(std::move(s));
    } else {
      auto p = parse_stores_page(r->body);
      if (!p) {
        core->counters.bad_answers.fetch_add(1, std::memory_order_relaxed);
        out.error = upstream::UpstreamErrc::bad_response;
        co_return out;
      }
      got = p->items.size();
      total_pages = p->total_pages;
      for (auto& s : p->items) stores.push_back(std::move(s));
    }
    if (got == 0 || page >= total_pages) break;
  }
  const std::uint64_t seq = core->next_seq.fetch_add(1, std::memory_order_relaxed) + 1;
  if (view == View::secrets) {
    out.value = std::make_shared<const SecretsSnapshot>(seq, std::move(secrets));
  } else {
    out.value = std::make_shared<const StoresSnapshot>(seq, std::move(stores));
  }
  co_return out;
}

// A whole view's fetch, each of its upstream calls made for `client` (see ApiRequest).
asio::awaitable<Fetched> fetch_view(std::shared_ptr<Core> core, View view, std::string account,
                                    std::string store, Micros now, std::string client) {
  if (view == View::stores || view == View::secrets) {
    co_return co_await fetch_list_view(core, view, std::move(account), std::move(store), now,
                                       std::move(client));
  }
  Fetched out;
  ApiRequest req;
  req.method = upstream::Method::get;
  const RouteKind kind = view == View::store ? RouteKind::get_store : RouteKind::get_quota;
  req.target = upstream::route_path(kind, account, store, {});
  req.client = std::move(client);
  CallResult r = co_await core->timed_call(std::move(req), &out.upstream_time);
  if (r) out.ratelimit.take_from(*r);
  r = core->checked(kind, std::move(r), now);
  if (!r) {
    out.error = r.error();
    co_return out;
  }
  if (r->status < 200 || r->status >= 300) {
    out.refusal = std::move(*r);
  } else {
    out.value = std::make_shared<const StoredAnswer>(r->status, std::move(r->body));
  }
  co_return out;
}

struct FillJob {
  View view = View::stores;
  std::string account;
  std::string store;
  std::string key;
  std::string tag;
  Micros now = 0;
  Generations::Ticket ticket;
  std::string client;  // whose request leads the fill: its upstream calls are charged to it
};

// The fill of the entry that serves `route` (its view's key and invalidation tag).
FillJob fill_job(View view, const upstream::Route& route, Micros now, std::string_view client) {
  FillJob job;
  job.client = client;
  job.view = view;
  job.account = route.account_id;
  job.store = route.store_id;
  job.key = policy::entry_key(view, route.account_id, route.store_id);
  job.tag = policy::tag_of(view, route.account_id, route.store_id);
  job.now = now;
  return job;
}

// Stores `value` under the job's key unless an invalidation happened since the ticket.
bool commit(Core& core, const FillJob& job, std::shared_ptr<const CachedValue> value,
            const EntryMeta& meta) {
  bool stored = false;
  core.gens.commit_if_current(job.tag, job.ticket, [&] {
    stored = core.storage->insert(job.key, job.tag, value, meta, job.now) == InsertResult::stored;
  });
  if (stored && value->type() != CachedValue::Type::answer) {
    // The previous snapshot's memoized answers can never be looked up again.
    core.storage->erase_tag_prefix(policy::memo_tag(job.view, job.account, job.store));
  }
  return stored;
}

asio::awaitable<FillResult> fill(std::shared_ptr<Core> core, FillJob job) {
  Fetched f = co_await fetch_view(core, job.view, job.account, job.store, job.now, job.client);
  FillResult out;
  out.outcome = Outcome::miss;
  out.client_refused = f.refusal && f.refusal->client_refused;
  out.ratelimit = f.ratelimit;
  out.upstream_time = f.upstream_time;

  if (f.value) {
    const Micros ttl = core->ttl(job.view);
    // Kept past expiry for whichever is longer: stale-if-error or stale-while-revalidate.
    const Micros keep_stale =
        std::max<Micros>(core->settings.stale_if_error, core->settings.stale_while_revalidate);
    const auto life = policy::lifetime(job.now, ttl, keep_stale, false);
    out.meta = EntryMeta{job.now, life.fresh_until, life.keep_until};
    out.value = f.value;
    if (ttl > 0 && core->settings.enabled) out.stored = commit(*core, job, f.value, out.meta);
    co_return out;
  }

  const policy::Verdict verdict =
      f.refusal ? policy::classify(*f.refusal) : policy::Verdict::failure;
  switch (verdict) {
    case policy::Verdict::negative: {
      const Micros ttl = core->settings.ttl_negative;
      const auto life = policy::lifetime(job.now, ttl, 0, true);
      auto value =
          std::make_shared<const StoredAnswer>(f.refusal->status, std::move(f.refusal->body));
      out.meta = EntryMeta{job.now, life.fresh_until, life.keep_until};
      out.value = value;
      if (ttl > 0 && core->settings.enabled) out.stored = commit(*core, job, value, out.meta);
      co_return out;
    }
    case policy::Verdict::store:  // not reachable: a 2xx became a value above
    case policy::Verdict::refuse:
      // The upstream said no: whatever we held for this view is no longer to be served.
      core->storage->erase(job.key);
      out.direct = answer_from_response(std::move(*f.refusal), Outcome::miss);
      co_return out;
    case policy::Verdict::failure:
      break;
  }

  // 5xx, 429 or a transport failure: the last good entry stands in while young enough.
  if (auto found = core->storage->lookup(job.key, job.now)) {
    const auto* v = static_cast<const CachedValue*>(found->value.get());
    if (policy::is_positive(*v) && policy::servable_as_stale(found->meta.fresh_until, job.now,
                                                             core->settings.stale_if_error)) {
      out.value = std::static_pointer_cast<const CachedValue>(found->value);
      out.meta = found->meta;
      out.stored = true;
      out.outcome = Outcome::stale;
      co_return out;
    }
  }
  out.direct = f.refusal ? answer_from_response(std::move(*f.refusal), Outcome::miss)
                         : answer_from_error(policy::transport_error(f.error), Outcome::miss);
  co_return out;
}

void finish_flight(Core& core, const std::shared_ptr<FillFlight>& flight, const std::string& key,
                   FillResult result) {
  {
    std::lock_guard lock(core.flights_mu);
    auto it = core.flights.find(key);
    if (it != core.flights.end() && it->second == flight) core.flights.erase(it);
  }
  flight->complete(std::move(result));
}

asio::awaitable<void> run_fill(std::shared_ptr<Core> core, std::shared_ptr<FillFlight> flight,
                               FillJob job) {
  // If this frame is destroyed before the fill finishes (its io_context shut down), no
  // new reader may join the dead flight; its current waiters give up at max_wait.
  struct Unregister {
    Core& core;
    const std::shared_ptr<FillFlight>& flight;
    const std::string key;
    bool finished = false;
    ~Unregister() {
      if (finished) return;
      std::lock_guard lock(core.flights_mu);
      auto it = core.flights.find(key);
      if (it != core.flights.end() && it->second == flight) core.flights.erase(it);
    }
  } guard{*core, flight, job.key};
  FillResult result = co_await fill(core, std::move(job));
  guard.finished = true;
  finish_flight(*core, flight, guard.key, std::move(result));
}

// ---------------------------------------------------------------------------------------
// Answers from cached values

Answer answer_secrets_list(Core& core, const std::shared_ptr<const SecretsSnapshot>& snap,
                           const EntryMeta& meta, bool memoize, ReadScratch& scratch,
                           const upstream::Route& route, const upstream::SecretListQuery& q,
                           const Viewer& viewer, Outcome outcome, Micros age, Micros now) {
  if (memoize) {
    policy::memo_key(scratch.memo_key, scratch.entry_key, snap->seq(), q, viewer.all,
                     viewer.services);
    if (auto found = core.storage->lookup(scratch.memo_key, now)) {
      auto stored = std::static_pointer_cast<const StoredAnswer>(found->value);
      return answer_with_body(stored->status(), StoredAnswer::share_body(stored), outcome, age);
    }
  }
  auto stored = std::make_shared<const StoredAnswer>(200, snap->list(q, viewer));
  if (memoize && snap->claim_memo_slot()) {
    core.storage->insert(scratch.memo_key,
                         policy::memo_tag(View::secrets, route.account_id, route.store_id), stored,
                         meta, now);
  }
  return answer_with_body(200, StoredAnswer::share_body(stored), outcome, age);
}

Answer answer_stores_list(Core& core, const std::shared_ptr<const StoresSnapshot>& snap,
                          const EntryMeta& meta, bool memoize, ReadScratch& scratch,
                          const upstream::Route& route, const upstream::StoreListQuery& q,
                          const Viewer& viewer, Outcome outcome, Micros age, Micros now) {
  if (memoize) {
    policy::memo_key(scratch.memo_key, scratch.entry_key, snap->seq(), q, viewer.stores);
    if (auto found = core.storage->lookup(scratch.memo_key, now)) {
      auto stored = std::static_pointer_cast<const StoredAnswer>(found->value);
      return answer_with_body(stored->status(), StoredAnswer::share_body(stored), outcome, age);
    }
  }
  auto stored = std::make_shared<const StoredAnswer>(200, snap->list(q, viewer));
  if (memoize && snap->claim_memo_slot()) {
    core.storage->insert(scratch.memo_key, policy::memo_tag(View::stores, route.account_id, {}),
                         stored, meta, now);
  }
  return answer_with_body(200, StoredAnswer::share_body(stored), outcome, age);
}

// Answers a read from a view's value (fresh, just filled, or stale). `scratch.entry_key`
// holds the view's entry key (a list's memo keys are made from it).
Answer answer_from_value(Core& core, const std::shared_ptr<const CachedValue>& value,
                         const EntryMeta& meta, bool memoize, ReadScratch& scratch,
                         const upstream::Route& route, const ReadPlan& plan, const Viewer& viewer,
                         Outcome outcome, Micros now) {
  const Micros age = outcome == Outcome::miss ? 0 : now - meta.stored_at;
  switch (value->type()) {
    case CachedValue::Type::answer: {
      auto stored = std::static_pointer_cast<const StoredAnswer>(value);
      return answer_with_body(stored->status(), StoredAnswer::share_body(stored), outcome, age);
    }
    case CachedValue::Type::secrets: {
      auto snap = std::static_pointer_cast<const SecretsSnapshot>(value);
      if (route.kind == RouteKind::get_secret) {
        auto index = snap->find(route.secret_id);
        if (!index || !snap->visible_to(viewer, *index)) {
          return answer_with_body(404, secret_not_found_body(), outcome, age);
        }
        return answer_with_body(200, SecretsSnapshot::share_envelope(snap, *index), outcome, age);
      }
      if (!plan.secrets_query) break;
      return answer_secrets_list(core, snap, meta, memoize, scratch, route, *plan.secrets_query,
                                 viewer, outcome, age, now);
    }
    case CachedValue::Type::stores: {
      if (!plan.stores_query) break;
      auto snap = std::static_pointer_cast<const StoresSnapshot>(value);
      return answer_stores_list(core, snap, meta, memoize, scratch, route, *plan.stores_query,
                                viewer, outcome, age, now);
    }
  }
  return answer_from_error(upstream::errors::internal_error(), outcome);
}

// ---------------------------------------------------------------------------------------
// Bypass: no caching for this read, but the same answer semantics (viewer filtering).

asio::awaitable<Answer> bypass(std::shared_ptr<Core> core, upstream::Route route, ReadPlan plan,
                               ReadOptions options, Micros now) {
  const bool filtered = plan.view == View::secrets && !options.viewer.all;
  const bool store_limited = route.kind == RouteKind::list_stores && !options.viewer.stores.empty();
  if ((filtered && route.kind == RouteKind::list_secrets) || store_limited) {
    // Paging over the visible subset needs the whole store (or account's store list).
    Fetched f =
        co_await fetch_view(core, plan.view, route.account_id, route.store_id, now, options.client);
    Answer a;
    if (f.refusal) {
      a = answer_from_response(std::move(*f.refusal), Outcome::bypass);
      a.upstream_time = f.upstream_time;
      co_return a;
    }
    if (f.value) {
      std::string body;
      if (store_limited) {
        body = std::static_pointer_cast<const StoresSnapshot>(f.value)->list(*plan.stores_query,
                                                                             options.viewer);
      } else {
        body = std::static_pointer_cast<const SecretsSnapshot>(f.value)->list(*plan.secrets_query,
                                                                              options.viewer);
      }
      a = answer_with_body(200, SharedBytes(std::move(body)), Outcome::bypass, 0);
    } else {
      a = answer_from_error(policy::transport_error(f.error), Outcome::bypass);
    }
    f.ratelimit.copy_to(a);
    a.upstream_time = f.upstream_time;
    co_return a;
  }
  ApiRequest req;
  req.method = upstream::Method::get;
  req.target = policy::upstream_target(route);
  req.client = options.client;
  std::chrono::nanoseconds spent{0};
  CallResult r = co_await core->timed_call(std::move(req), &spent);
  std::optional<RateLimitHeaders> headers;
  if (r) headers.emplace().take_from(*r);
  r = core->checked(route.kind, std::move(r), now);
  if (filtered && r && r->status == 200) {
    auto j = nlohmann::json::parse(r->body, nullptr, false);
    const bool has_result = j.is_object() && j.contains("result");
    auto secret = has_result
                      ? upstream::secret_from_json(j["result"])
                      : upstream::Result<upstream::Secret>(upstream::errors::internal_error());
    std::optional<Answer> replaced;
    if (!secret) {
      replaced =
          answer_from_error(upstream::errors::upstream_failure("bad_response"), Outcome::bypass);
    } else if (!is_visible(options.viewer, *secret)) {
      replaced = answer_with_body(404, secret_not_found_body(), Outcome::bypass, 0);
    }
    if (replaced) {
      RateLimitHeaders h;
      h.take_from(*r);
      h.copy_to(*replaced);
      replaced->upstream_time = spent;
      co_return std::move(*replaced);
    }
  }
  Answer passed = answer_from_call(std::move(r), Outcome::bypass);
  if (headers) headers->copy_to(passed);
  passed.upstream_time = spent;
  co_return passed;
}

// ---------------------------------------------------------------------------------------
// Coalescing

struct Joined {
  std::shared_ptr<FillFlight> flight;
  bool leader = false;
};

// Joins the flight filling `key`, or starts a new one (the caller then leads it). A
// flight that started before an invalidation of `tag` is not joined: its data predates
// a write, so readers arriving after that write must not get it. A revalidating read
// (no-cache, arrived at `now`) joins only a flight whose leader's request arrived no
// earlier: that flight asks the upstream after the read arrived, so its answer is as
// fresh as one of its own. Otherwise it leads a new flight, which takes the key's place
// for the reads that come after it (the older flight still completes for its waiters).
Joined join_or_lead(Core& core, const std::string& key, const std::string& tag, bool revalidate,
                    Micros now, bool lead = false) {
  std::lock_guard lock(core.flights_mu);
  const Generations::Ticket current = core.gens.current(tag);
  auto it = core.flights.find(key);
  if (!lead && it != core.flights.end() && it->second->ticket == current &&
      (!revalidate || it->second->started_at >= now)) {
    return {it->second, false};
  }
  auto flight = std::make_shared<FillFlight>();
  flight->ticket = current;
  flight->started_at = now;
  core.flights[key] = flight;
  return {std::move(flight), true};
}

// Runs the fill in the background on `ex`, so it completes (and stores its result)
// even when every waiter has given up.
void launch_fill(asio::any_io_executor ex, std::shared_ptr<Core> core,
                 std::shared_ptr<FillFlight> flight, FillJob job) {
  std::string key = job.key;
  asio::co_spawn(ex, run_fill(core, flight, std::move(job)),
                 [core, flight, key = std::move(key)](std::exception_ptr ep) {
                   if (!ep) return;
                   // An escaped exception must not strand the waiters until their timeout.
                   core->counters.internal_errors.fetch_add(1, std::memory_order_relaxed);
                   FillResult failed;
                   failed.direct =
                       answer_from_error(upstream::errors::internal_error(), Outcome::miss);
                   finish_flight(*core, flight, key, std::move(failed));
                 });
}

// Starts a background refresh of `job.key` unless one (or any fill of that key) is
// already in flight; that flight is then the refresh, and foreground misses join it.
void start_refresh(asio::any_io_executor ex, const std::shared_ptr<Core>& core, FillJob job) {
  Joined joined = join_or_lead(*core, job.key, job.tag, false, job.now);
  if (!joined.leader) return;
  core->counters.refreshes.fetch_add(1, std::memory_order_relaxed);
  job.ticket = joined.flight->ticket;
  launch_fill(std::move(ex), core, std::move(joined.flight), std::move(job));
}

// A list query the parser rejected, answered without the upstream. The store check
// comes first in the contract, so a store this cache knows to be missing stays a 404.
Answer answer_query_error(Core& core, const ApiError& error, bool cacheable, View view,
                          const upstream::Route& route, Micros now, ReadScratch& scratch) {
  if (cacheable) {
    policy::entry_key(scratch.entry_key, view, route.account_id, route.store_id);
    if (auto found = core.storage->lookup(scratch.entry_key, now);
        found && policy::is_fresh(found->meta.fresh_until, now)) {
      const auto* v = static_cast<const CachedValue*>(found->value.get());
      if (v->type() == CachedValue::Type::answer &&
          static_cast<const StoredAnswer*>(v)->status() == 404) {
        auto stored = std::static_pointer_cast<const StoredAnswer>(std::move(found->value));
        return answer_with_body(404, StoredAnswer::share_body(stored), Outcome::hit,
                                now - found->meta.stored_at);
      }
    }
  }
  return answer_from_error(error, Outcome::hit);
}

}  // namespace

struct ReadThroughCache::Impl : Core {
  using Core::Core;
};

// ---------------------------------------------------------------------------------------

ReadThroughCache::ReadThroughCache(config::CacheConfig cfg,
                                   std::shared_ptr<upstream::Upstream> upstream,
                                   std::unique_ptr<Storage> storage)
    : impl_(std::make_shared<Impl>(cfg, std::move(upstream), std::move(storage))) {}

ReadThroughCache::~ReadThroughCache() = default;

namespace {

// How a read begins: an answer at hand (a servable hit, a refused query, a route no view
// serves), or the plan for the read that has to wait.
struct ReadStart {
  std::optional<Answer> answer;
  ReadPlan plan;
  bool cacheable = false;
};

// Everything a read does before it may have to wait; never suspends. On a hit that
// calls for a background refresh (refresh ahead, stale-while-revalidate) the refresh is
// started on `ex`. Builds its keys in `scratch`.
ReadStart begin_read(Core& core, const std::shared_ptr<Core>& owner, const upstream::Route& route,
                     const Viewer& viewer, std::string_view client, bool revalidate, Micros now,
                     const asio::any_io_executor& ex, ReadScratch& scratch) {
  ReadStart out;
  const auto view = policy::view_of(route.kind);
  if (!view) {
    out.answer = answer_from_error(upstream::errors::internal_error(), Outcome::bypass);
    return out;
  }
  ReadPlan& plan = out.plan;
  plan.view = *view;
  const bool enabled = core.settings.enabled.load(std::memory_order_relaxed);
  const Micros ttl = core.ttl(*view);
  // Only well-formed ids name cacheable things; anything else is forwarded as it is.
  out.cacheable =
      enabled && ttl > 0 && (route.store_id.empty() || upstream::is_valid_id(route.store_id));

  // Query validation is local: a bad query never reaches the upstream.
  std::optional<ApiError> query_error;
  if (route.kind == RouteKind::list_stores) {
    auto q = upstream::parse_store_list_query(route.query);
    if (q) {
      plan.stores_query = std::move(q).value();
    } else {
      query_error = q.error();
    }
  } else if (route.kind == RouteKind::list_secrets) {
    auto q = upstream::parse_secret_list_query(route.query);
    if (q) {
      plan.secrets_query = std::move(q).value();
    } else {
      query_error = q.error();
    }
  }
  if (query_error) {
    out.answer = answer_query_error(core, *query_error, out.cacheable, *view, route, now, scratch);
    return out;
  }
  if (!out.cacheable) return out;

  if (revalidate) return out;
  policy::entry_key(scratch.entry_key, *view, route.account_id, route.store_id);
  auto found = core.storage->lookup(scratch.entry_key, now);
  if (!found) return out;
  const policy::ReadDecision decision = policy::decide_read(
      found->meta, policy::is_positive(static_cast<const CachedValue&>(*found->value)), now,
      core.refresh_windows());
  if (decision.serve == policy::Serve::miss) return out;

  const bool fresh = decision.serve == policy::Serve::hit;
  (fresh ? core.counters.hits : core.counters.stale_served).fetch_add(1, std::memory_order_relaxed);
  out.answer = answer_from_value(
      core, std::static_pointer_cast<const CachedValue>(std::move(found->value)), found->meta, true,
      scratch, route, plan, viewer, fresh ? Outcome::hit : Outcome::stale, now);
  if (decision.refresh) start_refresh(ex, owner, fill_job(*view, route, now, client));
  return out;
}

}  // namespace

std::optional<Answer> ReadThroughCache::try_read(const upstream::Route& route, const Viewer& viewer,
                                                 Micros now, const boost::asio::any_io_executor& ex,
                                                 ReadScratch& scratch, std::string_view client) {
  return begin_read(*impl_, impl_, route, viewer, client, /*revalidate=*/false, now, ex, scratch)
      .answer;
}

boost::asio::awaitable<Answer> ReadThroughCache::read(upstream::Route route, ReadOptions options,
                                                      Micros now) {
  std::shared_ptr<Impl> impl = impl_;
  asio::any_io_executor ex = co_await asio::this_coro::executor;
  // This read's own keys, alive across its waits.
  ReadScratch scratch;
  ReadStart started = begin_read(*impl, impl, route, options.viewer, options.client,
                                 options.revalidate, now, ex, scratch);
  if (started.answer) co_return std::move(*started.answer);
  if (!started.cacheable) {
    co_return co_await bypass(impl, std::move(route), std::move(started.plan), std::move(options),
                              now);
  }
  const ReadPlan& plan = started.plan;
  const View* view = &plan.view;

  // Miss (or revalidation): join the key's flight or lead a new one; everyone waits.
  // Only the leader builds its fill job: a waiter keeps nothing it would have to free
  // once woken. A waiter whose leader's client was refused for its share of the rate
  // budget did not have its own turn: it leads a flight of its own, once.
  policy::entry_key(scratch.entry_key, *view, route.account_id, route.store_id);
  const std::string tag = policy::tag_of(*view, route.account_id, route.store_id);
  FillFlight::Waited waited;
  for (int round = 0; round < 2; ++round) {
    Joined joined = join_or_lead(*impl, scratch.entry_key, tag, options.revalidate, now, round > 0);
    std::shared_ptr<FillFlight> flight = std::move(joined.flight);
    if (joined.leader) {
      FillJob job = fill_job(*view, route, now, options.client);
      job.ticket = flight->ticket;
      launch_fill(ex, impl, flight, std::move(job));
    } else {
      impl->counters.coalesced_waits.fetch_add(1, std::memory_order_relaxed);
    }
    auto seat = flight->join(impl->settings.max_waiters.load(std::memory_order_relaxed), ex);
    if (seat.waiting()) {
      co_await flight->park(seat, std::chrono::milliseconds(
                                      impl->settings.max_wait_ms.load(std::memory_order_relaxed)));
    }
    waited = flight->settle(seat);
    if (joined.leader || waited.status != WaitStatus::ready || !waited.result->client_refused) {
      break;
    }
  }
  if (waited.status == WaitStatus::overloaded) {
    co_return answer_from_error(upstream::errors::service_unavailable("too_many_waiters"),
                                Outcome::miss);
  }
  if (waited.status == WaitStatus::timed_out) {
    co_return answer_from_error(upstream::errors::gateway_timeout(), Outcome::miss);
  }
  const FillResult& r = *waited.result;
  if (r.direct) {
    impl->counters.misses.fetch_add(1, std::memory_order_relaxed);
    Answer direct = *r.direct;
    direct.upstream_time = r.upstream_time;
    co_return direct;
  }
  if (r.outcome == Outcome::stale) {
    impl->counters.stale_served.fetch_add(1, std::memory_order_relaxed);
  } else {
    impl->counters.misses.fetch_add(1, std::memory_order_relaxed);
  }
  Answer a = answer_from_value(*impl, r.value, r.meta, r.stored, scratch, route, plan,
                               options.viewer, r.outcome, now);
  r.ratelimit.copy_to(a);
  a.upstream_time = r.upstream_time;
  co_return a;
}

boost::asio::awaitable<Answer> ReadThroughCache::write(upstream::Route route,
                                                       upstream::ApiRequest request, Micros now) {
  std::shared_ptr<Impl> impl = impl_;
  // Invalidation runs however this coroutine ends (answer, exception, or destruction
  // mid-call): the write may have been applied either way.
  struct InvalidateOnExit {
    Impl& impl;
    const upstream::Route& route;
    const ApiResponse* response = nullptr;
    ~InvalidateOnExit() { impl.invalidate(policy::invalidated_tags(route, response)); }
  };
  CallResult r = boost::system::error_code(upstream::UpstreamErrc::shutting_down);
  std::chrono::nanoseconds spent{0};
  {
    InvalidateOnExit guard{*impl, route};
    r = co_await impl->timed_call(std::move(request), &spent);
    if (r) guard.response = &*r;
  }
  // Checked after the invalidation: a write whose answer is garbage may have been applied.
  std::optional<RateLimitHeaders> headers;
  if (r) headers.emplace().take_from(*r);
  r = impl->checked(route.kind, std::move(r), now);
  Answer answer = answer_from_call(std::move(r), Outcome::bypass);
  if (headers) headers->copy_to(answer);
  answer.upstream_time = spent;
  co_return answer;
}

void ReadThroughCache::purge_all() {
  impl_->gens.bump_all();
  impl_->storage->clear();
  impl_->counters.invalidations.fetch_add(1, std::memory_order_relaxed);
}

void ReadThroughCache::purge_account(const std::string& account_id) {
  impl_->gens.bump_all();
  impl_->storage->erase_tag_prefix(policy::account_prefix(account_id));
  impl_->counters.invalidations.fetch_add(1, std::memory_order_relaxed);
}

void ReadThroughCache::purge_store(const std::string& account_id, const std::string& store_id) {
  impl_->invalidate({policy::store_tag(account_id, store_id)});
}

std::vector<CacheRecord> ReadThroughCache::export_records(Micros now) const {
  std::vector<StoredEntry> entries;
  impl_->storage->export_entries(now, entries);
  std::vector<CacheRecord> out;
  out.reserve(entries.size());
  for (auto& e : entries) {
    if (!e.value || policy::is_memo_key(e.key)) continue;
    out.push_back(CacheRecord{std::move(e.key), std::move(e.tag), e.meta,
                              std::static_pointer_cast<const CachedValue>(std::move(e.value))});
  }
  return out;
}

std::size_t ReadThroughCache::restore(std::vector<CacheRecord> records, Micros now) {
  Core& core = *impl_;
  if (!core.settings.enabled.load()) return 0;
  // Tickets first: a write racing the restore invalidates what it restores.
  std::vector<Generations::Ticket> tickets;
  tickets.reserve(records.size());
  for (const auto& r : records) tickets.push_back(core.gens.current(r.tag));

  const Micros keep_stale =
      std::max<Micros>(core.settings.stale_if_error, core.settings.stale_while_revalidate);
  std::uint64_t max_seq = 0;
  std::size_t stored = 0;
  for (std::size_t i = 0; i < records.size(); ++i) {
    CacheRecord& r = records[i];
    if (!r.value || policy::is_memo_key(r.key) || r.meta.stored_at > now ||
        r.meta.fresh_until < r.meta.stored_at) {
      continue;
    }
    // The entry's TTL is its kind's: its view's for data, the negative TTL for an error.
    const std::optional<View> view = policy::view_of_entry_key(r.key);
    if (!view) continue;
    const bool positive = policy::is_positive(*r.value);
    const Micros ttl = positive ? core.ttl(*view) : Micros{core.settings.ttl_negative};
    if (ttl <= 0) continue;
    EntryMeta meta = r.meta;
    meta.fresh_until = std::min(meta.fresh_until, meta.stored_at + ttl);
    meta.keep_until = positive ? meta.fresh_until + keep_stale : meta.fresh_until;
    if (meta.keep_until <= now) continue;
    if (r.value->type() == CachedValue::Type::secrets) {
      max_seq = std::max(max_seq, static_cast<const SecretsSnapshot&>(*r.value).seq());
    } else if (r.value->type() == CachedValue::Type::stores) {
      max_seq = std::max(max_seq, static_cast<const StoresSnapshot&>(*r.value).seq());
    }
    core.gens.commit_if_current(r.tag, tickets[i], [&] {
      if (core.storage->insert(r.key, r.tag, r.value, meta, now) == InsertResult::stored) ++stored;
    });
  }
  std::uint64_t seen = core.next_seq.load();
  while (seen < max_seq && !core.next_seq.compare_exchange_weak(seen, max_seq)) {
  }
  return stored;
}

CacheStats ReadThroughCache::stats() const {
  const StorageStats s = impl_->storage->stats();
  const auto& c = impl_->counters;
  CacheStats out;
  out.entries = s.entries;
  out.bytes = s.bytes;
  out.evictions = s.evictions;
  out.hits = c.hits.load(std::memory_order_relaxed);
  out.misses = c.misses.load(std::memory_order_relaxed);
  out.stale_served = c.stale_served.load(std::memory_order_relaxed);
  out.coalesced_waits = c.coalesced_waits.load(std::memory_order_relaxed);
  out.invalidations = c.invalidations.load(std::memory_order_relaxed);
  out.upstream_calls = c.upstream_calls.load(std::memory_order_relaxed);
  out.internal_errors = c.internal_errors.load(std::memory_order_relaxed);
  out.refreshes = c.refreshes.load(std::memory_order_relaxed);
  out.upstream_bad_answers = c.bad_answers.load(std::memory_order_relaxed);
  return out;
}

void ReadThroughCache::reconfigure(const config::CacheConfig& cfg) {
  const bool was_enabled = impl_->settings.enabled.load();
  impl_->apply(cfg);
  impl_->storage->set_limits(StorageLimits{cfg.max_bytes, cfg.max_entry_bytes});
  // Turning the cache off must not leave old entries to reappear when it is turned on.
  if (was_enabled && !cfg.enabled) purge_all();
}

}  // namespace sproxy::cache
