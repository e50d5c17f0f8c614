#include "proxy/identity.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "proxy/request_handler.hpp"
#include "tests/support/server_harness.hpp"
#include "upstream/crypto.hpp"

namespace sproxy::proxy {
namespace {

namespace http = boost::beast::http;
namespace errors = upstream::errors;
using test::key_pair_client;
using test::token_client;
using ::testing::ElementsAre;
using upstream::RouteKind;

const std::string kAccount = "0123456789abcdef0123456789abcdef";
const std::string kOtherAccount = "fedcba9876543210fedcba9876543210";
const std::string kStore = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const std::string kOtherStore = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

http::fields headers(std::initializer_list<std::pair<std::string, std::string>> items) {
  http::fields f;
  for (const auto& [name, value] : items) f.insert(name, value);
  return f;
}

TEST(ExtractCredentials, ReadsABearerToken) {
  auto c = extract_credentials(headers({{"Authorization", "Bearer abc.DEF-123_x"}}));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(std::get<BearerToken>(*c).token, "abc.DEF-123_x");
}

TEST(ExtractCredentials, AcceptsTheBearerSchemeInAnyCase) {
  auto c = extract_credentials(headers({{"Authorization", "bearer tok"}}));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(std::get<BearerToken>(*c).token, "tok");
}

TEST(ExtractCredentials, ReadsTheEmailAndKeyPair) {
  auto c = extract_credentials(headers({{"X-Auth-Email", "a@example.com"}, {"X-Auth-Key", "k"}}));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(std::get<ApiKeyPair>(*c).email, "a@example.com");
  EXPECT_EQ(std::get<ApiKeyPair>(*c).key, "k");
}

TEST(ExtractCredentials, AnswersMissingCredentialsWhenThereAreNone) {
  auto c = extract_credentials(headers({}));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error(), errors::missing_credentials());
}

TEST(ExtractCredentials, AnswersMissingCredentialsForHalfAKeyPair) {
  EXPECT_EQ(extract_credentials(headers({{"X-Auth-Email", "a@example.com"}})).error(),
            errors::missing_credentials());
  EXPECT_EQ(extract_credentials(headers({{"X-Auth-Key", "k"}})).error(),
            errors::missing_credentials());
}

TEST(ExtractCredentials, RejectsAuthorizationThatIsNotABearerToken) {
  for (const char* value : {"Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer two words",
                            "Bearer  leading-space", "Bearertoken", "tok"}) {
    auto c = extract_credentials(headers({{"Authorization", value}}));
    ASSERT_FALSE(c.ok()) << value;
    EXPECT_EQ(c.error(), errors::malformed_authorization()) << value;
  }
}

TEST(ExtractCredentials, PrefersTheAuthorizationHeaderOverTheKeyPair) {
  auto c = extract_credentials(headers(
      {{"Authorization", "Bearer tok"}, {"X-Auth-Email", "a@example.com"}, {"X-Auth-Key", "k"}}));
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(std::holds_alternative<BearerToken>(*c));
}

TEST(ConfigIdentityResolver, FindsTheClientWhoseTokenHashMatches) {
  ConfigIdentityResolver resolver({token_client("reader", "t-reader", {"read"}, {"workers"}),
                                   token_client("writer", "t-writer", {"write"})});
  auto id = resolver.resolve(BearerToken{"t-writer"});
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->name, "writer");
  EXPECT_TRUE(id->has(Permission::write));
  EXPECT_FALSE(id->has(Permission::read));
}

TEST(ConfigIdentityResolver, RefusesAnUnknownToken) {
  ConfigIdentityResolver resolver({token_client("reader", "t-reader", {"read"})});
  auto id = resolver.resolve(BearerToken{"t-other"});
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.error(), errors::authentication_error());
}

TEST(ConfigIdentityResolver, RefusesTheTokenHashItselfAsAToken) {
  ConfigIdentityResolver resolver({token_client("reader", "t-reader", {"read"})});
  EXPECT_FALSE(resolver.resolve(BearerToken{upstream::sha256_hex("t-reader")}).ok());
}

