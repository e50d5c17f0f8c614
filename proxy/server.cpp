#include "proxy/server.hpp"

#include <fcntl.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detail/socket_option.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
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
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <list>
#include <optional>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <variant>

#include "proxy/http_io.hpp"
#include "proxy/shared_slot.hpp"

namespace sproxy::proxy {

namespace asio = boost::asio;
namespace beast = boost::beast;
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
// How long a TLS connection that ends waits for the peer's close_notify after sending its own.
constexpr milliseconds kMaxTlsCloseWait{500};
// TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 keeps OpenSSL's defaults).
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

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
  std::atomic<std::uint64_t> tls_handshake_failures{0};
  std::atomic<std::uint64_t> connections_rejected{0};
  // Bytes of request bodies reserved by connections (BodyReservation), all threads.
  std::atomic<std::size_t> body_bytes_in_flight{0};
  // The whole answer to a connection accepted only to be refused when descriptors ran
  // out (plain HTTP/1.1 503, Connection: close), serialized once at start.
  std::string out_of_descriptors_answer;
  // The context new TLS connections are made with (null without TLS); reload_tls swaps
  // it, and each connection keeps the one it started with.
  SharedSlot<ssl::context> tls_context;
};

// A connection as its worker sees it, for shutdown: its stream, whatever its type.
struct SessionSlot {
  void* stream = nullptr;
  void (*cancel)(void* stream) = nullptr;
  void (*close)(void* stream) = nullptr;
  // No request is being processed: waiting for one, reading its head or body, or
  // lingering after a final answer. Shutdown closes such a connection at once.
  bool idle = true;
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
    if (spare_descriptor >= 0) ::close(spare_descriptor);
  }

  void begin_shutdown() {
    stopping = true;
    beast::error_code ec;
    acceptor.close(ec);
    unix_acceptor.close(ec);
    for (auto& slot : sessions) {
      if (slot.idle) slot.cancel(slot.stream);
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
      for (auto& slot : sessions) slot.close(slot.stream);
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
  // Held in reserve so that, with every other descriptor in use, one connection can still
  // be accepted to be answered 503 (see refuse_for_lack_of_descriptors). -1 while spent.
  int spare_descriptor = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  // Declared after the state above: destroyed first, so pending frames find it intact.
  asio::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  local_stream::acceptor unix_acceptor{ioc};  // open only with a Unix socket listener
  asio::steady_timer grace{ioc};
  std::thread thread;
};

}  // namespace detail

namespace {

using detail::ServerWorker;
using detail::SessionSlot;

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

// True when `s` may stand in a certificate name (printable ASCII, not empty).
bool is_printable(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
}

void add_asn1_name(std::vector<std::string>& names, const char* prefix, const ASN1_STRING* value) {
  if (value == nullptr) return;
  const std::string_view text(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                              static_cast<std::size_t>(ASN1_STRING_length(value)));
  if (is_printable(text)) names.push_back(std::string(prefix).append(text));
}

// The names of the peer's certificate when the handshake verified one; null otherwise.
std::shared_ptr<const PeerCertificate> verified_peer_certificate(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return nullptr;
  auto peer = std::make_shared<PeerCertificate>();
  const X509_NAME* subject = X509_get_subject_name(cert);
  for (int i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1); i >= 0;
       i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) {
    add_asn1_name(peer->names, "CN=", X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i)));
  }
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(sans, i);
      if (name->type == GEN_DNS) add_asn1_name(peer->names, "DNS:", name->d.dNSName);
      if (name->type == GEN_URI) {
        add_asn1_name(peer->names, "URI:", name->d.uniformResourceIdentifier);
      }
    }
    GENERAL_NAMES_free(sans);
  }
  return peer;
}

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

bool is_out_of_descriptors(const beast::error_code& ec) {
  return ec == asio::error::no_descriptors ||
         ec == beast::error_code(ENFILE, boost::system::system_category());
}

// With every descriptor in use, a client would wait in the backlog until one frees up.
// Instead the spare descriptor makes room to accept one waiting connection, which gets
// the 503 answer (a TLS listener's is closed without one: a plain answer would mean
// nothing to its client) and is closed; then the spare is taken again. False when
// there was nothing to accept or no spare.
template <class Acceptor>
bool refuse_for_lack_of_descriptors(ServerWorker* w, Acceptor* acceptor, bool plain) {
  if (w->spare_descriptor < 0) w->spare_descriptor = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (w->spare_descriptor < 0) return false;
  ::close(w->spare_descriptor);
  beast::error_code ignored;
  // Never wait here: another thread may have taken the connection meanwhile.
  acceptor->non_blocking(true, ignored);
  const int fd =
      ::accept4(acceptor->native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd >= 0) {
    if (plain) {
      const std::string& answer = w->shared->out_of_descriptors_answer;
      (void)::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
      ::shutdown(fd, SHUT_WR);
      // Drops what the client already sent, so closing does not reset the connection
      // before it has read the answer.
      std::array<char, 4096> discard;
      for (int i = 0; i < 16 && ::recv(fd, discard.data(), discard.size(), 0) > 0; ++i) {
      }
    }
    ::close(fd);
    w->shared->connections_rejected.fetch_add(1, std::memory_order_relaxed);
  }
  w->spare_descriptor = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  return fd >= 0;
}

