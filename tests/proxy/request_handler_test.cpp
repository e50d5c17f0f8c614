// The request handler's identity, permission and scope rules, each from both sides,
// run in process against the real cache and an embedded store with an explicit clock;
// every case runs with the cache on and with it off (reads passed through).
#include "proxy/request_handler.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <map>
#include <string>
#include <vector>

#include "tests/proxy/handler_fixture.hpp"

namespace sproxy::proxy {
namespace {

namespace http = boost::beast::http;
namespace errors = upstream::errors;
using nlohmann::json;
using test::body_of;
using test::json_of;
using test::token_client;
using test::wire_form;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;
using upstream::RouteKind;

const std::string kAccount = "0123456789abcdef0123456789abcdef";
const std::string kOtherAccount = "fedcba9876543210fedcba9876543210";
const std::string kUnknownId = "abcdefabcdefabcdefabcdefabcdefab";
const std::string kPurgeToken = "t-purge";

std::string base(const std::string& account = kAccount) {
  return "/client/v4/accounts/" + account + "/secrets_store";
}

// The response is exactly the contract's envelope for `error`.
void expect_error(const HttpResponse& res, const upstream::ApiError& error) {
  EXPECT_EQ(res.result_int(), error.status) << body_of(res);
  EXPECT_EQ(body_of(res), upstream::envelope_error(error));
}

test::HandlerRigOptions rig_options(bool cache_enabled) {
  test::HandlerRigOptions o;
  o.clients = {
      token_client("admin", "t-admin", {"admin"}),
      token_client("writer", "t-writer", {"write"}, {"workers"}),
      token_client("dex-writer", "t-dex-writer", {"write"}, {"dex"}),
      token_client("reader", "t-reader", {"read"}, {"workers"}),
      token_client("nothing", "t-nothing", {"read", "write"}),
      token_client("elsewhere", "t-elsewhere", {"admin"}, {}, {kOtherAccount}),
  };
  o.admin_token = kPurgeToken;
  o.cache.enabled = cache_enabled;
  return o;
}

// A store holding one secret per scope set below, created by the admin.
class HandlerRules : public ::testing::TestWithParam<bool> {
 protected:
  HandlerRules() : rig_(rig_options(GetParam())) {
    auto store = rig_.post(base() + "/stores", "t-admin", R"({"name":"main"})");
    EXPECT_EQ(store.result_int(), 200) << body_of(store);
    store_ = json_of(store)["result"]["id"].get<std::string>();
    auto created = rig_.post(secrets(), "t-admin",
                             json::array({
                                             secret_json("W", {"workers"}),
                                             secret_json("D", {"dex"}),
                                             secret_json("WD", {"dex", "workers"}),
                                             secret_json("A", {"access"}),
                                         })
                                 .dump());
    EXPECT_EQ(created.result_int(), 200) << body_of(created);
    const json created_body = json_of(created);
    for (const auto& s : created_body["result"]) {
      ids_[s["name"].get<std::string>()] = s["id"].get<std::string>();
    }
    rig_.upstream().reset_counts();
    rig_.clear_audit();
  }

  static json secret_json(const std::string& name, std::vector<std::string> scopes,
                          const std::string& value = "value-of-a-secret") {
    return {{"name", name}, {"value", value}, {"scopes", std::move(scopes)}};
  }
  std::string secrets() const { return base() + "/stores/" + store_ + "/secrets"; }
  std::string secret(const std::string& name) { return secrets() + "/" + ids_.at(name); }
  std::vector<std::string> listed_names(const std::string& token) {
    auto res = rig_.get(secrets() + "?per_page=100", token);
    EXPECT_EQ(res.result_int(), 200) << body_of(res);
    std::vector<std::string> names;
    const json body = json_of(res);
    for (const auto& s : body["result"]) names.push_back(s["name"].get<std::string>());
    return names;
  }
  std::size_t stored_secrets() { return rig_.store().list_secrets(kAccount, store_, 0)->size(); }
  std::size_t write_calls() {
    std::size_t n = 0;
    for (auto k : {RouteKind::create_secrets, RouteKind::patch_secret, RouteKind::delete_secret,
                   RouteKind::bulk_delete, RouteKind::duplicate, RouteKind::create_store,
                   RouteKind::delete_store}) {
      n += rig_.upstream().calls(k);
    }
    return n;
  }

