#include "upstream/embedded_store.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/raw_db.hpp"
#include "tests/support/store_key_fixture.hpp"
#include "tests/support/temp_dir.hpp"
#include "upstream/crypto.hpp"
#include "upstream/embedded_upstream.hpp"

namespace sproxy::upstream {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::RawDb;

const std::string kAccount = "0123456789abcdef0123456789abcdef";
const std::string kOtherAccount = "fedcba9876543210fedcba9876543210";
constexpr Micros kT0 = 1'772'366'400'123'456;  // 2026-03-01T12:00:00.123456Z
constexpr Micros kSecond = 1'000'000;

// A fresh directory under the test temp dir, removed with everything in it.
std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& p, const std::string& content, mode_t mode) {
  {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << content;
  }
  ::chmod(p.c_str(), mode);
}

std::string base(const std::string& account = kAccount) {
  return "/client/v4/accounts/" + account + "/secrets_store";
}

bool looks_like_new_id(const std::string& id) { return is_valid_id(id) && id[12] == '4'; }

struct Reply {
  unsigned status = 0;
  json body;
  std::string raw;
};

testing::AssertionResult is_error(const Reply& r, unsigned status, int code,
                                  const std::string& message) {
  if (r.status != status) {
    return testing::AssertionFailure()
           << "status " << r.status << " != " << status << ": " << r.raw;
  }
  const json& b = r.body;
  if (b.value("success", true) || !b.contains("result") || !b["result"].is_null() ||
      !b["errors"].is_array() || b["errors"].empty()) {
    return testing::AssertionFailure() << "not an error envelope: " << r.raw;
  }
  if (b["errors"][0].value("code", 0) != code || b["errors"][0].value("message", "") != message) {
    return testing::AssertionFailure()
           << "expected {" << code << ", " << message << "}, got " << r.raw;
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult is_success(const Reply& r, unsigned status = 200) {
  if (r.status != status || !r.body.value("success", false) || !r.body["errors"].empty()) {
    return testing::AssertionFailure()
           << "expected success " << status << ", got " << r.status << ": " << r.raw;
  }
  return testing::AssertionSuccess();
}

json secret_item(const std::string& name, const std::string& value,
                 json scopes = json::array({"workers"})) {
  return json{{"name", name}, {"value", value}, {"scopes", std::move(scopes)}};
}

// ---------------------------------------------------------------------------------------

class EmbeddedStoreTest : public testing::Test {
 protected:
  EmbeddedStoreTest() : key_(random_bytes(kAesKeyBytes)) {}

  EmbeddedStoreOptions options() const {
    EmbeddedStoreOptions o;
    o.data_path = db_path();
    o.key = key_;
    return o;
  }
  fs::path db_path() const { return dir_.path() / "data" / "store.db"; }

  void SetUp() override { reopen(options()); }

  // Every response of every test is checked: no value written through value_for() may
  // appear in any of them.
  void TearDown() override {
    for (const auto& body : bodies_) {
      for (const auto& value : values_) {
        EXPECT_EQ(body.find(value), std::string::npos) << "a secret value leaked into " << body;
      }
    }
  }

  void reopen(EmbeddedStoreOptions o) {
    store_.reset();
    store_ = std::make_unique<EmbeddedStore>(std::move(o));
  }
  void close() { store_.reset(); }

  // A distinctive value that cannot occur in a response by accident.
  std::string value_for(const std::string& name) {
    std::string v = "value-of-" + name + "-" + to_hex(random_bytes(8));
    values_.insert(v);
    return v;
  }

  Reply call(Method m, const std::string& target, std::string body = "", Micros now = kT0) {
    ApiResponse r = store_->handle(ApiRequest{m, target, std::move(body)}, now);
    bodies_.push_back(r.body);
    Reply out;
    out.status = r.status;
    out.raw = r.body;
    out.body = json::parse(r.body);
    return out;
  }

  std::string make_store(const std::string& name = "main", const std::string& account = kAccount,
                         Micros now = kT0) {
    Reply r = call(Method::post, base(account) + "/stores", json{{"name", name}}.dump(), now);
    if (r.status != 200) throw std::runtime_error("store create failed: " + r.raw);
    return r.body["result"]["id"];
  }

  json make_secrets(const std::string& store_id, const json& items, Micros now = kT0,
                    const std::string& account = kAccount) {
    Reply r =
        call(Method::post, base(account) + "/stores/" + store_id + "/secrets", items.dump(), now);
    if (r.status != 200) throw std::runtime_error("secret create failed: " + r.raw);
    return r.body["result"];
  }

  std::string make_secret(const std::string& store_id, const std::string& name, Micros now = kT0,
                          json scopes = json::array({"workers"})) {
    return make_secrets(store_id, json::array({secret_item(name, value_for(name), scopes)}),
                        now)[0]["id"];
  }

  std::string secrets_path(const std::string& store_id) {
    return base() + "/stores/" + store_id + "/secrets";
  }
  std::string secret_path(const std::string& store_id, const std::string& secret_id) {
    return secrets_path(store_id) + "/" + secret_id;
  }

  long usage() { return call(Method::get, base() + "/quota").body["result"]["secrets"]["usage"]; }
  std::vector<std::string> secret_names(const std::string& store_id,
                                        const std::string& query = "") {
    Reply r = call(Method::get, secrets_path(store_id) + query);
    std::vector<std::string> names;
    for (const auto& s : r.body["result"]) names.push_back(s["name"]);
    return names;
  }

  test::TempDir dir_;
  std::string key_;
  std::unique_ptr<EmbeddedStore> store_;
  std::vector<std::string> bodies_;
  std::set<std::string> values_;
};

class EmbeddedStoreStores : public EmbeddedStoreTest {};
class EmbeddedStoreSecrets : public EmbeddedStoreTest {};
class EmbeddedStoreQuota : public EmbeddedStoreTest {};
class EmbeddedStoreLists : public EmbeddedStoreTest {};
class EmbeddedStoreRouting : public EmbeddedStoreTest {};
class EmbeddedStorePersistence : public EmbeddedStoreTest {};
class EmbeddedStoreTypedApi : public EmbeddedStoreTest {};

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
// Persistence and encryption at rest

TEST_F(EmbeddedStorePersistence, ReopeningTheFileRestoresEveryStoreAndSecretExactly) {
  auto o = options();
  o.max_stores_per_account = 2;
  reopen(o);
  const std::string a = make_store("a", kAccount, kT0);
  const std::string b = make_store("b", kAccount, kT0 + 1);
  const std::string gone = make_store("gone", kOtherAccount, kT0 + 2);
  json items = json::array({secret_item("ONE", value_for("ONE"), json::array({"dex", "workers"})),
                            secret_item("TWO", value_for("TWO"))});
  items[0]["comment"] = "first";
  const json created = make_secrets(a, items, kT0 + 3);
  const std::string one = created[0]["id"];
  const std::string two = created[1]["id"];
  ASSERT_TRUE(
      is_success(call(Method::patch, secret_path(a, one),
                      json{{"value", value_for("ONE-v2")}, {"comment", nullptr}}.dump(), kT0 + 4)));
  ASSERT_TRUE(is_success(call(Method::post, secret_path(a, two) + "/duplicate",
                              R"({"name":"THREE","scopes":["access"]})", kT0 + 5)));
  const std::string doomed = make_secret(b, "DOOMED", kT0 + 6);
  ASSERT_TRUE(is_success(call(Method::del, secret_path(b, doomed)), 202));
  ASSERT_TRUE(is_success(call(Method::del, base(kOtherAccount) + "/stores/" + gone)));

  const Micros later = kT0 + 100;
  const auto stores_before = store_->list_stores(kAccount).value();
  const auto a_before = store_->list_secrets(kAccount, a, later).value();
  const auto b_before = store_->list_secrets(kAccount, b, later).value();
  std::vector<std::string> values_before;
  for (const auto& s : a_before)
    values_before.push_back(store_->reveal_value_for_test(a, s.id).value());

  close();
  reopen(o);

  EXPECT_EQ(store_->list_stores(kAccount).value(), stores_before);
  EXPECT_TRUE(store_->list_stores(kOtherAccount)->empty());
  const auto a_after = store_->list_secrets(kAccount, a, later).value();
  EXPECT_EQ(a_after, a_before);
  EXPECT_EQ(store_->list_secrets(kAccount, b, later).value(), b_before);
  ASSERT_EQ(a_after.size(), 3u);
  for (std::size_t i = 0; i < a_after.size(); ++i) {
    EXPECT_EQ(store_->reveal_value_for_test(a, a_after[i].id).value(), values_before[i]);
  }
  auto reloaded_one = store_->get_secret(kAccount, a, one, later);
  ASSERT_TRUE(reloaded_one.ok());
  EXPECT_EQ(reloaded_one->comment, std::nullopt);
  EXPECT_EQ(reloaded_one->scopes, (std::vector<std::string>{"dex", "workers"}));
  EXPECT_EQ(reloaded_one->created, kT0 + 3);
  EXPECT_EQ(reloaded_one->modified, kT0 + 4);
  EXPECT_EQ(store_->quota(kAccount)->usage, 3);
  // Name uniqueness and limits still hold after the reload.
  EXPECT_TRUE(is_error(
      call(Method::post, secrets_path(a), json::array({secret_item("TWO", value_for("x"))}).dump()),
      400, 1003, "secret_name_already_exists: TWO"));
  EXPECT_TRUE(is_error(call(Method::post, base() + "/stores", R"({"name":"c"})"), 400, 1003,
                       "maximum_stores_exceeded"));
}

TEST_F(EmbeddedStorePersistence, ValuesAreEncryptedAtRestUnderTheSecretId) {
  const std::string store = make_store();
  const std::string value = value_for("PLAIN");
  const std::string id = make_secrets(store, json::array({secret_item("PLAIN", value)}))[0]["id"];
  EXPECT_EQ(store_->reveal_value_for_test(store, id).value(), value);

  // While open, the value lives in the WAL or the main file; neither holds the plaintext.
  const fs::path wal = db_path().string() + "-wal";
  EXPECT_EQ(read_file(db_path()).find(value), std::string::npos);
  EXPECT_EQ(read_file(wal).find(value), std::string::npos);
  close();
  EXPECT_EQ(read_file(db_path()).find(value), std::string::npos);

  const std::string blob = RawDb(db_path()).value_of(id);
  EXPECT_EQ(blob.size(), kGcmNonceBytes + value.size() + kGcmTagBytes);
  EXPECT_EQ(blob.find(value), std::string::npos);
  EXPECT_EQ(aes_gcm_open(key_, blob, id), value);
  EXPECT_EQ(aes_gcm_open(key_, blob, std::string(32, '0')), std::nullopt);
}

TEST_F(EmbeddedStorePersistence, TamperedCiphertextFailsToOpenAndIsNeverCopied) {
  const std::string store = make_store();
  const std::string id = make_secret(store, "A");
  close();
  {
    RawDb raw(db_path());
    std::string blob = raw.value_of(id);
    ASSERT_GT(blob.size(), kGcmNonceBytes + kGcmTagBytes);
    blob[kGcmNonceBytes] = static_cast<char>(blob[kGcmNonceBytes] ^ 0x01);  // first ciphertext byte
    raw.set_value(id, blob);
  }
  reopen(options());
  auto revealed = store_->reveal_value_for_test(store, id);
  ASSERT_FALSE(revealed.ok());
  EXPECT_EQ(revealed.error(), errors::internal_error());
  // Metadata reads still work; a duplicate cannot launder the broken value.
  EXPECT_TRUE(is_success(call(Method::get, secret_path(store, id))));
  EXPECT_TRUE(is_error(call(Method::post, secret_path(store, id) + "/duplicate",
                            R"({"name":"B","scopes":["workers"]})"),
                       500, 1002, "internal_error"));
  EXPECT_EQ(usage(), 1);
}

TEST_F(EmbeddedStorePersistence, ACiphertextMovedToAnotherSecretFailsToOpen) {
  const std::string store = make_store();
  const std::string a = make_secret(store, "A");
  const std::string b = make_secret(store, "B");
  close();
  {
    RawDb raw(db_path());
    raw.set_value(b, raw.value_of(a));
  }
  reopen(options());
  EXPECT_TRUE(store_->reveal_value_for_test(store, a).ok());
  EXPECT_FALSE(store_->reveal_value_for_test(store, b).ok());
}

TEST_F(EmbeddedStorePersistence, AnotherKeyCannotOpenTheValues) {
  const std::string store = make_store();
  const std::string id = make_secret(store, "A");
  close();
  auto o = options();
  o.key = random_bytes(kAesKeyBytes);
  EXPECT_THROW(EmbeddedStore{o}, std::runtime_error);  // the key check refuses it at start
  RawDb raw(db_path());
  EXPECT_FALSE(aes_gcm_open(o.key, raw.value_of(id), id).has_value());
  EXPECT_TRUE(aes_gcm_open(key_, raw.value_of(id), id).has_value());
}

// Runs in a death-test child: caps the size any file may grow to, so the next large write
// fails on disk. Returns 0 when the store answered as expected, else prints why.
int write_under_a_file_size_cap(EmbeddedStoreOptions o, const std::string& store_id,
                                const std::string& big_value) {
  std::signal(SIGXFSZ, SIG_IGN);  // a capped write then fails with EFBIG instead of killing
  const fs::path db = o.data_path;
  EmbeddedStore s(std::move(o));  // a fresh open starts with an empty WAL
  rlimit original{};
  ::getrlimit(RLIMIT_FSIZE, &original);
  rlimit capped = original;
  capped.rlim_cur = static_cast<rlim_t>(fs::file_size(db)) + 4096;
  if (::setrlimit(RLIMIT_FSIZE, &capped) != 0) return 10;
  const std::string secrets = base() + "/stores/" + store_id + "/secrets";
  ApiResponse failed = s.handle(
      ApiRequest{Method::post, secrets, json::array({secret_item("BIG", big_value)}).dump()},
      kT0 + 1);
  ::setrlimit(RLIMIT_FSIZE, &original);
  const json body = json::parse(failed.body);
  if (failed.status != 503 || body["errors"][0]["code"] != 1002 ||
      !body["errors"][0]["message"].get<std::string>().starts_with(
          "service_unavailable: storage: ")) {
    std::fprintf(stderr, "unexpected answer to the capped write: %u %s\n", failed.status,
                 failed.body.c_str());
    return 1;
  }
  if (failed.body.find(big_value) != std::string::npos) return 2;
  if (s.list_secrets(kAccount, store_id, kT0)->size() != 1 || s.quota(kAccount)->usage != 1) {
    return 3;  // the mirror must not show the rolled-back secret
  }
  // A failed write is not fatal: once space is back, writes succeed again.
  ApiResponse after = s.handle(
      ApiRequest{Method::post, secrets, json::array({secret_item("AFTER", "small")}).dump()},
      kT0 + 2);
  if (after.status != 200) {
    std::fprintf(stderr, "write after the failure: %u %s\n", after.status, after.body.c_str());
    return 4;
  }
  return 0;
}

TEST_F(EmbeddedStorePersistence, AWriteThatFailsOnDiskRollsBackAndLeavesTheStoreUsable) {
  const std::string store = make_store();
  make_secret(store, "KEPT", kT0);
  const std::string big = value_for("BIG") + std::string(60000, 'z');
  close();
  EXPECT_EXIT(std::exit(write_under_a_file_size_cap(options(), store, big)),
              testing::ExitedWithCode(0), "");
  reopen(options());
  EXPECT_EQ(secret_names(store), (std::vector<std::string>{"KEPT", "AFTER"}));
  EXPECT_EQ(usage(), 2);
  close();
  RawDb raw(db_path());
  EXPECT_EQ(raw.text("PRAGMA integrity_check"), "ok");
}

TEST_F(EmbeddedStorePersistence, ASecondInstanceOnTheSameFileIsRefusedWhileTheFirstIsOpen) {
  make_store();
  try {
    EmbeddedStore second(options());
    FAIL() << "a second instance opened the same database";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("locked"), std::string::npos) << e.what();
  }
  EXPECT_EQ(store_->list_stores(kAccount)->size(), 1u);
  EXPECT_TRUE(is_success(call(Method::post, base(kOtherAccount) + "/stores", R"({"name":"x"})")));
}

TEST_F(EmbeddedStorePersistence, UsesWalFullSyncAndOwnerOnlyPermissions) {
  make_store();
  struct stat st {};
  ASSERT_EQ(::stat(db_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  close();
  RawDb raw(db_path());
  EXPECT_EQ(raw.text("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(raw.text("PRAGMA user_version"), "2");
  EXPECT_EQ(raw.text("PRAGMA integrity_check"), "ok");
}

TEST_F(EmbeddedStorePersistence, ANewerSchemaVersionIsAStartUpError) {
  close();
  {
    RawDb raw(db_path());
    raw.exec("PRAGMA user_version = 3");
  }
  try {
    EmbeddedStore s(options());
    FAIL() << "opened a database from the future";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("schema version 3"), std::string::npos) << e.what();
  }
}

TEST_F(EmbeddedStorePersistence, AFileThatIsNotADatabaseIsAStartUpError) {
  close();
  const fs::path bad = dir_.path() / "garbage.db";
  write_file(bad, std::string(8192, 'g'), 0600);
  auto o = options();
  o.data_path = bad;
  EXPECT_THROW(EmbeddedStore{o}, std::runtime_error);
}

TEST_F(EmbeddedStorePersistence, AKeyOfTheWrongLengthIsAStartUpError) {
  close();
  auto o = options();
  o.key = "short";
  EXPECT_THROW(EmbeddedStore{o}, std::runtime_error);
}

// ---------------------------------------------------------------------------------------
// Key resolution

using EmbeddedStoreKey = test::StoreKeyFixture;

TEST_F(EmbeddedStoreKey, CreatesAKeyFileWithMode0600OnFirstUseAndReusesIt) {
  {
    EmbeddedStore created(embedded_store_options(cfg_));  // a new database: creates the key file
  }
  const EmbeddedStoreOptions first = embedded_store_options(cfg_);
  EXPECT_EQ(first.key.size(), kAesKeyBytes);
  struct stat st {};
  ASSERT_EQ(::stat(cfg_.key_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string content = read_file(cfg_.key_file);
  ASSERT_EQ(content.size(), 65u);
  EXPECT_EQ(content.back(), '\n');
  EXPECT_EQ(from_hex(content.substr(0, 64)), first.key);
  // Written to a temp file and linked into place: nothing else is left beside it.
  std::vector<std::string> beside;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::filesystem::path(cfg_.key_file).parent_path())) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(std::filesystem::path(cfg_.key_file).filename().string(), 0) == 0) {
      beside.push_back(name);
    }
  }
  EXPECT_EQ(beside.size(), 1u) << "key file and leftovers: " << ::testing::PrintToString(beside);

  const EmbeddedStoreOptions second = embedded_store_options(cfg_);
  EXPECT_EQ(second.key, first.key);
  EXPECT_EQ(read_file(cfg_.key_file), content);

  // A store sealed with the first key opens with the reused one.
  std::string secret_id;
  std::string store_id;
  {
    EmbeddedStore s(first);
    store_id = s.create_store(kAccount, {"main"}, kT0)->id;
    secret_id = s.create_secrets(kAccount, store_id, {{"A", "hello", {"dex"}, {}}}, kT0)->at(0).id;
  }
  EmbeddedStore again(second);
  EXPECT_EQ(again.reveal_value_for_test(store_id, secret_id).value(), "hello");
}

TEST_F(EmbeddedStoreKey, AcceptsAKeyFileWithoutTrailingNewline) {
  const std::string key = random_bytes(kAesKeyBytes);
  fs::create_directories(fs::path(cfg_.key_file).parent_path());
  write_file(cfg_.key_file, to_hex(key), 0600);
  EXPECT_EQ(embedded_store_options(cfg_).key, key);
}

TEST_F(EmbeddedStoreKey, TheEnvironmentVariableTakesPrecedenceOverTheKeyFile) {
  const std::string key = random_bytes(kAesKeyBytes);
  ::setenv(env_.c_str(), to_hex(key).c_str(), 1);
  EXPECT_EQ(embedded_store_options(cfg_).key, key);
  EXPECT_FALSE(fs::exists(cfg_.key_file));
}

TEST_F(EmbeddedStoreKey, AMalformedEnvironmentKeyIsAStartUpError) {
  for (const std::string& bad :
       {std::string(), std::string(63, 'a'), std::string(66, 'a'), std::string(63, 'a') + "g"}) {
    ::setenv(env_.c_str(), bad.c_str(), 1);
    const std::string err = options_error();
    EXPECT_NE(err.find(env_), std::string::npos) << err;
    EXPECT_NE(err.find("64 hex"), std::string::npos) << err;
  }
  EXPECT_FALSE(fs::exists(cfg_.key_file));
}

TEST_F(EmbeddedStoreKey, AKeyFileWithWrongContentIsAStartUpError) {
  fs::create_directories(fs::path(cfg_.key_file).parent_path());
  const std::string hex = to_hex(random_bytes(kAesKeyBytes));
  for (const std::string& bad : {std::string(), hex.substr(0, 62) + "\n", hex + "\n\n", hex + "00",
                                 " " + hex, hex.substr(0, 63) + "x"}) {
    write_file(cfg_.key_file, bad, 0600);
    const std::string err = options_error();
    EXPECT_NE(err.find(cfg_.key_file), std::string::npos) << err;
    EXPECT_NE(err.find("64 hex"), std::string::npos) << err;
    // The message never echoes key material.
    EXPECT_EQ(err.find(hex.substr(0, 16)), std::string::npos) << err;
  }
}

TEST_F(EmbeddedStoreKey, AKeyFileOpenToGroupOrOthersIsAStartUpError) {
  fs::create_directories(fs::path(cfg_.key_file).parent_path());
  for (mode_t mode : {0640, 0604, 0660, 0644}) {
    write_file(cfg_.key_file, to_hex(random_bytes(kAesKeyBytes)) + "\n", mode);
    const std::string err = options_error();
    EXPECT_NE(err.find(cfg_.key_file), std::string::npos) << err;
    EXPECT_NE(err.find("chmod 600"), std::string::npos) << err;
  }
  ::chmod(cfg_.key_file.c_str(), 0400);
  EXPECT_EQ(options_error(), "");
}

TEST_F(EmbeddedStoreKey, OptionsCarryTheConfiguredLimitsAndDelay) {
  cfg_.max_stores_per_account = 4;
  cfg_.max_secrets_per_account = 250;
  cfg_.max_value_bytes = 1024;
  cfg_.activation_delay_ms = 1500;
  const EmbeddedStoreOptions o = embedded_store_options(cfg_);
  EXPECT_EQ(o.data_path, fs::path(cfg_.data_path));
  EXPECT_EQ(o.max_stores_per_account, 4);
  EXPECT_EQ(o.max_secrets_per_account, 250);
  EXPECT_EQ(o.max_value_bytes, 1024u);
  EXPECT_EQ(o.activation_delay, 1'500'000);
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
