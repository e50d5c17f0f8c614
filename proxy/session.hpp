// One connection of the listener, whatever its stream (TCP, TLS over TCP, Unix socket):
// a coroutine on its acceptor's thread that reads a request, answers it through the
// RequestHandler and writes the answer, until the connection ends (server.hpp has the
// limits, deadlines and shutdown rules it keeps). The spawn functions start one on the
// worker's io_context; an escaped exception is logged and counted and closes that
// connection only.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include "proxy/server_worker.hpp"

namespace sproxy::proxy::detail {

// A TCP connection: TLS when the worker's context slot holds a TLS context.
void spawn_tcp_connection(ServerWorker* w, boost::asio::ip::tcp::socket socket);
void spawn_unix_connection(ServerWorker* w, boost::asio::local::stream_protocol::socket socket);

}  // namespace sproxy::proxy::detail
