// The config loader: defaults, every key read into its struct member, emulation and audit
// settings, unknown keys, types and ranges.
#include "tests/config/config_fixture.hpp"

namespace sproxy::config {
namespace {

using namespace config_testing;

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

// A config whose keys of listen, clients, store, upstream, cache, admin, audit and
// emulation are set, most of them to values other than their defaults.
json every_key_config() {
  return {
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
}

// What parse_config(every_key_config()) reads into listen, clients and store.
void expect_listen_clients_and_store_of_every_key_config(const Config& c) {
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
}

// What parse_config(every_key_config()) reads into upstream, cache, admin, audit and
// emulation.
void expect_upstream_cache_and_the_rest_of_every_key_config(const Config& c) {
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

TEST(ConfigLoader, ReadsEveryKeyIntoTheMatchingStructMember) {
  const Config c = parse_config(every_key_config());
  expect_listen_clients_and_store_of_every_key_config(c);
  expect_upstream_cache_and_the_rest_of_every_key_config(c);
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

}  // namespace
}  // namespace sproxy::config
