#include "proxy/fleet_cache_service.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <chrono>

#include "upstream/crypto.hpp"
#include "upstream/factory.hpp"

namespace sproxy::proxy {

namespace {

// Counters that follow absolute values read at scrape time (they only grow).
class Mirrored {
 public:
  explicit Mirrored(prometheus::Counter& c) : counter_(&c) {}
  void follow(std::uint64_t value) {
    if (value > last_) counter_->Increment(static_cast<double>(value - last_));
    last_ = value;
  }

 private:
  prometheus::Counter* counter_;
  std::uint64_t last_ = 0;
};

struct TierMetrics {
  explicit TierMetrics(prometheus::Registry& reg) {
    auto& lookups = prometheus::BuildCounter()
                        .Name("secrets_proxy_fleet_cache_lookups_total")
                        .Help(
                            "Local misses that asked the fleet's shared cache, by outcome "
                            "(hit, hit_after_wait: another process's fill; miss: this process "
                            "filled; waited_out, error, undecodable: the upstream was called "
                            "without it).")
                        .Register(reg);
    for (const char* o : {"hit", "hit_after_wait", "miss", "waited_out", "error", "undecodable"}) {
      counters.emplace_back(lookups.Add({{"outcome", o}}));
    }
    auto& stores = prometheus::BuildCounter()
                       .Name("secrets_proxy_fleet_cache_stores_total")
                       .Help("Fills shared with the fleet's cache, by outcome.")
                       .Register(reg);
    counters.emplace_back(stores.Add({{"outcome", "stored"}}));
    counters.emplace_back(stores.Add({{"outcome", "failed"}}));
    auto& commands = prometheus::BuildCounter()
                         .Name("secrets_proxy_fleet_redis_commands_total")
                         .Help("Redis commands of this process, by connection and outcome.")
                         .Register(reg);
    for (const char* o : {"reply", "error_reply", "failed"}) {
      counters.emplace_back(commands.Add({{"connection", "cache"}, {"outcome", o}}));
    }
    connected = &prometheus::BuildGauge()
                     .Name("secrets_proxy_fleet_redis_connected")
                     .Help("1 while the connection to the fleet's Redis is established.")
                     .Register(reg)
                     .Add({{"connection", "cache"}});
  }

  void refresh(const cache::FleetTierStats& s, const upstream::RedisCommandStats& c,
               bool is_connected) {
    // hits counts hits_waited too; neither can outgrow the other between the two loads.
    const std::uint64_t values[] = {s.hits > s.hits_waited ? s.hits - s.hits_waited : 0,
                                    s.hits_waited,
                                    s.misses,
                                    s.waited_out,
                                    s.errors,
                                    s.undecodable,
                                    s.stored,
                                    s.store_errors,
                                    c.replies,
                                    c.error_replies,
                                    c.failures};
    for (std::size_t i = 0; i < counters.size(); ++i) counters[i].follow(values[i]);
    connected->Set(is_connected ? 1 : 0);
  }

  std::vector<Mirrored> counters;
  prometheus::Gauge* connected;
};

}  // namespace

FleetCacheService::FleetCacheService(const config::Config& cfg,
                                     boost::asio::any_io_executor executor,
                                     const std::shared_ptr<cache::ReadThroughCache>& cache,
                                     const std::shared_ptr<Metrics>& metrics) {
  cache::FleetTierOptions options;
  options.key_prefix = cfg.fleet.key_prefix;
  options.seal_key = upstream::fleet_cache_key(cfg);
  options.origin = upstream::to_hex(upstream::random_bytes(8));
  options.lock_ttl = std::chrono::milliseconds(cfg.fleet.cache.lock_ms);
  options.max_wait = std::chrono::milliseconds(cfg.fleet.cache.wait_ms);
  options.wall_clock = upstream::wall_clock_micros;
  redis_ =
      upstream::RedisConnection::create(std::move(executor), upstream::fleet_redis_options(cfg));
  tier_ = std::make_shared<cache::FleetTier>(redis_, std::move(options));
  cache->share_fills(tier_);
  if (metrics) {
    auto m = std::make_shared<TierMetrics>(metrics->registry());
    // Weak: the hook may outlive this service (the metrics outlive the request path).
    metrics->add_collect_hook([m, weak = std::weak_ptr(tier_)](Metrics&) {
      if (auto tier = weak.lock()) {
        m->refresh(tier->stats(), tier->connection().stats(), tier->connection().connected());
      }
    });
  }
}

FleetCacheService::~FleetCacheService() {
  if (redis_) redis_->close();
}

nlohmann::json FleetCacheService::status() const {
  const cache::FleetTierStats s = tier_->stats();
  return {{"connected", redis_->connected()}, {"hits", s.hits},
          {"hits_after_wait", s.hits_waited}, {"misses", s.misses},
          {"waited_out", s.waited_out},       {"errors", s.errors},
          {"undecodable", s.undecodable},     {"stored", s.stored},
          {"store_errors", s.store_errors}};
}

}  // namespace sproxy::proxy
