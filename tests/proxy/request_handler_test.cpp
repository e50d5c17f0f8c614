// The request handler's identity, permission and scope rules, each from both sides,
// run in process against the real cache and an embedded store with an explicit clock;
// every case runs with the cache on and with it off (reads passed through): reads, writes,
// purge, store-limited clients and reload.
#include "tests/proxy/request_handler_fixture.hpp"

namespace sproxy::proxy {
namespace {

using namespace handler_testing;

INSTANTIATE_TEST_SUITE_P(CacheOnAndOff, HandlerRules, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "cached" : "uncached"; });

// ---------------------------------------------------------------------------------------
// Reads

TEST_P(HandlerRules, ListsOnlySecretsSharingAScopeWithTheCallersServices) {
  EXPECT_THAT(listed_names("t-reader"), UnorderedElementsAre("W", "WD"));
  EXPECT_THAT(listed_names("t-dex-writer"), UnorderedElementsAre("D", "WD"));
  EXPECT_THAT(listed_names("t-nothing"), ::testing::IsEmpty());
  EXPECT_THAT(listed_names("t-admin"), UnorderedElementsAre("W", "D", "WD", "A"));
}

TEST_P(HandlerRules, CountsResultInfoOverTheVisibleSecretsOnly) {
  auto res = rig_.get(secrets() + "?per_page=1&page=2", "t-reader");
  ASSERT_EQ(res.result_int(), 200);
  const json info = json_of(res)["result_info"];
  EXPECT_EQ(info["total_count"], 2);
  EXPECT_EQ(info["total_pages"], 2);
  EXPECT_EQ(info["count"], 1);
  EXPECT_EQ(json_of(rig_.get(secrets() + "?per_page=1&page=3", "t-reader"))["result"].size(), 0u);
}

TEST_P(HandlerRules, GetsAVisibleSecret) {
  auto res = rig_.get(secret("WD"), "t-reader");
  ASSERT_EQ(res.result_int(), 200) << body_of(res);
  EXPECT_EQ(json_of(res)["result"]["name"], "WD");
}

TEST_P(HandlerRules, AnswersAGetOfAHiddenSecretByteForByteLikeAMissingOne) {
  // Warm whatever the cache keeps, so both answers come from the same state.
  (void)rig_.get(secrets(), "t-reader");
  const auto hidden = rig_.get(secret("D"), "t-reader");
  const auto missing = rig_.get(secrets() + "/" + kUnknownId, "t-reader");
  const auto malformed = rig_.get(secrets() + "/not-an-id", "t-reader");
  expect_error(hidden, errors::secret_not_found());
  EXPECT_EQ(wire_form(hidden), wire_form(missing));
  EXPECT_EQ(wire_form(hidden), wire_form(malformed));
  EXPECT_EQ(rig_.get(secret("D"), "t-admin").result_int(), 200);
}

TEST_P(HandlerRules, RefusesEveryRouteOfAnAccountOutsideTheClientsList) {
  for (const auto& [method, target] :
       std::vector<std::pair<http::verb, std::string>>{{http::verb::get, base() + "/stores"},
                                                       {http::verb::get, secret("W")},
                                                       {http::verb::get, base() + "/quota"},
                                                       {http::verb::post, base() + "/stores"},
                                                       {http::verb::delete_, secret("W")}}) {
    expect_error(rig_.call(method, target, "t-elsewhere", "{}"), errors::authentication_error());
  }
  EXPECT_EQ(rig_.upstream().calls(), 0u);
  EXPECT_EQ(rig_.get(base(kOtherAccount) + "/stores", "t-elsewhere").result_int(), 200);
}

// ---------------------------------------------------------------------------------------
// Writes: permissions

TEST_P(HandlerRules, RefusesAReaderOnEveryWriteRouteWithoutCallingTheUpstream) {
  const std::string body = json::array({secret_json("NEW", {"workers"})}).dump();
  expect_error(rig_.post(secrets(), "t-reader", body), errors::authentication_error());
  expect_error(rig_.patch(secret("W"), "t-reader", R"({"comment":"x"})"),
               errors::authentication_error());
  expect_error(rig_.del(secret("W"), "t-reader"), errors::authentication_error());
  expect_error(rig_.del(secrets(), "t-reader", json{{"ids", {ids_["W"]}}}.dump()),
               errors::authentication_error());
  expect_error(
      rig_.post(secret("W") + "/duplicate", "t-reader", R"({"name":"COPY","scopes":["workers"]})"),
      errors::authentication_error());
  expect_error(rig_.post(base() + "/stores", "t-reader", R"({"name":"x"})"),
               errors::authentication_error());
  expect_error(rig_.del(base() + "/stores/" + store_ + "?force=true", "t-reader"),
               errors::authentication_error());
  EXPECT_EQ(write_calls(), 0u);
  EXPECT_EQ(stored_secrets(), 4u);
}

TEST_P(HandlerRules, LeavesStoreCreationAndDeletionToAdmins) {
  expect_error(rig_.post(base() + "/stores", "t-writer", R"({"name":"second"})"),
               errors::authentication_error());
  expect_error(rig_.del(base() + "/stores/" + store_ + "?force=true", "t-writer"),
               errors::authentication_error());
  EXPECT_EQ(write_calls(), 0u);
  EXPECT_EQ(rig_.del(base() + "/stores/" + store_ + "?force=true", "t-admin").result_int(), 200);
  EXPECT_TRUE(rig_.store().list_stores(kAccount)->empty());
}

// ---------------------------------------------------------------------------------------
// Writes: the target must be visible

TEST_P(HandlerRules, LetsAWriterPatchAVisibleSecret) {
  auto res = rig_.patch(secret("WD"), "t-writer", R"({"comment":"changed","value":"new"})");
  ASSERT_EQ(res.result_int(), 200) << body_of(res);
  EXPECT_EQ(json_of(res)["result"]["comment"], "changed");
  EXPECT_EQ(*rig_.store().reveal_value_for_test(store_, ids_["WD"]), "new");
}

TEST_P(HandlerRules, AnswersAPatchOfAHiddenSecretExactlyLikeAMissingOneWithoutCallingTheUpstream) {
  const auto hidden = rig_.patch(secret("D"), "t-writer", R"({"comment":"x"})");
  const auto missing = rig_.patch(secrets() + "/" + kUnknownId, "t-writer", R"({"comment":"x"})");
  expect_error(hidden, errors::secret_not_found());
  EXPECT_EQ(wire_form(hidden), wire_form(missing));
  EXPECT_EQ(rig_.upstream().calls(RouteKind::patch_secret), 0u);
  EXPECT_EQ(rig_.store().get_secret(kAccount, store_, ids_["D"], 0)->comment, std::nullopt);
  // What the upstream itself says for a missing secret is the same answer.
  const auto admin_missing =
      rig_.patch(secrets() + "/" + kUnknownId, "t-admin", R"({"comment":"x"})");
  EXPECT_EQ(wire_form(hidden), wire_form(admin_missing));
}

TEST_P(HandlerRules, LetsAWriterDeleteAVisibleSecretButNotAHiddenOne) {
  const auto hidden = rig_.del(secret("A"), "t-writer");
  const auto missing = rig_.del(secrets() + "/" + kUnknownId, "t-writer");
  expect_error(hidden, errors::secret_not_found());
  EXPECT_EQ(wire_form(hidden), wire_form(missing));
  EXPECT_EQ(rig_.upstream().calls(RouteKind::delete_secret), 0u);
  EXPECT_EQ(stored_secrets(), 4u);

  EXPECT_EQ(rig_.del(secret("W"), "t-writer").result_int(), 202);
  EXPECT_EQ(stored_secrets(), 3u);
}

TEST_P(HandlerRules, LetsAWriterDuplicateAVisibleSecretIntoItsServicesOnly) {
  const auto hidden =
      rig_.post(secret("D") + "/duplicate", "t-writer", R"({"name":"COPY","scopes":["workers"]})");
  expect_error(hidden, errors::secret_not_found());
  EXPECT_EQ(wire_form(hidden),
            wire_form(rig_.post(secrets() + "/" + kUnknownId + "/duplicate", "t-writer",
                                R"({"name":"COPY","scopes":["workers"]})")));
  expect_error(
      rig_.post(secret("W") + "/duplicate", "t-writer", R"({"name":"COPY","scopes":["dex"]})"),
      errors::authentication_error());
  EXPECT_EQ(rig_.upstream().calls(RouteKind::duplicate), 0u);

  auto copied =
      rig_.post(secret("W") + "/duplicate", "t-writer", R"({"name":"COPY","scopes":["workers"]})");
  ASSERT_EQ(copied.result_int(), 200) << body_of(copied);
  EXPECT_EQ(json_of(copied)["result"]["scopes"], json({"workers"}));
  EXPECT_EQ(stored_secrets(), 5u);
}

TEST_P(HandlerRules, DeletesInBulkOnlyWhenEveryIdIsVisible) {
  const auto mixed = rig_.del(secrets(), "t-writer", json{{"ids", {ids_["W"], ids_["D"]}}}.dump());
  expect_error(mixed, errors::secret_not_found());
  const auto with_missing =
      rig_.del(secrets(), "t-writer", json{{"ids", {ids_["W"], kUnknownId}}}.dump());
  EXPECT_EQ(wire_form(mixed), wire_form(with_missing));
  EXPECT_EQ(rig_.upstream().calls(RouteKind::bulk_delete), 0u);
  EXPECT_EQ(stored_secrets(), 4u);

  auto done = rig_.del(secrets(), "t-writer", json{{"ids", {ids_["W"], ids_["WD"]}}}.dump());
  EXPECT_EQ(done.result_int(), 202) << body_of(done);
  EXPECT_EQ(stored_secrets(), 2u);
}

// ---------------------------------------------------------------------------------------
// Writes: scopes set must be within the writer's services

TEST_P(HandlerRules, LetsAWriterCreateSecretsOnlyWithinItsServices) {
  const auto outside = rig_.post(
      secrets(), "t-writer",
      json::array({secret_json("OK", {"workers"}), secret_json("NO", {"workers", "dex"})}).dump());
  expect_error(outside, errors::authentication_error());
  EXPECT_EQ(rig_.upstream().calls(RouteKind::create_secrets), 0u);
  EXPECT_EQ(stored_secrets(), 4u);

  const auto inside =
      rig_.post(secrets(), "t-writer", json::array({secret_json("OK", {"workers"})}).dump());
  EXPECT_EQ(inside.result_int(), 200) << body_of(inside);
  EXPECT_EQ(stored_secrets(), 5u);
}

TEST_P(HandlerRules, LetsAWriterPatchScopesOnlyWithinItsServices) {
  expect_error(rig_.patch(secret("WD"), "t-writer", R"({"scopes":["workers","access"]})"),
               errors::authentication_error());
  EXPECT_EQ(rig_.upstream().calls(RouteKind::patch_secret), 0u);
  auto narrowed = rig_.patch(secret("WD"), "t-writer", R"({"scopes":["workers"]})");
  ASSERT_EQ(narrowed.result_int(), 200) << body_of(narrowed);
  EXPECT_EQ(json_of(narrowed)["result"]["scopes"], json({"workers"}));
}

TEST_P(HandlerRules, LetsAnAdminSetAnyScope) {
  auto res = rig_.post(secrets(), "t-admin",
                       json::array({secret_json("WEB", {"websearch", "containers"})}).dump());
  EXPECT_EQ(res.result_int(), 200) << body_of(res);
}

// ---------------------------------------------------------------------------------------
// Writes: bodies the parser rejects

TEST_P(HandlerRules, AnswersABodyTheParserRejectsWithTheParsersErrorWithoutCallingTheUpstream) {
  const std::string bad_name = json::array({secret_json("bad name", {"workers"})}).dump();
  expect_error(rig_.post(secrets(), "t-writer", bad_name),
               upstream::parse_secret_create(bad_name, upstream::kDefaultMaxValueBytes).error());
  expect_error(rig_.post(secrets(), "t-writer", "{not json"), errors::invalid_json_body());
  expect_error(rig_.patch(secret("W"), "t-writer", R"({"name":"RENAMED"})"),
               errors::secret_name_immutable());
  expect_error(rig_.del(secrets(), "t-writer", R"({"ids":"x"})"), errors::invalid_json_body());
  expect_error(rig_.post(secret("W") + "/duplicate", "t-writer", R"({"scopes":["workers"]})"),
               upstream::parse_secret_duplicate(R"({"scopes":["workers"]})").error());
  EXPECT_EQ(write_calls(), 0u);
}

TEST_P(HandlerRules, ChecksTheStoreBeforeTheBodyLikeTheUpstream) {
  const std::string unknown_store = base() + "/stores/" + kUnknownId + "/secrets";
  expect_error(rig_.post(unknown_store, "t-writer", "{not json"), errors::store_not_found());
  expect_error(rig_.del(unknown_store, "t-writer", "{not json"), errors::store_not_found());
  expect_error(rig_.patch(unknown_store + "/" + ids_["W"], "t-writer", "{not json"),
               errors::store_not_found());
  EXPECT_EQ(write_calls(), 0u);
}

// ---------------------------------------------------------------------------------------
// Purge

TEST_P(HandlerRules, LetsAdminClientsAndTheAdminTokenPurgeButNoOneElse) {
  EXPECT_EQ(rig_.post("/admin/purge", "t-admin", "").result_int(), 200);
  EXPECT_EQ(rig_.post("/admin/purge", kPurgeToken, "").result_int(), 200);
  expect_error(rig_.post("/admin/purge", "t-writer", ""), errors::authentication_error());
  // An admin of another account may purge its own account only.
  expect_error(rig_.post("/admin/purge", "t-elsewhere", ""), errors::authentication_error());
  expect_error(rig_.post("/admin/purge", "t-elsewhere", json{{"account_id", kAccount}}.dump()),
               errors::authentication_error());
  EXPECT_EQ(rig_.post("/admin/purge", "t-elsewhere", json{{"account_id", kOtherAccount}}.dump())
                .result_int(),
            200);
  // The admin token is for purging only.
  expect_error(rig_.get(base() + "/stores", kPurgeToken), errors::authentication_error());
}

// ---------------------------------------------------------------------------------------
// Store-limited clients

// Three stores, created by the admin; clients limited to some of them join afterwards.
class StoreLimitedListing : public ::testing::TestWithParam<bool> {
 protected:
  StoreLimitedListing() : rig_(options()) {
    for (const char* name : {"s1", "s2", "s3"}) {
      auto created = rig_.post(base() + "/stores", "t-admin", json{{"name", name}}.dump());
      EXPECT_EQ(created.result_int(), 200) << body_of(created);
      ids_.push_back(json_of(created)["result"]["id"].get<std::string>());
    }
    auto clients = options().clients;
    auto one = token_client("one", "t-one", {"read"}, {"workers"});
    one.stores = {ids_[1]};
    auto two = token_client("two", "t-two", {"write"}, {"workers"});
    two.stores = {ids_[2], ids_[0], ids_[2]};  // unsorted, repeated: as a config may say
    auto boss = token_client("boss", "t-boss", {"admin"});
    boss.stores = {ids_[1]};
    clients.push_back(one);
    clients.push_back(two);
    clients.push_back(boss);
    rig_.identities().replace(std::make_shared<const ConfigIdentityResolver>(clients));
  }

