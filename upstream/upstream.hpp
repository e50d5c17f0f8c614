// The Upstream interface: where the proxy sends what it cannot answer itself.
//
// Contract: `call` sends one Secrets Store API request (method, target = path under
// /client/v4 plus query, body) and returns the upstream's HTTP answer as it is
// (status + envelope body + the headers the proxy cares about), or a transport-level
// failure as `UpstreamErrc`. An API-level "no" (4xx, 5xx with an envelope) is a
// successful call: it comes back as an `ApiResponse` with that status.
//
// Ownership: the request is taken by value; the response owns its bytes.
// Thread safety: implementations are safe to call concurrently from any io_context
// thread; `call` completes on the caller's executor.
// Cancellation: each implementation enforces its own deadlines; a call never hangs
// past its configured request timeout.
// The credentials of the proxy's clients are never part of an ApiRequest: each
// implementation authenticates with its own configured credential.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>
#include <cstdint>
#include <optional>
#include <string>

#include "upstream/route.hpp"

namespace sproxy::upstream {

// One error enum for transport-level failures of the whole data plane.
enum class UpstreamErrc {
  ok = 0,
  timeout = 1,           // connect or request deadline passed
  unreachable = 2,       // connect refused / DNS failure / no route
  connection_reset = 3,  // the connection broke mid-request
  bad_response = 4,      // the peer did not speak HTTP/JSON as expected
  tls_error = 5,         // TLS handshake or certificate verification failed
  overloaded = 6,        // local limits (pool, waiters) exhausted
  circuit_open = 7,      // breaker refuses calls for now
  rate_limited = 8,      // local rate budget exhausted
  shutting_down = 9,
};

const boost::system::error_category& upstream_category();
boost::system::error_code make_error_code(UpstreamErrc e);

struct ApiRequest {
  Method method = Method::get;
  std::string target;  // e.g. /client/v4/accounts/A/secrets_store/stores?page=2
  std::string body;    // empty for GET/DELETE without body
  // The proxy's client this call is made for, charged to that client's share of the rate
  // budget (guarded_upstream.hpp); empty: no client's. Never sent upstream.
  std::string client;
};

struct ApiResponse {
  unsigned status = 200;
  std::string body;                             // the JSON envelope
  std::optional<std::string> retry_after;       // Retry-After header, verbatim
  std::optional<std::string> ratelimit;         // Ratelimit header, verbatim
  std::optional<std::string> ratelimit_policy;  // Ratelimit-Policy header, verbatim
  // A 429 refusing the request's client only (its share of the rate budget is spent):
  // no upstream call was made, and a request of another client would have gone.
  bool client_refused = false;
};

using CallResult = boost::system::result<ApiResponse>;

class Upstream {
 public:
  virtual ~Upstream() = default;
  virtual boost::asio::awaitable<CallResult> call(ApiRequest request) = 0;
  // A short human-readable name for logs ("embedded", "https://api.cloudflare.com").
  virtual std::string describe() const = 0;
  // Opens up to `connections` connections ahead of any call, kept idle for the calls of
  // the calling io_context, so that the first ones do not wait for connection setup.
  // Returns how many are open and idle afterwards. A failure is not an error: calls
  // connect as usual. Implementations without connections (the default) open none.
  virtual boost::asio::awaitable<std::size_t> preconnect(std::size_t connections);
  // How long the upstream answers `pending` for a secret after it was created or its value
  // changed, in microseconds, when known: the embedded store's setting, or what the
  // operator says of an HTTP upstream (upstream.activation_delay_ms). nullopt: unknown.
  // Decorators pass their inner upstream's.
  virtual std::optional<std::int64_t> activation_delay() const { return std::nullopt; }
};

}  // namespace sproxy::upstream

template <>
struct boost::system::is_error_code_enum<sproxy::upstream::UpstreamErrc> : std::true_type {};
