// Integration tests: the real server on 127.0.0.1:0 over a real embedded store, spoken
// to over HTTP.
#include "proxy/server.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <list>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/http_test_client.hpp"
#include "tests/support/run_awaitable.hpp"
#include "tests/support/server_harness.hpp"
#include "upstream/emulation.hpp"
#include "upstream/http_upstream.hpp"

namespace sproxy::proxy {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace errors = upstream::errors;
using nlohmann::json;
using test::api_base;
using test::bearer;
using test::body_json;
using test::eventually;
using test::HarnessOptions;
using test::Headers;
using test::HttpTestClient;
using test::ServerHarness;
using test::TestResponse;
using ::testing::AnyOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kAccount = "0123456789abcdef0123456789abcdef";
const std::string kOtherAccount = "fedcba9876543210fedcba9876543210";
const std::string kUnknownId = "abcdefabcdefabcdefabcdefabcdefab";
const std::string kSecretValue = "s3cr3t-VALUE-never-echoed";
const std::string kAdminPurgeToken = "purge-token-for-tests";

const Headers kAdmin = bearer("t-admin");
const Headers kWriter = bearer("t-writer");
const Headers kReader = bearer("t-reader");

HarnessOptions default_options() {
  HarnessOptions o;
  o.listen.max_header_bytes = 4 * 1024;
  o.listen.max_body_bytes = 16 * 1024;
  o.clients = {test::token_client("admin", "t-admin", {"admin"}),
               test::token_client("writer", "t-writer", {"write"}, {"workers"}),
               test::token_client("reader", "t-reader", {"read"}, {"workers"}),
               test::token_client("elsewhere", "t-elsewhere", {"admin"}, {}, {kOtherAccount}),
               test::key_pair_client("ops", "ops@example.com", "k-ops", {"read"}),
               test::token_client("dex-reader", "t-dex", {"read"}, {"dex"})};
  o.admin_token = kAdminPurgeToken;
  return o;
}

std::vector<int> error_codes(const TestResponse& res) {
  std::vector<int> codes;
  const json body = body_json(res);
  for (const auto& e : body.at("errors")) codes.push_back(e.at("code").get<int>());
  return codes;
}

// The response is exactly the contract's envelope for `error`.
void expect_error(const TestResponse& res, const upstream::ApiError& error) {
  EXPECT_EQ(res.result_int(), error.status) << res.body();
  EXPECT_EQ(body_json(res), json::parse(upstream::envelope_error(error))) << res.body();
}

std::string header(const TestResponse& res, http::field f) { return std::string(res[f]); }
std::string header(const TestResponse& res, std::string_view name) {
  return std::string(res[name]);
}

class ProxyServer : public ::testing::Test {
 protected:
  ServerHarness harness_{default_options()};

