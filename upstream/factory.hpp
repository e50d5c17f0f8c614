// Builds the configured Upstream: the embedded store (default) or an HTTP(S) client for
// a Cloudflare-compatible base URL. Start-up only: throws std::runtime_error (or
// config::ConfigError) with one clear message when the configuration cannot work
// (unopenable database, missing upstream credential, malformed base URL).
#pragma once

#include <memory>

#include "config/config.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {

// An http upstream comes wrapped in a GuardedUpstream (outermost, so that emulated
// behaviour sits behind it as the remote API would); the embedded store is not guarded.
std::shared_ptr<Upstream> make_upstream(const config::Config& cfg);

// The guard's options from the upstream config (rate budget, retries, breaker, write
// wait); everything else keeps the GuardedUpstreamOptions defaults.
GuardedUpstreamOptions guarded_upstream_options(const config::UpstreamConfig& cfg);

}  // namespace sproxy::upstream
