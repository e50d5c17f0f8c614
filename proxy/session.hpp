// One connection of the listener, whatever its stream (TCP, TLS over TCP, Unix socket):
// a coroutine on its acceptor's thread that reads a request, answers it through the
// RequestHandler and writes the answer, until the connection ends.
//
// Keep-alive; a deadline for a whole request, an idle deadline between requests and a
// write deadline; a TLS handshake under the read deadline (a failed one closes that
// connection only, counted in tls_handshake_failures; a verified client certificate
// reaches the handler in the ConnectionContext of every request). Final answers, then
// close: 431 / 413 envelopes for a head or body over its limit (the head limit is exact
// however the head is split across reads), 400 6003 for a request that is not valid
// HTTP/1.1, 503 beyond max_connections (counted in connections_rejected). A request whose
// body is not all in the buffer yet is first put to RequestHandler::refuse_before_body; a
// refusal is answered without reading the body. Otherwise its body's bytes
// (Content-Length, or max_body_bytes when chunked) are taken from the process-wide
// max_body_bytes_in_flight until it is answered; one that does not fit is answered 503
// (Retry-After: 1). On stop, a connection not processing a request closes at once.
// An escaped exception is logged and counted and closes that connection only.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include "proxy/server_worker.hpp"

namespace sproxy::proxy::detail {

// A TCP connection: TLS when the worker's context slot holds a TLS context.
void spawn_tcp_connection(ServerWorker* w, boost::asio::ip::tcp::socket socket);
void spawn_unix_connection(ServerWorker* w, boost::asio::local::stream_protocol::socket socket);

}  // namespace sproxy::proxy::detail