  std::string create_store(const std::string& name = "main") {
    auto client = harness_.connect();
    auto res = client.post(api_base(kAccount) + "/stores", json{{"name", name}}.dump(), kAdmin);
    EXPECT_EQ(res.result_int(), 200) << res.body();
    return body_json(res)["result"]["id"].get<std::string>();
  }
};

TEST_F(ProxyServer, AnswersHealthzWithoutCredentials) {
  auto client = harness_.connect();
  auto res = client.get("/healthz");
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_EQ(body_json(res), json({{"status", "ok"}}));
  EXPECT_EQ(header(res, http::field::content_type), "application/json");
  EXPECT_EQ(header(res, http::field::server), "secrets-proxy");
}

TEST_F(ProxyServer, RefusesOtherMethodsOnHealthz) {
  auto client = harness_.connect();
  expect_error(client.post("/healthz", "{}"), errors::method_not_allowed());
}

TEST_F(ProxyServer, ServesSeveralRequestsOverOneKeepAliveConnection) {
  auto client = harness_.connect();
  for (int i = 0; i < 5; ++i) {
    auto res =
        i % 2 == 0 ? client.get("/healthz") : client.get(api_base(kAccount) + "/stores", kReader);
    EXPECT_EQ(res.result_int(), 200) << res.body();
    EXPECT_TRUE(res.keep_alive());
  }
  EXPECT_EQ(harness_.server().connection_count(), 1u);
}

TEST_F(ProxyServer, AnswersPipelinedRequestsInOrder) {
  auto client = harness_.connect();
  client.send(http::verb::get, "/healthz");
  client.send(http::verb::get, api_base(kAccount) + "/nope", {}, kReader);
  EXPECT_EQ(client.read_response().result_int(), 200);
  EXPECT_EQ(client.read_response().result_int(), 404);
}

TEST_F(ProxyServer, AnswersOversizedHeadersWith431AndCloses) {
  auto client = harness_.connect();
  auto res = client.get("/healthz", {{"X-Padding", std::string(8 * 1024, 'p')}});
  expect_error(res, errors::headers_too_large());
  EXPECT_FALSE(res.keep_alive());
  EXPECT_TRUE(client.peer_closed());

  auto other = harness_.connect();
  EXPECT_EQ(other.get("/healthz").result_int(), 200);
}

TEST_F(ProxyServer, AnswersOversizedBodiesWith413AndCloses) {
  const std::string store = create_store();
  auto client = harness_.connect();
  const std::string body =
      json::array(
          {{{"name", "BIG"}, {"value", std::string(20 * 1024, 'v')}, {"scopes", {"workers"}}}})
          .dump();
  auto res = client.post(api_base(kAccount) + "/stores/" + store + "/secrets", body, kWriter);
  expect_error(res, errors::payload_too_large());
  EXPECT_FALSE(res.keep_alive());
  EXPECT_TRUE(client.peer_closed());
  EXPECT_TRUE(harness_.store().list_secrets(kAccount, store, 0)->empty());

  auto other = harness_.connect();
  EXPECT_EQ(other.get("/healthz").result_int(), 200);
}

TEST_F(ProxyServer, AnswersInvalidJsonBodyForABodyThatIsNotJson) {
  auto client = harness_.connect();
  expect_error(client.post(api_base(kAccount) + "/stores", "{not json", kAdmin),
               errors::invalid_json_body());
}

TEST_F(ProxyServer, AnswersAMalformedAccountIdWithTheRoutingErrors) {
  auto client = harness_.connect();
  auto res = client.get(api_base("not-an-account") + "/stores", kReader);
  EXPECT_EQ(res.result_int(), 400);
  EXPECT_THAT(error_codes(res), ElementsAre(7003, 7000));
}

TEST_F(ProxyServer, AnswersAnUnknownStoreWithStoreNotFound) {
  auto client = harness_.connect();
  expect_error(client.get(api_base(kAccount) + "/stores/" + kUnknownId, kReader),
               errors::store_not_found());
  expect_error(
      client.get(api_base(kAccount) + "/stores/123e4567-e89b-42d3-a456-426614174000", kReader),
      errors::store_not_found());
}

TEST_F(ProxyServer, AnswersUnknownRoutesWithNoRoute) {
  auto client = harness_.connect();
  expect_error(client.get(api_base(kAccount) + "/vaults", kReader), errors::no_route());
  expect_error(client.get("/elsewhere", kReader), errors::no_route());
}

TEST_F(ProxyServer, AnswersAWrongMethodWithMethodNotAllowed) {
  auto client = harness_.connect();
  expect_error(client.request(http::verb::put, api_base(kAccount) + "/stores", "{}", kAdmin),
               errors::method_not_allowed());
}

TEST_F(ProxyServer, ChecksTheRouteBeforeTheCredentials) {
  auto client = harness_.connect();
  expect_error(client.get(api_base(kAccount) + "/vaults"), errors::no_route());
}

TEST_F(ProxyServer, AnswersMissingCredentialsWhenNoneAreSent) {
  auto client = harness_.connect();
  expect_error(client.get(api_base(kAccount) + "/stores"), errors::missing_credentials());
}

TEST_F(ProxyServer, AnswersAMalformedAuthorizationHeaderWithItsErrorChain) {
  auto client = harness_.connect();
  auto res = client.get(api_base(kAccount) + "/stores", {{"Authorization", "Token abc"}});
  expect_error(res, errors::malformed_authorization());
  const auto j = body_json(res);
  EXPECT_EQ(j["errors"][0]["code"], 6003);
  EXPECT_EQ(j["errors"][0]["error_chain"][0]["code"], 6111);
}

TEST_F(ProxyServer, RefusesAnUnknownToken) {
  auto client = harness_.connect();
  expect_error(client.get(api_base(kAccount) + "/stores", bearer("t-unknown")),
               errors::authentication_error());
}

TEST_F(ProxyServer, AnswersMissingCredentialsForAnEmailWithoutAKey) {
  auto client = harness_.connect();
  expect_error(client.get(api_base(kAccount) + "/stores", {{"X-Auth-Email", "ops@example.com"}}),
               errors::missing_credentials());
}

TEST_F(ProxyServer, RefusesAWrongKeyForAKnownEmail) {
  auto client = harness_.connect();
  expect_error(client.get(api_base(kAccount) + "/stores",
                          {{"X-Auth-Email", "ops@example.com"}, {"X-Auth-Key", "k-wrong"}}),
               errors::authentication_error());
}

TEST_F(ProxyServer, AcceptsAGoodEmailAndKeyPair) {
  auto client = harness_.connect();
  auto res = client.get(api_base(kAccount) + "/stores",
                        {{"X-Auth-Email", "ops@example.com"}, {"X-Auth-Key", "k-ops"}});
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_EQ(body_json(res)["success"], true);
}

TEST_F(ProxyServer, RefusesAReaderThatTriesToWriteAndLeavesTheStoreUnchanged) {
  const std::string store = create_store();
  auto client = harness_.connect();
  const std::string body =
      json::array({{{"name", "API_KEY"}, {"value", kSecretValue}, {"scopes", {"workers"}}}}).dump();
  expect_error(client.post(api_base(kAccount) + "/stores/" + store + "/secrets", body, kReader),
               errors::authentication_error());
  EXPECT_TRUE(harness_.store().list_secrets(kAccount, store, 0)->empty());
}

TEST_F(ProxyServer, RefusesAWriterThatTriesToCreateAStore) {
  auto client = harness_.connect();
  expect_error(client.post(api_base(kAccount) + "/stores", R"({"name":"x"})", kWriter),
               errors::authentication_error());
  EXPECT_TRUE(harness_.store().list_stores(kAccount)->empty());
}

TEST_F(ProxyServer, RefusesAClientOutsideItsAccounts) {
  auto client = harness_.connect();
  expect_error(
      client.post(api_base(kAccount) + "/stores", R"({"name":"x"})", bearer("t-elsewhere")),
      errors::authentication_error());
  EXPECT_TRUE(harness_.store().list_stores(kAccount)->empty());
  EXPECT_EQ(client.get(api_base(kOtherAccount) + "/stores", bearer("t-elsewhere")).result_int(),
            200);
}

TEST_F(ProxyServer, RunsTheWholeSecretLifecycleOverHttp) {
  const std::string store = create_store();
  const std::string secrets = api_base(kAccount) + "/stores/" + store + "/secrets";
  auto client = harness_.connect();

  auto created = client.post(secrets,
                             json::array({{{"name", "API_KEY"},
                                           {"value", kSecretValue},
                                           {"scopes", {"workers"}},
                                           {"comment", "first"}}})
                                 .dump(),
                             kWriter);
  ASSERT_EQ(created.result_int(), 200) << created.body();
  EXPECT_THAT(created.body(), Not(HasSubstr(kSecretValue)));
  EXPECT_TRUE(header(created, "X-Cache").empty());
  const std::string id = body_json(created)["result"][0]["id"].get<std::string>();

  auto listed = client.get(secrets, kReader);
  ASSERT_EQ(listed.result_int(), 200) << listed.body();
  EXPECT_EQ(body_json(listed)["result"].size(), 1u);
  EXPECT_EQ(body_json(listed)["result"][0]["name"], "API_KEY");
  EXPECT_EQ(body_json(listed)["result_info"]["total_count"], 1);
  EXPECT_THAT(header(listed, "X-Cache"), AnyOf("HIT", "MISS", "STALE", "BYPASS"));
  EXPECT_FALSE(header(listed, http::field::age).empty());
  EXPECT_THAT(listed.body(), Not(HasSubstr(kSecretValue)));

  auto got = client.get(secrets + "/" + id, kReader);
  ASSERT_EQ(got.result_int(), 200) << got.body();
  EXPECT_EQ(body_json(got)["result"]["comment"], "first");

  auto patched = client.patch(secrets + "/" + id, R"({"comment":"second"})", kWriter);
  ASSERT_EQ(patched.result_int(), 200) << patched.body();
  EXPECT_EQ(body_json(patched)["result"]["comment"], "second");

  // Read-your-writes through the same proxy.
  auto reread = client.get(secrets + "/" + id, kReader);
  EXPECT_EQ(body_json(reread)["result"]["comment"], "second");

  auto deleted = client.del(secrets + "/" + id, kWriter);
  EXPECT_EQ(deleted.result_int(), 202) << deleted.body();
  expect_error(client.get(secrets + "/" + id, kReader), errors::secret_not_found());
  EXPECT_TRUE(harness_.store().list_secrets(kAccount, store, 0)->empty());
}

TEST_F(ProxyServer, ShowsReadersOnlySecretsOfTheirServicesAndAdminsAll) {
  const std::string store = create_store();
  const std::string secrets = api_base(kAccount) + "/stores/" + store + "/secrets";
  auto client = harness_.connect();
  ASSERT_EQ(
      client
          .post(secrets,
                json::array({{{"name", "W"}, {"value", "1"}, {"scopes", {"workers"}}}}).dump(),
                kWriter)
          .result_int(),
      200);
  EXPECT_EQ(body_json(client.get(secrets, bearer("t-dex")))["result"].size(), 0u);
  EXPECT_EQ(body_json(client.get(secrets, kReader))["result"].size(), 1u);
  EXPECT_EQ(body_json(client.get(secrets, kAdmin))["result"].size(), 1u);
}

TEST_F(ProxyServer, DeletesSecretsInBulkWithABodyOnDelete) {
  const std::string store = create_store();
  const std::string secrets = api_base(kAccount) + "/stores/" + store + "/secrets";
  auto client = harness_.connect();
  auto created = client.post(secrets,
                             json::array({{{"name", "A"}, {"value", "1"}, {"scopes", {"workers"}}},
                                          {{"name", "B"}, {"value", "2"}, {"scopes", {"workers"}}}})
                                 .dump(),
                             kWriter);
  ASSERT_EQ(created.result_int(), 200) << created.body();
  json ids = json::array();
  const json created_body = body_json(created);
  for (const auto& s : created_body["result"]) ids.push_back(s["id"]);

  auto res = client.del(secrets, kWriter, json{{"ids", ids}}.dump());
  EXPECT_EQ(res.result_int(), 202) << res.body();
  EXPECT_TRUE(harness_.store().list_secrets(kAccount, store, 0)->empty());
}

TEST_F(ProxyServer, ServesARevalidatingReadWhenTheClientAsksForNoCache) {
  const std::string store = create_store();
  auto client = harness_.connect();
  auto res = client.get(api_base(kAccount) + "/stores/" + store,
                        {{"Authorization", "Bearer t-reader"}, {"Cache-Control", "no-cache"}});
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_EQ(body_json(res)["result"]["id"], store);
  EXPECT_THAT(header(res, "X-Cache"), AnyOf("MISS", "BYPASS"));
}

TEST_F(ProxyServer, PurgesTheCacheForTheAdminToken) {
  auto client = harness_.connect();
  auto all = client.post("/admin/purge", "", bearer(kAdminPurgeToken));
  ASSERT_EQ(all.result_int(), 200) << all.body();
  EXPECT_EQ(body_json(all)["success"], true);
  EXPECT_EQ(body_json(all)["result"], json({{"purged", "all"}}));

  auto account =
      client.post("/admin/purge", json{{"account_id", kAccount}}.dump(), bearer(kAdminPurgeToken));
  EXPECT_EQ(body_json(account)["result"], json({{"purged", "account"}}));

  auto store =
      client.post("/admin/purge", json{{"account_id", kAccount}, {"store_id", kUnknownId}}.dump(),
                  bearer(kAdminPurgeToken));
  EXPECT_EQ(body_json(store)["result"], json({{"purged", "store"}}));
}

TEST_F(ProxyServer, RefusesPurgesWithoutTheAdminTokenOrAnAdminClientsToken) {
  auto client = harness_.connect();
  expect_error(client.post("/admin/purge", ""), errors::missing_credentials());
  expect_error(client.post("/admin/purge", "", {{"Authorization", "Basic x"}}),
               errors::malformed_authorization());
  expect_error(client.post("/admin/purge", "", bearer("wrong")), errors::authentication_error());
  // Clients without the admin permission may not purge.
  expect_error(client.post("/admin/purge", "", kWriter), errors::authentication_error());
  expect_error(client.post("/admin/purge", "", kReader), errors::authentication_error());
}

TEST_F(ProxyServer, RefusesMalformedPurgeBodiesAndOtherMethods) {
  auto client = harness_.connect();
  expect_error(
      client.post("/admin/purge", json{{"store_id", kUnknownId}}.dump(), bearer(kAdminPurgeToken)),
      errors::invalid_json_body());
  expect_error(client.get("/admin/purge", bearer(kAdminPurgeToken)), errors::method_not_allowed());
  expect_error(client.post("/admin/other", "", bearer(kAdminPurgeToken)), errors::no_route());
}

TEST(ProxyServerWithoutAdminToken, LetsOnlyAdminClientsPurge) {
  HarnessOptions options = default_options();
  options.admin_token.clear();
  ServerHarness harness(options);
  auto client = harness.connect();
  expect_error(client.post("/admin/purge", "", bearer(kAdminPurgeToken)),
               errors::authentication_error());
  expect_error(client.post("/admin/purge", "", kReader), errors::authentication_error());
  auto purged = client.post("/admin/purge", "", kAdmin);
  EXPECT_EQ(purged.result_int(), 200) << purged.body();
  EXPECT_EQ(body_json(purged)["result"], json({{"purged", "all"}}));
}

TEST_F(ProxyServer, ClosesAfterAnHttp10RequestWithoutKeepAlive) {
  auto client = harness_.connect();
  client.send_raw("GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  auto res = client.read_response();
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_EQ(res.version(), 10u);
  EXPECT_TRUE(client.peer_closed());
}

TEST_F(ProxyServer, AnswersExpectContinueBeforeReadingTheBody) {
  auto client = harness_.connect();
  const std::string body = R"({"name":"continued"})";
  client.send_raw("POST " + api_base(kAccount) +
                  "/stores HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t-admin\r\n"
                  "Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: " +
                  std::to_string(body.size()) + "\r\n\r\n");
  EXPECT_EQ(client.read_response().result(), http::status::continue_);
  client.send_raw(body);
  auto res = client.read_response();
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_EQ(body_json(res)["result"]["name"], "continued");
}

TEST_F(ProxyServer, AnswersAnOversizedExpectContinueRequestWith413WithoutTheBody) {
  auto client = harness_.connect();
  client.send_raw("POST " + api_base(kAccount) +
                  "/stores HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t-admin\r\n"
                  "Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n");
  expect_error(client.read_response(), errors::payload_too_large());
  EXPECT_TRUE(client.peer_closed());
}

TEST_F(ProxyServer, AnswersGarbageWithTheInvalidRequestEnvelopeAndCloses) {
  auto client = harness_.connect();
  client.send_raw("NOT HTTP AT ALL\r\n\r\n");
  const TestResponse res = client.read_response();
  EXPECT_EQ(res.result_int(), 400);
  EXPECT_THAT(error_codes(res), ElementsAre(6003));
  EXPECT_TRUE(client.peer_closed());
  EXPECT_EQ(harness_.connect().get("/healthz").result_int(), 200);
}

// ---------------------------------------------------------------------------------------
// Connection limits and deadlines

TEST(ProxyServerLimits, AnswersConnectionsBeyondTheLimitWith503AndCloses) {
  HarnessOptions options = default_options();
  options.listen.max_connections = 1;
  ServerHarness harness(options);
  {
    auto first = harness.connect();
    ASSERT_EQ(first.get("/healthz").result_int(), 200);

    auto second = harness.connect();
    auto res = second.get("/healthz");
    expect_error(res, errors::service_unavailable("too_many_connections"));
    EXPECT_FALSE(res.keep_alive());
    EXPECT_TRUE(second.peer_closed());

    // The first connection is unaffected.
    EXPECT_EQ(first.get("/healthz").result_int(), 200);
  }
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() == 0; }));
  EXPECT_EQ(harness.connect().get("/healthz").result_int(), 200);
}

