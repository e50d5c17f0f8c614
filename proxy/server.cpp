#include "proxy/server.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detail/socket_option.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <chrono>
#include <limits>
#include <list>
#include <optional>
#include <stdexcept>
#include <thread>

#include "proxy/http_io.hpp"

namespace sproxy::proxy {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace errors = upstream::errors;
using asio::ip::tcp;
using std::chrono::milliseconds;

namespace {

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
using ReusePort = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;

// First read of a request: how much to ask the socket for at once.
constexpr std::size_t kReadChunk = 8 * 1024;
// After a final error answer (413, 431, 503) the rest of what the client sends is read
// and dropped for a little while, so closing does not reset the connection before the
// client has read the answer.
constexpr milliseconds kMaxLinger{2'000};
constexpr std::size_t kMaxLingerBytes = 8 * 1024 * 1024;
// Pause after a failed accept (e.g. out of file descriptors) instead of spinning.
constexpr milliseconds kAcceptBackoff{50};

bool expects_continue(const http::request_header<>& header) {
  const auto value = header[http::field::expect];
  return beast::iequals(value, "100-continue");
}

bool is_expected_close(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::operation_aborted || ec == beast::error::timeout ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe;
}

}  // namespace

namespace detail {

struct ServerShared {
  std::atomic<std::size_t> connections{0};
  std::atomic<std::uint64_t> escaped_exceptions{0};
};

// A connection as its worker sees it, for shutdown.
struct SessionSlot {
  beast::tcp_stream* stream = nullptr;
  bool idle = true;  // waiting for a request to start (or lingering): safe to close
};

// One io thread: its io_context, acceptor and connections. Everything but `thread` and
// the constructor is touched only from that thread.
struct ServerWorker {
  ServerWorker(const config::ListenConfig& c, std::shared_ptr<const RequestHandler> h,
               std::shared_ptr<ServerShared> s)
      : cfg(c), handler(std::move(h)), shared(std::move(s)) {}

  ~ServerWorker() {
    // Connection frames still pending are destroyed with the io_context below; they
    // must not touch the timer, which goes first.
    destroying = true;
  }

  void begin_shutdown() {
    stopping = true;
    beast::error_code ec;
    acceptor.close(ec);
    for (auto& slot : sessions) {
      if (slot.idle) slot.stream->cancel();
    }
    if (sessions.empty()) return;
    spdlog::debug("waiting for {} connection(s) to finish", sessions.size());
    grace.expires_after(milliseconds(cfg.shutdown_grace_ms));
    grace.async_wait([this](beast::error_code wait_ec) {
      if (wait_ec || sessions.empty()) return;
      // Close every connection left. A request still waiting on the upstream is not
      // abandoned: its coroutine runs on until the upstream's (or the cache's) own
      // deadline answers it, then finds its connection gone. Destroying the loop with
      // work still pending would leave other threads posting into a dead io_context.
      spdlog::warn("shutdown grace over: closing {} busy connection(s)", sessions.size());
      for (auto& slot : sessions) slot.stream->close();
    });
  }

  void on_session_end(std::list<SessionSlot>::iterator it) {
    sessions.erase(it);
    shared->connections.fetch_sub(1, std::memory_order_relaxed);
    if (!destroying && stopping && sessions.empty()) grace.cancel();
  }

  const config::ListenConfig cfg;
  const std::shared_ptr<const RequestHandler> handler;
  const std::shared_ptr<ServerShared> shared;
  std::list<SessionSlot> sessions;
  bool stopping = false;
  bool destroying = false;
  // Declared after the state above: destroyed first, so pending frames find it intact.
  asio::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  asio::steady_timer grace{ioc};
  std::thread thread;
};

}  // namespace detail

namespace {

using detail::ServerWorker;
using detail::SessionSlot;

// Registers a connection with its worker for its whole life.
class SessionRegistration {
 public:
  SessionRegistration(ServerWorker* worker, beast::tcp_stream* stream)
      : worker_(worker),
        it_(worker->sessions.insert(worker->sessions.end(), SessionSlot{stream, false})),
        count_(worker->shared->connections.fetch_add(1, std::memory_order_relaxed) + 1) {}
  ~SessionRegistration() { worker_->on_session_end(it_); }
  SessionRegistration(const SessionRegistration&) = delete;
  SessionRegistration& operator=(const SessionRegistration&) = delete;

  void set_idle(bool idle) { it_->idle = idle; }
  // Open connections, this one included, when it was registered.
  std::size_t count_at_start() const { return count_; }

