#include "config/redis_url.hpp"

#include <charconv>

namespace sproxy::config {

namespace {

bool is_host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_';
}

// "<host>:<port>" or "[<ipv6>]:<port>".
std::optional<RedisUrl> parse_authority(std::string_view rest, RedisUrl url, std::string& problem) {
  std::string_view host;
  std::string_view port_text;
  if (!rest.empty() && rest.front() == '[') {
    const auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
      problem = "expected [<IPv6 address>]:<port> after the scheme";
      return std::nullopt;
    }
    host = rest.substr(1, close - 1);
    port_text = rest.substr(close + 2);
    for (char c : host) {
      if (!(c == ':' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
            (c >= 'A' && c <= 'F'))) {
        problem = "the bracketed host must be an IPv6 address";
        return std::nullopt;
      }
    }
  } else {
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
      problem = "expected <host>:<port> after the scheme (the port is required)";
      return std::nullopt;
    }
    host = rest.substr(0, colon);
    port_text = rest.substr(colon + 1);
    for (char c : host) {
      if (!is_host_char(c)) {
        problem =
            "the host may hold only letters, digits, '-', '.' and '_' (no user, path or "
            "query in the URL)";
        return std::nullopt;
      }
    }
  }
  if (host.empty()) {
    problem = "the host is missing";
    return std::nullopt;
  }
  unsigned port = 0;
  const auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port == 0 || port > 65535) {
    problem = "the port must be a number between 1 and 65535";
    return std::nullopt;
  }
  url.host = std::string(host);
  url.port = static_cast<std::uint16_t>(port);
  return url;
}

}  // namespace

std::optional<RedisUrl> parse_redis_url(std::string_view text, std::string& problem) {
  RedisUrl url;
  constexpr std::string_view kRedis = "redis://";
  constexpr std::string_view kRediss = "rediss://";
  constexpr std::string_view kUnix = "unix://";
  if (text.rfind(kUnix, 0) == 0) {
    url.transport = RedisUrl::Transport::unix_socket;
    url.path = std::string(text.substr(kUnix.size()));
    if (url.path.empty() || url.path.front() != '/') {
      problem = "expected unix:///<absolute path>";
      return std::nullopt;
    }
    return url;
  }
  if (text.rfind(kRediss, 0) == 0) {
    url.transport = RedisUrl::Transport::tls;
    return parse_authority(text.substr(kRediss.size()), std::move(url), problem);
  }
  if (text.rfind(kRedis, 0) == 0) {
    url.transport = RedisUrl::Transport::tcp;
    return parse_authority(text.substr(kRedis.size()), std::move(url), problem);
  }
  problem = "expected a redis://<host>:<port>, rediss://<host>:<port> or unix:///<path> URL";
  return std::nullopt;
}

}  // namespace sproxy::config
