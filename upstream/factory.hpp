// Builds the configured Upstream: the embedded store (default) or an HTTP(S) client for
// a Cloudflare-compatible base URL. Start-up only: throws std::runtime_error (or
// config::ConfigError) with one clear message when the configuration cannot work
// (unopenable database, missing upstream credential, malformed base URL).
#pragma once

#include <memory>

#include "config/config.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {

std::shared_ptr<Upstream> make_upstream(const config::Config& cfg);

}  // namespace sproxy::upstream
