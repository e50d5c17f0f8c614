// FleetSync: fleet mode's invalidation across processes. Every write (and purge) of this
// process is published through Redis before its answer goes out (FleetChannel: the
// store's and, for account-wide changes, the account's generation are bumped, and the
// invalidated tags go out on the channel with them); every message of another process
// invalidates those tags here (bump, then erase: a fill that started before the write
// never stores pre-write data). This process's own messages change nothing in its cache
// (its write has already applied its answer) but, like every message, teach it the
// latest generation of each store and account.
//
// Sync: the cache trusts its entries while the subscription is held (on_subscribed ..
// on_lost). From a loss (and from start-up until the first subscription) entries are
// served for max_unsynced at most; after that every read goes upstream
// (ReadThroughCache::set_serve_cached_until). On (re)subscription the process compares
// every generation it knows, and the generation of every store and account it holds
// entries for, with Redis's (MGET in batches), drops what differs or what it never
// learned, drops everything when the fleet's purge generation differs from the one it
// learned last (a purge of everything was published meanwhile; never learned: at the
// first resync), and trusts its entries again once that is done. When the generations cannot
// be read, everything held is dropped instead. It then forgets the generations of keys
// it held no entry of, so that what it knows stays as large as what its cache holds (and
// so between resyncs, on `executor`, whenever what it knows has doubled past
// prune_known_at).
//
// A publish that fails is kept (bounded) and published again by a retry on `executor`
// (retry_min doubling up to retry_max, for as long as anything is kept), and at once after
// the next successful publish or (re)subscription, so that a write made while Redis could
// not be asked still reaches the processes that trusted their entries again, even when no
// later write follows. stop() ends the retries (for shutdown).
//
// Thread safety: publish() from any thread; on_message / on_subscribed / on_lost from the
// subscriber's strand; resynchronization runs on `executor`. State is under one mutex,
// never held across an await, nor while the cache is called (except its sync deadline,
// an atomic store).
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cache/read_through.hpp"
#include "upstream/fleet_channel.hpp"

