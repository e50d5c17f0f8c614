// FleetSync (cache/fleet_sync.hpp): two caches, A and B, as two processes of a fleet over
// one upstream, each with its own FleetSync on one real redis-server. Messages are taken
// off the channel by a subscriber and handed to B by the test, and B's subscription
// events are driven by the test, so every step (and B's wall clock) is explicit.
#include "cache/fleet_sync.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache/policy.hpp"
#include "tests/support/fake_upstream.hpp"
#include "tests/support/redis_client_options.hpp"
#include "tests/support/redis_server.hpp"
#include "tests/support/run_awaitable.hpp"
#include "upstream/redis_subscriber.hpp"
#include "upstream/route.hpp"

namespace sproxy::cache {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using upstream::Method;

constexpr char kAccount[] = "0123456789abcdef0123456789abcdef";
// One store per account (the API's limit): the second store lives in another account.
constexpr char kOtherAccount[] = "fedcba9876543210fedcba9876543210";
constexpr Micros kT0 = 1'767'225'600'000'000;
constexpr Micros kMs = 1000;

upstream::RedisOptions redis_options(const test::RedisServer& server) {
  return test::redis_options_for(server, server.unix_url());
}

class FleetSyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_ = std::make_shared<test::FakeUpstream>();
    fake_->set_now(kT0);
    config::CacheConfig cfg;
    cfg.ttl.secrets_ms = 600'000;
    cfg.refresh_ahead_ms = 0;
    cfg.stale_while_revalidate_ms = 0;
    a_ = std::make_shared<ReadThroughCache>(cfg, fake_);
    b_ = std::make_shared<ReadThroughCache>(cfg, fake_);
    sync_a_ = make_sync(a_, "proc-a", [] { return kT0; });
    sync_b_ = make_sync(b_, "proc-b", [this] { return clock_b_; });
    store1_ = create_store(kAccount);
    store2_ = create_store(kOtherAccount);
    secret1_ = create_secret(kAccount, store1_);
    secret2_ = create_secret(kOtherAccount, store2_);

    upstream::RedisSubscriberOptions so;
    so.redis = redis_options(redis_);
    so.channel = "sp:inval";
    upstream::RedisSubscriberEvents events;
    events.on_subscribed = [this] { subscribed_ = true; };
    events.on_message = [this](const std::string& m) { wire_.push_back(m); };
    subscriber_ = upstream::RedisSubscriber::create(ioc_.get_executor(), so, events);
    subscriber_->start();
    ASSERT_TRUE(run_until([&] { return subscribed_; }));
    // Both start out of sync; subscribed, they resynchronize and trust their caches.
    sync_a_->on_subscribed();
    sync_b_->on_subscribed();
    ASSERT_TRUE(run_until([&] { return sync_a_->stats().synced && sync_b_->stats().synced; }));
  }
  void TearDown() override { subscriber_->stop(); }

  std::shared_ptr<FleetSync> make_sync(const std::shared_ptr<ReadThroughCache>& cache,
                                       const std::string& origin, std::function<Micros()> clock) {
    auto channel = std::make_shared<upstream::FleetChannel>(
        upstream::RedisConnection::create(ioc_.get_executor(), redis_options(redis_)), "sp",
        origin);
    FleetSyncOptions o;
    o.max_unsynced = 1000ms;
    o.wall_clock = std::move(clock);
    auto sync = std::make_shared<FleetSync>(cache, channel, ioc_.get_executor(), o);
    cache->join_fleet(sync);
    return sync;
  }
  std::string create_store(const std::string& account) {
    auto s = fake_->store().create_store(account, upstream::StoreCreate{"main"}, kT0);
    EXPECT_TRUE(s.ok());
    return s.ok() ? s->id : std::string();
  }
  std::string create_secret(const std::string& account, const std::string& store) {
    std::vector<upstream::SecretCreate> in;
    in.push_back(upstream::SecretCreate{"S", "value", {"workers"}, std::string("before")});
    auto r = fake_->store().create_secrets(account, store, std::move(in), kT0);
    EXPECT_TRUE(r.ok());
    return r.ok() ? r->front().id : std::string();
  }
  std::string target(const std::string& store, const std::string& secret,
                     const std::string& account = kAccount) const {
    return "/client/v4/accounts/" + account + "/secrets_store/stores/" + store + "/secrets/" +
           secret;
  }
  Answer read(ReadThroughCache& cache, const std::string& t, Micros now) {
    auto r = upstream::parse_route(Method::get, t);
    return test::run_awaitable(ioc_, cache.read(r.value(), ReadOptions{}, now));
  }
  Answer patch(ReadThroughCache& cache, const std::string& t, const std::string& comment) {
    upstream::ApiRequest req{Method::patch, t, R"({"comment":")" + comment + R"("})"};
    auto r = upstream::parse_route(Method::patch, t);
    return test::run_awaitable(ioc_, cache.write(r.value(), req, kT0));
  }
  static std::string body(const Answer& a) { return a.body ? std::string(*a.body) : ""; }
  bool run_until(const std::function<bool()>& done) { return test::run_until_within(ioc_, done); }
  // Waits for `count` messages on the channel and hands the new ones to B.
  void deliver_to_b(std::size_t count) {
    ASSERT_TRUE(run_until([&] { return wire_.size() >= count; }));
    for (; delivered_ < wire_.size(); ++delivered_) sync_b_->on_message(wire_[delivered_]);
  }

  test::RedisServer redis_;
  asio::io_context ioc_;
  std::shared_ptr<test::FakeUpstream> fake_;
  std::shared_ptr<ReadThroughCache> a_, b_;
  std::shared_ptr<FleetSync> sync_a_, sync_b_;
  Micros clock_b_ = kT0;
  std::shared_ptr<upstream::RedisSubscriber> subscriber_;
  bool subscribed_ = false;
  std::vector<std::string> wire_;
  std::size_t delivered_ = 0;
  std::string store1_, store2_, secret1_, secret2_;
};

