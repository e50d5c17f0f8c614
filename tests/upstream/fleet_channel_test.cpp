// FleetChannel (upstream/fleet_channel.hpp) against a real redis-server: one publish bumps
// the generations it names (the account's own only for account-wide changes) and sends
// one message of the documented shape on `<prefix>:inval`; generations() reads them back
// in order over several MGET batches (unknown keys as 0); a Redis that is down fails the
// publish at once instead of holding the write.
#include "upstream/fleet_channel.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/redis_client_options.hpp"
#include "tests/support/redis_server.hpp"
#include "tests/support/run_awaitable.hpp"
#include "upstream/redis_subscriber.hpp"

namespace sproxy::upstream {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using test::RedisServer;
using ::testing::ElementsAre;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

const std::string kAccount = "0123456789abcdef0123456789abcdef";

RedisOptions options_for(const RedisServer& server) {
  return test::redis_options_for(server, server.unix_url());
}

TEST(FleetChannelKeys, AreUnderTheAccountsHashTag) {
  EXPECT_EQ(generation_key("sp", {kAccount, ""}), "{sp:acct:" + kAccount + "}:gen");
  EXPECT_EQ(generation_key("sp", {kAccount, "s1"}), "{sp:acct:" + kAccount + "}:gen:s1");
  EXPECT_EQ(invalidation_channel("sp"), "sp:inval");
  // Its own hash tag, under the prefix's key pattern ({sp:*) like every other key.
  EXPECT_EQ(purge_generation_key("sp"), "{sp:purge}:gen");
}

TEST(FleetChannelMessages, RoundTripAndRejectAnythingElse) {
  FleetInvalidation m{"origin-1", 1733600000123456, kAccount, {"a/store/s/"}, {{"", 3}, {"s", 9}}};
  const auto back = decode_invalidation(encode_invalidation(m));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->origin, m.origin);
  EXPECT_EQ(back->published_us, m.published_us);
  EXPECT_EQ(back->account, m.account);
  EXPECT_EQ(back->tags, m.tags);
  EXPECT_EQ(back->generations, m.generations);
  for (const char* bad : {"", "[]", "{}", R"({"o":1,"t":"1","a":"","tags":[],"g":{}})",
                          R"({"o":"x","t":"soon","a":"","tags":[],"g":{}})",
                          R"({"o":"x","t":"1","a":"","tags":[1],"g":{}})",
                          R"({"o":"x","t":"1","a":"","tags":[],"g":{"s":"2"}})"}) {
    EXPECT_FALSE(decode_invalidation(bad)) << bad;
  }
}

class FleetChannelTest : public ::testing::Test {
 protected:
  template <class T>
  T run(asio::awaitable<T> a) {
    return test::run_awaitable(ioc_, std::move(a));
  }
  bool run_until(const std::function<bool()>& done) { return test::run_until_within(ioc_, done); }
  asio::io_context ioc_;
};

