#include "proxy/cli.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <stdexcept>

#include "config/config.hpp"
#include "proxy/identity.hpp"
#include "upstream/crypto.hpp"

namespace sproxy::proxy {
namespace {

using ::testing::HasSubstr;

TEST(CommandLine, HasNoConfigPathWhenNoneIsGiven) {
  const auto c = parse_command_line({});
  EXPECT_FALSE(c.config_path.has_value());
  EXPECT_FALSE(c.check_config);
  EXPECT_FALSE(c.help);
  EXPECT_FALSE(c.version);
}

TEST(CommandLine, TakesTheConfigPathAsASeparateOrJoinedArgument) {
  EXPECT_EQ(parse_command_line({"--config", "a.json"}).config_path, "a.json");
  EXPECT_EQ(parse_command_line({"--config=b.json"}).config_path, "b.json");
}

TEST(CommandLine, ReadsTheModeFlags) {
  const auto c = parse_command_line({"--check-config", "--config", "x.json"});
  EXPECT_TRUE(c.check_config);
  EXPECT_TRUE(parse_command_line({"--help"}).help);
  EXPECT_TRUE(parse_command_line({"-h"}).help);
  EXPECT_TRUE(parse_command_line({"--version"}).version);
}

TEST(CommandLine, RejectsAConfigFlagWithoutAPath) {
  EXPECT_THROW(parse_command_line({"--config"}), std::invalid_argument);
  EXPECT_THROW(parse_command_line({"--config="}), std::invalid_argument);
}

TEST(CommandLine, RejectsUnknownArgumentsNamingThem) {
  try {
    parse_command_line({"--verbose"});
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("--verbose"));
  }
}

TEST(CommandLine, RejectsTwoConfigPaths) {
  EXPECT_THROW(parse_command_line({"--config", "a", "--config", "b"}), std::invalid_argument);
}

TEST(CommandLine, ReadsTokenNewWithItsFlags) {
  const auto c =
      parse_command_line({"token", "new", "--name", "billing", "--services=workers,dex",
                          "--accounts", "0123456789abcdef0123456789abcdef", "--stores",
                          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "--permissions", "read,write,read"});
  ASSERT_TRUE(c.new_token.has_value());
  EXPECT_EQ(c.new_token->name, "billing");
  EXPECT_THAT(c.new_token->services, ::testing::ElementsAre("workers", "dex"));
  EXPECT_THAT(c.new_token->accounts, ::testing::ElementsAre("0123456789abcdef0123456789abcdef"));
  EXPECT_THAT(c.new_token->stores, ::testing::ElementsAre("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
  EXPECT_THAT(c.new_token->permissions, ::testing::ElementsAre("read", "write"));
  EXPECT_FALSE(c.config_path.has_value());
}

TEST(CommandLine, GivesANewTokenAnyAccountAndReadOnlyByDefault) {
  const auto c = parse_command_line({"token", "new", "--name", "x"});
  ASSERT_TRUE(c.new_token.has_value());
  EXPECT_TRUE(c.new_token->services.empty());
  EXPECT_THAT(c.new_token->accounts, ::testing::ElementsAre("*"));
  EXPECT_TRUE(c.new_token->stores.empty());
  EXPECT_THAT(c.new_token->permissions, ::testing::ElementsAre("read"));
}

TEST(CommandLine, RejectsTokenNewRequestsTheConfigWouldRefuse) {
  const std::vector<std::vector<std::string>> bad = {
      {"token"},
      {"token", "old", "--name", "x"},
      {"token", "new"},
      {"token", "new", "--name"},
      {"token", "new", "--name", ""},
      {"token", "new", "--name", "x", "--services", "mail"},
      {"token", "new", "--name", "x", "--accounts", "not-hex"},
      {"token", "new", "--name", "x", "--accounts", ""},
      {"token", "new", "--name", "x", "--stores", "*"},
      {"token", "new", "--name", "x", "--permissions", "superuser"},
      {"token", "new", "--name", "x", "--permissions", ""},
      {"token", "new", "--name", "x", "--role", "y"},
  };
  for (const auto& args : bad) {
    EXPECT_THROW(parse_command_line(args), std::invalid_argument) << ::testing::PrintToString(args);
  }
}

TEST(CommandLine, ReadsStoreRotateKeyWithItsConfigPath) {
  auto c = parse_command_line({"store", "rotate-key", "--config", "a.json"});
  EXPECT_TRUE(c.rotate_store_key);
  EXPECT_EQ(c.config_path, "a.json");
  c = parse_command_line({"store", "rotate-key", "--config=b.json"});
  EXPECT_EQ(c.config_path, "b.json");
  c = parse_command_line({"store", "rotate-key"});
  EXPECT_TRUE(c.rotate_store_key);
  EXPECT_FALSE(c.config_path.has_value());
  EXPECT_FALSE(parse_command_line({"--config", "a.json"}).rotate_store_key);
}

TEST(CommandLine, RejectsOtherStoreCommandsAndFlags) {
  const std::vector<std::vector<std::string>> bad = {
      {"store"},
      {"store", "rotate"},
      {"store", "rotate-key", "--force"},
      {"store", "rotate-key", "--config"},
      {"store", "rotate-key", "--config", "a", "--config", "b"},
      {"store", "rotate-key", "--check-config"},
  };
  for (const auto& args : bad) {
    EXPECT_THROW(parse_command_line(args), std::invalid_argument) << ::testing::PrintToString(args);
  }
}

TEST(KeyRotationText, SaysHowManyValuesWereReSealedAndWhereTheKeyIs) {
  upstream::KeyRotation r;
  r.key_file = "data/store.key";
  r.resealed = 3;
  EXPECT_EQ(key_rotation_text(r, false),
            "re-sealed 3 values under a new key; data/store.key now holds it (a backup taken "
            "before opens only with the key file backed up with it)\n");
  r.resealed = 1;
  EXPECT_THAT(key_rotation_text(r, false), HasSubstr("re-sealed 1 value under"));
  EXPECT_THAT(key_rotation_text(r, true), HasSubstr("warm-start file"));
  r.finished_interrupted = true;
  EXPECT_EQ(key_rotation_text(r, false),
            "finished an interrupted key rotation: data/store.key now holds the key the database "
            "was re-sealed with\n");
}

TEST(ClientToken, IsThePrefixAnd32RandomBytesInBase64Url) {
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    const std::string token = generate_client_token();
    EXPECT_TRUE(std::regex_match(token, std::regex("sproxy_[A-Za-z0-9_-]{43}"))) << token;
    seen.insert(token);
  }
  EXPECT_EQ(seen.size(), 200u);
}

TEST(NewTokenText, HoldsTheTokenItsHashAndAClientEntryTheConfigLoads) {
  NewTokenCommand command;
  command.name = "billing";
  command.services = {"workers"};
  command.permissions = {"read", "write"};
  const std::string token = generate_client_token();
  const std::string text = new_token_text(command, token);
  EXPECT_THAT(text, HasSubstr("token: " + token + "\n"));
  EXPECT_THAT(text, HasSubstr("token_sha256: " + upstream::sha256_hex(token) + "\n"));

  const auto entry = nlohmann::json::parse(text.substr(text.find('{')));
  EXPECT_EQ(entry["token_sha256"], upstream::sha256_hex(token));
  EXPECT_FALSE(entry.contains("stores"));
  const config::Config cfg = config::parse_config({{"clients", {entry}}});
  ASSERT_EQ(cfg.clients.size(), 1u);
  ConfigIdentityResolver resolver(cfg.clients);
  auto id = resolver.resolve(BearerToken{token});
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->name, "billing");
  EXPECT_TRUE(id->has(Permission::write));
  EXPECT_FALSE(id->has(Permission::admin));
}

TEST(UsageText, MentionsEveryFlag) {
  const std::string usage = usage_text();
  for (const char* flag :
       {"--config", "--check-config", "--help", "--version", "token new", "--name", "--services",
        "--accounts", "--stores", "--permissions", "store rotate-key"}) {
    EXPECT_THAT(usage, HasSubstr(flag));
  }
}

TEST(ListeningLine, NamesTheUrlUpstreamAndThreads) {
  const boost::asio::ip::tcp::endpoint ep(boost::asio::ip::make_address("127.0.0.1"), 8787);
  EXPECT_EQ(listening_line(ep, "embedded", 2),
            "secrets-proxy listening on http://127.0.0.1:8787 (upstream: embedded, threads: 2)");
}

TEST(ListeningLine, BracketsIpv6Addresses) {
  const boost::asio::ip::tcp::endpoint ep(boost::asio::ip::make_address("::1"), 9000);
  EXPECT_EQ(listening_line(ep, "https://api.cloudflare.com", 1),
            "secrets-proxy listening on http://[::1]:9000 (upstream: https://api.cloudflare.com, "
            "threads: 1)");
}

}  // namespace
}  // namespace sproxy::proxy
