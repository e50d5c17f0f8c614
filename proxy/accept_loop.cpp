#include "proxy/accept_loop.hpp"

#include <sys/socket.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <chrono>

#include "proxy/session.hpp"

namespace sproxy::proxy::detail {

namespace {

using asio::ip::tcp;
using local_stream = asio::local::stream_protocol;

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
// Pause after a failed accept (e.g. out of file descriptors) instead of spinning.
constexpr std::chrono::milliseconds kAcceptBackoff{50};

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

}  // namespace

asio::awaitable<void> accept_tcp_connections(ServerWorker* w, bool plain) {
  return accept_connections(w, &w->acceptor, plain, [w](tcp::socket socket) {
    spawn_tcp_connection(w, std::move(socket));
  });
}

asio::awaitable<void> accept_unix_connections(ServerWorker* w) {
  return accept_connections(w, &w->unix_acceptor, true, [w](local_stream::socket socket) {
    spawn_unix_connection(w, std::move(socket));
  });
}

}  // namespace sproxy::proxy::detail