  static test::HandlerRigOptions options() {
    test::HandlerRigOptions o;
    o.clients = {token_client("admin", "t-admin", {"admin"}),
                 token_client("reader", "t-reader", {"read"}, {"workers"})};
    o.cache.enabled = GetParam();
    o.max_stores_per_account = 4;  // room for one more: only the proxy's rules refuse it
    return o;
  }

  // The ids a stores list answer names, in its order.
  static std::vector<std::string> listed(const HttpResponse& res) {
    std::vector<std::string> out;
    const json body = json_of(res);
    for (const auto& s : body["result"]) out.push_back(s["id"].get<std::string>());
    return out;
  }

  test::HandlerRig rig_;
  std::vector<std::string> ids_;  // in creation order
};

INSTANTIATE_TEST_SUITE_P(CacheOnAndOff, StoreLimitedListing, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "cached" : "uncached"; });

TEST_P(StoreLimitedListing, ListsOnlyTheClientsStoresCountedAsItSeesThem) {
  // The stores share one created time (the rig's clock): order by name (s1, s2, s3).
  // Unlimited clients first, so that with the cache on the others are served from the
  // same snapshot.
  for (const char* token : {"t-admin", "t-reader"}) {
    auto all = rig_.get(base() + "/stores?order=name", token);
    ASSERT_EQ(all.result_int(), 200) << body_of(all);
    EXPECT_EQ(listed(all), ids_) << token;
    EXPECT_EQ(json_of(all)["result_info"]["total_count"], 3) << token;
  }
  const std::size_t calls = rig_.upstream().calls();

  auto one = rig_.get(base() + "/stores?order=name", "t-one");
  ASSERT_EQ(one.result_int(), 200) << body_of(one);
  EXPECT_THAT(listed(one), ElementsAre(ids_[1]));
  const json info = json_of(one)["result_info"];
  EXPECT_EQ(info["count"], 1);
  EXPECT_EQ(info["total_count"], 1);
  EXPECT_EQ(info["total_pages"], 1);

  auto two = rig_.get(base() + "/stores?order=name", "t-two");
  ASSERT_EQ(two.result_int(), 200) << body_of(two);
  EXPECT_THAT(listed(two), ElementsAre(ids_[0], ids_[2]));
  EXPECT_EQ(json_of(two)["result_info"]["total_count"], 2);
  if (GetParam()) {
    EXPECT_EQ(rig_.upstream().calls(), calls);  // one snapshot serves all
  }

  // The unlimited clients' answers are not affected by the limited ones' (memo keys).
  EXPECT_EQ(listed(rig_.get(base() + "/stores?order=name", "t-admin")), ids_);
}

