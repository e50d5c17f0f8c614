// The fleet's shared rate budget (upstream/fleet_budget.hpp) against a real redis-server:
// several budgets on one server (each with its own connection, as separate processes
// have) together never admit more than the window allows, a block set by one refuses
// all, Redis being down is reported rather than guessed, and the script is loaded again
// after the server restarts.
#include "upstream/fleet_budget.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/redis_client_options.hpp"
#include "tests/support/redis_server.hpp"
#include "tests/support/run_awaitable.hpp"

namespace sproxy::upstream {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using test::RedisServer;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kTag = budget_key_tag("sproxy-test", "0123456789abcdef0123456789abcdef");

RateBudgetOptions window_of(long limit) {
  RateBudgetOptions o;
  o.limit = limit;
  o.window = 1h;
  o.burst_limit = 0;
  o.safety_margin = 0.0;
  return o;
}

class FleetBudgetTest : public ::testing::Test {
 protected:
  std::shared_ptr<FleetBudget> budget(RateBudgetOptions options) {
    return std::make_shared<FleetBudget>(
        RedisConnection::create(ioc_.get_executor(),
                                test::redis_options_for(server_, server_.tcp_url())),
        options, kTag);
  }
  FleetBudgetDecision acquire(const std::shared_ptr<FleetBudget>& b) {
    return test::run_awaitable(ioc_, b->try_acquire());
  }

  RedisServer server_;
  asio::io_context ioc_;
};

TEST_F(FleetBudgetTest, TwoProcessesOnOneRedisTogetherNeverExceedTheWindow) {
  auto a = budget(window_of(10));
  auto b = budget(window_of(10));
  int granted = 0;
  for (int i = 0; i < 15; ++i) {
    for (const auto& budget : {a, b}) {
      const FleetBudgetDecision d = acquire(budget);
      ASSERT_TRUE(d.reached);
      if (d.granted) {
        ++granted;
      } else {
        EXPECT_EQ(d.reason, BudgetRefusal::exhausted);
        EXPECT_GT(d.wait, 0ms);
        EXPECT_LE(d.wait, 1h);
      }
    }
  }
  EXPECT_EQ(granted, 10);
}

TEST_F(FleetBudgetTest, ConcurrentCallersNeverExceedTheWindow) {
  auto a = budget(window_of(7));
  auto b = budget(window_of(7));
  std::vector<std::shared_ptr<test::Spawned<FleetBudgetDecision>>> calls;
  for (int i = 0; i < 20; ++i) {
    calls.push_back(test::spawn(ioc_.get_executor(), a->try_acquire()));
    calls.push_back(test::spawn(ioc_.get_executor(), b->try_acquire()));
  }
  test::run_until(ioc_, [&] {
    return std::all_of(calls.begin(), calls.end(), [](const auto& c) { return c->done(); });
  });
  int granted = 0;
  for (auto& c : calls) {
    ASSERT_TRUE(c->get().reached);
    granted += c->get().granted ? 1 : 0;
  }
  EXPECT_EQ(granted, 7);
}

TEST_F(FleetBudgetTest, KeepsThePerSecondLimitAndTheMarginLikeTheLocalBudget) {
  RateBudgetOptions o = window_of(1000);
  o.burst_limit = 5;
  o.burst_window = 1h;  // long enough that the test never sees it slide
  o.safety_margin = 0.2;
  auto a = budget(o);
  int granted = 0;
  for (int i = 0; i < 10; ++i) granted += acquire(a).granted ? 1 : 0;
  EXPECT_EQ(granted, 4);  // floor(5 * 0.8)
}

TEST_F(FleetBudgetTest, ABlockSetByOneProcessRefusesEveryProcess) {
  auto a = budget(window_of(100));
  auto b = budget(window_of(100));
  ASSERT_TRUE(acquire(b).granted);
  ASSERT_TRUE(test::run_awaitable(ioc_, a->block_for(60s)));
  const FleetBudgetDecision d = acquire(b);
  ASSERT_TRUE(d.reached);
  EXPECT_FALSE(d.granted);
  EXPECT_EQ(d.reason, BudgetRefusal::blocked);
  EXPECT_GT(d.wait, 50s);
  EXPECT_LE(d.wait, 60s);
  // A shorter block never shortens a longer one.
  ASSERT_TRUE(test::run_awaitable(ioc_, b->block_for(1s)));
  EXPECT_GT(acquire(a).wait, 50s);
}

TEST_F(FleetBudgetTest, SaysWhenRedisCannotBeAskedAndReloadsItsScriptAfterARestart) {
  auto a = budget(window_of(3));
  ASSERT_TRUE(acquire(a).granted);
  server_.stop();
  EXPECT_FALSE(acquire(a).reached);
  EXPECT_FALSE(acquire(a).reached);
  server_.start();  // empty, and without the script
  int granted = 0;
  for (int i = 0; i < 5; ++i) {
    const FleetBudgetDecision d = acquire(a);
    ASSERT_TRUE(d.reached);
    granted += d.granted ? 1 : 0;
  }
  EXPECT_EQ(granted, 3);
}

TEST_F(FleetBudgetTest, KeysCarryOneHashTagAndNeverTheCredential) {
  auto a = budget(window_of(3));
  ASSERT_TRUE(acquire(a).granted);
  const auto keys = server_.command({"KEYS", "*"}).elements;
  ASSERT_FALSE(keys.empty());
  for (const auto& key : keys) EXPECT_EQ(key.rfind(kTag + ":", 0), 0u) << key;

  config::UpstreamCredential token;
  token.token = "cf-api-token-value";
  config::UpstreamCredential other = token;
  other.token += "2";
  config::UpstreamCredential legacy;
  legacy.email = "ops@example.com";
  legacy.api_key = "global-key";
  const std::string id = budget_credential_id(token);
  EXPECT_EQ(id.size(), 32u);
  EXPECT_EQ(id, budget_credential_id(token));
  EXPECT_NE(id, budget_credential_id(other));
  EXPECT_NE(budget_credential_id(legacy), id);
  EXPECT_THAT(budget_key_tag("p", id), Not(HasSubstr(token.token)));
  EXPECT_EQ(budget_key_tag("p", id), "{p:budget:" + id + "}");
}

}  // namespace
}  // namespace sproxy::upstream