 private:
  ServerWorker* worker_;
  std::list<SessionSlot>::iterator it_;
  std::size_t count_;
};

asio::awaitable<HttpResponse> respond(std::shared_ptr<const RequestHandler> handler,
                                      HttpRequest request) {
  const unsigned version = request.version();
  try {
    // Awaited into a named local: GCC 12 mishandles co_await inside co_return.
    HttpResponse response = co_await handler->handle(std::move(request));
    co_return response;
  } catch (const std::exception& e) {
    // Not control flow: a safety net so one failing request gets a 500, not a dropped
    // connection.
    spdlog::error("request handler failed: {}", e.what());
  }
  co_return make_error_response(errors::internal_error(), version);
}

asio::awaitable<void> serve_connection(ServerWorker* w, tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  SessionRegistration registration(w, &stream);
  const config::ListenConfig& cfg = w->cfg;

  // A connection that ends with an answer of its own (413, 431, 503): sent after the
  // loop, then the connection lingers and closes.
  std::optional<upstream::ApiError> final_error;
  unsigned version = 11;

  if (registration.count_at_start() > cfg.max_connections) {
    final_error = errors::service_unavailable("too_many_connections");
  }

  beast::flat_buffer buffer;
  std::string response_head;  // reused by every answer of this connection
  while (!final_error) {
    if (buffer.size() == 0) {
      // Idle between requests: the only state in which shutdown closes the connection.
      registration.set_idle(true);
      if (w->stopping) break;
      stream.expires_after(milliseconds(cfg.idle_timeout_ms));
      auto [ec, n] = co_await stream.async_read_some(buffer.prepare(kReadChunk), kUseTuple);
      registration.set_idle(false);
      if (ec) {
        if (!is_expected_close(ec)) spdlog::debug("connection read failed: {}", ec.message());
        break;
      }
      buffer.commit(n);
    }

    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(
        std::min<std::size_t>(cfg.max_header_bytes, std::numeric_limits<std::uint32_t>::max())));
    parser.body_limit(static_cast<std::uint64_t>(cfg.max_body_bytes));
    // Usually the whole request is already in the buffer: no read, no deadline to arm.
    beast::error_code read_ec;
    const bool header_buffered = parse_buffered_header(parser, buffer, read_ec);
    if (!read_ec && !parser.is_done()) {
      // One deadline for the rest of the request: header, optional 100 Continue, body.
      stream.expires_after(milliseconds(cfg.read_timeout_ms));
    }
    if (!read_ec && !header_buffered) {
      auto [header_ec, header_n] =
          co_await http::async_read_header(stream, buffer, parser, kUseTuple);
      (void)header_n;
      read_ec = header_ec;
    }
    if (!read_ec && !parser.is_done()) {
      if (expects_continue(parser.get())) {
        // Clients such as curl wait for this before sending a larger body.
        http::response<http::empty_body> go_on{http::status::continue_, parser.get().version()};
        auto [continue_ec, continue_n] = co_await http::async_write(stream, go_on, kUseTuple);
        (void)continue_n;
        read_ec = continue_ec;
      }
      if (!read_ec) {
        auto [body_ec, body_n] = co_await http::async_read(stream, buffer, parser, kUseTuple);
        (void)body_n;
        read_ec = body_ec;
      }
    }
    if (read_ec == http::error::header_limit) {
      final_error = errors::headers_too_large();
      break;
    }
    if (read_ec == http::error::body_limit) {
      final_error = errors::payload_too_large();
      version = parser.get().version();
      break;
    }
    if (read_ec) {
      if (!is_expected_close(read_ec)) {
        spdlog::debug("request read failed: {}", read_ec.message());
      }
      break;
    }

    HttpRequest request = parser.release();
    version = request.version();
    bool keep_alive = request.keep_alive();
    HttpResponse response = co_await respond(w->handler, std::move(request));
    if (w->stopping) keep_alive = false;
    response.keep_alive(keep_alive);
    response.prepare_payload();

    stream.expires_after(milliseconds(cfg.write_timeout_ms));
    auto [write_ec, write_n] =
        co_await async_write_response(stream, response, response_head, kUseTuple);
    (void)write_n;
    if (write_ec) {
      if (!is_expected_close(write_ec)) {
        spdlog::debug("response write failed: {}", write_ec.message());
      }
      break;
    }
    if (!keep_alive) break;
  }

