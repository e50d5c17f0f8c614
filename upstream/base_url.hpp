// The upstream's base URL as the config gives it (upstream.base_url), validated and
// normalized once at start-up: scheme, host, port and the path prefix that ends with
// /client/v4. HttpUpstream puts request targets under that prefix.
// Pure functions and a plain value type; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace sproxy::upstream {

// A validated upstream base URL: http(s)://host[:port]<prefix>/client/v4.
struct BaseUrl {
  enum class Scheme { http, https };
  Scheme scheme = Scheme::http;
  std::string host;  // lowercase name or IP literal (IPv6 without brackets)
  std::uint16_t port = 80;
  std::string path;  // ends with /client/v4, no trailing slash, e.g. /edge/client/v4

  // The normalized URL, e.g. "http://127.0.0.1:9000/client/v4".
  std::string to_string() const;
  // The Host header value: host, bracketed if IPv6, with ":port" unless default.
  std::string host_header() const;
  bool operator==(const BaseUrl&) const = default;
};

// Parses `http[s]://host[:port][/prefix]/client/v4[/]`. Start-up only: throws
// std::runtime_error naming upstream.base_url and what is wrong (no user info, query
// or fragment allowed; the URL is not echoed if it carries user info).
BaseUrl parse_base_url(std::string_view url);

}  // namespace sproxy::upstream
