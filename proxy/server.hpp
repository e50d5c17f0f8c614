// Server: the proxy's HTTP/1.1 listeners.
//
// Contract: `start` binds one acceptor per io thread on the configured address (all with
// SO_REUSEPORT; with port 0 the first binds an ephemeral port and the others join it),
// adds the Unix socket listener when `unix_socket.path` is set, then runs one io_context
// per thread. With `tls.cert_file` set the TCP listener speaks TLS (tls_context.hpp).
// Each connection is one Session on its acceptor's thread (session.hpp: keep-alive,
// limits, deadlines); accept_loop.hpp says what happens when descriptors run out.
// `reload_tls` (thread-safe) makes new connections use the configured files as they are
// now; it throws std::runtime_error (one line) and keeps the current context when one
// does not load. `stop` (thread-safe, idempotent, returns at once) stops accepting,
// closes idle connections, lets requests in flight finish (answered with
// `Connection: close`) and closes what is left after shutdown_grace_ms; `wait` returns
// when every io thread has exited. The destructor stops and waits. `start` throws
// std::runtime_error with one clear line (bad address, port in use); nothing on the
// per-connection path throws.
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
  // The Unix domain socket listener (plain HTTP): a stale socket file at the path is
  // removed first (only a socket nobody accepts on; anything else is a start error), the
  // file gets `unix_socket.mode` before it accepts, and every io thread accepts on it.
  void listen_on_unix_socket();
  // Removes the socket file, only if it is still the one this server bound.
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
