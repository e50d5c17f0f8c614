// The upstream credential keys of the config loader: an API token, or an email and
// global API key, each named by an environment variable or a file, exactly one kind.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/config.hpp"
#include "tests/support/config_problems.hpp"

namespace sproxy::config {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<std::string> upstream_problems(json upstream) {
  return test::problems_of({{"upstream", std::move(upstream)}});
}

json http_upstream(json credential) {
  json j = {{"kind", "http"}, {"base_url", "https://api.cloudflare.com/client/v4"}};
  j.update(credential);
  return j;
}

TEST(UpstreamCredentialConfig, ReadsTheEmailAndGlobalApiKeySources) {
  const Config c =
      parse_config({{"upstream", http_upstream({{"email_env", "CF_EMAIL"},
                                                {"email_file", "/run/secrets/cf-email"},
                                                {"api_key_env", "CF_API_KEY"},
                                                {"api_key_file", "/run/secrets/cf-api-key"}})}});
  EXPECT_EQ(c.upstream.email_env, "CF_EMAIL");
  EXPECT_EQ(c.upstream.email_file, "/run/secrets/cf-email");
  EXPECT_EQ(c.upstream.api_key_env, "CF_API_KEY");
  EXPECT_EQ(c.upstream.api_key_file, "/run/secrets/cf-api-key");
  EXPECT_TRUE(c.upstream.token_env.empty());
  EXPECT_TRUE(c.upstream.token_file.empty());
}

TEST(UpstreamCredentialConfig, LeavesEveryCredentialSourceEmptyByDefault) {
  const Config c = parse_config(json::object());
  EXPECT_TRUE(c.upstream.email_env.empty());
  EXPECT_TRUE(c.upstream.email_file.empty());
  EXPECT_TRUE(c.upstream.api_key_env.empty());
  EXPECT_TRUE(c.upstream.api_key_file.empty());
}

TEST(UpstreamCredentialConfig, AcceptsExactlyOneCredentialKind) {
  EXPECT_THAT(upstream_problems(http_upstream({{"token_env", "CF_TOKEN"}})), IsEmpty());
  EXPECT_THAT(upstream_problems(http_upstream({{"token_file", "t"}, {"token_env", "CF_TOKEN"}})),
              IsEmpty());
  EXPECT_THAT(upstream_problems(http_upstream({{"email_env", "E"}, {"api_key_file", "k"}})),
              IsEmpty());
}

TEST(UpstreamCredentialConfig, RefusesATokenTogetherWithAnEmailOrKey) {
  const std::string both =
      "$.upstream: configure one upstream credential: an API token (token_env / token_file) or "
      "an email and global API key (email_env / email_file with api_key_env / api_key_file), "
      "not both";
  EXPECT_THAT(upstream_problems(http_upstream(
                  {{"token_env", "CF_TOKEN"}, {"email_env", "E"}, {"api_key_env", "K"}})),
              ElementsAre(both));
  EXPECT_THAT(upstream_problems(http_upstream({{"token_file", "t"}, {"api_key_file", "k"}})),
              ElementsAre(both));
}

TEST(UpstreamCredentialConfig, RefusesHalfAnEmailAndKeyPair) {
  EXPECT_THAT(upstream_problems(http_upstream({{"email_env", "E"}})),
              ElementsAre("$.upstream: email_env / email_file needs api_key_env or api_key_file"));
  EXPECT_THAT(upstream_problems(http_upstream({{"api_key_file", "k"}})),
              ElementsAre("$.upstream: api_key_env / api_key_file needs email_env or email_file"));
}

TEST(UpstreamCredentialConfig, RefusesNonStringSourcesWithTheirPathOnly) {
  EXPECT_THAT(upstream_problems(http_upstream({{"email_env", 7}, {"api_key_env", "K"}})),
              ElementsAre("$.upstream.email_env: expected a string"));
  EXPECT_THAT(upstream_problems(http_upstream({{"api_key_file", false}, {"email_file", "e"}})),
              ElementsAre("$.upstream.api_key_file: expected a string"));
}

TEST(UpstreamCredentialConfig, NeverTakesACredentialValueFromTheJson) {
  EXPECT_THAT(upstream_problems(http_upstream({{"api_key", "c2547eb745079dac9320b638"}})),
              ElementsAre("$.upstream.api_key: unknown key"));
  EXPECT_THAT(upstream_problems(http_upstream({{"token", "abc"}})),
              ElementsAre("$.upstream.token: unknown key"));
}

}  // namespace
}  // namespace sproxy::config
