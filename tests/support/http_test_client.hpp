// A small synchronous HTTP/1.1 client for tests: one TCP connection, requests written
// and responses read in order, so keep-alive and connection-level behaviour are visible.
//
// Every operation has a deadline (default 10 s): internally each one is an async Beast
// operation on a private io_context with a tcp_stream timeout, run to completion on the
// calling thread. Transport failures throw std::runtime_error (a test failure with the
// reason); `peer_closed` is the one query that expects the connection to end.
// Not thread-safe: one client per test thread. Header-only.
#pragma once

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <chrono>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sproxy::test {

using TestResponse = boost::beast::http::response<boost::beast::http::string_body>;
using Headers = std::vector<std::pair<std::string, std::string>>;

// The response body parsed as JSON (a test failure when it is not JSON).
inline nlohmann::json body_json(const TestResponse& res) {
  return nlohmann::json::parse(res.body());
}

class HttpTestClient {
 public:
  explicit HttpTestClient(boost::asio::ip::tcp::endpoint endpoint,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10))
      : timeout_(timeout) {
    boost::beast::error_code ec;
    bool done = false;
    stream_.expires_after(timeout_);
    stream_.async_connect(endpoint, [&](boost::beast::error_code e) {
      ec = e;
      done = true;
    });
    run_until(done);
    if (ec) throw std::runtime_error("connect failed: " + ec.message());
  }

  HttpTestClient(const HttpTestClient&) = delete;
  HttpTestClient& operator=(const HttpTestClient&) = delete;

  // Sends one request and reads its response on this connection.
  TestResponse request(boost::beast::http::verb method, std::string target, std::string body = {},
                       const Headers& headers = {}) {
    send(method, std::move(target), std::move(body), headers);
    return read_response();
  }

  TestResponse get(std::string target, const Headers& headers = {}) {
    return request(boost::beast::http::verb::get, std::move(target), {}, headers);
  }
  TestResponse post(std::string target, std::string body, const Headers& headers = {}) {
    return request(boost::beast::http::verb::post, std::move(target), std::move(body), headers);
  }
  TestResponse patch(std::string target, std::string body, const Headers& headers = {}) {
    return request(boost::beast::http::verb::patch, std::move(target), std::move(body), headers);
  }
  TestResponse del(std::string target, const Headers& headers = {}, std::string body = {}) {
    return request(boost::beast::http::verb::delete_, std::move(target), std::move(body), headers);
  }

  // Writes a request without waiting for the response.
  void send(boost::beast::http::verb method, std::string target, std::string body = {},
            const Headers& headers = {}) {
    namespace http = boost::beast::http;
    http::request<http::string_body> req{method, std::move(target), 11};
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::user_agent, "sproxy-test-client");
    for (const auto& [name, value] : headers) req.insert(name, value);
    if (!body.empty() && req.find(http::field::content_type) == req.end()) {
      req.set(http::field::content_type, "application/json");
    }
    req.body() = std::move(body);
    req.prepare_payload();
    boost::beast::error_code ec;
    bool done = false;
    stream_.expires_after(timeout_);
    http::async_write(stream_, req, [&](boost::beast::error_code e, std::size_t) {
      ec = e;
      done = true;
    });
    run_until(done);
    if (ec) throw std::runtime_error("write failed: " + ec.message());
  }

  // Writes bytes as they are (for malformed or oversized requests).
  void send_raw(std::string bytes) {
    boost::beast::error_code ec;
    bool done = false;
    stream_.expires_after(timeout_);
    boost::asio::async_write(stream_, boost::asio::buffer(bytes),
                             [&](boost::beast::error_code e, std::size_t) {
                               ec = e;
                               done = true;
                             });
    run_until(done);
    if (ec) throw std::runtime_error("raw write failed: " + ec.message());
  }

  TestResponse read_response() {
    namespace http = boost::beast::http;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    boost::beast::error_code ec;
    bool done = false;
    stream_.expires_after(timeout_);
    http::async_read(stream_, buffer_, parser, [&](boost::beast::error_code e, std::size_t) {
      ec = e;
      done = true;
    });
    run_until(done);
    if (ec) throw std::runtime_error("read failed: " + ec.message());
    return parser.release();
  }

  // True when the server closes the connection (EOF or reset) within the deadline with
  // no further bytes; false when bytes arrive or the deadline passes first.
  bool peer_closed(std::chrono::milliseconds within = std::chrono::seconds(10)) {
    if (buffer_.size() > 0) return false;
    char byte = 0;
    boost::beast::error_code ec;
    std::size_t n = 0;
    bool done = false;
    stream_.expires_after(within);
    stream_.async_read_some(boost::asio::buffer(&byte, 1),
                            [&](boost::beast::error_code e, std::size_t bytes) {
                              ec = e;
                              n = bytes;
                              done = true;
                            });
    run_until(done);
    if (n > 0) return false;
    return ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset;
  }

  unsigned short local_port() const { return stream_.socket().local_endpoint().port(); }

 private:
  void run_until(const bool& done) {
    ioc_.restart();
    while (!done && ioc_.run_one() > 0) {
    }
  }

  std::chrono::milliseconds timeout_;
  boost::asio::io_context ioc_{1};
  boost::beast::tcp_stream stream_{ioc_};
  boost::beast::flat_buffer buffer_;
};

}  // namespace sproxy::test
