// RedisSubscriber (upstream/redis_subscriber.hpp) against a real redis-server: messages
// on its channel arrive in order (others' channels never); a stopped server is reported
// as a loss once, and the subscription comes back by itself when the server does; a
// refused password is a loss with Redis's reason; a server that stops answering (CLIENT
// PAUSE) is noticed by the keepalive.
#include "upstream/redis_subscriber.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
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
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kChannel = "sproxy-test:inval";

RedisSubscriberOptions options_for(const RedisServer& server) {
  RedisSubscriberOptions o;
  o.redis = test::redis_options_for(server, server.tcp_url());
  o.redis.reconnect_min = 10ms;
  o.redis.reconnect_max = 50ms;
  o.channel = kChannel;
  o.keepalive = 1s;
  return o;
}

class RedisSubscriberTest : public ::testing::Test {
 protected:
  std::shared_ptr<RedisSubscriber> subscribe(RedisSubscriberOptions o) {
    RedisSubscriberEvents events;
    events.on_message = [this](const std::string& m) { messages_.push_back(m); };
    events.on_subscribed = [this] { ++subscribed_; };
    events.on_lost = [this](const std::string& why) {
      ++lost_;
      why_ = why;
    };
    auto s = RedisSubscriber::create(ioc_.get_executor(), std::move(o), std::move(events));
    s->start();
    return s;
  }
  // Runs the io_context until `done` holds; false after 20 s (bounded).
  bool run_until(const std::function<bool()>& done) { return test::run_until_within(ioc_, done); }

  asio::io_context ioc_;
  std::vector<std::string> messages_;
  int subscribed_ = 0;
  int lost_ = 0;
  std::string why_;
};

TEST_F(RedisSubscriberTest, DeliversTheMessagesOfItsChannelInOrder) {
  RedisServer server;
  auto s = subscribe(options_for(server));
  ASSERT_TRUE(run_until([&] { return subscribed_ == 1; })) << s->last_failure();
  EXPECT_TRUE(s->subscribed());
  EXPECT_EQ(server.command({"PUBLISH", kChannel, "first"}).integer, 1);  // one subscriber
  server.command({"PUBLISH", "another:channel", "not for us"});
  server.command({"PUBLISH", kChannel, std::string("sec\r\nond\0", 10)});
  server.command({"PUBLISH", kChannel, "third"});
  ASSERT_TRUE(run_until([&] { return messages_.size() == 3; }));
  EXPECT_THAT(messages_, ElementsAre("first", std::string("sec\r\nond\0", 10), "third"));
  EXPECT_EQ(lost_, 0);
  s->stop();
}

TEST_F(RedisSubscriberTest, ReportsALossOnceAndSubscribesAgainWhenTheServerIsBack) {
  RedisServer server;
  auto s = subscribe(options_for(server));
  ASSERT_TRUE(run_until([&] { return subscribed_ == 1; })) << s->last_failure();
  server.stop();
  ASSERT_TRUE(run_until([&] { return lost_ == 1; }));
  EXPECT_FALSE(s->subscribed());
  // Reconnects keep failing while it is down: still one loss.
  ASSERT_TRUE(run_until([&] {
    return s->last_failure().find("cannot connect") != std::string::npos;
  })) << s->last_failure();
  EXPECT_EQ(lost_, 1);
  server.start();
  ASSERT_TRUE(run_until([&] { return subscribed_ == 2; })) << s->last_failure();
  EXPECT_TRUE(s->subscribed());
  EXPECT_EQ(lost_, 1);
  server.command({"PUBLISH", kChannel, "after the restart"});
  ASSERT_TRUE(run_until([&] { return messages_.size() == 1; }));
  EXPECT_EQ(messages_[0], "after the restart");
  s->stop();
}

// A PING may be writing to the stream when the server drops the connection: the stream
// is dropped only once the keepalive has returned (under AddressSanitizer a use after
// free otherwise). TLS (whose write touches the stream's state on completion), a PING
// every millisecond, and many connections killed by the server between them.
TEST_F(RedisSubscriberTest, AConnectionKilledWhilePingsAreInFlightIsALossEveryTime) {
  RedisServer server(test::RedisServerOptions{.tls = true});
  auto o = options_for(server);
  o.redis.ca_file = server.ca_file().string();
  o.keepalive = 1ms;
  auto s = subscribe(std::move(o));
  constexpr int kLosses = 150;
  for (int i = 1; i <= kLosses; ++i) {
    ASSERT_TRUE(run_until([&] { return subscribed_ == i; })) << s->last_failure();
    // A few pings go out (each answered: the subscription stays).
    for (int step = 0; step < 5; ++step) ioc_.run_one_for(1ms);
    EXPECT_EQ(lost_, i - 1);
    EXPECT_EQ(server.command({"CLIENT", "KILL", "TYPE", "pubsub"}).integer, 1);
    ASSERT_TRUE(run_until([&] { return lost_ == i; }));
  }
  // And once with the whole server gone.
  ASSERT_TRUE(run_until([&] { return subscribed_ == kLosses + 1; })) << s->last_failure();
  for (int step = 0; step < 5; ++step) ioc_.run_one_for(1ms);
  server.stop();
  ASSERT_TRUE(run_until([&] { return lost_ == kLosses + 1; }));
  server.start();
  ASSERT_TRUE(run_until([&] { return subscribed_ == kLosses + 2; })) << s->last_failure();
  server.command({"PUBLISH", kChannel, "still here"});
  ASSERT_TRUE(run_until([&] { return messages_.size() == 1; }));
  s->stop();
}

TEST_F(RedisSubscriberTest, ARefusedPasswordIsALossWithRedisReason) {
  RedisServer server;
  auto o = options_for(server);
  o.redis.password = "not-the-password";
  auto s = subscribe(std::move(o));
  ASSERT_TRUE(run_until([&] { return lost_ == 1; }));
  EXPECT_THAT(why_, HasSubstr("refused AUTH"));
  EXPECT_THAT(why_, ::testing::Not(HasSubstr("not-the-password")));
  EXPECT_EQ(subscribed_, 0);
  s->stop();
}

TEST_F(RedisSubscriberTest, AServerThatStopsAnsweringIsNoticedByTheKeepalive) {
  RedisServer server;
  auto o = options_for(server);
  o.keepalive = 100ms;
  o.redis.command_timeout = 200ms;
  auto s = subscribe(std::move(o));
  ASSERT_TRUE(run_until([&] { return subscribed_ == 1; })) << s->last_failure();
  // The socket stays open, but nothing comes back for 5 s.
  server.command({"CLIENT", "PAUSE", "5000", "ALL"});
  ASSERT_TRUE(run_until([&] { return lost_ == 1; }));
  EXPECT_THAT(why_, HasSubstr("deadline"));
  s->stop();
}

}  // namespace
}  // namespace sproxy::upstream
