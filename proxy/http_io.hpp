// Cheap HTTP/1.1 message I/O for the connection loop, over any Asio stream (TCP, TLS,
// Unix sockets): the same bytes as Beast's http::async_read_header / http::async_write,
// without their per-message machinery.
//
// - `parse_buffered_header` feeds what the connection's buffer already holds to a Beast
//   parser. A client's request normally arrives in one read, so the header is usually
//   complete here and no composed read operation (and no extra trip through the
//   executor) is needed; otherwise the caller continues with http::async_read_header on
//   the same parser and buffer, which picks up where this left off.
// - `serialize_response_head` writes a response's start line and fields exactly as
//   Beast's serializer does ("HTTP/1.1 200 OK\r\n", each field "Name: value\r\n" in
//   insertion order, then "\r\n"); `async_write_response` sends that head and the body
//   in one gather write. The caller prepares the message first (keep_alive,
//   prepare_payload), as it would for http::async_write.
//
// Pure functions and one initiating function; no state. The head buffer passed in is
// reused across responses of a connection, so after the first answer writing costs no
// allocation. It must stay untouched until the write completes; so must the response.
#pragma once

#include <array>
#include <boost/asio/buffer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
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

// Replaces `out` with the wire bytes of `response`'s start line and fields.
void serialize_response_head(const HttpResponse& response, std::string& out);

// The body's bytes (empty when there is none).
inline boost::asio::const_buffer response_body_buffer(const HttpResponse& response) {
  const auto& body = response.body();
  return boost::asio::const_buffer(body.data(), body.size());
}

// Writes `response` (already prepared) to `stream`: head serialized into `head`, then
// head and body in one gather write. Completion: void(error_code, std::size_t).
template <class AsyncWriteStream, class CompletionToken>
auto async_write_response(AsyncWriteStream& stream, const HttpResponse& response,
                          std::string& head, CompletionToken&& token) {
  serialize_response_head(response, head);
  const std::array<boost::asio::const_buffer, 2> buffers{boost::asio::buffer(head),
                                                         response_body_buffer(response)};
  return boost::asio::async_write(stream, buffers, std::forward<CompletionToken>(token));
}

}  // namespace sproxy::proxy
