// Builds the configured Upstream: the embedded store (default) or an HTTP(S) client for
// a Cloudflare-compatible base URL. Start-up only: throws std::runtime_error (or
// config::ConfigError) with one clear message when the configuration cannot work
// (unopenable database, missing upstream credential, malformed base URL).
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "config/config.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/redis_connection.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {

// Fleet mode's wiring (cfg.fleet.enabled): the executor the Redis connection runs on (its
// own thread in the proxy) and who hears when the guard leaves (shared = false, with the
// connection's last failure, never a credential) or rejoins the fleet's shared budget.
struct FleetWiring {
  boost::asio::any_io_executor executor;
  std::function<void(bool shared, const std::string& why)> on_fleet_mode;
};

// The fleet's Redis connection options from `cfg.fleet.redis`, the ACL user and password
// read from their variables or files. Throws as make_upstream does.
RedisOptions fleet_redis_options(const config::Config& cfg);

// The fleet's shared-cache key (cfg.fleet.cache): from key_env when that variable is set,
// else from key_file, which must exist (it is never created: every process needs the
// same key). Throws std::runtime_error naming the variable or file, never the key.
std::string fleet_cache_key(const config::Config& cfg);

// An http upstream comes wrapped in a GuardedUpstream (outermost, so that emulated
// behaviour sits behind it as the remote API would); the embedded store is not guarded.
// In fleet mode (cfg.fleet.enabled and `fleet` given) the guard shares its budget through
// Redis (FleetBudget; the Redis credential is read here); without it, no Redis is used.
std::shared_ptr<Upstream> make_upstream(const config::Config& cfg,
                                        std::optional<FleetWiring> fleet = std::nullopt);

// The guard's options from the upstream config (rate budget, retries, breaker, write
// wait); everything else keeps the GuardedUpstreamOptions defaults.
GuardedUpstreamOptions guarded_upstream_options(const config::UpstreamConfig& cfg);

}  // namespace sproxy::upstream
