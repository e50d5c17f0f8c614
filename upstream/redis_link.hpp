// RedisLink: the stream level of one connection to the fleet's Redis server, shared by
// RedisConnection (request/reply commands) and RedisSubscriber (push mode). Internal to
// the sproxy_redis library: not an interface of its own.
//
// It holds the transport (TCP, TLS or a Unix socket, as an Asio stream), hiredis's reply
// reader, and the reconnect backoff. connect() opens the stream and sends AUTH within
// connect_timeout (a failure starts the backoff: reconnect_min doubling up to
// reconnect_max); send_command() formats a command with hiredis and writes it;
// read_reply() reads the next reply (replies already buffered by the reader first).
// Neither bounds itself: the caller holds a Watchdog, which closes the socket when its
// deadline passes so the operation in flight fails (RedisErrc::timeout). A stream that
// failed is dropped with drop_stream(), which bumps `generation` (a late watchdog of an
// older stream never closes a newer one).
// Thread safety: every function runs on the link's strand; only is_connected and
// last_failure (under failure_mu) are read from other threads.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "upstream/redis_connection.hpp"

struct redisReader;  // hiredis

namespace sproxy::upstream::detail {

using RedisClock = std::chrono::steady_clock;

struct RedisReaderFree {
  void operator()(redisReader* r) const;
};

using RedisStream = std::variant<std::monostate, boost::asio::ip::tcp::socket,
                                 boost::asio::ssl::stream<boost::asio::ip::tcp::socket>,
                                 boost::asio::local::stream_protocol::socket>;

struct RedisLink {
  // Throws as RedisConnection::create documents (options, TLS context).
  RedisLink(boost::asio::any_io_executor executor, RedisOptions o);

  boost::asio::strand<boost::asio::any_io_executor> strand;
  const RedisOptions options;
  std::optional<boost::asio::ssl::context> tls;
  boost::asio::ip::tcp::resolver resolver;
  RedisStream stream;  // monostate: not connected
  std::unique_ptr<redisReader, RedisReaderFree> reader;
  std::uint64_t generation = 0;  // bumped whenever the stream is dropped
  bool timed_out = false;        // the running operation's watchdog fired
  bool closed = false;
  int connect_failures = 0;  // consecutive failed connects
  RedisClock::time_point next_connect_at{};
  std::atomic<bool> is_connected{false};
  mutable std::mutex failure_mu;
  std::string failure;
};

void record_failure(RedisLink& s, std::string why);
std::string last_failure(const RedisLink& s);
// Closes the socket under any operation in flight (which then completes with an error);
// the stream object itself is reset only by the coroutine that owns the operation.
void close_socket(RedisLink& s);
void drop_stream(RedisLink& s);
bool has_stream(const RedisLink& s);
// After a failed connect (or subscribe): no new connect before the next backoff step.
void start_backoff(RedisLink& s);
// "redis://127.0.0.1:6379" / "rediss://..." / "unix:///path", for logs.
std::string describe(const RedisOptions& o);

// Closes the socket when `deadline` passes before it is destroyed.
class Watchdog {
 public:
  Watchdog(std::shared_ptr<RedisLink> s, RedisClock::time_point deadline);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  boost::asio::steady_timer timer_;
  std::shared_ptr<bool> armed_;
};

// Connects and authenticates within connect_timeout; a failure drops the stream and
// starts the backoff (next_connect_at). Call only without a stream.
boost::asio::awaitable<boost::system::error_code> connect(std::shared_ptr<RedisLink> s);
boost::asio::awaitable<boost::system::error_code> send_command(std::shared_ptr<RedisLink> s,
                                                               std::vector<std::string> args);
boost::asio::awaitable<boost::system::result<RedisReply>> read_reply(std::shared_ptr<RedisLink> s);
// send_command, then read_reply. The caller bounds it.
boost::asio::awaitable<boost::system::result<RedisReply>> round_trip(std::shared_ptr<RedisLink> s,
                                                                     std::vector<std::string> args);

}  // namespace sproxy::upstream::detail
