// Client identities: credentials extracted from requests, the config's resolver, the
// permissions of each role, purge requests, the admin token and reloads.
#include "tests/proxy/identity_fixture.hpp"

namespace sproxy::proxy {
namespace {

using namespace identity_testing;

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

TEST(ExtractCredentials, RefusesABearerTokenSentWithAnyPartOfTheKeyPair) {
  for (const auto& fields :
       {headers({{"Authorization", "Bearer tok"},
                 {"X-Auth-Email", "a@example.com"},
                 {"X-Auth-Key", "k"}}),
        headers({{"X-Auth-Key", "k"}, {"Authorization", "Bearer tok"}}),
        headers({{"Authorization", "Bearer tok"}, {"x-auth-email", "a@example.com"}}),
        headers({{"Authorization", "Bearer tok"}, {"X-Auth-Email", ""}}),
        headers({{"Authorization", "Basic dXNlcjpwYXNz"}, {"X-Auth-Key", "k"}})}) {
    auto c = extract_credentials(fields);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.error(), errors::invalid_request_headers());
  }
}

TEST(ExtractCredentials, RefusesACredentialHeaderSentTwice) {
  for (const auto& fields :
       {headers({{"Authorization", "Bearer tok"}, {"Authorization", "Bearer other"}}),
        headers({{"Authorization", "Bearer tok"}, {"authorization", "Bearer tok"}}),
        headers({{"X-Auth-Email", "a@example.com"}, {"X-Auth-Key", "k"}, {"X-Auth-Key", "k2"}}),
        headers({{"X-Auth-Email", "a@example.com"},
                 {"X-Auth-Key", "k"},
                 {"X-AUTH-EMAIL", "b@example.com"}})}) {
    auto c = extract_credentials(fields);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.error(), errors::invalid_request_headers());
    // The contract's code and message, without the malformed-Authorization chain.
    EXPECT_EQ(upstream::envelope_error(c.error()),
              R"({"success":false,"errors":[{"code":6003,"message":"Invalid request headers"}],)"
              R"("messages":[],"result":null})");
    EXPECT_EQ(c.error().status, 400u);
  }
}

TEST(ExtractBearerToken, RefusesAmbiguousCredentialsLikeExtractCredentials) {
  EXPECT_EQ(
      extract_bearer_token(headers({{"Authorization", "Bearer a"}, {"Authorization", "Bearer b"}}))
          .error(),
      errors::invalid_request_headers());
  EXPECT_EQ(
      extract_bearer_token(headers({{"Authorization", "Bearer a"}, {"X-Auth-Key", "k"}})).error(),
      errors::invalid_request_headers());
  EXPECT_EQ(extract_bearer_token(headers({{"Authorization", "Bearer a"}}))->token, "a");
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

TEST(ConfigIdentityResolver, MapsACertificateNameToTheClientListingIt) {
  config::ClientConfig sidecar;
  sidecar.name = "sidecar";
  sidecar.cert_subjects = {"CN=sidecar.internal", "URI:spiffe://example.org/ns/app"};
  sidecar.accounts = {"*"};
  sidecar.permissions = {"read"};
  ConfigIdentityResolver resolver({sidecar});
  auto by_cn = resolver.resolve_certificate(PeerCertificate{{"CN=sidecar.internal"}});
  ASSERT_TRUE(by_cn.ok());
  EXPECT_EQ(by_cn->name, "sidecar");
  auto by_uri = resolver.resolve_certificate(
      PeerCertificate{{"CN=pod-1234", "DNS:pod.local", "URI:spiffe://example.org/ns/app"}});
  ASSERT_TRUE(by_uri.ok());
  EXPECT_EQ(by_uri->name, "sidecar");
  // A name of another kind with the same text is not a match.
  EXPECT_FALSE(resolver.resolve_certificate(PeerCertificate{{"DNS:sidecar.internal"}}).ok());
  EXPECT_FALSE(resolver.resolve_certificate(PeerCertificate{}).ok());
  // Certificates never resolve through the token path, nor tokens through certificates.
  EXPECT_FALSE(resolver.resolve(BearerToken{"CN=sidecar.internal"}).ok());
}

TEST(IdentityFromConfig, SortsAndDeduplicatesServices) {
  const Identity id =
      identity_from_config(token_client("c", "t", {"read"}, {"workers", "dex", "workers"}));
  EXPECT_THAT(id.services, ElementsAre("dex", "workers"));
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

// ---------------------------------------------------------------------------------------
// The admin endpoint token as an identity

TEST(ConfigIdentityResolver, ResolvesTheAdminTokenToAnIdentityThatMayOnlyPurge) {
  ConfigIdentityResolver resolver({token_client("reader", "t-reader", {"read"})},
                                  upstream::sha256_hex("t-purge"));
  auto id = resolver.resolve(BearerToken{"t-purge"});
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->name, kAdminTokenIdentityName);
  EXPECT_TRUE(id->has(Permission::purge));
  EXPECT_FALSE(id->has(Permission::read));
  EXPECT_FALSE(id->has(Permission::write));
  EXPECT_FALSE(id->has(Permission::admin));
  EXPECT_EQ(check_access(*id, route(RouteKind::list_stores, kAccount)),
            DenyReason::permission_missing);
  EXPECT_EQ(resolver.client_count(), 1u);
}

TEST(ConfigIdentityResolver, HasNoPurgeIdentityWithoutAnAdminToken) {
  ConfigIdentityResolver resolver({token_client("reader", "t-reader", {"read"})});
  EXPECT_FALSE(resolver.resolve(BearerToken{"t-purge"}).ok());
  EXPECT_TRUE(resolver.resolve(BearerToken{"t-reader"}).ok());
}

// ---------------------------------------------------------------------------------------
// Reload

TEST(ReloadableIdentityResolver, ResolvesAgainstTheTableInstalledLast) {
  ReloadableIdentityResolver identities(std::make_shared<const ConfigIdentityResolver>(
      std::vector{token_client("old", "t-old", {"read"})}));
  ASSERT_TRUE(identities.resolve(BearerToken{"t-old"}).ok());
  identities.replace(std::make_shared<const ConfigIdentityResolver>(
      std::vector{token_client("new", "t-new", {"read"})}));
  auto removed = identities.resolve(BearerToken{"t-old"});
  ASSERT_FALSE(removed.ok());
  EXPECT_EQ(removed.error(), errors::authentication_error());
  auto added = identities.resolve(BearerToken{"t-new"});
  ASSERT_TRUE(added.ok());
  EXPECT_EQ(added->name, "new");
}

TEST(ReloadableIdentityResolver, NeverLosesAClientPresentInEveryTableWhileTablesAreSwapped) {
  const auto with_b = std::make_shared<const ConfigIdentityResolver>(
      std::vector{token_client("a", "t-a", {"read"}), token_client("b", "t-b", {"read"})});
  const auto with_c = std::make_shared<const ConfigIdentityResolver>(
      std::vector{token_client("a", "t-a", {"read"}), token_client("c", "t-c", {"read"})});
  ReloadableIdentityResolver identities(with_b);
  std::atomic<bool> done{false};
  std::thread swapper([&] {
    for (int i = 0; i < 20'000; ++i) identities.replace(i % 2 == 0 ? with_c : with_b);
    done = true;
  });
  int failures = 0;
  int resolved = 0;
  while (!done.load() || resolved < 1000) {
    auto id = identities.resolve(BearerToken{"t-a"});
    if (!id.ok() || id->name != "a") ++failures;
    ++resolved;
    if (resolved > 1'000'000) break;  // bounded even if the swapper stalls
  }
  swapper.join();
  EXPECT_EQ(failures, 0);
}

class ReloadIdentities : public ::testing::Test {
 protected:
  std::filesystem::path write_config(const std::string& text) {
    const auto path = dir_.path() / "config.json";
    std::ofstream(path) << text;
    return path;
  }
  static std::string client_json(const std::string& name, const std::string& token) {
    return R"({"name":")" + name + R"(","token_sha256":")" + upstream::sha256_hex(token) +
           R"(","accounts":["*"],"permissions":["read"]})";
  }

  test::TempDir dir_;
  ReloadableIdentityResolver identities_{std::make_shared<const ConfigIdentityResolver>(
      std::vector{token_client("old", "t-old", {"read"})})};
};

