#include "cache/fleet_sync.hpp"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <limits>
#include <set>
#include <stdexcept>
#include <utility>

#include "cache/cache_core.hpp"

namespace sproxy::cache {

namespace asio = boost::asio;
using upstream::FleetInvalidation;
using upstream::GenerationKey;

// ---------------------------------------------------------------------------------------
// The cache's side of fleet mode

void ReadThroughCache::join_fleet(std::shared_ptr<WritePublisher> publisher) {
  impl_->publisher = std::move(publisher);
  impl_->fleet_gated = true;
}

void ReadThroughCache::set_serve_cached_until(Micros deadline) {
  // Release: a read that sees the new deadline also sees what was erased before it.
  impl_->serve_cached_until.store(deadline, std::memory_order_release);
}

void ReadThroughCache::fence_fills() { impl_->gens.bump_all(); }

void ReadThroughCache::invalidate_tags(const std::vector<std::string>& tags) {
  impl_->invalidate(tags);
}

std::vector<std::string> ReadThroughCache::cached_tags(Micros now) const {
  std::vector<StoredEntry> entries;
  impl_->storage->export_entries(now, entries);
  std::set<std::string> tags;
  for (auto& e : entries) {
    if (!policy::is_memo_key(e.key)) tags.insert(std::move(e.tag));
  }
  return {tags.begin(), tags.end()};
}

// ---------------------------------------------------------------------------------------

namespace {

constexpr Micros kSynced = std::numeric_limits<Micros>::max();
constexpr std::size_t kMaxPending = 1024;

// The cache tags a generation covers.
std::vector<std::string> tags_of(const GenerationKey& key) {
  if (!key.store.empty()) return {policy::store_tag(key.account, key.store)};
  return {policy::tag_of(policy::View::stores, key.account, {}),
          policy::tag_of(policy::View::quota, key.account, {})};
}

}  // namespace

std::optional<GenerationKey> generation_of_tag(std::string_view tag) {
  const auto slash = tag.find('/');
  if (slash == std::string_view::npos || slash == 0) return std::nullopt;
  const std::string_view account = tag.substr(0, slash);
  const std::string_view rest = tag.substr(slash + 1);
  if (rest == "stores" || rest == "quota") return GenerationKey{std::string(account), {}};
  constexpr std::string_view kStore = "store/";
  if (rest.size() > kStore.size() + 1 && rest.starts_with(kStore) && rest.ends_with('/')) {
    const std::string_view store = rest.substr(kStore.size(), rest.size() - kStore.size() - 1);
    if (store.find('/') != std::string_view::npos) return std::nullopt;
    return GenerationKey{std::string(account), std::string(store)};
  }
  return std::nullopt;
}

FleetSync::FleetSync(std::shared_ptr<ReadThroughCache> cache,
                     std::shared_ptr<upstream::FleetChannel> channel,
                     asio::any_io_executor executor, FleetSyncOptions options)
    : cache_(cache),
      channel_(std::move(channel)),
      executor_(std::move(executor)),
      options_(std::move(options)),
      prune_at_(options_.prune_known_at),
      retry_timer_(executor_) {
  if (!cache || !channel_ || !options_.wall_clock) {
    throw std::invalid_argument("fleet sync: needs a cache, a channel and a wall clock");
  }
  serve_until_ = now() + options_.max_unsynced.count() * 1000;
  cache->set_serve_cached_until(serve_until_);
}

asio::awaitable<bool> FleetSync::publish_one(std::string account, std::vector<std::string> tags) {
  std::vector<std::string> stores;
  bool account_wide = false;
  for (const auto& tag : tags) {
    if (tag == policy::account_prefix(account)) {
      account_wide = true;
      continue;
    }
    const auto key = generation_of_tag(tag);
    if (!key || key->account != account) continue;
    if (key->store.empty()) {
      account_wide = true;
    } else if (std::find(stores.begin(), stores.end(), key->store) == stores.end()) {
      stores.push_back(key->store);
    }
  }
  auto published = co_await channel_->publish(std::move(account), std::move(stores), account_wide,
                                              std::move(tags), now());
  if (!published) co_return false;
  // Not remembered here: the generation it returns may sit above another process's write
  // this process has not received yet. Its own message, which arrives in order after
  // every earlier one, teaches it (on_message).
  counters_.published.fetch_add(1, std::memory_order_relaxed);
  co_return true;
}

asio::awaitable<void> FleetSync::publish(std::string account, std::vector<std::string> tags) {
  const auto self = shared_from_this();
  Pending kept{account, tags};
  const bool published = co_await publish_one(std::move(account), std::move(tags));
  if (published) {
    bool waiting = false;
    {
      std::lock_guard lock(mu_);
      waiting = !pending_.empty() || pending_overflow_;
    }
    // Redis answers again: what failed before goes out now, without holding this write.
    if (waiting) {
      asio::co_spawn(executor_, flush_pending(), [self](std::exception_ptr) {});
    }
    co_return;
  }
  counters_.publish_failures.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard lock(mu_);
    if (pending_.size() < kMaxPending) {
      pending_.push_back(std::move(kept));
    } else {
      pending_overflow_ = true;
    }
  }
  start_retries();
}

