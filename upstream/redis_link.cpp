#include "upstream/redis_link.hpp"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <tuple>
#include <utility>
#include <variant>

namespace sproxy::upstream {

namespace {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using local_socket = asio::local::stream_protocol::socket;
using boost::system::error_code;
using Transport = config::RedisUrl::Transport;
using detail::RedisClock;
using detail::RedisLink;
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

class RedisCategory final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "redis"; }
  std::string message(int ev) const override {
    switch (static_cast<RedisErrc>(ev)) {
      case RedisErrc::ok:
        return "ok";
      case RedisErrc::unavailable:
        return "redis unavailable";
      case RedisErrc::auth_failed:
        return "redis refused the credential";
      case RedisErrc::tls_error:
        return "redis TLS handshake or certificate check failed";
      case RedisErrc::timeout:
        return "redis did not answer in time";
      case RedisErrc::connection_lost:
        return "redis connection lost";
      case RedisErrc::protocol_error:
        return "redis reply is not RESP";
      case RedisErrc::closed:
        return "redis connection closed";
    }
    return "unknown redis error";
  }
};

}  // namespace

const boost::system::error_category& redis_category() {
  static const RedisCategory category;
  return category;
}

boost::system::error_code make_error_code(RedisErrc e) {
  return {static_cast<int>(e), redis_category()};
}

namespace detail {

void RedisReaderFree::operator()(redisReader* r) const { redisReaderFree(r); }

void record_failure(RedisLink& s, std::string why) {
  std::lock_guard lock(s.failure_mu);
  s.failure = std::move(why);
}

void close_socket(RedisLink& s) {
  error_code ignored;
  s.resolver.cancel();
  std::visit(
      [&](auto& st) {
        using T = std::decay_t<decltype(st)>;
        if constexpr (std::is_same_v<T, ssl::stream<tcp::socket>>) {
          st.lowest_layer().close(ignored);
        } else if constexpr (!std::is_same_v<T, std::monostate>) {
          st.close(ignored);
        }
      },
      s.stream);
}

void drop_stream(RedisLink& s) {
  close_socket(s);
  s.stream.emplace<std::monostate>();
  s.reader.reset();
  ++s.generation;
  s.is_connected.store(false, std::memory_order_relaxed);
}

std::string last_failure(const RedisLink& s) {
  std::lock_guard lock(s.failure_mu);
  return s.failure;
}

bool has_stream(const RedisLink& s) { return !std::holds_alternative<std::monostate>(s.stream); }

Watchdog::Watchdog(std::shared_ptr<RedisLink> s, RedisClock::time_point deadline)
    : timer_(s->strand, deadline), armed_(std::make_shared<bool>(true)) {
  s->timed_out = false;
  // `armed` catches a deadline whose handler was already queued when the operation
  // finished in time: it must not close the connection that just succeeded.
  timer_.async_wait([s, armed = armed_, gen = s->generation](error_code ec) {
    if (ec || !*armed || s->generation != gen) return;
    s->timed_out = true;
    close_socket(*s);
  });
}

Watchdog::~Watchdog() {
  *armed_ = false;
  timer_.cancel();
}

}  // namespace detail

namespace {

using namespace detail;

asio::awaitable<std::tuple<error_code, std::size_t>> not_connected() {
  co_return std::tuple<error_code, std::size_t>{asio::error::not_connected, 0};
}

asio::awaitable<std::tuple<error_code, std::size_t>> write_all(RedisLink& s,
                                                               const std::string& bytes) {
  return std::visit(
      [&](auto& st) -> asio::awaitable<std::tuple<error_code, std::size_t>> {
        if constexpr (std::is_same_v<std::decay_t<decltype(st)>, std::monostate>) {
          return not_connected();
        } else {
          return asio::async_write(st, asio::buffer(bytes), kUseTuple);
        }
      },
      s.stream);
}

asio::awaitable<std::tuple<error_code, std::size_t>> read_some(RedisLink& s,
                                                               asio::mutable_buffer buf) {
  return std::visit(
      [&](auto& st) -> asio::awaitable<std::tuple<error_code, std::size_t>> {
        if constexpr (std::is_same_v<std::decay_t<decltype(st)>, std::monostate>) {
          return not_connected();
        } else {
          return st.async_read_some(buf, kUseTuple);
        }
      },
      s.stream);
}

RedisReply to_reply(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::string;
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::status;
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::error;
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::integer;
      break;
    case REDIS_REPLY_NIL:
      out.type = RedisReply::Type::nil;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::array;
      break;
    default:
      out.type = RedisReply::Type::other;
      break;
  }
  out.integer = r->integer;
  if (r->str != nullptr) out.text.assign(r->str, r->len);
  for (std::size_t i = 0; i < r->elements; ++i) out.elements.push_back(to_reply(r->element[i]));
  return out;
}

