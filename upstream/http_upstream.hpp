// HttpUpstream: the Upstream implementation that forwards API calls over HTTP/1.1 or
// HTTPS to any Cloudflare-compatible base URL (the real api.cloudflare.com, another
// secrets-proxy, a test server).
//
// Contract: `call` sends the request to base path + (target without its leading
// /client/v4), authenticated with the proxy's own credential (nothing of the proxy's
// clients is forwarded), and returns the upstream's status, body and rate-limit headers
// as they are; transport failures come back as UpstreamErrc (listed at `call`).
// Thread safety: one instance may be shared by any number of io_context threads, each
// io_context run by ONE thread (the proxy's model); each context gets its own
// connection pool (connection_pool.hpp), so max_connections bounds each context.
// Ownership: the request is taken by value; the HttpUpstream must outlive its calls.
// Cancellation: none beyond the deadlines; every call completes by request_timeout.
// Secrets: neither the credential nor a request body ever appears in an error message.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "upstream/base_url.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {

namespace detail {
struct HttpUpstreamSettings;  // defined in connection_pool.hpp
}  // namespace detail

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
  std::size_t max_connections = 32;                   // per io_context: threads x this in all
  std::size_t max_waiters = 1'024;             // callers queued for a connection, per io_context
  std::chrono::milliseconds max_idle{30'000};  // an idle connection older: closed
  std::size_t max_response_bytes = 16 * 1024 * 1024;  // larger body: bad_response
  std::string tls_ca_file;  // PEM CA bundle trusted in addition to the system store
  std::optional<std::int64_t> activation_delay;  // microseconds; see Upstream
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

  // Transport failures:
  //   timeout           connect (connect_timeout) or whole-call (request_timeout) deadline;
  //                     the request deadline covers the wait for a pool slot, connecting,
  //                     the TLS handshake, the write and the read
  //   unreachable       name resolution failed, connection refused, no route
  //   connection_reset  the connection broke before the response was complete
  //   bad_response      not HTTP, head over 64 KiB, body over max_response_bytes; also a
  //                     request this client will not put on the wire (Method::other, a
  //                     target outside /client/v4 or with control characters)
  //   tls_error         TLS handshake or certificate / host name verification failed
  //   overloaded        the connection pool stayed full until the deadline, or too many
  //                     callers were already waiting for it
  // Keep-alive connections are reused, most recently used first (idle longer than
  // max_idle: closed). A reused connection found closed by the peer before any response
  // byte arrived is replaced once, transparently; no other failure is retried.
  boost::asio::awaitable<CallResult> call(ApiRequest request) override;
  // Up to min(connections, max_connections) into the calling context's pool, each within
  // connect_timeout; stops at the first failure.
  boost::asio::awaitable<std::size_t> preconnect(std::size_t connections) override;
  // The normalized base URL.
  std::string describe() const override;
  std::optional<std::int64_t> activation_delay() const override { return activation_delay_; }

 private:
  std::shared_ptr<detail::HttpUpstreamSettings> settings_;
  std::optional<std::int64_t> activation_delay_;
};

}  // namespace sproxy::upstream