void FleetSync::start_retries() {
  {
    std::lock_guard lock(mu_);
    if (retrying_ || stopped_ || (pending_.empty() && !pending_overflow_)) return;
    retrying_ = true;
  }
  asio::co_spawn(executor_, retry_pending(), [self = shared_from_this()](std::exception_ptr e) {
    if (!e) return;
    // Only allocation can throw: what is kept waits for the next publish or subscription.
    std::lock_guard lock(self->mu_);
    self->retrying_ = false;
  });
}

asio::awaitable<void> FleetSync::retry_pending() {
  const auto self = shared_from_this();
  auto delay = std::max(options_.retry_min, std::chrono::milliseconds(1));
  for (;;) {
    retry_timer_.expires_after(delay);
    (void)co_await retry_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    {
      std::lock_guard lock(mu_);
      if (stopped_) {
        retrying_ = false;
        co_return;
      }
    }
    co_await flush_pending();
    {
      std::lock_guard lock(mu_);
      // Checked under the lock flush_pending() puts failures back under: nothing kept
      // is ever left without a retry.
      if (stopped_ || (pending_.empty() && !pending_overflow_)) {
        retrying_ = false;
        co_return;
      }
    }
    delay = std::min(delay * 2, std::max(options_.retry_max, delay));
  }
}

void FleetSync::stop() {
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  asio::post(executor_, [self = shared_from_this()] { self->retry_timer_.cancel(); });
}

asio::awaitable<void> FleetSync::flush_pending() {
  std::vector<Pending> queue;
  bool overflow = false;
  {
    std::lock_guard lock(mu_);
    if (pending_.empty() && !pending_overflow_) co_return;
    queue.swap(pending_);
    overflow = std::exchange(pending_overflow_, false);
    ++flushing_;
  }
  // Until this flush is over, what it sends is not known to be published.
  struct Flushing {
    FleetSync& self;
    ~Flushing() {
      std::lock_guard lock(self.mu_);
      --self.flushing_;
    }
  } flushing{*this};
  if (overflow) queue = {Pending{}};  // a purge of everything covers them all
  std::size_t sent = 0;
  // A plain loop with named locals: GCC 12 miscompiles a co_await inside a && condition.
  for (; sent < queue.size(); ++sent) {
    std::string account = queue[sent].account;
    std::vector<std::string> tags = queue[sent].tags;
    const bool published = co_await publish_one(std::move(account), std::move(tags));
    if (!published) break;
  }
  if (sent == queue.size()) co_return;
  {
    std::lock_guard lock(mu_);
    // Those that still failed go back in front of any newer ones.
    pending_.insert(pending_.begin(), std::make_move_iterator(queue.begin() + sent),
                    std::make_move_iterator(queue.end()));
    if (pending_.size() > kMaxPending) {
      pending_.clear();
      pending_overflow_ = true;
    }
  }
  start_retries();
}

bool FleetSync::all_published() const {
  std::lock_guard lock(mu_);
  return pending_.empty() && !pending_overflow_ && flushing_ == 0;
}

void FleetSync::remember(const FleetInvalidation& m) {
  bool prune = false;
  {
    std::lock_guard lock(mu_);
    if (m.account.empty()) {
      if (const auto it = m.generations.find(""); it != m.generations.end()) {
        known_purge_ = std::max(known_purge_, it->second);
      }
      return;
    }
    for (const auto& [label, generation] : m.generations) {
      std::int64_t& known = known_[GenerationKey{m.account, label}];
      known = std::max(known, generation);
    }
    prune = claim_prune();
  }
  if (prune) spawn_prune();
}

bool FleetSync::claim_prune() {
  if (known_.size() <= prune_at_ || pruning_ || stopped_) return false;
  pruning_ = true;
  return true;
}

void FleetSync::spawn_prune() {
  asio::co_spawn(executor_, prune_known(), [self = shared_from_this()](std::exception_ptr) {
    std::lock_guard lock(self->mu_);
    self->pruning_ = false;
  });
}

asio::awaitable<void> FleetSync::prune_known() {
  const auto cache = cache_.lock();
  if (!cache) co_return;
  std::set<GenerationKey> held;
  for (const auto& tag : cache->cached_tags(now())) {
    if (auto key = generation_of_tag(tag)) held.insert(std::move(*key));
  }
  std::lock_guard lock(mu_);
  forget_unheld(held);
  co_return;
}

