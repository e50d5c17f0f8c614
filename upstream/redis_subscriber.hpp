// RedisSubscriber: one connection to the fleet's Redis server in subscribe mode, holding
// a SUBSCRIBE to one channel and handing over its messages as they arrive.
//
// Contract: start() connects (TCP / TLS / Unix, AUTH, within connect_timeout, as
// RedisConnection does) and sends SUBSCRIBE <channel>; once Redis confirms it,
// on_subscribed() is called and every message published on the channel from then on
// goes to on_message(payload), in order. When the subscription is lost (the connection
// broke, the server went away, or no reply to the keepalive PING within keepalive +
// command_timeout) on_lost(why) is called once, and the subscriber reconnects: at once
// after a subscription that had worked, then with the connection's backoff
// (reconnect_min doubling up to reconnect_max) until Redis answers, re-subscribes, and
// calls on_subscribed() again. Messages published while no subscription was held are
// not delivered (Redis does not keep them): the owner resynchronizes on on_subscribed().
// A first connect that fails calls on_lost once too.
// Callbacks run on the subscriber's strand, one at a time, and must not block.
// Thread safety: start(), stop() and the getters may be called from any thread.
// Ownership: create() returns a shared_ptr; the running loop keeps the state alive until
// stop() (or destruction) ends it; no callback runs after stop() has returned on the
// strand. Never hand-written RESP: hiredis formats and parses.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "upstream/redis_connection.hpp"

namespace sproxy::upstream {

struct RedisSubscriberEvents {
  std::function<void(const std::string& payload)> on_message;
  std::function<void()> on_subscribed;
  std::function<void(const std::string& why)> on_lost;
};

struct RedisSubscriberOptions {
  RedisOptions redis;
  std::string channel;
  // A PING every keepalive while subscribed; no reply to anything within keepalive +
  // command_timeout loses the subscription (a silent network is noticed).
  std::chrono::milliseconds keepalive{1'000};
};

class RedisSubscriber {
 public:
  // Throws std::invalid_argument as RedisConnection::create does, and for an empty
  // channel or a keepalive that is not positive.
  static std::shared_ptr<RedisSubscriber> create(boost::asio::any_io_executor executor,
                                                 RedisSubscriberOptions options,
                                                 RedisSubscriberEvents events);
  ~RedisSubscriber();
  RedisSubscriber(const RedisSubscriber&) = delete;
  RedisSubscriber& operator=(const RedisSubscriber&) = delete;

  void start();
  // Ends the subscription for good (the connection is closed, no callback after it).
  void stop();

  // Whether the subscription is held right now (for metrics and status).
  bool subscribed() const;
  // Why the last connect or the subscription failed ("" when none has).
  std::string last_failure() const;
  std::string describe() const;

  struct State;  // defined in redis_subscriber.cpp

 private:
  explicit RedisSubscriber(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

}  // namespace sproxy::upstream
