#include "proxy/cli.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdexcept>

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

TEST(UsageText, MentionsEveryFlag) {
  const std::string usage = usage_text();
  for (const char* flag : {"--config", "--check-config", "--help", "--version"}) {
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
