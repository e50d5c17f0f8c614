// Integration tests: the real server on 127.0.0.1:0 over a real embedded store, spoken
// to over HTTP.
#include "proxy/server.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <list>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "tests/support/http_test_client.hpp"
#include "tests/support/server_harness.hpp"

namespace sproxy::proxy {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace errors = upstream::errors;
using nlohmann::json;
using test::api_base;
using test::bearer;
using test::body_json;
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

// Waits (bounded) for a server-side condition that follows a real event.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds within = std::chrono::seconds(5)) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
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

TEST_F(ProxyServer, ClosesAConnectionThatSendsGarbage) {
  auto client = harness_.connect();
  client.send_raw("NOT HTTP AT ALL\r\n\r\n");
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

}  // namespace
}  // namespace sproxy::proxy
