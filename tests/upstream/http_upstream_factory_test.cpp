// make_upstream: the upstream built from the config, its credential from the environment or
// files, the guard around it, and the embedded store.
#include "tests/upstream/http_upstream_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace http_testing;

// ---------------------------------------------------------------------------------------
// Factory

class ScopedEnv {
 public:
  ScopedEnv(std::string name, const char* value) : name_(std::move(name)) {
    if (value) {
      ::setenv(name_.c_str(), value, 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  ~ScopedEnv() { ::unsetenv(name_.c_str()); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
};

constexpr const char* kTokenEnv = "SPROXY_TEST_UPSTREAM_TOKEN";
constexpr const char* kNothingListens = "http://127.0.0.1:9/client/v4";

// An http upstream config; the token from the environment variable `token_env` unless
// that is empty.
config::Config http_config(std::string base_url = kNothingListens,
                           std::string token_env = kTokenEnv) {
  config::Config cfg;
  cfg.upstream.kind = config::UpstreamKind::http;
  cfg.upstream.base_url = std::move(base_url);
  cfg.upstream.token_env = std::move(token_env);
  return cfg;
}

std::string factory_error(const config::Config& cfg) {
  try {
    make_upstream(cfg);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(MakeUpstream, BuildsAnHttpUpstreamThatSendsTheTokenFromTheEnvironment) {
  ScriptedHttpServer server(ok_script());
  ScopedEnv env(kTokenEnv, "  env-token-42\n");
  config::Config cfg = http_config(server.base_url());

  auto upstream = make_upstream(cfg);
  asio::io_context io;
  auto result = run_call(io, *upstream, get());

  EXPECT_EQ(upstream->describe(), "guarded(" + server.base_url() + ")");
  ASSERT_TRUE(result.has_value()) << result.error().message();
  ASSERT_EQ(server.request_count(), 1u);
  EXPECT_EQ(server.requests()[0].header("Authorization"), "Bearer env-token-42");
}

TEST(MakeUpstream, ReadsTheTokenFromTheFileWhenTheEnvironmentVariableIsUnset) {
  ScriptedHttpServer server(ok_script());
  auto dir = fresh_temp_dir("token_file");
  { std::ofstream(dir / "token") << "file-token-9\n"; }
  ScopedEnv env(kTokenEnv, nullptr);
  config::Config cfg = http_config(server.base_url());
  cfg.upstream.token_file = (dir / "token").string();

  auto upstream = make_upstream(cfg);
  asio::io_context io;
  ASSERT_TRUE(run_call(io, *upstream, get()).has_value());

  EXPECT_EQ(server.requests().at(0).header("Authorization"), "Bearer file-token-9");
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, NamesTheEnvironmentVariableWhenTheCredentialIsMissing) {
  ScopedEnv env(kTokenEnv, nullptr);
  config::Config cfg = http_config();

  EXPECT_THAT(factory_error(cfg), HasSubstr(kTokenEnv));
}

TEST(MakeUpstream, NamesTheTokenFileWhenItCannotBeReadOrIsEmpty) {
  auto dir = fresh_temp_dir("token_missing");
  config::Config cfg = http_config(kNothingListens, "");
  cfg.upstream.token_file = (dir / "absent").string();
  EXPECT_THAT(factory_error(cfg), HasSubstr((dir / "absent").string()));

  { std::ofstream(dir / "empty") << " \n"; }
  cfg.upstream.token_file = (dir / "empty").string();
  EXPECT_THAT(factory_error(cfg), HasSubstr("is empty"));
  std::filesystem::remove_all(dir);
}

constexpr const char* kEmailEnv = "SPROXY_TEST_UPSTREAM_EMAIL";
constexpr const char* kApiKeyEnv = "SPROXY_TEST_UPSTREAM_API_KEY";

// An http upstream config with the email + global API key credential from the
// environment variables kEmailEnv and kApiKeyEnv.
config::Config key_pair_config(std::string base_url = kNothingListens) {
  config::Config cfg = http_config(std::move(base_url), "");
  cfg.upstream.email_env = kEmailEnv;
  cfg.upstream.api_key_env = kApiKeyEnv;
  return cfg;
}

TEST(MakeUpstream, BuildsAnHttpUpstreamThatSendsTheEmailAndKeyFromTheEnvironment) {
  ScriptedHttpServer server(ok_script());
  ScopedEnv email(kEmailEnv, " ops@example.com\n");
  ScopedEnv key(kApiKeyEnv, kApiKey);

  auto upstream = make_upstream(key_pair_config(server.base_url()));
  asio::io_context io;
  auto result = run_call(io, *upstream, get());

  ASSERT_TRUE(result.has_value()) << result.error().message();
  ASSERT_EQ(server.request_count(), 1u);
  EXPECT_EQ(server.requests()[0].header("X-Auth-Email"), kEmail);
  EXPECT_EQ(server.requests()[0].header("X-Auth-Key"), kApiKey);
  EXPECT_EQ(server.requests()[0].header("Authorization"), std::nullopt);
}

TEST(MakeUpstream, ReadsTheEmailAndKeyFromFilesWhenTheVariablesAreUnset) {
  ScriptedHttpServer server(ok_script());
  auto dir = fresh_temp_dir("key_pair_files");
  { std::ofstream(dir / "email") << kEmail << "\n"; }
  { std::ofstream(dir / "api_key") << kApiKey << "\n"; }
  ScopedEnv email(kEmailEnv, nullptr);
  ScopedEnv key(kApiKeyEnv, nullptr);
  config::Config cfg = key_pair_config(server.base_url());
  cfg.upstream.email_file = (dir / "email").string();
  cfg.upstream.api_key_file = (dir / "api_key").string();

  auto upstream = make_upstream(cfg);
  asio::io_context io;
  ASSERT_TRUE(run_call(io, *upstream, get()).has_value());

  EXPECT_EQ(server.requests().at(0).header("X-Auth-Email"), kEmail);
  EXPECT_EQ(server.requests().at(0).header("X-Auth-Key"), kApiKey);
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, RefusesATokenAndAnEmailAndKeyTogether) {
  ScopedEnv token(kTokenEnv, "t");
  ScopedEnv email(kEmailEnv, kEmail);
  ScopedEnv key(kApiKeyEnv, kApiKey);
  config::Config cfg = key_pair_config();
  cfg.upstream.token_env = kTokenEnv;

  const std::string message = factory_error(cfg);

  EXPECT_THAT(message, HasSubstr("upstream.token_env"));
  EXPECT_THAT(message, HasSubstr("upstream.api_key_env"));
  EXPECT_THAT(message, HasSubstr("not both"));
  EXPECT_THAT(message, Not(HasSubstr(kApiKey)));
}

TEST(MakeUpstream, NamesTheMissingHalfOfAnEmailAndKeyPair) {
  ScopedEnv key(kApiKeyEnv, kApiKey);
  config::Config only_key = http_config(kNothingListens, "");
  only_key.upstream.api_key_env = kApiKeyEnv;
  EXPECT_THAT(factory_error(only_key),
              HasSubstr("needs upstream.email_env or upstream.email_file"));

  config::Config only_email = http_config(kNothingListens, "");
  only_email.upstream.email_file = "/nonexistent/email";
  EXPECT_THAT(factory_error(only_email),
              HasSubstr("needs upstream.api_key_env or upstream.api_key_file"));
}

TEST(MakeUpstream, NamesTheUnsetVariableOrUnreadableFileButNeverTheKey) {
  auto dir = fresh_temp_dir("key_pair_missing");
  ScopedEnv email(kEmailEnv, kEmail);
  ScopedEnv key(kApiKeyEnv, nullptr);
  config::Config cfg = key_pair_config();
  EXPECT_THAT(factory_error(cfg), HasSubstr(std::string(kApiKeyEnv) + " (upstream.api_key_env)"));

  cfg.upstream.api_key_file = (dir / "absent").string();
  EXPECT_THAT(factory_error(cfg), HasSubstr("upstream.api_key_file " + (dir / "absent").string()));

  // A key that cannot go into a header is refused without being echoed.
  ScopedEnv bad_key(kApiKeyEnv, "secret-global-key\x01tail");
  const std::string message = factory_error(key_pair_config());
  EXPECT_THAT(message, HasSubstr("global API key"));
  EXPECT_THAT(message, Not(HasSubstr("secret-global-key")));
  EXPECT_THAT(message, Not(HasSubstr(kEmail)));
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, NamesBothCredentialKindsWhenNoneIsConfigured) {
  const std::string message = factory_error(http_config(kNothingListens, ""));
  EXPECT_THAT(message, HasSubstr("upstream.token_env"));
  EXPECT_THAT(message, HasSubstr("upstream.email_env"));
  EXPECT_THAT(message, HasSubstr("upstream.api_key_env"));
}

TEST(MakeUpstream, RejectsAMalformedBaseUrl) {
  ScopedEnv env(kTokenEnv, "t");
  config::Config cfg = http_config("http://127.0.0.1:9000/api");

  EXPECT_THAT(factory_error(cfg), HasSubstr("upstream.base_url"));
}

TEST(MakeUpstream, GuardsAnHttpUpstreamWithTheConfiguredLimits) {
  ScriptedHttpServer server(ok_script());
  ScopedEnv env(kTokenEnv, "t");
  config::Config cfg = http_config(server.base_url());
  cfg.upstream.rate_limit_requests = 600;
  cfg.upstream.rate_limit_window_s = 60;
  cfg.upstream.rate_limit_margin = 0.25;
  cfg.upstream.rate_limit_per_second = 40;
  cfg.upstream.max_retries = 4;
  cfg.upstream.breaker_failures = 7;
  cfg.upstream.breaker_open_ms = 1'234;
  cfg.upstream.write_budget_wait_ms = 0;

  auto upstream = make_upstream(cfg);

  EXPECT_EQ(upstream->describe().rfind("guarded(", 0), 0u) << upstream->describe();
  auto guarded = std::dynamic_pointer_cast<GuardedUpstream>(upstream);
  ASSERT_NE(guarded, nullptr);
  const GuardedUpstreamOptions& o = guarded->options();
  EXPECT_EQ(o.budget.limit, 600);
  EXPECT_EQ(o.budget.window, 60s);
  EXPECT_DOUBLE_EQ(o.budget.safety_margin, 0.25);
  EXPECT_EQ(o.budget.burst_limit, 40);
  EXPECT_EQ(o.max_retries, 4);
  EXPECT_EQ(o.breaker.failure_threshold, 7);
  EXPECT_EQ(o.breaker.open_duration, 1'234ms);
  EXPECT_EQ(o.write_budget_wait, 0ms);
  EXPECT_EQ(guarded->budget_snapshot().capacity, 450);  // 600 less the 25% margin
}

TEST(MakeUpstream, AnswersFromTheGuardOnceTheConfiguredBudgetIsSpent) {
  ScriptedHttpServer server(ok_script());
  ScopedEnv env(kTokenEnv, "t");
  config::Config cfg = http_config(server.base_url());
  cfg.upstream.rate_limit_requests = 1;
  cfg.upstream.rate_limit_margin = 0;

  auto upstream = make_upstream(cfg);
  asio::io_context io;
  auto first = run_call(io, *upstream, get());
  auto second = run_call(io, *upstream, get());

  ASSERT_TRUE(first.has_value()) << first.error().message();
  EXPECT_EQ(first->status, 200u);
  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(second->status, 429u);
  EXPECT_TRUE(second->retry_after.has_value());
  EXPECT_EQ(server.request_count(), 1u);  // the second call never left the proxy
}

TEST(MakeUpstream, PassesTheTlsCaFileToTheHttpUpstream) {
  ScopedEnv env(kTokenEnv, "t");
  config::UpstreamConfig cfg;
  cfg.kind = config::UpstreamKind::http;
  cfg.base_url = "https://127.0.0.1:9/client/v4";
  cfg.token_env = kTokenEnv;
  cfg.tls_ca_file = "/nonexistent/sproxy-test-ca.pem";

  EXPECT_EQ(http_upstream_options(cfg).tls_ca_file, "/nonexistent/sproxy-test-ca.pem");
  config::Config full;
  full.upstream = cfg;
  // The unloadable CA file is reported at start-up, so it did reach the TLS context.
  EXPECT_THAT(factory_error(full), HasSubstr("/nonexistent/sproxy-test-ca.pem"));
}

// An embedded-store config in `dir`, keyed by SPROXY_TEST_STORE_KEY (set it to
// kEmbeddedTestKey for the test's scope).
constexpr const char* kEmbeddedTestKey =
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
config::Config embedded_store_config(const std::filesystem::path& dir) {
  config::Config cfg;
  cfg.store.data_path = (dir / "store.db").string();
  cfg.store.key_env = "SPROXY_TEST_STORE_KEY";
  cfg.store.key_file = (dir / "store.key").string();
  return cfg;
}

TEST(MakeUpstream, DoesNotGuardTheEmbeddedStore) {
  auto dir = fresh_temp_dir("embedded_unguarded");
  ScopedEnv key("SPROXY_TEST_STORE_KEY", kEmbeddedTestKey);
  config::Config cfg = embedded_store_config(dir);
  cfg.upstream.rate_limit_requests = 1;

  auto upstream = make_upstream(cfg);

  EXPECT_EQ(std::dynamic_pointer_cast<GuardedUpstream>(upstream), nullptr);
  EXPECT_EQ(upstream->describe().find("guarded("), std::string::npos);
  upstream.reset();
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, BuildsTheEmbeddedStoreByDefault) {
  auto dir = fresh_temp_dir("embedded");
  ScopedEnv key("SPROXY_TEST_STORE_KEY", kEmbeddedTestKey);
  config::Config cfg = embedded_store_config(dir);

  auto upstream = make_upstream(cfg);

  EXPECT_EQ(upstream->describe(), "embedded");
  EXPECT_NE(dynamic_cast<EmbeddedUpstream*>(upstream.get()), nullptr);
  upstream.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sproxy::upstream