TEST_F(FleetSyncTest, AWriteOnAnotherProcessDropsWhatItChangedOnReceipt) {
  const std::string t = target(store1_, secret1_);
  read(*a_, t, kT0);
  EXPECT_EQ(read(*b_, t, kT0).outcome, Outcome::miss);
  EXPECT_EQ(read(*b_, t, kT0).outcome, Outcome::hit);
  EXPECT_EQ(patch(*a_, t, "after").status, 200u);
  EXPECT_EQ(sync_a_->stats().published, 1u);
  deliver_to_b(1);
  const Answer after = read(*b_, t, kT0);
  EXPECT_EQ(after.outcome, Outcome::miss);
  EXPECT_THAT(body(after), HasSubstr("\"after\""));
  EXPECT_EQ(sync_b_->stats().received, 1u);
  // A's own message leaves A's cache alone (its write has already dealt with it).
  const std::uint64_t invalidations = a_->stats().invalidations;
  sync_a_->on_message(wire_[0]);
  EXPECT_EQ(sync_a_->stats().received_own, 1u);
  EXPECT_EQ(sync_a_->stats().received, 0u);
  EXPECT_EQ(a_->stats().invalidations, invalidations);
  EXPECT_GT(b_->stats().invalidations, 0u);
}

TEST_F(FleetSyncTest, AWriteTheUpstreamRefusedIsNotPublished) {
  const std::string missing = "0123456789abcdef0123456789abcdef";
  EXPECT_EQ(patch(*a_, target(store1_, missing), "nobody").status, 404u);
  EXPECT_EQ(patch(*a_, target(missing, missing), "nobody").status, 404u);
  EXPECT_EQ(sync_a_->stats().published, 0u);
  EXPECT_EQ(sync_a_->stats().publish_failures, 0u);
  EXPECT_EQ(patch(*a_, target(store1_, secret1_), "after").status, 200u);
  EXPECT_EQ(sync_a_->stats().published, 1u);
}