  test::HandlerRig rig_;
  std::string store_;
  std::map<std::string, std::string> ids_;
};

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

// ---------------------------------------------------------------------------------------
// Audit

TEST_P(HandlerRules, AuditsAnAllowedWriteWithItsClientRouteIdsAndNames) {
  ASSERT_EQ(rig_.patch(secret("W"), "t-writer", R"({"comment":"c"})").result_int(), 200);
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), 1u);
  const json& l = lines[0];
  EXPECT_EQ(l["time"], upstream::format_timestamp(rig_.now()));
  EXPECT_EQ(l["client"], "writer");
  EXPECT_EQ(l["method"], "PATCH");
  EXPECT_EQ(l["route"], "/stores/{store_id}/secrets/{secret_id}");
  EXPECT_EQ(l["account"], kAccount);
  EXPECT_EQ(l["store"], store_);
  EXPECT_EQ(l["secret_id"], ids_["W"]);
  EXPECT_EQ(l["secret_name"], "W");
  EXPECT_EQ(l["decision"], "allow");
  EXPECT_EQ(l["status"], 200);
  EXPECT_FALSE(l.contains("reason"));
}

TEST_P(HandlerRules, AuditsTheSecretsACreateMade) {
  auto res = rig_.post(
      secrets(), "t-writer",
      json::array({secret_json("N1", {"workers"}), secret_json("N2", {"workers"})}).dump());
  ASSERT_EQ(res.result_int(), 200);
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), 1u);
  const json result = json_of(res)["result"];
  EXPECT_EQ(lines[0]["secrets"], json::array({{{"id", result[0]["id"]}, {"name", "N1"}},
                                              {{"id", result[1]["id"]}, {"name", "N2"}}}));
}

TEST_P(HandlerRules, AuditsEveryDenialWithItsReason) {
  (void)rig_.get(secret("W"), "t-unknown");
  (void)rig_.get(secret("W"), "");
  (void)rig_.get(base() + "/stores", "t-elsewhere");
  (void)rig_.post(base() + "/stores", "t-writer", R"({"name":"x"})");
  (void)rig_.post(secrets(), "t-writer", json::array({secret_json("X", {"dex"})}).dump());
  (void)rig_.del(secret("D"), "t-writer");
  (void)rig_.get(secret("D"), "t-reader");
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), 7u);
  std::vector<std::string> reasons;
  for (const auto& l : lines) {
    EXPECT_EQ(l["decision"], "deny") << l.dump();
    reasons.push_back(l["reason"].get<std::string>());
  }
  EXPECT_THAT(reasons, ElementsAre("unknown_credentials", "missing_credentials",
                                   "account_not_allowed", "permission_missing", "scope_not_allowed",
                                   "secret_not_visible", "secret_not_visible"));
  EXPECT_EQ(lines[0]["client"], nullptr);
  EXPECT_EQ(lines[0]["status"], 403);
  EXPECT_EQ(lines[1]["status"], 400);
  EXPECT_EQ(lines[4]["client"], "writer");
  EXPECT_EQ(lines[4]["secrets"], json::array({{{"id", nullptr}, {"name", "X"}}}));
  EXPECT_EQ(lines[5]["status"], 404);
  EXPECT_EQ(lines[5]["secret_name"], "D");
  EXPECT_EQ(lines[6]["method"], "GET");
}

TEST_P(HandlerRules, DoesNotAuditAllowedReadsUnlessAskedTo) {
  (void)rig_.get(secrets(), "t-reader");
  (void)rig_.get(secret("W"), "t-reader");
  (void)rig_.get(secrets() + "/" + kUnknownId, "t-reader");
  EXPECT_TRUE(rig_.audit_lines().empty());
}

