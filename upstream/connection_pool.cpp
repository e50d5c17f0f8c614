#include "upstream/connection_pool.hpp"

#include <openssl/ssl.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cerrno>
#include <vector>

namespace sproxy::upstream::detail {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using PlainStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;
using Settings = HttpUpstreamSettings;

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t kMaxResponseHeaderBytes = 64 * 1024;

// Maps a failed write or read on an established connection.
UpstreamErrc classify_io_error(const error_code& ec) {
  if (ec == beast::error::timeout) return UpstreamErrc::timeout;
  if (ec == http::error::body_limit || ec == http::error::header_limit ||
      ec == http::error::buffer_overflow) {
    return UpstreamErrc::bad_response;
  }
  if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
      ec == ssl::error::stream_truncated) {
    return UpstreamErrc::connection_reset;
  }
  // Every other HTTP parser error means the peer did not speak HTTP/1.1.
  if (ec.category() == make_error_code(http::error::bad_version).category()) {
    return UpstreamErrc::bad_response;
  }
  if (ec.category() == asio::error::get_ssl_category()) return UpstreamErrc::tls_error;
  return UpstreamErrc::connection_reset;
}

template <class Stream>
class StreamConnection final : public Connection {
 public:
  explicit StreamConnection(Stream stream) : stream_(std::move(stream)) {}

  asio::awaitable<ExchangeOutcome> exchange(std::shared_ptr<const Request> request,
                                            TimePoint deadline, bool head_request,
                                            std::size_t max_body_bytes) override {
    ExchangeOutcome out;
    auto& tcp_layer = beast::get_lowest_layer(stream_);
    tcp_layer.expires_at(deadline);
    auto [write_ec, written] = co_await http::async_write(stream_, *request, kUseTuple);
    (void)written;
    if (write_ec) {
      out.error = classify_io_error(write_ec);
      out.nothing_received = true;
      out.write_failed = true;
      co_return out;
    }
    http::response_parser<http::string_body> parser;
    parser.header_limit(kMaxResponseHeaderBytes);
    parser.body_limit(max_body_bytes);
    if (head_request) parser.skip(true);
    auto [read_ec, read] = co_await http::async_read(stream_, buffer_, parser, kUseTuple);
    (void)read;
    if (read_ec) {
      out.error = classify_io_error(read_ec);
      out.nothing_received = !parser.got_some() && buffer_.size() == 0;
      co_return out;
    }
    tcp_layer.expires_never();
    auto& res = parser.get();
    // Bytes beyond the response mean the peer and we disagree about framing: do not
    // risk reading them as the next response.
    out.reusable = res.keep_alive() && !res.need_eof() && buffer_.size() == 0;
    out.response.status = res.result_int();
    const auto header = [&res](std::string_view name) -> std::optional<std::string> {
      auto it = res.find(name);
      if (it == res.end()) return std::nullopt;
      return std::string(it->value());
    };
    out.response.retry_after = header("Retry-After");
    out.response.ratelimit = header("Ratelimit");
    out.response.ratelimit_policy = header("Ratelimit-Policy");
    out.response.body = std::move(res.body());
    co_return out;
  }

  bool is_open() const override { return beast::get_lowest_layer(stream_).socket().is_open(); }
  bool idle_and_quiet() override {
    auto& socket = beast::get_lowest_layer(stream_).socket();
    if (!socket.is_open() || buffer_.size() != 0) return false;
    char byte;
    const ssize_t n = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

 private:
  Stream stream_;
  beast::flat_buffer buffer_;
};

// Resolves the host with a hard deadline. getaddrinfo cannot be interrupted, so the
// lookup completes into shared state that the caller stops waiting for at the deadline.
asio::awaitable<boost::system::result<std::vector<tcp::endpoint>>> resolve(
    Executor ex, std::shared_ptr<const Settings> s, TimePoint deadline) {
  using Endpoints = std::vector<tcp::endpoint>;
  const auto& url = s->options.base_url;
  if (s->host_is_ip) {
    co_return Endpoints{tcp::endpoint(asio::ip::make_address(url.host), url.port)};
  }
  struct Lookup {
    explicit Lookup(const Executor& e) : resolver(e), timer(e) {}
    tcp::resolver resolver;
    asio::steady_timer timer;
    std::optional<error_code> ec;
    Endpoints endpoints;
  };
  auto lookup = std::make_shared<Lookup>(ex);
  lookup->timer.expires_at(deadline);
  lookup->resolver.async_resolve(
      url.host, s->port_text, tcp::resolver::numeric_service,
      [lookup](error_code ec, const tcp::resolver::results_type& results) {
        lookup->ec = ec;
        for (const auto& entry : results) lookup->endpoints.push_back(entry.endpoint());
        lookup->timer.cancel();
      });
  co_await lookup->timer.async_wait(kUseTuple);
  if (!lookup->ec) {
    lookup->resolver.cancel();
    co_return make_error_code(UpstreamErrc::timeout);
  }
  if (*lookup->ec || lookup->endpoints.empty())
    co_return make_error_code(UpstreamErrc::unreachable);
  co_return std::move(lookup->endpoints);
}

}  // namespace

