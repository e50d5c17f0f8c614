// FleetTier (cache/fleet_tier.hpp): two caches, A and B, as two processes of a fleet over
// one counting upstream, each with its own FleetTier (and Redis connection) on one real
// redis-server. Every step runs on the test's io_context.
#include "cache/fleet_tier.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache/fleet_sync.hpp"
#include "cache/read_through.hpp"
#include "tests/support/fake_upstream.hpp"
#include "tests/support/redis_client_options.hpp"
#include "tests/support/redis_server.hpp"
#include "tests/support/run_awaitable.hpp"
#include "upstream/fleet_channel.hpp"
#include "upstream/route.hpp"

namespace sproxy::cache {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using upstream::Method;
using upstream::RouteKind;

constexpr char kAccount[] = "0123456789abcdef0123456789abcdef";
constexpr Micros kT0 = 1'767'225'600'000'000;
constexpr char kName[] = "canary-name-7f3a";
constexpr char kComment[] = "canary-comment-19c2";

class FleetTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_ = std::make_shared<test::FakeUpstream>();
    fake_->set_now(kT0);
    auto store = fake_->store().create_store(kAccount, upstream::StoreCreate{"main"}, kT0);
    ASSERT_TRUE(store.ok());
    store_ = store->id;
    std::vector<upstream::SecretCreate> in;
    in.push_back(upstream::SecretCreate{kName, "value", {"workers"}, std::string(kComment)});
    auto created = fake_->store().create_secrets(kAccount, store_, std::move(in), kT0);
    ASSERT_TRUE(created.ok());
    secret_ = created->front().id;
    a_ = make_cache(tier_a_, key_);
    b_ = make_cache(tier_b_, key_);
    raw_ = upstream::RedisConnection::create(ioc_.get_executor(), options());
  }

  upstream::RedisOptions options() const {
    return test::redis_options_for(redis_, redis_.unix_url());
  }

  std::shared_ptr<ReadThroughCache> make_cache(std::shared_ptr<FleetTier>& tier,
                                               const std::string& key) {
    config::CacheConfig cfg;
    cfg.ttl.secrets_ms = 600'000;
    cfg.refresh_ahead_ms = 0;
    cfg.stale_while_revalidate_ms = 0;
    auto cache = std::make_shared<ReadThroughCache>(cfg, fake_);
    FleetTierOptions o;
    o.key_prefix = "sp";
    o.seal_key = key;
    o.origin = "proc";
    o.max_wait = 10s;
    o.wall_clock = [] { return kT0; };
    tier = std::make_shared<FleetTier>(
        upstream::RedisConnection::create(ioc_.get_executor(), options()), o);
    cache->share_fills(tier);
    return cache;
  }

  std::string target() const {
    return "/client/v4/accounts/" + std::string(kAccount) + "/secrets_store/stores/" + store_ +
           "/secrets/" + secret_;
  }
  asio::awaitable<Answer> read_async(std::shared_ptr<ReadThroughCache> cache) {
    auto r = upstream::parse_route(Method::get, target());
    // Named locals, not temporaries inside co_await (GCC 12 destroys those twice).
    upstream::Route route = r.value();
    ReadOptions options;
    co_return co_await cache->read(std::move(route), std::move(options), kT0);
  }
  Answer read(const std::shared_ptr<ReadThroughCache>& cache) {
    return test::run_awaitable(ioc_, read_async(cache));
  }
  upstream::RedisReply redis(std::vector<std::string> args) {
    auto r = test::run_awaitable(ioc_, raw_->command(std::move(args)));
    EXPECT_TRUE(r.has_value());
    return r ? *r : upstream::RedisReply{};
  }
  std::string entry_key() const {
    return "{sp:acct:" + std::string(kAccount) + "}:l2:" + std::string(kAccount) + "/store/" +
           store_ + "/secrets";
  }
  void bump_generation() {
    redis({"INCR", upstream::generation_key("sp", upstream::GenerationKey{kAccount, store_})});
  }
  bool run_until(const std::function<bool()>& done) { return test::run_until_within(ioc_, done); }
  static std::string body(const Answer& a) { return a.body ? std::string(*a.body) : ""; }

  // Joins `cache` to a FleetSync publishing through `server` (its own Redis, so that the
  // test can take it away without taking the shared cache's).
  std::shared_ptr<FleetSync> join_fleet(const std::shared_ptr<ReadThroughCache>& cache,
                                        const test::RedisServer& server) {
    auto channel = std::make_shared<upstream::FleetChannel>(
        upstream::RedisConnection::create(ioc_.get_executor(),
                                          test::redis_options_for(server, server.unix_url())),
        "sp", "proc-b");
    FleetSyncOptions o;
    o.wall_clock = [] { return kT0; };
    auto sync = std::make_shared<FleetSync>(cache, channel, ioc_.get_executor(), o);
    cache->join_fleet(sync);
    return sync;
  }
  asio::awaitable<Answer> patch_async(std::shared_ptr<ReadThroughCache> cache) {
    upstream::ApiRequest req{Method::patch, target(), R"({"comment":"changed"})"};
    upstream::Route route = upstream::parse_route(Method::patch, target()).value();
    co_return co_await cache->write(std::move(route), std::move(req), kT0);
  }

  test::RedisServer redis_;
  asio::io_context ioc_;
  std::shared_ptr<test::FakeUpstream> fake_;
  const std::string key_ = std::string(32, 'k');
  std::string store_, secret_;
  std::shared_ptr<FleetTier> tier_a_, tier_b_;
  std::shared_ptr<ReadThroughCache> a_, b_;
  std::shared_ptr<upstream::RedisConnection> raw_;
};

