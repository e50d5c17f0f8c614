#include "upstream/factory.hpp"

#include <stdexcept>
#include <string>

#include "upstream/embedded_store.hpp"
#include "upstream/emulation.hpp"
#include "upstream/http_upstream.hpp"

namespace sproxy::upstream {

namespace {

std::shared_ptr<Upstream> make_base_upstream(const config::Config& cfg) {
  const std::string& kind = cfg.upstream.kind;
  if (kind == "embedded") {
    auto store = std::make_shared<EmbeddedStore>(embedded_store_options(cfg.store));
    return std::make_shared<EmbeddedUpstream>(std::move(store));
  }
  if (kind == "http") {
    return std::make_shared<HttpUpstream>(http_upstream_options(cfg.upstream));
  }
  throw std::runtime_error("upstream.kind \"" + kind +
                           "\" is not supported (expected \"embedded\" or \"http\")");
}

}  // namespace

std::shared_ptr<Upstream> make_upstream(const config::Config& cfg) {
  auto upstream = make_base_upstream(cfg);
  try {
    // Stand-in Cloudflare behaviour; returns `upstream` itself unless configured.
    return with_emulation(std::move(upstream), cfg.emulation);
  } catch (const std::invalid_argument& e) {
    // Only values the config loader refuses get here (a Config built in code).
    throw std::runtime_error(e.what());
  }
}

}  // namespace sproxy::upstream