TEST(ProxyServerLimits, ClosesKeepAliveConnectionsAfterTheIdleTimeout) {
  HarnessOptions options = default_options();
  options.listen.idle_timeout_ms = 50;
  ServerHarness harness(options);
  auto client = harness.connect();
  ASSERT_EQ(client.get("/healthz").result_int(), 200);
  EXPECT_TRUE(client.peer_closed(std::chrono::seconds(5)));
}

TEST(ProxyServerLimits, ClosesAConnectionWhoseRequestDoesNotArriveInTime) {
  HarnessOptions options = default_options();
  options.listen.read_timeout_ms = 50;
  ServerHarness harness(options);
  auto client = harness.connect();
  client.send_raw("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");  // never finished
  EXPECT_TRUE(client.peer_closed(std::chrono::seconds(5)));
}

// Opens `count` connections that each send the start of a request header and stall.
std::vector<asio::ip::tcp::socket> stalled_connections(asio::io_context& ioc,
                                                       const asio::ip::tcp::endpoint& endpoint,
                                                       int count) {
  std::vector<asio::ip::tcp::socket> sockets;
  sockets.reserve(static_cast<std::size_t>(count));
  const std::string partial = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
  for (int i = 0; i < count; ++i) {
    asio::ip::tcp::socket socket(ioc);
    socket.connect(endpoint);
    asio::write(socket, asio::buffer(partial));
    sockets.push_back(std::move(socket));
  }
  return sockets;
}

