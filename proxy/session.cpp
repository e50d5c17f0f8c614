#include "proxy/session.hpp"

#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <chrono>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>

#include "proxy/http_io.hpp"
#include "proxy/tls_context.hpp"

namespace sproxy::proxy::detail {

namespace http = beast::http;
namespace errors = upstream::errors;
namespace ssl = asio::ssl;
using asio::ip::tcp;
using local_stream = asio::local::stream_protocol;
using std::chrono::milliseconds;

namespace {

// The three kinds of connection; serve_connection is one template over them.
using TcpStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;
using UnixStream = beast::basic_stream<local_stream>;
template <class Stream>
constexpr bool kIsTls = std::is_same_v<Stream, TlsStream>;

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

// First read of a request: how much to ask the socket for at once.
constexpr std::size_t kReadChunk = 8 * 1024;
// After a final error answer (413, 431, 503) the rest of what the client sends is read
// and dropped for a little while, so closing does not reset the connection before the
// client has read the answer.
constexpr milliseconds kMaxLinger{2'000};
constexpr std::size_t kMaxLingerBytes = 8 * 1024 * 1024;
// How long a TLS connection that ends waits for the peer's close_notify after sending its own.
constexpr milliseconds kMaxTlsCloseWait{500};

bool expects_continue(const http::request_header<>& header) {
  const auto value = header[http::field::expect];
  return beast::iequals(value, "100-continue");
}

bool is_expected_close(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::operation_aborted || ec == beast::error::timeout ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe;
}

template <class Stream>
SessionSlot slot_for(Stream* stream) {
  return SessionSlot{
      stream, [](void* s) { beast::get_lowest_layer(*static_cast<Stream*>(s)).cancel(); },
      [](void* s) { beast::get_lowest_layer(*static_cast<Stream*>(s)).close(); }, false};
}

// Registers a connection with its worker for its whole life.
class SessionRegistration {
 public:
  template <class Stream>
  SessionRegistration(ServerWorker* worker, Stream* stream)
      : worker_(worker),
        it_(worker->sessions.insert(worker->sessions.end(), slot_for(stream))),
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

// The TLS handshake, under the read deadline; on success `connection` gets the verified
// client certificate, if any. A failure is counted and ends this connection only.
asio::awaitable<bool> tls_handshake(ServerWorker* w, TlsStream* stream,
                                    ConnectionContext* connection) {
  beast::get_lowest_layer(*stream).expires_after(milliseconds(w->cfg.read_timeout_ms));
  auto [ec] = co_await stream->async_handshake(ssl::stream_base::server, kUseTuple);
  if (ec) {
    w->shared->tls_handshake_failures.fetch_add(1, std::memory_order_relaxed);
    spdlog::debug("TLS handshake failed: {}", ec.message());
    co_return false;
  }
  if (w->cfg.tls.client_auth != config::ClientAuth::off) {
    connection->peer_certificate = verified_peer_certificate(stream->native_handle());
  }
  co_return true;
}

// Request body bytes taken from the process-wide budget (listen.max_body_bytes_in_flight)
// while a request's body is read and handled; given back on destruction.
class BodyReservation {
 public:
  BodyReservation() = default;
  BodyReservation(BodyReservation&& other) noexcept
      : pool_(std::exchange(other.pool_, nullptr)), bytes_(other.bytes_) {}
  BodyReservation& operator=(BodyReservation&& other) noexcept {
    if (this != &other) {
      release();
      pool_ = std::exchange(other.pool_, nullptr);
      bytes_ = other.bytes_;
    }
    return *this;
  }
  ~BodyReservation() { release(); }

  // Takes `bytes` from `pool` when the total stays within `budget`; false (nothing
  // taken) otherwise.
  bool take(std::atomic<std::size_t>* pool, std::size_t budget, std::size_t bytes) {
    std::size_t used = pool->load(std::memory_order_relaxed);
    do {
      if (bytes > budget || used > budget - bytes) return false;
    } while (!pool->compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
    release();
    pool_ = pool;
    bytes_ = bytes;
    return true;
  }

 private:
  void release() {
    if (pool_ != nullptr) pool_->fetch_sub(bytes_, std::memory_order_relaxed);
    pool_ = nullptr;
  }

  std::atomic<std::size_t>* pool_ = nullptr;
  std::size_t bytes_ = 0;
};

// True for the parser's verdicts on bytes that are not a valid request (as opposed to the
// stream ending, a limit, or a failed read).
bool is_malformed_request(const beast::error_code& ec) {
  if (ec.category() != beast::error_code(http::error::bad_method).category()) return false;
  switch (static_cast<http::error>(ec.value())) {
    case http::error::bad_line_ending:
    case http::error::bad_method:
    case http::error::bad_target:
    case http::error::bad_version:
    case http::error::bad_field:
    case http::error::bad_value:
    case http::error::bad_content_length:
    case http::error::bad_transfer_encoding:
    case http::error::bad_chunk:
    case http::error::bad_chunk_extension:
    case http::error::bad_obs_fold:
    case http::error::multiple_content_length:
      return true;
    default:
      return false;
  }
}

// How reading one request ended.
struct RequestRead {
  std::optional<HttpRequest> request;        // read in full: to be answered
  std::optional<HttpResponse> final_answer;  // to be sent, then the connection closes
  BodyReservation body;                      // the request's body bytes in the budget
};

// One connection, whatever its stream: the steps serve_connection takes, each under its
// deadline. Lives in serve_connection's frame, on its worker's thread.
template <class Stream>
class Session {
 public:
  Session(ServerWorker* w, Stream stream)
      : w_(w), stream_(std::move(stream)), registration_(w, &stream_), handler_(w->handler) {}
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // The TLS handshake of a TLS stream; false when it failed and the connection is closed.
  asio::awaitable<bool> handshake();
  // The 503 for a connection beyond listen.max_connections (counted); nullopt within it.
  std::optional<HttpResponse> refusal_over_limit();
  // Waits (under the idle deadline) for the next request and reads it: a plain GET already
  // in the buffer is parsed in place, anything else goes through Beast's parser.
  asio::awaitable<RequestRead> read_request();
  // The handler's reply: ready at once for a cache hit, a refusal or /healthz.
  Reply answer(HttpRequest request) {
    return handler_->answer(std::move(request), context_, stream_.get_executor());
  }
  // Writes a ready reply under the write deadline; false when the connection failed.
  asio::awaitable<bool> write(Reply& reply, bool keep_alive);
  // Sends a final answer (400, 413, 431, 503, a refusal before the body), then reads and
  // drops what the client still sends for a little while, so that closing does not reset
  // the connection before the client has read the answer.
  asio::awaitable<void> send_final_answer(HttpResponse answer);
  // Ends the connection (a TLS one with close_notify, unless a final answer was sent).
  asio::awaitable<void> close(bool after_final_answer);

  asio::any_io_executor executor() { return stream_.get_executor(); }

 private:
  auto& lowest() { return beast::get_lowest_layer(stream_); }
  asio::awaitable<RequestRead> read_with_parser();

  ServerWorker* const w_;
  Stream stream_;
  SessionRegistration registration_;
  // Held for the connection: pending requests finish on it.
  const std::shared_ptr<const RequestHandler> handler_;
  ConnectionContext context_;
  beast::flat_buffer buffer_;
  std::string head_;  // the head of every answer written, reused
};

template <class Stream>
asio::awaitable<bool> Session<Stream>::handshake() {
  beast::error_code ignored;
  if constexpr (kIsTls<Stream>) {
    // No request has started: stopping may cancel the handshake.
    registration_.set_idle(true);
    bool shaken = false;
    if (!w_->stopping) shaken = co_await tls_handshake(w_, &stream_, &context_);
    if (!shaken) {
      lowest().socket().close(ignored);
      co_return false;
    }
  } else {
    // Answers are first written without blocking (write_now).
    lowest().socket().non_blocking(true, ignored);
  }
  co_return true;
}

template <class Stream>
std::optional<HttpResponse> Session<Stream>::refusal_over_limit() {
  if (registration_.count_at_start() <= w_->cfg.max_connections) return std::nullopt;
  w_->shared->connections_rejected.fetch_add(1, std::memory_order_relaxed);
  return make_error_response(errors::service_unavailable("too_many_connections"), 11);
}

template <class Stream>
asio::awaitable<RequestRead> Session<Stream>::read_request() {
  RequestRead out;
  // Until a request has been read in full, shutdown closes the connection.
  registration_.set_idle(true);
  if (buffer_.size() == 0) {
    if (w_->stopping) co_return out;
    lowest().expires_after(milliseconds(w_->cfg.idle_timeout_ms));
    auto [ec, n] = co_await stream_.async_read_some(buffer_.prepare(kReadChunk), kUseTuple);
    if (ec) {
      if (!is_expected_close(ec)) spdlog::debug("connection read failed: {}", ec.message());
      co_return out;
    }
    buffer_.commit(n);
  }
  out.request.emplace();
  if (parse_simple_get(buffer_, w_->cfg.max_header_bytes, *out.request)) {
    registration_.set_idle(false);
    co_return out;
  }
  RequestRead parsed = co_await read_with_parser();
  if (parsed.request) registration_.set_idle(false);
  co_return parsed;
}

// Reads the request that starts in the buffer: its head (held to max_header_bytes however
// it arrives), then, unless the handler refuses the head or the body budget has no room
// for it, its body. Neither: the connection ended or failed (nothing to answer).
template <class Stream>
asio::awaitable<RequestRead> Session<Stream>::read_with_parser() {
  const config::ListenConfig& cfg = w_->cfg;
  RequestRead out;
  http::request_parser<http::string_body> parser;
  parser.body_limit(static_cast<std::uint64_t>(cfg.max_body_bytes));
  std::size_t head_bytes = 0;
  beast::error_code ec;
  // Usually the whole request is already in the buffer: no read, no deadline to arm.
  bool header_done = parse_buffered_header(parser, buffer_, cfg.max_header_bytes, head_bytes, ec);
  if (!ec && !parser.is_done()) {
    // One deadline for the rest of the request: header, optional 100 Continue, body.
    lowest().expires_after(milliseconds(cfg.read_timeout_ms));
  }
  while (!ec && !header_done) {
    // Stopping closes a connection whose request has not arrived.
    if (w_->stopping) co_return out;
    auto [read_ec, n] = co_await stream_.async_read_some(buffer_.prepare(kReadChunk), kUseTuple);
    ec = read_ec;
    if (ec) break;
    buffer_.commit(n);
    header_done = parse_buffered_header(parser, buffer_, cfg.max_header_bytes, head_bytes, ec);
  }
  if (!ec && !parser.is_done()) {
    // A body follows. Unless it is all in the buffer already (then it costs nothing
    // more, and the connection can go on), a request the head already decides (unknown
    // route, credentials that name nobody allowed) is answered without reading it.
    const auto length = parser.content_length();
    const bool body_buffered = length && buffer_.size() >= *length;
    if (!body_buffered) {
      if (auto refusal = handler_->refuse_before_body(parser.get(), context_)) {
        out.final_answer = std::move(*refusal);
        co_return out;
      }
    }
    if (!out.body.take(&w_->shared->body_bytes_in_flight, cfg.max_body_bytes_in_flight,
                       length ? static_cast<std::size_t>(*length) : cfg.max_body_bytes)) {
      upstream::ApiError busy = errors::service_unavailable("request_bodies_in_flight");
      busy.retry_after_seconds = 1;
      out.final_answer = make_error_response(busy, parser.get().version());
      co_return out;
    }
    if (w_->stopping) co_return out;
    if (expects_continue(parser.get())) {
      // Clients such as curl wait for this before sending a larger body.
      http::response<http::empty_body> go_on{http::status::continue_, parser.get().version()};
      auto [continue_ec, continue_n] = co_await http::async_write(stream_, go_on, kUseTuple);
      (void)continue_n;
      ec = continue_ec;
    }
    if (!ec) {
      auto [body_ec, body_n] = co_await http::async_read(stream_, buffer_, parser, kUseTuple);
      (void)body_n;
      ec = body_ec;
    }
  }
  if (!ec) {
    out.request = parser.release();
  } else if (ec == http::error::header_limit) {
    out.final_answer = make_error_response(errors::headers_too_large(), 11);
  } else if (ec == http::error::body_limit) {
    out.final_answer = make_error_response(errors::payload_too_large(), parser.get().version());
  } else if (is_malformed_request(ec)) {
    out.final_answer = make_error_response(errors::invalid_request_headers(), 11);
  } else if (!is_expected_close(ec)) {
    spdlog::debug("request read failed: {}", ec.message());
  }
  co_return out;
}

// One write path with two ends: a plain stream takes the reply's head and body bytes
// (usually all at once, without an asynchronous operation); a TLS stream takes the reply
// as a message through Beast's serializer, since a gather write of a head and a body
// larger than one TLS record through the SSL stream stalled.
template <class Stream>
asio::awaitable<bool> Session<Stream>::write(Reply& reply, bool keep_alive) {
  const milliseconds deadline(w_->cfg.write_timeout_ms);
  beast::error_code ec;
  if constexpr (kIsTls<Stream>) {
    HttpResponse response = reply.take_response();
    response.keep_alive(keep_alive);
    response.prepare_payload();
    lowest().expires_after(deadline);
    auto [write_ec, n] = co_await http::async_write(stream_, response, kUseTuple);
    (void)n;
    ec = write_ec;
  } else {
    const asio::const_buffer body = reply.serialize(keep_alive, head_);
    // Only a remainder the socket did not take waits, under the write deadline.
    const std::size_t written = write_now(lowest().socket(), head_, body, ec);
    if (!ec && written < head_.size() + body.size()) {
      lowest().expires_after(deadline);
      auto [rest_ec, n] = co_await async_write_rest(stream_, head_, body, written, kUseTuple);
      (void)n;
      ec = rest_ec;
    }
  }
  if (ec && !is_expected_close(ec)) spdlog::debug("response write failed: {}", ec.message());
  co_return !ec;
}

template <class Stream>
asio::awaitable<void> Session<Stream>::send_final_answer(HttpResponse answer) {
  // Being answered: shutdown lets the answer go out.
  registration_.set_idle(false);
  answer.keep_alive(false);
  answer.prepare_payload();
  lowest().expires_after(milliseconds(w_->cfg.write_timeout_ms));
  auto [write_ec, write_n] = co_await http::async_write(stream_, answer, kUseTuple);
  (void)write_n;
  if (write_ec) co_return;
  beast::error_code ignored;
  lowest().socket().shutdown(asio::socket_base::shutdown_send, ignored);
  registration_.set_idle(true);
  if (w_->stopping) co_return;
  lowest().expires_after(std::min(milliseconds(w_->cfg.read_timeout_ms), kMaxLinger));
  std::array<char, 4096> discard;
  for (std::size_t total = 0; total < kMaxLingerBytes;) {
    auto [ec, n] = co_await stream_.async_read_some(asio::buffer(discard), kUseTuple);
    if (ec) break;
    total += n;
  }
}

template <class Stream>
asio::awaitable<void> Session<Stream>::close(bool after_final_answer) {
  if constexpr (kIsTls<Stream>) {
    // close_notify, so the peer can tell the end from a truncation; a peer that is gone
    // or silent costs at most kMaxTlsCloseWait.
    registration_.set_idle(true);
    if (!after_final_answer && !w_->stopping) {
      lowest().expires_after(std::min(milliseconds(w_->cfg.write_timeout_ms), kMaxTlsCloseWait));
      auto [shutdown_ec] = co_await stream_.async_shutdown(kUseTuple);
      (void)shutdown_ec;
    }
  }
  beast::error_code ignored;
  lowest().socket().shutdown(asio::socket_base::shutdown_both, ignored);
  lowest().socket().close(ignored);
  co_return;
}

// One connection, in the shape of Beast's awaitable examples: read a request, answer it,
// write the answer, until the connection ends; then a final answer if there is one (it
// lingers), and close. `ctx` is the TLS context the stream was made with (null for other
// streams): held for the connection's whole life, whatever reload_tls installs meanwhile.
template <class Stream>
asio::awaitable<void> serve_connection(ServerWorker* w, Stream stream,
                                       std::shared_ptr<ssl::context> ctx) {
  (void)ctx;
  Session<Stream> session(w, std::move(stream));
  if (!co_await session.handshake()) co_return;
  std::optional<HttpResponse> final_answer = session.refusal_over_limit();
  while (!final_answer) {
    RequestRead read = co_await session.read_request();
    if (read.final_answer) final_answer = std::move(read.final_answer);
    if (!read.request) break;
    bool keep_alive = read.request->keep_alive();
    Reply reply = session.answer(std::move(*read.request));
    const bool waited = !reply.ready();
    if (waited) {
      Reply finished = co_await std::move(reply.rest);
      reply = std::move(finished);
    }
    if (w->stopping) keep_alive = false;
    const bool written = co_await session.write(reply, keep_alive);
    if (!written || !keep_alive) break;
    // A request that waited is usually one of many coalesced misses woken together:
    // the next read (a syscall and a deadline) waits until the others are answered.
    if (waited) co_await asio::post(session.executor(), asio::use_awaitable);
  }
  if (final_answer) co_await session.send_final_answer(std::move(*final_answer));
  co_await session.close(final_answer.has_value());
}

}  // namespace

void spawn_tcp_connection(ServerWorker* w, tcp::socket socket) {
  beast::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  if (auto ctx = w->shared->tls_context.load()) {
    TlsStream stream(std::move(socket), *ctx);
    asio::co_spawn(w->ioc, serve_connection(w, std::move(stream), std::move(ctx)),
                   completion_handler(w->shared, "connection"));
    return;
  }
  asio::co_spawn(w->ioc, serve_connection(w, TcpStream(std::move(socket)), nullptr),
                 completion_handler(w->shared, "connection"));
}

void spawn_unix_connection(ServerWorker* w, local_stream::socket socket) {
  asio::co_spawn(w->ioc, serve_connection(w, UnixStream(std::move(socket)), nullptr),
                 completion_handler(w->shared, "connection"));
}

}  // namespace sproxy::proxy::detail
