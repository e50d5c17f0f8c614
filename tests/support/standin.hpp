// The stand-in upstream of end-to-end tests of an http upstream: a `secrets-proxy` child
// process (proxy_process.hpp) serving its embedded store over HTTP with its cache off, so
// that every API request reaching it is counted in its /metrics. Header-only.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "tests/support/proxy_process.hpp"

namespace sproxy::test {

// The stand-in's config: an ephemeral loopback port, its embedded store in dir/standin
// (the key in a file there; the key variable is never set), cache and audit off, and
// `clients` (the proxies under test, by their upstream credentials).
inline nlohmann::json standin_config(const std::filesystem::path& dir, nlohmann::json clients) {
  return {{"listen", {{"address", "127.0.0.1"}, {"port", 0}, {"threads", 1}}},
          {"clients", std::move(clients)},
          {"store",
           {{"data_path", (dir / "standin" / "store.db").string()},
            {"key_file", (dir / "standin" / "store.key").string()},
            {"key_env", "SPROXY_STANDIN_TEST_KEY_THAT_IS_NEVER_SET"}}},
          {"cache", {{"enabled", false}}},
          {"audit", {{"enabled", false}}}};
}

// API requests the stand-in has answered (any status) on the routes whose label (e.g.
// "/stores/:id") `counted` accepts, from its /metrics.
template <class RouteFilter>
long api_requests_seen(const ProxyProcess& standin, RouteFilter counted) {
  const auto res = standin.connect()->get("/metrics");
  if (res.result_int() != 200) throw std::runtime_error("stand-in /metrics failed");
  long total = 0;
  std::istringstream lines(res.body());
  for (std::string line; std::getline(lines, line);) {
    if (!line.starts_with("secrets_proxy_requests_total{")) continue;
    const auto route = line.find("route=\"/");
    const auto close = line.rfind('}');
    if (route == std::string::npos || close == std::string::npos) continue;
    const std::string label = line.substr(route + 7, line.find('"', route + 7) - route - 7);
    if (!counted(std::string_view(label))) continue;
    total += std::stol(line.substr(close + 2));
  }
  return total;
}

}  // namespace sproxy::test