TEST_P(StoreLimitedListing, PagesOverTheVisibleStoresOnly) {
  auto first = rig_.get(base() + "/stores?per_page=1&order=name&direction=desc", "t-two");
  ASSERT_EQ(first.result_int(), 200) << body_of(first);
  EXPECT_THAT(listed(first), ElementsAre(ids_[2]));  // s3
  EXPECT_EQ(
      json_of(first)["result_info"],
      (json{{"page", 1}, {"per_page", 1}, {"count", 1}, {"total_count", 2}, {"total_pages", 2}}));
  auto second = rig_.get(base() + "/stores?per_page=1&page=2&order=name&direction=desc", "t-two");
  EXPECT_THAT(listed(second), ElementsAre(ids_[0]));  // s1
  auto beyond = rig_.get(base() + "/stores?per_page=1&page=3&order=name&direction=desc", "t-two");
  ASSERT_EQ(beyond.result_int(), 200) << body_of(beyond);
  EXPECT_TRUE(listed(beyond).empty());
  EXPECT_EQ(json_of(beyond)["result_info"]["total_count"], 2);
}

TEST_P(StoreLimitedListing, AnswersAnotherStoreExactlyLikeAMissingOne) {
  // check_access refuses any store outside the client's before looking it up: the same
  // 403 whether the store exists or not.
  for (const std::string suffix : {"", "/secrets"}) {
    const auto other = rig_.get(base() + "/stores/" + ids_[0] + suffix, "t-one");
    const auto missing = rig_.get(base() + "/stores/" + kUnknownId + suffix, "t-one");
    expect_error(other, errors::authentication_error());
    EXPECT_EQ(wire_form(other), wire_form(missing)) << suffix;
    EXPECT_EQ(rig_.get(base() + "/stores/" + ids_[1] + suffix, "t-one").result_int(), 200);
  }
}