namespace sproxy::cache {

struct FleetSyncOptions {
  std::chrono::milliseconds max_unsynced{1'000};
  std::function<Micros()> wall_clock;  // epoch microseconds; required
  // Seconds from another process's publish to this receipt (wall clocks of both).
  std::function<void(double seconds)> on_lag;
  // The cache stopped trusting its entries (false, with why) or trusts them again (true).
  std::function<void(bool synced, const std::string& why)> on_sync;
  // Kept invalidations are published again after retry_min, then after twice as long each
  // time up to retry_max, until none is left.
  std::chrono::milliseconds retry_min{100};
  std::chrono::milliseconds retry_max{5'000};
  // Between resyncs, once it knows more generations than this (and twice as many as after
  // the last prune), it forgets those of keys its cache holds no entry of.
  std::size_t prune_known_at = 4096;
};

struct FleetSyncStats {
  bool synced = false;
  Micros serve_cached_until = 0;  // when not synced
  std::uint64_t published = 0;
  std::uint64_t publish_failures = 0;
  std::uint64_t received = 0;            // applied messages of other processes
  std::uint64_t received_own = 0;        // this process's own messages
  std::uint64_t received_malformed = 0;  // not a message of the expected shape
  std::uint64_t resyncs = 0;
  std::uint64_t resync_invalidations = 0;  // tags dropped by resynchronizations
  std::uint64_t known_generations = 0;
  std::uint64_t pending = 0;              // invalidations waiting to be published
  std::uint64_t freshness_checks = 0;     // refresh_store calls that read Redis
  std::uint64_t freshness_refetches = 0;  // ... that found the store's entries older
  std::uint64_t freshness_unknown = 0;    // ... that could not read Redis
};

// The generation a cache tag belongs to: a store's tag to the store's, the account's
// stores list and quota to the account's own. nullopt for any other tag.
std::optional<upstream::GenerationKey> generation_of_tag(std::string_view tag);

class FleetSync : public WritePublisher, public std::enable_shared_from_this<FleetSync> {
 public:
  // Starts out of sync (entries served for max_unsynced from now). Throws
  // std::invalid_argument without a cache, a channel or a wall clock.
  FleetSync(std::shared_ptr<ReadThroughCache> cache,
            std::shared_ptr<upstream::FleetChannel> channel, boost::asio::any_io_executor executor,
            FleetSyncOptions options);

  // Publishes `tags` of `account` (an empty account: everything, a purge of all; the tag
  // "<account>/": the whole account). Never fails: a failure is counted.
  boost::asio::awaitable<void> publish(std::string account, std::vector<std::string> tags) override;
  // No publish that failed is waiting for (or in the middle of) its retry.
  bool all_published() const override;

  // Fresh authorization: one Redis read of the store's generation. When it is newer than
  // what this process has applied (or the process never learned one), the store's
  // entries are dropped, so that the next lookup refetches the snapshot; otherwise
  // nothing changes and no upstream call follows. Redis unreachable: nothing changes
  // (the sync rules hold), counted.
  boost::asio::awaitable<void> refresh_store(std::string account, std::string store);

  void on_message(const std::string& payload);
  void on_subscribed();
  void on_lost(const std::string& why);

  FleetSyncStats stats() const;

  // Ends the retries of kept invalidations (the retry timer is cancelled on `executor`);
  // nothing is retried after it. For shutdown; publish() still works.
  void stop();

 private:
  struct Pending {
    std::string account;
    std::vector<std::string> tags;
  };
  boost::asio::awaitable<void> resync(std::uint64_t epoch);
  // Publishes the invalidations whose publish failed, oldest first, until one fails.
  boost::asio::awaitable<void> flush_pending();
  // Starts the retry loop unless it runs (or stop() was called). Called without mu_.
  void start_retries();
  boost::asio::awaitable<void> retry_pending();
  boost::asio::awaitable<bool> publish_one(std::string account, std::vector<std::string> tags);
  void remember(const upstream::FleetInvalidation& m);
  // The keys of `m` whose generation is more than one past what this process knows.
  std::vector<upstream::GenerationKey> missed_before(const upstream::FleetInvalidation& m) const;
  void apply(const upstream::FleetInvalidation& m);
  // Under mu_: drops the known generations of keys the cache held no entry of (at the
  // resync's start), so that known_ stays as large as the cache's content.
  void forget_unheld(const std::set<upstream::GenerationKey>& held);
  // Under mu_: whether known_ has outgrown prune_at_ and no prune runs (then one is
  // claimed: the caller calls spawn_prune() once it has released mu_).
  bool claim_prune();
  void spawn_prune();
  boost::asio::awaitable<void> prune_known();
  Micros now() const { return options_.wall_clock(); }

  const std::weak_ptr<ReadThroughCache> cache_;
  const std::shared_ptr<upstream::FleetChannel> channel_;
  const boost::asio::any_io_executor executor_;
  const FleetSyncOptions options_;

  mutable std::mutex mu_;
  std::map<upstream::GenerationKey, std::int64_t> known_;
  // The fleet's purge generation (purges of everything) as last learned; -1: never.
  std::int64_t known_purge_ = -1;
  // Member order: after options_ (the constructor sets it from there).
  std::size_t prune_at_;
  bool pruning_ = false;
  std::uint64_t epoch_ = 0;  // bumped by every subscription and loss
  bool synced_ = false;
  bool told_unsynced_ = false;  // on_sync heard of the current time out of sync
  Micros serve_until_ = 0;
  // Invalidations not published yet (Redis could not be asked), at most kMaxPending; past
  // that, one purge of everything stands for all of them.
  std::vector<Pending> pending_;
  bool pending_overflow_ = false;
  int flushing_ = 0;       // flush_pending() calls sending kept invalidations
  bool retrying_ = false;  // retry_pending() runs
  bool stopped_ = false;
  // retry_pending()'s timer; used on executor_ only.
  boost::asio::steady_timer retry_timer_;

  struct Counters {
    std::atomic<std::uint64_t> published{0}, publish_failures{0}, received{0}, received_own{0},
        received_malformed{0}, resyncs{0}, resync_invalidations{0}, freshness_checks{0},
        freshness_refetches{0}, freshness_unknown{0};
  };
  Counters counters_;
};

}  // namespace sproxy::cache
