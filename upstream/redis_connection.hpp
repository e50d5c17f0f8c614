// RedisConnection: one connection to the fleet's Redis server (TCP, TLS or a Unix socket),
// speaking RESP through hiredis's command formatter and reply reader over Asio streams.
//
// Contract: `command(args)` sends one command and returns its reply; a Redis error reply
// ("-ERR ...", "-NOSCRIPT ...") is a reply (RedisReply::Type::error), not a failure. A
// failure is a RedisErrc: the server cannot be reached or is waiting out a reconnect
// backoff (unavailable), the AUTH was refused (auth_failed), the TLS handshake or the
// certificate check failed (tls_error), no reply within the deadline (timeout), the
// connection broke (connection_lost), or the bytes were not RESP (protocol_error).
// last_failure() says why in words (never the password).
// Connecting is lazy: the first command connects (TCP / TLS handshake / AUTH with the ACL
// user and password) within connect_timeout; every command then has command_timeout from
// its call to its reply (waiting for its turn included). A timed-out or broken connection
// is closed (a late reply can never be taken for the next command's); the next command
// reconnects at once after a connection that had worked, and after a failed connect only
// once the backoff (reconnect_min doubling up to reconnect_max) has passed.
// Thread safety: any thread may call command(); the connection's state lives on its own
// strand and commands run one at a time, in call order. Ownership: create() returns a
// shared_ptr; calls in flight keep the connection alive; close() fails the waiting calls
// and drops the socket. Cancellation: no per-call cancellation; the deadline bounds each.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/redis_url.hpp"

namespace sproxy::upstream {

enum class RedisErrc {
  ok = 0,
  unavailable = 1,
  auth_failed,
  tls_error,
  timeout,
  connection_lost,
  protocol_error,
  closed,  // close() was called
};

const boost::system::error_category& redis_category();
boost::system::error_code make_error_code(RedisErrc e);

// A reply, copied out of hiredis's reply object.
struct RedisReply {
  enum class Type { string, status, error, integer, nil, array, other };
  Type type = Type::nil;
  std::string text;  // string, status, error (and the text of other scalar types)
  long long integer = 0;
  std::vector<RedisReply> elements;  // array (the connection speaks RESP2)

  bool is_error() const { return type == Type::error; }
};

struct RedisOptions {
  config::RedisUrl address;
  std::string ca_file;   // rediss: PEM CAs trusted in addition to the system store
  std::string user;      // ACL user; empty: the default user
  std::string password;  // empty: no AUTH
  std::chrono::milliseconds connect_timeout{1'000};
  std::chrono::milliseconds command_timeout{250};
  std::chrono::milliseconds reconnect_min{100};
  std::chrono::milliseconds reconnect_max{5'000};
};

// Commands by how they ended, since the connection was created.
struct RedisCommandStats {
  std::uint64_t replies = 0;        // answered (a reply that is not an error)
  std::uint64_t error_replies = 0;  // answered with an error reply
  std::uint64_t failures = 0;       // not answered (RedisErrc)
};

class RedisConnection {
 public:
  // Throws std::invalid_argument on options that cannot work (no host / path, a negative
  // or zero timeout, reconnect_max < reconnect_min) and std::runtime_error when the TLS
  // context cannot be set up (e.g. an unreadable ca_file).
  static std::shared_ptr<RedisConnection> create(boost::asio::any_io_executor executor,
                                                 RedisOptions options);
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  boost::asio::awaitable<boost::system::result<RedisReply>> command(std::vector<std::string> args);

  // Drops the connection; waiting and later commands fail with RedisErrc::closed.
  void close();

  // Whether a connection is established right now (for metrics and status).
  bool connected() const;
  RedisCommandStats stats() const;
  // Why the last connect or command failed ("" when none has).
  std::string last_failure() const;
  // "redis://127.0.0.1:6379" / "rediss://..." / "unix:///path", for logs.
  std::string describe() const;

  struct State;  // defined in redis_connection.cpp

 private:
  explicit RedisConnection(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

}  // namespace sproxy::upstream

template <>
struct boost::system::is_error_code_enum<sproxy::upstream::RedisErrc> : std::true_type {};