  beast::error_code ignored;
  if (final_error) {
    HttpResponse response = make_error_response(*final_error, version);
    response.keep_alive(false);
    response.prepare_payload();
    stream.expires_after(milliseconds(cfg.write_timeout_ms));
    auto [write_ec, write_n] = co_await http::async_write(stream, response, kUseTuple);
    (void)write_n;
    if (!write_ec) {
      stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
      registration.set_idle(true);
      if (!w->stopping) {
        stream.expires_after(std::min(milliseconds(cfg.read_timeout_ms), kMaxLinger));
        std::array<char, 4096> discard;
        for (std::size_t total = 0; total < kMaxLingerBytes;) {
          auto [ec, n] = co_await stream.async_read_some(asio::buffer(discard), kUseTuple);
          if (ec) break;
          total += n;
        }
      }
    }
  }
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  stream.socket().close(ignored);
}

auto completion_handler(std::shared_ptr<detail::ServerShared> shared, const char* what) {
  return [shared, what](std::exception_ptr e) {
    if (!e) return;
    shared->escaped_exceptions.fetch_add(1, std::memory_order_relaxed);
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::error("{} ended by an exception: {}", what, ex.what());
    } catch (...) {
      spdlog::error("{} ended by an unknown exception", what);
    }
  };
}

asio::awaitable<void> accept_connections(ServerWorker* w) {
  asio::steady_timer backoff(w->ioc);
  for (;;) {
    auto [ec, socket] = co_await w->acceptor.async_accept(kUseTuple);
    if (w->stopping) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      spdlog::warn("accept failed: {}", ec.message());
      backoff.expires_after(kAcceptBackoff);
      co_await backoff.async_wait(kUseTuple);
      continue;
    }
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    asio::co_spawn(w->ioc, serve_connection(w, std::move(socket)),
                   completion_handler(w->shared, "connection"));
  }
}

}  // namespace

Server::Server(config::ListenConfig cfg, std::shared_ptr<const RequestHandler> handler)
    : cfg_(std::move(cfg)),
      handler_(std::move(handler)),
      shared_(std::make_shared<detail::ServerShared>()) {}

Server::~Server() {
  stop();
  wait();
}

void Server::start() {
  beast::error_code ec;
  const auto address = asio::ip::make_address(cfg_.address, ec);
  if (ec) throw std::runtime_error("invalid listen address \"" + cfg_.address + "\"");
  tcp::endpoint endpoint{address, cfg_.port};

  const int threads = std::max(1, cfg_.threads);
  for (int i = 0; i < threads; ++i) {
    auto worker = std::make_unique<detail::ServerWorker>(cfg_, handler_, shared_);
    auto& acceptor = worker->acceptor;
    const auto fail = [&](const char* step) {
      throw std::runtime_error("cannot listen on " + endpoint.address().to_string() + ":" +
                               std::to_string(endpoint.port()) + ": " + step + ": " + ec.message());
    };
    acceptor.open(endpoint.protocol(), ec);
    if (ec) fail("open");
    acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (ec) fail("SO_REUSEADDR");
    acceptor.set_option(ReusePort(true), ec);
    if (ec) fail("SO_REUSEPORT");
    acceptor.bind(endpoint, ec);
    if (ec) fail("bind");
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) fail("listen");
    // With port 0 the first acceptor picked a port; the others join it.
    if (i == 0) endpoint = acceptor.local_endpoint();
    workers_.push_back(std::move(worker));
  }
  endpoint_ = endpoint;

  for (auto& worker : workers_) {
    auto* w = worker.get();
    asio::co_spawn(w->ioc, accept_connections(w), completion_handler(shared_, "acceptor"));
    // A stop that came before start still applies.
    if (stop_requested_) asio::post(w->ioc, [w] { w->begin_shutdown(); });
    w->thread = std::thread([w] {
      for (;;) {
        try {
          w->ioc.run();
          return;
        } catch (const std::exception& e) {
          // Completion handlers catch everything; this is a last resort that keeps the
          // thread serving.
          spdlog::error("io thread: unexpected exception: {}", e.what());
        }
      }
    });
  }
}

void Server::stop() {
  if (stop_requested_.exchange(true)) return;
  for (auto& worker : workers_) {
    auto* w = worker.get();
    asio::post(w->ioc, [w] { w->begin_shutdown(); });
  }
}

void Server::wait() {
  for (auto& worker : workers_) {
    if (worker->thread.joinable()) worker->thread.join();
  }
}

std::size_t Server::connection_count() const {
  return shared_->connections.load(std::memory_order_relaxed);
}

std::uint64_t Server::escaped_exceptions() const {
  return shared_->escaped_exceptions.load(std::memory_order_relaxed);
}

}  // namespace sproxy::proxy
