// The fleet's Redis connection (upstream/redis_connection.hpp) against a real redis-server
// started by the test (tests/support/redis_server.hpp): commands round trip over TCP, TLS
// and a Unix socket; a refused AUTH, an untrusted certificate, a server that never
// answers and a paused server give clear errors; the connection comes back after the
// server restarts and waits out its backoff after a failed connect.
#include "upstream/redis_connection.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
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
using test::redis_options_for;
using test::redis_url_of;
using test::RedisServer;
using test::RedisServerOptions;
using ::testing::HasSubstr;
using ::testing::Not;
using Result = boost::system::result<RedisReply>;

long long connections_received(const RedisServer& server) {
  const std::string info = server.command({"INFO", "stats"}).text;
  const std::string key = "total_connections_received:";
  const auto at = info.find(key);
  if (at == std::string::npos) throw std::runtime_error("INFO stats without " + key);
  return std::stoll(info.substr(at + key.size()));
}

class RedisConnectionTest : public ::testing::Test {
 protected:
  std::shared_ptr<RedisConnection> connect(RedisOptions o) {
    return RedisConnection::create(ioc_.get_executor(), std::move(o));
  }
  Result run(const std::shared_ptr<RedisConnection>& c, std::vector<std::string> args) {
    return test::run_awaitable(ioc_, c->command(std::move(args)));
  }
  // Round trips of several kinds of reply; fails the test when one is wrong.
  void expect_round_trips(const std::shared_ptr<RedisConnection>& c) {
    const std::string binary("a\r\nb\0c$3\r\n", 11);
    auto set = run(c, {"SET", "fleet:test", binary});
    ASSERT_TRUE(set) << set.error().message() << ": " << c->last_failure();
    EXPECT_EQ(set->type, RedisReply::Type::status);
    EXPECT_EQ(set->text, "OK");
    auto get = run(c, {"GET", "fleet:test"});
    ASSERT_TRUE(get);
    EXPECT_EQ(get->type, RedisReply::Type::string);
    EXPECT_EQ(get->text, binary);
    auto incr = run(c, {"INCRBY", "fleet:n", "41"});
    ASSERT_TRUE(incr);
    EXPECT_EQ(incr->type, RedisReply::Type::integer);
    EXPECT_EQ(incr->integer, 41);
    auto missing = run(c, {"GET", "fleet:missing"});
    ASSERT_TRUE(missing);
    EXPECT_EQ(missing->type, RedisReply::Type::nil);
    auto many = run(c, {"MGET", "fleet:test", "fleet:missing", "fleet:n"});
    ASSERT_TRUE(many);
    ASSERT_EQ(many->type, RedisReply::Type::array);
    ASSERT_EQ(many->elements.size(), 3u);
    EXPECT_EQ(many->elements[0].text, binary);
    EXPECT_EQ(many->elements[1].type, RedisReply::Type::nil);
    EXPECT_EQ(many->elements[2].text, "41");
    // A Redis error is a reply, and the connection stays usable after it.
    auto wrong = run(c, {"INCR", "fleet:test"});
    ASSERT_TRUE(wrong);
    EXPECT_TRUE(wrong->is_error());
    EXPECT_THAT(wrong->text, HasSubstr("not an integer"));
    auto ping = run(c, {"PING"});
    ASSERT_TRUE(ping);
    EXPECT_EQ(ping->text, "PONG");
    EXPECT_TRUE(c->connected());
  }

  asio::io_context ioc_;
};

TEST(RedisServerFixture, AnswersAsItsAclUserAndRefusesTheDefaultUser) {
  RedisServer server;
  EXPECT_EQ(server.command({"ACL", "WHOAMI"}).text, server.user());
  const auto users = server.command({"ACL", "LIST"}).elements;
  ASSERT_EQ(users.size(), 2u);
  EXPECT_THAT(users[0], HasSubstr("user default off"));
  EXPECT_EQ(server.command({"CONFIG", "GET", "port"}).elements.at(1),
            std::to_string(server.port()));
}

TEST(RedisServerFixture, ComesBackOnTheSamePortAfterARestart) {
  RedisServer server;
  const auto port = server.port();
  server.command({"SET", "k", "v"});
  server.stop();
  EXPECT_FALSE(server.running());
  EXPECT_THROW(server.command({"PING"}), std::runtime_error);
  server.start();
  EXPECT_EQ(server.port(), port);
  EXPECT_EQ(server.command({"PING"}).text, "PONG");
  // No persistence: a restart starts empty.
  EXPECT_EQ(server.command({"EXISTS", "k"}).integer, 0);
}