// Formats one command with hiredis (never by hand).
std::optional<std::string> format_command(const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  argv.reserve(args.size());
  lens.reserve(args.size());
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  char* cmd = nullptr;
  const long long len =
      redisFormatCommandArgv(&cmd, static_cast<int>(argv.size()), argv.data(), lens.data());
  if (len < 0 || cmd == nullptr) return std::nullopt;
  std::string out(cmd, static_cast<std::size_t>(len));
  redisFreeCommand(cmd);
  return out;
}

// Why an I/O step failed: the watchdog's deadline, or the connection itself.
RedisErrc io_failure(const RedisLink& s) {
  return s.timed_out ? RedisErrc::timeout : RedisErrc::connection_lost;
}

asio::awaitable<error_code> open_tcp(std::shared_ptr<RedisLink> s, tcp::socket& socket) {
  const auto& a = s->options.address;
  auto [rec, endpoints] =
      co_await s->resolver.async_resolve(a.host, std::to_string(a.port), kUseTuple);
  if (rec) co_return rec;
  auto [cec, ep] = co_await asio::async_connect(socket, endpoints, kUseTuple);
  co_return cec;
}

// TCP connect, then the TLS handshake with the certificate verified against the host.
asio::awaitable<RedisErrc> open_tls(std::shared_ptr<RedisLink> s) {
  const auto& host = s->options.address.host;
  auto& tls = s->stream.emplace<ssl::stream<tcp::socket>>(s->strand, *s->tls);
  if (const error_code ec = co_await open_tcp(s, tls.next_layer())) {
    record_failure(*s, "cannot connect to " + s->options.address.host + ": " + ec.message());
    co_return s->timed_out ? RedisErrc::timeout : RedisErrc::unavailable;
  }
  error_code addr_ec;
  (void)asio::ip::make_address(host, addr_ec);
  const bool host_is_ip = !addr_ec;
  error_code ec;
  if (!host_is_ip && SSL_set_tlsext_host_name(tls.native_handle(), host.c_str()) != 1) {
    ec = asio::error::invalid_argument;
  }
  if (!ec) tls.set_verify_mode(ssl::verify_peer, ec);
  if (!ec) tls.set_verify_callback(ssl::host_name_verification(host), ec);
  if (!ec) std::tie(ec) = co_await tls.async_handshake(ssl::stream_base::client, kUseTuple);
  if (ec) {
    // A plain server never answers a ClientHello: the usual sign of rediss:// to a port
    // without TLS.
    record_failure(*s, s->timed_out ? "TLS handshake with redis timed out (does the server "
                                      "speak TLS on that port?)"
                                    : "TLS handshake with redis failed: " + ec.message());
    co_return s->timed_out ? RedisErrc::timeout : RedisErrc::tls_error;
  }
  co_return RedisErrc::ok;
}

asio::awaitable<RedisErrc> open_stream(std::shared_ptr<RedisLink> s) {
  const auto& a = s->options.address;
  error_code ec;
  switch (a.transport) {
    case Transport::tls:
      co_return co_await open_tls(s);
    case Transport::tcp:
      ec = co_await open_tcp(s, s->stream.emplace<tcp::socket>(s->strand));
      break;
    case Transport::unix_socket: {
      auto& socket = s->stream.emplace<local_socket>(s->strand);
      std::tie(ec) =
          co_await socket.async_connect(asio::local::stream_protocol::endpoint(a.path), kUseTuple);
      break;
    }
  }
  if (!ec) co_return RedisErrc::ok;
  record_failure(*s, s->timed_out ? "connecting to redis timed out"
                                  : "cannot connect to redis: " + ec.message());
  co_return s->timed_out ? RedisErrc::timeout : RedisErrc::unavailable;
}

// AUTH [user] password; a refusal is auth_failed with the server's words (which never
// hold the password).
asio::awaitable<RedisErrc> authenticate(std::shared_ptr<RedisLink> s) {
  const auto& o = s->options;
  if (o.password.empty()) co_return RedisErrc::ok;
  std::vector<std::string> args = {"AUTH"};
  if (!o.user.empty()) args.push_back(o.user);
  args.push_back(o.password);
  auto reply = co_await round_trip(s, std::move(args));
  if (!reply) co_return static_cast<RedisErrc>(reply.error().value());
  if (reply->is_error()) {
    record_failure(*s, "redis refused AUTH" +
                           (o.user.empty() ? std::string() : " for user \"" + o.user + "\"") +
                           ": " + reply->text);
    co_return RedisErrc::auth_failed;
  }
  co_return RedisErrc::ok;
}

RedisClock::duration backoff_after(const RedisOptions& o, int failures) {
  RedisClock::duration d = o.reconnect_min;
  for (int i = 1; i < failures && d < o.reconnect_max; ++i) d *= 2;
  return std::min<RedisClock::duration>(d, o.reconnect_max);
}

}  // namespace

