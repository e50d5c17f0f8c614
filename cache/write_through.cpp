// ReadThroughCache's writes and purges (see read_through.hpp).
#include "cache/cache_core.hpp"
#include "cache/write_effect.hpp"

namespace sproxy::cache {

namespace detail {

WriteTracker::Token WriteTracker::begin(const std::string& account) {
  std::lock_guard lock(mu_);
  Account& a = accounts_[account];
  ++a.in_flight;
  return ++a.events;
}

bool WriteTracker::end(const std::string& account, Token token) {
  std::lock_guard lock(mu_);
  auto it = accounts_.find(account);
  if (it == accounts_.end()) return false;
  const bool alone = it->second.events == token && it->second.in_flight == 1;
  ++it->second.events;
  if (--it->second.in_flight == 0) accounts_.erase(it);
  return alone;
}

}  // namespace detail

using namespace detail;

namespace {

// What a write knew when it was sent.
struct WriteStart {
  WriteTracker::Token token = 0;
  std::uint64_t seq = 0;          // the cache's sequence: data that arrived before
  Generations::Ticket deletions;  // of the write's store tag
  std::string bulk_body;          // a bulk delete's body (ids only)
};

// Replaces the value of `key` (tagged `tag`) by `make(old)` under the tag's bump, keeping
// its lifetime. `make` returns nullptr for "leave it as it is", and sets `doubt` when the
// entry can no longer be trusted (then it is invalidated).
// `fresh_cap`: the updated entry is fresh until then at the latest.
template <class Make>
void update_entry(Core& core, const std::string& key, const std::string& tag,
                  const std::string& memo_tag, Micros now, Make make,
                  std::optional<Micros> fresh_cap = std::nullopt) {
  bool doubt = false;
  core.gens.bump_and_run(tag, [&] {
    auto found = core.storage->lookup(key, now);
    if (!found) return;  // nothing cached: the bump keeps older fills from storing
    auto old = std::static_pointer_cast<const CachedValue>(found->value);
    std::shared_ptr<const CachedValue> updated = make(*old, doubt);
    if (doubt || !updated) return;
    EntryMeta meta = found->meta;
    if (fresh_cap) meta.fresh_until = std::min(meta.fresh_until, *fresh_cap);
    if (core.storage->insert(key, tag, updated, meta, now) != InsertResult::stored) {
      core.storage->erase(key);
      return;
    }
    core.counters.write_updates.fetch_add(1, std::memory_order_relaxed);
    if (!memo_tag.empty()) core.storage->erase_tag_prefix(memo_tag);
  });
  if (doubt) core.invalidate({tag});
}

// The entry a merge leaves: a new snapshot of `items` when the merge changed them,
// nothing when it did not (the entry stays), nothing and a doubt when it cannot tell.
template <class Snapshot, class Item>
std::shared_ptr<const CachedValue> merged_snapshot(Core& core, policy::Merge merge,
                                                   std::vector<Item> items, bool& doubt) {
  switch (merge) {
    case policy::Merge::changed:
      return std::make_shared<const Snapshot>(core.take_seq(), std::move(items));
    case policy::Merge::unchanged:
      return nullptr;
    case policy::Merge::doubt:
      doubt = true;
      return nullptr;
  }
  return nullptr;
}

void apply_to_secrets(Core& core, const upstream::Route& route, const policy::WriteEffect& effect,
                      const WriteStart& start, Micros now) {
  // A secret the write left `pending` is listed as the upstream lists it now, and the
  // entry is refreshed when the next one turns `active` (when the delay is known).
  policy::WriteEffect settled = effect;
  const std::optional<Micros> turns =
      policy::settle_pending(settled.secrets, core.up->activation_delay(), now);
  const policy::WriteEffect& e = settled;
  const std::string tag = policy::store_tag(route.account_id, route.store_id);
  const bool deletes = !e.deleted_ids.empty();
  if (deletes) core.deletions.bump(tag);
  const bool adds = route.kind == RouteKind::create_secrets || route.kind == RouteKind::duplicate;
  update_entry(
      core, policy::entry_key(View::secrets, route.account_id, route.store_id), tag,
      policy::memo_tag(View::secrets, route.account_id, route.store_id), now,
      [&](const CachedValue& old, bool& doubt) -> std::shared_ptr<const CachedValue> {
        // A stored answer here is the store's 404: the write says the store exists.
        // A create after a delete of what it created would add it back.
        if (old.type() != CachedValue::Type::secrets ||
            (adds && core.deletions.current(tag) != start.deletions)) {
          doubt = true;
          return nullptr;
        }
        std::vector<upstream::Secret> secrets;
        const policy::Merge merge = policy::merge_secrets(static_cast<const SecretsSnapshot&>(old),
                                                          route.kind, route.store_id, e, secrets);
        return merged_snapshot<SecretsSnapshot>(core, merge, std::move(secrets), doubt);
      },
      turns);
}

void apply_to_stores(Core& core, const upstream::Route& route, const policy::WriteEffect& e,
                     Micros now) {
  update_entry(core, policy::entry_key(View::stores, route.account_id, {}),
               policy::tag_of(View::stores, route.account_id, {}),
               policy::memo_tag(View::stores, route.account_id, {}), now,
               [&](const CachedValue& old, bool& doubt) -> std::shared_ptr<const CachedValue> {
                 if (old.type() != CachedValue::Type::stores) {
                   doubt = true;
                   return nullptr;
                 }
                 const auto& snap = static_cast<const StoresSnapshot&>(old);
                 std::vector<upstream::Store> stores(snap.stores().begin(), snap.stores().end());
                 const policy::Merge merge =
                     policy::merge_stores(stores, route.kind, route.store_id, e);
                 return merged_snapshot<StoresSnapshot>(core, merge, std::move(stores), doubt);
               });
}

// `delta`: the change of usage; nullopt when unknown (the quota is invalidated). Applied
// only to an answer that arrived before the write was sent (a later one may already
// count it) by a write no other write of the account overlapped.
void apply_to_quota(Core& core, const std::string& account, std::optional<long> delta, bool alone,
                    const WriteStart& start, Micros now) {
  if (delta == 0) return;
  update_entry(core, policy::entry_key(View::quota, account, {}),
               policy::tag_of(View::quota, account, {}), {}, now,
               [&](const CachedValue& old, bool& doubt) -> std::shared_ptr<const CachedValue> {
                 const auto* answer = old.type() == CachedValue::Type::answer
                                          ? static_cast<const StoredAnswer*>(&old)
                                          : nullptr;
                 std::optional<std::string> body;
                 if (delta && alone && answer != nullptr && answer->status() == 200 &&
                     answer->seq() <= start.seq) {
                   body = policy::quota_with_usage(answer->body(), *delta);
                 }
                 if (!body) {
                   doubt = true;
                   return nullptr;
                 }
                 return std::make_shared<const StoredAnswer>(200, std::move(*body), answer->seq());
               });
}

// The secrets a forced store delete removed, counted from the store's cached secrets;
// nullopt when they are not cached.
std::optional<long> cached_secret_count(Core& core, const upstream::Route& route, Micros now) {
  auto found =
      core.storage->lookup(policy::entry_key(View::secrets, route.account_id, route.store_id), now);
  if (!found) return std::nullopt;
  const auto& v = static_cast<const CachedValue&>(*found->value);
  if (v.type() != CachedValue::Type::secrets) return std::nullopt;
  return static_cast<long>(static_cast<const SecretsSnapshot&>(v).size());
}

// Replaces whatever is cached for one store by what a store write says of it now: a new
// store's GET answer and its secrets (none yet), or a deleted store's 404 for both
// (store ids are never reused). A null value is not stored; neither is a view whose TTL
// is 0.
void replace_store_entries(Core& core, const std::string& account, const std::string& store_id,
                           std::shared_ptr<const CachedValue> get,
                           std::shared_ptr<const CachedValue> secrets, bool negative, Micros now) {
  const std::string tag = policy::store_tag(account, store_id);
  const Micros keep_stale = core.keep_stale();
  core.gens.bump_and_run(tag, [&] {
    core.storage->erase_tag_prefix(tag);
    if (!core.settings.enabled) return;
    for (auto [view, value] : {std::pair{View::store, get}, std::pair{View::secrets, secrets}}) {
      const Micros ttl = negative ? Micros{core.settings.ttl_negative} : core.ttl(view);
      if (!value || ttl <= 0) continue;
      const auto life = policy::lifetime(now, ttl, negative ? 0 : keep_stale, negative);
      if (core.storage->insert(policy::entry_key(view, account, store_id), tag, value,
                               EntryMeta{now, life.fresh_until, life.keep_until},
                               now) == InsertResult::stored) {
        core.counters.write_updates.fetch_add(1, std::memory_order_relaxed);
      }
    }
  });
}

// Applies a successful write's effect to the cached entries it changed.
void apply_write(Core& core, const upstream::Route& route, const policy::WriteEffect& e,
                 const WriteStart& start, bool alone, Micros now) {
  switch (route.kind) {
    case RouteKind::create_store:
      apply_to_stores(core, route, e, now);
      // The new store as its GET answers it, and its secrets: none, unless a write of the
      // account overlapped this one (another client may have learned the id and written).
      replace_store_entries(
          core, route.account_id, e.store->id,
          std::make_shared<const StoredAnswer>(
              200, upstream::envelope_success(upstream::to_json(*e.store)), core.take_seq()),
          alone ? std::make_shared<const SecretsSnapshot>(core.take_seq(),
                                                          std::vector<upstream::Secret>{})
                : nullptr,
          false, now);
      return;
    case RouteKind::delete_store: {
      std::optional<long> delta = e.usage_delta;
      if (!delta) {
        if (auto count = cached_secret_count(core, route, now)) delta = -*count;
      }
      apply_to_stores(core, route, e, now);
      core.deletions.bump(policy::store_tag(route.account_id, route.store_id));
      const auto gone = std::make_shared<const StoredAnswer>(
          404, upstream::envelope_error(upstream::errors::store_not_found()));
      replace_store_entries(core, route.account_id, route.store_id, gone, gone, true, now);
      apply_to_quota(core, route.account_id, delta, alone, start, now);
      return;
    }
    default:
      apply_to_secrets(core, route, e, start, now);
      apply_to_quota(core, route.account_id, e.usage_delta, alone, start, now);
      return;
  }
}

// Ends a write however its coroutine ends (answer, exception, or destruction mid-call):
// a write that got a 2xx API answer is applied to the cached entries it changed; any
// other (an error, a timeout, an answer this cache does not understand) invalidates what
// it may have changed, since it may have been applied.
class WriteFinisher {
 public:
  WriteFinisher(Core& core, const upstream::Route& route, WriteStart start)
      : core_(core), route_(route), start_(std::move(start)) {}
  WriteFinisher(const WriteFinisher&) = delete;
  WriteFinisher& operator=(const WriteFinisher&) = delete;
  ~WriteFinisher() { finish(nullptr, 0); }

