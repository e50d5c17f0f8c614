// Fleet members of end-to-end tests: `secrets-proxy` child processes (proxy_process.hpp)
// in fleet mode on the test's redis-server (redis_server.hpp).
// - fleet_section(redis, dir, name, key_prefix, login): the config's `fleet` section: the
//   server's TCP URL, its ACL user and password (or `login`'s) in files named after the
//   member, 2 s command deadlines, quick reconnects. Tests change what they need in it.
// - metric_value(p, name, labels): a metric from `p`'s /metrics.
// - poll_until(done): a bounded poll for an effect of a real event in another process.
// Header-only.
#pragma once

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "tests/support/proxy_process.hpp"
#include "tests/support/redis_server.hpp"

namespace sproxy::test {

// Another Redis ACL user than the fixture's (empty fields: the fixture's).
struct RedisLogin {
  std::string user;
  std::string password;
};

inline nlohmann::json fleet_section(const RedisServer& redis, const std::filesystem::path& dir,
                                    const std::string& name, const std::string& key_prefix,
                                    const RedisLogin& login = {}) {
  const std::string user = login.user.empty() ? redis.user() : login.user;
  const std::string password = login.password.empty() ? redis.password() : login.password;
  return {{"key_prefix", key_prefix},
          {"redis",
           {{"url", redis.tcp_url()},
            {"user_file", write_secret_file(dir, name + "-redis-user", user)},
            {"password_file", write_secret_file(dir, name + "-redis-password", password)},
            {"command_timeout_ms", 2000},
            {"reconnect_min_ms", 10},
            {"reconnect_max_ms", 100}}}};
}

// A metric's value (the sum over its label sets containing `labels`), -1 when absent.
inline double metric_value(const ProxyProcess& p, const std::string& name,
                           const std::string& labels = "") {
  const auto res = p.connect()->get("/metrics");
  std::istringstream lines(res.body());
  double total = -1;
  for (std::string line; std::getline(lines, line);) {
    if (!line.starts_with(name) || line.size() <= name.size()) continue;
    const char next = line[name.size()];
    if (next != ' ' && next != '{') continue;
    if (!labels.empty() && line.find(labels) == std::string::npos) continue;
    total = std::max(total, 0.0) + std::stod(line.substr(line.rfind(' ') + 1));
  }
  return total;
}

// Polls `done` every 10 ms for at most `within`.
inline bool poll_until(const std::function<bool()>& done,
                       std::chrono::milliseconds within = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

}  // namespace sproxy::test
