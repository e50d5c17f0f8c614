// HttpUpstream's connections: one established connection (plain TCP or TLS, one
// exchange at a time), opening one (resolve, connect, TLS handshake, each within a
// deadline), and the pool of one HttpUpstream on one execution context. Internal to
// upstream/http_upstream.cpp; see http_upstream.hpp for the behaviour callers see.
//
// Ownership: a Lease holds a pool slot and, once there is one, its connection; ending it
// frees the slot and closes the connection unless `recycle` gave the connection back.
// PoolRegistry, an Asio service of each execution context, owns that context's pools
// and closes their idle connections when the context shuts down.
// Thread safety: a Beast stream belongs to one executor, so there is one pool per
// (HttpUpstream, execution context); a pool, its leases and its connections are touched
// only from their context's one thread (hence no lock; a context run by several threads
// must call through a strand). PoolRegistry::pool_for locks its map. A pool dies with
// its context, or at the context's next call after its HttpUpstream was destroyed.
// Errors: UpstreamErrc (timeout, unreachable, tls_error, overloaded, connection_reset,
// bad_response); nothing throws on the request path.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/system/result.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "upstream/http_upstream.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream::detail {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Executor = boost::asio::any_io_executor;
using Request = boost::beast::http::request<boost::beast::http::string_body>;

// What an HttpUpstream and its pools share, fixed at construction.
struct HttpUpstreamSettings {
  HttpUpstreamOptions options;
  std::string authorization;  // "Bearer <token>"; empty with an email + global API key
  std::string host_header;
  std::string described;
  bool host_is_ip = false;
  std::string port_text;
  // https only. Mutable: each connection creates its SSL object from it, which OpenSSL
  // allows concurrently on one SSL_CTX.
  mutable std::optional<boost::asio::ssl::context> tls;
  std::uint64_t id = 0;  // never reused: keys this upstream's pool in each context
  std::atomic<bool> retired{false};
};

struct ExchangeOutcome {
  UpstreamErrc error = UpstreamErrc::ok;
  // The failure happened before any response byte arrived: on a reused keep-alive
  // connection this is the signature of a connection the peer had already closed.
  bool nothing_received = false;
  // Writing the request failed: the peer never received a whole request, so it cannot
  // have acted on it (the only case in which a write may be sent again).
  bool write_failed = false;
  bool reusable = false;  // the connection may carry another request
  ApiResponse response;
};

// One established connection. The stream type is a template parameter of the
// implementation, so plain TCP and TLS share every line of the exchange.
class Connection {
 public:
  virtual ~Connection() = default;
  // Writes `request` and reads one response, all before `deadline`. The caller keeps
  // the connection alive (shared_ptr) until the awaitable completes.
  virtual boost::asio::awaitable<ExchangeOutcome> exchange(std::shared_ptr<const Request> request,
                                                           TimePoint deadline, bool head_request,
                                                           std::size_t max_body_bytes) = 0;
  virtual bool is_open() const = 0;
  // True when an idle connection has nothing to read: no EOF, no reset, no stray bytes
  // (a TLS close_notify counts as bytes). A non-blocking peek; never consumes data.
  virtual bool idle_and_quiet() = 0;
  TimePoint idle_since{};
};

// A new connection to the upstream `s` names: resolved, connected and (https) through the
// TLS handshake with the peer verified, all before `connect_deadline`.
boost::asio::awaitable<boost::system::result<std::shared_ptr<Connection>>> open_connection(
    Executor ex, std::shared_ptr<const HttpUpstreamSettings> s, TimePoint connect_deadline);

class ConnectionPool;

// A pool slot held by one call, with its connection once there is one. Destroying it
// closes the connection (if any) and frees the slot; `recycle` returns the connection
// to the pool instead.
class Lease {
 public:
  Lease(std::shared_ptr<ConnectionPool> pool, std::shared_ptr<Connection> conn)
      : pool_(std::move(pool)), conn_(std::move(conn)) {}
  Lease(Lease&& other) noexcept
      : pool_(std::exchange(other.pool_, nullptr)), conn_(std::move(other.conn_)) {}
  Lease& operator=(Lease&&) = delete;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  const std::shared_ptr<Connection>& connection() const { return conn_; }
  void set_connection(std::shared_ptr<Connection> conn) { conn_ = std::move(conn); }
  // Closes the connection but keeps the slot, for a retry on a fresh connection.
  void discard_connection() { conn_.reset(); }
  void recycle();

 private:
  std::shared_ptr<ConnectionPool> pool_;
  std::shared_ptr<Connection> conn_;
};

