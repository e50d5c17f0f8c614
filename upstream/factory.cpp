#include "upstream/factory.hpp"

#include <chrono>
#include <stdexcept>
#include <string>

#include "config/redis_url.hpp"
#include "config/upstream_credential.hpp"
#include "upstream/embedded_store.hpp"
#include "upstream/embedded_upstream.hpp"
#include "upstream/emulation.hpp"
#include "upstream/fleet_budget.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/http_upstream.hpp"
#include "upstream/key_file.hpp"
#include "upstream/redis_connection.hpp"

namespace sproxy::upstream {

GuardedUpstreamOptions guarded_upstream_options(const config::UpstreamConfig& cfg) {
  GuardedUpstreamOptions out;
  out.budget.limit = cfg.rate_limit_requests;
  out.budget.window = std::chrono::seconds(cfg.rate_limit_window_s);
  out.budget.safety_margin = cfg.rate_limit_margin;
  out.budget.burst_limit = cfg.rate_limit_per_second;
  out.client_share = cfg.client_share;
  out.breaker.failure_threshold = cfg.breaker_failures;
  out.breaker.open_duration = std::chrono::milliseconds(cfg.breaker_open_ms);
  out.max_retries = cfg.max_retries;
  out.write_budget_wait = std::chrono::milliseconds(cfg.write_budget_wait_ms);
  return out;
}

namespace {

std::shared_ptr<Upstream> make_base_upstream(const config::Config& cfg) {
  switch (cfg.upstream.kind) {
    case config::UpstreamKind::embedded: {
      auto store = std::make_shared<EmbeddedStore>(embedded_store_options(cfg.store));
      return std::make_shared<EmbeddedUpstream>(std::move(store));
    }
    case config::UpstreamKind::http:
      return std::make_shared<HttpUpstream>(http_upstream_options(cfg.upstream));
  }
  throw std::invalid_argument("upstream.kind holds no known kind");
}

// The guard's share of the fleet: one Redis connection on the wiring's executor and a
// budget named by the upstream credential's id under the configured key prefix.
void add_fleet(GuardedUpstreamOptions& o, const config::Config& cfg, const FleetWiring& wiring) {
  auto connection = RedisConnection::create(wiring.executor, fleet_redis_options(cfg));
  const std::string id = budget_credential_id(config::read_upstream_credential(cfg.upstream));
  o.fleet =
      std::make_shared<FleetBudget>(connection, o.budget, budget_key_tag(cfg.fleet.key_prefix, id));
  o.fallback_share = cfg.fleet.fallback_share;
  if (wiring.on_fleet_mode) {
    // Weak: the guard owns this callback, and the connection outlives no guard.
    o.on_fleet_mode = [weak = std::weak_ptr(connection), tell = wiring.on_fleet_mode](bool shared) {
      const auto live = weak.lock();
      tell(shared, shared || !live ? std::string() : live->last_failure());
    };
  }
}

}  // namespace

RedisOptions fleet_redis_options(const config::Config& cfg) {
  const config::FleetRedisConfig& r = cfg.fleet.redis;
  RedisOptions redis;
  std::string problem;
  const auto url = config::parse_redis_url(r.url, problem);
  if (!url) throw std::runtime_error("fleet.redis.url: " + problem);
  redis.address = *url;
  redis.ca_file = r.ca_file;
  const config::RedisCredential credential = config::read_redis_credential(r);
  redis.user = credential.user;
  redis.password = credential.password;
  redis.connect_timeout = std::chrono::milliseconds(r.connect_timeout_ms);
  redis.command_timeout = std::chrono::milliseconds(r.command_timeout_ms);
  redis.reconnect_min = std::chrono::milliseconds(r.reconnect_min_ms);
  redis.reconnect_max = std::chrono::milliseconds(r.reconnect_max_ms);
  return redis;
}

std::string fleet_cache_key(const config::Config& cfg) {
  const config::FleetCacheConfig& c = cfg.fleet.cache;
  config::EmbeddedStoreConfig source;
  source.key_env = c.key_env;
  if (std::optional<std::string> key = key_from_env(source)) return std::move(*key);
  if (c.key_file.empty()) {
    throw std::runtime_error("no fleet cache key: set environment variable " + c.key_env +
                             " or configure fleet.cache.key_file");
  }
  std::optional<std::string> key = open_key_file(c.key_file);
  if (!key) {
    throw std::runtime_error("no fleet cache key: " + c.key_file +
                             " does not exist (every process needs the same key; create it "
                             "with 64 hex characters, mode 0600)");
  }
  return std::move(*key);
}

std::shared_ptr<Upstream> make_upstream(const config::Config& cfg,
                                        std::optional<FleetWiring> fleet) {
  auto upstream = make_base_upstream(cfg);
  try {
    // Stand-in Cloudflare behaviour; returns `upstream` itself unless configured.
    upstream = with_emulation(std::move(upstream), cfg.emulation);
    // A remote API gets the guard (rate budget, Retry-After, retries, breaker) in front
    // of it, emulated behaviour included; the in-process store needs none.
    if (cfg.upstream.kind == config::UpstreamKind::http) {
      GuardedUpstreamOptions options = guarded_upstream_options(cfg.upstream);
      if (cfg.fleet.enabled && fleet) add_fleet(options, cfg, *fleet);
      upstream = std::make_shared<GuardedUpstream>(std::move(upstream), std::move(options));
    }
    return upstream;
  } catch (const std::invalid_argument& e) {
    // Only values the config loader refuses get here (a Config built in code).
    throw std::runtime_error(e.what());
  }
}

}  // namespace sproxy::upstream