TEST(HandlerAudit, AuditsEveryReadWhenAskedTo) {
  auto o = rig_options(true);
  o.audit_reads = true;
  test::HandlerRig rig(o);
  (void)rig.get(base() + "/stores", "t-reader");
  (void)rig.get(base() + "/quota", "t-reader");
  const auto lines = rig.audit_lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["route"], "/stores");
  EXPECT_EQ(lines[0]["decision"], "allow");
  EXPECT_EQ(lines[1]["route"], "/quota");
  EXPECT_EQ(lines[1]["status"], 200);
}

TEST(HandlerAudit, NeverWritesAValueOrATokenToTheAuditOrTheLog) {
  const std::string canary_value = "CANARY-VALUE-3f1d9c";
  const std::string canary_token = "sproxy_CANARY-TOKEN-77aa01";
  const std::string canary_unknown = "sproxy_CANARY-UNKNOWN-55bb02";
  auto o = rig_options(true);
  o.audit_reads = true;
  o.clients.push_back(token_client("canary", canary_token, {"write"}, {"workers"}));
  test::HandlerRig rig(o);

  // The process log too, at its most verbose, for the duration of the test.
  std::ostringstream log_out;
  auto previous = spdlog::default_logger();
  auto capture = std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_out));
  capture->set_level(spdlog::level::trace);
  spdlog::set_default_logger(capture);

  const std::string store_id =
      json_of(rig.post(base() + "/stores", "t-admin", R"({"name":"s"})"))["result"]["id"];
  const std::string secrets = base() + "/stores/" + store_id + "/secrets";
  const auto item = [&](const std::string& name, const std::string& scope) {
    return json{{"name", name}, {"value", canary_value}, {"scopes", {scope}}};
  };
  auto created = rig.post(secrets, canary_token, json::array({item("C1", "workers")}).dump());
  ASSERT_EQ(created.result_int(), 200);
  const std::string id = json_of(created)["result"][0]["id"];
  (void)rig.post(secrets, canary_token, json::array({item("C2", "dex")}).dump());  // denied
  (void)rig.post(secrets, canary_token, json::array({item("bad name", "workers")}).dump());
  (void)rig.post(secrets, "t-admin", json::array({item("C3", "access")}).dump());
  (void)rig.patch(secrets + "/" + id, canary_token, json{{"value", canary_value}}.dump());
  (void)rig.post(secrets + "/" + id + "/duplicate", canary_token,
                 R"({"name":"C4","scopes":["workers"]})");
  (void)rig.get(secrets, canary_token);
  (void)rig.get(secrets, canary_unknown);
  (void)rig.post("/admin/purge", canary_unknown, "");
  (void)rig.del(secrets + "/" + id, canary_token);

  spdlog::set_default_logger(previous);
  const std::string audit = rig.audit_text();
  ASSERT_GE(rig.audit_lines().size(), 10u);
  for (const std::string& needle :
       {canary_value, canary_token, canary_unknown, upstream::sha256_hex(canary_token),
        upstream::sha256_hex(canary_unknown), std::string("CANARY")}) {
    EXPECT_THAT(audit, Not(HasSubstr(needle))) << needle;
    EXPECT_THAT(log_out.str(), Not(HasSubstr(needle))) << needle;
  }
  // The audit still names what happened.
  EXPECT_THAT(audit, HasSubstr(R"("client":"canary")"));
  EXPECT_THAT(audit, HasSubstr(R"("name":"C4")"));
}

// ---------------------------------------------------------------------------------------
// Ambiguous credentials

TEST_P(HandlerRules, RefusesAmbiguousCredentialsWithTheContracts6003AndAuditsThem) {
  const auto with = [&](std::vector<std::pair<std::string, std::string>> credentials) {
    HttpRequest req = test::HandlerRig::request(http::verb::get, secret("W"), "");
    for (const auto& [name, value] : credentials) req.insert(name, value);
    ConnectionContext connection;
    return rig_.call_on(connection, std::move(req));
  };
  const std::vector<std::vector<std::pair<std::string, std::string>>> cases = {
      {{"Authorization", "Bearer t-reader"}, {"Authorization", "Bearer t-admin"}},
      {{"Authorization", "Bearer t-reader"}, {"Authorization", "Bearer t-reader"}},
      {{"Authorization", "Bearer t-reader"}, {"X-Auth-Key", "k"}},
      {{"Authorization", "Bearer t-reader"}, {"X-Auth-Email", "a@example.com"}},
      {{"X-Auth-Email", "a@example.com"}, {"X-Auth-Key", "k"}, {"X-Auth-Key", "k2"}},
      {{"X-Auth-Email", "a@example.com"}, {"X-Auth-Email", "b@example.com"}, {"X-Auth-Key", "k"}},
  };
  for (const auto& credentials : cases)
    expect_error(with(credentials), errors::invalid_request_headers());
  EXPECT_EQ(rig_.upstream().calls(), 0u);
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), cases.size());
  for (const auto& line : lines) {
    EXPECT_EQ(line["decision"], "deny");
    EXPECT_EQ(line["reason"], "ambiguous_credentials");
    EXPECT_EQ(line["status"], 400);
    EXPECT_EQ(line["client"], nullptr);
  }
}