std::vector<GenerationKey> FleetSync::missed_before(const FleetInvalidation& m) const {
  std::vector<GenerationKey> missed;
  if (m.account.empty()) return missed;
  std::lock_guard lock(mu_);
  for (const auto& [label, generation] : m.generations) {
    GenerationKey key{m.account, label};
    const auto it = known_.find(key);
    // Never learned: counted from 0 (never bumped), so a first write is the next one
    // only when nothing was published for the key before.
    const std::int64_t known = it == known_.end() ? 0 : it->second;
    if (generation > known + 1) missed.push_back(std::move(key));
  }
  return missed;
}

void FleetSync::apply(const FleetInvalidation& m) {
  const auto cache = cache_.lock();
  if (!cache) return;
  if (m.account.empty()) {
    cache->purge_all();
    return;
  }
  std::vector<std::string> tags;
  for (const auto& tag : m.tags) {
    // Only tags of the message's account: a message cannot reach into another account.
    if (tag == policy::account_prefix(m.account)) {
      cache->purge_account(m.account);
    } else if (const auto key = generation_of_tag(tag); key && key->account == m.account) {
      tags.push_back(tag);
    }
  }
  cache->invalidate_tags(tags);
}

void FleetSync::on_message(const std::string& payload) {
  const auto m = upstream::decode_invalidation(payload);
  if (!m) {
    counters_.received_malformed.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (m->origin == channel_->origin()) {
    // Its own write has already updated this cache. A generation that jumped past the
    // next one shows writes of other processes it never received (it was out of sync
    // meanwhile), which that update did not include: those entries are dropped.
    if (const auto cache = cache_.lock()) {
      for (const auto& key : missed_before(*m)) cache->invalidate_tags(tags_of(key));
    }
    remember(*m);
    counters_.received_own.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  // Applied before it is remembered: a generation this process knows is one whose
  // invalidation it has applied (refresh_store relies on it).
  apply(*m);
  remember(*m);
  counters_.received.fetch_add(1, std::memory_order_relaxed);
  if (options_.on_lag) {
    options_.on_lag(static_cast<double>(std::max<Micros>(0, now() - m->published_us)) / 1e6);
  }
}

void FleetSync::on_lost(const std::string& why) {
  const auto cache = cache_.lock();
  {
    std::lock_guard lock(mu_);
    ++epoch_;
    if (!synced_) {
      // The earlier loss's (or start-up's) deadline stands; start-up's first failure is
      // told too (a refused password or ACL shows in the log).
      if (told_unsynced_) return;
      told_unsynced_ = true;
    } else {
      synced_ = false;
      told_unsynced_ = true;
      serve_until_ = now() + options_.max_unsynced.count() * 1000;
      if (cache) cache->set_serve_cached_until(serve_until_);
    }
  }
  if (options_.on_sync) options_.on_sync(false, why);
}

void FleetSync::on_subscribed() {
  // Fills that started before the subscription may hold data older than a write this
  // process never heard of, of keys the resync below cannot know about: none of them
  // stores its result. Every write from now on reaches this process as a message.
  if (const auto cache = cache_.lock()) cache->fence_fills();
  std::uint64_t epoch = 0;
  {
    std::lock_guard lock(mu_);
    epoch = ++epoch_;
  }
  asio::co_spawn(executor_, resync(epoch), [self = shared_from_this()](std::exception_ptr e) {
    // Only allocation can throw: the process stays out of sync until the next subscription.
    if (e && self->options_.on_sync) self->options_.on_sync(false, "resynchronization failed");
  });
}

asio::awaitable<void> FleetSync::resync(std::uint64_t epoch) {
  const auto self = shared_from_this();
  const auto cache = cache_.lock();
  if (!cache) co_return;
  co_await flush_pending();
  // What it knows, and what it holds entries for without knowing (compared with -1:
  // always dropped, and learned).
  std::map<GenerationKey, std::int64_t> snapshot;
  std::int64_t known_purge = 0;
  {
    std::lock_guard lock(mu_);
    snapshot = known_;
    known_purge = known_purge_;
  }
  // Copied under the storage's shard locks: once per resync.
  std::vector<std::string> held = cache->cached_tags(now());
  std::set<GenerationKey> held_keys;
  for (const auto& tag : held) {
    if (auto key = generation_of_tag(tag)) held_keys.insert(std::move(*key));
  }
  for (const auto& key : held_keys) snapshot.emplace(key, -1);
  std::vector<GenerationKey> keys;
  keys.reserve(snapshot.size());
  for (const auto& [key, generation] : snapshot) keys.push_back(key);
  // A purge of everything bumps no account's generation: its own, read by itself.
  const auto purge = co_await channel_->purge_generation();
  const auto current = co_await channel_->generations(keys);

  std::vector<std::string> drop;
  std::vector<std::size_t> changed;
  const bool purged = purge && current && *purge != known_purge;
  if (!purge || !current || purged) drop = std::move(held);
  if (purged) cache->purge_all();
  if (current) {
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if ((*current)[i] == snapshot[keys[i]]) continue;
      changed.push_back(i);
      if (purged) continue;
      for (auto& tag : tags_of(keys[i])) drop.push_back(std::move(tag));
    }
  }
  cache->invalidate_tags(drop);
  counters_.resync_invalidations.fetch_add(drop.size(), std::memory_order_relaxed);
  {
    // Learned once dropped (see on_message), unless a message taught it something newer
    // meanwhile.
    std::lock_guard lock(mu_);
    for (const std::size_t i : changed) {
      auto it = known_.find(keys[i]);
      if (it == known_.end() || it->second == snapshot[keys[i]]) {
        known_[keys[i]] = (*current)[i];
      } else {
        it->second = std::max(it->second, (*current)[i]);
      }
    }
    forget_unheld(held_keys);
    if (purged) {
      known_purge_ = known_purge_ == known_purge ? *purge : std::max(known_purge_, *purge);
    }
  }
  {
    std::lock_guard lock(mu_);
    if (epoch_ != epoch) co_return;  // lost again meanwhile: stays out of sync
    synced_ = true;
    told_unsynced_ = false;
    serve_until_ = kSynced;
    cache->set_serve_cached_until(kSynced);  // an atomic store: ordered with on_lost's
  }
  counters_.resyncs.fetch_add(1, std::memory_order_relaxed);
  if (options_.on_sync) options_.on_sync(true, "");
}

asio::awaitable<void> FleetSync::refresh_store(std::string account, std::string store) {
  const auto self = shared_from_this();
  GenerationKey key{std::move(account), std::move(store)};
  std::vector<GenerationKey> keys = {key};
  const auto current = co_await channel_->generations(std::move(keys));
  if (!current || current->size() != 1) {
    counters_.freshness_unknown.fetch_add(1, std::memory_order_relaxed);
    co_return;
  }
  counters_.freshness_checks.fetch_add(1, std::memory_order_relaxed);
  const std::int64_t generation = current->front();
  {
    std::lock_guard lock(mu_);
    const auto it = known_.find(key);
    // Never bumped (0) is older than anything cached; a known generation at least as new
    // as Redis's has had its invalidation applied here.
    if (generation == 0 || (it != known_.end() && it->second >= generation)) co_return;
  }
  if (const auto cache = cache_.lock()) cache->invalidate_tags(tags_of(key));
  counters_.freshness_refetches.fetch_add(1, std::memory_order_relaxed);
  bool prune = false;
  {
    std::lock_guard lock(mu_);
    std::int64_t& known = known_[key];
    known = std::max(known, generation);
    prune = claim_prune();
  }
  if (prune) spawn_prune();
}

void FleetSync::forget_unheld(const std::set<GenerationKey>& held) {
  // Forgetting only ever costs a drop: a store whose generation is not known has its
  // entries dropped by the next resync, and by an own message past generation 1.
  for (auto it = known_.begin(); it != known_.end();) {
    it = held.contains(it->first) ? std::next(it) : known_.erase(it);
  }
  // Amortized: the next prune only once it has doubled again.
  prune_at_ = std::max(options_.prune_known_at, 2 * known_.size());
}

FleetSyncStats FleetSync::stats() const {
  FleetSyncStats s;
  {
    std::lock_guard lock(mu_);
    s.synced = synced_;
    s.serve_cached_until = synced_ ? 0 : serve_until_;
    s.known_generations = known_.size();
    s.pending = pending_.size() + (pending_overflow_ ? 1 : 0);
  }
  s.published = counters_.published.load(std::memory_order_relaxed);
  s.publish_failures = counters_.publish_failures.load(std::memory_order_relaxed);
  s.received = counters_.received.load(std::memory_order_relaxed);
  s.received_own = counters_.received_own.load(std::memory_order_relaxed);
  s.received_malformed = counters_.received_malformed.load(std::memory_order_relaxed);
  s.resyncs = counters_.resyncs.load(std::memory_order_relaxed);
  s.resync_invalidations = counters_.resync_invalidations.load(std::memory_order_relaxed);
  s.freshness_checks = counters_.freshness_checks.load(std::memory_order_relaxed);
  s.freshness_refetches = counters_.freshness_refetches.load(std::memory_order_relaxed);
  s.freshness_unknown = counters_.freshness_unknown.load(std::memory_order_relaxed);
  return s;
}

}  // namespace sproxy::cache