TEST_F(FleetSyncTest, OutOfSyncEntriesAreServedForMaxUnsyncedThenReadsGoUpstream) {
  const std::string t = target(store1_, secret1_);
  read(*b_, t, kT0);
  clock_b_ = kT0 + 5'000 * kMs;
  sync_b_->on_lost("redis connection lost");
  EXPECT_FALSE(sync_b_->stats().synced);
  EXPECT_EQ(read(*b_, t, clock_b_ + 999 * kMs).outcome, Outcome::hit);
  const std::size_t calls = fake_->calls();
  EXPECT_EQ(read(*b_, t, clock_b_ + 1000 * kMs).outcome, Outcome::miss);
  EXPECT_EQ(read(*b_, t, clock_b_ + 1001 * kMs).outcome, Outcome::miss);
  EXPECT_EQ(fake_->calls(), calls + 2);
  // A second loss report does not move the deadline.
  clock_b_ += 10'000 * kMs;
  sync_b_->on_lost("again");
  EXPECT_EQ(read(*b_, t, clock_b_).outcome, Outcome::miss);
  // Subscribed and resynchronized: trusted again.
  sync_b_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_b_->stats().synced; }));
  read(*b_, t, clock_b_);
  EXPECT_EQ(read(*b_, t, clock_b_ + 100'000 * kMs).outcome, Outcome::hit);
}

TEST_F(FleetSyncTest, WithoutJoiningAFleetTheSyncDeadlineIsNeverLookedAt) {
  config::CacheConfig cfg;
  auto alone = std::make_shared<ReadThroughCache>(cfg, fake_);
  const std::string t = target(store1_, secret1_);
  read(*alone, t, kT0);
  alone->set_serve_cached_until(0);
  EXPECT_EQ(read(*alone, t, kT0 + 1).outcome, Outcome::hit);
}

TEST_F(FleetSyncTest, AResyncDropsTheStoresThatChangedWhileOutOfSyncAndKeepsTheOthers) {
  const std::string t1 = target(store1_, secret1_);
  const std::string t2 = target(store2_, secret2_, kOtherAccount);
  // B learns both stores' generations from A's writes, then caches them.
  patch(*a_, t1, "one-1");
  patch(*a_, t2, "two-1");
  deliver_to_b(2);
  // The two stores', and their accounts' (a secret write changes the quota).
  EXPECT_EQ(sync_b_->stats().known_generations, 4u);
  read(*b_, t1, kT0);
  read(*b_, t2, kT0);
  sync_b_->on_lost("redis connection lost");
  // A write B never hears of.
  patch(*a_, t1, "one-2");
  ASSERT_TRUE(run_until([&] { return wire_.size() == 3; }));
  sync_b_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_b_->stats().synced; }));
  // Store one's tag, and its account's stores list and quota; nothing of store two's.
  EXPECT_EQ(sync_b_->stats().resync_invalidations, 3u);
  const Answer one = read(*b_, t1, kT0);
  EXPECT_EQ(one.outcome, Outcome::miss);
  EXPECT_THAT(body(one), HasSubstr("\"one-2\""));
  EXPECT_EQ(read(*b_, t2, kT0).outcome, Outcome::hit);
}

TEST_F(FleetSyncTest, AResyncForgetsTheGenerationsOfWhatTheCacheHoldsNothingOf) {
  const std::string t1 = target(store1_, secret1_);
  const std::string t2 = target(store2_, secret2_, kOtherAccount);
  patch(*a_, t1, "one-1");
  patch(*a_, t2, "two-1");
  deliver_to_b(2);
  EXPECT_EQ(sync_b_->stats().known_generations, 4u);
  read(*b_, t1, kT0);  // B holds store one's secret only
  sync_b_->on_lost("redis connection lost");
  sync_b_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_b_->stats().synced; }));
  EXPECT_EQ(sync_b_->stats().known_generations, 1u);
  EXPECT_EQ(read(*b_, t1, kT0).outcome, Outcome::hit);
  // Store two, cached again after it was forgotten, is still dropped by the next resync
  // when it changed meanwhile.
  read(*b_, t2, kT0);
  sync_b_->on_lost("redis connection lost");
  patch(*a_, t2, "two-2");
  sync_b_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_b_->stats().resyncs == 3; }));
  const Answer two = read(*b_, t2, kT0);
  EXPECT_EQ(two.outcome, Outcome::miss);
  EXPECT_THAT(body(two), HasSubstr("\"two-2\""));
}

