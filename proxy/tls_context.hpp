// The TLS side of the listener: the server context made from the configured files, and
// the names of a client certificate the handshake verified.
//
// `make_tls_context` requires TLS 1.2 at least, forward-secret AEAD suites for TLS 1.2, and
// verifies client certificates against `tls.client_ca_file` as `tls.client_auth` says (an
// unverifiable one, or none in required mode, fails the handshake). It throws
// std::runtime_error with one line naming the file that did not load. Pure functions;
// thread-safe.
#pragma once

#include <openssl/ssl.h>

#include <boost/asio/ssl/context.hpp>
#include <memory>

#include "config/config.hpp"
#include "proxy/identity.hpp"

namespace sproxy::proxy {

std::shared_ptr<boost::asio::ssl::context> make_tls_context(const config::TlsListenConfig& tls);

// The names (CN=, DNS:, URI:) of the peer's certificate when the handshake verified one;
// null otherwise.
std::shared_ptr<const PeerCertificate> verified_peer_certificate(SSL* ssl);

}  // namespace sproxy::proxy
