// Access checks with their reasons, scopes, purges and write bodies; raw credentials and
// the per-connection credential memo.
#include "tests/proxy/identity_fixture.hpp"

namespace sproxy::proxy {
namespace {

using namespace identity_testing;

// ---------------------------------------------------------------------------------------
// Reasons, scopes, purges and write bodies

TEST(CheckAccess, NamesWhyItRefusesAndAllowsWhatIsWithinTheLimits) {
  auto c = token_client("w", "t", {"write"}, {"workers"}, {kAccount});
  c.stores = {kStore};
  const Identity id = identity_from_config(c);
  EXPECT_EQ(check_access(id, route(RouteKind::create_secrets, kAccount, kStore)), std::nullopt);
  EXPECT_EQ(check_access(id, route(RouteKind::create_secrets, kOtherAccount, kStore)),
            DenyReason::account_not_allowed);
  EXPECT_EQ(check_access(id, route(RouteKind::create_secrets, kAccount, kOtherStore)),
            DenyReason::store_not_allowed);
  EXPECT_EQ(check_access(id, route(RouteKind::delete_store, kAccount, kStore)),
            DenyReason::permission_missing);
}

TEST(CheckAccess, RefusesAStoreLimitedAdminACreateOfAnotherStore) {
  auto c = token_client("a", "t", {"admin"}, {}, {kAccount});
  c.stores = {kStore};
  const Identity limited = identity_from_config(c);
  EXPECT_EQ(check_access(limited, route(RouteKind::create_store, kAccount)),
            DenyReason::store_not_allowed);
  EXPECT_EQ(authorize(limited, route(RouteKind::create_store, kAccount)).error(),
            errors::authentication_error());
  // Everything else within its store stays allowed, and an admin without a store list may
  // create stores.
  EXPECT_EQ(check_access(limited, route(RouteKind::delete_store, kAccount, kStore)), std::nullopt);
  EXPECT_EQ(check_access(limited, route(RouteKind::list_stores, kAccount)), std::nullopt);
  c.stores.clear();
  EXPECT_EQ(check_access(identity_from_config(c), route(RouteKind::create_store, kAccount)),
            std::nullopt);
}

TEST(DenyReason, HasASnakeCaseNameForEveryReason) {
  EXPECT_EQ(to_string(DenyReason::unknown_credentials), "unknown_credentials");
  EXPECT_EQ(to_string(DenyReason::ambiguous_credentials), "ambiguous_credentials");
  EXPECT_EQ(to_string(DenyReason::account_not_allowed), "account_not_allowed");
  EXPECT_EQ(to_string(DenyReason::scope_not_allowed), "scope_not_allowed");
  EXPECT_EQ(to_string(DenyReason::secret_not_visible), "secret_not_visible");
}

TEST(ScopesWithin, LetsAWriterSetOnlyScopesAmongItsServices) {
  const Identity writer =
      identity_from_config(token_client("w", "t", {"write"}, {"workers", "dex"}));
  EXPECT_TRUE(scopes_within(writer, {"workers"}));
  EXPECT_TRUE(scopes_within(writer, {"dex", "workers"}));
  EXPECT_FALSE(scopes_within(writer, {"access"}));
  EXPECT_FALSE(scopes_within(writer, {"access", "workers"}));
  const Identity none = identity_from_config(token_client("n", "t", {"write"}));
  EXPECT_FALSE(scopes_within(none, {"workers"}));
}

TEST(ScopesWithin, LetsAnAdminSetAnyScope) {
  const Identity admin = identity_from_config(token_client("a", "t", {"admin"}));
  EXPECT_TRUE(scopes_within(admin, {"access", "websearch"}));
}

PurgeRequest purge_of(std::string account = {}, std::string store = {}) {
  return PurgeRequest{std::move(account), std::move(store)};
}

TEST(CheckPurge, LetsTheAdminTokenPurgeEverything) {
  ConfigIdentityResolver resolver({}, upstream::sha256_hex("t-purge"));
  const Identity purger = *resolver.resolve(BearerToken{"t-purge"});
  EXPECT_EQ(check_purge(purger, purge_of()), std::nullopt);
  EXPECT_EQ(check_purge(purger, purge_of(kAccount, kStore)), std::nullopt);
}

TEST(CheckPurge, LetsAnAdminClientPurgeOnlyWithinItsAccounts) {
  const Identity one = identity_from_config(token_client("a", "t", {"admin"}, {}, {kAccount}));
  EXPECT_EQ(check_purge(one, purge_of()), DenyReason::account_not_allowed);
  EXPECT_EQ(check_purge(one, purge_of(kAccount)), std::nullopt);
  EXPECT_EQ(check_purge(one, purge_of(kOtherAccount)), DenyReason::account_not_allowed);
  const Identity any = identity_from_config(token_client("b", "t", {"admin"}));
  EXPECT_EQ(check_purge(any, purge_of()), std::nullopt);
}

TEST(CheckPurge, LetsAStoreLimitedAdminPurgeOnlyItsStores) {
  auto c = token_client("a", "t", {"admin"}, {}, {kAccount});
  c.stores = {kStore};
  const Identity id = identity_from_config(c);
  EXPECT_EQ(check_purge(id, purge_of(kAccount)), DenyReason::store_not_allowed);
  EXPECT_EQ(check_purge(id, purge_of(kAccount, kStore)), std::nullopt);
  EXPECT_EQ(check_purge(id, purge_of(kAccount, kOtherStore)), DenyReason::store_not_allowed);
}

TEST(CheckPurge, RefusesClientsWithoutAdmin) {
  const Identity writer = identity_from_config(token_client("w", "t", {"read", "write"}));
  EXPECT_EQ(check_purge(writer, purge_of()), DenyReason::permission_missing);
}

const Identity kWorkersWriter =
    identity_from_config(token_client("w", "t", {"write"}, {"workers"}));

TEST(CheckWriteBody, NamesTheSecretsOfACreateAndChecksEveryItemsScopes) {
  const auto ok = check_write_body(
      RouteKind::create_secrets,
      R"([{"name":"A","value":"1","scopes":["workers"]},{"name":"B","value":"2","scopes":["workers"]}])",
      kWorkersWriter, 100);
  EXPECT_FALSE(ok.invalid);
  EXPECT_TRUE(ok.scopes_allowed);
  EXPECT_THAT(ok.names, ElementsAre("A", "B"));

  const auto outside = check_write_body(
      RouteKind::create_secrets,
      R"([{"name":"A","value":"1","scopes":["workers"]},{"name":"B","value":"2","scopes":["workers","dex"]}])",
      kWorkersWriter, 100);
  EXPECT_FALSE(outside.invalid);
  EXPECT_FALSE(outside.scopes_allowed);
}

TEST(CheckWriteBody, GivesTheParsersErrorForABodyItRejects) {
  const std::string bad_name = R"([{"name":"no spaces","value":"1","scopes":["workers"]}])";
  const auto r = check_write_body(RouteKind::create_secrets, bad_name, kWorkersWriter, 100);
  ASSERT_TRUE(r.invalid);
  EXPECT_EQ(*r.invalid, upstream::parse_secret_create(bad_name, 100).error());
  EXPECT_EQ(*check_write_body(RouteKind::create_secrets, "{}", kWorkersWriter, 100).invalid,
            errors::invalid_json_body());
  EXPECT_EQ(
      *check_write_body(RouteKind::patch_secret, R"({"name":"X"})", kWorkersWriter, 100).invalid,
      errors::secret_name_immutable());
}

TEST(CheckWriteBody, ChecksTheBodyOfAStoreCreate) {
  EXPECT_FALSE(
      check_write_body(RouteKind::create_store, R"({"name":"main"})", kWorkersWriter, 100).invalid);
  for (const char* body : {"", "[]", R"([{"name":"main"}])", "{not json"}) {
    const auto r = check_write_body(RouteKind::create_store, body, kWorkersWriter, 100);
    ASSERT_TRUE(r.invalid) << body;
    EXPECT_EQ(*r.invalid, upstream::parse_store_create(body).error()) << body;
  }
}

TEST(CheckWriteBody, HoldsValuesToTheGivenLimit) {
  const std::string body = R"([{"name":"A","value":"12345","scopes":["workers"]}])";
  EXPECT_FALSE(check_write_body(RouteKind::create_secrets, body, kWorkersWriter, 5).invalid);
  EXPECT_EQ(*check_write_body(RouteKind::create_secrets, body, kWorkersWriter, 4).invalid,
            errors::secret_value_too_long());
}

TEST(CheckWriteBody, ChecksPatchScopesOnlyWhenThePatchSetsThem) {
  EXPECT_TRUE(check_write_body(RouteKind::patch_secret, R"({"comment":"c","value":"v"})",
                               kWorkersWriter, 100)
                  .scopes_allowed);
  EXPECT_TRUE(
      check_write_body(RouteKind::patch_secret, R"({"scopes":["workers"]})", kWorkersWriter, 100)
          .scopes_allowed);
  EXPECT_FALSE(
      check_write_body(RouteKind::patch_secret, R"({"scopes":["dex"]})", kWorkersWriter, 100)
          .scopes_allowed);
}

TEST(CheckWriteBody, ChecksTheScopesAndNameOfADuplicate) {
  const auto ok = check_write_body(RouteKind::duplicate, R"({"name":"COPY","scopes":["workers"]})",
                                   kWorkersWriter, 100);
  EXPECT_TRUE(ok.scopes_allowed);
  EXPECT_THAT(ok.names, ElementsAre("COPY"));
  EXPECT_FALSE(check_write_body(RouteKind::duplicate, R"({"name":"COPY","scopes":["access"]})",
                                kWorkersWriter, 100)
                   .scopes_allowed);
}

TEST(CheckWriteBody, ListsTheUniqueIdsOfABulkDelete) {
  const auto r = check_write_body(
      RouteKind::bulk_delete,
      R"({"ids":[")" + kStore + R"(",")" + kOtherStore + R"(",")" + kStore + R"("]})",
      kWorkersWriter, 0);
  EXPECT_FALSE(r.invalid);
  EXPECT_THAT(r.ids, ElementsAre(kStore, kOtherStore));
  EXPECT_EQ(*check_write_body(RouteKind::bulk_delete, R"({"ids":[]})", kWorkersWriter, 0).invalid,
            errors::invalid_json_body());
}

// ---------------------------------------------------------------------------------------
// Raw credentials and the per-connection memo

TEST(RawCredential, TakesTheFirstOfEachCredentialHeaderWhateverItsCase) {
  // The views point into the fields: they must outlive `raw`.
  const http::fields fields = headers({{"x-auth-email", "a@example.com"},
                                       {"Host", "h"},
                                       {"AUTHORIZATION", "Bearer first"},
                                       {"X-AUTH-KEY", "k1"},
                                       {"Authorization", "Bearer second"},
                                       {"X-Auth-Key", "k2"}});
  const auto raw = raw_credential(fields);
  EXPECT_EQ(raw.authorization, "Bearer first");
  EXPECT_EQ(raw.email, "a@example.com");
  EXPECT_EQ(raw.key, "k1");
  EXPECT_TRUE(raw.ambiguous);
  const http::fields host_only = headers({{"Host", "h"}});
  const auto none = raw_credential(host_only);
  EXPECT_TRUE(none.authorization.empty() && none.email.empty() && none.key.empty());
  EXPECT_FALSE(none.ambiguous);
}

TEST(RawCredential, IsAmbiguousWhenAHeaderComesTwiceOrBothKindsCome) {
  const auto ambiguous = [](const http::fields& fields) {
    return raw_credential(fields).ambiguous;
  };
  EXPECT_FALSE(ambiguous(headers({{"Authorization", "Bearer a"}})));
  EXPECT_FALSE(ambiguous(headers({{"X-Auth-Email", "a@example.com"}, {"X-Auth-Key", "k"}})));
  EXPECT_FALSE(ambiguous(headers({{"X-Auth-Key", "k"}})));
  EXPECT_TRUE(ambiguous(headers({{"Authorization", "Bearer a"}, {"Authorization", "Bearer a"}})));
  EXPECT_TRUE(ambiguous(headers({{"X-Auth-Key", "k"}, {"x-auth-key", "k"}})));
  EXPECT_TRUE(ambiguous(headers({{"X-Auth-Email", "e"}, {"X-Auth-Email", "e"}})));
  EXPECT_TRUE(ambiguous(headers({{"Authorization", "Bearer a"}, {"X-Auth-Email", "e"}})));
  EXPECT_TRUE(ambiguous(headers({{"X-Auth-Key", "k"}, {"Authorization", "Bearer a"}})));
}

TEST(CredentialMemo, FindsOnlyTheSameBytesUnderTheSameGeneration) {
  CredentialMemo memo;
  const RawCredential token{"Bearer t-reader", {}, {}};
  EXPECT_EQ(memo.find(token, 0), nullptr);
  EXPECT_EQ(memo.find(RawCredential{}, 0), nullptr);  // nothing remembered yet

  auto reader = std::make_shared<const ResolvedClient>(
      identity_from_config(token_client("reader", "t-reader", {"read"}, {"workers"})));
  memo.remember(token, 7, reader);
  EXPECT_EQ(memo.find(token, 7), reader);
  const std::string copy = "Bearer t-reader";
  EXPECT_EQ(memo.find(RawCredential{copy, {}, {}}, 7), reader);
  EXPECT_EQ(memo.find(token, 8), nullptr);
  EXPECT_EQ(memo.find(RawCredential{"Bearer t-readeR", {}, {}}, 7), nullptr);
  EXPECT_EQ(memo.find(RawCredential{"Bearer t-reader ", {}, {}}, 7), nullptr);
  EXPECT_EQ(memo.find(RawCredential{"Bearer t-reader", "a@example.com", {}}, 7), nullptr);

  const RawCredential pair{{}, "a@example.com", "k"};
  memo.remember(pair, 8, reader);
  EXPECT_EQ(memo.find(pair, 8), reader);
  EXPECT_EQ(memo.find(token, 8), nullptr);
  EXPECT_EQ(memo.find(RawCredential{{}, "a@example.com", "K"}, 8), nullptr);

  CredentialMemo moved = std::move(memo);
  EXPECT_EQ(moved.find(pair, 8), reader);
}

// An Authorization header makes a request's credential, even an empty one (which is
// malformed): the memo must not answer such a request with the client a key pair
// without that header resolved to, nor the other way round.
TEST(CredentialMemo, TellsAnEmptyAuthorizationHeaderFromNone) {
  const http::fields pair_only = headers({{"X-Auth-Email", "a@example.com"}, {"X-Auth-Key", "k"}});
  const http::fields empty_authorization =
      headers({{"Authorization", ""}, {"X-Auth-Email", "a@example.com"}, {"X-Auth-Key", "k"}});
  ASSERT_TRUE(extract_credentials(pair_only).ok());
  ASSERT_FALSE(extract_credentials(empty_authorization).ok());
  // Authorization beside the key pair, even an empty one, names two credentials.
  EXPECT_EQ(extract_credentials(empty_authorization).error(), errors::invalid_request_headers());
  EXPECT_EQ(extract_credentials(headers({{"Authorization", ""}})).error(),
            errors::malformed_authorization());

  auto keyed = std::make_shared<const ResolvedClient>(
      identity_from_config(token_client("keyed", "t-keyed", {"read"}, {"workers"})));
  CredentialMemo memo;
  memo.remember(raw_credential(pair_only), 1, keyed);
  EXPECT_EQ(memo.find(raw_credential(pair_only), 1), keyed);
  EXPECT_EQ(memo.find(raw_credential(empty_authorization), 1), nullptr);

  memo.remember(raw_credential(empty_authorization), 2, keyed);
  EXPECT_EQ(memo.find(raw_credential(pair_only), 2), nullptr);
}

TEST(ResolvedClient, CarriesTheViewOfItsIdentity) {
  const ResolvedClient reader(
      identity_from_config(token_client("reader", "t-reader", {"read"}, {"workers"})));
  EXPECT_FALSE(reader.viewer.all);
  EXPECT_THAT(reader.viewer.services, ElementsAre("workers"));
  const ResolvedClient admin(identity_from_config(token_client("admin", "t-admin", {"admin"})));
  EXPECT_TRUE(admin.viewer.all);
}

TEST(ReloadableIdentityResolver, MovesToANewGenerationAtEachSwap) {
  ReloadableIdentityResolver identities(std::make_shared<const ConfigIdentityResolver>(
      std::vector{token_client("admin", "t-admin", {"admin"})}));
  const auto first = identities.generation();
  identities.replace(std::make_shared<const ConfigIdentityResolver>(
      std::vector{token_client("admin", "t-admin", {"admin"})}));
  const auto second = identities.generation();
  EXPECT_NE(second, first);
  identities.replace(identities.current());
  EXPECT_NE(identities.generation(), second);
}

}  // namespace
}  // namespace sproxy::proxy
