// Server: the proxy's HTTP/1.1 listeners.
//
// Contract: `start` binds one acceptor per io thread on the configured address (all with
// SO_REUSEPORT; with port 0 the first binds an ephemeral port and the others join it),
// then runs one io_context per thread. With `tls.cert_file` set that TCP listener speaks
// TLS (1.2 at least; the handshake runs under the read deadline and a failed one closes
// that connection only, counted in tls_handshake_failures and logged at debug). With
// `tls.client_auth` optional/required, client certificates are verified against
// `tls.client_ca_file` (an unverifiable one, or none in required mode, fails the
// handshake) and a verified one reaches the handler in the ConnectionContext of every
// request on that connection. With `unix_socket.path` set, a Unix domain socket
// listener (plain HTTP) is added: a stale socket file there is removed first (only a
// socket nobody accepts on; anything else is a start error), the file gets
// `unix_socket.mode` before it accepts, every io thread accepts on it, and stop removes
// it (only if it is still the file this server bound).
// Each connection, whatever its listener, is one coroutine on its acceptor's thread
// (one template over the stream type): keep-alive, header/body size limits (431 / 413
// envelopes, then the connection closes; the head limit is exact however the head is
// split across reads), a request that is not valid HTTP/1.1 (400 6003, then close), a
// deadline for a whole request, an idle deadline between requests, a write deadline,
// and a global max_connections over all listeners (beyond it: 503 envelope, then close;
// counted in connections_rejected). Requests go to the RequestHandler.
// Request bodies: a request whose head announces a body that is not all in the buffer
// yet is first put to RequestHandler::refuse_before_body; a refusal is answered without
// reading the body, and the connection closes. Otherwise its body's bytes (Content-Length, or
// max_body_bytes when chunked) are taken from a process-wide budget,
// max_body_bytes_in_flight, until it is answered; a request that does not fit is answered
// 503 at once (Retry-After: 1) and the connection closes.
// Descriptors: each io thread keeps one spare descriptor. When accept fails for lack of
// descriptors, the spare makes room to accept one waiting client, which gets the 503
// envelope at once (a TLS listener's is closed without it) instead of waiting in the
// backlog; counted in connections_rejected.
//
// TLS reload: `reload_tls` (thread-safe) reads the configured certificate, key and
// client CA files again and makes new connections use them; open connections keep the
// context they started with. It throws std::runtime_error (one line) and keeps the
// current context when a file does not load.
//
// Stopping: `stop` (thread-safe, idempotent, returns at once) stops accepting, closes
// every connection that is not processing a request (idle keep-alive ones, and ones
// still sending a request's head or body), lets requests in flight finish and answers them with
// `Connection: close`; after shutdown_grace_ms the connections left are closed. A request
// still waiting on the upstream then is not abandoned mid-call: it ends at the upstream's
// (or the cache's) own deadline. `wait` returns when every io thread has exited, i.e.
// when all of that work is done. The destructor stops and waits.
//
// Errors: `start` throws std::runtime_error with one clear line (bad address, port in
// use). Nothing on the per-connection path throws; an exception escaping a connection
// coroutine is logged and counted, and closes that connection only.
#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "config/config.hpp"
#include "proxy/request_handler.hpp"

namespace sproxy::proxy {

namespace detail {
struct ServerShared;
struct ServerWorker;
}  // namespace detail

class Server {
 public:
  Server(config::ListenConfig cfg, std::shared_ptr<const RequestHandler> handler);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void start();
  // Runs `task()` once on every io thread (after start), e.g. to open upstream
  // connections in each thread's pool. An escaped exception is logged and counted.
  void run_on_each_thread(const std::function<boost::asio::awaitable<void>()>& task);
  // The bound endpoint (the real port when configured with port 0). Valid after start.
  boost::asio::ip::tcp::endpoint endpoint() const { return endpoint_; }
  void stop();
  void wait();

  bool tls_enabled() const;
  // See the contract above; call after start.
  void reload_tls();
  // TLS handshakes that failed since start (bad clients, refused certificates, timeouts).
  std::uint64_t tls_handshake_failures() const;

  // Open connections right now (all threads).
  std::size_t connection_count() const;
  // Connections refused with a 503 since start (max_connections reached, or no file
  // descriptor left to serve them).
  std::uint64_t connections_rejected() const;
  // Bytes of request bodies that connections are reading or holding right now.
  std::size_t body_bytes_in_flight() const;
  // Exceptions that escaped a connection coroutine since start.
  std::uint64_t escaped_exceptions() const;

 private:
  void listen_on_unix_socket();
  void remove_unix_socket();

  config::ListenConfig cfg_;
  std::shared_ptr<const RequestHandler> handler_;
  std::shared_ptr<detail::ServerShared> shared_;
  std::vector<std::unique_ptr<detail::ServerWorker>> workers_;
  boost::asio::ip::tcp::endpoint endpoint_;
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> unix_socket_bound_{false};
  std::pair<std::uint64_t, std::uint64_t> unix_socket_id_;  // st_dev, st_ino of the bound file
};

}  // namespace sproxy::proxy