TEST_F(FleetChannelTest, PublishBumpsTheNamedGenerationsAndSendsOneMessage) {
  RedisServer server;
  FleetChannel channel(RedisConnection::create(ioc_.get_executor(), options_for(server)), "sp",
                       "proc-a");
  std::vector<std::string> received;
  RedisSubscriberOptions so;
  so.redis = options_for(server);
  so.channel = channel.channel();
  RedisSubscriberEvents events;
  bool subscribed = false;
  events.on_subscribed = [&] { subscribed = true; };
  events.on_message = [&](const std::string& m) { received.push_back(m); };
  auto sub = RedisSubscriber::create(ioc_.get_executor(), so, events);
  sub->start();
  ASSERT_TRUE(run_until([&] { return subscribed; }));

  auto first = run(channel.publish(kAccount, {"s1"}, true, {"t1", "t2"}, 1000));
  ASSERT_TRUE(first) << first.error().message();
  EXPECT_THAT(first->generations, UnorderedElementsAre(Pair("", 1), Pair("s1", 1)));
  auto second = run(channel.publish(kAccount, {"s1", "s2"}, false, {"t3"}, 2000));
  ASSERT_TRUE(second);
  EXPECT_THAT(second->generations, UnorderedElementsAre(Pair("s1", 2), Pair("s2", 1)));
  EXPECT_EQ(server.command({"GET", "{sp:acct:" + kAccount + "}:gen"}).text, "1");
  EXPECT_EQ(server.command({"GET", "{sp:acct:" + kAccount + "}:gen:s1"}).text, "2");

  ASSERT_TRUE(run_until([&] { return received.size() == 2; }));
  const auto m = decode_invalidation(received[0]);
  ASSERT_TRUE(m) << received[0];
  EXPECT_EQ(m->origin, "proc-a");
  EXPECT_EQ(m->published_us, 1000);
  EXPECT_EQ(m->account, kAccount);
  EXPECT_THAT(m->tags, ElementsAre("t1", "t2"));
  EXPECT_THAT(m->generations, UnorderedElementsAre(Pair("", 1), Pair("s1", 1)));
  const auto raw = nlohmann::json::parse(received[1]);
  EXPECT_EQ(raw["o"], "proc-a");
  EXPECT_EQ(raw["t"], "2000");
  EXPECT_EQ(raw["g"]["s2"], 1);

  // A purge of everything: no account, the fleet's purge generation, one message.
  auto read_purge = run(channel.purge_generation());
  ASSERT_TRUE(read_purge);
  EXPECT_EQ(*read_purge, 0);
  auto all = run(channel.publish("", {}, false, {}, 3000));
  ASSERT_TRUE(all);
  EXPECT_THAT(all->generations, ElementsAre(Pair("", 1)));
  EXPECT_EQ(server.command({"GET", "{sp:purge}:gen"}).text, "1");
  read_purge = run(channel.purge_generation());
  ASSERT_TRUE(read_purge);
  EXPECT_EQ(*read_purge, 1);
  ASSERT_TRUE(run_until([&] { return received.size() == 3; }));
  EXPECT_EQ(decode_invalidation(received[2])->account, "");
  EXPECT_THAT(decode_invalidation(received[2])->generations, ElementsAre(Pair("", 1)));
  sub->stop();
}

TEST_F(FleetChannelTest, ReadsGenerationsInOrderOverSeveralBatches) {
  RedisServer server;
  FleetChannel channel(RedisConnection::create(ioc_.get_executor(), options_for(server)), "sp",
                       "proc-a");
  std::vector<GenerationKey> keys;
  for (int i = 0; i < 250; ++i) {
    keys.push_back({kAccount, "s" + std::to_string(i)});
    if (i % 3 == 0) {
      server.command({"SET", generation_key("sp", keys.back()), std::to_string(i + 1)});
    }
  }
  keys.push_back({kAccount, ""});
  auto gens = run(channel.generations(keys));
  ASSERT_TRUE(gens) << gens.error().message();
  ASSERT_EQ(gens->size(), keys.size());
  for (int i = 0; i < 250; ++i) EXPECT_EQ((*gens)[i], i % 3 == 0 ? i + 1 : 0) << i;
  EXPECT_EQ(gens->back(), 0);
}

TEST_F(FleetChannelTest, PublishFailsAtOnceWhileRedisIsDown) {
  RedisServer server;
  auto o = options_for(server);
  o.reconnect_min = 60s;
  o.reconnect_max = 60s;
  FleetChannel channel(RedisConnection::create(ioc_.get_executor(), o), "sp", "proc-a");
  server.stop();
  auto first = run(channel.publish(kAccount, {"s1"}, false, {"t"}, 1));
  EXPECT_FALSE(first);
  // Within the backoff: refused without trying.
  auto second = run(channel.publish(kAccount, {"s1"}, false, {"t"}, 2));
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error(), make_error_code(RedisErrc::unavailable));
}

}  // namespace
}  // namespace sproxy::upstream
