// Integration tests of what the server admits before a request reaches the handler: bad
// HTTP, the exact head limit, refusals decided on the head before a body is read, the
// budget of request bodies in flight, and refused connections being counted.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "proxy/server.hpp"
#include "tests/support/api_expect.hpp"
#include "tests/support/http_test_client.hpp"
#include "tests/support/server_harness.hpp"

namespace sproxy::proxy {
namespace {

namespace http = boost::beast::http;
namespace errors = upstream::errors;
using nlohmann::json;
using test::api_base;
using test::body_json;
using test::eventually;
using test::expect_error;
using test::HarnessOptions;
using test::HttpTestClient;
using test::kAccount;
using test::ServerHarness;
using test::TestResponse;
using ::testing::HasSubstr;
using namespace std::string_literals;

constexpr std::size_t kHeaderLimit = 4 * 1024;
// A client that waits this long for an answer the server must give without more bytes.
constexpr auto kPromptAnswer = std::chrono::seconds(5);

HarnessOptions options() {
  HarnessOptions o;
  o.listen.max_header_bytes = kHeaderLimit;
  o.listen.max_body_bytes = 16 * 1024;
  // Long enough that no test below passes by a read deadline.
  o.listen.read_timeout_ms = 60'000;
  o.clients = {test::token_client("admin", "t-admin", {"admin"}),
               test::token_client("reader", "t-reader", {"read"}, {"workers"})};
  o.admin_token = "purge-token";
  return o;
}

upstream::ApiError invalid_request() {
  return upstream::ApiError{400, {upstream::ApiMessage{6003, "Invalid request headers", {}}}, {}};
}

// The head of a POST that announces `length` body bytes, without the body.
std::string post_head(const std::string& target, std::size_t length,
                      const std::string& extra_fields = "") {
  return "POST " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
         extra_fields + "Content-Length: " + std::to_string(length) + "\r\n\r\n";
}

// ---------------------------------------------------------------------------------------
// Requests that are not valid HTTP/1.1

class MalformedRequest : public ::testing::TestWithParam<std::string> {};

TEST_P(MalformedRequest, IsAnsweredWithTheInvalidRequestEnvelopeThenClosed) {
  ServerHarness harness(options());
  HttpTestClient client(harness.endpoint(), kPromptAnswer);
  client.send_raw(GetParam());
  const TestResponse res = client.read_response();
  expect_error(res, invalid_request());
  EXPECT_FALSE(res.keep_alive());
  EXPECT_TRUE(client.peer_closed());
  EXPECT_EQ(harness.connect().get("/healthz").result_int(), 200);
}

INSTANTIATE_TEST_SUITE_P(Server, MalformedRequest,
                         ::testing::Values("GET /heal\0thz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"s,
                                           "GET /healthz HTTP/1.1\nHost: 127.0.0.1\n\n",
                                           "GET /healthz HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
                                           "NOT HTTP AT ALL\r\n\r\n",
                                           post_head("/healthz", 0).replace(0, 4, "P@ST")));

// ---------------------------------------------------------------------------------------
// The head limit

// A GET /healthz head of exactly `size` bytes.
std::string healthz_head_of_size(std::size_t size) {
  const std::string start = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ";
  const std::string end = "\r\n\r\n";
  return start + std::string(size - start.size() - end.size(), 'p') + end;
}

// Sends `wire` in parts of `part` bytes, pausing between them so that the server reads
// them one at a time.
void send_in_parts(HttpTestClient& client, const std::string& wire, std::size_t part) {
  for (std::size_t at = 0; at < wire.size(); at += part) {
    client.send_raw(wire.substr(at, part));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

TEST(ServerHeadLimit, PassesAHeadOfExactlyTheLimitSentInOneOrManyReads) {
  ServerHarness harness(options());
  HttpTestClient whole(harness.endpoint(), kPromptAnswer);
  whole.send_raw(healthz_head_of_size(kHeaderLimit));
  EXPECT_EQ(whole.read_response().result_int(), 200);

  HttpTestClient parts(harness.endpoint(), kPromptAnswer);
  send_in_parts(parts, healthz_head_of_size(kHeaderLimit), 1000);
  EXPECT_EQ(parts.read_response().result_int(), 200);
}

TEST(ServerHeadLimit, RefusesAHeadOneByteOverTheLimitHoweverItIsSplit) {
  ServerHarness harness(options());
  HttpTestClient whole(harness.endpoint(), kPromptAnswer);
  whole.send_raw(healthz_head_of_size(kHeaderLimit + 1));
  expect_error(whole.read_response(), errors::headers_too_large());
  EXPECT_TRUE(whole.peer_closed());

  for (const std::size_t part : {1000u, 2500u, 4000u}) {
    HttpTestClient parts(harness.endpoint(), kPromptAnswer);
    send_in_parts(parts, healthz_head_of_size(kHeaderLimit + 1), part);
    expect_error(parts.read_response(), errors::headers_too_large());
    EXPECT_TRUE(parts.peer_closed()) << part;
  }
}

// ---------------------------------------------------------------------------------------
// Refusals decided on the head, before the body

struct HeadRefusal {
  std::string name;
  std::string head;
  upstream::ApiError error;
};

void PrintTo(const HeadRefusal& refusal, std::ostream* os) { *os << refusal.name; }

class RefusalBeforeTheBody : public ::testing::TestWithParam<HeadRefusal> {};

TEST_P(RefusalBeforeTheBody, IsAnsweredWithoutWaitingForTheBodyThenClosed) {
  ServerHarness harness(options());
  HttpTestClient client(harness.endpoint(), kPromptAnswer);
  // Only the head: the body (within max_body_bytes) never comes.
  client.send_raw(GetParam().head);
  const TestResponse res = client.read_response();
  expect_error(res, GetParam().error);
  EXPECT_FALSE(res.keep_alive());
  EXPECT_TRUE(client.peer_closed());
}

INSTANTIATE_TEST_SUITE_P(
    Server, RefusalBeforeTheBody,
    ::testing::Values(
        HeadRefusal{"NoCredentials", post_head(api_base(kAccount) + "/stores", 10'000),
                    errors::missing_credentials()},
        HeadRefusal{
            "UnknownToken",
            post_head(api_base(kAccount) + "/stores", 10'000, "Authorization: Bearer nobody\r\n"),
            errors::authentication_error()},
        HeadRefusal{
            "ReaderWriting",
            post_head(api_base(kAccount) + "/stores", 10'000, "Authorization: Bearer t-reader\r\n"),
            errors::authentication_error()},
        HeadRefusal{"NoRoute", post_head("/client/v4/nowhere", 10'000), errors::no_route()},
        HeadRefusal{"AdminPurgeWithoutToken", post_head("/admin/purge", 10'000),
                    errors::missing_credentials()},
        HeadRefusal{"AdminPurgeByAReader",
                    post_head("/admin/purge", 10'000, "Authorization: Bearer t-reader\r\n"),
                    errors::authentication_error()}),
    [](const auto& info) { return info.param.name; });

TEST(ServerBodies, ReadsTheBodyOfAnAllowedCallerAfterItsHead) {
  ServerHarness harness(options());
  HttpTestClient client(harness.endpoint(), kPromptAnswer);
  const std::string body = json{{"name", "main"}}.dump();
  client.send_raw(
      post_head(api_base(kAccount) + "/stores", body.size(), "Authorization: Bearer t-admin\r\n"));
  client.send_raw(body);
  const TestResponse res = client.read_response();
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_TRUE(res.keep_alive());
  EXPECT_TRUE(eventually([&] { return harness.server().body_bytes_in_flight() == 0; }));
}

// ---------------------------------------------------------------------------------------
// The budget of request bodies in flight

TEST(ServerBodies, AnswersABodyBeyondTheBudgetWith503AndRetryAfterUntilBytesAreFree) {
  HarnessOptions o = options();
  o.listen.max_body_bytes_in_flight = 20'000;
  ServerHarness harness(o);
  const std::string target = api_base(kAccount) + "/stores";
  const std::string auth = "Authorization: Bearer t-admin\r\n";
  std::string body = json{{"name", "main"}}.dump();
  body.append(15'000 - body.size(), ' ');  // JSON allows trailing whitespace

  // The first request holds 15,000 bytes of the budget while its body trickles in.
  HttpTestClient first(harness.endpoint(), kPromptAnswer);
  first.send_raw(post_head(target, body.size(), auth) + body.substr(0, 100));
  ASSERT_TRUE(eventually([&] { return harness.server().body_bytes_in_flight() == 15'000; }));

  // A second one does not fit: 503 at once, without reading its body.
  HttpTestClient second(harness.endpoint(), kPromptAnswer);
  second.send_raw(post_head(target, body.size(), auth));
  const TestResponse refused = second.read_response();
  upstream::ApiError busy = errors::service_unavailable("request_bodies_in_flight");
  busy.retry_after_seconds = 1;
  expect_error(refused, busy);
  EXPECT_EQ(refused[http::field::retry_after], "1");
  EXPECT_TRUE(second.peer_closed());
  // A small one still fits beside the first (another account: one store per account).
  HttpTestClient small(harness.endpoint(), kPromptAnswer);
  const TestResponse small_res =
      small.post(api_base("fedcba9876543210fedcba9876543210") + "/stores",
                 json{{"name", "small"}}.dump(), test::bearer("t-admin"));
  EXPECT_EQ(small_res.result_int(), 200) << small_res.body();

  // Once the first is answered, its bytes are free again.
  first.send_raw(body.substr(100));
  const TestResponse created = first.read_response();
  EXPECT_EQ(created.result_int(), 200) << created.body();
  EXPECT_TRUE(eventually([&] { return harness.server().body_bytes_in_flight() == 0; }));
  HttpTestClient third(harness.endpoint(), kPromptAnswer);
  third.send_raw(post_head(target, body.size(), auth) + body);
  const TestResponse res = third.read_response();
  EXPECT_NE(res.result_int(), 503) << res.body();
}

// ---------------------------------------------------------------------------------------
// Refused connections are counted

TEST(ServerConnections, CountsConnectionsRefusedAtTheLimitInTheMetrics) {
  HarnessOptions o = options();
  o.listen.max_connections = 1;
  o.metrics = true;
  ServerHarness harness(o);
  auto first = harness.connect();
  ASSERT_EQ(first.get("/healthz").result_int(), 200);
  for (int i = 0; i < 2; ++i) {
    auto refused = harness.connect();
    EXPECT_EQ(refused.get("/healthz").result_int(), 503);
    EXPECT_TRUE(refused.peer_closed());
  }
  EXPECT_EQ(harness.server().connections_rejected(), 2u);
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() == 1; }));
  const TestResponse metrics = first.get("/metrics");
  EXPECT_THAT(metrics.body(), HasSubstr("\nsecrets_proxy_connections_rejected_total 2\n"));
}

}  // namespace
}  // namespace sproxy::proxy
