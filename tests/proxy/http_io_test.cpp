#include "proxy/http_io.hpp"

#include <gtest/gtest.h>

#include <boost/asio/buffer.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cache/snapshot.hpp"
#include "proxy/answer.hpp"
#include "proxy/reply.hpp"
#include "tests/support/simple_get_compare.hpp"

namespace sproxy::proxy {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace asio = boost::asio;

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
  HttpResponse response = make_json_response(429, std::make_shared<const std::string>("{}"), 11);
  response.reason("Slow Down");
  response.insert("Ratelimit", "\"default\";r=0;t=30");
  response.insert(http::field::retry_after, "30");
  response = prepared(std::move(response), true);
  const std::string bytes = our_bytes(response);
  EXPECT_EQ(bytes, beast_bytes(response));
  EXPECT_EQ(bytes.rfind("HTTP/1.1 429 Slow Down\r\n", 0), 0u) << bytes;
}

TEST(SerializeAnswerHead, WritesWhatTheMessagePathWritesForEveryShapeOfAnswer) {
  const auto body = std::make_shared<const std::string>(R"({"success":true,"result":{}})");
  struct Case {
    cache::Answer answer;
    unsigned version;
    std::string request_id;
  };
  std::vector<Case> cases;
  cache::Answer hit;
  hit.status = 200;
  hit.body = body;
  hit.outcome = cache::Outcome::hit;
  hit.age = 61'500'000;
  cases.push_back({hit, 11, ""});
  cases.push_back({hit, 10, ""});
  cases.push_back({hit, 11, "req-7f3a"});
  cache::Answer stale = hit;
  stale.outcome = cache::Outcome::stale;
  stale.age = -5;  // a clock step back never makes a negative Age
  stale.retry_after = "30";
  stale.ratelimit = "\"default\";r=0;t=30";
  stale.ratelimit_policy = "\"default\";q=1200;w=300";
  cases.push_back({stale, 11, "abc"});
  cache::Answer missing = hit;
  missing.status = 404;
  missing.body = cache::secret_not_found_body();
  missing.age = 0;
  cases.push_back({missing, 11, ""});
  cases.push_back({missing, 10, "x"});
  cache::Answer limited = hit;
  limited.status = 429;
  cases.push_back({limited, 11, ""});

  std::string head = "left over from an earlier answer";
  for (const Case& c : cases) {
    ASSERT_TRUE(can_serialize_directly(c.answer, c.version));
    for (const bool keep_alive : {true, false}) {
      // The reply of a read the cache answered, written both ways.
      Reply reply;
      reply.cached = c.answer;
      reply.version = c.version;
      reply.request_id = c.request_id;
      const boost::asio::const_buffer body = reply.serialize(keep_alive, head);
      const HttpResponse response = prepared(reply.take_response(), keep_alive);
      EXPECT_EQ(head + std::string(static_cast<const char*>(body.data()), body.size()),
                beast_bytes(response))
          << c.answer.status << " HTTP/" << c.version << " keep-alive " << keep_alive;
    }
  }
}

TEST(SerializeAnswerHead, LeavesAnswersWithoutABodyOrWithABodilessStatusToTheMessagePath) {
  cache::Answer answer;
  answer.status = 200;
  EXPECT_FALSE(can_serialize_directly(answer, 11));  // no body
  answer.body = std::make_shared<const std::string>("{}");
  EXPECT_TRUE(can_serialize_directly(answer, 11));
  EXPECT_FALSE(can_serialize_directly(answer, 20));
  EXPECT_FALSE(can_serialize_directly(answer, 9));
  for (const unsigned status : {100u, 204u, 304u}) {
    answer.status = status;
    EXPECT_FALSE(can_serialize_directly(answer, 11)) << status;
  }
}

// ---------------------------------------------------------------------------------------
// parse_simple_get against Beast's parser

using test::compare_simple_get;
using test::parse_with_simple_get;
using test::ParsedRequest;
constexpr std::size_t kHeaderLimit = test::kCompareHeaderLimit;

ParsedRequest ours(const std::string& wire) {
  ParsedRequest p = parse_with_simple_get(wire);
  if (!p.ok) {
    EXPECT_EQ(p.used, 0u) << "a refusal consumes nothing";
    EXPECT_FALSE(p.touched) << "a refusal leaves the message alone";
  }
  return p;
}

const std::vector<std::string>& common_requests() {
  static const std::vector<std::string> requests = {
      // curl, wrk, Node's fetch (undici), Node's http module with keep-alive, HTTP/1.0.
      "GET /client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/stores HTTP/1.1\r\n"
      "Host: 127.0.0.1:8787\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
      "Authorization: Bearer t-reader\r\n\r\n",
      "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8787\r\n\r\n",
      "GET /client/v4/accounts/a/secrets_store/stores?page=2&per_page=5 HTTP/1.1\r\n"
      "host: 127.0.0.1:8787\r\nconnection: keep-alive\r\nauthorization: Bearer abc.DEF-123_x\r\n"
      "accept: */*\r\naccept-language: *\r\nsec-fetch-mode: cors\r\n"
      "user-agent: node\r\naccept-encoding: gzip, deflate\r\n\r\n",
      "GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Auth-Email: a@example.com\r\n"
      "X-Auth-Key:  k-1 \r\nCache-Control: no-cache\r\nX-Request-Id: r-1\r\n\r\n",
      "GET /x HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
      "GET /x HTTP/1.0\r\n\r\n",
      "GET /x HTTP/1.1\r\nX-Empty:\r\nX-Tabs:\tv\t\r\nX-Many: a, b ,c\r\n\r\n",
  };
  return requests;
}

