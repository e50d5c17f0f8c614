// HttpUpstream: the Upstream implementation that forwards API calls over HTTP/1.1 or
// HTTPS to any Cloudflare-compatible base URL (the real api.cloudflare.com, another
// secrets-proxy, a test server).
//
// Contract: `call` sends the request to base path + (target without its leading
// /client/v4), authenticated with the proxy's own credential (an API token as
// `Authorization: Bearer <token>`, or Cloudflare's legacy account email and global API
// key as `X-Auth-Email` / `X-Auth-Key`; nothing of the proxy's clients is forwarded), and
// returns the upstream's status, body and Retry-After / Ratelimit / Ratelimit-Policy
// headers as they are. Transport failures come back as UpstreamErrc:
//   timeout           connect (connect_timeout) or whole-call (request_timeout) deadline
//   unreachable       name resolution failed, connection refused, no route
//   connection_reset  the connection broke before the response was complete
//   bad_response      not HTTP, head over 64 KiB, body over max_response_bytes; also a
//                     request this client will not put on the wire (Method::other, a
//                     target outside /client/v4 or with control characters)
//   tls_error         TLS handshake or certificate / host name verification failed
//   overloaded        the connection pool stayed full until the deadline, or too many
//                     callers were already waiting for it
//
// Connections: keep-alive connections are pooled and reused (most recently used
// first; idle longer than max_idle: closed). A call that finds a reused connection
// closed by the peer before any response byte arrived (a stale keep-alive) is retried
// once, transparently, on a fresh connection; no other failure is retried.
// The request deadline covers everything: waiting for a pool slot, connecting
// (additionally bounded by connect_timeout), TLS handshake, write and read.
//
// TLS (https base URLs): TLS 1.2 minimum, peer verification against the system trust
// store (plus `tls_ca_file` when set), SNI and host name verification
// (ssl::host_name_verification; IP literals are checked against IP SANs, no SNI).
//
// Thread safety and pools: one HttpUpstream may be shared by any number of io_context
// threads. A Beast stream belongs to one executor, so there is one connection pool per
// (HttpUpstream, execution context), held by an Asio service of that context: each
// pool is touched only from its context's thread, dies with its context (idle sockets
// are closed at the context's shutdown), and is dropped at the next call on that
// context after its HttpUpstream was destroyed. Requirement: each io_context calling
// here is run by ONE thread (the proxy's model: one io_context per thread); a context
// run by several threads must call through a strand. `max_connections` therefore
// bounds the connections of each io_context: the process total is at most
// threads x max_connections.
//
// Ownership: the request is taken by value; the HttpUpstream must outlive its calls.
// Cancellation: none beyond the deadlines; every call completes by request_timeout
// (plus scheduling latency). Secrets: neither the token nor any request body is ever
// put into an error message; nor is the email or the API key.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {

namespace detail {
struct HttpUpstreamSettings;  // defined in http_upstream.cpp
}  // namespace detail

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

struct HttpUpstreamOptions {
  BaseUrl base_url;
  // The proxy's own credential, exactly one kind: an API token, sent as
  // "Authorization: Bearer <token>"; or an account email and global API key, sent as
  // "X-Auth-Email" and "X-Auth-Key" (no Authorization header then).
  std::string token;
  std::string email;
  std::string api_key;
  std::chrono::milliseconds connect_timeout{2'000};   // TCP connect + TLS handshake
  std::chrono::milliseconds request_timeout{10'000};  // the whole call
  std::size_t max_connections = 32;                   // per io_context (see the contract above)
  std::size_t max_waiters = 1'024;             // callers queued for a connection, per io_context
  std::chrono::milliseconds max_idle{30'000};  // an idle connection older: closed
  std::size_t max_response_bytes = 16 * 1024 * 1024;  // larger body: bad_response
  std::string tls_ca_file;  // PEM CA bundle trusted in addition to the system store
};

// Builds options from config: parses base_url and reads the credential: the token from
// the environment variable `token_env` (if set and non-empty) else from `token_file`;
// or the email (`email_env` / `email_file`) and the global API key (`api_key_env` /
// `api_key_file`) the same way; each trimmed of surrounding whitespace. Start-up only:
// throws std::runtime_error naming the config keys, environment variables / files when
// both kinds or half a pair are configured, or no usable credential is found (never a
// credential itself), or when base_url is malformed.
HttpUpstreamOptions http_upstream_options(const config::UpstreamConfig& cfg);

class HttpUpstream final : public Upstream {
 public:
  // Throws std::runtime_error when the options cannot work (no credential, both kinds,
  // half a pair, a non-header-safe credential, zero max_connections, non-positive
  // timeouts, unloadable tls_ca_file). The message never holds a credential.
  explicit HttpUpstream(HttpUpstreamOptions options);
  ~HttpUpstream() override;
  HttpUpstream(const HttpUpstream&) = delete;
  HttpUpstream& operator=(const HttpUpstream&) = delete;

  boost::asio::awaitable<CallResult> call(ApiRequest request) override;
  // Up to min(connections, max_connections) into the calling context's pool, each within
  // connect_timeout; stops at the first failure.
  boost::asio::awaitable<std::size_t> preconnect(std::size_t connections) override;
  // The normalized base URL.
  std::string describe() const override;

 private:
  std::shared_ptr<detail::HttpUpstreamSettings> settings_;
};

}  // namespace sproxy::upstream
