// EmbeddedStore's secrets: create in batches, activation, patch, delete, bulk delete and
// duplicate, and no value in any response.
#include "tests/upstream/embedded_store_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace embedded_testing;

// ---------------------------------------------------------------------------------------
// Secrets

TEST_F(EmbeddedStoreSecrets, CreateAnswersTheBatchInOrderAsPendingWithSortedScopes) {
  const std::string store = make_store();
  json items = json::array({json{{"name", "STRIPE_KEY"},
                                 {"value", value_for("STRIPE_KEY")},
                                 {"scopes", {"workers", "ai_gateway", "workers"}},
                                 {"comment", "billing"}},
                            secret_item("DB_URL", value_for("DB_URL"), json::array({"dex"}))});
  Reply r = call(Method::post, secrets_path(store), items.dump());
  ASSERT_TRUE(is_success(r));
  const json& out = r.body["result"];
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0]["name"], "STRIPE_KEY");
  EXPECT_EQ(out[1]["name"], "DB_URL");
  EXPECT_EQ(out[0]["scopes"], json::array({"ai_gateway", "workers"}));
  EXPECT_EQ(out[0]["comment"], "billing");
  EXPECT_TRUE(out[1]["comment"].is_null());
  for (const auto& s : out) {
    EXPECT_TRUE(looks_like_new_id(s["id"]));
    EXPECT_EQ(s["store_id"], store);
    EXPECT_EQ(s["status"], "pending");
    EXPECT_EQ(s["created"], format_timestamp(kT0));
    EXPECT_EQ(s["modified"], format_timestamp(kT0));
    EXPECT_FALSE(s.contains("value"));
  }
  EXPECT_NE(out[0]["id"], out[1]["id"]);
  EXPECT_EQ(usage(), 2);
}

TEST_F(EmbeddedStoreSecrets, GetReportsActiveRightAfterCreateWithoutActivationDelay) {
  const std::string store = make_store();
  const std::string id = make_secret(store, "A");
  Reply r = call(Method::get, secret_path(store, id));
  ASSERT_TRUE(is_success(r));
  EXPECT_EQ(r.body["result"]["id"], id);
  EXPECT_EQ(r.body["result"]["name"], "A");
  EXPECT_EQ(r.body["result"]["status"], "active");
}

TEST_F(EmbeddedStoreSecrets, StatusTurnsActiveExactlyWhenTheActivationDelayHasPassed) {
  auto o = options();
  o.activation_delay = 5 * kSecond;
  reopen(o);
  const std::string store = make_store();
  const std::string id = make_secret(store, "A", kT0);
  auto status_at = [&](Micros now) {
    return call(Method::get, secret_path(store, id), "", now).body["result"]["status"];
  };
  EXPECT_EQ(status_at(kT0), "pending");
  EXPECT_EQ(status_at(kT0 + 5 * kSecond - 1), "pending");
  EXPECT_EQ(status_at(kT0 + 5 * kSecond), "active");
  EXPECT_EQ(call(Method::get, secrets_path(store), "", kT0 + kSecond).body["result"][0]["status"],
            "pending");
  EXPECT_EQ(
      call(Method::get, secrets_path(store), "", kT0 + 6 * kSecond).body["result"][0]["status"],
      "active");
}

TEST_F(EmbeddedStoreSecrets, ANameTakenInTheStoreRejectsTheWholeBatch) {
  const std::string store = make_store();
  make_secret(store, "TAKEN");
  json items = json::array(
      {secret_item("FRESH", value_for("FRESH")), secret_item("TAKEN", value_for("TAKEN2"))});
  EXPECT_TRUE(is_error(call(Method::post, secrets_path(store), items.dump()), 400, 1003,
                       "secret_name_already_exists: TAKEN"));
  EXPECT_EQ(secret_names(store), std::vector<std::string>{"TAKEN"});
  EXPECT_EQ(usage(), 1);
}

TEST_F(EmbeddedStoreSecrets, ANameRepeatedInsideTheBatchRejectsTheWholeBatch) {
  const std::string store = make_store();
  json items =
      json::array({secret_item("ONE", value_for("ONE")), secret_item("TWO", value_for("a")),
                   secret_item("TWO", value_for("b"))});
  EXPECT_TRUE(is_error(call(Method::post, secrets_path(store), items.dump()), 400, 1003,
                       "secret_name_already_exists: TWO"));
  EXPECT_TRUE(secret_names(store).empty());
}