  void finish(const ApiResponse* response, Micros now) {
    if (finished_) return;
    finished_ = true;
    const bool alone = core_.writes.end(route_.account_id, start_.token);
    std::optional<policy::WriteEffect> effect;
    if (response != nullptr && core_.settings.enabled &&
        policy::is_api_answer(route_.kind, *response)) {
      effect = policy::effect_of_write(route_, start_.bulk_body, *response);
    }
    if (effect) {
      apply_write(core_, route_, *effect, start_, alone, now);
    } else {
      core_.invalidate(policy::invalidated_tags(route_, response));
    }
  }

 private:
  Core& core_;
  const upstream::Route& route_;
  const WriteStart start_;
  bool finished_ = false;
};

}  // namespace

boost::asio::awaitable<Answer> ReadThroughCache::write(upstream::Route route,
                                                       upstream::ApiRequest request, Micros now) {
  std::shared_ptr<Impl> impl = impl_;
  WriteStart start;
  start.token = impl->writes.begin(route.account_id);
  start.seq = impl->next_seq.load(std::memory_order_relaxed);
  start.deletions = impl->deletions.current(policy::store_tag(route.account_id, route.store_id));
  if (route.kind == RouteKind::bulk_delete) start.bulk_body = request.body;
  CallResult r = boost::system::error_code(upstream::UpstreamErrc::shutting_down);
  std::chrono::nanoseconds spent{0};
  // In fleet mode: counted from before the upstream call to after the publish (also when
  // this coroutine is destroyed midway).
  struct Unpublished {
    std::atomic<int>* count;
    ~Unpublished() {
      if (count) count->fetch_sub(1, std::memory_order_acq_rel);
    }
  } unpublished{impl->publisher ? &impl->writes_unpublished : nullptr};
  if (unpublished.count) unpublished.count->fetch_add(1, std::memory_order_acq_rel);
  {
    WriteFinisher finisher(*impl, route, std::move(start));
    r = co_await impl->timed_call(std::move(request), &spent);
    // Applied as of when the answer arrived.
    finisher.finish(r ? &*r : nullptr,
                    now + std::chrono::duration_cast<std::chrono::microseconds>(spent).count());
  }
  // A write the upstream refused (4xx) changed nothing: there is nothing to publish, and
  // ids nobody ever wrote to never become generation keys in Redis.
  const bool refused = r && r->status >= 400 && r->status < 500;
  if (impl->publisher && !refused) {
    co_await impl->publisher->publish(route.account_id,
                                      policy::invalidated_tags(route, r ? &*r : nullptr));
  }
  // Checked after the cache was updated: a write whose answer is garbage may have been
  // applied, and invalidated above.
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

}  // namespace sproxy::cache
