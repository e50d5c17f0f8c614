// EmbeddedStore: stores, quota, lists, routing and robustness, the typed API, and the
// EmbeddedUpstream worker in front of it.
#include "tests/upstream/embedded_store_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace embedded_testing;

// ---------------------------------------------------------------------------------------
// Stores

TEST_F(EmbeddedStoreStores, CreateReturnsTheNewStoreWithAFreshIdAndTimestamps) {
  Reply r = call(Method::post, base() + "/stores", R"({"name":"main"})");
  ASSERT_TRUE(is_success(r));
  const json& s = r.body["result"];
  EXPECT_TRUE(looks_like_new_id(s["id"])) << s;
  EXPECT_EQ(s["account_id"], kAccount);
  EXPECT_EQ(s["name"], "main");
  EXPECT_EQ(s["created"], format_timestamp(kT0));
  EXPECT_EQ(s["modified"], format_timestamp(kT0));
  EXPECT_FALSE(r.body.contains("result_info"));
}

TEST_F(EmbeddedStoreStores, ListReturnsTheAccountsStoresWithResultInfo) {
  const std::string id = make_store();
  Reply r = call(Method::get, base() + "/stores");
  ASSERT_TRUE(is_success(r));
  ASSERT_EQ(r.body["result"].size(), 1u);
  EXPECT_EQ(r.body["result"][0]["id"], id);
  const json& info = r.body["result_info"];
  EXPECT_EQ(info["page"], 1);
  EXPECT_EQ(info["per_page"], 20);
  EXPECT_EQ(info["count"], 1);
  EXPECT_EQ(info["total_count"], 1);
  EXPECT_EQ(info["total_pages"], 1);

  Reply other = call(Method::get, base(kOtherAccount) + "/stores");
  ASSERT_TRUE(is_success(other));
  EXPECT_TRUE(other.body["result"].empty());
  EXPECT_EQ(other.body["result_info"]["total_count"], 0);
}

TEST_F(EmbeddedStoreStores, GetReturnsTheStoreAndUnknownOrMalformedIdsAreNotFound) {
  const std::string id = make_store();
  Reply r = call(Method::get, base() + "/stores/" + id);
  ASSERT_TRUE(is_success(r));
  EXPECT_EQ(r.body["result"]["id"], id);
  EXPECT_EQ(r.body["result"]["name"], "main");

  EXPECT_TRUE(is_error(call(Method::get, base() + "/stores/" + std::string(32, 'a')), 404, 1001,
                       "store_not_found"));
  EXPECT_TRUE(is_error(call(Method::get, base() + "/stores/0123abcd-0123-4567-89ab-0123456789ab"),
                       404, 1001, "store_not_found"));
  EXPECT_TRUE(is_error(call(Method::get, base() + "/stores/" + id.substr(0, 31) + "Z"), 404, 1001,
                       "store_not_found"));
}

TEST_F(EmbeddedStoreStores, StoresOfAnotherAccountAreNotFound) {
  const std::string id = make_store();
  const std::string other = base(kOtherAccount) + "/stores/" + id;
  EXPECT_TRUE(is_error(call(Method::get, other), 404, 1001, "store_not_found"));
  EXPECT_TRUE(is_error(call(Method::del, other), 404, 1001, "store_not_found"));
  EXPECT_TRUE(is_error(call(Method::get, other + "/secrets"), 404, 1001, "store_not_found"));
  EXPECT_TRUE(is_error(call(Method::post, other + "/secrets",
                            json::array({secret_item("A", value_for("A"))}).dump()),
                       404, 1001, "store_not_found"));
  EXPECT_TRUE(is_success(call(Method::get, base() + "/stores/" + id)));
}

TEST_F(EmbeddedStoreStores, ASecondStoreOverTheDefaultLimitIsRefused) {
  make_store("first");
  EXPECT_TRUE(is_error(call(Method::post, base() + "/stores", R"({"name":"second"})"), 400, 1003,
                       "maximum_stores_exceeded"));
  EXPECT_EQ(call(Method::get, base() + "/stores").body["result"].size(), 1u);
  // The limit is per account.
  EXPECT_TRUE(is_success(call(Method::post, base(kOtherAccount) + "/stores", R"({"name":"x"})")));
}

