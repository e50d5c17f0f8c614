#include "proxy/server.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detail/socket_option.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "proxy/accept_loop.hpp"
#include "proxy/http_io.hpp"
#include "proxy/server_worker.hpp"
#include "proxy/tls_context.hpp"

namespace sproxy::proxy {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace errors = upstream::errors;
using asio::ip::tcp;
using local_stream = asio::local::stream_protocol;
using detail::completion_handler;

namespace {

using ReusePort = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;

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
    asio::co_spawn(w->ioc, detail::accept_tcp_connections(w, !tls_enabled()),
                   completion_handler(shared_, "acceptor"));
    if (w->unix_acceptor.is_open()) {
      asio::co_spawn(w->ioc, detail::accept_unix_connections(w),
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