TEST_P(HandlerRules, RefusesAnAmbiguousCredentialWhoseFirstHeaderTheConnectionRemembers) {
  ConnectionContext connection;
  ASSERT_EQ(rig_.call_on(connection, http::verb::get, secret("W"), "t-reader").result_int(), 200);
  ASSERT_EQ(rig_.call_on(connection, http::verb::get, secret("W"), "t-reader").result_int(), 200);
  // The remembered credential first, another after it: refused at start, not a hit.
  HttpRequest req = test::HandlerRig::request(http::verb::get, secret("A"), "t-reader");
  req.insert(http::field::authorization, "Bearer t-admin");
  Reply step = rig_.answer(connection, std::move(req));
  ASSERT_TRUE(step.ready());
  expect_error(step.take_response(), errors::invalid_request_headers());
  // The memo still serves the plain credential afterwards.
  EXPECT_EQ(rig_.call_on(connection, http::verb::get, secret("W"), "t-reader").result_int(), 200);
}

TEST_P(HandlerRules, RefusesAmbiguousCredentialsAtTheAdminEndpoint) {
  HttpRequest req = test::HandlerRig::request(http::verb::post, "/admin/purge", "t-admin");
  req.insert(http::field::authorization, "Bearer " + kPurgeToken);
  ConnectionContext connection;
  expect_error(rig_.call_on(connection, std::move(req)), errors::invalid_request_headers());
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].value("reason", ""), "ambiguous_credentials");
}

// ---------------------------------------------------------------------------------------
// Admins' write bodies

TEST(AdminWriteBodies, AreValidatedLikeEveryonesWithoutCallingTheUpstreamOrInvalidating) {
  test::HandlerRig rig(rig_options(true));
  const std::string store =
      json_of(rig.post(base() + "/stores", "t-admin", R"({"name":"main"})"))["result"]["id"];
  const std::string secrets = base() + "/stores/" + store + "/secrets";
  auto created = rig.post(secrets, "t-admin", R"([{"name":"W","value":"v","scopes":["workers"]}])");
  ASSERT_EQ(created.result_int(), 200) << body_of(created);
  const std::string secret = secrets + "/" + json_of(created)["result"][0]["id"].get<std::string>();
  // What the checks before a body read: the store, and the secret's snapshot.
  ASSERT_EQ(rig.get(base() + "/stores/" + store, "t-admin").result_int(), 200);
  ASSERT_EQ(rig.get(secret, "t-admin").result_int(), 200);
  rig.upstream().reset_counts();
  rig.clear_audit();

  const std::string bad_name = R"([{"name":"bad name","value":"v","scopes":["workers"]}])";
  const std::string no_name = R"({"scopes":["workers"]})";
  const std::string too_long =
      json::array({{{"name", "LONG"},
                    {"value", std::string(upstream::kDefaultMaxValueBytes + 1, 'x')},
                    {"scopes", {"workers"}}}})
          .dump();
  expect_error(rig.post(secrets, "t-admin", "{not json"), errors::invalid_json_body());
  expect_error(rig.post(secrets, "t-admin", bad_name),
               upstream::parse_secret_create(bad_name, upstream::kDefaultMaxValueBytes).error());
  expect_error(rig.post(secrets, "t-admin", too_long), errors::secret_value_too_long());
  expect_error(rig.patch(secret, "t-admin", R"({"name":"RENAMED"})"),
               errors::secret_name_immutable());
  expect_error(rig.post(secret + "/duplicate", "t-admin", no_name),
               upstream::parse_secret_duplicate(no_name).error());
  expect_error(rig.del(secrets, "t-admin", R"({"ids":"x"})"), errors::invalid_json_body());
  expect_error(rig.post(base() + "/stores", "t-admin", "[]"), errors::invalid_json_body());

  EXPECT_EQ(rig.upstream().calls(), 0u);
  const auto hit = rig.get(secret, "t-admin");
  EXPECT_EQ(hit.result_int(), 200);
  EXPECT_EQ(hit["X-Cache"], "HIT");
  EXPECT_EQ(rig.upstream().calls(), 0u);
  // Audited like anyone's refused write: what was asked and what it got.
  const auto lines = rig.audit_lines();
  ASSERT_EQ(lines.size(), 7u);
  for (const auto& line : lines) {
    EXPECT_EQ(line["client"], "admin");
    EXPECT_EQ(line["status"], 400);
  }
}