TEST_F(EmbeddedStoreSecrets, OneInvalidItemRejectsTheWholeBatch) {
  const std::string store = make_store();
  json items = json::array({secret_item("GOOD", value_for("GOOD")),
                            secret_item("BAD", value_for("BAD"), json::array({"nope"}))});
  EXPECT_TRUE(is_error(call(Method::post, secrets_path(store), items.dump()), 400, 1001,
                       "secret_scope_invalid"));
  json empty_scopes = json::array({secret_item("GOOD", value_for("GOOD3"), json::array())});
  EXPECT_TRUE(is_error(call(Method::post, secrets_path(store), empty_scopes.dump()), 400, 1001,
                       "secret_scopes_empty"));
  json bad_name =
      json::array({secret_item("GOOD", value_for("GOOD2")), secret_item("no way", "v")});
  EXPECT_TRUE(is_error(call(Method::post, secrets_path(store), bad_name.dump()), 400, 1001,
                       "secret_name_invalid"));
  EXPECT_TRUE(is_error(call(Method::post, secrets_path(store), R"({"name":"A"})"), 400, 1001,
                       "invalid_json_body"));
  EXPECT_TRUE(secret_names(store).empty());
  EXPECT_EQ(usage(), 0);
}

TEST_F(EmbeddedStoreSecrets, TheSameNameIsAllowedInAnotherStore) {
  auto o = options();
  o.max_stores_per_account = 2;
  reopen(o);
  const std::string a = make_store("a");
  const std::string b = make_store("b");
  make_secret(a, "SHARED");
  EXPECT_NO_THROW(make_secret(b, "SHARED"));
}

TEST_F(EmbeddedStoreSecrets, AValueAtTheSizeLimitIsAcceptedAndOneByteMoreIsRefused) {
  const std::string store = make_store();
  const std::string at_limit(kDefaultMaxValueBytes, 'v');
  const std::string over_limit(kDefaultMaxValueBytes + 1, 'v');
  Reply ok =
      call(Method::post, secrets_path(store), json::array({secret_item("AT", at_limit)}).dump());
  ASSERT_TRUE(is_success(ok));
  EXPECT_EQ(store_->reveal_value_for_test(store, ok.body["result"][0]["id"]).value(), at_limit);
  EXPECT_TRUE(is_error(call(Method::post, secrets_path(store),
                            json::array({secret_item("OVER", over_limit)}).dump()),
                       400, 1001, "secret_value_too_long"));
  EXPECT_TRUE(is_error(call(Method::patch, secret_path(store, ok.body["result"][0]["id"]),
                            json{{"value", over_limit}}.dump()),
                       400, 1001, "secret_value_too_long"));
  EXPECT_EQ(secret_names(store), std::vector<std::string>{"AT"});
}

TEST_F(EmbeddedStoreSecrets, AConfiguredValueSizeLimitApplies) {
  auto o = options();
  o.max_value_bytes = 16;
  reopen(o);
  const std::string store = make_store();
  EXPECT_TRUE(is_success(call(Method::post, secrets_path(store),
                              json::array({secret_item("AT", std::string(16, 'x'))}).dump())));
  EXPECT_TRUE(is_error(call(Method::post, secrets_path(store),
                            json::array({secret_item("OVER", std::string(17, 'x'))}).dump()),
                       400, 1001, "secret_value_too_long"));
}

TEST_F(EmbeddedStoreSecrets, CallsUnderAnUnknownStoreAnswerStoreNotFoundBeforeAnythingElse) {
  const std::string store = make_store();
  const std::string secret = make_secret(store, "A");
  const std::string missing = std::string(32, 'b');
  const std::string under = base() + "/stores/" + missing + "/secrets";
  auto not_found = [](const Reply& r) { return is_error(r, 404, 1001, "store_not_found"); };
  EXPECT_TRUE(not_found(call(Method::get, under + "?per_page=0")));
  EXPECT_TRUE(not_found(call(Method::post, under, "not json")));
  EXPECT_TRUE(not_found(call(Method::del, under, "not json")));
  EXPECT_TRUE(not_found(call(Method::get, under + "/" + secret)));
  EXPECT_TRUE(not_found(call(Method::patch, under + "/" + secret, "not json")));
  EXPECT_TRUE(not_found(call(Method::del, under + "/" + secret)));
  EXPECT_TRUE(not_found(call(Method::post, under + "/" + secret + "/duplicate", "not json")));
}