TEST(ConfigIdentityResolver, MatchesAnEmailAndKeyPairOnlyTogether) {
  ConfigIdentityResolver resolver({key_pair_client("ops", "ops@example.com", "k-ops", {"admin"}),
                                   key_pair_client("dev", "dev@example.com", "k-dev", {"read"})});
  auto id = resolver.resolve(ApiKeyPair{"dev@example.com", "k-dev"});
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->name, "dev");
  EXPECT_FALSE(resolver.resolve(ApiKeyPair{"dev@example.com", "k-ops"}).ok());
  EXPECT_FALSE(resolver.resolve(ApiKeyPair{"nobody@example.com", "k-dev"}).ok());
}

TEST(ConfigIdentityResolver, DoesNotLetAKeyPairClientInWithItsKeyAsABearerToken) {
  ConfigIdentityResolver resolver({key_pair_client("ops", "ops@example.com", "k-ops", {"admin"})});
  EXPECT_FALSE(resolver.resolve(BearerToken{"k-ops"}).ok());
}

TEST(IdentityFromConfig, SortsAndDeduplicatesServices) {
  const Identity id =
      identity_from_config(token_client("c", "t", {"read"}, {"workers", "dex", "workers"}));
  EXPECT_THAT(id.services, ElementsAre("dex", "workers"));
}

upstream::Route route(RouteKind kind, std::string account, std::string store = {}) {
  upstream::Route r;
  r.kind = kind;
  r.account_id = std::move(account);
  r.store_id = std::move(store);
  return r;
}

TEST(Authorize, LetsAReaderReadButNotWrite) {
  const Identity reader = identity_from_config(token_client("r", "t", {"read"}));
  for (auto kind : {RouteKind::list_stores, RouteKind::get_store, RouteKind::list_secrets,
                    RouteKind::get_secret, RouteKind::get_quota}) {
    EXPECT_TRUE(authorize(reader, route(kind, kAccount, kStore)).ok());
  }
  for (auto kind : {RouteKind::create_secrets, RouteKind::patch_secret, RouteKind::delete_secret,
                    RouteKind::bulk_delete, RouteKind::duplicate, RouteKind::create_store,
                    RouteKind::delete_store}) {
    auto s = authorize(reader, route(kind, kAccount, kStore));
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error(), errors::authentication_error());
  }
}

TEST(Authorize, LetsAWriterChangeSecretsButNotStores) {
  const Identity writer = identity_from_config(token_client("w", "t", {"write"}));
  EXPECT_TRUE(authorize(writer, route(RouteKind::get_secret, kAccount, kStore)).ok());
  EXPECT_TRUE(authorize(writer, route(RouteKind::create_secrets, kAccount, kStore)).ok());
  EXPECT_TRUE(authorize(writer, route(RouteKind::bulk_delete, kAccount, kStore)).ok());
  EXPECT_FALSE(authorize(writer, route(RouteKind::create_store, kAccount)).ok());
  EXPECT_FALSE(authorize(writer, route(RouteKind::delete_store, kAccount, kStore)).ok());
}

TEST(Authorize, LetsAnAdminDoEverything) {
  const Identity admin = identity_from_config(token_client("a", "t", {"admin"}));
  EXPECT_TRUE(authorize(admin, route(RouteKind::create_store, kAccount)).ok());
  EXPECT_TRUE(authorize(admin, route(RouteKind::delete_store, kAccount, kStore)).ok());
  EXPECT_TRUE(authorize(admin, route(RouteKind::patch_secret, kAccount, kStore)).ok());
  EXPECT_TRUE(authorize(admin, route(RouteKind::list_stores, kAccount)).ok());
}