TEST(AdminWriteBodies, AreAnsweredAfterTheStoreAndTargetChecksTheUpstreamMakesFirst) {
  test::HandlerRig rig(rig_options(true));
  const std::string store =
      json_of(rig.post(base() + "/stores", "t-admin", R"({"name":"main"})"))["result"]["id"];
  const std::string unknown_store = base() + "/stores/" + kUnknownId + "/secrets";
  expect_error(rig.post(unknown_store, "t-admin", "{not json"), errors::store_not_found());
  expect_error(rig.del(unknown_store, "t-admin", "{not json"), errors::store_not_found());
  expect_error(rig.patch(unknown_store + "/" + kUnknownId, "t-admin", "{not json"),
               errors::store_not_found());
  const std::string missing = base() + "/stores/" + store + "/secrets/" + kUnknownId;
  expect_error(rig.patch(missing, "t-admin", "{not json"), errors::secret_not_found());
  expect_error(rig.post(missing + "/duplicate", "t-admin", "{not json"),
               errors::secret_not_found());
  for (auto kind : {RouteKind::create_secrets, RouteKind::patch_secret, RouteKind::bulk_delete,
                    RouteKind::duplicate}) {
    EXPECT_EQ(rig.upstream().calls(kind), 0u);
  }
}

// ---------------------------------------------------------------------------------------
// A missing secret is answered in the proxy's bytes, whatever the upstream writes

// An upstream that writes its error envelopes as the same JSON in other bytes (indented),
// as another implementation of the API may.
class ReformattingUpstream final : public upstream::Upstream {
 public:
  explicit ReformattingUpstream(std::shared_ptr<upstream::Upstream> inner)
      : inner_(std::move(inner)) {}
  std::string describe() const override { return "reformatting"; }
  boost::asio::awaitable<upstream::CallResult> call(upstream::ApiRequest request) override {
    upstream::CallResult r = co_await inner_->call(std::move(request));
    if (r && r->status >= 400) r->body = json::parse(r->body).dump(2);
    co_return r;
  }

 private:
  std::shared_ptr<upstream::Upstream> inner_;
};

enum class CacheMode { enabled, disabled, secrets_ttl_zero };

class HiddenAndMissingSecrets : public ::testing::TestWithParam<CacheMode> {
 protected:
  HiddenAndMissingSecrets() : rig_(options()) {
    auto store = rig_.post(base() + "/stores", "t-admin", R"({"name":"main"})");
    store_ = json_of(store)["result"]["id"].get<std::string>();
    auto created = rig_.post(secrets(), "t-admin",
                             R"([{"name":"W","value":"w","scopes":["workers"]},)"
                             R"({"name":"D","value":"d","scopes":["dex"]}])");
    EXPECT_EQ(created.result_int(), 200) << body_of(created);
    const json created_body = json_of(created);
    for (const auto& s : created_body["result"]) {
      ids_[s["name"].get<std::string>()] = s["id"].get<std::string>();
    }
  }

