// The differential check of proxy::parse_simple_get (the in-place plain-GET parser)
// against Beast's request parser, shared by the unit tests (tests/proxy/http_io_test.cpp)
// and the fuzz target (tests/fuzz/simple_get_fuzz.cpp):
// - parse_with_simple_get / parse_with_beast read one wire request each way and describe
//   what came out (method, target, version, fields in order, keep-alive, bytes used);
// - simple_get_difference names the first way the in-place parser's verdict is not
//   Beast's: a refusal that still consumed bytes or touched the message, an acceptance
//   Beast refuses, or a message read differently. Empty when they agree.
// Header-only, no GoogleTest, so that a fuzz target can abort on a difference.
#pragma once

#include <boost/asio/buffer.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proxy/http_io.hpp"
#include "proxy/http_message.hpp"

namespace sproxy::test {

struct ParsedRequest {
  bool ok = false;
  std::size_t used = 0;  // bytes consumed (also on a refusal, where it must be 0)
  bool touched = false;  // a refusal changed the message passed in
  std::string method;
  std::string target;
  unsigned version = 0;
  std::vector<std::pair<std::string, std::string>> fields;
  bool keep_alive = false;
};

inline ParsedRequest describe_request(const proxy::HttpRequest& request, std::size_t used) {
  ParsedRequest p;
  p.ok = true;
  p.used = used;
  p.method = std::string(request.method_string());
  p.target = std::string(request.target());
  p.version = request.version();
  for (const auto& f : request.base()) {
    p.fields.emplace_back(std::string(f.name_string()), std::string(f.value()));
  }
  p.keep_alive = request.keep_alive();
  return p;
}

inline constexpr std::size_t kCompareHeaderLimit = 16 * 1024;

inline ParsedRequest parse_with_simple_get(std::string_view wire,
                                           std::size_t header_limit = kCompareHeaderLimit) {
  boost::beast::flat_buffer buffer;
  buffer.commit(boost::asio::buffer_copy(buffer.prepare(wire.size()),
                                         boost::asio::buffer(wire.data(), wire.size())));
  // A marker the parser must leave alone when it refuses.
  proxy::HttpRequest request;
  request.target("/untouched");
  if (!proxy::parse_simple_get(buffer, header_limit, request)) {
    ParsedRequest refused;
    refused.used = wire.size() - buffer.size();
    refused.touched =
        request.target() != "/untouched" || request.base().begin() != request.base().end();
    return refused;
  }
  return describe_request(request, wire.size() - buffer.size());
}

inline ParsedRequest parse_with_beast(std::string_view wire,
                                      std::size_t header_limit = kCompareHeaderLimit) {
  boost::beast::http::request_parser<boost::beast::http::string_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(header_limit));
  parser.eager(true);
  boost::beast::error_code ec;
  const std::size_t used = parser.put(boost::asio::buffer(wire.data(), wire.size()), ec);
  if (ec || !parser.is_done()) return {};
  return describe_request(parser.get(), used);
}

// The first difference between the in-place parser's reading of a request (`fast`) and
// Beast's (`beast`), or "" when the in-place verdict stands (a clean refusal, or the
// same message Beast reads).
inline std::string simple_get_difference(const ParsedRequest& fast, const ParsedRequest& beast) {
  if (!fast.ok) {
    if (fast.used != 0) return "a refusal consumed " + std::to_string(fast.used) + " bytes";
    if (fast.touched) return "a refusal changed the message";
    return "";
  }
  if (!beast.ok) return "accepted what Beast refuses";
  if (fast.used != beast.used) {
    return "used " + std::to_string(fast.used) + " bytes, Beast " + std::to_string(beast.used);
  }
  if (fast.method != beast.method) return "method " + fast.method + ", Beast " + beast.method;
  if (fast.target != beast.target) return "target " + fast.target + ", Beast " + beast.target;
  if (fast.version != beast.version) {
    return "version " + std::to_string(fast.version) + ", Beast " + std::to_string(beast.version);
  }
  if (fast.fields.size() != beast.fields.size()) {
    return std::to_string(fast.fields.size()) + " fields, Beast " +
           std::to_string(beast.fields.size());
  }
  for (std::size_t i = 0; i < fast.fields.size(); ++i) {
    if (fast.fields[i] != beast.fields[i]) {
      return "field " + std::to_string(i) + " '" + fast.fields[i].first + ": " +
             fast.fields[i].second + "', Beast '" + beast.fields[i].first + ": " +
             beast.fields[i].second + "'";
    }
  }
  if (fast.keep_alive != beast.keep_alive) return "keep-alive differs from Beast's";
  return "";
}

// Both parsers over `wire`: the difference, "" when they agree.
inline std::string compare_simple_get(std::string_view wire,
                                      std::size_t header_limit = kCompareHeaderLimit) {
  const ParsedRequest fast = parse_with_simple_get(wire, header_limit);
  if (!fast.ok) return simple_get_difference(fast, {});
  return simple_get_difference(fast, parse_with_beast(wire, header_limit));
}

}  // namespace sproxy::test
