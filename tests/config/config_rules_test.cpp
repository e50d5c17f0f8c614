// The config loader's rules for clients, the upstream and its guard, every problem in one
// error, config files and the cache persistence settings.
#include "tests/config/config_fixture.hpp"

namespace sproxy::config {
namespace {

using namespace config_testing;

TEST(ConfigLoader, RejectsMalformedSha256Hashes) {
  json client = token_client("a", std::string(64, 'A'));
  json short_key = {{"name", "b"},
                    {"email", "b@example.com"},
                    {"key_sha256", std::string(63, 'a')},
                    {"accounts", {"*"}},
                    {"permissions", {"read"}}};
  const json j = {{"clients", {client, short_key}},
                  {"admin", {{"token_sha256", std::string(64, 'g')}}}};
  EXPECT_THAT(problems_of(j),
              UnorderedElementsAre(
                  "$.clients[0].token_sha256: expected 64 lowercase hex characters (a SHA-256)",
                  "$.clients[1].key_sha256: expected 64 lowercase hex characters (a SHA-256)",
                  "$.admin.token_sha256: expected 64 lowercase hex characters (a SHA-256)"));
}

TEST(ConfigLoader, RejectsServicesOutsideTheContractScopes) {
  json client = token_client("a", kHashA);
  client["services"] = {"workers", "lambda"};
  EXPECT_THAT(problems_of({{"clients", {client}}}),
              ElementsAre("$.clients[0].services[1]: unknown service \"lambda\" (expected access, "
                          "ai_gateway, containers, dex, websearch or workers)"));
}

TEST(ConfigLoader, KnowsExactlyTheContractScopesAsServices) {
  for (std::string_view scope : upstream::kScopeNames) {
    json client = token_client("a", kHashA);
    client["services"] = {std::string(scope)};
    EXPECT_TRUE(problems_of({{"clients", {client}}}).empty()) << scope;
  }
}

TEST(ConfigLoader, RejectsUnknownPermissions) {
  json client = token_client("a", kHashA);
  client["permissions"] = {"read", "delete"};
  EXPECT_THAT(problems_of({{"clients", {client}}}),
              ElementsAre("$.clients[0].permissions[1]: unknown permission \"delete\" (expected "
                          "read, write or admin)"));
}

TEST(ConfigLoader, RequiresAClientToHaveATokenOrAnEmailAndKeyPair) {
  const json no_credential = {{"name", "a"}, {"accounts", {"*"}}, {"permissions", {"read"}}};
  json email_only = no_credential;
  email_only["name"] = "b";
  email_only["email"] = "b@example.com";
  json key_only = no_credential;
  key_only["name"] = "c";
  key_only["key_sha256"] = kHashA;
  EXPECT_THAT(
      problems_of({{"clients", {no_credential, email_only, key_only}}}),
      ElementsAre("$.clients[0]: needs token_sha256, email and key_sha256, or cert_subjects",
                  "$.clients[1]: email needs key_sha256", "$.clients[2]: key_sha256 needs email"));
}

TEST(ConfigLoader, AcceptsAClientWithOnlyAnEmailAndKeyPair) {
  const json client = {{"name", "a"},
                       {"email", "a@example.com"},
                       {"key_sha256", kHashA},
                       {"accounts", {kAccount}},
                       {"permissions", {"write"}}};
  EXPECT_TRUE(problems_of({{"clients", {client}}}).empty());
}

TEST(ConfigLoader, RequiresClientNamesAccountsAndPermissions) {
  const json client = {{"token_sha256", kHashA}, {"accounts", json::array()}};
  EXPECT_THAT(problems_of({{"clients", {client}}}),
              UnorderedElementsAre(
                  "$.clients[0].name: required",
                  "$.clients[0].accounts: must list at least one account id, or \"*\" for any",
                  "$.clients[0].permissions: must list at least one of read, write or admin"));
}

TEST(ConfigLoader, RejectsMalformedAccountAndStoreIds) {
  json client = token_client("a", kHashA);
  client["accounts"] = {"*", "ACCOUNT"};
  client["stores"] = {"123e4567-e89b-42d3-a456-426614174000"};
  EXPECT_THAT(
      problems_of({{"clients", {client}}}),
      ElementsAre("$.clients[0].accounts[1]: expected \"*\" or an account id of 32 lowercase hex "
                  "characters",
                  "$.clients[0].stores[0]: expected a store id of 32 lowercase hex characters"));
}

TEST(ConfigLoader, RejectsDuplicateClientNamesAndTokenHashes) {
  const json j = {
      {"clients",
       {token_client("a", kHashA), token_client("a", kHashB), token_client("c", kHashA)}}};
  EXPECT_THAT(
      problems_of(j),
      ElementsAre("$.clients[1].name: duplicate client name \"a\"",
                  "$.clients[2].token_sha256: duplicate token hash (another client has it)"));
}

TEST(ConfigLoader, RejectsUnknownUpstreamKinds) {
  EXPECT_THAT(problems_of({{"upstream", {{"kind", "grpc"}}}}),
              ElementsAre("$.upstream.kind: unknown upstream kind \"grpc\" (expected embedded or "
                          "http)"));
}

TEST(ConfigLoader, ReadsEveryEnumNameIntoItsTypedValue) {
  const Config c =
      parse_config({{"upstream", {{"kind", "http"}, {"base_url", "http://u"}, {"token_env", "T"}}},
                    {"log", {{"format", "text"}}},
                    {"listen",
                     {{"tls",
                       {{"cert_file", "c"},
                        {"key_file", "k"},
                        {"client_ca_file", "ca"},
                        {"client_auth", "optional"}}}}}});
  EXPECT_EQ(c.upstream.kind, UpstreamKind::http);
  EXPECT_EQ(c.log.format, LogFormat::text);
  EXPECT_EQ(c.listen.tls.client_auth, ClientAuth::optional);
}

TEST(ConfigLoader, NamesEveryEnumValueAsTheFileWritesIt) {
  EXPECT_EQ(to_string(UpstreamKind::embedded), "embedded");
  EXPECT_EQ(to_string(UpstreamKind::http), "http");
  EXPECT_EQ(to_string(LogFormat::json), "json");
  EXPECT_EQ(to_string(LogFormat::text), "text");
  EXPECT_EQ(to_string(ClientAuth::off), "off");
  EXPECT_EQ(to_string(ClientAuth::optional), "optional");
  EXPECT_EQ(to_string(ClientAuth::required), "required");
}

TEST(ConfigLoader, RequiresABaseUrlForTheHttpUpstream) {
  EXPECT_THAT(problems_of({{"upstream", {{"kind", "http"}}}}),
              ElementsAre("$.upstream.base_url: required when kind is \"http\""));
  EXPECT_THAT(problems_of({{"upstream", {{"kind", "http"}, {"base_url", "ftp://x"}}}}),
              ElementsAre("$.upstream.base_url: expected an http:// or https:// URL"));
}

TEST(ConfigLoader, LeavesTheUpstreamsActivationDelayUnknownUnlessItIsSaid) {
  EXPECT_FALSE(Config{}.upstream.activation_delay_ms);
  const Config c = parse_config(json{{"upstream", {{"activation_delay_ms", 3000}}}});
  EXPECT_EQ(c.upstream.activation_delay_ms, 3000);
  EXPECT_THAT(problems_of({{"upstream", {{"activation_delay_ms", -1}}}}),
              ElementsAre("$.upstream.activation_delay_ms: must be 0 or greater"));
}

TEST(ConfigLoader, PreconnectsOneUpstreamConnectionByDefaultAndNoMoreThanThePool) {
  EXPECT_EQ(Config{}.upstream.preconnect, 1u);
  EXPECT_TRUE(problems_of({{"upstream", {{"preconnect", 0}}}}).empty());
  EXPECT_THAT(problems_of({{"upstream", {{"max_connections", 2}, {"preconnect", 3}}}}),
              ElementsAre("$.upstream.preconnect: must not exceed max_connections (2)"));
  EXPECT_THAT(problems_of({{"upstream", {{"preconnect", -1}}}}),
              ElementsAre("$.upstream.preconnect: must be 0 or greater"));
}

TEST(ConfigLoader, GivesTheUpstreamGuardCloudflaresLimitsByDefault) {
  const Config c = parse_config(json::object());
  EXPECT_EQ(c.upstream.rate_limit_requests, 1200);
  EXPECT_EQ(c.upstream.rate_limit_window_s, 300);
  EXPECT_DOUBLE_EQ(c.upstream.rate_limit_margin, 0.1);
  EXPECT_EQ(c.upstream.rate_limit_per_second, 200);
  EXPECT_EQ(c.upstream.max_retries, 2);
  EXPECT_EQ(c.upstream.breaker_failures, 5);
  EXPECT_EQ(c.upstream.breaker_open_ms, 30'000);
  EXPECT_EQ(c.upstream.write_budget_wait_ms, 2'000);
  EXPECT_EQ(c.upstream.tls_ca_file, "");
}

TEST(ConfigLoader, ReadsTheUpstreamGuardSettings) {
  const Config c = parse_config({{"upstream",
                                  {{"tls_ca_file", "/etc/ca.pem"},
                                   {"rate_limit_requests", 600},
                                   {"rate_limit_window_s", 60},
                                   {"rate_limit_margin", 0},
                                   {"rate_limit_per_second", 0},
                                   {"max_retries", 0},
                                   {"breaker_failures", 3},
                                   {"breaker_open_ms", 1500},
                                   {"write_budget_wait_ms", 0}}}});
  EXPECT_EQ(c.upstream.tls_ca_file, "/etc/ca.pem");
  EXPECT_EQ(c.upstream.rate_limit_requests, 600);
  EXPECT_EQ(c.upstream.rate_limit_window_s, 60);
  EXPECT_DOUBLE_EQ(c.upstream.rate_limit_margin, 0.0);
  EXPECT_EQ(c.upstream.rate_limit_per_second, 0);
  EXPECT_EQ(c.upstream.max_retries, 0);
  EXPECT_EQ(c.upstream.breaker_failures, 3);
  EXPECT_EQ(c.upstream.breaker_open_ms, 1500);
  EXPECT_EQ(c.upstream.write_budget_wait_ms, 0);
  EXPECT_DOUBLE_EQ(
      parse_config({{"upstream", {{"rate_limit_margin", 0.25}}}}).upstream.rate_limit_margin, 0.25);
}

TEST(ConfigLoader, RejectsUpstreamGuardSettingsTheGuardCannotWorkWith) {
  EXPECT_THAT(
      problems_of({{"upstream",
                    {{"rate_limit_requests", 0},
                     {"rate_limit_window_s", 0},
                     {"rate_limit_margin", 1},
                     {"rate_limit_per_second", -1},
                     {"max_retries", -1},
                     {"breaker_failures", 0},
                     {"breaker_open_ms", 0},
                     {"write_budget_wait_ms", -1},
                     {"tls_ca_file", 5}}}}),
      UnorderedElementsAre("$.upstream.rate_limit_requests: must be between 1 and 100000",
                           "$.upstream.rate_limit_window_s: must be between 1 and 86400",
                           "$.upstream.rate_limit_margin: must be at least 0 and less than 1",
                           "$.upstream.rate_limit_per_second: must be between 0 and 100000",
                           "$.upstream.max_retries: must be between 0 and 10",
                           "$.upstream.breaker_failures: must be at least 1",
                           "$.upstream.breaker_open_ms: must be at least 1",
                           "$.upstream.write_budget_wait_ms: must be 0 or greater",
                           "$.upstream.tls_ca_file: expected a string"));
  EXPECT_THAT(problems_of({{"upstream", {{"rate_limit_margin", -0.01}}}}),
              ElementsAre("$.upstream.rate_limit_margin: must be at least 0 and less than 1"));
  EXPECT_THAT(problems_of({{"upstream", {{"rate_limit_margin", "0.1"}}}}),
              ElementsAre("$.upstream.rate_limit_margin: expected a number"));
  EXPECT_THAT(problems_of({{"upstream", {{"max_retries", 11}}}}),
              ElementsAre("$.upstream.max_retries: must be between 0 and 10"));
}

TEST(ConfigLoader, GivesEachClientAQuarterOfTheUpstreamBudgetByDefaultAndReadsItsShare) {
  EXPECT_DOUBLE_EQ(parse_config(nlohmann::json::object()).upstream.client_share, 0.25);
  EXPECT_DOUBLE_EQ(parse_config({{"upstream", {{"client_share", 1}}}}).upstream.client_share, 1.0);
  EXPECT_DOUBLE_EQ(parse_config({{"upstream", {{"client_share", 0.1}}}}).upstream.client_share,
                   0.1);
  for (const nlohmann::json& bad :
       {nlohmann::json(0), nlohmann::json(-0.5), nlohmann::json(1.01)}) {
    EXPECT_THAT(problems_of({{"upstream", {{"client_share", bad}}}}),
                ElementsAre("$.upstream.client_share: must be more than 0 and at most 1"));
  }
  EXPECT_THAT(problems_of({{"upstream", {{"client_share", "0.5"}}}}),
              ElementsAre("$.upstream.client_share: expected a number"));
}

TEST(ConfigLoader, CapsTheUpstreamRateLimitAtWhatTheRateBudgetAccepts) {
  EXPECT_TRUE(
      problems_of({{"upstream", {{"rate_limit_requests", upstream::kMaxRateCapacity}}}}).empty());
  EXPECT_EQ(
      problems_of({{"upstream", {{"rate_limit_requests", upstream::kMaxRateCapacity + 1}}}}).size(),
      1u);
}

TEST(ConfigLoader, CollectsEveryProblemIntoOneError) {
  const json j = {{"listen", {{"port", 70000}, {"threads", 0}}},
                  {"upstream", {{"kind", "http"}}},
                  {"bogus", true}};
  try {
    parse_config(j);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.problems().size(), 4u);
    EXPECT_THAT(e.what(), HasSubstr("$.listen.port: must be between 0 and 65535"));
    EXPECT_THAT(e.what(), HasSubstr("$.bogus: unknown key"));
  }
}

TEST(ConfigLoader, NeverEchoesAHashValueInAProblem) {
  const std::string almost = std::string(63, 'f') + "F";
  EXPECT_THAT(problems_of({{"admin", {{"token_sha256", almost}}}}),
              ElementsAre(::testing::Not(HasSubstr(almost))));
}

class ConfigFile : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sproxy-config-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path write(const std::string& name, const std::string& text) {
    const auto path = dir_ / name;
    std::ofstream(path) << text;
    return path;
  }
  std::filesystem::path dir_;
};

TEST_F(ConfigFile, LoadsAValidFile) {
  const auto path = write("c.json", R"({"listen":{"port":9999},"store":{"data_path":"rel/x.db"}})");
  const Config c = load_config_file(path);
  EXPECT_EQ(c.listen.port, 9999);
  // Relative paths are kept as given: they resolve against the working directory.
  EXPECT_EQ(c.store.data_path, "rel/x.db");
}

TEST_F(ConfigFile, ReportsAMissingFileAsAConfigError) {
  try {
    load_config_file(dir_ / "absent.json");
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    ASSERT_EQ(e.problems().size(), 1u);
    EXPECT_THAT(e.problems()[0], HasSubstr("absent.json: cannot open"));
  }
}

TEST_F(ConfigFile, ReportsInvalidJsonAsAConfigError) {
  const auto path = write("bad.json", R"({"listen": {)");
  try {
    load_config_file(path);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    ASSERT_EQ(e.problems().size(), 1u);
    EXPECT_THAT(e.problems()[0], HasSubstr("bad.json: invalid JSON"));
  }
}

// A number too large for a double is nlohmann's out_of_range, not a parse_error.
TEST_F(ConfigFile, ReportsANumberTooLargeToReadAsInvalidJson) {
  const auto path = write("huge.json", R"({"listen": {"port": 6e43033}})");
  try {
    load_config_file(path);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    ASSERT_EQ(e.problems().size(), 1u);
    EXPECT_THAT(e.problems()[0], HasSubstr("huge.json: invalid JSON"));
  }
}

TEST_F(ConfigFile, ReportsEveryProblemOfTheDocument) {
  const auto path = write("p.json", R"({"listen":{"port":-1},"cache":{"shards":0}})");
  try {
    load_config_file(path);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.problems(), UnorderedElementsAre("$.listen.port: must be between 0 and 65535",
                                                   "$.cache.shards: must be between 1 and 65536"));
  }
}

TEST(CachePersistConfig, IsOffByDefaultAndReadsEveryKey) {
  const Config defaults = parse_config(json::object());
  EXPECT_TRUE(defaults.cache.persist.path.empty());
  EXPECT_EQ(defaults.cache.persist.interval_s, 60);
  EXPECT_TRUE(defaults.cache.persist.key_env.empty());
  EXPECT_TRUE(defaults.cache.persist.key_file.empty());

  const Config c = parse_config(json{{"cache",
                                      {{"persist",
                                        {{"path", "data/cache.snap"},
                                         {"interval_s", 0},
                                         {"key_env", "CACHE_KEY"},
                                         {"key_file", "data/cache.key"}}}}}});
  EXPECT_EQ(c.cache.persist.path, "data/cache.snap");
  EXPECT_EQ(c.cache.persist.interval_s, 0);
  EXPECT_EQ(c.cache.persist.key_env, "CACHE_KEY");
  EXPECT_EQ(c.cache.persist.key_file, "data/cache.key");
}

TEST(CachePersistConfig, RejectsUnknownKeysAndBadValuesWithTheirPaths) {
  try {
    parse_config(json{{"cache", {{"persist", {{"path", 3}, {"interval_s", -1}, {"every", 5}}}}}});
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.problems(),
                UnorderedElementsAre("$.cache.persist.path: expected a string",
                                     "$.cache.persist.interval_s: must be between 0 and 86400",
                                     "$.cache.persist.every: unknown key"));
  }
}

}  // namespace
}  // namespace sproxy::config