  static test::HandlerRigOptions options() {
    test::HandlerRigOptions o = rig_options(true);
    o.cache.enabled = GetParam() != CacheMode::disabled;
    if (GetParam() == CacheMode::secrets_ttl_zero) o.cache.ttl.secrets_ms = 0;
    o.wrap_upstream = [](std::shared_ptr<upstream::Upstream> fake) {
      return std::make_shared<ReformattingUpstream>(std::move(fake));
    };
    return o;
  }

  std::string secrets() const { return base() + "/stores/" + store_ + "/secrets"; }
  std::string hidden() const { return secrets() + "/" + ids_.at("D"); }
  std::string missing() const { return secrets() + "/" + kUnknownId; }
  // Puts whatever the cache keeps in the same state before each of two compared answers.
  void warm() { (void)rig_.get(secrets(), "t-admin"); }

  test::HandlerRig rig_;
  std::string store_;
  std::map<std::string, std::string> ids_;
};

INSTANTIATE_TEST_SUITE_P(EveryCacheSetting, HiddenAndMissingSecrets,
                         ::testing::Values(CacheMode::enabled, CacheMode::disabled,
                                           CacheMode::secrets_ttl_zero),
                         [](const auto& info) {
                           switch (info.param) {
                             case CacheMode::enabled:
                               return "cached";
                             case CacheMode::disabled:
                               return "uncached";
                             case CacheMode::secrets_ttl_zero:
                               return "secrets_ttl_zero";
                           }
                           return "unknown";
                         });

TEST_P(HiddenAndMissingSecrets, GetTheSameBytesOnEveryRouteNamingASecret) {
  const std::string canonical = upstream::envelope_error(errors::secret_not_found());
  const auto same = [&](const char* what, const auto& ask_hidden, const auto& ask_missing) {
    warm();
    const HttpResponse a = ask_hidden();
    warm();
    const HttpResponse b = ask_missing();
    EXPECT_EQ(a.result_int(), 404) << what;
    EXPECT_EQ(body_of(a), canonical) << what;
    EXPECT_EQ(wire_form(a), wire_form(b)) << what;
  };
  same(
      "get", [&] { return rig_.get(hidden(), "t-reader"); },
      [&] { return rig_.get(missing(), "t-reader"); });
  same(
      "get, an admin's missing", [&] { return rig_.get(hidden(), "t-reader"); },
      [&] { return rig_.get(missing(), "t-admin"); });
  same(
      "patch", [&] { return rig_.patch(hidden(), "t-writer", R"({"comment":"x"})"); },
      [&] { return rig_.patch(missing(), "t-writer", R"({"comment":"x"})"); });
  same(
      "patch, an admin's missing",
      [&] { return rig_.patch(hidden(), "t-writer", R"({"comment":"x"})"); },
      [&] { return rig_.patch(missing(), "t-admin", R"({"comment":"x"})"); });
  same(
      "delete", [&] { return rig_.del(hidden(), "t-writer"); },
      [&] { return rig_.del(missing(), "t-admin"); });
  const std::string copy = R"({"name":"COPY","scopes":["workers"]})";
  same(
      "duplicate", [&] { return rig_.post(hidden() + "/duplicate", "t-writer", copy); },
      [&] { return rig_.post(missing() + "/duplicate", "t-admin", copy); });
  same(
      "bulk delete",
      [&] {
        return rig_.del(secrets(), "t-writer", json{{"ids", {ids_["W"], ids_["D"]}}}.dump());
      },
      [&] {
        return rig_.del(secrets(), "t-admin", json{{"ids", {ids_["W"], kUnknownId}}}.dump());
      });
  // Nothing was written.
  EXPECT_EQ(rig_.store().list_secrets(kAccount, store_, 0)->size(), 2u);
}

TEST_P(HiddenAndMissingSecrets, LeaveAStoresOwn404AsTheUpstreamWroteIt) {
  const auto res =
      rig_.get(base() + "/stores/" + kUnknownId + "/secrets/" + kUnknownId, "t-reader");
  EXPECT_EQ(res.result_int(), 404);
  EXPECT_EQ(json_of(res)["errors"][0]["message"], "store_not_found");
}

}  // namespace
}  // namespace sproxy::proxy
