// Server: the proxy's HTTP/1.1 listener.
//
// Contract: `start` binds one acceptor per io thread on the configured address (all with
// SO_REUSEPORT; with port 0 the first binds an ephemeral port and the others join it),
// then runs one io_context per thread. Each connection is one coroutine on its
// acceptor's thread: keep-alive, header/body size limits (431 / 413 envelopes, then the
// connection closes), a deadline for a whole request, an idle deadline between
// requests, a write deadline, and a global max_connections (beyond it: 503 envelope,
// then close). Requests go to the RequestHandler.
//
// Stopping: `stop` (thread-safe, idempotent, returns at once) stops accepting, closes
// idle keep-alive connections, lets requests in flight finish and answers them with
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
#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <memory>
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
  // The bound endpoint (the real port when configured with port 0). Valid after start.
  boost::asio::ip::tcp::endpoint endpoint() const { return endpoint_; }
  void stop();
  void wait();

  // Open connections right now (all threads).
  std::size_t connection_count() const;
  // Exceptions that escaped a connection coroutine since start.
  std::uint64_t escaped_exceptions() const;

 private:
  config::ListenConfig cfg_;
  std::shared_ptr<const RequestHandler> handler_;
  std::shared_ptr<detail::ServerShared> shared_;
  std::vector<std::unique_ptr<detail::ServerWorker>> workers_;
  boost::asio::ip::tcp::endpoint endpoint_;
  std::atomic<bool> stop_requested_{false};
};

}  // namespace sproxy::proxy