class ConnectionPool {
 public:
  explicit ConnectionPool(std::shared_ptr<const HttpUpstreamSettings> settings)
      : settings_(std::move(settings)) {}

  const std::shared_ptr<const HttpUpstreamSettings>& settings() const { return settings_; }

  // A slot (with an idle connection when there is one) for one call, waiting in line
  // until `deadline` when all are in use; overloaded when the wait ends empty-handed or
  // too many callers already wait.
  static boost::asio::awaitable<boost::system::result<Lease>> acquire(
      std::shared_ptr<ConnectionPool> self, Executor ex, TimePoint deadline);

  // Called when a lease ends: `conn` is a reusable connection, or null when the slot
  // is freed (the connection, if any, was closed).
  void give_back(std::shared_ptr<Connection> conn) {
    if (shut_down_) return;
    if (conn) conn->idle_since = Clock::now();
    if (!waiters_.empty()) {
      // Hand the slot (and connection) straight to the oldest waiter, so a newcomer
      // cannot take it between the wake-up and the waiter's resumption.
      Waiter* w = waiters_.front();
      waiters_.pop_front();
      w->queued = false;
      w->grant.emplace(std::move(conn));
      w->timer.cancel();
      return;
    }
    if (conn) {
      idle_.push_back(std::move(conn));
    } else {
      --slots_in_use_;
    }
  }

  // The execution context is shutting down: close idle connections; leases that end
  // later just close theirs.
  void shutdown() {
    shut_down_ = true;
    idle_.clear();
    for (Waiter* w : waiters_) w->queued = false;
    waiters_.clear();
  }

 private:
  struct Waiter {
    Waiter(const Executor& ex, std::shared_ptr<ConnectionPool> p) : timer(ex), pool(std::move(p)) {}
    Waiter(const Waiter&) = delete;
    Waiter& operator=(const Waiter&) = delete;
    // Runs also when the coroutine frame is destroyed with its context: leave the
    // queue, and pass on a grant that was never used.
    ~Waiter() {
      if (queued) pool->waiters_.erase(position);
      if (grant) pool->give_back(std::move(*grant));
    }
    boost::asio::steady_timer timer;
    std::shared_ptr<ConnectionPool> pool;
    std::list<Waiter*>::iterator position;
    bool queued = false;
    // Set by give_back: the slot, with an idle connection or null (connect anew).
    std::optional<std::shared_ptr<Connection>> grant;
  };

  void drop_expired_idle(TimePoint now) {
    const auto max_idle = settings_->options.max_idle;
    const auto stale = [&](const std::shared_ptr<Connection>& c) {
      return !c->is_open() || now - c->idle_since > max_idle;
    };
    const auto before = idle_.size();
    idle_.erase(std::remove_if(idle_.begin(), idle_.end(), stale), idle_.end());
    slots_in_use_ -= before - idle_.size();
  }

  std::shared_ptr<const HttpUpstreamSettings> settings_;
  std::size_t slots_in_use_ = 0;  // idle + leased connections, and slots being connected
  std::deque<std::shared_ptr<Connection>> idle_;  // oldest first
  std::list<Waiter*> waiters_;                    // oldest first
  bool shut_down_ = false;
};

// One per execution context: the pools of every HttpUpstream used on it. Being a
// service ties the pools' sockets to the context's lifetime: they are closed in the
// context's shutdown phase, before any of its services is destroyed.
class PoolRegistry final : public boost::asio::execution_context::service {
 public:
  static inline boost::asio::execution_context::id id;

  explicit PoolRegistry(boost::asio::execution_context& ctx) : service(ctx) {}

  std::shared_ptr<ConnectionPool> pool_for(const std::shared_ptr<const HttpUpstreamSettings>& s) {
    std::lock_guard lock(mutex_);
    // Pools of destroyed upstreams go here, on this context's thread.
    std::erase_if(pools_, [](const auto& entry) {
      if (!entry.second->settings()->retired.load(std::memory_order_relaxed)) return false;
      entry.second->shutdown();
      return true;
    });
    auto& pool = pools_[s->id];
    if (!pool) pool = std::make_shared<ConnectionPool>(s);
    return pool;
  }

 private:
  void shutdown() override {
    std::unordered_map<std::uint64_t, std::shared_ptr<ConnectionPool>> pools;
    {
      std::lock_guard lock(mutex_);
      pools.swap(pools_);
    }
    for (auto& [key, pool] : pools) pool->shutdown();
  }

  std::mutex mutex_;
  std::unordered_map<std::uint64_t, std::shared_ptr<ConnectionPool>> pools_;
};

}  // namespace sproxy::upstream::detail