TEST_P(StoreLimitedListing, RefusesAStoreLimitedAdminACreateOfAnotherStoreAndAuditsIt) {
  rig_.upstream().reset_counts();
  rig_.clear_audit();
  expect_error(rig_.post(base() + "/stores", "t-boss", R"({"name":"s4"})"),
               errors::authentication_error());
  EXPECT_EQ(rig_.upstream().calls(RouteKind::create_store), 0u);
  EXPECT_EQ(rig_.store().list_stores(kAccount)->size(), 3u);
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["client"], "boss");
  EXPECT_EQ(lines[0]["decision"], "deny");
  EXPECT_EQ(lines[0].value("reason", ""), "store_not_allowed");
  EXPECT_EQ(lines[0]["status"], 403);

  // Within its store it is an admin still; an admin without a store list may create one.
  auto deleted = rig_.del(base() + "/stores/" + ids_[1] + "?force=true", "t-boss");
  EXPECT_EQ(deleted.result_int(), 200) << body_of(deleted);
  auto created = rig_.post(base() + "/stores", "t-admin", R"({"name":"s4"})");
  EXPECT_EQ(created.result_int(), 200) << body_of(created);
}

// ---------------------------------------------------------------------------------------
// Reload

TEST_P(HandlerRules, StopsAcceptingARemovedTokenAtTheSwap) {
  ASSERT_EQ(rig_.get(secret("W"), "t-reader").result_int(), 200);
  rig_.identities().replace(std::make_shared<const ConfigIdentityResolver>(
      std::vector{token_client("admin", "t-admin", {"admin"})}));
  expect_error(rig_.get(secret("W"), "t-reader"), errors::authentication_error());
  EXPECT_EQ(rig_.get(secret("W"), "t-admin").result_int(), 200);
}

