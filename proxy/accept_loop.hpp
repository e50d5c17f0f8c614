// The accept loop of one io thread's listener, and what it does when descriptors run out.
//
// Each accepted connection is started as a session (session.hpp) on the same thread. When
// accept fails for lack of descriptors, the worker's spare descriptor makes room to accept
// one waiting client, which gets the 503 envelope at once (a TLS listener's is closed
// without it) instead of waiting in the backlog; counted in connections_rejected. Other
// accept failures are logged and retried after a short pause. The loop ends when its
// acceptor closes (stop).
#pragma once

#include <boost/asio/awaitable.hpp>

#include "proxy/server_worker.hpp"

namespace sproxy::proxy::detail {

// Accepts on the worker's TCP acceptor; `plain`: the listener speaks plain HTTP.
boost::asio::awaitable<void> accept_tcp_connections(ServerWorker* w, bool plain);
// Accepts on the worker's Unix socket acceptor (plain HTTP).
boost::asio::awaitable<void> accept_unix_connections(ServerWorker* w);

}  // namespace sproxy::proxy::detail