// How many of `sockets` the server closes (EOF or reset) within `within`, reading
// nothing from them.
int closed_by_peer(asio::io_context& ioc, std::vector<asio::ip::tcp::socket>& sockets,
                   std::chrono::milliseconds within) {
  int closed = 0;
  std::vector<char> bytes(sockets.size());
  for (std::size_t i = 0; i < sockets.size(); ++i) {
    sockets[i].async_read_some(
        asio::buffer(&bytes[i], 1), [&closed](boost::system::error_code ec, std::size_t n) {
          if (n == 0 && (ec == asio::error::eof || ec == asio::error::connection_reset)) {
            ++closed;
          }
        });
  }
  ioc.restart();
  ioc.run_for(within);
  for (auto& socket : sockets) socket.close();
  ioc.restart();
  ioc.run_for(std::chrono::seconds(1));  // the cancelled reads complete
  return closed;
}

TEST(ProxyServerLimits, KeepsAnsweringWhileHundredsOfClientsStallMidHeader) {
  HarnessOptions options = default_options();
  options.listen.read_timeout_ms = 1'000;
  ServerHarness harness(options);
  asio::io_context ioc{1};
  constexpr int kStalled = 300;
  auto stalled = stalled_connections(ioc, harness.endpoint(), kStalled);
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() >= kStalled; }));

  // A normal client is served meanwhile, health checks included.
  auto client = harness.connect();
  EXPECT_EQ(client.get("/healthz").result_int(), 200);
  auto stores = client.get(api_base(kAccount) + "/stores", kReader);
  EXPECT_EQ(stores.result_int(), 200) << stores.body();
  EXPECT_EQ(harness.connect().get("/healthz").result_int(), 200);

  // Each stalled connection is closed at its read deadline.
  EXPECT_EQ(closed_by_peer(ioc, stalled, std::chrono::seconds(20)), kStalled);
  EXPECT_EQ(client.get("/healthz").result_int(), 200);
}

TEST(ProxyServerLimits, FreesTheConnectionCapTakenByStalledClientsAtTheReadDeadline) {
  HarnessOptions options = default_options();
  options.listen.read_timeout_ms = 500;
  options.listen.max_connections = 20;
  ServerHarness harness(options);
  asio::io_context ioc{1};
  auto stalled = stalled_connections(ioc, harness.endpoint(), 20);
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() == 20; }));

  // At the cap, a new connection gets the 503 envelope, /healthz included.
  auto refused = harness.connect();
  expect_error(refused.get("/healthz"), errors::service_unavailable("too_many_connections"));

  // The stalled clients are closed at their read deadline, which frees the cap.
  EXPECT_EQ(closed_by_peer(ioc, stalled, std::chrono::seconds(20)), 20);
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() == 0; },
                         std::chrono::seconds(10)));
  EXPECT_EQ(harness.connect().get("/healthz").result_int(), 200);
}

