#include "upstream/redis_connection.hpp"

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>
#include <utility>

#include "upstream/redis_link.hpp"

namespace sproxy::upstream {

namespace {

namespace asio = boost::asio;
using boost::system::error_code;
using detail::RedisClock;
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

// A command waiting for its turn: woken (timer cancelled) with `handed` set when the
// previous command hands the connection over, or by its own deadline.
struct Waiter {
  explicit Waiter(asio::strand<asio::any_io_executor> strand, RedisClock::time_point deadline)
      : timer(strand, deadline) {}
  asio::steady_timer timer;
  bool handed = false;
};

}  // namespace

// The link, and the commands taking their turns on it.
struct RedisConnection::State : detail::RedisLink {
  using RedisLink::RedisLink;
  bool busy = false;  // a command holds the connection
  std::deque<std::shared_ptr<Waiter>> waiters;
  std::atomic<std::uint64_t> replies{0}, error_replies{0}, failures{0};
};

namespace {

using State = RedisConnection::State;
using namespace detail;

// Hands the connection to the next waiting command, or marks it free.
void release_turn(State& s) {
  if (s.waiters.empty()) {
    s.busy = false;
    return;
  }
  auto next = std::move(s.waiters.front());
  s.waiters.pop_front();
  next->handed = true;
  next->timer.cancel();
}

class Turn {
 public:
  explicit Turn(std::shared_ptr<State> s) : s_(std::move(s)) {}
  ~Turn() { release_turn(*s_); }
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;

 private:
  std::shared_ptr<State> s_;
};

// Waits until the connection is this command's; false when the deadline came first.
asio::awaitable<bool> acquire_turn(std::shared_ptr<State> s, RedisClock::time_point deadline) {
  if (!s->busy) {
    s->busy = true;
    co_return true;
  }
  auto w = std::make_shared<Waiter>(s->strand, deadline);
  s->waiters.push_back(w);
  (void)co_await w->timer.async_wait(kUseTuple);
  if (w->handed) co_return true;
  std::erase(s->waiters, w);
  co_return false;
}

asio::awaitable<boost::system::result<RedisReply>> run_command(std::shared_ptr<State> s,
                                                               std::vector<std::string> args) {
  RedisClock::time_point deadline = RedisClock::now() + s->options.command_timeout;
  if (s->closed) co_return make_error_code(RedisErrc::closed);
  if (!co_await acquire_turn(s, deadline)) {
    if (s->closed) co_return make_error_code(RedisErrc::closed);
    record_failure(*s, "redis command waited out its deadline behind earlier commands");
    co_return make_error_code(RedisErrc::timeout);
  }
  Turn turn(s);
  if (s->closed) co_return make_error_code(RedisErrc::closed);
  if (!has_stream(*s)) {
    if (RedisClock::now() < s->next_connect_at) co_return make_error_code(RedisErrc::unavailable);
    if (const error_code ec = co_await connect(s)) co_return ec;
    // The command's own deadline starts once it has a connection.
    deadline = RedisClock::now() + s->options.command_timeout;
  }
  boost::system::result<RedisReply> reply = make_error_code(RedisErrc::timeout);
  {
    Watchdog dog(s, deadline);
    reply = co_await round_trip(s, std::move(args));
  }
  // A connection that failed mid-command is useless (a late reply would answer the next
  // command); it had worked, so the next command reconnects at once.
  if (!reply) drop_stream(*s);
  co_return reply;
}

}  // namespace

std::shared_ptr<RedisConnection> RedisConnection::create(asio::any_io_executor executor,
                                                         RedisOptions options) {
  auto state = std::make_shared<State>(std::move(executor), std::move(options));
  return std::shared_ptr<RedisConnection>(new RedisConnection(std::move(state)));
}

RedisConnection::RedisConnection(std::shared_ptr<State> state) : state_(std::move(state)) {}

RedisConnection::~RedisConnection() { close(); }

asio::awaitable<boost::system::result<RedisReply>> RedisConnection::command(
    std::vector<std::string> args) {
  const std::shared_ptr<State> s = state_;
  auto reply =
      co_await asio::co_spawn(s->strand, run_command(s, std::move(args)), asio::use_awaitable);
  auto& counter = !reply ? s->failures : reply->is_error() ? s->error_replies : s->replies;
  counter.fetch_add(1, std::memory_order_relaxed);
  co_return reply;
}

RedisCommandStats RedisConnection::stats() const {
  return RedisCommandStats{state_->replies.load(std::memory_order_relaxed),
                           state_->error_replies.load(std::memory_order_relaxed),
                           state_->failures.load(std::memory_order_relaxed)};
}

void RedisConnection::close() {
  asio::post(state_->strand, [s = state_] {
    s->closed = true;
    close_socket(*s);
    for (auto& w : s->waiters) w->timer.cancel();
  });
}

bool RedisConnection::connected() const {
  return state_->is_connected.load(std::memory_order_relaxed);
}

std::string RedisConnection::last_failure() const { return detail::last_failure(*state_); }

std::string RedisConnection::describe() const { return detail::describe(state_->options); }

}  // namespace sproxy::upstream