namespace detail {

// Connects and authenticates within connect_timeout; a failure starts the backoff.
asio::awaitable<error_code> connect(std::shared_ptr<RedisLink> s) {
  RedisErrc result = RedisErrc::ok;
  {
    Watchdog dog(s, RedisClock::now() + s->options.connect_timeout);
    result = co_await open_stream(s);
    if (result == RedisErrc::ok) {
      s->reader.reset(redisReaderCreate());
      if (!s->reader) throw std::bad_alloc();
      result = co_await authenticate(s);
    }
  }
  if (result == RedisErrc::ok) {
    s->connect_failures = 0;
    s->is_connected.store(true, std::memory_order_relaxed);
    co_return error_code{};
  }
  drop_stream(*s);
  start_backoff(*s);
  co_return make_error_code(result);
}

void start_backoff(RedisLink& s) {
  ++s.connect_failures;
  s.next_connect_at = RedisClock::now() + backoff_after(s.options, s.connect_failures);
}

RedisLink::RedisLink(asio::any_io_executor executor, RedisOptions o)
    : strand(asio::make_strand(executor)), options(std::move(o)), resolver(strand) {
  const auto& a = options.address;
  if (a.transport == Transport::unix_socket ? a.path.empty() : (a.host.empty() || a.port == 0)) {
    throw std::invalid_argument("redis connection: no host and port, or no socket path");
  }
  using std::chrono::milliseconds;
  if (options.connect_timeout <= milliseconds::zero() ||
      options.command_timeout <= milliseconds::zero() ||
      options.reconnect_min < milliseconds::zero() ||
      options.reconnect_max < options.reconnect_min) {
    throw std::invalid_argument(
        "redis connection: timeouts must be positive and reconnect_max at least reconnect_min");
  }
  if (a.transport != Transport::tls) return;
  auto& ctx = tls.emplace(ssl::context::tls_client);
  error_code ec;
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_compression |
                      ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1,
                  ec);
  if (!ec) ctx.set_default_verify_paths(ec);
  if (!ec && !options.ca_file.empty()) ctx.load_verify_file(options.ca_file, ec);
  if (ec) {
    throw std::runtime_error("redis TLS: cannot load CA file " + options.ca_file + ": " +
                             ec.message());
  }
  ctx.set_verify_mode(ssl::verify_peer);
}

std::string describe(const RedisOptions& o) {
  const auto& a = o.address;
  switch (a.transport) {
    case Transport::unix_socket:
      return "unix://" + a.path;
    case Transport::tls:
    case Transport::tcp:
      break;
  }
  const std::string host = a.host.find(':') != std::string::npos ? "[" + a.host + "]" : a.host;
  return std::string(a.transport == Transport::tls ? "rediss://" : "redis://") + host + ":" +
         std::to_string(a.port);
}

asio::awaitable<error_code> send_command(std::shared_ptr<RedisLink> s,
                                         std::vector<std::string> args) {
  const auto wire = format_command(args);
  if (!wire || args.empty()) co_return make_error_code(RedisErrc::protocol_error);
  auto [wec, written] = co_await write_all(*s, *wire);
  if (wec) {
    record_failure(*s, "redis " + std::string(s->timed_out ? "timed out" : "failed") +
                           " while writing a command: " + wec.message());
    co_return make_error_code(io_failure(*s));
  }
  co_return error_code{};
}

asio::awaitable<boost::system::result<RedisReply>> read_reply(std::shared_ptr<RedisLink> s) {
  std::array<char, 16 * 1024> buf;
  for (;;) {
    void* raw = nullptr;
    if (redisReaderGetReply(s->reader.get(), &raw) != REDIS_OK) {
      record_failure(*s, std::string("redis reply is not RESP: ") + s->reader->errstr);
      co_return make_error_code(RedisErrc::protocol_error);
    }
    if (raw != nullptr) {
      RedisReply reply = to_reply(static_cast<const redisReply*>(raw));
      freeReplyObject(raw);
      co_return reply;
    }
    auto [rec, n] = co_await read_some(*s, asio::buffer(buf));
    if (rec) {
      record_failure(*s, s->timed_out ? "redis did not answer within the deadline"
                                      : "redis connection lost: " + rec.message());
      co_return make_error_code(io_failure(*s));
    }
    if (redisReaderFeed(s->reader.get(), buf.data(), n) != REDIS_OK) {
      co_return make_error_code(RedisErrc::protocol_error);
    }
  }
}

asio::awaitable<boost::system::result<RedisReply>> round_trip(std::shared_ptr<RedisLink> s,
                                                              std::vector<std::string> args) {
  if (const error_code ec = co_await send_command(s, std::move(args))) co_return ec;
  co_return co_await read_reply(s);
}

}  // namespace detail

}  // namespace sproxy::upstream