asio::awaitable<boost::system::result<std::shared_ptr<Connection>>> open_connection(
    Executor ex, std::shared_ptr<const Settings> s, TimePoint connect_deadline) {
  auto endpoints = co_await resolve(ex, s, connect_deadline);
  if (!endpoints) co_return endpoints.error();

  PlainStream stream(ex);
  stream.expires_at(connect_deadline);
  auto [connect_ec, endpoint] = co_await stream.async_connect(*endpoints, kUseTuple);
  (void)endpoint;
  if (connect_ec) {
    co_return make_error_code(connect_ec == beast::error::timeout ? UpstreamErrc::timeout
                                                                  : UpstreamErrc::unreachable);
  }
  error_code ignored;
  stream.socket().set_option(tcp::no_delay(true), ignored);
  stream.expires_never();
  if (!s->tls) {
    co_return std::make_shared<StreamConnection<PlainStream>>(std::move(stream));
  }

  TlsStream tls(std::move(stream), *s->tls);
  const std::string& host = s->options.base_url.host;
  // SNI carries host names only (RFC 6066), never IP literals.
  if (!s->host_is_ip && SSL_set_tlsext_host_name(tls.native_handle(), host.c_str()) != 1) {
    co_return make_error_code(UpstreamErrc::tls_error);
  }
  error_code verify_ec;
  tls.set_verify_mode(ssl::verify_peer, verify_ec);
  if (!verify_ec) tls.set_verify_callback(ssl::host_name_verification(host), verify_ec);
  if (verify_ec) co_return make_error_code(UpstreamErrc::tls_error);
  beast::get_lowest_layer(tls).expires_at(connect_deadline);
  auto [handshake_ec] = co_await tls.async_handshake(ssl::stream_base::client, kUseTuple);
  if (handshake_ec) {
    co_return make_error_code(handshake_ec == beast::error::timeout ? UpstreamErrc::timeout
                                                                    : UpstreamErrc::tls_error);
  }
  beast::get_lowest_layer(tls).expires_never();
  co_return std::make_shared<StreamConnection<TlsStream>>(std::move(tls));
}

asio::awaitable<boost::system::result<Lease>> ConnectionPool::acquire(
    std::shared_ptr<ConnectionPool> self, Executor ex, TimePoint deadline) {
  const auto& opts = self->settings_->options;
  self->drop_expired_idle(Clock::now());
  if (!self->idle_.empty()) {
    // Most recently used first: it is the least likely to have been closed by the
    // peer, and the others get to age out.
    auto conn = std::move(self->idle_.back());
    self->idle_.pop_back();
    co_return Lease(self, std::move(conn));
  }
  if (self->slots_in_use_ < opts.max_connections) {
    ++self->slots_in_use_;
    co_return Lease(self, nullptr);
  }
  if (self->waiters_.size() >= opts.max_waiters) {
    co_return make_error_code(UpstreamErrc::overloaded);
  }
  Waiter waiter(ex, self);
  waiter.timer.expires_at(deadline);
  waiter.position = self->waiters_.insert(self->waiters_.end(), &waiter);
  waiter.queued = true;
  co_await waiter.timer.async_wait(kUseTuple);
  // A grant wins over an expired timer: the slot is ours either way.
  if (waiter.grant) {
    auto conn = std::move(*waiter.grant);
    waiter.grant.reset();
    co_return Lease(self, std::move(conn));
  }
  co_return make_error_code(UpstreamErrc::overloaded);
}

Lease::~Lease() {
  conn_.reset();
  if (pool_) pool_->give_back(nullptr);
}

void Lease::recycle() {
  if (!pool_) return;
  auto pool = std::move(pool_);
  pool->give_back(std::move(conn_));
}

}  // namespace sproxy::upstream::detail