// Accepts on `acceptor` until it closes; `spawn(socket)` starts each connection. `plain`:
// the listener speaks plain HTTP (see refuse_for_lack_of_descriptors).
template <class Acceptor, class Spawn>
asio::awaitable<void> accept_connections(ServerWorker* w, Acceptor* acceptor, bool plain,
                                         Spawn spawn) {
  asio::steady_timer backoff(w->ioc);
  for (;;) {
    auto [ec, socket] = co_await acceptor->async_accept(kUseTuple);
    if (w->stopping) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      if (is_out_of_descriptors(ec) && refuse_for_lack_of_descriptors(w, acceptor, plain)) {
        spdlog::debug("accept: out of file descriptors, refused a connection with 503");
        continue;
      }
      spdlog::warn("accept failed: {}", ec.message());
      backoff.expires_after(kAcceptBackoff);
      co_await backoff.async_wait(kUseTuple);
      continue;
    }
    spawn(std::move(socket));
  }
}

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

std::string openssl_problem(const beast::error_code& ec) {
  return ec.message() + (ec.category() == asio::error::get_ssl_category() ? " (OpenSSL)" : "");
}

// A TLS server context from the configured files: TLS 1.2 at least, forward-secret AEAD
// suites, and client certificate verification as `tls.client_auth` says.
std::shared_ptr<ssl::context> make_tls_context(const config::TlsListenConfig& tls) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  SSL_CTX* native = ctx->native_handle();
  const auto fail = [](const std::string& what, const std::string& why) {
    throw std::runtime_error("TLS: " + what + ": " + why);
  };
  if (SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION) != 1) {
    fail("min protocol", "cannot require TLS 1.2");
  }
  SSL_CTX_set_options(
      native, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
  if (SSL_CTX_set_cipher_list(native, kTls12Ciphers) != 1) fail("ciphers", "none available");
  beast::error_code ec;
  ctx->use_certificate_chain_file(tls.cert_file, ec);
  if (ec) fail("cert_file " + tls.cert_file, openssl_problem(ec));
  ctx->use_private_key_file(tls.key_file, ssl::context::pem, ec);
  if (ec) fail("key_file " + tls.key_file, openssl_problem(ec));
  if (SSL_CTX_check_private_key(native) != 1) {
    fail("key_file " + tls.key_file, "does not match the certificate in " + tls.cert_file);
  }
  if (tls.client_auth != config::ClientAuth::off) {
    ctx->load_verify_file(tls.client_ca_file, ec);
    if (ec) fail("client_ca_file " + tls.client_ca_file, openssl_problem(ec));
    // Tells clients which CAs to pick a certificate from.
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(tls.client_ca_file.c_str());
    if (names == nullptr) fail("client_ca_file " + tls.client_ca_file, "no CA certificate in it");
    SSL_CTX_set_client_CA_list(native, names);
    ssl::verify_mode mode = ssl::verify_peer;
    if (tls.client_auth == config::ClientAuth::required) mode |= ssl::verify_fail_if_no_peer_cert;
    ctx->set_verify_mode(mode);
    // Session resumption with verified peers needs a context id.
    static constexpr unsigned char kSessionContext[] = "secrets-proxy";
    SSL_CTX_set_session_id_context(native, kSessionContext, sizeof kSessionContext - 1);
  }
  return ctx;
}

// Makes room for a Unix socket at `path`: a socket file nobody accepts on any more (left
// by a previous run) is removed; anything else there is an error.
void clear_stale_unix_socket(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw std::runtime_error("cannot listen on unix:" + path + ": " + std::strerror(errno));
  }
  if (!S_ISSOCK(st.st_mode)) {
    throw std::runtime_error("cannot listen on unix:" + path + ": exists and is not a socket");
  }
  asio::io_context probe_context{1};
  local_stream::socket probe(probe_context);
  beast::error_code ec;
  probe.connect(local_stream::endpoint(path), ec);
  if (!ec) {
    throw std::runtime_error("cannot listen on unix:" + path + ": another process serves it");
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw std::runtime_error("cannot remove stale socket " + path + ": " + std::strerror(errno));
  }
  spdlog::info("removed stale socket {}", path);
}

}  // namespace

Server::Server(config::ListenConfig cfg, std::shared_ptr<const RequestHandler> handler)
    : cfg_(std::move(cfg)),
      handler_(std::move(handler)),
      shared_(std::make_shared<detail::ServerShared>()) {}

