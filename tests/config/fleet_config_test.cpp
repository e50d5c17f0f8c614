// The fleet section of the config: off when absent, strict when present (every key's
// type and range, the Redis URL's form, a key prefix usable inside a hash tag, an ACL
// user only with a password), and the Redis credential read from the environment or a
// file by the same rules as the upstream credential.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>
#include <vector>

#include "config/config.hpp"
#include "config/redis_url.hpp"
#include "config/upstream_credential.hpp"
#include "tests/support/config_problems.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/test_certs.hpp"

namespace sproxy::config {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

std::vector<std::string> fleet_problems(json fleet) {
  return test::problems_of({{"fleet", std::move(fleet)}});
}

TEST(FleetConfig, TheSharedCacheIsOffWithoutItsSectionAndNeedsAKeyWithOne) {
  const json redis = {{"url", "redis://127.0.0.1:6379"}};
  EXPECT_FALSE(parse_config({{"fleet", {{"redis", redis}}}}).fleet.cache.enabled);
  const Config c = parse_config({{"fleet",
                                  {{"redis", redis},
                                   {"cache",
                                    {{"key_env", "FLEET_CACHE_KEY"},
                                     {"key_file", "/run/secrets/fleet-cache-key"},
                                     {"lock_ms", 8000},
                                     {"wait_ms", 3000}}}}}});
  EXPECT_TRUE(c.fleet.cache.enabled);
  EXPECT_EQ(c.fleet.cache.key_env, "FLEET_CACHE_KEY");
  EXPECT_EQ(c.fleet.cache.key_file, "/run/secrets/fleet-cache-key");
  EXPECT_EQ(c.fleet.cache.lock_ms, 8000);
  EXPECT_EQ(c.fleet.cache.wait_ms, 3000);
  EXPECT_FALSE(parse_config({{"fleet", {{"redis", redis}, {"cache", {{"enabled", false}}}}}})
                   .fleet.cache.enabled);

  EXPECT_THAT(fleet_problems({{"redis", redis}, {"cache", json::object()}}),
              ElementsAre(HasSubstr("$.fleet.cache: the shared cache needs key_env or key_file")));
  EXPECT_THAT(fleet_problems({{"redis", redis}, {"cache", {{"key_env", "K"}, {"lock_ms", 0}}}}),
              ElementsAre(HasSubstr("$.fleet.cache.lock_ms")));
  EXPECT_THAT(fleet_problems({{"redis", redis}, {"cache", {{"key_env", "K"}, {"ttl", 1}}}}),
              ElementsAre(HasSubstr("$.fleet.cache.ttl")));
}

TEST(FleetConfig, IsOffWithoutAFleetSection) {
  const Config c = parse_config(json::object());
  EXPECT_FALSE(c.fleet.enabled);
  EXPECT_TRUE(c.fleet.redis.url.empty());
}

TEST(FleetConfig, ReadsEveryKey) {
  const Config c = parse_config({{"fleet",
                                  {{"key_prefix", "edge-eu"},
                                   {"fallback_share", 0.25},
                                   {"redis",
                                    {{"url", "rediss://redis.internal:6380"},
                                     {"ca_file", "/etc/redis-ca.pem"},
                                     {"user_env", "REDIS_USER"},
                                     {"user_file", "/run/secrets/redis-user"},
                                     {"password_env", "REDIS_PASSWORD"},
                                     {"password_file", "/run/secrets/redis-password"},
                                     {"connect_timeout_ms", 500},
                                     {"command_timeout_ms", 50},
                                     {"reconnect_min_ms", 0},
                                     {"reconnect_max_ms", 2000}}}}}});
  EXPECT_TRUE(c.fleet.enabled);
  EXPECT_EQ(c.fleet.key_prefix, "edge-eu");
  EXPECT_DOUBLE_EQ(c.fleet.fallback_share, 0.25);
  const auto& r = c.fleet.redis;
  EXPECT_EQ(r.url, "rediss://redis.internal:6380");
  EXPECT_EQ(r.ca_file, "/etc/redis-ca.pem");
  EXPECT_EQ(r.user_env, "REDIS_USER");
  EXPECT_EQ(r.user_file, "/run/secrets/redis-user");
  EXPECT_EQ(r.password_env, "REDIS_PASSWORD");
  EXPECT_EQ(r.password_file, "/run/secrets/redis-password");
  EXPECT_EQ(r.connect_timeout_ms, 500);
  EXPECT_EQ(r.command_timeout_ms, 50);
  EXPECT_EQ(r.reconnect_min_ms, 0);
  EXPECT_EQ(r.reconnect_max_ms, 2000);
}

TEST(FleetConfig, NeedsARedisUrlWhenPresent) {
  EXPECT_THAT(fleet_problems(json::object()), ElementsAre("$.fleet.redis: required in fleet mode"));
  EXPECT_THAT(fleet_problems({{"redis", json::object()}}),
              ElementsAre("$.fleet.redis.url: required in fleet mode"));
}

TEST(FleetConfig, RejectsUnknownKeysWithTheirPath) {
  EXPECT_THAT(
      fleet_problems({{"redis", {{"url", "redis://127.0.0.1:6379"}, {"password", "x"}}},
                      {"shared_cache", true}}),
      ElementsAre("$.fleet.redis.password: unknown key", "$.fleet.shared_cache: unknown key"));
}

TEST(FleetConfig, RejectsMalformedRedisUrlsWithoutEchoingThem) {
  for (const char* url :
       {"http://127.0.0.1:6379", "redis://127.0.0.1", "redis://:6379",
        "redis://user:pw@127.0.0.1:6379", "redis://127.0.0.1:0", "redis://127.0.0.1:70000",
        "unix://relative/path", "rediss://[::1:6379"}) {
    const auto problems = fleet_problems({{"redis", {{"url", url}}}});
    ASSERT_EQ(problems.size(), 1u) << url;
    EXPECT_THAT(problems[0], HasSubstr("$.fleet.redis.url: ")) << url;
    EXPECT_THAT(problems[0], Not(HasSubstr("pw@"))) << url;
  }
  EXPECT_THAT(fleet_problems({{"redis", {{"url", 6379}}}}),
              ElementsAre("$.fleet.redis.url: expected a string"));
}

TEST(FleetConfig, RejectsOutOfRangeTimeoutsAndAnInvertedBackoff) {
  EXPECT_THAT(
      fleet_problems({{"redis",
                       {{"url", "redis://127.0.0.1:6379"},
                        {"command_timeout_ms", 0},
                        {"connect_timeout_ms", "1s"},
                        {"reconnect_min_ms", 1000},
                        {"reconnect_max_ms", 10}}}}),
      ElementsAre("$.fleet.redis.command_timeout_ms: must be between 1 and 600000",
                  "$.fleet.redis.connect_timeout_ms: expected an integer",
                  "$.fleet.redis.reconnect_max_ms: must not be less than reconnect_min_ms"));
}

TEST(FleetConfig, TakesAFallbackShareAboveZeroAndAtMostOne) {
  const json redis = {{"url", "unix:///run/redis.sock"}};
  EXPECT_DOUBLE_EQ(parse_config({{"fleet", {{"redis", redis}}}}).fleet.fallback_share, 0.5);
  EXPECT_THAT(fleet_problems({{"redis", redis}, {"fallback_share", 1}}), IsEmpty());
  for (const json bad : {json(0), json(1.5), json(-0.1)}) {
    EXPECT_THAT(fleet_problems({{"redis", redis}, {"fallback_share", bad}}),
                ElementsAre("$.fleet.fallback_share: must be more than 0 and at most 1"));
  }
}

TEST(FleetConfig, TakesAMaxUnsyncedTimeFromZeroToTenMinutes) {
  const json redis = {{"url", "unix:///run/redis.sock"}};
  EXPECT_EQ(parse_config({{"fleet", {{"redis", redis}}}}).fleet.max_unsynced_ms, 1000);
  EXPECT_EQ(
      parse_config({{"fleet", {{"redis", redis}, {"max_unsynced_ms", 0}}}}).fleet.max_unsynced_ms,
      0);
  EXPECT_EQ(parse_config({{"fleet", {{"redis", redis}, {"max_unsynced_ms", 2500}}}})
                .fleet.max_unsynced_ms,
            2500);
  EXPECT_THAT(fleet_problems({{"redis", redis}, {"max_unsynced_ms", -1}}),
              ElementsAre("$.fleet.max_unsynced_ms: must be between 0 and 600000"));
  EXPECT_THAT(fleet_problems({{"redis", redis}, {"max_unsynced_ms", "1s"}}),
              ElementsAre("$.fleet.max_unsynced_ms: expected an integer"));
}

TEST(FleetConfig, RefusesAUserWithoutAPassword) {
  EXPECT_THAT(fleet_problems({{"redis", {{"url", "redis://127.0.0.1:6379"}, {"user_env", "U"}}}}),
              ElementsAre("$.fleet.redis: user_env / user_file needs password_env or "
                          "password_file"));
}

TEST(FleetConfig, RefusesAKeyPrefixThatWouldBreakTheHashTags) {
  for (const char* prefix : {"a{b", "a}b", "a b", ""}) {
    const auto problems =
        fleet_problems({{"redis", {{"url", "redis://127.0.0.1:6379"}}}, {"key_prefix", prefix}});
    ASSERT_EQ(problems.size(), 1u) << prefix;
    EXPECT_THAT(problems[0], HasSubstr("$.fleet.key_prefix: ")) << prefix;
  }
}

TEST(RedisUrl, ParsesTheThreeTransports) {
  std::string problem;
  auto tcp = parse_redis_url("redis://redis-0.redis.svc:6379", problem);
  ASSERT_TRUE(tcp) << problem;
  EXPECT_EQ(tcp->transport, RedisUrl::Transport::tcp);
  EXPECT_EQ(tcp->host, "redis-0.redis.svc");
  EXPECT_EQ(tcp->port, 6379);
  auto tls = parse_redis_url("rediss://[::1]:6380", problem);
  ASSERT_TRUE(tls) << problem;
  EXPECT_EQ(tls->transport, RedisUrl::Transport::tls);
  EXPECT_EQ(tls->host, "::1");
  EXPECT_EQ(tls->port, 6380);
  auto unix_socket = parse_redis_url("unix:///run/redis/redis.sock", problem);
  ASSERT_TRUE(unix_socket) << problem;
  EXPECT_EQ(unix_socket->transport, RedisUrl::Transport::unix_socket);
  EXPECT_EQ(unix_socket->path, "/run/redis/redis.sock");
}

class RedisCredentialTest : public ::testing::Test {
 protected:
  void TearDown() override {
    ::unsetenv("SPROXY_TEST_REDIS_USER");
    ::unsetenv("SPROXY_TEST_REDIS_PASSWORD");
  }
  test::TempDir dir_;
};

TEST_F(RedisCredentialTest, ReadsTheEnvironmentFirstThenTheFile) {
  FleetRedisConfig cfg;
  cfg.user_env = "SPROXY_TEST_REDIS_USER";
  cfg.password_env = "SPROXY_TEST_REDIS_PASSWORD";
  cfg.password_file = (dir_.path() / "password").string();
  test::write_file(cfg.password_file, "  from-the-file\n");
  ::setenv("SPROXY_TEST_REDIS_USER", "edge", 1);
  RedisCredential c = read_redis_credential(cfg);
  EXPECT_EQ(c.user, "edge");
  EXPECT_EQ(c.password, "from-the-file");
  ::setenv("SPROXY_TEST_REDIS_PASSWORD", "from-the-env", 1);
  EXPECT_EQ(read_redis_credential(cfg).password, "from-the-env");
}

TEST_F(RedisCredentialTest, NothingConfiguredMeansNoAuth) {
  const RedisCredential c = read_redis_credential(FleetRedisConfig{});
  EXPECT_TRUE(c.user.empty());
  EXPECT_TRUE(c.password.empty());
}

TEST_F(RedisCredentialTest, AMissingSourceNamesTheKeysButNoValue) {
  FleetRedisConfig cfg;
  cfg.user_env = "SPROXY_TEST_REDIS_USER";
  cfg.password_env = "SPROXY_TEST_REDIS_PASSWORD";
  ::setenv("SPROXY_TEST_REDIS_USER", "edge", 1);
  try {
    read_redis_credential(cfg);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("redis credential missing: environment variable "
                                    "SPROXY_TEST_REDIS_PASSWORD (fleet.redis.password_env)"));
    EXPECT_THAT(e.what(), Not(HasSubstr("edge")));
  }
  cfg.password_env.clear();
  cfg.password_file = (dir_.path() / "absent").string();
  EXPECT_THROW(read_redis_credential(cfg), std::runtime_error);
}

}  // namespace
}  // namespace sproxy::config
