// Whole-view fetches and fills of the read-through cache (see cache_core.hpp).
#include <boost/asio/co_spawn.hpp>
#include <functional>
#include <limits>

#include "cache/cache_core.hpp"
#include "cache/fleet_tier.hpp"
#include "upstream/list_query.hpp"

namespace sproxy::cache::detail {

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

namespace {

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
  const std::uint64_t seq = core->take_seq();
  if (view == View::secrets) {
    out.value = std::make_shared<const SecretsSnapshot>(seq, std::move(secrets));
  } else {
    out.value = std::make_shared<const StoresSnapshot>(seq, std::move(stores));
  }
  co_return out;
}

}  // namespace

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
    const std::uint64_t seq = core->take_seq();
    out.value = std::make_shared<const StoredAnswer>(r->status, std::move(r->body), seq);
  }
  co_return out;
}

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

namespace {

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

asio::awaitable<FillResult> fill_from_upstream(std::shared_ptr<Core> core, FillJob job) {
  Fetched f = co_await fetch_view(core, job.view, job.account, job.store, job.now, job.client);
  FillResult out;
  out.outcome = Outcome::miss;
  out.client_refused = f.refusal && f.refusal->client_refused;
  out.ratelimit = f.ratelimit;
  out.upstream_time = f.upstream_time;

  if (f.value) {
    const Micros ttl = core->ttl(job.view);
    const Micros keep_stale = core->keep_stale();
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

// A miss answered from the fleet's shared entry: stored here as a fill's value is.
FillResult from_shared(Core& core, const FillJob& job, FleetTier::Claim claim) {
  FillResult out;
  out.outcome = Outcome::miss;
  out.value = std::move(claim.value);
  out.meta = claim.meta;
  if (core.settings.enabled) out.stored = commit(core, job, out.value, out.meta);
  return out;
}

// In fleet mode a miss asks the fleet's shared cache first (and waits there for another
// process's fill of the same key); what the upstream then gives is shared.
asio::awaitable<FillResult> fill(std::shared_ptr<Core> core, FillJob job) {
  if (!core->tier || !core->settings.enabled || core->ttl(job.view) <= 0) {
    co_return co_await fill_from_upstream(std::move(core), std::move(job));
  }
  // An entry about to expire (within the refresh-ahead window decide_read uses) would not
  // save a refresh its upstream call; a revalidation takes no shared entry at all.
  const Micros window = std::min(core->settings.refresh_ahead.load(),
                                 core->ttl(job.view) / policy::kRefreshAheadShare);
  // Nor does a fill while this process's writes may be missing from Redis's generations.
  const Micros min_fresh_until = job.revalidate || !core->may_take_shared()
                                     ? std::numeric_limits<Micros>::max()
                                     : job.now + window;
  // Named locals, not temporaries inside co_await (GCC 12 destroys those twice).
  std::string key = job.key;
  std::string tag = job.tag;
  std::function<std::uint64_t()> next_seq = [core] { return core->take_seq(); };
  FleetTier::Claim claim = co_await core->tier->claim(std::move(key), std::move(tag),
                                                      min_fresh_until, std::move(next_seq));
  if (claim.kind == FleetTier::Claim::Kind::found) {
    co_return from_shared(*core, job, std::move(claim));
  }
  FillResult out = co_await fill_from_upstream(core, job);
  // Only what the upstream just gave and this process stored: a stale stand-in is not news
  // to the fleet, and a value a local invalidation refused may predate a write.
  std::shared_ptr<const CachedValue> fetched;
  if (out.value && out.outcome == Outcome::miss && out.stored) fetched = out.value;
  co_await core->tier->share(std::move(claim), std::move(fetched), out.meta, std::move(job.key),
                             std::move(job.tag));
  co_return out;
}

}  // namespace

void finish_flight(Core& core, const std::shared_ptr<FillFlight>& flight, const std::string& key,
                   FillResult result) {
  {
    std::lock_guard lock(core.flights_mu);
    auto it = core.flights.find(key);
    if (it != core.flights.end() && it->second == flight) core.flights.erase(it);
  }
  flight->complete(std::move(result));
}

namespace {

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

}  // namespace

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

}  // namespace sproxy::cache::detail
