// SIGHUP reload (reload_config): identities, cache TTLs, log level and the access switch
// change together when the file is valid; nothing changes when it is not.
#include "proxy/reload.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <stdlib.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/cache/cache_fixture.hpp"
#include "tests/support/server_harness.hpp"

namespace sproxy::proxy {
namespace {

using cache::Outcome;
using cache::testing::kMs;
using cache::testing::kT0;
using nlohmann::json;
using ::testing::HasSubstr;

class ReloadConfig : public cache::testing::CacheFixture {
 protected:
  void SetUp() override {
    CacheFixture::SetUp();
    logger_->set_level(spdlog::level::info);
  }

  // A valid file: one client, the given quota TTL, level and access switch.
  std::filesystem::path write_config(std::int64_t quota_ms, const std::string& level, bool access) {
    const json j = {{"clients",
                     {{{"name", "new"},
                       {"token_sha256", upstream::sha256_hex("t-new")},
                       {"accounts", {"*"}},
                       {"permissions", {"read"}}}}},
                    {"cache",
                     {{"ttl", {{"quota_ms", quota_ms}}},
                      {"refresh_ahead_ms", 0},
                      {"stale_while_revalidate_ms", 0}}},
                    {"log", {{"level", level}, {"access", access}}}};
    std::ofstream(path()) << j.dump();
    return path();
  }
  std::filesystem::path path() const { return dir_.path() / "config.json"; }
  ReloadTargets targets() {
    return ReloadTargets{&identities_, cache.get(), &access_, logger_.get()};
  }

  test::TempDir dir_;
  ReloadableIdentityResolver identities_{std::make_shared<const ConfigIdentityResolver>(
      std::vector{test::token_client("old", "t-old", {"read"})})};
  std::shared_ptr<spdlog::logger> logger_ = std::make_shared<spdlog::logger>(
      "reload-test", std::make_shared<spdlog::sinks::null_sink_mt>());
  AccessLog access_{
      std::make_shared<spdlog::logger>("access", std::make_shared<spdlog::sinks::null_sink_mt>()),
      LogFormat::json, true};
};

TEST_F(ReloadConfig, GivesNewEntriesTheNewTtlAndKeepsTheExpiryOfExistingOnes) {
  // Quota TTL before: cfg.ttl.quota_ms (5 s).
  ASSERT_EQ(read("/quota", kT0).outcome, Outcome::miss);
  const ReloadResult r = reload_config(write_config(60'000, "debug", false), targets());
  ASSERT_TRUE(r.ok) << r.message;
  EXPECT_THAT(r.message, HasSubstr("reloaded identities"));
  // The existing entry still expires after the old 5 s...
  EXPECT_EQ(read("/quota", kT0 + 4'000 * kMs).outcome, Outcome::hit);
  EXPECT_EQ(read("/quota", kT0 + 5'000 * kMs).outcome, Outcome::miss);
  // ...and the new entry lives for the new 60 s.
  EXPECT_EQ(read("/quota", kT0 + 60'000 * kMs).outcome, Outcome::hit);
  EXPECT_EQ(read("/quota", kT0 + 65'000 * kMs).outcome, Outcome::miss);

  EXPECT_EQ(logger_->level(), spdlog::level::debug);
  EXPECT_FALSE(access_.enabled());
  EXPECT_TRUE(identities_.resolve(BearerToken{"t-new"}).ok());
  EXPECT_FALSE(identities_.resolve(BearerToken{"t-old"}).ok());
}

TEST_F(ReloadConfig, KeepsEverythingWhenTheNewFileIsBad) {
  // Valid JSON, one broken rule (and a TTL and level that must not be applied).
  json j = {{"cache", {{"ttl", {{"quota_ms", 60'000}}}}},
            {"log", {{"level", "debug"}, {"access", false}}},
            {"clients", {{{"name", "x"}, {"accounts", {"*"}}, {"permissions", {"root"}}}}}};
  std::ofstream(path()) << j.dump();
  ReloadResult r = reload_config(path(), targets());
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.message, HasSubstr("reload rejected, keeping the current configuration"));
  EXPECT_THAT(r.message, HasSubstr("unknown permission \"root\""));

  std::ofstream(path()) << "{\"log\":";
  r = reload_config(path(), targets());
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.message, HasSubstr("invalid JSON"));

  // A bad environment override rejects the reload too.
  write_config(60'000, "debug", false);
  ::setenv("SPROXY_LOG_LEVEL", "chatty", 1);
  r = reload_config(path(), targets());
  ::unsetenv("SPROXY_LOG_LEVEL");
  EXPECT_FALSE(r.ok);
  EXPECT_THAT(r.message, HasSubstr("env SPROXY_LOG_LEVEL"));

  // Old TTL (5 s), level, access switch and identities stay.
  ASSERT_EQ(read("/quota", kT0).outcome, Outcome::miss);
  EXPECT_EQ(read("/quota", kT0 + 5'000 * kMs).outcome, Outcome::miss);
  EXPECT_EQ(logger_->level(), spdlog::level::info);
  EXPECT_TRUE(access_.enabled());
  EXPECT_TRUE(identities_.resolve(BearerToken{"t-old"}).ok());
}

TEST_F(ReloadConfig, TakesTheAdminTokenFromItsVariable) {
  write_config(5'000, "info", true);
  ::setenv("SPROXY_ADMIN_TOKEN", "env-admin-token", 1);
  const ReloadResult r = reload_config(path(), targets());
  ::unsetenv("SPROXY_ADMIN_TOKEN");
  ASSERT_TRUE(r.ok) << r.message;
  EXPECT_THAT(r.message, HasSubstr("and the admin token"));
  const auto admin = identities_.resolve(BearerToken{"env-admin-token"});
  ASSERT_TRUE(admin.ok());
  EXPECT_EQ(admin->name, kAdminTokenIdentityName);
  EXPECT_THAT(r.message, ::testing::Not(HasSubstr("env-admin-token")));
}

}  // namespace
}  // namespace sproxy::proxy