TEST_F(FleetTierTest, AMissOnOneProcessIsAnsweredFromTheSharedEntryOnAnother) {
  const Answer first = read(a_);
  ASSERT_EQ(first.status, 200u) << body(first);
  EXPECT_EQ(fake_->calls(), 1u);
  EXPECT_EQ(tier_a_->stats().misses, 1u);
  EXPECT_EQ(tier_a_->stats().stored, 1u);

  const Answer second = read(b_);
  EXPECT_EQ(second.status, 200u);
  EXPECT_EQ(body(second), body(first));
  EXPECT_EQ(second.outcome, Outcome::miss);
  EXPECT_EQ(fake_->calls(), 1u) << "B read the shared entry, not the upstream";
  EXPECT_EQ(tier_b_->stats().hits, 1u);
  // Now held by B itself: a hit never asks Redis.
  EXPECT_EQ(read(b_).outcome, Outcome::hit);
  EXPECT_EQ(tier_b_->stats().hits + tier_b_->stats().misses, 1u);
}

TEST_F(FleetTierTest, AnEntryOfAnOlderGenerationIsNotUsed) {
  ASSERT_EQ(read(a_).status, 200u);
  bump_generation();  // a write on some process
  ASSERT_EQ(read(b_).status, 200u);
  EXPECT_EQ(fake_->calls(), 2u);
  EXPECT_EQ(tier_b_->stats().hits, 0u);
  EXPECT_EQ(tier_b_->stats().misses, 1u);
}

TEST_F(FleetTierTest, AValueFetchedAcrossAGenerationChangeIsNotShared) {
  fake_->hold();
  std::optional<Answer> got;
  asio::co_spawn(ioc_, read_async(a_), [&](std::exception_ptr, Answer a) { got = a; });
  ASSERT_TRUE(run_until([&] { return fake_->held() == 1; }));
  bump_generation();  // a write lands while A's upstream call is out
  fake_->release();
  ASSERT_TRUE(run_until([&] { return got.has_value(); }));
  EXPECT_EQ(got->status, 200u);
  EXPECT_EQ(tier_a_->stats().stored, 0u);
  EXPECT_EQ(redis({"EXISTS", entry_key()}).integer, 0);
}

