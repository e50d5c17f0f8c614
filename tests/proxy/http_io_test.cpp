#include "proxy/http_io.hpp"

#include <gtest/gtest.h>

#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/write.hpp>
#include <memory>
#include <sstream>
#include <string>

#include "proxy/answer.hpp"

namespace sproxy::proxy {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;

// What Beast's own serializer writes for `response`.
std::string beast_bytes(const HttpResponse& response) {
  std::ostringstream out;
  out << response;
  return out.str();
}

std::string our_bytes(const HttpResponse& response) {
  std::string head = "left over from an earlier answer";
  serialize_response_head(response, head);
  const auto body = response_body_buffer(response);
  return head + std::string(static_cast<const char*>(body.data()), body.size());
}

HttpResponse prepared(HttpResponse response, bool keep_alive) {
  response.keep_alive(keep_alive);
  response.prepare_payload();
  return response;
}

TEST(SerializeResponseHead, WritesACachedReadAnswerLikeBeast) {
  cache::Answer answer;
  answer.status = 200;
  answer.body = std::make_shared<const std::string>(R"({"success":true,"result":{}})");
  answer.outcome = cache::Outcome::hit;
  answer.age = 61'000'000;
  const HttpResponse response = prepared(answer_response(answer, 11, true), true);
  const std::string bytes = our_bytes(response);
  EXPECT_EQ(bytes, beast_bytes(response));
  EXPECT_NE(bytes.find("\r\nX-Cache: HIT\r\nAge: 61\r\n"), std::string::npos) << bytes;
  EXPECT_EQ(bytes.rfind("HTTP/1.1 200 OK\r\nServer: secrets-proxy\r\n", 0), 0u) << bytes;
}

TEST(SerializeResponseHead, WritesErrorsClosesAndOldVersionsLikeBeast) {
  upstream::ApiError limited = upstream::errors::service_unavailable("too_many_connections");
  limited.retry_after_seconds = 7;
  for (const HttpResponse& response :
       {prepared(make_error_response(upstream::errors::secret_not_found(), 11), true),
        prepared(make_error_response(limited, 11), false),
        prepared(make_error_response(upstream::errors::method_not_allowed(), 10), true),
        prepared(make_json_response(200, cache::SharedBytes(), 10), false)}) {
    EXPECT_EQ(our_bytes(response), beast_bytes(response));
  }
}

TEST(SerializeResponseHead, KeepsACustomReasonAndEveryFieldInOrder) {
  HttpResponse response = make_json_response(
      429, std::make_shared<const std::string>("{}"), 11);
  response.reason("Slow Down");
  response.insert("Ratelimit", "\"default\";r=0;t=30");
  response.insert(http::field::retry_after, "30");
  response = prepared(std::move(response), true);
  const std::string bytes = our_bytes(response);
  EXPECT_EQ(bytes, beast_bytes(response));
  EXPECT_EQ(bytes.rfind("HTTP/1.1 429 Slow Down\r\n", 0), 0u) << bytes;
}

TEST(ParseBufferedHeader, ParsesAWholeHeaderWithoutReading) {
  beast::flat_buffer buffer;
  const std::string wire =
      "GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n"
      "GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
  buffer.commit(boost::asio::buffer_copy(buffer.prepare(wire.size()), boost::asio::buffer(wire)));
  http::request_parser<http::string_body> parser;
  beast::error_code ec;
  ASSERT_TRUE(parse_buffered_header(parser, buffer, ec));
  EXPECT_FALSE(ec);
  EXPECT_TRUE(parser.is_done());
  EXPECT_EQ(parser.get().target(), "/healthz");
  EXPECT_EQ(parser.get()[http::field::authorization], "Bearer t");
  // The pipelined request stays in the buffer for the next parser.
  EXPECT_EQ(beast::buffers_to_string(buffer.data()), "GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
}

TEST(ParseBufferedHeader, AsksForMoreWhenTheHeaderIsIncomplete) {
  beast::flat_buffer buffer;
  const std::string wire = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
  buffer.commit(boost::asio::buffer_copy(buffer.prepare(wire.size()), boost::asio::buffer(wire)));
  http::request_parser<http::string_body> parser;
  beast::error_code ec;
  EXPECT_FALSE(parse_buffered_header(parser, buffer, ec));
  EXPECT_FALSE(ec);
  EXPECT_FALSE(parser.is_header_done());
  // The rest arrives (as http::async_read_header would append it): the same parser and
  // buffer carry on.
  const std::string rest = "Authorization: Bearer t\r\n\r\n";
  buffer.commit(boost::asio::buffer_copy(buffer.prepare(rest.size()), boost::asio::buffer(rest)));
  ASSERT_TRUE(parse_buffered_header(parser, buffer, ec));
  EXPECT_EQ(parser.get().target(), "/healthz");
  EXPECT_EQ(parser.get()[http::field::authorization], "Bearer t");
  EXPECT_EQ(buffer.size(), 0u);

  beast::flat_buffer empty;
  http::request_parser<http::string_body> other;
  EXPECT_FALSE(parse_buffered_header(other, empty, ec));
  EXPECT_FALSE(ec);
}

TEST(ParseBufferedHeader, ReportsWhatTheParserRefuses) {
  const std::string too_long = "GET / HTTP/1.1\r\nX-Long: " + std::string(200, 'a') + "\r\n";
  beast::flat_buffer buffer;
  buffer.commit(
      boost::asio::buffer_copy(buffer.prepare(too_long.size()), boost::asio::buffer(too_long)));
  http::request_parser<http::string_body> parser;
  parser.header_limit(100);
  beast::error_code ec;
  EXPECT_FALSE(parse_buffered_header(parser, buffer, ec));
  EXPECT_EQ(ec, http::error::header_limit);

  const std::string garbage = "G@T / HTTP/1.1\r\n\r\n";
  beast::flat_buffer bad;
  bad.commit(boost::asio::buffer_copy(bad.prepare(garbage.size()), boost::asio::buffer(garbage)));
  http::request_parser<http::string_body> other;
  EXPECT_FALSE(parse_buffered_header(other, bad, ec));
  EXPECT_TRUE(ec);
}

TEST(ParseBufferedHeader, LeavesABodyToTheCaller) {
  const std::string wire = "POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345";
  beast::flat_buffer buffer;
  buffer.commit(boost::asio::buffer_copy(buffer.prepare(wire.size()), boost::asio::buffer(wire)));
  http::request_parser<http::string_body> parser;
  beast::error_code ec;
  ASSERT_TRUE(parse_buffered_header(parser, buffer, ec));
  EXPECT_TRUE(parser.is_header_done());
  EXPECT_FALSE(parser.is_done());
  EXPECT_EQ(beast::buffers_to_string(buffer.data()), "12345");
}

}  // namespace
}  // namespace sproxy::proxy