TEST_F(RedisConnectionTest, RoundTripsCommandsOverTcp) {
  RedisServer server;
  auto c = connect(redis_options_for(server, server.tcp_url()));
  EXPECT_FALSE(c->connected());  // connecting is lazy
  expect_round_trips(c);
  EXPECT_EQ(server.command({"GET", "fleet:n"}).text, "41");
}

TEST_F(RedisConnectionTest, RoundTripsCommandsOverAUnixSocket) {
  RedisServer server;
  auto c = connect(redis_options_for(server, server.unix_url()));
  expect_round_trips(c);
}

TEST_F(RedisConnectionTest, RoundTripsCommandsOverTlsWithTheCertificateVerified) {
  RedisServer server(RedisServerOptions{.tls = true});
  RedisOptions o = redis_options_for(server, server.tcp_url());
  o.ca_file = server.ca_file().string();
  auto c = connect(o);
  expect_round_trips(c);
  EXPECT_EQ(c->describe(), "rediss://127.0.0.1:" + std::to_string(server.port()));
}

TEST_F(RedisConnectionTest, RefusesATlsServerWhoseCertificateIsNotTrusted) {
  RedisServer server(RedisServerOptions{.tls = true});
  auto c = connect(redis_options_for(server, server.tcp_url()));  // no ca_file
  auto r = run(c, {"PING"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(RedisErrc::tls_error));
  EXPECT_THAT(c->last_failure(), HasSubstr("certificate verify failed"));
  EXPECT_FALSE(c->connected());
}

TEST_F(RedisConnectionTest, RefusesATlsServerWhoseCertificateNamesAnotherHost) {
  RedisServer server(RedisServerOptions{.tls = true, .tls_name = "redis.example.net"});
  RedisOptions o = redis_options_for(server, server.tcp_url());
  o.ca_file = server.ca_file().string();
  auto c = connect(o);
  auto r = run(c, {"PING"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(RedisErrc::tls_error));
  EXPECT_THAT(c->last_failure(), HasSubstr("certificate verify failed"));
}

TEST_F(RedisConnectionTest, RefusesPlainTcpToATlsPort) {
  RedisServer server(RedisServerOptions{.tls = true});
  RedisOptions o = redis_options_for(server, "redis://127.0.0.1:" + std::to_string(server.port()));
  o.connect_timeout = 2s;
  auto c = connect(o);
  auto r = run(c, {"PING"});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error(), make_error_code(RedisErrc::auth_failed));
  EXPECT_FALSE(c->connected());
}

TEST_F(RedisConnectionTest, AWrongPasswordIsAClearAuthErrorThatNeverShowsThePassword) {
  RedisServer server;
  RedisOptions o = redis_options_for(server, server.tcp_url());
  o.password = "not-the-password-" + server.password();
  auto c = connect(o);
  auto r = run(c, {"PING"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(RedisErrc::auth_failed));
  EXPECT_THAT(c->last_failure(), HasSubstr("redis refused AUTH for user \"sproxy\""));
  EXPECT_THAT(c->last_failure(), HasSubstr("WRONGPASS"));
  EXPECT_THAT(c->last_failure(), Not(HasSubstr(o.password)));
  EXPECT_THAT(r.error().message(), Not(HasSubstr(o.password)));
  EXPECT_FALSE(c->connected());
}

TEST_F(RedisConnectionTest, NoCredentialAgainstAnAclServerGetsTheServersRefusal) {
  RedisServer server;
  RedisOptions o = redis_options_for(server, server.tcp_url());
  o.user.clear();
  o.password.clear();
  auto c = connect(o);
  auto r = run(c, {"PING"});
  ASSERT_TRUE(r);  // the connection works; the command itself is refused
  EXPECT_TRUE(r->is_error());
  EXPECT_THAT(r->text, HasSubstr("NOAUTH"));
}

TEST_F(RedisConnectionTest, ACommandToAServerThatNeverAnswersFailsAtItsDeadline) {
  // A listening socket that nobody reads: the kernel completes the TCP handshake, the
  // command is written, no reply ever comes.
  asio::ip::tcp::acceptor silent(ioc_, {asio::ip::make_address("127.0.0.1"), 0});
  RedisOptions o;
  o.address = redis_url_of("redis://127.0.0.1:" + std::to_string(silent.local_endpoint().port()));
  o.command_timeout = 100ms;
  o.reconnect_min = 0ms;
  o.reconnect_max = 0ms;
  auto c = connect(o);
  auto r = run(c, {"PING"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(RedisErrc::timeout));
  EXPECT_THAT(c->last_failure(), HasSubstr("did not answer within the deadline"));
  EXPECT_FALSE(c->connected());  // dropped: a late reply must not answer the next command
}

TEST_F(RedisConnectionTest, AnAuthThatIsNeverAnsweredFailsAtTheConnectDeadline) {
  asio::ip::tcp::acceptor silent(ioc_, {asio::ip::make_address("127.0.0.1"), 0});
  RedisOptions o;
  o.address = redis_url_of("redis://127.0.0.1:" + std::to_string(silent.local_endpoint().port()));
  o.user = "sproxy";
  o.password = "secret-password";
  o.connect_timeout = 100ms;
  o.command_timeout = 60s;
  auto c = connect(o);
  auto r = run(c, {"PING"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(RedisErrc::timeout));
}

TEST_F(RedisConnectionTest, APausedServerTimesOutAndTheConnectionRecoversAfterThePause) {
  RedisServer server;
  RedisOptions o = redis_options_for(server, server.tcp_url());
  o.command_timeout = 100ms;
  auto c = connect(o);
  ASSERT_TRUE(run(c, {"PING"}));
  // Every client's commands wait until the pause ends by itself.
  ASSERT_EQ(server.command({"CLIENT", "PAUSE", "1500", "ALL"}).text, "OK");
  auto paused = run(c, {"PING"});
  ASSERT_FALSE(paused);
  EXPECT_EQ(paused.error(), make_error_code(RedisErrc::timeout));
  // Bounded: the pause lasts 1.5 s; each try takes at most connect + command timeouts.
  Result again = make_error_code(RedisErrc::timeout);
  const auto give_up = std::chrono::steady_clock::now() + 20s;
  while (!again && std::chrono::steady_clock::now() < give_up) again = run(c, {"PING"});
  ASSERT_TRUE(again) << c->last_failure();
  EXPECT_EQ(again->text, "PONG");
}

TEST_F(RedisConnectionTest, ReconnectsAfterTheServerRestarts) {
  RedisServer server;
  auto c = connect(redis_options_for(server, server.tcp_url()));
  ASSERT_TRUE(run(c, {"SET", "before", "1"}));
  server.stop();
  auto during = run(c, {"PING"});
  ASSERT_FALSE(during);
  EXPECT_EQ(during.error(), make_error_code(RedisErrc::connection_lost));
  auto refused = run(c, {"PING"});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error(), make_error_code(RedisErrc::unavailable));
  EXPECT_THAT(c->last_failure(), HasSubstr("cannot connect to redis"));
  server.start();
  auto after = run(c, {"PING"});
  ASSERT_TRUE(after) << c->last_failure();
  EXPECT_EQ(after->text, "PONG");
  EXPECT_TRUE(c->connected());
}

TEST_F(RedisConnectionTest, WaitsOutItsBackoffBeforeConnectingAgain) {
  RedisServer server;
  server.stop();
  RedisOptions o = redis_options_for(server, server.tcp_url());
  o.reconnect_min = 1h;
  o.reconnect_max = 1h;
  auto c = connect(o);
  ASSERT_FALSE(run(c, {"PING"}));
  server.start();
  // Inside the backoff the command fails at once without trying the (now running) server:
  // the only connections the server sees are the fixture's own (one per INFO).
  const long long before = connections_received(server);
  auto r = run(c, {"PING"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(RedisErrc::unavailable));
  EXPECT_EQ(connections_received(server), before + 1);
}

TEST_F(RedisConnectionTest, ConcurrentCommandsEachGetTheirOwnReplyInCallOrder) {
  RedisServer server;
  auto c = connect(redis_options_for(server, server.tcp_url()));
  std::vector<std::shared_ptr<test::Spawned<Result>>> calls;
  for (int i = 0; i < 50; ++i) {
    calls.push_back(
        test::spawn(ioc_.get_executor(), c->command({"RPUSH", "order", std::to_string(i)})));
  }
  test::run_until(ioc_, [&] {
    for (auto& call : calls) {
      if (!call->done()) return false;
    }
    return true;
  });
  for (int i = 0; i < 50; ++i) {
    auto& r = calls[static_cast<std::size_t>(i)]->get();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->integer, i + 1);  // the list's length after this push
  }
  const auto order = server.command({"LRANGE", "order", "0", "-1"}).elements;
  ASSERT_EQ(order.size(), 50u);
  EXPECT_EQ(order.front(), "0");
  EXPECT_EQ(order.back(), "49");
}

TEST_F(RedisConnectionTest, CommandsAfterCloseFailAsClosed) {
  RedisServer server;
  auto c = connect(redis_options_for(server, server.tcp_url()));
  ASSERT_TRUE(run(c, {"PING"}));
  c->close();
  auto r = run(c, {"PING"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(RedisErrc::closed));
}

}  // namespace
}  // namespace sproxy::upstream