TEST_F(FleetTierTest, AStampedeOverTwoProcessesCostsOneUpstreamCall) {
  fake_->hold();
  std::optional<Answer> from_a, from_b;
  asio::co_spawn(ioc_, read_async(a_), [&](std::exception_ptr, Answer a) { from_a = a; });
  ASSERT_TRUE(run_until([&] { return fake_->held() == 1; }));
  asio::co_spawn(ioc_, read_async(b_), [&](std::exception_ptr, Answer a) { from_b = a; });
  // B finds A's fill lock and waits for its entry instead of calling the upstream.
  for (int i = 0; i < 20; ++i) ioc_.run_one_for(10ms);
  EXPECT_FALSE(from_b.has_value());
  EXPECT_EQ(fake_->calls(), 1u);
  fake_->release();
  ASSERT_TRUE(run_until([&] { return from_a && from_b; }));
  EXPECT_EQ(from_a->status, 200u);
  EXPECT_EQ(from_b->status, 200u);
  EXPECT_EQ(body(*from_a), body(*from_b));
  EXPECT_EQ(fake_->calls(), 1u);
  EXPECT_EQ(tier_b_->stats().hits_waited, 1u);
}

TEST_F(FleetTierTest, AFillThatFailsReleasesItsLockAndTheWaiterCallsTheUpstream) {
  fake_->fail_next(test::Fault::http(500));
  fake_->hold();
  std::optional<Answer> from_a, from_b;
  asio::co_spawn(ioc_, read_async(a_), [&](std::exception_ptr, Answer a) { from_a = a; });
  ASSERT_TRUE(run_until([&] { return fake_->held() == 1; }));
  asio::co_spawn(ioc_, read_async(b_), [&](std::exception_ptr, Answer a) { from_b = a; });
  for (int i = 0; i < 10; ++i) ioc_.run_one_for(10ms);
  fake_->stop_holding();
  fake_->release();
  ASSERT_TRUE(run_until([&] { return from_a && from_b; }));
  EXPECT_EQ(from_a->status, 500u) << body(*from_a);
  EXPECT_EQ(from_b->status, 200u) << body(*from_b);
  EXPECT_EQ(tier_b_->stats().misses, 1u) << "B took the released lock and filled";
  EXPECT_EQ(tier_b_->stats().waited_out, 0u);
}

