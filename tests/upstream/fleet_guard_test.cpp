// The upstream guard in fleet mode (GuardedUpstream with a FleetBudget) against a real
// redis-server: two guards, each with its own connection as two processes have, share
// one budget and one upstream 429 block; with Redis stopped each falls back to its share
// of the budget, says so once, and goes back to the shared budget when Redis returns.
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
#include "tests/support/scripted_upstream.hpp"
#include "upstream/fleet_budget.hpp"
#include "upstream/guarded_upstream.hpp"

namespace sproxy::upstream {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using test::RedisServer;
using test::ScriptedUpstream;

const std::string kTag = budget_key_tag("sproxy-test", "fedcba9876543210fedcba9876543210");

ApiRequest read_request() {
  ApiRequest r;
  r.method = Method::get;
  r.target = "/client/v4/accounts/a/secrets_store/stores";
  return r;
}

class FleetGuardTest : public ::testing::Test {
 protected:
  struct Process {
    std::shared_ptr<ScriptedUpstream> upstream = std::make_shared<ScriptedUpstream>();
    std::shared_ptr<GuardedUpstream> guard;
    std::vector<bool> modes;  // what on_fleet_mode was told, in order
  };

  std::unique_ptr<Process> process(long limit, double fallback_share = 0.5) {
    const RedisOptions r = test::redis_options_for(server_, server_.tcp_url());
    GuardedUpstreamOptions o;
    o.budget.limit = limit;
    o.budget.window = 1h;
    o.budget.burst_limit = 0;
    o.budget.safety_margin = 0.0;
    o.client_share = 1.0;
    o.max_retries = 0;
    o.write_budget_wait = 0ms;
    o.fleet = std::make_shared<FleetBudget>(RedisConnection::create(ioc_.get_executor(), r),
                                            o.budget, kTag);
    o.fallback_share = fallback_share;
    auto p = std::make_unique<Process>();
    o.on_fleet_mode = [modes = &p->modes](bool shared) { modes->push_back(shared); };
    p->guard = std::make_shared<GuardedUpstream>(p->upstream, o);
    return p;
  }
  CallResult call(Process& p) { return test::run_awaitable(ioc_, p.guard->call(read_request())); }

  RedisServer server_;
  asio::io_context ioc_;
};

TEST_F(FleetGuardTest, TwoProcessesTogetherNeverCallTheUpstreamMoreThanTheWindowAllows) {
  auto a = process(10);
  auto b = process(10);
  int refused = 0;
  for (int i = 0; i < 15; ++i) {
    for (Process* p : {a.get(), b.get()}) {
      const CallResult r = call(*p);
      ASSERT_TRUE(r);
      if (r->status == 429) {
        ++refused;
        EXPECT_TRUE(r->retry_after.has_value());
      }
    }
  }
  EXPECT_EQ(a->upstream->calls() + b->upstream->calls(), 10u);
  EXPECT_EQ(refused, 20);
  EXPECT_EQ(a->guard->stats().fleet_grants + b->guard->stats().fleet_grants, 10u);
  EXPECT_TRUE(a->guard->stats().fleet_shared);
  EXPECT_TRUE(a->modes.empty());  // never left the shared budget
}

TEST_F(FleetGuardTest, AnUpstream429SeenByOneProcessStopsEveryProcess) {
  auto a = process(100);
  auto b = process(100);
  ApiResponse too_many;
  too_many.status = 429;
  too_many.retry_after = "120";
  a->upstream->then(too_many);
  ASSERT_EQ(call(*a)->status, 429u);
  ASSERT_EQ(a->upstream->calls(), 1u);
  const CallResult r = call(*b);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429u);
  ASSERT_TRUE(r->retry_after.has_value());
  EXPECT_GT(std::stol(*r->retry_after), 100);
  EXPECT_LE(std::stol(*r->retry_after), 120);
  EXPECT_EQ(b->upstream->calls(), 0u);
  EXPECT_EQ(b->guard->stats().blocked_refusals, 1u);
}

TEST_F(FleetGuardTest, FallsBackToItsShareWhileRedisIsDownAndReturnsWhenItIsBack) {
  auto a = process(10, 0.5);
  ASSERT_EQ(call(*a)->status, 200u);  // shared
  server_.stop();
  int ok = 0;
  for (int i = 0; i < 8; ++i) ok += call(*a)->status == 200 ? 1 : 0;
  EXPECT_EQ(ok, 5);  // half of 10, on its own
  GuardedUpstreamStats s = a->guard->stats();
  EXPECT_FALSE(s.fleet_shared);
  EXPECT_EQ(s.fallback_grants, 5u);
  EXPECT_EQ(a->modes, std::vector<bool>({false}));  // said once, not per call

  server_.start();  // an empty server: the fleet's window starts again
  ASSERT_EQ(call(*a)->status, 200u);
  s = a->guard->stats();
  EXPECT_TRUE(s.fleet_shared);
  EXPECT_EQ(s.fleet_grants, 2u);
  EXPECT_EQ(a->modes, std::vector<bool>({false, true}));
}

}  // namespace
}  // namespace sproxy::upstream