TEST_F(EmbeddedStoreStores, AConfiguredLimitAllowsMoreStoresAndNamesNeedNotBeUnique) {
  auto o = options();
  o.max_stores_per_account = 3;
  reopen(o);
  const std::string a = make_store("same");
  const std::string b = make_store("same");
  const std::string c = make_store("other");
  EXPECT_NE(a, b);
  EXPECT_TRUE(is_error(call(Method::post, base() + "/stores", R"({"name":"fourth"})"), 400, 1003,
                       "maximum_stores_exceeded"));
  EXPECT_EQ(call(Method::get, base() + "/stores").body["result"].size(), 3u);
}

TEST_F(EmbeddedStoreStores, StoreNamesAreValidatedLikeSecretNames) {
  EXPECT_TRUE(is_error(call(Method::post, base() + "/stores", R"({"name":""})"), 400, 1001,
                       "secret_name_empty"));
  EXPECT_TRUE(is_error(call(Method::post, base() + "/stores", R"({"name":"has space"})"), 400, 1001,
                       "secret_name_invalid"));
  EXPECT_TRUE(
      is_error(call(Method::post, base() + "/stores", json{{"name", std::string(256, 'n')}}.dump()),
               400, 1001, "secret_name_invalid"));
  EXPECT_TRUE(is_success(
      call(Method::post, base() + "/stores", json{{"name", std::string(255, 'n')}}.dump())));
}

TEST_F(EmbeddedStoreStores, CreateNeedsAJsonObjectBody) {
  EXPECT_TRUE(is_error(call(Method::post, base() + "/stores", R"([{"name":"main"}])"), 400, 1001,
                       "invalid_json_body"));
  EXPECT_TRUE(is_error(call(Method::post, base() + "/stores", "{not json"), 400, 1001,
                       "invalid_json_body"));
  EXPECT_TRUE(is_error(call(Method::post, base() + "/stores", ""), 400, 1001, "invalid_json_body"));
  EXPECT_TRUE(call(Method::get, base() + "/stores").body["result"].empty());
}

TEST_F(EmbeddedStoreStores, DeletingAnEmptyStoreAnswers200WithANullResult) {
  const std::string id = make_store();
  Reply r = call(Method::del, base() + "/stores/" + id);
  ASSERT_TRUE(is_success(r, 200));
  EXPECT_TRUE(r.body["result"].is_null());
  EXPECT_TRUE(is_error(call(Method::get, base() + "/stores/" + id), 404, 1001, "store_not_found"));
  EXPECT_TRUE(is_error(call(Method::del, base() + "/stores/" + id), 404, 1001, "store_not_found"));
  // The slot is free again.
  EXPECT_NO_THROW(make_store("again"));
}

TEST_F(EmbeddedStoreStores, DeletingAStoreThatHoldsSecretsIsRefusedUnlessForced) {
  const std::string id = make_store();
  const std::string s1 = make_secret(id, "A");
  make_secret(id, "B");

  EXPECT_TRUE(is_error(call(Method::del, base() + "/stores/" + id), 409, 1003, "store_not_empty"));
  EXPECT_TRUE(is_error(call(Method::del, base() + "/stores/" + id + "?force=false"), 409, 1003,
                       "store_not_empty"));
  EXPECT_TRUE(is_success(call(Method::get, secret_path(id, s1))));
  EXPECT_EQ(usage(), 2);

  Reply r = call(Method::del, base() + "/stores/" + id + "?force=true");
  ASSERT_TRUE(is_success(r, 200));
  EXPECT_TRUE(r.body["result"].is_null());
  EXPECT_TRUE(is_error(call(Method::get, base() + "/stores/" + id), 404, 1001, "store_not_found"));
  EXPECT_EQ(usage(), 0);
  EXPECT_TRUE(store_->list_stores(kAccount)->empty());
}

