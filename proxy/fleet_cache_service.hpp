// Fleet mode's second-level cache, wired for the proxy: its own Redis connection on the
// fleet's thread (a fill's claim never queues behind a publish), the FleetTier the cache's
// fills ask (cache/fleet_tier.hpp), and its metrics:
//   fleet_cache_lookups_total{outcome="hit"|"hit_after_wait"|"miss"|"waited_out"|
//                             "error"|"undecodable"}
//   fleet_cache_stores_total{outcome="stored"|"failed"}
//   fleet_redis_connected{connection="cache"}
//   fleet_redis_commands_total{connection="cache",outcome="reply"|"error_reply"|"failed"}
// (all prefixed secrets_proxy_). Construction throws on a missing key (start-up).
// Thread safety: status() from any thread.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <memory>
#include <nlohmann/json.hpp>

#include "cache/fleet_tier.hpp"
#include "cache/read_through.hpp"
#include "config/config.hpp"
#include "proxy/metrics.hpp"

namespace sproxy::proxy {

class FleetCacheService {
 public:
  // Joins `cache` to the fleet's shared cache (ReadThroughCache::share_fills).
  FleetCacheService(const config::Config& cfg, boost::asio::any_io_executor executor,
                    const std::shared_ptr<cache::ReadThroughCache>& cache,
                    const std::shared_ptr<Metrics>& metrics);
  ~FleetCacheService();
  FleetCacheService(const FleetCacheService&) = delete;
  FleetCacheService& operator=(const FleetCacheService&) = delete;

  // For /admin/status: connected and the counters.
  nlohmann::json status() const;

 private:
  std::shared_ptr<upstream::RedisConnection> redis_;
  std::shared_ptr<cache::FleetTier> tier_;
};

}  // namespace sproxy::proxy