TEST_P(HandlerRules, ResolvesEachCredentialOfOneConnectionOnItsOwn) {
  ConnectionContext connection;
  const std::string body = R"({"comment":"c"})";
  // The same connection switching tokens gets each token's own rights every time.
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(
        rig_.call_on(connection, http::verb::patch, secret("W"), "t-writer", body).result_int(),
        200);
    expect_error(rig_.call_on(connection, http::verb::patch, secret("W"), "t-reader", body),
                 errors::authentication_error());
    expect_error(rig_.call_on(connection, http::verb::get, secret("W"), "t-nobody"),
                 errors::authentication_error());
    expect_error(rig_.call_on(connection, http::verb::get, secret("W"), ""),
                 errors::missing_credentials());
    EXPECT_EQ(rig_.call_on(connection, http::verb::get, secret("W"), "t-reader").result_int(), 200);
  }
  // A swap of the identity table reaches a token the connection already resolved.
  rig_.identities().replace(std::make_shared<const ConfigIdentityResolver>(
      std::vector{token_client("admin", "t-admin", {"admin"})}));
  expect_error(rig_.call_on(connection, http::verb::get, secret("W"), "t-reader"),
               errors::authentication_error());
  EXPECT_EQ(rig_.call_on(connection, http::verb::get, secret("W"), "t-admin").result_int(), 200);
}

