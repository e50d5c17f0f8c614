// FleetSyncService: fleet mode's invalidation across processes, wired for the proxy. It
// owns the Redis connection that publishes (and reads generations), the subscriber
// connection on `<key_prefix>:inval`, and the cache's FleetSync (cache/fleet_sync.hpp),
// joins the cache to the fleet, logs when the process stops and starts trusting its
// cache, and exports its metrics:
//   fleet_invalidations_published_total{outcome="ok"|"failed"}
//   fleet_invalidations_received_total{outcome="applied"|"own"|"malformed"}
//   fleet_invalidation_lag_seconds (histogram: another process's publish -> receipt)
//   fleet_subscribed (1 while the subscription is held)  fleet_synced (1 while cached
//   entries are trusted)  fleet_resyncs_total  fleet_resync_invalidations_total
// (all prefixed secrets_proxy_). Redis runs on `executor` (the fleet's own thread).
// Construction may throw (config problems); start() subscribes. Thread safety: status()
// from any thread.
// Destruction stops the subscription and the retries of invalidations whose publish failed.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cache/fleet_sync.hpp"
#include "cache/read_through.hpp"
#include "config/config.hpp"
#include "proxy/metrics.hpp"
#include "upstream/redis_subscriber.hpp"

namespace sproxy::proxy {

class FleetSyncService {
 public:
  FleetSyncService(const config::Config& cfg, boost::asio::any_io_executor executor,
                   std::shared_ptr<cache::ReadThroughCache> cache,
                   std::shared_ptr<Metrics> metrics);
  ~FleetSyncService();
  FleetSyncService(const FleetSyncService&) = delete;
  FleetSyncService& operator=(const FleetSyncService&) = delete;

  // Subscribes (its log lines may follow at once: call it after the listening line).
  void start();

  // For /admin/status: subscribed, synced, the channel, counters.
  nlohmann::json status() const;
  // Publishes purges (and, through the cache, writes) to the fleet; checks freshness.
  std::shared_ptr<cache::FleetSync> sync() const { return sync_; }

 private:
  struct MetricsState;
  std::shared_ptr<upstream::RedisConnection> redis_;
  std::shared_ptr<cache::FleetSync> sync_;
  std::shared_ptr<upstream::RedisSubscriber> subscriber_;
  std::shared_ptr<MetricsState> metrics_;
  std::string channel_;
};

}  // namespace sproxy::proxy