// Listening sockets on `port` in /proc/net/tcp (IPv4).
int listening_sockets_on(unsigned short port) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // header
  int count = 0;
  char port_hex[8];
  std::snprintf(port_hex, sizeof port_hex, "%04X", port);
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string slot, local, remote, state;
    fields >> slot >> local >> remote >> state;
    if (state == "0A" && local.substr(local.find(':') + 1) == port_hex) ++count;
  }
  return count;
}

TEST(ProxyServerThreads, BindsOneAcceptorPerThreadOnTheSameEphemeralPort) {
  HarnessOptions options = default_options();
  options.listen.threads = 3;
  ServerHarness harness(options);
  const auto port = harness.endpoint().port();
  ASSERT_NE(port, 0);
  EXPECT_EQ(listening_sockets_on(port), 3);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(harness.connect().get("/healthz").result_int(), 200);
  }
}

// Which threads ran a per-thread task.
struct ThreadsSeen {
  std::mutex mu;
  std::vector<std::thread::id> ids;
};

boost::asio::awaitable<void> note_thread(std::shared_ptr<ThreadsSeen> seen) {
  std::lock_guard lock(seen->mu);
  seen->ids.push_back(std::this_thread::get_id());
  co_return;
}

TEST(ProxyServerThreads, RunsAPerThreadTaskOnceOnEveryIoThread) {
  HarnessOptions options = default_options();
  options.listen.threads = 3;
  ServerHarness harness(options);
  auto seen = std::make_shared<ThreadsSeen>();
  harness.server().run_on_each_thread([seen] { return note_thread(seen); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    {
      std::lock_guard lock(seen->mu);
      if (seen->ids.size() >= 3 || std::chrono::steady_clock::now() > deadline) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::lock_guard lock(seen->mu);
  ASSERT_EQ(seen->ids.size(), 3u);
  std::sort(seen->ids.begin(), seen->ids.end());
  EXPECT_EQ(std::unique(seen->ids.begin(), seen->ids.end()), seen->ids.end());
  EXPECT_EQ(std::count(seen->ids.begin(), seen->ids.end(), std::this_thread::get_id()), 0);
}

TEST(ProxyServerThreads, RefusesToStartOnAPortAnotherSocketHolds) {
  // A plain listening socket without SO_REUSEPORT blocks the port for everyone.
  asio::io_context ioc;
  asio::ip::tcp::acceptor blocker(ioc, {asio::ip::make_address("127.0.0.1"), 0});
  HarnessOptions options = default_options();
  options.listen.port = blocker.local_endpoint().port();
  try {
    ServerHarness harness(options);
    FAIL() << "expected start to fail";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot listen on 127.0.0.1:"));
  }
}

// ---------------------------------------------------------------------------------------
// Graceful stop

// Holds every upstream call until `open`, so a test can have requests in flight.
class GatedUpstream final : public upstream::Upstream {
 public:
  explicit GatedUpstream(std::shared_ptr<upstream::Upstream> inner) : inner_(std::move(inner)) {}

  asio::awaitable<upstream::CallResult> call(upstream::ApiRequest request) override {
    asio::steady_timer gate(co_await asio::this_coro::executor,
                            asio::steady_timer::time_point::max());
    std::list<asio::steady_timer*>::iterator registered;
    bool wait = false;
    {
      std::lock_guard lock(mutex_);
      ++entered_;
      if (!open_) {
        registered = waiting_.insert(waiting_.end(), &gate);
        wait = true;
      }
    }
    entered_changed_.notify_all();
    if (wait) {
      // Unregisters even when the frame is destroyed while waiting.
      struct Unregister {
        GatedUpstream* self;
        std::list<asio::steady_timer*>::iterator it;
        ~Unregister() {
          std::lock_guard lock(self->mutex_);
          if (it != self->waiting_.end()) self->waiting_.erase(it);
        }
      } unregister{this, registered};
      co_await gate.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    co_return co_await inner_->call(std::move(request));
  }

  std::string describe() const override { return "gated " + inner_->describe(); }

  bool wait_until_entered(int calls) {
    std::unique_lock lock(mutex_);
    return entered_changed_.wait_for(lock, std::chrono::seconds(10),
                                     [&] { return entered_ >= calls; });
  }

  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    for (auto* timer : waiting_) {
      asio::post(timer->get_executor(), [timer] { timer->cancel(); });
    }
  }

 private:
  std::shared_ptr<upstream::Upstream> inner_;
  std::mutex mutex_;
  std::condition_variable entered_changed_;
  std::list<asio::steady_timer*> waiting_;
  int entered_ = 0;
  bool open_ = false;
};

HarnessOptions gated_options(std::shared_ptr<GatedUpstream>* gate, int grace_ms) {
  HarnessOptions options = default_options();
  options.listen.shutdown_grace_ms = grace_ms;
  options.wrap_upstream = [gate](std::shared_ptr<upstream::Upstream> inner) {
    *gate = std::make_shared<GatedUpstream>(std::move(inner));
    return std::static_pointer_cast<upstream::Upstream>(*gate);
  };
  return options;
}

TEST(ProxyServerStop, FinishesRequestsInFlightAndClosesIdleConnections) {
  std::shared_ptr<GatedUpstream> gate;
  ServerHarness harness(gated_options(&gate, 10'000));

  HttpTestClient idle = harness.connect();
  ASSERT_EQ(idle.get("/healthz").result_int(), 200);

  HttpTestClient busy = harness.connect();
  busy.send(http::verb::get, api_base(kAccount) + "/stores", {}, kReader);
  ASSERT_TRUE(gate->wait_until_entered(1));

  harness.server().stop();
  EXPECT_TRUE(idle.peer_closed());

  gate->open();
  auto res = busy.read_response();
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_FALSE(res.keep_alive());
  EXPECT_TRUE(busy.peer_closed());

  harness.server().wait();
  EXPECT_EQ(harness.server().connection_count(), 0u);
  EXPECT_THROW(HttpTestClient(harness.endpoint(), std::chrono::seconds(2)), std::runtime_error);
}

TEST(ProxyServerStop, ClosesConnectionsStillSendingARequestAtOnce) {
  std::shared_ptr<GatedUpstream> gate;
  HarnessOptions options = gated_options(&gate, 30'000);
  options.listen.read_timeout_ms = 60'000;
  ServerHarness harness(options);

  HttpTestClient mid_head = harness.connect();
  mid_head.send_raw("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
  HttpTestClient mid_body = harness.connect();
  mid_body.send_raw("POST " + api_base(kAccount) +
                    "/stores HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t-admin\r\n"
                    "Content-Length: 100\r\n\r\n{\"name\":");
  HttpTestClient busy = harness.connect();
  busy.send(http::verb::get, api_base(kAccount) + "/stores", {}, kReader);
  ASSERT_TRUE(gate->wait_until_entered(1));
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() == 3; }));

  harness.server().stop();
  // Neither the read deadline nor the grace period: closed now.
  EXPECT_TRUE(mid_head.peer_closed(std::chrono::seconds(5)));
  EXPECT_TRUE(mid_body.peer_closed(std::chrono::seconds(5)));

  // The request being processed still gets its answer.
  gate->open();
  auto res = busy.read_response();
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_FALSE(res.keep_alive());
  harness.server().wait();
  EXPECT_EQ(harness.server().connection_count(), 0u);
}

TEST(ProxyServerStop, ClosesConnectionsStillBusyAfterTheGracePeriod) {
  std::shared_ptr<GatedUpstream> gate;
  ServerHarness harness(gated_options(&gate, 50));

  HttpTestClient busy = harness.connect();
  busy.send(http::verb::get, api_base(kAccount) + "/stores", {}, kReader);
  ASSERT_TRUE(gate->wait_until_entered(1));

  harness.server().stop();
  // Closed at the end of the grace period although its upstream call has not returned.
  EXPECT_TRUE(busy.peer_closed());

  // The call still running is not abandoned: it completes into the closed connection,
  // and then the server is done.
  gate->open();
  harness.server().wait();
  EXPECT_EQ(harness.server().connection_count(), 0u);
}

TEST(ProxyServerStop, StopsAtOnceWhenNothingIsOpen) {
  ServerHarness harness(default_options());
  const auto started = std::chrono::steady_clock::now();
  harness.server().stop();
  harness.server().wait();
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(2));
}

// ---------------------------------------------------------------------------------------
// Upstream answers carried through

// Answers every call with a 429 carrying Retry-After.
class RateLimitedUpstream final : public upstream::Upstream {
 public:
  asio::awaitable<upstream::CallResult> call(upstream::ApiRequest) override {
    upstream::ApiResponse res;
    res.status = 429;
    res.body = upstream::envelope_error(errors::rate_limited(30));
    res.retry_after = "30";
    co_return res;
  }
  std::string describe() const override { return "rate-limited"; }
};

TEST(ProxyServerUpstream, PassesRetryAfterOfARateLimitedUpstreamToTheClient) {
  HarnessOptions options = default_options();
  options.wrap_upstream = [](std::shared_ptr<upstream::Upstream>) {
    return std::make_shared<RateLimitedUpstream>();
  };
  ServerHarness harness(options);
  auto client = harness.connect();
  auto res = client.get(api_base(kAccount) + "/stores", kReader);
  EXPECT_EQ(res.result_int(), 429) << res.body();
  EXPECT_EQ(header(res, http::field::retry_after), "30");
  EXPECT_THAT(error_codes(res), ElementsAre(971));
}

// A steady clock that stands still: the emulator's window never moves under the test.
class StillClock final : public upstream::GuardedUpstream::Clock {
 public:
  upstream::SteadyTime now() const override { return upstream::SteadyTime{std::chrono::hours(1)}; }
  std::chrono::system_clock::time_point wall_now() const override {
    return std::chrono::system_clock::time_point{std::chrono::hours(24 * 365 * 56)};
  }
};

TEST(ProxyServerUpstream, PassesRatelimitHeadersOfAnUpstreamAnswerToTheClient) {
  HarnessOptions options = default_options();
  upstream::RateLimitEmulatorOptions limit;
  limit.requests = 5;
  limit.window = std::chrono::seconds(60);
  options.wrap_upstream = [limit](std::shared_ptr<upstream::Upstream> inner) {
    return std::make_shared<upstream::RateLimitEmulator>(std::move(inner), limit,
                                                         std::make_shared<const StillClock>());
  };
  ServerHarness harness(options);
  auto client = harness.connect();

  auto miss = client.get(api_base(kAccount) + "/stores", kReader);
  ASSERT_EQ(miss.result_int(), 200) << miss.body();
  EXPECT_EQ(header(miss, "X-Cache"), "MISS");
  EXPECT_EQ(header(miss, "Ratelimit"), upstream::format_ratelimit(4, std::chrono::seconds(60)));
  EXPECT_EQ(header(miss, "Ratelimit-Policy"),
            upstream::format_ratelimit_policy(5, std::chrono::seconds(60)));

  // A hit made no upstream call: it has no budget to report.
  auto hit = client.get(api_base(kAccount) + "/stores", kReader);
  ASSERT_EQ(hit.result_int(), 200) << hit.body();
  EXPECT_EQ(header(hit, "X-Cache"), "HIT");
  EXPECT_EQ(hit.count("Ratelimit"), 0u);
  EXPECT_EQ(hit.count("Ratelimit-Policy"), 0u);
}

// ---------------------------------------------------------------------------------------
// Metrics, scraped over HTTP

// One sample of a text exposition: the metric name, its label text and value.
struct Sample {
  std::string name;
  std::string labels;  // the text between the braces, or empty
  double value = 0;
};

std::vector<Sample> parse_exposition(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line.front() == '#') continue;
    const auto space = line.rfind(' ');
    if (space == std::string::npos) continue;
    Sample s;
    std::string series = line.substr(0, space);
    s.value = std::stod(line.substr(space + 1));
    if (const auto brace = series.find('{'); brace != std::string::npos) {
      s.name = series.substr(0, brace);
      s.labels = series.substr(brace + 1, series.size() - brace - 2);
    } else {
      s.name = series;
    }
    out.push_back(std::move(s));
  }
  return out;
}

// The sum of every sample of `name` whose labels contain each of `labels`.
double metric_sum(const std::vector<Sample>& samples, const std::string& name,
                  const std::vector<std::string>& labels = {}) {
  double sum = 0;
  for (const auto& s : samples) {
    if (s.name != name) continue;
    bool all = true;
    for (const auto& l : labels) all = all && s.labels.find(l) != std::string::npos;
    if (all) sum += s.value;
  }
  return sum;
}

class ProxyServerMetrics : public ::testing::Test {
 protected:
  static HarnessOptions metered_options() {
    HarnessOptions o = default_options();
    o.metrics = true;
    return o;
  }
  ServerHarness harness_{metered_options()};

  std::string scrape_text() {
    auto client = harness_.connect();
    auto res = client.get("/metrics");
    EXPECT_EQ(res.result_int(), 200) << res.body();
    EXPECT_EQ(header(res, http::field::content_type), kMetricsContentType);
    return res.body();
  }
  std::vector<Sample> scrape() { return parse_exposition(scrape_text()); }
};

TEST_F(ProxyServerMetrics, CountsAMissThenAHitInRequestAndCacheCounters) {
  const std::string stores = api_base(kAccount) + "/stores";
  const std::string route =
      "route=\"" + std::string(upstream::route_template(upstream::RouteKind::list_stores)) + "\"";
  const auto before = scrape();
  EXPECT_EQ(metric_sum(before, "secrets_proxy_requests_total", {route}), 0);

  auto client = harness_.connect();
  ASSERT_EQ(header(client.get(stores, kReader), "X-Cache"), "MISS");
  ASSERT_EQ(header(client.get(stores, kReader), "X-Cache"), "HIT");

  const auto after = scrape();
  EXPECT_EQ(metric_sum(after, "secrets_proxy_requests_total",
                       {route, "method=\"GET\"", "status=\"200\"", "cache=\"miss\""}),
            1);
  EXPECT_EQ(metric_sum(after, "secrets_proxy_requests_total",
                       {route, "method=\"GET\"", "status=\"200\"", "cache=\"hit\""}),
            1);
  EXPECT_EQ(metric_sum(after, "secrets_proxy_cache_hits_total") -
                metric_sum(before, "secrets_proxy_cache_hits_total"),
            1);
  EXPECT_EQ(metric_sum(after, "secrets_proxy_cache_misses_total") -
                metric_sum(before, "secrets_proxy_cache_misses_total"),
            1);
  // The first scrape is itself a request, recorded under its own route.
  EXPECT_GE(
      metric_sum(after, "secrets_proxy_requests_total", {"route=\"/metrics\"", "cache=\"none\""}),
      1);
  // One upstream call, for the miss; the hit made none.
  EXPECT_EQ(metric_sum(after, "secrets_proxy_upstream_requests_total", {"outcome=\"ok\""}), 1);
  EXPECT_GE(metric_sum(after, "secrets_proxy_open_connections"), 1);
}

TEST_F(ProxyServerMetrics, ServesMetricsWithoutCredentialsAndOnlyToGet) {
  auto client = harness_.connect();
  EXPECT_EQ(client.get("/metrics").result_int(), 200);
  expect_error(client.post("/metrics", "{}"), errors::method_not_allowed());
}

TEST_F(ProxyServerMetrics, NeverExposesSecretValuesNamesOrTokens) {
  auto client = harness_.connect();
  auto store =
      client.post(api_base(kAccount) + "/stores", json{{"name", "canary-store"}}.dump(), kAdmin);
  ASSERT_EQ(store.result_int(), 200) << store.body();
  const std::string store_id = body_json(store)["result"]["id"].get<std::string>();
  const std::string secrets = api_base(kAccount) + "/stores/" + store_id + "/secrets";
  auto created = client.post(
      secrets,
      json::array({{{"name", "CANARY_NAME"}, {"value", kSecretValue}, {"scopes", {"workers"}}}})
          .dump(),
      kWriter);
  ASSERT_EQ(created.result_int(), 200) << created.body();
  const std::string secret_id = body_json(created)["result"][0]["id"].get<std::string>();
  EXPECT_EQ(client.get(secrets + "/" + secret_id, kReader).result_int(), 200);
  EXPECT_EQ(client.get(secrets + "?search=" + kSecretValue, kReader).result_int(), 200);
  // Refused requests carry request bytes too; none of them may become a label.
  EXPECT_GE(client.get(secrets + "/" + kSecretValue, bearer("t-unknown-canary")).result_int(),
            400u);
  EXPECT_GE(client.get(secrets, bearer("t-unknown-canary")).result_int(), 400u);

  const std::string text = scrape_text();
  ASSERT_THAT(text, HasSubstr("secrets_proxy_requests_total"));
  for (const std::string& canary :
       {kSecretValue, std::string("CANARY_NAME"), std::string("canary-store"), store_id, secret_id,
        kAccount, std::string("t-admin"), std::string("t-writer"), std::string("t-reader"),
        std::string("t-unknown-canary"), kAdminPurgeToken}) {
    EXPECT_THAT(text, Not(HasSubstr(canary))) << canary;
  }
}

// ---------------------------------------------------------------------------------------
// Readiness

TEST_F(ProxyServer, IsReadyWithTheEmbeddedStoreWithoutCredentials) {
  auto client = harness_.connect();
  auto res = client.get("/readyz");
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_EQ(body_json(res), json({{"status", "ready"}}));
  expect_error(client.post("/readyz", "{}"), errors::method_not_allowed());
}

// A loopback port nothing listens on (bound, then released).
unsigned short closed_loopback_port() {
  asio::io_context ioc;
  asio::ip::tcp::acceptor acceptor(ioc, {asio::ip::make_address("127.0.0.1"), 0});
  return acceptor.local_endpoint().port();
}

TEST(ProxyServerReadiness, IsNotReadyWhileAnUnreachableUpstreamLeavesTheCacheEmpty) {
  HarnessOptions options = default_options();
  options.remote_upstream = true;
  const unsigned short port = closed_loopback_port();
  options.wrap_upstream = [port](std::shared_ptr<upstream::Upstream>) {
    upstream::HttpUpstreamOptions http_options;
    http_options.base_url =
        upstream::parse_base_url("http://127.0.0.1:" + std::to_string(port) + "/client/v4");
    http_options.token = "upstream-token-for-tests";
    http_options.connect_timeout = std::chrono::milliseconds(500);
    http_options.request_timeout = std::chrono::milliseconds(1'000);
    return std::make_shared<upstream::HttpUpstream>(http_options);
  };
  ServerHarness harness(options);
  auto client = harness.connect();
  expect_error(client.get("/readyz"), errors::service_unavailable("not_ready"));

  // A read that fails in transport is no HTTP answer and caches nothing.
  EXPECT_GE(client.get(api_base(kAccount) + "/stores", kReader).result_int(), 500u);
  expect_error(client.get("/readyz"), errors::service_unavailable("not_ready"));
}

TEST(ProxyServerReadiness, BecomesReadyOnceARemoteUpstreamHasAnswered) {
  HarnessOptions options = default_options();
  options.remote_upstream = true;
  ServerHarness harness(options);
  auto client = harness.connect();
  expect_error(client.get("/readyz"), errors::service_unavailable("not_ready"));

  ASSERT_EQ(client.get(api_base(kAccount) + "/stores", kReader).result_int(), 200);
  EXPECT_EQ(client.get("/readyz").result_int(), 200);
  // With the cache emptied, the recent answer alone keeps it ready.
  harness.cache().purge_all();
  ASSERT_EQ(harness.cache().stats().entries, 0u);
  EXPECT_EQ(client.get("/readyz").result_int(), 200);
}

// Answers every call with 503: an HTTP answer, so the upstream is reachable.
class FailingHttpUpstream final : public upstream::Upstream {
 public:
  asio::awaitable<upstream::CallResult> call(upstream::ApiRequest) override {
    upstream::ApiResponse res;
    res.status = 503;
    res.body = upstream::envelope_error(errors::service_unavailable("down"));
    co_return res;
  }
  std::string describe() const override { return "failing"; }
};

TEST(ProxyReadiness, CountsAnUpstreamAnswerOnlyWithinThirtySeconds) {
  auto clock = std::make_shared<const StillClock>();
  auto reachability =
      std::make_shared<UpstreamReachability>(std::make_shared<FailingHttpUpstream>(), clock);
  ReadinessOptions options;
  options.reachability = reachability;
  const upstream::SteadyTime at = clock->now();
  EXPECT_FALSE(is_ready(options, 0, at));

  asio::io_context ioc;
  auto result = test::run_awaitable(
      ioc, reachability->call(upstream::ApiRequest{upstream::Method::get, "/x", {}}));
  ASSERT_TRUE(result.has_value());
  ASSERT_EQ(reachability->last_answer(), at);
  EXPECT_TRUE(is_ready(options, 0, at + std::chrono::seconds(30)));
  EXPECT_FALSE(is_ready(options, 0, at + std::chrono::seconds(31)));
  EXPECT_TRUE(is_ready(options, 1, at + std::chrono::seconds(31)));
  options.embedded_upstream = true;
  EXPECT_TRUE(is_ready(options, 0, at + std::chrono::hours(1)));
}

// ---------------------------------------------------------------------------------------
// Admin status

TEST_F(ProxyServer, AdminStatusNeedsTheAdminTokenOrAnAdminClient) {
  auto client = harness_.connect();
  expect_error(client.get("/admin/status"), errors::missing_credentials());
  expect_error(client.get("/admin/status", bearer("t-unknown")), errors::authentication_error());
  expect_error(client.get("/admin/status", kReader), errors::authentication_error());
  expect_error(client.get("/admin/status", kWriter), errors::authentication_error());
  expect_error(client.post("/admin/status", "{}", kAdmin), errors::method_not_allowed());
  EXPECT_EQ(client.get("/admin/status", kAdmin).result_int(), 200);
  EXPECT_EQ(client.get("/admin/status", bearer(kAdminPurgeToken)).result_int(), 200);
}

TEST_F(ProxyServer, AdminStatusReportsCacheStatsOfAnUnguardedUpstream) {
  auto client = harness_.connect();
  ASSERT_EQ(client.get(api_base(kAccount) + "/stores", kReader).result_int(), 200);
  ASSERT_EQ(client.get(api_base(kAccount) + "/stores", kReader).result_int(), 200);
  auto res = client.get("/admin/status", bearer(kAdminPurgeToken));
  ASSERT_EQ(res.result_int(), 200) << res.body();
  const json body = body_json(res);
  EXPECT_EQ(body["success"], true);
  const json& result = body["result"];
  EXPECT_EQ(result["guarded"], false);
  EXPECT_EQ(result["cache"]["hits"], 1);
  EXPECT_EQ(result["cache"]["misses"], 1);
  EXPECT_EQ(result["cache"]["entries"], harness_.cache().stats().entries);
  EXPECT_GE(result["cache"]["entries"].get<long>(), 1);
  EXPECT_FALSE(result.contains("rate_budget"));
  EXPECT_FALSE(result.contains("breaker"));
}

TEST(ProxyServerAdminStatus, ReportsTheRateBudgetAndBreakerOfAGuardedUpstream) {
  HarnessOptions options = default_options();
  options.guard = true;
  ServerHarness harness(options);
  auto client = harness.connect();
  ASSERT_EQ(client.get(api_base(kAccount) + "/stores", kReader).result_int(), 200);
  // The budget only refills between these snapshots: the answer lies between them.
  const upstream::RateBudgetSnapshot before = harness.guard()->budget_snapshot();
  auto res = client.get("/admin/status", kAdmin);
  ASSERT_EQ(res.result_int(), 200) << res.body();
  const upstream::RateBudgetSnapshot after = harness.guard()->budget_snapshot();
  const json result = body_json(res)["result"];
  EXPECT_EQ(result["guarded"], true);
  EXPECT_EQ(result["rate_budget"]["capacity"], after.capacity);
  EXPECT_EQ(result["rate_budget"]["window_seconds"],
            std::chrono::duration_cast<std::chrono::seconds>(after.window).count());
  EXPECT_GE(result["rate_budget"]["remaining"].get<long>(), before.remaining);
  EXPECT_LE(result["rate_budget"]["remaining"].get<long>(), after.remaining);
  EXPECT_TRUE(result["rate_budget"]["blocked_for_seconds"].is_null());
  EXPECT_EQ(result["breaker"]["state"], "closed");
  EXPECT_EQ(result["breaker"]["consecutive_failures"], 0);
  EXPECT_EQ(result["cache"]["misses"], 1);
}

}  // namespace
}  // namespace sproxy::proxy
