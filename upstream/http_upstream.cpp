#include "upstream/http_upstream.hpp"

#include <openssl/ssl.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/http.hpp>
#include <optional>
#include <stdexcept>
#include <utility>
#include <vector>

#include "config/upstream_credential.hpp"
#include "upstream/connection_pool.hpp"
#include "upstream/route.hpp"

namespace sproxy::upstream {

namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace ssl = asio::ssl;
using boost::system::error_code;
using detail::Clock;
using detail::ConnectionPool;
using detail::Executor;
using detail::Lease;
using detail::open_connection;
using detail::PoolRegistry;
using detail::Request;
using detail::TimePoint;
using Settings = detail::HttpUpstreamSettings;

constexpr std::string_view kUserAgent = "secrets-proxy";
constexpr std::string_view kAuthEmailHeader = "X-Auth-Email";
constexpr std::string_view kAuthKeyHeader = "X-Auth-Key";

// Visible ASCII only: anything else could split or corrupt the header it is put in.
bool is_header_safe(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f;
  });
}

bool is_ip_literal(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

std::optional<http::verb> to_verb(Method m) {
  switch (m) {
    case Method::get:
      return http::verb::get;
    case Method::post:
      return http::verb::post;
    case Method::patch:
      return http::verb::patch;
    case Method::put:
      return http::verb::put;
    case Method::del:
      return http::verb::delete_;
    case Method::head:
      return http::verb::head;
    case Method::other:
      return std::nullopt;
  }
  return std::nullopt;
}

// base path + target without its leading /client/v4; nullopt for a target this client
// refuses to put on the wire.
std::optional<std::string> upstream_target(const std::string& base_path, std::string_view target) {
  if (!target.starts_with(kApiPrefix)) return std::nullopt;
  std::string_view rest = target.substr(kApiPrefix.size());
  if (!rest.empty() && rest.front() != '/' && rest.front() != '?') return std::nullopt;
  // The server's parser already refuses these; checked again so that no caller can
  // smuggle a second request line or header through the target.
  for (char c : rest) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) return std::nullopt;
  }
  std::string out;
  out.reserve(base_path.size() + rest.size());
  out += base_path;
  out += rest;
  return out;
}

CallResult fail(UpstreamErrc e) {
  return CallResult(boost::system::in_place_error, make_error_code(e));
}

std::atomic<std::uint64_t> g_next_upstream_id{1};

std::shared_ptr<Request> build_request(const Settings& s, http::verb verb, std::string target,
                                       std::string body) {
  auto req = std::make_shared<Request>(verb, std::move(target), 11);
  req->set(http::field::host, s.host_header);
  req->set(http::field::user_agent, kUserAgent);
  req->set(http::field::accept, "application/json");
  if (!s.authorization.empty()) {
    req->set(http::field::authorization, s.authorization);
  } else {
    req->set(kAuthEmailHeader, s.options.email);
    req->set(kAuthKeyHeader, s.options.api_key);
  }
  if (!body.empty()) {
    req->set(http::field::content_type, "application/json");
    req->body() = std::move(body);
  }
  req->keep_alive(true);
  req->prepare_payload();
  return req;
}

}  // namespace

HttpUpstreamOptions http_upstream_options(const config::UpstreamConfig& cfg) {
  HttpUpstreamOptions out;
  out.base_url = parse_base_url(cfg.base_url);
  config::UpstreamCredential credential = config::read_upstream_credential(cfg);
  out.token = std::move(credential.token);
  out.email = std::move(credential.email);
  out.api_key = std::move(credential.api_key);
  out.connect_timeout = std::chrono::milliseconds(cfg.connect_timeout_ms);
  out.request_timeout = std::chrono::milliseconds(cfg.request_timeout_ms);
  out.max_connections = cfg.max_connections;
  out.tls_ca_file = cfg.tls_ca_file;
  if (cfg.activation_delay_ms) out.activation_delay = *cfg.activation_delay_ms * 1000;
  return out;
}

// ---------------------------------------------------------------------------------------
// HttpUpstream

