// ScriptedHttpServer: a small HTTP/1.1 (optionally TLS) server on 127.0.0.1:0 for
// tests of HTTP clients. It runs on its own thread with its own io_context; each test
// scripts its behaviour with a function from the received request to a reply (fixed
// responses, delays, silence, closing or resetting the connection mid-response, raw
// bytes), and inspects what it saw: accepted connections, the peak number of
// connections open at once, every request received (method, target, headers, body,
// connection index, TLS server name), failed TLS handshakes.
//
// Thread safety: the script runs on the server thread; the observers may be called
// from any thread. Every wait is bounded: server-side reads give up after
// kServerIoLimit, and the destructor stops the server without waiting for clients.
#pragma once

#include <openssl/ssl.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace sproxy::test {

struct ReceivedRequest {
  std::size_t index = 0;       // 0-based, in arrival order over the whole server
  std::size_t connection = 0;  // 1-based index of the connection it arrived on
  std::string method;
  std::string target;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // in arrival order
  std::string tls_server_name;  // SNI sent by the client (TLS only; empty if none)

  // First value of a header, by case-insensitive name.
  std::optional<std::string> header(std::string_view name) const {
    for (const auto& [k, v] : headers) {
      if (boost::beast::iequals(k, name)) return v;
    }
    return std::nullopt;
  }
};

struct ScriptedReply {
  enum class Kind {
    respond,                 // send the response; keep the connection if both sides allow
    respond_then_close,      // send it advertising keep-alive, then close: a stale idle conn
    close_without_response,  // close right after reading the request
    reset_mid_response,      // send the head and half the body, then reset (RST)
    never_respond,           // keep silent until the client leaves or the server stops
    raw,                     // write `raw` verbatim, then close
  };
  Kind kind = Kind::respond;
  unsigned status = 200;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::chrono::milliseconds delay{0};  // before replying
  bool chunked = false;                // send the body with chunked encoding
  std::string raw;

  static ScriptedReply json(unsigned status, std::string body) {
    ScriptedReply r;
    r.status = status;
    r.body = std::move(body);
    r.headers.emplace_back("Content-Type", "application/json");
    return r;
  }
  static ScriptedReply of(Kind kind) {
    ScriptedReply r;
    r.kind = kind;
    return r;
  }
  static ScriptedReply raw_bytes(std::string bytes) {
    ScriptedReply r;
    r.kind = Kind::raw;
    r.raw = std::move(bytes);
    return r;
  }
  ScriptedReply& with_header(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
    return *this;
  }
  ScriptedReply& after(std::chrono::milliseconds d) {
    delay = d;
    return *this;
  }
};

using Script = std::function<ScriptedReply(const ReceivedRequest&)>;

class ScriptedHttpServer {
 public:
  static constexpr std::chrono::seconds kServerIoLimit{20};
  static constexpr std::size_t kMaxConnections = 10'000;
  static constexpr std::size_t kMaxRequestsPerConnection = 10'000;

  // `tls`: serve HTTPS with this context (certificate and key loaded by the caller).
  explicit ScriptedHttpServer(Script script,
                              std::shared_ptr<boost::asio::ssl::context> tls = nullptr)
      : script_(std::move(script)),
        tls_(std::move(tls)),
        acceptor_(io_, {boost::asio::ip::make_address("127.0.0.1"), 0}),
        work_(io_.get_executor()) {
    port_ = acceptor_.local_endpoint().port();
    boost::asio::co_spawn(io_, accept_loop(), count_escaped());
    thread_ = std::thread([this] { io_.run(); });
  }

  ~ScriptedHttpServer() {
    work_.reset();
    io_.stop();
    thread_.join();
    // Connection coroutines still suspended die with io_ (closing their sockets).
  }

  ScriptedHttpServer(const ScriptedHttpServer&) = delete;
  ScriptedHttpServer& operator=(const ScriptedHttpServer&) = delete;

