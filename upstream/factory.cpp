#include "upstream/factory.hpp"

#include <stdexcept>
#include <string>

#include "upstream/embedded_store.hpp"
#include "upstream/http_upstream.hpp"

namespace sproxy::upstream {

std::shared_ptr<Upstream> make_upstream(const config::Config& cfg) {
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

}  // namespace sproxy::upstream
