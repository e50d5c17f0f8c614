// The `log` section and the environment overrides (apply_env_overrides).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace sproxy::config {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A fake environment: only the variables in the map are set.
EnvLookup env_of(std::map<std::string, std::string> vars) {
  auto held = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [held](const char* name) -> const char* {
    auto it = held->find(name);
    return it == held->end() ? nullptr : it->second.c_str();
  };
}

std::vector<std::string> env_problems(Config& c, std::map<std::string, std::string> vars) {
  try {
    apply_env_overrides(c, env_of(std::move(vars)));
  } catch (const ConfigError& e) {
    return e.problems();
  }
  return {};
}

TEST(LogConfig, DefaultsToJsonLinesAtInfoOnStdoutWithAccessLines) {
  const Config c = parse_config(json::object());
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.format, LogFormat::json);
  EXPECT_EQ(c.log.file, "");
  EXPECT_TRUE(c.log.access);
  EXPECT_EQ(c.admin.token_env, "SPROXY_ADMIN_TOKEN");
}

TEST(LogConfig, ReadsEveryKey) {
  const Config c = parse_config(
      {{"log",
        {{"level", "debug"}, {"format", "text"}, {"file", "/tmp/x.log"}, {"access", false}}}});
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.format, LogFormat::text);
  EXPECT_EQ(c.log.file, "/tmp/x.log");
  EXPECT_FALSE(c.log.access);
}

TEST(LogConfig, RejectsUnknownLevelsFormatsAndKeys) {
  try {
    parse_config({{"log", {{"level", "loud"}, {"format", "xml"}, {"access", "yes"}, {"x", 1}}}});
    FAIL() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.problems(), ElementsAre(HasSubstr("$.log.access: expected a boolean"),
                                          HasSubstr("$.log.format: unknown value \"xml\""),
                                          HasSubstr("$.log.level: unknown value \"loud\""),
                                          HasSubstr("$.log.x: unknown key")));
  }
}

TEST(EnvOverrides, ReplaceTheListenAddressPortAndLogSettings) {
  Config c = parse_config({{"listen", {{"address", "127.0.0.1"}, {"port", 8787}}}});
  EXPECT_TRUE(env_problems(c, {{"SPROXY_LISTEN_ADDRESS", "::1"},
                               {"SPROXY_LISTEN_PORT", "9999"},
                               {"SPROXY_LOG_LEVEL", "warn"},
                               {"SPROXY_LOG_FORMAT", "text"},
                               {"SPROXY_LOG_FILE", "/var/log/p.log"},
                               {"SPROXY_LOG_ACCESS", "false"},
                               {"SPROXY_ADMIN_TOKEN_SHA256", std::string(64, 'e')}})
                  .empty());
  EXPECT_EQ(c.listen.address, "::1");
  EXPECT_EQ(c.listen.port, 9999);
  EXPECT_EQ(c.log.level, "warn");
  EXPECT_EQ(c.log.format, LogFormat::text);
  EXPECT_EQ(c.log.file, "/var/log/p.log");
  EXPECT_FALSE(c.log.access);
  EXPECT_EQ(c.admin.token_sha256, std::string(64, 'e'));
}

TEST(EnvOverrides, LeaveTheFileAloneWhenUnset) {
  Config c = parse_config({{"listen", {{"port", 1234}}}, {"log", {{"level", "debug"}}}});
  EXPECT_TRUE(env_problems(c, {}).empty());
  EXPECT_EQ(c.listen.port, 1234);
  EXPECT_EQ(c.log.level, "debug");
}

TEST(EnvOverrides, ReportEveryBadValueByItsVariable) {
  Config c = parse_config(json::object());
  const auto problems = env_problems(c, {{"SPROXY_LISTEN_ADDRESS", "localhost"},
                                         {"SPROXY_LISTEN_PORT", "70000"},
                                         {"SPROXY_LOG_LEVEL", "chatty"},
                                         {"SPROXY_LOG_ACCESS", "maybe"},
                                         {"SPROXY_ADMIN_TOKEN_SHA256", "nothex"}});
  EXPECT_THAT(problems,
              ElementsAre(HasSubstr("env SPROXY_LISTEN_ADDRESS: expected an IPv4"),
                          HasSubstr("env SPROXY_LISTEN_PORT: must be between 0 and 65535"),
                          HasSubstr("env SPROXY_ADMIN_TOKEN_SHA256: expected 64"),
                          HasSubstr("env SPROXY_LOG_LEVEL: unknown value \"chatty\""),
                          HasSubstr("env SPROXY_LOG_ACCESS: expected a boolean")));
  // Nothing was half-applied to the values that were refused.
  EXPECT_EQ(c.listen.address, "127.0.0.1");
  EXPECT_EQ(c.listen.port, 8787);
}

TEST(EnvOverrides, RejectsANonNumericPort) {
  Config c = parse_config(json::object());
  EXPECT_THAT(env_problems(c, {{"SPROXY_LISTEN_PORT", "80a"}}),
              ElementsAre(HasSubstr("env SPROXY_LISTEN_PORT: expected an integer")));
}

TEST(EnvOverrides, ChecksTheAdminTokenVariableWithoutEchoingIt) {
  Config c = parse_config(json::object());
  const std::string bad = "two words";
  const auto problems = env_problems(c, {{"SPROXY_ADMIN_TOKEN", bad}});
  ASSERT_THAT(problems, ElementsAre(HasSubstr("env SPROXY_ADMIN_TOKEN: expected a token")));
  EXPECT_THAT(problems[0], ::testing::Not(HasSubstr(bad)));
  // A good token is accepted and never copied into the config.
  Config d = parse_config({{"admin", {{"token_env", "MY_ADMIN"}}}});
  EXPECT_TRUE(env_problems(d, {{"MY_ADMIN", "sproxy_good-token"}}).empty());
  EXPECT_EQ(d.admin.token_sha256, "");
}

}  // namespace
}  // namespace sproxy::config
