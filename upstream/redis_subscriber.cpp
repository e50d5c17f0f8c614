#include "upstream/redis_subscriber.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <exception>
#include <stdexcept>
#include <string_view>
#include <utility>

#include "upstream/redis_link.hpp"

namespace sproxy::upstream {

namespace {

namespace asio = boost::asio;
using boost::system::error_code;
using detail::RedisClock;
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

}  // namespace

struct RedisSubscriber::State : detail::RedisLink {
  State(asio::any_io_executor executor, RedisSubscriberOptions o, RedisSubscriberEvents e)
      : RedisLink(std::move(executor), o.redis),
        channel(std::move(o.channel)),
        keepalive(o.keepalive),
        events(std::move(e)),
        wake(strand),
        ping_timer(strand),
        pinger_done(strand) {}

  const std::string channel;
  const std::chrono::milliseconds keepalive;
  const RedisSubscriberEvents events;
  asio::steady_timer wake;  // waits out the backoff; cancelled by stop()
  // keep_alive()'s: the wait between PINGs, and what run() waits on (cancelled) until
  // keep_alive() has returned, so that no PING is still writing when the stream goes.
  asio::steady_timer ping_timer;
  asio::steady_timer pinger_done;
  bool pinging = false;  // keep_alive() runs for the current stream
  bool started = false;
  bool lost_reported = false;  // on_lost was called for the current loss
  std::atomic<bool> is_subscribed{false};
};

namespace {

using State = RedisSubscriber::State;
using namespace detail;

bool is_push(const RedisReply& r, std::string_view kind) {
  return r.type == RedisReply::Type::array && !r.elements.empty() && r.elements[0].text == kind;
}

// Tells the owner once per loss (never after stop()).
void report_lost(State& s, const std::string& why) {
  s.is_subscribed.store(false, std::memory_order_relaxed);
  if (s.lost_reported || s.closed) return;
  s.lost_reported = true;
  if (s.events.on_lost) s.events.on_lost(why);
}

// SUBSCRIBE, and Redis's confirmation within command_timeout.
asio::awaitable<bool> subscribe(std::shared_ptr<State> s) {
  boost::system::result<RedisReply> reply = make_error_code(RedisErrc::timeout);
  {
    Watchdog dog(s, RedisClock::now() + s->options.command_timeout);
    std::vector<std::string> args = {"SUBSCRIBE", s->channel};
    reply = co_await round_trip(s, std::move(args));
  }
  if (!reply) co_return false;
  if (!is_push(*reply, "subscribe") || reply->elements.size() < 2 ||
      reply->elements[1].text != s->channel) {
    record_failure(*s, "redis refused SUBSCRIBE: " +
                           (reply->is_error() ? reply->text : std::string("unexpected reply")));
    co_return false;
  }
  co_return true;
}

// A PING every keepalive while `s->pinging` holds; its reply (like any message) proves
// the subscription alive to receive()'s watchdog.
asio::awaitable<void> keep_alive(std::shared_ptr<State> s) {
  for (;;) {
    s->ping_timer.expires_after(s->keepalive);
    auto [ec] = co_await s->ping_timer.async_wait(kUseTuple);
    if (ec || s->closed || !s->pinging) co_return;
    std::vector<std::string> ping = {"PING"};
    if (co_await send_command(s, std::move(ping))) co_return;
  }
}

// Ends keep_alive() and waits until it has returned: its PING may be writing to the
// stream, which must outlive that write. Closing the socket fails the write at once.
asio::awaitable<void> stop_pinging(std::shared_ptr<State> s) {
  s->pinging = false;
  close_socket(*s);
  s->ping_timer.cancel();
  while (s->pinger_done.expiry() != RedisClock::time_point::min()) {
    (void)co_await s->pinger_done.async_wait(kUseTuple);
  }
}

// Hands over messages until the stream fails or stays silent too long.
asio::awaitable<void> receive(std::shared_ptr<State> s) {
  for (;;) {
    boost::system::result<RedisReply> reply = make_error_code(RedisErrc::timeout);
    {
      Watchdog dog(s, RedisClock::now() + s->keepalive + s->options.command_timeout);
      reply = co_await read_reply(s);
    }
    if (!reply || s->closed) co_return;
    // ["message", channel, payload]; anything else (the PING's pong) is proof of life.
    if (is_push(*reply, "message") && reply->elements.size() == 3 && s->events.on_message) {
      s->events.on_message(reply->elements[2].text);
    }
  }
}

asio::awaitable<void> run(std::shared_ptr<State> s) {
  while (!s->closed) {
    if (RedisClock::now() < s->next_connect_at) {
      s->wake.expires_at(s->next_connect_at);
      (void)co_await s->wake.async_wait(kUseTuple);
      continue;
    }
    if (co_await connect(s)) {
      report_lost(*s, last_failure(*s));
      continue;
    }
    if (!co_await subscribe(s)) {
      drop_stream(*s);
      start_backoff(*s);
      report_lost(*s, last_failure(*s));
      continue;
    }
    if (s->closed) break;
    s->is_subscribed.store(true, std::memory_order_relaxed);
    s->lost_reported = false;
    if (s->events.on_subscribed) s->events.on_subscribed();
    s->pinging = true;
    s->pinger_done.expires_at(RedisClock::time_point::max());
    asio::co_spawn(s->strand, keep_alive(s), [s](std::exception_ptr) {
      // On the strand: tells stop_pinging() that keep_alive() has returned.
      s->pinger_done.expires_at(RedisClock::time_point::min());
    });
    co_await receive(s);
    const std::string why = last_failure(*s);
    co_await stop_pinging(s);
    drop_stream(*s);
    report_lost(*s, why);
  }
  drop_stream(*s);
}

}  // namespace

std::shared_ptr<RedisSubscriber> RedisSubscriber::create(asio::any_io_executor executor,
                                                         RedisSubscriberOptions options,
                                                         RedisSubscriberEvents events) {
  if (options.channel.empty()) throw std::invalid_argument("redis subscriber: no channel");
  if (options.keepalive <= std::chrono::milliseconds::zero()) {
    throw std::invalid_argument("redis subscriber: keepalive must be positive");
  }
  auto state = std::make_shared<State>(std::move(executor), std::move(options), std::move(events));
  return std::shared_ptr<RedisSubscriber>(new RedisSubscriber(std::move(state)));
}

RedisSubscriber::RedisSubscriber(std::shared_ptr<State> state) : state_(std::move(state)) {}

RedisSubscriber::~RedisSubscriber() { stop(); }

void RedisSubscriber::start() {
  asio::post(state_->strand, [s = state_] {
    if (s->started || s->closed) return;
    s->started = true;
    asio::co_spawn(s->strand, run(s), [s](std::exception_ptr e) {
      if (!e) return;
      // Only allocation can throw here: the subscription ends, and says so.
      record_failure(*s, "redis subscriber stopped on an internal error");
      report_lost(*s, detail::last_failure(*s));
    });
  });
}

void RedisSubscriber::stop() {
  asio::post(state_->strand, [s = state_] {
    s->closed = true;
    s->is_subscribed.store(false, std::memory_order_relaxed);
    close_socket(*s);
    s->wake.cancel();
  });
}

bool RedisSubscriber::subscribed() const {
  return state_->is_subscribed.load(std::memory_order_relaxed);
}

std::string RedisSubscriber::last_failure() const { return detail::last_failure(*state_); }

std::string RedisSubscriber::describe() const { return detail::describe(state_->options); }

}  // namespace sproxy::upstream