TEST_F(EmbeddedStoreStores, ListHonoursOrderDirectionAndPaging) {
  auto o = options();
  o.max_stores_per_account = 3;
  reopen(o);
  make_store("bravo", kAccount, kT0);
  make_store("alpha", kAccount, kT0 + 1);
  make_store("charlie", kAccount, kT0 + 2);
  auto names = [&](const std::string& q) {
    std::vector<std::string> out;
    const Reply r = call(Method::get, base() + "/stores" + q);
    for (const auto& s : r.body["result"]) out.push_back(s["name"]);
    return out;
  };
  EXPECT_EQ(names(""), (std::vector<std::string>{"bravo", "alpha", "charlie"}));
  EXPECT_EQ(names("?order=name&direction=desc"),
            (std::vector<std::string>{"charlie", "bravo", "alpha"}));
  EXPECT_EQ(names("?per_page=2&page=2"), (std::vector<std::string>{"charlie"}));
  Reply past = call(Method::get, base() + "/stores?per_page=2&page=3");
  ASSERT_TRUE(is_success(past));
  EXPECT_TRUE(past.body["result"].empty());
  EXPECT_EQ(past.body["result_info"]["total_count"], 3);
  EXPECT_EQ(past.body["result_info"]["total_pages"], 2);
  EXPECT_TRUE(is_error(call(Method::get, base() + "/stores?order=status"), 400, 1001,
                       "invalid_order_parameter"));
}

// ---------------------------------------------------------------------------------------
// Quota

TEST_F(EmbeddedStoreQuota, ReportsTheLimitAndTheAccountsUsage) {
  Reply empty = call(Method::get, base() + "/quota");
  ASSERT_TRUE(is_success(empty));
  EXPECT_EQ(empty.body["result"], (json{{"secrets", {{"quota", 100}, {"usage", 0}}}}));
  const std::string store = make_store();
  make_secret(store, "A");
  make_secret(store, "B");
  EXPECT_EQ(call(Method::get, base() + "/quota").body["result"],
            (json{{"secrets", {{"quota", 100}, {"usage", 2}}}}));
  EXPECT_EQ(call(Method::get, base(kOtherAccount) + "/quota").body["result"]["secrets"]["usage"],
            0);
}

TEST_F(EmbeddedStoreQuota, CountsEveryStoreOfTheAccountAndRefusesABatchThatWouldCrossIt) {
  auto o = options();
  o.max_stores_per_account = 2;
  o.max_secrets_per_account = 3;
  reopen(o);
  const std::string a = make_store("a");
  const std::string b = make_store("b");
  make_secret(a, "A1");
  make_secret(b, "B1");
  json two = json::array({secret_item("X", value_for("X")), secret_item("Y", value_for("Y"))});
  EXPECT_TRUE(is_error(call(Method::post, secrets_path(a), two.dump()), 400, 1003,
                       "maximum_secrets_exceeded: max 3"));
  EXPECT_EQ(usage(), 2);
  EXPECT_NO_THROW(make_secret(b, "B2"));
  EXPECT_EQ(usage(), 3);
  EXPECT_TRUE(is_error(
      call(Method::post, secrets_path(a), json::array({secret_item("Z", value_for("Z"))}).dump()),
      400, 1003, "maximum_secrets_exceeded: max 3"));
  // Another account has its own quota.
  const std::string other = make_store("o", kOtherAccount);
  EXPECT_NO_THROW(make_secrets(other, two, kT0, kOtherAccount));
}

TEST_F(EmbeddedStoreQuota, DuplicateCountsAgainstTheQuota) {
  auto o = options();
  o.max_secrets_per_account = 1;
  reopen(o);
  const std::string store = make_store();
  const std::string src = make_secret(store, "SRC");
  EXPECT_TRUE(is_error(call(Method::post, secret_path(store, src) + "/duplicate",
                            R"({"name":"COPY","scopes":["workers"]})"),
                       400, 1003, "maximum_secrets_exceeded: max 1"));
  EXPECT_EQ(secret_names(store), std::vector<std::string>{"SRC"});
}

TEST_F(EmbeddedStoreQuota, DeletingFreesQuota) {
  auto o = options();
  o.max_secrets_per_account = 1;
  reopen(o);
  const std::string store = make_store();
  const std::string a = make_secret(store, "A");
  ASSERT_TRUE(is_success(call(Method::del, secret_path(store, a)), 202));
  EXPECT_NO_THROW(make_secret(store, "B"));
}

// ---------------------------------------------------------------------------------------
// Lists

