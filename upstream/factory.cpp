#include "upstream/factory.hpp"

#include <chrono>
#include <stdexcept>
#include <string>

#include "upstream/embedded_store.hpp"
#include "upstream/embedded_upstream.hpp"
#include "upstream/emulation.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/http_upstream.hpp"

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

}  // namespace

std::shared_ptr<Upstream> make_upstream(const config::Config& cfg) {
  auto upstream = make_base_upstream(cfg);
  try {
    // Stand-in Cloudflare behaviour; returns `upstream` itself unless configured.
    upstream = with_emulation(std::move(upstream), cfg.emulation);
    // A remote API gets the guard (rate budget, Retry-After, retries, breaker) in front
    // of it, emulated behaviour included; the in-process store needs none.
    if (cfg.upstream.kind == config::UpstreamKind::http) {
      upstream = std::make_shared<GuardedUpstream>(std::move(upstream),
                                                   guarded_upstream_options(cfg.upstream));
    }
    return upstream;
  } catch (const std::invalid_argument& e) {
    // Only values the config loader refuses get here (a Config built in code).
    throw std::runtime_error(e.what());
  }
}

}  // namespace sproxy::upstream
