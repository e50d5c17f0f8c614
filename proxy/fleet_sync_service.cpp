#include "proxy/fleet_sync_service.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <mutex>

#include "upstream/crypto.hpp"
#include "upstream/factory.hpp"
#include "upstream/fleet_channel.hpp"

namespace sproxy::proxy {

// The service's metric families, registered on the proxy's registry; counters mirror
// FleetSyncStats at scrape time (collect hooks run one at a time).
struct FleetSyncService::MetricsState {
  explicit MetricsState(prometheus::Registry& reg) {
    auto& published = prometheus::BuildCounter()
                          .Name("secrets_proxy_fleet_invalidations_published_total")
                          .Help(
                              "Invalidations this process published for the fleet, by outcome "
                              "(failed: Redis could not be asked; other processes then rely "
                              "on fleet.max_unsynced_ms).")
                          .Register(reg);
    published_ok = &published.Add({{"outcome", "ok"}});
    published_failed = &published.Add({{"outcome", "failed"}});
    auto& received = prometheus::BuildCounter()
                         .Name("secrets_proxy_fleet_invalidations_received_total")
                         .Help(
                             "Invalidation messages received from the fleet's channel, by "
                             "outcome (applied: another process's; own: this process's).")
                         .Register(reg);
    received_applied = &received.Add({{"outcome", "applied"}});
    received_own = &received.Add({{"outcome", "own"}});
    received_malformed = &received.Add({{"outcome", "malformed"}});
    lag = &prometheus::BuildHistogram()
               .Name("secrets_proxy_fleet_invalidation_lag_seconds")
               .Help(
                   "From another process's publish of an invalidation to its receipt here "
                   "(wall clocks of both).")
               .Register(reg)
               .Add({}, prometheus::Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001,
                                                                0.0025, 0.005, 0.01, 0.025, 0.05,
                                                                0.1, 0.25, 0.5, 1, 2.5});
    subscribed = &prometheus::BuildGauge()
                      .Name("secrets_proxy_fleet_subscribed")
                      .Help(
                          "1 while this process holds its subscription to the fleet's "
                          "invalidations.")
                      .Register(reg)
                      .Add({});
    synced = &prometheus::BuildGauge()
                  .Name("secrets_proxy_fleet_synced")
                  .Help(
                      "1 while this process trusts its cached entries (subscribed and "
                      "resynchronized); 0 while out of sync.")
                  .Register(reg)
                  .Add({});
    resyncs = &prometheus::BuildCounter()
                   .Name("secrets_proxy_fleet_resyncs_total")
                   .Help("Resynchronizations with the fleet's generations after subscribing.")
                   .Register(reg)
                   .Add({});
    resync_invalidations =
        &prometheus::BuildCounter()
             .Name("secrets_proxy_fleet_resync_invalidations_total")
             .Help(
                 "Cache tags dropped by resynchronizations (changed while out of sync, or "
                 "never learned).")
             .Register(reg)
             .Add({});
  }

  // Counters follow absolute values (FleetSyncStats only grows).
  static void mirror(prometheus::Counter* c, std::uint64_t& last, std::uint64_t value) {
    if (value > last) c->Increment(static_cast<double>(value - last));
    last = value;
  }

  void refresh(const cache::FleetSyncStats& s, bool is_subscribed) {
    mirror(published_ok, last[0], s.published);
    mirror(published_failed, last[1], s.publish_failures);
    mirror(received_applied, last[2], s.received);
    mirror(received_own, last[3], s.received_own);
    mirror(received_malformed, last[4], s.received_malformed);
    mirror(resyncs, last[5], s.resyncs);
    mirror(resync_invalidations, last[6], s.resync_invalidations);
    subscribed->Set(is_subscribed ? 1 : 0);
    synced->Set(s.synced ? 1 : 0);
  }