TEST_F(EmbeddedStoreSecrets, UnknownMalformedOrForeignSecretIdsAreNotFound) {
  auto o = options();
  o.max_stores_per_account = 2;
  reopen(o);
  const std::string store = make_store("a");
  const std::string other_store = make_store("b");
  const std::string foreign = make_secret(other_store, "F");
  for (const std::string& id :
       {std::string(32, 'c'), std::string("0123abcd-0123-4567-89ab-0123456789ab"), foreign}) {
    SCOPED_TRACE(id);
    auto not_found = [](const Reply& r) { return is_error(r, 404, 1001, "secret_not_found"); };
    EXPECT_TRUE(not_found(call(Method::get, secret_path(store, id))));
    EXPECT_TRUE(not_found(call(Method::patch, secret_path(store, id), R"({"comment":"x"})")));
    EXPECT_TRUE(not_found(call(Method::patch, secret_path(store, id), "not json")));
    EXPECT_TRUE(not_found(call(Method::del, secret_path(store, id))));
    EXPECT_TRUE(not_found(call(Method::post, secret_path(store, id) + "/duplicate",
                               R"({"name":"COPY","scopes":["workers"]})")));
  }
  EXPECT_TRUE(is_success(call(Method::get, secret_path(other_store, foreign))));
}

TEST_F(EmbeddedStoreSecrets, PatchUpdatesScopesAndCommentAndBumpsModified) {
  const std::string store = make_store();
  const std::string id = make_secret(store, "A", kT0);
  Reply r = call(Method::patch, secret_path(store, id),
                 R"({"scopes":["workers","dex","dex"],"comment":"rotated"})", kT0 + kSecond);
  ASSERT_TRUE(is_success(r));
  const json& s = r.body["result"];
  EXPECT_EQ(s["scopes"], json::array({"dex", "workers"}));
  EXPECT_EQ(s["comment"], "rotated");
  EXPECT_EQ(s["created"], format_timestamp(kT0));
  EXPECT_EQ(s["modified"], format_timestamp(kT0 + kSecond));
  EXPECT_EQ(s["status"], "active");  // the value did not change
  Reply again = call(Method::get, secret_path(store, id), "", kT0 + 2 * kSecond);
  EXPECT_EQ(again.body["result"]["comment"], "rotated");
  EXPECT_EQ(again.body["result"]["modified"], format_timestamp(kT0 + kSecond));
}

TEST_F(EmbeddedStoreSecrets, PatchWithAValueReplacesItAndMakesTheSecretPendingAgain) {
  auto o = options();
  o.activation_delay = 10 * kSecond;
  reopen(o);
  const std::string store = make_store();
  const std::string id = make_secret(store, "A", kT0);
  EXPECT_EQ(
      call(Method::get, secret_path(store, id), "", kT0 + 10 * kSecond).body["result"]["status"],
      "active");
  const std::string fresh = value_for("A-rotated");
  Reply r = call(Method::patch, secret_path(store, id), json{{"value", fresh}}.dump(),
                 kT0 + 20 * kSecond);
  ASSERT_TRUE(is_success(r));
  EXPECT_EQ(r.body["result"]["status"], "pending");
  EXPECT_EQ(r.body["result"]["modified"], format_timestamp(kT0 + 20 * kSecond));
  auto status_at = [&](Micros now) {
    return call(Method::get, secret_path(store, id), "", now).body["result"]["status"];
  };
  EXPECT_EQ(status_at(kT0 + 29 * kSecond), "pending");
  EXPECT_EQ(status_at(kT0 + 30 * kSecond), "active");
  EXPECT_EQ(store_->reveal_value_for_test(store, id).value(), fresh);
}

