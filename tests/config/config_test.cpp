#include "config/config.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/support/config_problems.hpp"
#include "upstream/model.hpp"
#include "upstream/resilience.hpp"

namespace sproxy::config {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

const std::string kHashA(64, 'a');
const std::string kHashB(64, 'b');
const std::string kAccount(32, 'c');
const std::string kStore(32, 'd');

using test::problems_of;

json token_client(std::string name, std::string token_sha256) {
  return {{"name", std::move(name)},
          {"token_sha256", std::move(token_sha256)},
          {"accounts", {"*"}},
          {"permissions", {"read"}}};
}

TEST(ConfigLoader, GivesTheStructDefaultsForAnEmptyObject) {
  const Config c = parse_config(json::object());
  const Config defaults;
  EXPECT_EQ(c.listen.address, defaults.listen.address);
  EXPECT_EQ(c.listen.port, defaults.listen.port);
  EXPECT_EQ(c.listen.threads, defaults.listen.threads);
  EXPECT_EQ(c.listen.max_body_bytes, defaults.listen.max_body_bytes);
  EXPECT_TRUE(c.clients.empty());
  EXPECT_EQ(c.store.data_path, defaults.store.data_path);
  EXPECT_EQ(c.upstream.kind, UpstreamKind::embedded);
  EXPECT_EQ(c.cache.enabled, defaults.cache.enabled);
  EXPECT_EQ(c.cache.ttl.secrets_ms, defaults.cache.ttl.secrets_ms);
  EXPECT_TRUE(c.admin.token_sha256.empty());
}

TEST(ConfigLoader, ReadsEveryKeyIntoTheMatchingStructMember) {
  const json j = {
      {"listen",
       {{"address", "0.0.0.0"},
        {"port", 0},
        {"threads", 4},
        {"max_header_bytes", 8192},
        {"max_body_bytes", 4096},
        {"max_body_bytes_in_flight", 65536},
        {"read_timeout_ms", 1},
        {"idle_timeout_ms", 2},
        {"write_timeout_ms", 3},
        {"shutdown_grace_ms", 4},
        {"max_connections", 5}}},
      {"clients",
       {{{"name", "api"},
         {"token_sha256", kHashA},
         {"email", "ops@example.com"},
         {"key_sha256", kHashB},
         {"services", {"workers", "dex"}},
         {"accounts", {kAccount}},
         {"stores", {kStore}},
         {"permissions", {"read", "write"}}}}},
      {"store",
       {{"data_path", "d.db"},
        {"key_env", "K"},
        {"key_file", "k.key"},
        {"max_stores_per_account", 2},
        {"max_secrets_per_account", 3},
        {"max_value_bytes", 10},
        {"activation_delay_ms", 0}}},
      {"upstream",
       {{"kind", "http"},
        {"base_url", "http://127.0.0.1:9000/client/v4"},
        {"token_env", "TOK"},
        {"token_file", "tok.txt"},
        {"connect_timeout_ms", 7},
        {"request_timeout_ms", 8},
        {"max_connections", 9},
        {"preconnect", 4}}},
      {"cache",
       {{"enabled", false},
        {"ttl",
         {{"stores_ms", 0},
          {"store_ms", 1},
          {"secrets_ms", 2},
          {"quota_ms", 3},
          {"negative_ms", 4}}},
        {"stale_if_error_ms", 0},
        {"max_bytes", 100},
        {"max_entry_bytes", 50},
        {"shards", 2},
        {"max_waiters", 6},
        {"max_wait_ms", 11}}},
      {"admin", {{"token_sha256", kHashB}}},
      {"audit", {{"enabled", false}, {"path", "audit.jsonl"}, {"reads", true}}},
      {"emulation",
       {{"latency_ms", 25},
        {"error_rate", 0.25},
        {"rate_limit", true},
        {"rate_limit_requests", 10},
        {"rate_limit_window_s", 60},
        {"rate_limit_block_s", 30}}},
  };
  const Config c = parse_config(j);
  EXPECT_EQ(c.listen.address, "0.0.0.0");
  EXPECT_EQ(c.listen.port, 0);
  EXPECT_EQ(c.listen.threads, 4);
  EXPECT_EQ(c.listen.max_header_bytes, 8192u);
  EXPECT_EQ(c.listen.max_body_bytes, 4096u);
  EXPECT_EQ(c.listen.max_body_bytes_in_flight, 65536u);
  EXPECT_EQ(c.listen.read_timeout_ms, 1);
  EXPECT_EQ(c.listen.idle_timeout_ms, 2);
  EXPECT_EQ(c.listen.write_timeout_ms, 3);
  EXPECT_EQ(c.listen.shutdown_grace_ms, 4);
  EXPECT_EQ(c.listen.max_connections, 5u);
  ASSERT_EQ(c.clients.size(), 1u);
  EXPECT_EQ(c.clients[0].name, "api");
  EXPECT_EQ(c.clients[0].token_sha256, kHashA);
  EXPECT_EQ(c.clients[0].email, "ops@example.com");
  EXPECT_EQ(c.clients[0].key_sha256, kHashB);
  EXPECT_THAT(c.clients[0].services, ElementsAre("workers", "dex"));
  EXPECT_THAT(c.clients[0].accounts, ElementsAre(kAccount));
  EXPECT_THAT(c.clients[0].stores, ElementsAre(kStore));
  EXPECT_THAT(c.clients[0].permissions, ElementsAre("read", "write"));
  EXPECT_EQ(c.store.data_path, "d.db");
  EXPECT_EQ(c.store.key_env, "K");
  EXPECT_EQ(c.store.key_file, "k.key");
  EXPECT_EQ(c.store.max_stores_per_account, 2);
  EXPECT_EQ(c.store.max_secrets_per_account, 3);
  EXPECT_EQ(c.store.max_value_bytes, 10u);
  EXPECT_EQ(c.store.activation_delay_ms, 0);
  EXPECT_EQ(c.upstream.kind, UpstreamKind::http);
  EXPECT_EQ(c.upstream.base_url, "http://127.0.0.1:9000/client/v4");
  EXPECT_EQ(c.upstream.token_env, "TOK");
  EXPECT_EQ(c.upstream.token_file, "tok.txt");
  EXPECT_EQ(c.upstream.connect_timeout_ms, 7);
  EXPECT_EQ(c.upstream.request_timeout_ms, 8);
  EXPECT_EQ(c.upstream.max_connections, 9u);
  EXPECT_EQ(c.upstream.preconnect, 4u);
  EXPECT_FALSE(c.cache.enabled);
  EXPECT_EQ(c.cache.ttl.stores_ms, 0);
  EXPECT_EQ(c.cache.ttl.store_ms, 1);
  EXPECT_EQ(c.cache.ttl.secrets_ms, 2);
  EXPECT_EQ(c.cache.ttl.quota_ms, 3);
  EXPECT_EQ(c.cache.ttl.negative_ms, 4);
  EXPECT_EQ(c.cache.stale_if_error_ms, 0);
  EXPECT_EQ(c.cache.max_bytes, 100u);
  EXPECT_EQ(c.cache.max_entry_bytes, 50u);
  EXPECT_EQ(c.cache.shards, 2);
  EXPECT_EQ(c.cache.max_waiters, 6u);
  EXPECT_EQ(c.cache.max_wait_ms, 11);
  EXPECT_EQ(c.admin.token_sha256, kHashB);
  EXPECT_FALSE(c.audit.enabled);
  EXPECT_EQ(c.audit.path, "audit.jsonl");
  EXPECT_TRUE(c.audit.reads);
  EXPECT_EQ(c.emulation.latency_ms, 25);
  EXPECT_DOUBLE_EQ(c.emulation.error_rate, 0.25);
  EXPECT_TRUE(c.emulation.rate_limit);
  EXPECT_EQ(c.emulation.rate_limit_requests, 10);
  EXPECT_EQ(c.emulation.rate_limit_window_s, 60);
  EXPECT_EQ(c.emulation.rate_limit_block_s, 30);
}

TEST(ConfigLoader, KeepsEmulationOffByDefault) {
  const Config c = parse_config(json::object());
  EXPECT_EQ(c.emulation.latency_ms, 0);
  EXPECT_EQ(c.emulation.error_rate, 0.0);
  EXPECT_FALSE(c.emulation.rate_limit);
}

TEST(ConfigLoader, RejectsEmulationValuesOutOfRange) {
  const json j = {{"emulation",
                   {{"latency_ms", -1},
                    {"error_rate", 1.5},
                    {"rate_limit", 1},
                    {"rate_limit_requests", 0},
                    {"rate_limit_window_s", 0},
                    {"rate_limit_block_s", 0}}}};
  EXPECT_THAT(problems_of(j),
              UnorderedElementsAre("$.emulation.latency_ms: must be between 0 and 60000",
                                   "$.emulation.error_rate: must be between 0 and 1",
                                   "$.emulation.rate_limit: expected a boolean",
                                   "$.emulation.rate_limit_requests: must be at least 1",
                                   "$.emulation.rate_limit_window_s: must be at least 1",
                                   "$.emulation.rate_limit_block_s: must be at least 1"));
  EXPECT_THAT(problems_of({{"emulation", {{"error_rate", "half"}}}}),
              ElementsAre("$.emulation.error_rate: expected a number"));
  EXPECT_THAT(problems_of({{"emulation", {{"latency_ms", 60'001}, {"error_rate", -0.01}}}}),
              UnorderedElementsAre("$.emulation.latency_ms: must be between 0 and 60000",
                                   "$.emulation.error_rate: must be between 0 and 1"));
}

TEST(ConfigLoader, AcceptsEmulationValuesAtTheEdgesOfTheirRanges) {
  const Config c = parse_config({{"emulation", {{"latency_ms", 60'000}, {"error_rate", 1}}}});
  EXPECT_EQ(c.emulation.latency_ms, 60'000);
  EXPECT_DOUBLE_EQ(c.emulation.error_rate, 1.0);
  EXPECT_DOUBLE_EQ(parse_config({{"emulation", {{"error_rate", 0}}}}).emulation.error_rate, 0.0);
}

TEST(ConfigLoader, AuditsWritesAndDenialsToStderrButNotReadsByDefault) {
  const Config c = parse_config(json::object());
  EXPECT_TRUE(c.audit.enabled);
  EXPECT_EQ(c.audit.path, "");
  EXPECT_FALSE(c.audit.reads);
}

TEST(ConfigLoader, RejectsMistypedAndUnknownAuditKeys) {
  EXPECT_THAT(
      problems_of({{"audit", {{"enabled", 1}, {"path", false}, {"reads", "no"}, {"file", "x"}}}}),
      UnorderedElementsAre("$.audit.enabled: expected a boolean", "$.audit.path: expected a string",
                           "$.audit.reads: expected a boolean", "$.audit.file: unknown key"));
  EXPECT_THAT(problems_of({{"audit", json::array()}}), ElementsAre("$.audit: expected an object"));
}

TEST(ConfigLoader, RejectsUnknownKeysAtEveryLevelWithTheirPaths) {
  const json j = {{"listn", {}},
                  {"listen", {{"prot", 1}}},
                  {"cache", {{"ttl", {{"secret_ms", 1}}}}},
                  {"clients",
                   {{{"name", "a"},
                     {"token_sha256", kHashA},
                     {"accounts", {"*"}},
                     {"permissions", {"read"}},
                     {"role", "x"}}}}};
  EXPECT_THAT(
      problems_of(j),
      UnorderedElementsAre("$.listn: unknown key", "$.listen.prot: unknown key",
                           "$.cache.ttl.secret_ms: unknown key", "$.clients[0].role: unknown key"));
}

TEST(ConfigLoader, RejectsWrongTypesWithTheExpectedType) {
  const json j = {{"listen", {{"address", 1}, {"port", "8787"}, {"threads", 1.5}}},
                  {"cache", {{"enabled", "yes"}, {"ttl", 3}}},
                  {"clients", json::object()},
                  {"admin", json::array()}};
  EXPECT_THAT(problems_of(j),
              UnorderedElementsAre(
                  "$.listen.address: expected a string", "$.listen.port: expected an integer",
                  "$.listen.threads: expected an integer", "$.cache.enabled: expected a boolean",
                  "$.cache.ttl: expected an object", "$.clients: expected an array",
                  "$.admin: expected an object"));
}

TEST(ConfigLoader, RequiresANumericListenAddress) {
  EXPECT_THAT(problems_of({{"listen", {{"address", "localhost"}}}}),
              ElementsAre("$.listen.address: expected an IPv4 or IPv6 address"));
  EXPECT_TRUE(problems_of({{"listen", {{"address", "::1"}}}}).empty());
  EXPECT_TRUE(problems_of({{"listen", {{"address", "0.0.0.0"}}}}).empty());
}

TEST(ConfigLoader, RejectsARootThatIsNotAnObject) {
  EXPECT_THAT(problems_of(json::array()), ElementsAre("$: expected an object"));
}

TEST(ConfigLoader, RejectsPortsOutsideTheTcpRange) {
  EXPECT_THAT(problems_of({{"listen", {{"port", 65536}}}}),
              ElementsAre("$.listen.port: must be between 0 and 65535"));
  EXPECT_THAT(problems_of({{"listen", {{"port", -1}}}}),
              ElementsAre("$.listen.port: must be between 0 and 65535"));
  EXPECT_TRUE(problems_of({{"listen", {{"port", 0}}}}).empty());
}

TEST(ConfigLoader, RequiresAtLeastOneThread) {
  EXPECT_THAT(problems_of({{"listen", {{"threads", 0}}}}),
              ElementsAre("$.listen.threads: must be between 1 and 1024"));
}

TEST(ConfigLoader, RequiresSizesAndTimeoutsGreaterThanZero) {
  const json j = {
      {"listen",
       {{"max_header_bytes", 0},
        {"max_body_bytes", -5},
        {"max_body_bytes_in_flight", 0},
        {"read_timeout_ms", 0},
        {"idle_timeout_ms", 0},
        {"write_timeout_ms", 0},
        {"shutdown_grace_ms", 0},
        {"max_connections", 0}}},
      {"store",
       {{"max_value_bytes", 0}, {"max_stores_per_account", 0}, {"max_secrets_per_account", 0}}},
      {"upstream", {{"connect_timeout_ms", 0}, {"request_timeout_ms", 0}, {"max_connections", 0}}},
      {"cache",
       {{"max_bytes", 0}, {"max_entry_bytes", 0}, {"max_waiters", 0}, {"max_wait_ms", 0}}}};
  const auto problems = problems_of(j);
  EXPECT_EQ(problems.size(), 18u);
  for (const auto& p : problems) EXPECT_THAT(p, HasSubstr(": must be at least 1")) << p;
  EXPECT_THAT(problems, ::testing::Contains("$.listen.max_body_bytes: must be at least 1"));
  EXPECT_THAT(problems,
              ::testing::Contains("$.listen.max_body_bytes_in_flight: must be at least 1"));
  EXPECT_THAT(problems, ::testing::Contains("$.upstream.request_timeout_ms: must be at least 1"));
}

TEST(ConfigLoader, RejectsIntegersTooLargeForTheirMember) {
  EXPECT_THAT(problems_of({{"listen", {{"read_timeout_ms", 3'000'000'000LL}}}}),
              ElementsAre("$.listen.read_timeout_ms: must be at most 2147483647"));
}

TEST(ConfigLoader, RequiresTtlsOfZeroOrMore) {
  const json j = {
      {"cache", {{"ttl", {{"stores_ms", -1}, {"negative_ms", -1}}}, {"stale_if_error_ms", -1}}},
      {"store", {{"activation_delay_ms", -1}}}};
  EXPECT_THAT(problems_of(j),
              UnorderedElementsAre("$.cache.ttl.stores_ms: must be 0 or greater",
                                   "$.cache.ttl.negative_ms: must be 0 or greater",
                                   "$.cache.stale_if_error_ms: must be 0 or greater",
                                   "$.store.activation_delay_ms: must be 0 or greater"));
}

TEST(ConfigLoader, ReadsRefreshAheadAndStaleWhileRevalidateOfZeroOrMore) {
  const Config defaults = parse_config(json::object());
  EXPECT_EQ(defaults.cache.refresh_ahead_ms, 2000);
  EXPECT_EQ(defaults.cache.stale_while_revalidate_ms, 5000);
  const Config c =
      parse_config({{"cache", {{"refresh_ahead_ms", 0}, {"stale_while_revalidate_ms", 7}}}});
  EXPECT_EQ(c.cache.refresh_ahead_ms, 0);
  EXPECT_EQ(c.cache.stale_while_revalidate_ms, 7);
  EXPECT_THAT(
      problems_of({{"cache", {{"refresh_ahead_ms", -1}, {"stale_while_revalidate_ms", -2}}}}),
      UnorderedElementsAre("$.cache.refresh_ahead_ms: must be 0 or greater",
                           "$.cache.stale_while_revalidate_ms: must be 0 or greater"));
}

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