TEST(Authorize, RefusesAccountsTheClientDoesNotHave) {
  const Identity one = identity_from_config(token_client("o", "t", {"admin"}, {}, {kAccount}));
  EXPECT_TRUE(authorize(one, route(RouteKind::list_stores, kAccount)).ok());
  EXPECT_FALSE(authorize(one, route(RouteKind::list_stores, kOtherAccount)).ok());
  const Identity any = identity_from_config(token_client("a", "t", {"read"}, {}, {"*"}));
  EXPECT_TRUE(authorize(any, route(RouteKind::list_stores, kOtherAccount)).ok());
}

TEST(Authorize, RefusesStoresOutsideTheClientsStoreList) {
  auto c = token_client("s", "t", {"write"});
  c.stores = {kStore};
  const Identity id = identity_from_config(c);
  EXPECT_TRUE(authorize(id, route(RouteKind::list_secrets, kAccount, kStore)).ok());
  EXPECT_FALSE(authorize(id, route(RouteKind::list_secrets, kAccount, kOtherStore)).ok());
  EXPECT_TRUE(authorize(id, route(RouteKind::get_quota, kAccount)).ok());
}

TEST(Authorize, RefusesAClientWithoutPermissions) {
  const Identity none = identity_from_config(token_client("n", "t", {}));
  EXPECT_FALSE(authorize(none, route(RouteKind::list_stores, kAccount)).ok());
}

TEST(ViewerFor, LetsAdminsSeeEverySecret) {
  const auto v = viewer_for(identity_from_config(token_client("a", "t", {"admin"}, {"dex"})));
  EXPECT_TRUE(v.all);
}

TEST(ViewerFor, LimitsOthersToTheirServices) {
  const auto v = viewer_for(
      identity_from_config(token_client("r", "t", {"read", "write"}, {"workers", "dex"})));
  EXPECT_FALSE(v.all);
  EXPECT_THAT(v.services, ElementsAre("dex", "workers"));
}

TEST(AdminTokenMatches, AcceptsOnlyTheTokenWhoseHashIsConfigured) {
  const std::string hash = upstream::sha256_hex("admin-secret");
  EXPECT_TRUE(admin_token_matches("admin-secret", hash));
  EXPECT_FALSE(admin_token_matches("admin-secreT", hash));
  EXPECT_FALSE(admin_token_matches(hash, hash));
}

TEST(AdminTokenMatches, AcceptsNothingWhenNoHashIsConfigured) {
  EXPECT_FALSE(admin_token_matches("", ""));
  EXPECT_FALSE(admin_token_matches("anything", ""));
}

TEST(ParsePurgeRequest, PurgesEverythingForAnEmptyBodyOrObject) {
  EXPECT_EQ(parse_purge_request("")->scope(), "all");
  EXPECT_EQ(parse_purge_request(" \n")->scope(), "all");
  EXPECT_EQ(parse_purge_request("{}")->scope(), "all");
}

TEST(ParsePurgeRequest, PurgesAnAccountOrOneOfItsStores) {
  auto account = parse_purge_request(R"({"account_id":")" + kAccount + R"("})");
  ASSERT_TRUE(account.ok());
  EXPECT_EQ(account->scope(), "account");
  EXPECT_EQ(account->account_id, kAccount);
  auto store =
      parse_purge_request(R"({"account_id":")" + kAccount + R"(","store_id":")" + kStore + R"("})");
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(store->scope(), "store");
  EXPECT_EQ(store->store_id, kStore);
}

TEST(ParsePurgeRequest, RefusesAStoreWithoutItsAccount) {
  EXPECT_EQ(parse_purge_request(R"({"store_id":")" + kStore + R"("})").error(),
            errors::invalid_json_body());
}

TEST(ParsePurgeRequest, RefusesMalformedBodies) {
  for (const std::string& body :
       {std::string("not json"), std::string("[]"), std::string(R"({"account_id":1})"),
        std::string(R"({"account_id":"nothex"})"), R"({"acount_id":")" + kAccount + R"("})"}) {
    auto r = parse_purge_request(body);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(r.error(), errors::invalid_json_body()) << body;
  }
}

}  // namespace
}  // namespace sproxy::proxy