Server::~Server() {
  stop();
  wait();
  // A start after stop bound it again.
  remove_unix_socket();
}

void Server::start() {
  if (!cfg_.tls.cert_file.empty()) {
    shared_->tls_context.store(make_tls_context(cfg_.tls));
  }

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
  if (!cfg_.unix_socket.path.empty()) listen_on_unix_socket();
  {
    HttpResponse answer =
        make_error_response(errors::service_unavailable("too_many_connections"), 11);
    answer.keep_alive(false);
    answer.prepare_payload();
    std::string bytes;
    serialize_response_head(answer, bytes);
    const auto body = response_body_buffer(answer);
    bytes.append(static_cast<const char*>(body.data()), body.size());
    shared_->out_of_descriptors_answer = std::move(bytes);
  }

  for (auto& worker : workers_) {
    auto* w = worker.get();
    asio::co_spawn(
        w->ioc,
        accept_connections(w, &w->acceptor, !tls_enabled(),
                           [w](tcp::socket socket) { spawn_tcp_connection(w, std::move(socket)); }),
        completion_handler(shared_, "acceptor"));
    if (w->unix_acceptor.is_open()) {
      asio::co_spawn(w->ioc,
                     accept_connections(w, &w->unix_acceptor, true,
                                        [w](local_stream::socket socket) {
                                          spawn_unix_connection(w, std::move(socket));
                                        }),
                     completion_handler(shared_, "unix socket acceptor"));
    }
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

void Server::run_on_each_thread(const std::function<asio::awaitable<void>()>& task) {
  for (auto& worker : workers_) {
    auto* w = worker.get();
    asio::post(w->ioc, [w, task, shared = shared_] {
      asio::co_spawn(w->ioc, task(), completion_handler(shared, "per-thread task"));
    });
  }
}

void Server::listen_on_unix_socket() {
  const std::string& path = cfg_.unix_socket.path;
  clear_stale_unix_socket(path);
  beast::error_code ec;
  const auto fail = [&](const std::string& step, const std::string& why) {
    throw std::runtime_error("cannot listen on unix:" + path + ": " + step + ": " + why);
  };
  auto& first = workers_.front()->unix_acceptor;
  first.open(local_stream(), ec);
  if (ec) fail("open", ec.message());
  first.bind(local_stream::endpoint(path), ec);
  if (ec) fail("bind", ec.message());
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("stat", std::strerror(errno));
  unix_socket_id_ = {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
  unix_socket_bound_ = true;
  // Before listen(): nobody can connect while the file still has the umask's mode.
  if (::chmod(path.c_str(), static_cast<mode_t>(cfg_.unix_socket.mode)) != 0) {
    fail("chmod", std::strerror(errno));
  }
  first.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) fail("listen", ec.message());
  // Every io thread accepts on the one listening socket, through a descriptor of its own.
  for (std::size_t i = 1; i < workers_.size(); ++i) {
    const int fd = ::dup(first.native_handle());
    if (fd < 0) fail("dup", std::strerror(errno));
    workers_[i]->unix_acceptor.assign(local_stream(), fd, ec);
    if (ec) {
      ::close(fd);
      fail("assign", ec.message());
    }
  }
}

void Server::remove_unix_socket() {
  if (!unix_socket_bound_.exchange(false)) return;
  // Only the file this server bound: not one another process created there since.
  const std::string& path = cfg_.unix_socket.path;
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return;
  if (static_cast<std::uint64_t>(st.st_dev) != unix_socket_id_.first ||
      static_cast<std::uint64_t>(st.st_ino) != unix_socket_id_.second) {
    return;
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    spdlog::warn("cannot remove socket {}: {}", path, std::strerror(errno));
  }
}

void Server::reload_tls() {
  if (!shared_->tls_context.load()) {
    throw std::runtime_error("TLS is not configured on this listener");
  }
  // Throws before the swap: a bad file leaves the current context in place.
  auto next = make_tls_context(cfg_.tls);
  shared_->tls_context.store(std::move(next));
}

bool Server::tls_enabled() const { return !cfg_.tls.cert_file.empty(); }

std::uint64_t Server::tls_handshake_failures() const {
  return shared_->tls_handshake_failures.load(std::memory_order_relaxed);
}

void Server::stop() {
  if (stop_requested_.exchange(true)) return;
  remove_unix_socket();
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

std::uint64_t Server::connections_rejected() const {
  return shared_->connections_rejected.load(std::memory_order_relaxed);
}

std::size_t Server::body_bytes_in_flight() const {
  return shared_->body_bytes_in_flight.load(std::memory_order_relaxed);
}

std::uint64_t Server::escaped_exceptions() const {
  return shared_->escaped_exceptions.load(std::memory_order_relaxed);
}

}  // namespace sproxy::proxy