TEST_P(HandlerRules, AnswersAHitAtOnceAndLeavesAMissAndAWriteToBeAwaited) {
  ConnectionContext connection;
  rig_.cache().purge_all();
  Reply miss =
      rig_.answer(connection, test::HandlerRig::request(http::verb::get, secret("W"), "t-reader"));
  EXPECT_FALSE(miss.ready());
  ASSERT_EQ(rig_.call_on(connection, http::verb::get, secret("W"), "t-reader").result_int(), 200);
  Reply hit =
      rig_.answer(connection, test::HandlerRig::request(http::verb::get, secret("W"), "t-reader"));
  if (GetParam()) {
    ASSERT_TRUE(hit.ready());
    ASSERT_TRUE(hit.cached);
    EXPECT_EQ(hit.cached->status, 200u);
    EXPECT_EQ(hit.cached->outcome, cache::Outcome::hit);
    const std::string body(hit.cached->body.view());
    const HttpResponse response = hit.take_response();
    EXPECT_EQ(response["X-Cache"], "HIT");
    EXPECT_EQ(response.body().view(), body);
  } else {
    EXPECT_FALSE(hit.ready());
  }
  Reply write = rig_.answer(
      connection,
      test::HandlerRig::request(http::verb::patch, secret("W"), "t-writer", R"({"comment":"c"})"));
  EXPECT_FALSE(write.ready());
  Reply refused =
      rig_.answer(connection, test::HandlerRig::request(http::verb::get, secret("W"), "t-x"));
  ASSERT_TRUE(refused.ready());
  EXPECT_EQ(refused.status(), 403u);
}

}  // namespace
}  // namespace sproxy::proxy