TEST_F(FleetSyncTest, AResyncDropsEverythingWhenAPurgeOfEverythingWasPublishedMeanwhile) {
  const std::string t = target(store1_, secret1_);
  patch(*a_, t, "after");
  deliver_to_b(1);  // B knows the store's generation
  read(*b_, t, kT0);
  EXPECT_EQ(read(*b_, t, kT0).outcome, Outcome::hit);
  sync_b_->on_lost("redis connection lost");
  // A purge of everything B never hears of: no store's generation changes.
  test::run_awaitable(ioc_, sync_a_->publish("", {}));
  EXPECT_EQ(sync_a_->stats().published, 2u);
  sync_b_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_b_->stats().synced; }));
  EXPECT_EQ(read(*b_, t, kT0).outcome, Outcome::miss);
  // Learned: the next resync keeps what B holds.
  sync_b_->on_lost("redis connection lost");
  sync_b_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_b_->stats().resyncs == 3; }));
  EXPECT_EQ(read(*b_, t, kT0).outcome, Outcome::hit);
}

TEST_F(FleetSyncTest, APurgeOfEverythingItHeardOfIsNotDroppedAgainByAResync) {
  const std::string t = target(store1_, secret1_);
  patch(*a_, t, "after");
  deliver_to_b(1);
  test::run_awaitable(ioc_, sync_a_->publish("", {}));
  deliver_to_b(2);
  read(*b_, t, kT0);
  sync_b_->on_lost("redis connection lost");
  sync_b_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_b_->stats().resyncs == 2; }));
  EXPECT_EQ(read(*b_, t, kT0).outcome, Outcome::hit);
}

TEST_F(FleetSyncTest, WhatItKnowsIsPrunedBetweenResyncsOnceItHasGrown) {
  auto c = std::make_shared<ReadThroughCache>(config::CacheConfig{}, fake_);
  auto channel = std::make_shared<upstream::FleetChannel>(
      upstream::RedisConnection::create(ioc_.get_executor(), redis_options(redis_)), "sp",
      "proc-c");
  FleetSyncOptions o;
  o.wall_clock = [] { return kT0; };
  o.prune_known_at = 3;
  auto sync_c = std::make_shared<FleetSync>(c, channel, ioc_.get_executor(), o);
  c->join_fleet(sync_c);
  const std::string t1 = target(store1_, secret1_);
  read(*c, t1, kT0);  // C holds store one's secret
  patch(*a_, t1, "one-1");
  patch(*a_, target(store2_, secret2_, kOtherAccount), "two-1");
  ASSERT_TRUE(run_until([&] { return wire_.size() == 2; }));
  sync_c->on_message(wire_[0]);
  read(*c, t1, kT0);
  EXPECT_EQ(sync_c->stats().known_generations, 2u);  // store one's and its account's
  // Store two's and its account's: four, past the bound; a prune keeps what C holds.
  sync_c->on_message(wire_[1]);
  ASSERT_TRUE(run_until([&] { return sync_c->stats().known_generations == 1; }));
  EXPECT_EQ(read(*c, t1, kT0).outcome, Outcome::hit);
  // The next prune only once it has doubled again.
  patch(*a_, t1, "one-2");
  ASSERT_TRUE(run_until([&] { return wire_.size() == 3; }));
  sync_c->on_message(wire_[2]);
  EXPECT_EQ(sync_c->stats().known_generations, 2u);
  sync_c->stop();
}

TEST_F(FleetSyncTest, AResyncDropsEntriesOfStoresWhoseGenerationItNeverLearned) {
  const std::string t = target(store1_, secret1_);
  read(*b_, t, kT0);
  EXPECT_EQ(sync_b_->stats().known_generations, 0u);
  sync_b_->on_lost("redis connection lost");
  sync_b_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_b_->stats().synced; }));
  EXPECT_EQ(read(*b_, t, kT0).outcome, Outcome::miss);
  EXPECT_EQ(sync_b_->stats().known_generations, 1u);
}

