#include "cache/read_through.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>

#include "cache/cache_core.hpp"
#include "upstream/list_query.hpp"

namespace sproxy::cache {

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

using namespace detail;

namespace {

// What a read asks, decided before any lookup.
struct ReadPlan {
  View view = View::stores;
  std::optional<upstream::StoreListQuery> stores_query;
  std::optional<upstream::SecretListQuery> secrets_query;
};

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
  if (cacheable && core.may_serve_cached(now)) {
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
  // Fleet mode, out of sync with the fleet for too long: the entry may predate another
  // process's write, so the read goes upstream. Read before the lookup (acquire): when the
  // deadline says in sync, what the resynchronization erased is gone from the storage.
  if (!core.may_serve_cached(now)) return out;
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
      job.revalidate = options.revalidate;
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

  const Micros keep_stale = core.keep_stale();
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
  out.write_updates = c.write_updates.load(std::memory_order_relaxed);
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
