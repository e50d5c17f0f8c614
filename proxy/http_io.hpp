// Cheap HTTP/1.1 message I/O for the connection loop, over any Asio stream (TCP, TLS,
// Unix sockets): the same bytes as Beast's http::async_read_header / http::async_write,
// without their per-message machinery.
//
// - `parse_buffered_header` feeds what the connection's buffer already holds to a Beast
//   parser. A client's request normally arrives in one read, so the header is usually
//   complete here and no composed read operation (and no extra trip through the
//   executor) is needed; otherwise the caller continues with http::async_read_header on
//   the same parser and buffer, which picks up where this left off.
// - `parse_simple_get` parses the common request in place: a GET whose whole head is in
//   the buffer, in the plainest HTTP/1.x syntax, with no body. It accepts a strict subset
//   of what Beast's parser accepts and builds the same message; anything else (another
//   method, a body, a partial or oversized head, an unusual byte, a Connection list it
//   does not recognise) is left untouched for Beast's parser, so every verdict on an
//   odd or bad request stays Beast's.
// - `serialize_response_head` writes a response's start line and fields exactly as
//   Beast's serializer does ("HTTP/1.1 200 OK\r\n", each field "Name: value\r\n" in
//   insertion order, then "\r\n"). `write_now` hands a head and a body to a
//   non-blocking socket in one gather write, without an asynchronous operation (the
//   socket usually takes a whole answer at once); `async_write_rest` sends whatever
//   part of them the socket did not take. The caller prepares the message first
//   (keep_alive, prepare_payload), as it would for http::async_write.
//
// Pure functions and initiating functions; no state. The head buffer passed in is
// reused across responses of a connection, so after the first answer writing costs no
// allocation. It must stay untouched until the write completes; so must the response.
#pragma once

#include <algorithm>
#include <array>
#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <cstdint>
#include <string>
#include <utility>

#include "proxy/http_message.hpp"

namespace sproxy::proxy {

// Parses the bytes in `buffer` (consuming what the parser used). Returns true when the
// header is complete; false with `ec` clear when more bytes are needed; false with `ec`
// set when the bytes are refused (e.g. http::error::header_limit, bad_method).
template <class Parser>
bool parse_buffered_header(Parser& parser, boost::beast::flat_buffer& buffer,
                           boost::beast::error_code& ec) {
  ec = {};
  if (buffer.size() == 0) return false;
  const std::size_t used = parser.put(buffer.data(), ec);
  buffer.consume(used);
  if (ec == boost::beast::http::error::need_more) {
    ec = {};
    return false;
  }
  return !ec && parser.is_header_done();
}

// The same for a head that may arrive over several reads, held to `limit` bytes in all
// (request line, fields and the empty line). Beast's own header_limit counts only the
// bytes a put has not consumed yet, and a put consumes every whole line it parsed, so a
// head fed in parts could exceed it by the size of the earlier parts (and within one put
// the request line is not counted); here the parser's limit is narrowed to what is left
// of `limit` before each put, and the bytes consumed are checked against `limit`.
// `head_bytes` carries the head's bytes consumed by earlier calls (0 for a new request).
template <class Parser>
bool parse_buffered_header(Parser& parser, boost::beast::flat_buffer& buffer, std::size_t limit,
                           std::size_t& head_bytes, boost::beast::error_code& ec) {
  ec = {};
  if (buffer.size() == 0) return false;
  const std::size_t left = limit > head_bytes ? limit - head_bytes : 0;
  parser.header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(left, UINT32_MAX)));
  const std::size_t before = buffer.size();
  const bool done = parse_buffered_header(parser, buffer, ec);
  head_bytes += before - buffer.size();
  // Within one put Beast does not count the request line either.
  if (!ec && (done ? head_bytes > limit : head_bytes >= limit)) {
    ec = boost::beast::http::error::header_limit;
    return false;
  }
  return done;
}

// When `buffer` starts with a whole plain GET head of at most `header_limit` bytes,
// consumes it, fills `out` (method, target, version, fields in order) and returns true.
// Otherwise returns false and leaves both untouched.
bool parse_simple_get(boost::beast::flat_buffer& buffer, std::size_t header_limit,
                      HttpRequest& out);

// The start of a status line up to its reason: "HTTP/1.1 200 ".
inline std::array<char, 13> status_line_start(unsigned version, unsigned code) {
  return {'H',
          'T',
          'T',
          'P',
          '/',
          static_cast<char>('0' + version / 10),
          '.',
          static_cast<char>('0' + version % 10),
          ' ',
          static_cast<char>('0' + code / 100),
          static_cast<char>('0' + (code / 10) % 10),
          static_cast<char>('0' + code % 10),
          ' '};
}

// Replaces `out` with the wire bytes of `response`'s start line and fields.
void serialize_response_head(const HttpResponse& response, std::string& out);

// The body's bytes (empty when there is none).
inline boost::asio::const_buffer response_body_buffer(const HttpResponse& response) {
  const auto& body = response.body();
  return boost::asio::const_buffer(body.data(), body.size());
}

// Writes as much of `head` then `body` as `socket` (in non-blocking mode) takes now, in
// one system call. Returns the bytes written; a full socket buffer is not an error
// (0 bytes, `ec` clear).
template <class Socket>
std::size_t write_now(Socket& socket, const std::string& head, boost::asio::const_buffer body,
                      boost::beast::error_code& ec) {
  const std::array<boost::asio::const_buffer, 2> buffers{boost::asio::buffer(head), body};
  const std::size_t n = socket.write_some(buffers, ec);
  if (ec == boost::asio::error::would_block || ec == boost::asio::error::try_again) {
    ec = {};
    return 0;
  }
  return ec ? 0 : n;
}

// Writes the bytes of `head` then `body` after the first `written`. Both must stay
// untouched until it completes. Completion: void(error_code, std::size_t).
template <class AsyncWriteStream, class CompletionToken>
auto async_write_rest(AsyncWriteStream& stream, const std::string& head,
                      boost::asio::const_buffer body, std::size_t written,
                      CompletionToken&& token) {
  boost::beast::buffers_suffix<std::array<boost::asio::const_buffer, 2>> rest(
      std::array<boost::asio::const_buffer, 2>{boost::asio::buffer(head), body});
  rest.consume(written);
  return boost::asio::async_write(stream, rest, std::forward<CompletionToken>(token));
}

}  // namespace sproxy::proxy