TEST_F(EmbeddedStoreLists, PagesThroughSecretsAndAnswersAnEmptyPagePastTheEnd) {
  const std::string store = make_store();
  for (int i = 0; i < 5; ++i) make_secret(store, "S" + std::to_string(i), kT0 + i);
  Reply p2 = call(Method::get, secrets_path(store) + "?per_page=2&page=2");
  ASSERT_TRUE(is_success(p2));
  ASSERT_EQ(p2.body["result"].size(), 2u);
  EXPECT_EQ(p2.body["result"][0]["name"], "S2");
  EXPECT_EQ(p2.body["result"][1]["name"], "S3");
  EXPECT_EQ(
      p2.body["result_info"],
      (json{{"page", 2}, {"per_page", 2}, {"count", 2}, {"total_count", 5}, {"total_pages", 3}}));
  Reply past = call(Method::get, secrets_path(store) + "?per_page=2&page=4");
  ASSERT_TRUE(is_success(past));
  EXPECT_TRUE(past.body["result"].is_array());
  EXPECT_TRUE(past.body["result"].empty());
  EXPECT_EQ(past.body["result_info"]["count"], 0);
  EXPECT_EQ(past.body["result_info"]["total_count"], 5);
}

TEST_F(EmbeddedStoreLists, OrdersByTheRequestedFieldAndDirection) {
  const std::string store = make_store();
  make_secret(store, "b", kT0 + 2);
  make_secret(store, "c", kT0);
  make_secret(store, "a", kT0 + 1);
  EXPECT_EQ(secret_names(store), (std::vector<std::string>{"c", "a", "b"}));
  EXPECT_EQ(secret_names(store, "?order=name"), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(secret_names(store, "?order=name&direction=desc"),
            (std::vector<std::string>{"c", "b", "a"}));
  EXPECT_EQ(secret_names(store, "?order=created&direction=desc"),
            (std::vector<std::string>{"b", "a", "c"}));
}

TEST_F(EmbeddedStoreLists, SearchMatchesNameOrCommentIgnoringCase) {
  const std::string store = make_store();
  json items =
      json::array({secret_item("STRIPE_KEY", value_for("s")), secret_item("DB_URL", value_for("d")),
                   secret_item("OTHER", value_for("o"))});
  items[2]["comment"] = "Stripe webhook";
  make_secrets(store, items);
  std::vector<std::string> names = secret_names(store, "?search=stripe&order=name");
  EXPECT_EQ(names, (std::vector<std::string>{"OTHER", "STRIPE_KEY"}));
  EXPECT_EQ(
      call(Method::get, secrets_path(store) + "?search=stripe").body["result_info"]["total_count"],
      2);
}

TEST_F(EmbeddedStoreLists, ScopesFilterKeepsSecretsHoldingEveryListedScope) {
  const std::string store = make_store();
  make_secret(store, "W", kT0, json::array({"workers"}));
  make_secret(store, "WD", kT0 + 1, json::array({"workers", "dex"}));
  make_secret(store, "D", kT0 + 2, json::array({"dex"}));
  EXPECT_EQ(secret_names(store, "?scopes=workers"), (std::vector<std::string>{"W", "WD"}));
  EXPECT_EQ(secret_names(store, "?scopes=workers&scopes=dex"), std::vector<std::string>{"WD"});
}

TEST_F(EmbeddedStoreLists, InvalidListParametersAreRejected) {
  const std::string store = make_store();
  const std::string list = secrets_path(store);
  EXPECT_TRUE(is_error(call(Method::get, list + "?page=0"), 400, 1001, "invalid_page_parameter"));
  EXPECT_TRUE(
      is_error(call(Method::get, list + "?per_page=101"), 400, 1001, "invalid_per_page_parameter"));
  EXPECT_TRUE(
      is_error(call(Method::get, list + "?order=value"), 400, 1001, "invalid_order_parameter"));
  EXPECT_TRUE(is_error(call(Method::get, list + "?direction=up"), 400, 1001,
                       "invalid_direction_parameter"));
  EXPECT_TRUE(
      is_error(call(Method::get, list + "?scopes=mars"), 400, 1001, "secret_scope_invalid"));
}

// ---------------------------------------------------------------------------------------
// Routing and robustness

TEST_F(EmbeddedStoreRouting, AMalformedAccountIdIsA7003RoutingError) {
  Reply r = call(Method::get, "/client/v4/accounts/not-an-account/secrets_store/stores");
  EXPECT_EQ(r.status, 400u);
  EXPECT_FALSE(r.body["success"]);
  ASSERT_EQ(r.body["errors"].size(), 2u);
  EXPECT_EQ(r.body["errors"][0]["code"], 7003);
  EXPECT_EQ(r.body["errors"][1]["code"], 7000);
}

TEST_F(EmbeddedStoreRouting, UnknownPathsAreNoRouteAndWrongMethodsAre405) {
  EXPECT_TRUE(is_error(call(Method::get, base() + "/nope"), 404, 7000, "No route for that URI"));
  EXPECT_TRUE(is_error(call(Method::put, base() + "/stores"), 405, 7001,
                       "Method not allowed for this route"));
}

TEST_F(EmbeddedStoreRouting, GarbageRequestsGetEnvelopesNotExceptions) {
  const std::string store = make_store();
  const std::vector<std::string> bodies = {"",
                                           "null",
                                           "{",
                                           "[[[[",
                                           "\xff\xfe",
                                           "{\"ids\":[1,2]}",
                                           "[{\"name\":1}]",
                                           std::string(1000, '[')};
  const std::vector<std::string> targets = {base() + "/stores",
                                            secrets_path(store),
                                            secret_path(store, std::string(32, 'e')),
                                            base() + "/stores/%zz",
                                            "/",
                                            "",
                                            base() + "/stores?page=%"};
  for (Method m : {Method::get, Method::post, Method::patch, Method::del, Method::put}) {
    for (const auto& t : targets) {
      for (const auto& b : bodies) {
        ApiResponse r;
        ASSERT_NO_THROW(r = store_->handle(ApiRequest{m, t, b}, kT0));
        EXPECT_GE(r.status, 200u);
        EXPECT_LT(r.status, 500u) << t << " " << b << " -> " << r.body;
        EXPECT_TRUE(json::accept(r.body)) << r.body;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Typed API

TEST_F(EmbeddedStoreTypedApi, CreateNormalisesScopesAndValidatesWhatTheParserWouldCheck) {
  auto store = store_->create_store(kAccount, StoreCreate{"main"}, kT0);
  ASSERT_TRUE(store.ok());
  std::vector<SecretCreate> in(1);
  in[0].name = "A";
  in[0].value = "v";
  in[0].scopes = {"workers", "dex", "workers"};
  auto created = store_->create_secrets(kAccount, store->id, in, kT0);
  ASSERT_TRUE(created.ok());
  EXPECT_EQ((*created)[0].scopes, (std::vector<std::string>{"dex", "workers"}));
  EXPECT_EQ((*created)[0].status, SecretStatus::pending);

  auto bad = [&](SecretCreate item) {
    auto r = store_->create_secrets(kAccount, store->id, {std::move(item)}, kT0);
    return r.ok() ? ApiError{} : r.error();
  };
  EXPECT_EQ(bad({"B", "v", {"mars"}, std::nullopt}), errors::validation("secret_scope_invalid"));
  EXPECT_EQ(bad({"B", "v", {}, std::nullopt}), errors::validation("secret_scopes_empty"));
  EXPECT_EQ(bad({"B", "", {"dex"}, std::nullopt}), errors::validation("secret_value_empty"));
  EXPECT_EQ(bad({"B", std::string(kDefaultMaxValueBytes + 1, 'x'), {"dex"}, std::nullopt}),
            errors::secret_value_too_long());
  EXPECT_EQ(bad({"B c", "v", {"dex"}, std::nullopt}), errors::validation("secret_name_invalid"));
  EXPECT_EQ(bad({"B", "v", {"dex"}, std::string(kMaxCommentBytes + 1, 'c')}),
            errors::validation("secret_comment_too_long"));
  EXPECT_EQ(store_->quota(kAccount)->usage, 1);
}

TEST_F(EmbeddedStoreTypedApi, ListsAreSortedByCreationAndReportStatusAtNow) {
  auto o = options();
  o.activation_delay = kSecond;
  reopen(o);
  auto store = store_->create_store(kAccount, StoreCreate{"main"}, kT0);
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE(
      store_->create_secrets(kAccount, store->id, {{"LATE", "v", {"dex"}, {}}}, kT0 + 5).ok());
  ASSERT_TRUE(store_->create_secrets(kAccount, store->id, {{"EARLY", "v", {"dex"}, {}}}, kT0).ok());
  auto list = store_->list_secrets(kAccount, store->id, kT0 + kSecond);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "EARLY");
  EXPECT_EQ((*list)[0].status, SecretStatus::active);
  EXPECT_EQ((*list)[1].name, "LATE");
  EXPECT_EQ((*list)[1].status, SecretStatus::pending);
  EXPECT_FALSE(store_->list_secrets(kOtherAccount, store->id, kT0).ok());
}

// ---------------------------------------------------------------------------------------
// EmbeddedUpstream

struct CallRecord {
  std::optional<CallResult> result;
  std::thread::id resumed_on;
};

boost::asio::awaitable<void> call_and_record(EmbeddedUpstream* upstream, ApiRequest request,
                                             CallRecord* out) {
  CallResult r = co_await upstream->call(std::move(request));
  out->resumed_on = std::this_thread::get_id();
  out->result = std::move(r);
}

void rethrow_if_failed(std::exception_ptr e) {
  if (e) std::rethrow_exception(e);
}

TEST(EmbeddedUpstream, AnswersThroughTheWorkerAndResumesOnTheCallersThread) {
  test::TempDir dir;
  EmbeddedStoreOptions o;
  o.data_path = dir.path() / "store.db";
  o.key = random_bytes(kAesKeyBytes);
  auto store = std::make_shared<EmbeddedStore>(o);
  EmbeddedUpstream upstream(store);
  EXPECT_EQ(upstream.describe(), "embedded");

  boost::asio::io_context io;
  CallRecord created;
  boost::asio::co_spawn(
      io,
      call_and_record(&upstream, ApiRequest{Method::post, base() + "/stores", R"({"name":"main"})"},
                      &created),
      rethrow_if_failed);
  io.run();
  ASSERT_TRUE(created.result.has_value());
  ASSERT_TRUE(created.result->has_value());
  EXPECT_EQ(created.result->value().status, 200u);
  EXPECT_EQ(created.resumed_on, std::this_thread::get_id());
  const json body = json::parse(created.result->value().body);
  const std::string id = body["result"]["id"];
  // The adapter reads the real clock: the timestamp is today, not the epoch.
  const auto created_at = parse_timestamp(body["result"]["created"].get<std::string>());
  ASSERT_TRUE(created_at.has_value());
  EXPECT_GT(*created_at, kT0 - 365LL * 24 * 3600 * kSecond);
  EXPECT_EQ(store->get_store(kAccount, id)->name, "main");
}

TEST(EmbeddedUpstream, ConcurrentCallsAllCompleteWithDistinctResults) {
  test::TempDir dir;
  EmbeddedStoreOptions o;
  o.data_path = dir.path() / "store.db";
  o.key = random_bytes(kAesKeyBytes);
  o.max_stores_per_account = 1;
  auto store = std::make_shared<EmbeddedStore>(o);
  const std::string store_id = store->create_store(kAccount, {"main"}, kT0)->id;
  auto upstream = std::make_unique<EmbeddedUpstream>(store);

  boost::asio::io_context io;
  constexpr int kCalls = 20;
  std::vector<CallRecord> records(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    const json items = json::array({secret_item("S" + std::to_string(i), "v")});
    boost::asio::co_spawn(
        io,
        call_and_record(
            upstream.get(),
            ApiRequest{Method::post, base() + "/stores/" + store_id + "/secrets", items.dump()},
            &records[static_cast<std::size_t>(i)]),
        rethrow_if_failed);
  }
  io.run();
  std::set<std::string> ids;
  for (const auto& r : records) {
    ASSERT_TRUE(r.result.has_value() && r.result->has_value());
    EXPECT_EQ(r.result->value().status, 200u) << r.result->value().body;
    EXPECT_EQ(r.resumed_on, std::this_thread::get_id());
    ids.insert(json::parse(r.result->value().body)["result"][0]["id"].get<std::string>());
  }
  EXPECT_EQ(ids.size(), static_cast<std::size_t>(kCalls));
  upstream.reset();  // joins the worker
  EXPECT_EQ(store->quota(kAccount)->usage, kCalls);
}

}  // namespace
}  // namespace sproxy::upstream
