// Integration tests: the real server on 127.0.0.1:0 over a real embedded store, spoken
// to over HTTP: health, routing and credentials, the secret lifecycle, cache purges and
// HTTP/1.x request handling.
#include "tests/proxy/server_fixture.hpp"

namespace sproxy::proxy {
namespace {

using namespace server_testing;

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

}  // namespace
}  // namespace sproxy::proxy