TEST_F(FleetSyncTest, AWriteWhosePublishFailedIsPublishedOnceRedisAnswersAgain) {
  const std::string t = target(store1_, secret1_);
  read(*b_, t, kT0);
  redis_.stop();
  EXPECT_EQ(patch(*a_, t, "during").status, 200u);
  EXPECT_EQ(sync_a_->stats().publish_failures, 1u);
  EXPECT_EQ(sync_a_->stats().pending, 1u);
  redis_.start();
  ASSERT_TRUE(run_until([&] { return subscriber_->subscribed(); }));
  sync_a_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_a_->stats().pending == 0 && !wire_.empty(); }));
  deliver_to_b(1);
  EXPECT_THAT(body(read(*b_, t, kT0)), HasSubstr("\"during\""));
}

TEST_F(FleetSyncTest, AWriteWhosePublishFailedIsRetriedWithoutALaterWriteOrSubscription) {
  const std::string t = target(store1_, secret1_);
  redis_.stop();
  EXPECT_EQ(patch(*a_, t, "during").status, 200u);
  EXPECT_EQ(sync_a_->stats().pending, 1u);
  redis_.start();
  // Neither another write nor a subscription event reaches A: only its retry publishes.
  ASSERT_TRUE(run_until([&] { return sync_a_->stats().published == 1; }));
  EXPECT_EQ(sync_a_->stats().pending, 0u);
  EXPECT_EQ(redis_.command({"GET", upstream::generation_key("sp", {kAccount, store1_})}).text, "1");
}

TEST_F(FleetSyncTest, StopEndsTheRetriesOfKeptInvalidations) {
  asio::io_context ioc;
  config::CacheConfig cfg;
  auto cache = std::make_shared<ReadThroughCache>(cfg, fake_);
  auto channel = std::make_shared<upstream::FleetChannel>(
      upstream::RedisConnection::create(ioc.get_executor(), redis_options(redis_)), "sp", "proc-c");
  FleetSyncOptions o;
  o.wall_clock = [] { return kT0; };
  o.retry_min = 1h;  // a retry timer that only its cancellation ends within the test
  auto sync = std::make_shared<FleetSync>(cache, channel, ioc.get_executor(), o);
  redis_.stop();
  std::vector<std::string> tags = {policy::store_tag(kAccount, store1_)};
  test::run_awaitable(ioc, sync->publish(kAccount, tags));
  ASSERT_EQ(sync->stats().pending, 1u);
  sync->stop();
  // Once the retry timer is cancelled nothing is left to run: the context runs out of work
  // (it would keep retrying for the whole bound otherwise).
  ioc.restart();
  ioc.run_for(10s);
  EXPECT_TRUE(ioc.stopped());
  EXPECT_EQ(sync->stats().pending, 1u);
  EXPECT_EQ(sync->stats().publish_failures, 1u);
}

TEST_F(FleetSyncTest, AnOwnWriteAfterOneItMissedDoesNotMakeTheMissedOneLookApplied) {
  const std::string t1 = target(store1_, secret1_);
  std::vector<upstream::SecretCreate> in;
  in.push_back(upstream::SecretCreate{"OTHER", "value", {"workers"}, std::string("before")});
  auto created = fake_->store().create_secrets(kAccount, store1_, std::move(in), kT0);
  ASSERT_TRUE(created.ok());
  const std::string other = created->front().id;
  read(*b_, t1, kT0);
  fake_->set_now(kT0 + 10 * kMs);  // newer than B's snapshot: B's write applies in place
  sync_b_->on_lost("redis connection lost");
  // A writes (generation 1), B never hears of it; then B writes in the same store
  // (generation 2), which updates B's snapshot but not with A's change.
  EXPECT_EQ(patch(*a_, t1, "by-a").status, 200u);
  EXPECT_EQ(patch(*b_, target(store1_, other), "by-b").status, 200u);
  ASSERT_TRUE(run_until([&] { return wire_.size() == 2; }));
  // Only B's own message reaches B (the subscription is back), then B resyncs.
  sync_b_->on_message(wire_[1]);
  sync_b_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_b_->stats().synced; }));
  const Answer after = read(*b_, t1, kT0);
  EXPECT_EQ(after.outcome, Outcome::miss);
  EXPECT_THAT(body(after), HasSubstr("\"by-a\""));
}