TEST_F(FleetTierTest, SharedEntriesAreSealedAndBoundToTheirKeyAndGeneration) {
  ASSERT_EQ(read(a_).status, 200u);
  const std::string raw = redis({"GET", entry_key()}).text;
  ASSERT_FALSE(raw.empty());
  EXPECT_EQ(raw.rfind("0:", 0), 0u) << "generation 0 stands in clear";
  EXPECT_EQ(raw.find(kName), std::string::npos);
  EXPECT_EQ(raw.find(kComment), std::string::npos);
  EXPECT_EQ(raw.find("workers"), std::string::npos);
  const auto ttl = redis({"PTTL", entry_key()}).integer;
  EXPECT_GT(ttl, 590'000);
  EXPECT_LE(ttl, 600'000);

  // The same bytes relabelled with another generation do not open.
  bump_generation();
  redis({"SET", entry_key(), "1" + raw.substr(1)});
  ASSERT_EQ(read(b_).status, 200u);
  EXPECT_EQ(tier_b_->stats().undecodable, 1u);
  EXPECT_EQ(fake_->calls(), 2u);
}

TEST_F(FleetTierTest, AnEntrySealedWithAnotherKeyIsAMissAndIsReplaced) {
  std::shared_ptr<FleetTier> other_tier;
  auto other = make_cache(other_tier, std::string(32, 'x'));
  ASSERT_EQ(read(other).status, 200u);
  ASSERT_EQ(read(b_).status, 200u);
  EXPECT_EQ(tier_b_->stats().undecodable, 1u);
  EXPECT_EQ(tier_b_->stats().stored, 1u);
  EXPECT_EQ(fake_->calls(), 2u);
  ASSERT_EQ(read(a_).status, 200u);  // B's entry, under the key A shares
  EXPECT_EQ(tier_a_->stats().hits, 1u);
  EXPECT_EQ(fake_->calls(), 2u);
}

TEST_F(FleetTierTest, WithRedisDownAMissGoesUpstreamAndIsCounted) {
  redis_.stop();
  const Answer a = read(a_);
  EXPECT_EQ(a.status, 200u) << body(a);
  EXPECT_EQ(fake_->calls(), 1u);
  EXPECT_EQ(tier_a_->stats().errors, 1u);
}

TEST_F(FleetTierTest, APurgeDropsTheSharedEntriesOfItsScope) {
  ASSERT_EQ(read(a_).status, 200u);
  ASSERT_EQ(redis({"EXISTS", entry_key()}).integer, 1);
  EXPECT_TRUE(test::run_awaitable(ioc_, a_->purge_shared(kAccount, store_)));
  EXPECT_EQ(redis({"EXISTS", entry_key()}).integer, 0);

  ASSERT_EQ(read(b_).status, 200u);
  ASSERT_EQ(redis({"EXISTS", entry_key()}).integer, 1);
  EXPECT_TRUE(test::run_awaitable(ioc_, a_->purge_shared(kAccount, "")));
  EXPECT_EQ(redis({"EXISTS", entry_key()}).integer, 0);

  a_->purge_all();
  ASSERT_EQ(read(a_).status, 200u);
  ASSERT_EQ(redis({"EXISTS", entry_key()}).integer, 1);
  EXPECT_TRUE(test::run_awaitable(ioc_, a_->purge_shared("", "")));
  EXPECT_EQ(redis({"EXISTS", entry_key()}).integer, 0);
  EXPECT_EQ(fake_->calls(), 3u);
}

TEST_F(FleetTierTest, ARevalidatingReadTakesNoSharedEntry) {
  ASSERT_EQ(read(a_).status, 200u);
  upstream::Route route = upstream::parse_route(Method::get, target()).value();
  ReadOptions options;
  options.revalidate = true;
  const Answer b = test::run_awaitable(ioc_, b_->read(std::move(route), std::move(options), kT0));
  EXPECT_EQ(b.status, 200u);
  EXPECT_EQ(fake_->calls(), 2u) << "Cache-Control: no-cache asks the upstream";
  EXPECT_EQ(tier_b_->stats().hits, 0u);
}

TEST_F(FleetTierTest, WhileAWriteOfThisProcessIsNotPublishedItsFillsTakeNoSharedEntry) {
  ASSERT_EQ(read(a_).status, 200u);  // shared, under the generation before the write
  auto sync = join_fleet(b_, redis_);
  fake_->hold(RouteKind::patch_secret);
  std::optional<Answer> written;
  asio::co_spawn(ioc_, patch_async(b_), [&](std::exception_ptr, Answer a) { written = a; });
  ASSERT_TRUE(run_until([&] { return fake_->held() == 1; }));
  // The write is at the upstream, Redis's generation does not count it yet: the shared
  // entry may predate it.
  const Answer during = read(b_);
  EXPECT_EQ(during.status, 200u);
  EXPECT_EQ(tier_b_->stats().hits, 0u);
  EXPECT_EQ(fake_->calls(RouteKind::list_secrets), 2u);
  fake_->stop_holding();
  fake_->release();
  ASSERT_TRUE(run_until([&] { return written.has_value(); }));
  EXPECT_EQ(written->status, 200u) << body(*written);
  sync->stop();
}

TEST_F(FleetTierTest, WhileAPublishOfThisProcessIsKeptItsFillsTakeNoSharedEntry) {
  test::RedisServer lost;  // the Redis B publishes through, about to go away
  auto sync = join_fleet(b_, lost);
  ASSERT_EQ(read(a_).status, 200u);  // shared before the write
  lost.stop();
  const Answer written = test::run_awaitable(ioc_, patch_async(b_));
  ASSERT_EQ(written.status, 200u) << body(written);
  ASSERT_FALSE(sync->all_published());
  // Redis's generation does not count B's write: the shared entry from before it must not
  // answer B (read-your-writes).
  const Answer after = read(b_);
  ASSERT_EQ(after.status, 200u);
  EXPECT_NE(body(after).find("changed"), std::string::npos) << body(after);
  EXPECT_EQ(tier_b_->stats().hits, 0u);
  sync->stop();
}

}  // namespace
}  // namespace sproxy::cache