TEST_F(EmbeddedStoreSecrets, AValuePatchAnswersPendingEvenWithoutActivationDelay) {
  const std::string store = make_store();
  const std::string id = make_secret(store, "A", kT0);
  Reply r = call(Method::patch, secret_path(store, id), json{{"value", value_for("B")}}.dump(),
                 kT0 + kSecond);
  ASSERT_TRUE(is_success(r));
  EXPECT_EQ(r.body["result"]["status"], "pending");
  EXPECT_EQ(call(Method::get, secret_path(store, id), "", kT0 + kSecond).body["result"]["status"],
            "active");
}

TEST_F(EmbeddedStoreSecrets, AnEmptyPatchChangesNothingNotEvenModified) {
  const std::string store = make_store();
  const std::string id = make_secret(store, "A", kT0);
  const json before = call(Method::get, secret_path(store, id), "", kT0).body["result"];
  Reply r = call(Method::patch, secret_path(store, id), "{}", kT0 + kSecond);
  ASSERT_TRUE(is_success(r));
  EXPECT_EQ(r.body["result"]["modified"], format_timestamp(kT0));
  close();
  reopen(options());
  EXPECT_EQ(call(Method::get, secret_path(store, id), "", kT0).body["result"], before);
}

TEST_F(EmbeddedStoreSecrets, PatchCannotRenameASecret) {
  const std::string store = make_store();
  const std::string id = make_secret(store, "A");
  EXPECT_TRUE(is_error(call(Method::patch, secret_path(store, id), R"({"name":"B"})"), 400, 1001,
                       "secret_name_immutable"));
  EXPECT_EQ(secret_names(store), std::vector<std::string>{"A"});
}

TEST_F(EmbeddedStoreSecrets, PatchWithANullCommentClearsIt) {
  const std::string store = make_store();
  json item = secret_item("A", value_for("A"));
  item["comment"] = "note";
  const std::string id = make_secrets(store, json::array({item}))[0]["id"];
  Reply r = call(Method::patch, secret_path(store, id), R"({"comment":null})", kT0 + 1);
  ASSERT_TRUE(is_success(r));
  EXPECT_TRUE(r.body["result"]["comment"].is_null());
  EXPECT_TRUE(call(Method::get, secret_path(store, id)).body["result"]["comment"].is_null());
}

TEST_F(EmbeddedStoreSecrets, DeleteAnswers202WithANullResultAndRemovesTheSecret) {
  const std::string store = make_store();
  const std::string id = make_secret(store, "A");
  make_secret(store, "B");
  Reply r = call(Method::del, secret_path(store, id));
  ASSERT_TRUE(is_success(r, 202));
  EXPECT_TRUE(r.body["result"].is_null());
  EXPECT_TRUE(is_error(call(Method::get, secret_path(store, id)), 404, 1001, "secret_not_found"));
  EXPECT_TRUE(is_error(call(Method::del, secret_path(store, id)), 404, 1001, "secret_not_found"));
  EXPECT_EQ(secret_names(store), std::vector<std::string>{"B"});
  // The name is free again.
  EXPECT_NO_THROW(make_secret(store, "A"));
}

TEST_F(EmbeddedStoreSecrets, BulkDeleteRemovesEveryListedSecret) {
  const std::string store = make_store();
  const std::string a = make_secret(store, "A");
  const std::string b = make_secret(store, "B");
  make_secret(store, "C");
  Reply r = call(Method::del, secrets_path(store), json{{"ids", {a, b, a}}}.dump());
  ASSERT_TRUE(is_success(r, 202));
  EXPECT_TRUE(r.body["result"].is_null());
  EXPECT_EQ(secret_names(store), std::vector<std::string>{"C"});
  EXPECT_EQ(usage(), 1);
}

TEST_F(EmbeddedStoreSecrets, BulkDeleteWithOneUnknownIdDeletesNothing) {
  auto o = options();
  o.max_stores_per_account = 2;
  reopen(o);
  const std::string store = make_store();
  const std::string other = make_store("other");
  const std::string a = make_secret(store, "A");
  const std::string foreign = make_secret(other, "F");
  EXPECT_TRUE(is_error(
      call(Method::del, secrets_path(store), json{{"ids", {a, std::string(32, 'd')}}}.dump()), 404,
      1001, "secret_not_found"));
  EXPECT_TRUE(is_error(call(Method::del, secrets_path(store), json{{"ids", {a, foreign}}}.dump()),
                       404, 1001, "secret_not_found"));
  EXPECT_TRUE(is_success(call(Method::get, secret_path(store, a))));
  EXPECT_TRUE(is_success(call(Method::get, secret_path(other, foreign))));
  EXPECT_EQ(usage(), 2);
}

