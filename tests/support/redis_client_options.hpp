// Client settings for the RedisServer fixture (redis_server.hpp): the RedisOptions of a
// RedisConnection (upstream/redis_connection.hpp) that logs in as the fixture's ACL user,
// with 5 s timeouts and reconnects without delay. Header-only; link sproxy_redis.
#pragma once

#include <chrono>
#include <stdexcept>
#include <string>

#include "config/redis_url.hpp"
#include "tests/support/redis_server.hpp"
#include "upstream/redis_connection.hpp"

namespace sproxy::test {

// A URL a test wrote; throws when it does not parse.
inline config::RedisUrl redis_url_of(const std::string& text) {
  std::string problem;
  auto url = config::parse_redis_url(text, problem);
  if (!url) throw std::runtime_error("bad test URL " + text + ": " + problem);
  return *url;
}

inline upstream::RedisOptions redis_options_for(const RedisServer& server, const std::string& url) {
  using namespace std::chrono_literals;
  upstream::RedisOptions o;
  o.address = redis_url_of(url);
  o.user = server.user();
  o.password = server.password();
  o.connect_timeout = 5s;
  o.command_timeout = 5s;
  o.reconnect_min = 0ms;
  o.reconnect_max = 0ms;
  return o;
}

}  // namespace sproxy::test