TEST_F(FleetSyncTest, AFillThatStartedBeforeTheSubscriptionStoresNothing) {
  const std::string t = target(store1_, secret1_);
  sync_b_->on_lost("redis connection lost");
  // B's fill reads the store before A's write and is answered only after B subscribed.
  fake_->hold(upstream::RouteKind::list_secrets);
  std::optional<std::string> answered;
  asio::co_spawn(ioc_, b_->read(upstream::parse_route(Method::get, t).value(), ReadOptions{}, kT0),
                 [&](std::exception_ptr, Answer a) { answered = body(a); });
  ASSERT_TRUE(run_until([&] { return fake_->held() == 1; }));
  fake_->stop_holding();
  EXPECT_EQ(patch(*a_, t, "after").status, 200u);
  // B subscribes after the write was published: it never receives it.
  sync_b_->on_subscribed();
  ASSERT_TRUE(run_until([&] { return sync_b_->stats().synced; }));
  fake_->release();
  ASSERT_TRUE(run_until([&] { return answered.has_value(); }));
  EXPECT_THAT(*answered, HasSubstr("\"before\""));
  const Answer next = read(*b_, t, kT0);
  EXPECT_EQ(next.outcome, Outcome::miss);
  EXPECT_THAT(body(next), HasSubstr("\"after\""));
}

TEST_F(FleetSyncTest, AWriteIsCheckedAgainstASnapshotAsNewAsTheStoresGenerationInRedis) {
  const std::string t = target(store1_, secret1_);
  ReadOptions workers;
  workers.viewer = Viewer{false, {"workers"}, {}};
  const auto read_as_workers = [&] {
    return test::run_awaitable(
        ioc_, b_->read(upstream::parse_route(Method::get, t).value(), workers, kT0));
  };
  EXPECT_EQ(read_as_workers().status, 200u);
  // A moves the secret out of the workers' sight; B has not heard of it yet.
  upstream::ApiRequest req{Method::patch, t, R"({"scopes":["dex"]})"};
  EXPECT_EQ(test::run_awaitable(
                ioc_, a_->write(upstream::parse_route(Method::patch, t).value(), req, kT0))
                .status,
            200u);
  EXPECT_EQ(read_as_workers().status, 200u);  // B's snapshot is older
  test::run_awaitable(ioc_, sync_b_->refresh_store(kAccount, store1_));
  EXPECT_EQ(sync_b_->stats().freshness_refetches, 1u);
  EXPECT_EQ(read_as_workers().status, 404u);
  // Now as new as Redis's generation: checking again costs no refetch.
  const std::size_t calls = fake_->calls();
  test::run_awaitable(ioc_, sync_b_->refresh_store(kAccount, store1_));
  EXPECT_EQ(sync_b_->stats().freshness_checks, 2u);
  EXPECT_EQ(sync_b_->stats().freshness_refetches, 1u);
  EXPECT_EQ(read_as_workers().outcome, Outcome::hit);
  EXPECT_EQ(fake_->calls(), calls);
}

TEST_F(FleetSyncTest, AStoreNoWriteWasEverPublishedForKeepsItsSnapshot) {
  const std::string t = target(store1_, secret1_);
  read(*b_, t, kT0);
  test::run_awaitable(ioc_, sync_b_->refresh_store(kAccount, store1_));
  EXPECT_EQ(sync_b_->stats().freshness_refetches, 0u);
  EXPECT_EQ(read(*b_, t, kT0).outcome, Outcome::hit);
}

}  // namespace
}  // namespace sproxy::cache
