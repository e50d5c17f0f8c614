// The state the server's parts share inside the proxy library: one ServerWorker per io
// thread (its io_context, acceptors and open connections) and the counters every thread
// adds to (ServerShared). Not a public interface: server.cpp owns the workers, the accept
// loop (accept_loop.hpp) and the sessions (session.hpp) run on them. A worker's state is
// touched only from its own thread, except where noted.
#pragma once

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <exception>
#include <list>
#include <memory>
#include <string>
#include <thread>

#include "config/config.hpp"
#include "proxy/request_handler.hpp"
#include "proxy/shared_slot.hpp"

namespace sproxy::proxy::detail {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace ssl = asio::ssl;

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
    grace.expires_after(std::chrono::milliseconds(cfg.shutdown_grace_ms));
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
  asio::ip::tcp::acceptor acceptor{ioc};
  asio::local::stream_protocol::acceptor unix_acceptor{
      ioc};  // open only with a Unix socket listener
  asio::steady_timer grace{ioc};
  std::thread thread;
};

// The completion handler of every co_spawn on a worker: an escaped exception is logged
// and counted, and ends that coroutine only.
inline auto completion_handler(std::shared_ptr<ServerShared> shared, const char* what) {
  return [shared = std::move(shared), what](std::exception_ptr e) {
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

}  // namespace sproxy::proxy::detail