  std::uint16_t port() const { return port_; }
  // e.g. http://127.0.0.1:41234/client/v4
  std::string base_url(std::string_view path = "/client/v4") const {
    return std::string(tls_ ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_) +
           std::string(path);
  }

  std::size_t accepted_connections() const {
    std::lock_guard lock(mutex_);
    return accepted_;
  }
  std::size_t open_connections() const {
    std::lock_guard lock(mutex_);
    return open_;
  }
  std::size_t peak_open_connections() const {
    std::lock_guard lock(mutex_);
    return peak_open_;
  }
  std::size_t tls_handshake_failures() const {
    std::lock_guard lock(mutex_);
    return tls_failures_;
  }
  // Exceptions that escaped a server coroutine (a script that threw, a bug here).
  std::size_t escaped_exceptions() const {
    std::lock_guard lock(mutex_);
    return escaped_;
  }
  std::vector<ReceivedRequest> requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
  }
  std::size_t request_count() const {
    std::lock_guard lock(mutex_);
    return requests_.size();
  }

  // Polls (bounded by `limit`) until `pred` holds; returns whether it did.
  bool wait_until(const std::function<bool()>& pred,
                  std::chrono::milliseconds limit = std::chrono::milliseconds(5'000)) const {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return pred();
  }

 private:
  using tcp = boost::asio::ip::tcp;
  using PlainStream = boost::beast::tcp_stream;
  using TlsStream = boost::beast::ssl_stream<boost::beast::tcp_stream>;
  static constexpr auto kUseTuple = boost::asio::as_tuple(boost::asio::use_awaitable);

  // Counts a connection as open for as long as its coroutine holds it.
  class OpenGuard {
   public:
    explicit OpenGuard(ScriptedHttpServer& s) : s_(s) {
      std::lock_guard lock(s_.mutex_);
      ++s_.accepted_;
      index_ = s_.accepted_;
      ++s_.open_;
      s_.peak_open_ = std::max(s_.peak_open_, s_.open_);
    }
    ~OpenGuard() {
      std::lock_guard lock(s_.mutex_);
      --s_.open_;
    }
    OpenGuard(const OpenGuard&) = delete;
    OpenGuard& operator=(const OpenGuard&) = delete;
    std::size_t index() const { return index_; }

   private:
    ScriptedHttpServer& s_;
    std::size_t index_ = 0;
  };

  std::function<void(std::exception_ptr)> count_escaped() {
    return [this](std::exception_ptr e) {
      if (!e) return;
      std::lock_guard lock(mutex_);
      ++escaped_;
    };
  }

  boost::asio::awaitable<void> accept_loop() {
    for (std::size_t i = 0; i < kMaxConnections; ++i) {
      auto [ec, socket] = co_await acceptor_.async_accept(kUseTuple);
      if (ec) co_return;
      boost::asio::co_spawn(io_, serve_connection(std::move(socket)), count_escaped());
    }
  }

  boost::asio::awaitable<void> serve_connection(tcp::socket socket) {
    OpenGuard guard(*this);
    PlainStream plain(std::move(socket));
    if (!tls_) {
      co_await serve_requests(std::move(plain), guard.index(), std::string{});
      co_return;
    }
    TlsStream stream(std::move(plain), *tls_);
    boost::beast::get_lowest_layer(stream).expires_after(kServerIoLimit);
    auto [ec] = co_await stream.async_handshake(boost::asio::ssl::stream_base::server, kUseTuple);
    if (ec) {
      std::lock_guard lock(mutex_);
      ++tls_failures_;
      co_return;
    }
    const char* sni = SSL_get_servername(stream.native_handle(), TLSEXT_NAMETYPE_host_name);
    co_await serve_requests(std::move(stream), guard.index(), sni ? sni : "");
  }

  template <class Stream>
  boost::asio::awaitable<void> serve_requests(Stream stream, std::size_t connection,
                                              std::string sni) {
    namespace http = boost::beast::http;
    auto& tcp_layer = boost::beast::get_lowest_layer(stream);
    boost::beast::flat_buffer buffer;
    for (std::size_t i = 0; i < kMaxRequestsPerConnection; ++i) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(64 * 1024 * 1024);
      tcp_layer.expires_after(kServerIoLimit);
      auto [read_ec, n] = co_await http::async_read(stream, buffer, parser, kUseTuple);
      (void)n;
      if (read_ec) co_return;
      const auto& req = parser.get();
      ReceivedRequest received;
      received.connection = connection;
      received.method = std::string(req.method_string());
      received.target = std::string(req.target());
      received.body = req.body();
      received.tls_server_name = sni;
      for (const auto& field : req) {
        received.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
      }
      {
        std::lock_guard lock(mutex_);
        received.index = requests_.size();
        requests_.push_back(received);
      }
      const ScriptedReply reply = script_(received);
      if (reply.delay.count() > 0) {
        boost::asio::steady_timer timer(stream.get_executor());
        timer.expires_after(reply.delay);
        co_await timer.async_wait(kUseTuple);
      }

      using Kind = ScriptedReply::Kind;
      switch (reply.kind) {
        case Kind::close_without_response:
          tcp_layer.close();
          co_return;
        case Kind::never_respond:
          co_await drain_until_closed(stream);
          co_return;
        case Kind::raw: {
          auto [ec, w] =
              co_await boost::asio::async_write(stream, boost::asio::buffer(reply.raw), kUseTuple);
          (void)ec;
          (void)w;
          tcp_layer.close();
          co_return;
        }
        case Kind::reset_mid_response: {
          std::string head = "HTTP/1.1 " + std::to_string(reply.status) +
                             " OK\r\nContent-Type: application/json\r\nContent-Length: " +
                             std::to_string(reply.body.size()) + "\r\n\r\n";
          head += reply.body.substr(0, reply.body.size() / 2);
          auto [ec, w] =
              co_await boost::asio::async_write(stream, boost::asio::buffer(head), kUseTuple);
          (void)ec;
          (void)w;
          boost::system::error_code ignored;
          tcp_layer.socket().set_option(boost::asio::socket_base::linger(true, 0), ignored);
          tcp_layer.close();
          co_return;
        }
        case Kind::respond:
        case Kind::respond_then_close: {
          http::response<http::string_body> res{static_cast<http::status>(reply.status), 11};
          res.keep_alive(req.keep_alive());
          // Scripted headers last, so that a script can send "Connection: close".
          for (const auto& [k, v] : reply.headers) res.set(k, v);
          res.body() = reply.body;
          if (reply.chunked) {
            res.chunked(true);
          } else {
            res.prepare_payload();
          }
          const bool keep = res.keep_alive();
          auto [ec, w] = co_await http::async_write(stream, res, kUseTuple);
          (void)w;
          if (ec || !keep || reply.kind == Kind::respond_then_close) {
            tcp_layer.close();
            co_return;
          }
          break;
        }
      }
    }
  }

  // Reads and discards until the peer closes, the I/O limit passes or the server stops.
  template <class Stream>
  boost::asio::awaitable<void> drain_until_closed(Stream& stream) {
    auto& tcp_layer = boost::beast::get_lowest_layer(stream);
    tcp_layer.expires_after(kServerIoLimit);
    char scratch[4096];
    for (std::size_t i = 0; i < 100'000; ++i) {
      auto [ec, n] = co_await stream.async_read_some(boost::asio::buffer(scratch), kUseTuple);
      (void)n;
      if (ec) co_return;
    }
  }

  // Declared before io_: connection coroutines destroyed with io_ still update them.
  mutable std::mutex mutex_;
  std::size_t accepted_ = 0;
  std::size_t open_ = 0;
  std::size_t peak_open_ = 0;
  std::size_t tls_failures_ = 0;
  std::size_t escaped_ = 0;
  std::vector<ReceivedRequest> requests_;
  Script script_;
  std::shared_ptr<boost::asio::ssl::context> tls_;

  boost::asio::io_context io_;
  tcp::acceptor acceptor_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::uint16_t port_ = 0;
  std::thread thread_;
};

}  // namespace sproxy::test