  prometheus::Counter *published_ok, *published_failed, *received_applied, *received_own,
      *received_malformed, *resyncs, *resync_invalidations;
  prometheus::Histogram* lag;
  prometheus::Gauge *subscribed, *synced;
  std::uint64_t last[7] = {};
};

FleetSyncService::FleetSyncService(const config::Config& cfg, boost::asio::any_io_executor executor,
                                   std::shared_ptr<cache::ReadThroughCache> cache,
                                   std::shared_ptr<Metrics> metrics) {
  upstream::RedisOptions redis = upstream::fleet_redis_options(cfg);
  redis_ = upstream::RedisConnection::create(executor, redis);
  // A process id for this run: its own messages are told apart by it.
  auto channel = std::make_shared<upstream::FleetChannel>(
      redis_, cfg.fleet.key_prefix, upstream::to_hex(upstream::random_bytes(8)));
  if (metrics) metrics_ = std::make_shared<MetricsState>(metrics->registry());

  cache::FleetSyncOptions options;
  options.max_unsynced = std::chrono::milliseconds(cfg.fleet.max_unsynced_ms);
  options.wall_clock = upstream::wall_clock_micros;
  if (metrics_) {
    options.on_lag = [m = metrics_](double seconds) { m->lag->Observe(seconds); };
  }
  options.on_sync = [max = cfg.fleet.max_unsynced_ms](bool synced, const std::string& why) {
    if (synced) {
      spdlog::info(
          "fleet: subscribed to invalidations and resynchronized; cached entries are "
          "trusted again");
    } else {
      spdlog::warn(
          "fleet: lost the subscription to invalidations ({}); cached entries are served for "
          "at most {} ms more, then reads go upstream until it is back",
          why, max);
    }
  };
  sync_ = std::make_shared<cache::FleetSync>(cache, channel, executor, std::move(options));
  cache->join_fleet(sync_);

  upstream::RedisSubscriberOptions sub;
  sub.redis = std::move(redis);
  sub.channel = channel->channel();
  channel_ = channel->channel();
  upstream::RedisSubscriberEvents events;
  // Weak: the subscriber's loop must not keep the sync (and its cache) alive.
  const std::weak_ptr<cache::FleetSync> weak = sync_;
  events.on_message = [weak](const std::string& payload) {
    if (auto s = weak.lock()) s->on_message(payload);
  };
  events.on_subscribed = [weak] {
    if (auto s = weak.lock()) s->on_subscribed();
  };
  events.on_lost = [weak](const std::string& why) {
    if (auto s = weak.lock()) s->on_lost(why);
  };
  subscriber_ = upstream::RedisSubscriber::create(executor, std::move(sub), std::move(events));
  if (metrics_) {
    // Weak: the Redis objects must not outlive the fleet's thread, which the metrics do.
    metrics->add_collect_hook(
        [m = metrics_, weak_sync = weak, weak_sub = std::weak_ptr(subscriber_)](Metrics&) {
          const auto s = weak_sync.lock();
          const auto sub = weak_sub.lock();
          if (s && sub) m->refresh(s->stats(), sub->subscribed());
        });
  }
}

void FleetSyncService::start() { subscriber_->start(); }

FleetSyncService::~FleetSyncService() {
  sync_->stop();
  subscriber_->stop();
  redis_->close();
}

nlohmann::json FleetSyncService::status() const {
  const cache::FleetSyncStats s = sync_->stats();
  nlohmann::json until = nullptr;
  if (!s.synced) until = s.serve_cached_until;
  return {{"subscribed", subscriber_->subscribed()},
          {"synced", s.synced},
          {"serve_cached_until_us", until},
          {"channel", channel_},
          {"published", s.published},
          {"publish_failures", s.publish_failures},
          {"received", s.received},
          {"resyncs", s.resyncs},
          {"known_generations", s.known_generations},
          {"last_failure", subscriber_->last_failure()}};
}

}  // namespace sproxy::proxy