TEST_F(EmbeddedStoreSecrets, BulkDeleteNeedsAnIdsObject) {
  const std::string store = make_store();
  const std::string a = make_secret(store, "A");
  for (const std::string& body :
       {std::string(), std::string("nope"), json::array({a}).dump(), json{{"ids", a}}.dump()}) {
    SCOPED_TRACE(body);
    EXPECT_TRUE(
        is_error(call(Method::del, secrets_path(store), body), 400, 1001, "invalid_json_body"));
  }
  EXPECT_EQ(usage(), 1);
}

TEST_F(EmbeddedStoreSecrets, DuplicateCopiesTheValueUnderANewIdAndName) {
  const std::string store = make_store();
  const std::string src = make_secret(store, "SRC", kT0);
  Reply r = call(Method::post, secret_path(store, src) + "/duplicate",
                 R"({"name":"COPY","scopes":["dex","access"],"comment":"copied"})", kT0 + kSecond);
  ASSERT_TRUE(is_success(r));
  const json& s = r.body["result"];
  EXPECT_TRUE(looks_like_new_id(s["id"]));
  EXPECT_NE(s["id"], src);
  EXPECT_EQ(s["store_id"], store);
  EXPECT_EQ(s["name"], "COPY");
  EXPECT_EQ(s["scopes"], json::array({"access", "dex"}));
  EXPECT_EQ(s["comment"], "copied");
  EXPECT_EQ(s["status"], "pending");
  EXPECT_EQ(s["created"], format_timestamp(kT0 + kSecond));
  EXPECT_EQ(store_->reveal_value_for_test(store, s["id"]).value(),
            store_->reveal_value_for_test(store, src).value());
  EXPECT_EQ(usage(), 2);
}

TEST_F(EmbeddedStoreSecrets, DuplicateNeedsAFreeNameAndAValidBody) {
  const std::string store = make_store();
  const std::string src = make_secret(store, "SRC");
  make_secret(store, "TAKEN");
  const std::string dup = secret_path(store, src) + "/duplicate";
  EXPECT_TRUE(is_error(call(Method::post, dup, R"({"name":"TAKEN","scopes":["workers"]})"), 400,
                       1003, "secret_name_already_exists: TAKEN"));
  EXPECT_TRUE(is_error(call(Method::post, dup, R"({"name":"SRC","scopes":["workers"]})"), 400, 1003,
                       "secret_name_already_exists: SRC"));
  EXPECT_TRUE(is_error(call(Method::post, dup, R"({"name":"X","scopes":["mars"]})"), 400, 1001,
                       "secret_scope_invalid"));
  EXPECT_TRUE(is_error(call(Method::post, dup, R"({"name":"X","scopes":[]})"), 400, 1001,
                       "secret_scopes_empty"));
  EXPECT_TRUE(is_error(call(Method::post, dup, "[]"), 400, 1001, "invalid_json_body"));
  EXPECT_EQ(usage(), 2);
}

TEST_F(EmbeddedStoreSecrets, SecretResponsesNeverCarryTheValue) {
  const std::string store = make_store();
  const std::string value = value_for("A");
  Reply created =
      call(Method::post, secrets_path(store), json::array({secret_item("A", value)}).dump());
  const std::string id = created.body["result"][0]["id"];
  std::vector<Reply> replies{
      created,
      call(Method::get, secret_path(store, id)),
      call(Method::get, secrets_path(store)),
      call(Method::patch, secret_path(store, id), json{{"value", value + "2"}}.dump()),
      call(Method::post, secret_path(store, id) + "/duplicate",
           R"({"name":"B","scopes":["workers"]})"),
      call(Method::post, secrets_path(store), json::array({secret_item("A", value)}).dump()),
  };
  for (const auto& r : replies) {
    EXPECT_EQ(r.raw.find(value), std::string::npos) << r.raw;
    EXPECT_EQ(r.raw.find("\"value\""), std::string::npos) << r.raw;
  }
}

}  // namespace
}  // namespace sproxy::upstream