TEST(ParseSimpleGet, ParsesCommonClientsRequestsExactlyAsBeastDoes) {
  for (const auto& wire : common_requests()) {
    ASSERT_TRUE(ours(wire).ok) << wire;
    EXPECT_EQ(compare_simple_get(wire), "") << wire;
  }
}

TEST(ParseSimpleGet, LeavesAnythingButAPlainBodilessGetToBeast) {
  const std::vector<std::string> others = {
      "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
      "GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
      "GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      "GET /x HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
      "GET /x HTTP/1.1\r\nConnection: keep alive\r\n\r\n",
      "GET /x HTTP/1.1\r\nHost: h\r\n",                 // partial
      "GET /x HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",  // obs-fold
      "GET /x HTTP/1.1\r\nHost : h\r\n\r\n",            // space before the colon
      "GET /x HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n",   // obs-text
      "GET /x HTTP/1.1\nHost: h\n\n",                   // bare LF
      "GET /x HTTP/2.0\r\n\r\n",
      "GET  /x HTTP/1.1\r\n\r\n",
      "GET x HTTP/1.1\r\n\r\n",
      "get /x HTTP/1.1\r\n\r\n",
      "GET /x?a=b c HTTP/1.1\r\n\r\n",
  };
  for (const auto& wire : others) EXPECT_FALSE(ours(wire).ok) << wire;
  std::string huge = "GET /x HTTP/1.1\r\nX-Big: " + std::string(kHeaderLimit, 'a') + "\r\n\r\n";
  EXPECT_FALSE(ours(huge).ok);
}

TEST(ParseSimpleGet, ConsumesOnlyTheHeadOfPipelinedRequests) {
  const std::string first = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string wire = first + "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
  const ParsedRequest fast = ours(wire);
  ASSERT_TRUE(fast.ok);
  EXPECT_EQ(fast.used, first.size());
  EXPECT_EQ(compare_simple_get(wire), "");
  EXPECT_EQ(fast.target, "/a");
}

// Random edits of the common requests (seeded, bounded): whatever this parser accepts,
// Beast's accepts too and reads the same message from it.
TEST(ParseSimpleGet, AcceptsOnlyWhatBeastAcceptsAndReadsItTheSameWay) {
  std::mt19937 rng(20261126);
  std::string alphabet = " \t\r\n:,;/?=aZ09-_.~\x7f\x80\xff\"";
  alphabet += '\0';
  std::size_t accepted = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string wire = common_requests()[rng() % common_requests().size()];
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !wire.empty(); ++e) {
      const std::size_t at = rng() % wire.size();
      const char c = alphabet[rng() % alphabet.size()];
      switch (rng() % 3) {
        case 0:
          wire[at] = c;
          break;
        case 1:
          wire.insert(wire.begin() + static_cast<std::ptrdiff_t>(at), c);
          break;
        default:
          wire.erase(at, 1);
          break;
      }
    }
    if (!ours(wire).ok) continue;
    ++accepted;
    ASSERT_EQ(compare_simple_get(wire), "") << wire;
  }
  // The edits leave many requests valid: the comparison above really ran.
  EXPECT_GT(accepted, 1000u);
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

// A request head of exactly `size` bytes: request line, padded field, empty line.
std::string head_of_size(std::size_t size) {
  const std::string start = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ";
  const std::string end = "\r\n\r\n";
  return start + std::string(size - start.size() - end.size(), 'p') + end;
}

// Feeds `wire` to a fresh parser in two parts split at `split`, as two reads would.
beast::error_code parse_in_two_reads(const std::string& wire, std::size_t split, std::size_t limit,
                                     bool* done) {
  http::request_parser<http::string_body> parser;
  beast::flat_buffer buffer;
  std::size_t head_bytes = 0;
  beast::error_code ec;
  const auto append = [&](std::string_view part) {
    buffer.commit(boost::asio::buffer_copy(buffer.prepare(part.size()),
                                           boost::asio::buffer(part.data(), part.size())));
  };
  append(std::string_view(wire).substr(0, split));
  *done = parse_buffered_header(parser, buffer, limit, head_bytes, ec);
  if (*done || ec) return ec;
  append(std::string_view(wire).substr(split));
  *done = parse_buffered_header(parser, buffer, limit, head_bytes, ec);
  return ec;
}

TEST(ParseBufferedHeader, HoldsAHeadToItsLimitExactlyHoweverItIsSplitAcrossReads) {
  constexpr std::size_t kLimit = 512;
  const std::string at_limit = head_of_size(kLimit);
  const std::string over_limit = head_of_size(kLimit + 1);
  for (std::size_t split = 1; split < at_limit.size(); ++split) {
    bool done = false;
    EXPECT_FALSE(parse_in_two_reads(at_limit, split, kLimit, &done)) << split;
    EXPECT_TRUE(done) << split;
  }
  for (std::size_t split = 1; split < over_limit.size(); ++split) {
    bool done = false;
    EXPECT_EQ(parse_in_two_reads(over_limit, split, kLimit, &done), http::error::header_limit)
        << split;
    EXPECT_FALSE(done) << split;
  }
}

TEST(ParseSimpleGet, ParsesAHeadOfExactlyTheLimitAndLeavesALongerOneToBeast) {
  constexpr std::size_t kLimit = 512;
  for (const std::size_t size : {kLimit, kLimit + 1}) {
    const std::string wire = head_of_size(size);
    beast::flat_buffer buffer;
    buffer.commit(boost::asio::buffer_copy(buffer.prepare(wire.size()), boost::asio::buffer(wire)));
    HttpRequest request;
    EXPECT_EQ(parse_simple_get(buffer, kLimit, request), size == kLimit) << size;
  }
}

}  // namespace
}  // namespace sproxy::proxy
