// Tests for the parsers of the rate-limit headers: Retry-After, Ratelimit and
// Ratelimit-Policy (upstream/resilience.hpp, upstream/rate_limit_headers.cpp).
#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/resilience_options.hpp"
#include "upstream/resilience.hpp"

namespace sproxy::upstream {
namespace {

using namespace std::chrono_literals;
using test::kWallT0;

// ---------------------------------------------------------------------------------------
// Header parsers

TEST(ParseRetryAfter, ReadsDeltaSeconds) {
  EXPECT_EQ(parse_retry_after("120", kWallT0), 120s);
  EXPECT_EQ(parse_retry_after(" 0 ", kWallT0), 0s);
}

TEST(ParseRetryAfter, ReadsAnImfFixdateAsTheDelayFromNow) {
  EXPECT_EQ(parse_retry_after("Sun, 01 Mar 2026 12:01:30 GMT", kWallT0), 90s);
  EXPECT_EQ(parse_retry_after(format_http_date(kWallT0 + 3600s), kWallT0), 3600s);
  // Part of a second still to wait rounds up, never down.
  EXPECT_EQ(parse_retry_after("Sun, 01 Mar 2026 12:00:10 GMT", kWallT0 + 500ms), 10s);
}

TEST(ParseRetryAfter, GivesZeroForADateInThePast) {
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", kWallT0), 0s);
}

TEST(ParseRetryAfter, SaturatesHugeValues) {
  EXPECT_EQ(parse_retry_after("99999999999999999999999", kWallT0), kMaxRetryAfter);
}

TEST(ParseRetryAfter, RejectsMalformedValues) {
  for (const char* bad : {"", "  ", "-5", "12s", "1.5", "soon",
                          "Sunday, 06-Nov-94 08:49:37 GMT",  // RFC 850
                          "Sun Nov  6 08:49:37 1994",        // asctime
                          "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 31 Feb 2026 08:49:37 GMT",
                          "Sun, 06 Nov 1994 24:00:00 GMT", "Xyz, 06 Nov 1994 08:49:37 GMT",
                          "Sun, 06 Foo 1994 08:49:37 GMT"}) {
    EXPECT_EQ(parse_retry_after(bad, kWallT0), std::nullopt) << bad;
  }
}

TEST(FormatHttpDate, WritesAnImfFixdate) {
  EXPECT_EQ(format_http_date(kWallT0 + 90s), "Sun, 01 Mar 2026 12:01:30 GMT");
  EXPECT_EQ(
      format_http_date(std::chrono::sys_days{std::chrono::year{1994} / 11 / 6} + 8h + 49min + 37s),
      "Sun, 06 Nov 1994 08:49:37 GMT");
}

TEST(ParseRatelimit, ReadsRemainingAndResetSeconds) {
  EXPECT_EQ(parse_ratelimit(R"("default";r=50;t=30)"), (RateLimitRemaining{50, 30s}));
  EXPECT_EQ(parse_ratelimit(R"(default;t=7;r=0)"), (RateLimitRemaining{0, 7s}));
}

TEST(ParseRatelimit, PicksTheMostRestrictiveOfSeveralMembers) {
  EXPECT_EQ(parse_ratelimit(R"("default";r=50;t=30, "burst";r=3;t=1)"),
            (RateLimitRemaining{3, 1s}));
  EXPECT_EQ(parse_ratelimit(R"("a";r=3;t=1, "b";r=3;t=60)"), (RateLimitRemaining{3, 60s}));
}

TEST(ParseRatelimit, SkipsMembersWithoutUsableIntegers) {
  EXPECT_EQ(parse_ratelimit(R"("x";r=1.5;t=3, "default";r=9;t=4)"), (RateLimitRemaining{9, 4s}));
  EXPECT_EQ(parse_ratelimit(R"("default";r=-1;t=30)"), std::nullopt);
  EXPECT_EQ(parse_ratelimit(R"("default";t=30)"), std::nullopt);
}

TEST(ParseRatelimit, RejectsMalformedFields) {
  for (const char* bad : {"", R"("default;r=5;t=3)", R"("default";r=5;t=3,)", R"(;r=5;t=3)",
                          R"("default";R=5;t=3 junk)", R"(("a" "b");r=1;t=1)"}) {
    EXPECT_EQ(parse_ratelimit(bad), std::nullopt) << bad;
  }
}

TEST(ParseRatelimitPolicy, ReadsQuotaAndWindowOfEveryMember) {
  EXPECT_EQ(parse_ratelimit_policy(R"("burst";q=1200;w=300)"),
            (std::vector<RatePolicy>{{1200, 300s}}));
  EXPECT_EQ(parse_ratelimit_policy(R"("burst";q=100;w=60, "daily";q=1000;w=86400)"),
            (std::vector<RatePolicy>{{100, 60s}, {1000, 86400s}}));
}

TEST(ParseRatelimitPolicy, CapsAbsurdQuotasAndIgnoresUnusableMembers) {
  EXPECT_EQ(parse_ratelimit_policy(R"("x";q=999999999;w=999999999)"),
            (std::vector<RatePolicy>{{kMaxRateCapacity, 86400s}}));
  EXPECT_TRUE(parse_ratelimit_policy(R"("x";q=0;w=10, "y";q=5)").empty());
  EXPECT_TRUE(parse_ratelimit_policy("not a ( list").empty());
}

}  // namespace
}  // namespace sproxy::upstream