TEST_F(ReloadIdentities, InstallsTheClientsAndAdminTokenOfAValidFile) {
  const auto path =
      write_config(R"({"clients":[)" + client_json("new", "t-new") +
                   R"(],"admin":{"token_sha256":")" + upstream::sha256_hex("t-purge") + R"("}})");
  const ReloadResult r = reload_config(path, ReloadTargets{&identities_});
  EXPECT_TRUE(r.ok);
  EXPECT_THAT(r.message, HasSubstr("1 client(s) and the admin token"));
  EXPECT_FALSE(identities_.resolve(BearerToken{"t-old"}).ok());
  EXPECT_TRUE(identities_.resolve(BearerToken{"t-new"}).ok());
  EXPECT_TRUE(identities_.resolve(BearerToken{"t-purge"}).ok());
}

TEST_F(ReloadIdentities, KeepsTheCurrentIdentitiesWhenTheFileIsNotJson) {
  const auto path = write_config(R"({"clients":[)");
  const ReloadResult r = reload_config(path, ReloadTargets{&identities_});
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.message, HasSubstr("reload rejected, keeping the current configuration"));
  EXPECT_THAT(r.message, HasSubstr("invalid JSON"));
  EXPECT_TRUE(identities_.resolve(BearerToken{"t-old"}).ok());
}

TEST_F(ReloadIdentities, KeepsTheCurrentIdentitiesWhenTheConfigBreaksARule) {
  const auto path = write_config(R"({"clients":[{"name":"x","token_sha256":"nothex",)"
                                 R"("accounts":["*"],"permissions":["read"]}]})");
  const ReloadResult r = reload_config(path, ReloadTargets{&identities_});
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.message, HasSubstr("$.clients[0].token_sha256"));
  EXPECT_TRUE(identities_.resolve(BearerToken{"t-old"}).ok());
}

TEST_F(ReloadIdentities, KeepsTheCurrentIdentitiesWhenTheFileIsGone) {
  const ReloadResult r = reload_config(dir_.path() / "absent.json", ReloadTargets{&identities_});
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.message, HasSubstr("cannot open"));
  EXPECT_TRUE(identities_.resolve(BearerToken{"t-old"}).ok());
}

}  // namespace
}  // namespace sproxy::proxy