HttpUpstream::HttpUpstream(HttpUpstreamOptions options)
    : settings_(std::make_shared<detail::HttpUpstreamSettings>()),
      activation_delay_(options.activation_delay) {
  auto& s = *settings_;
  const bool key_pair = !options.email.empty() || !options.api_key.empty();
  if (key_pair && !options.token.empty()) {
    throw std::runtime_error(
        "upstream: configure an API token or an email and global API key, not both");
  }
  if (key_pair) {
    if (options.email.empty()) throw std::runtime_error("upstream: the account email is empty");
    if (options.api_key.empty()) throw std::runtime_error("upstream: the global API key is empty");
    if (!is_header_safe(options.email)) {
      throw std::runtime_error(
          "upstream: the account email contains characters not allowed in an HTTP header");
    }
    if (!is_header_safe(options.api_key)) {
      throw std::runtime_error(
          "upstream: the global API key contains characters not allowed in an HTTP header");
    }
  } else {
    if (options.token.empty()) throw std::runtime_error("upstream: the API token is empty");
    if (!is_header_safe(options.token)) {
      throw std::runtime_error(
          "upstream: the API token contains characters not allowed in an HTTP header");
    }
  }
  if (options.max_connections == 0) {
    throw std::runtime_error("upstream.max_connections must be at least 1");
  }
  if (options.connect_timeout.count() <= 0 || options.request_timeout.count() <= 0) {
    throw std::runtime_error(
        "upstream.connect_timeout_ms and upstream.request_timeout_ms must be positive");
  }
  s.options = std::move(options);
  const BaseUrl& url = s.options.base_url;
  if (!key_pair) s.authorization = "Bearer " + s.options.token;
  s.host_header = url.host_header();
  s.described = url.to_string();
  s.host_is_ip = is_ip_literal(url.host);
  s.port_text = std::to_string(url.port);
  s.id = g_next_upstream_id.fetch_add(1, std::memory_order_relaxed);

  // TLS 1.2 minimum, the peer verified against the system trust store (plus tls_ca_file);
  // each connection adds SNI and host name verification (IP literals are checked against
  // IP SANs, without SNI).
  if (url.scheme == BaseUrl::Scheme::https) {
    auto& ctx = s.tls.emplace(ssl::context::tls_client);
    error_code ec;
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_compression, ec);
    if (SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION) != 1) {
      throw std::runtime_error("upstream TLS: cannot require TLS 1.2 or later");
    }
    ctx.set_default_verify_paths(ec);
    if (ec) throw std::runtime_error("upstream TLS: cannot load the system trust store");
    if (!s.options.tls_ca_file.empty()) {
      ctx.load_verify_file(s.options.tls_ca_file, ec);
      if (ec) {
        throw std::runtime_error("upstream TLS: cannot load CA file " + s.options.tls_ca_file +
                                 ": " + ec.message());
      }
    }
    ctx.set_verify_mode(ssl::verify_peer);
  }
}

HttpUpstream::~HttpUpstream() {
  // Pools still hold idle connections in the contexts that used this upstream; each
  // context drops them at its next call or at its shutdown, on its own thread.
  settings_->retired.store(true, std::memory_order_relaxed);
}

std::string HttpUpstream::describe() const { return settings_->described; }

boost::asio::awaitable<std::size_t> HttpUpstream::preconnect(std::size_t connections) {
  std::shared_ptr<const Settings> s = settings_;
  const auto& opts = s->options;
  Executor ex = co_await asio::this_coro::executor;
  auto& ctx = asio::query(ex, asio::execution::context);
  auto pool = asio::use_service<PoolRegistry>(ctx).pool_for(s);
  // Every lease is held until all are open: each takes an idle connection or a slot of
  // its own, so the pool ends up with that many idle connections.
  std::vector<Lease> leases;
  const std::size_t wanted = std::min(connections, opts.max_connections);
  while (leases.size() < wanted) {
    const TimePoint deadline = Clock::now() + opts.connect_timeout;
    auto lease = co_await ConnectionPool::acquire(pool, ex, deadline);
    if (!lease) break;
    if (lease->connection() == nullptr || !lease->connection()->idle_and_quiet()) {
      lease->discard_connection();
      auto opened = co_await open_connection(ex, s, deadline);
      if (!opened) break;
      lease->set_connection(std::move(*opened));
    }
    leases.push_back(std::move(*lease));
  }
  for (auto& lease : leases) lease.recycle();
  co_return leases.size();
}

boost::asio::awaitable<CallResult> HttpUpstream::call(ApiRequest request) {
  std::shared_ptr<const Settings> s = settings_;
  const auto& opts = s->options;
  const TimePoint deadline = Clock::now() + opts.request_timeout;

  const auto verb = to_verb(request.method);
  auto target = upstream_target(opts.base_url.path, request.target);
  if (!verb || !target) co_return fail(UpstreamErrc::bad_response);
  const bool head_request = *verb == http::verb::head;
  auto req = build_request(*s, *verb, std::move(*target), std::move(request.body));

  Executor ex = co_await asio::this_coro::executor;
  auto& ctx = asio::query(ex, asio::execution::context);
  auto pool = asio::use_service<PoolRegistry>(ctx).pool_for(s);
  auto lease = co_await ConnectionPool::acquire(std::move(pool), ex, deadline);
  if (!lease) co_return CallResult(boost::system::in_place_error, lease.error());

  // Writes change state: one is sent again only when it provably never reached the
  // upstream. Reads are idempotent.
  const bool idempotent = *verb == http::verb::get || *verb == http::verb::head;
  // At most two attempts: the second only when a reused keep-alive connection turned
  // out to be closed before any response byte arrived (the peer closed it while idle).
  for (int attempt = 0; attempt < 2; ++attempt) {
    // An idle connection the peer already closed is dropped before it carries anything.
    if (lease->connection() != nullptr && !lease->connection()->idle_and_quiet()) {
      lease->discard_connection();
    }
    const bool reused = lease->connection() != nullptr;
    if (!reused) {
      const TimePoint connect_deadline = std::min(deadline, Clock::now() + opts.connect_timeout);
      auto opened = co_await open_connection(ex, s, connect_deadline);
      if (!opened) co_return CallResult(boost::system::in_place_error, opened.error());
      lease->set_connection(std::move(*opened));
    }
    auto conn = lease->connection();
    auto out = co_await conn->exchange(req, deadline, head_request, opts.max_response_bytes);
    if (out.error == UpstreamErrc::ok) {
      if (out.reusable) lease->recycle();
      co_return std::move(out.response);
    }
    lease->discard_connection();
    const bool stale_keep_alive =
        reused && out.nothing_received && out.error == UpstreamErrc::connection_reset;
    if (!stale_keep_alive || !(idempotent || out.write_failed)) co_return fail(out.error);
  }
  co_return fail(UpstreamErrc::connection_reset);
}

}  // namespace sproxy::upstream
