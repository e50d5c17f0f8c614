// Where a fleet's Redis server is: the `fleet.redis.url` of the config, parsed.
//
// Accepted forms (nothing else: no user info, database number or query in the URL; the
// ACL user and password come from their own config keys):
//   redis://<host>:<port>     plain TCP
//   rediss://<host>:<port>    TLS, the server certificate verified against <host>
//   unix:///<absolute path>   a Unix domain socket
// <host> is a DNS name, an IPv4 address or a bracketed IPv6 address ("[::1]"); the port
// is required (1-65535). Pure function, thread-safe, never throws except bad_alloc.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sproxy::config {

struct RedisUrl {
  enum class Transport { tcp, tls, unix_socket };
  Transport transport = Transport::tcp;
  std::string host;  // tcp / tls; an IPv6 address without its brackets
  std::uint16_t port = 0;
  std::string path;  // unix_socket
};

// The parsed URL, or nullopt with `problem` saying what is wrong (never echoing more of
// the URL than its scheme).
std::optional<RedisUrl> parse_redis_url(std::string_view url, std::string& problem);

}  // namespace sproxy::config
