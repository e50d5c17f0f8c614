// StreamTestClient: a small synchronous HTTP/1.1 client for tests over a TLS or Unix
// domain socket stream (HttpTestClient covers plain TCP), and `tls_client_context` for
// the TLS side: trust one CA, check the server name, optionally present a client
// certificate or offer only old protocol versions.
//
// Every operation has a deadline (10 s): an async Beast operation on a private
// io_context with the stream's timeout, run to completion on the calling thread.
// `connect` and `try_request` return the transport error; `request` throws it as
// std::runtime_error. Movable, not thread-safe. Header-only; link OpenSSL::SSL.
#pragma once

#include <openssl/ssl.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "tests/support/http_test_client.hpp"
#include "tests/support/test_certs.hpp"

namespace sproxy::test {

using TlsStream = boost::beast::ssl_stream<boost::beast::tcp_stream>;
using UnixStream = boost::beast::basic_stream<boost::asio::local::stream_protocol>;

template <class Stream>
class StreamTestClient {
  using error_code = boost::beast::error_code;
  static constexpr bool kTls = std::is_same_v<Stream, TlsStream>;

 public:
  StreamTestClient() requires(!kTls) : stream_(*ioc_) {}
  explicit StreamTestClient(boost::asio::ssl::context ctx) requires kTls : ctx_(std::move(ctx)),
                                                                           stream_(*ioc_, *ctx_) {}

  template <class Endpoint>
  error_code connect(const Endpoint& endpoint) {
    auto ec = run(
        [&](auto done) { boost::beast::get_lowest_layer(stream_).async_connect(endpoint, done); });
    if constexpr (kTls) {
      if (!ec) {
        SSL_set_tlsext_host_name(stream_.native_handle(), "localhost");
        ec = run([&](auto done) {
          stream_.async_handshake(boost::asio::ssl::stream_base::client, done);
        });
      }
    }
    return ec;
  }

  // The response, or the transport error that prevented it.
  error_code try_request(boost::beast::http::verb method, const std::string& target,
                         std::string body, const Headers& headers, TestResponse& out) {
    boost::beast::http::request<boost::beast::http::string_body> req{method, target, 11};
    req.set(boost::beast::http::field::host, "localhost");
    for (const auto& [name, value] : headers) req.insert(name, value);
    if (!body.empty()) req.set(boost::beast::http::field::content_type, "application/json");
    req.body() = std::move(body);
    req.prepare_payload();
    auto ec = run([&](auto done) { boost::beast::http::async_write(stream_, req, done); });
    if (ec) return ec;
    boost::beast::http::response_parser<boost::beast::http::string_body> parser;
    ec = run([&](auto done) { boost::beast::http::async_read(stream_, buffer_, parser, done); });
    if (!ec) out = parser.release();
    return ec;
  }

  TestResponse request(boost::beast::http::verb method, const std::string& target,
                       std::string body = {}, const Headers& headers = {}) {
    TestResponse res;
    const auto ec = try_request(method, target, std::move(body), headers, res);
    if (ec) throw std::runtime_error("request failed: " + ec.message());
    return res;
  }
  TestResponse get(const std::string& target, const Headers& headers = {}) {
    return request(boost::beast::http::verb::get, target, {}, headers);
  }
  TestResponse post(const std::string& target, std::string body, const Headers& headers = {}) {
    return request(boost::beast::http::verb::post, target, std::move(body), headers);
  }

 private:
  template <class Start>
  error_code run(Start start) {
    error_code result;
    bool done = false;
    boost::beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(10));
    start([&](error_code ec, auto&&...) {
      result = ec;
      done = true;
    });
    ioc_->restart();
    while (!done && ioc_->run_one() > 0) {
    }
    return result;
  }

  // On the heap: a connection moves, its stream's executor stays valid.
  std::unique_ptr<boost::asio::io_context> ioc_ = std::make_unique<boost::asio::io_context>(1);
  std::optional<boost::asio::ssl::context> ctx_;
  Stream stream_;
  boost::beast::flat_buffer buffer_;
};

using TlsTestClient = StreamTestClient<TlsStream>;
using UnixTestClient = StreamTestClient<UnixStream>;

// A client context trusting `ca_pem` and checking that the server is "localhost"; with
// `cert`, it presents that client certificate; with `max_version`, it offers nothing newer.
inline boost::asio::ssl::context tls_client_context(const std::string& ca_pem,
                                                    const IssuedCert* cert = nullptr,
                                                    int max_version = 0) {
  boost::asio::ssl::context ctx(boost::asio::ssl::context::tls_client);
  ctx.add_certificate_authority(boost::asio::buffer(ca_pem));
  ctx.set_verify_mode(boost::asio::ssl::verify_peer);
  ctx.set_verify_callback(boost::asio::ssl::host_name_verification("localhost"));
  if (cert != nullptr) {
    ctx.use_certificate_chain(boost::asio::buffer(cert->cert_pem));
    ctx.use_private_key(boost::asio::buffer(cert->key_pem), boost::asio::ssl::context::pem);
  }
  if (max_version != 0) {
    // Old protocols are off at OpenSSL's default security level; a client that offers
    // them on purpose lowers it.
    SSL_CTX_set_security_level(ctx.native_handle(), 0);
    SSL_CTX_set_cipher_list(ctx.native_handle(), "DEFAULT:@SECLEVEL=0");
    SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_VERSION);
    SSL_CTX_set_max_proto_version(ctx.native_handle(), max_version);
  }
  return ctx;
}

}  // namespace sproxy::test
