#include "upstream/http_upstream.hpp"

#include <openssl/ssl.h>
#include <sys/socket.h>

#include <cerrno>

#include <algorithm>
#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cctype>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <list>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sproxy::upstream {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Executor = asio::any_io_executor;
using Request = http::request<http::string_body>;
using PlainStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
constexpr std::string_view kUserAgent = "secrets-proxy";
constexpr std::size_t kMaxResponseHeaderBytes = 64 * 1024;
constexpr std::size_t kMaxCredentialFileBytes = 64 * 1024;
constexpr std::string_view kAuthEmailHeader = "X-Auth-Email";
constexpr std::string_view kAuthKeyHeader = "X-Auth-Key";

std::string_view trim(std::string_view s) {
  const auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// Visible ASCII only: anything else could split or corrupt the header it is put in.
bool is_header_safe(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f;
  });
}

bool is_ip_literal(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

std::optional<http::verb> to_verb(Method m) {
  switch (m) {
    case Method::get:
      return http::verb::get;
    case Method::post:
      return http::verb::post;
    case Method::patch:
      return http::verb::patch;
    case Method::put:
      return http::verb::put;
    case Method::del:
      return http::verb::delete_;
    case Method::head:
      return http::verb::head;
    case Method::other:
      return std::nullopt;
  }
  return std::nullopt;
}

// base path + target without its leading /client/v4; nullopt for a target this client
// refuses to put on the wire.
std::optional<std::string> upstream_target(const std::string& base_path, std::string_view target) {
  if (!target.starts_with(kApiPrefix)) return std::nullopt;
  std::string_view rest = target.substr(kApiPrefix.size());
  if (!rest.empty() && rest.front() != '/' && rest.front() != '?') return std::nullopt;
  // The server's parser already refuses these; checked again so that no caller can
  // smuggle a second request line or header through the target.
  for (char c : rest) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) return std::nullopt;
  }
  std::string out;
  out.reserve(base_path.size() + rest.size());
  out += base_path;
  out += rest;
  return out;
}

CallResult fail(UpstreamErrc e) {
  return CallResult(boost::system::in_place_error, make_error_code(e));
}

// Maps a failed write or read on an established connection.
UpstreamErrc classify_io_error(const error_code& ec) {
  if (ec == beast::error::timeout) return UpstreamErrc::timeout;
  if (ec == http::error::body_limit || ec == http::error::header_limit ||
      ec == http::error::buffer_overflow) {
    return UpstreamErrc::bad_response;
  }
  if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
      ec == ssl::error::stream_truncated) {
    return UpstreamErrc::connection_reset;
  }
  // Every other HTTP parser error means the peer did not speak HTTP/1.1.
  if (ec.category() == make_error_code(http::error::bad_version).category()) {
    return UpstreamErrc::bad_response;
  }
  if (ec.category() == asio::error::get_ssl_category()) return UpstreamErrc::tls_error;
  return UpstreamErrc::connection_reset;
}

// ---------------------------------------------------------------------------------------
// Connections

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
  virtual asio::awaitable<ExchangeOutcome> exchange(std::shared_ptr<const Request> request,
                                                    TimePoint deadline, bool head_request,
                                                    std::size_t max_body_bytes) = 0;
  virtual bool is_open() const = 0;
  // True when an idle connection has nothing to read: no EOF, no reset, no stray bytes
  // (a TLS close_notify counts as bytes). A non-blocking peek; never consumes data.
  virtual bool idle_and_quiet() = 0;
  TimePoint idle_since{};
};

template <class Stream>
class StreamConnection final : public Connection {
 public:
  explicit StreamConnection(Stream stream) : stream_(std::move(stream)) {}

  asio::awaitable<ExchangeOutcome> exchange(std::shared_ptr<const Request> request,
                                            TimePoint deadline, bool head_request,
                                            std::size_t max_body_bytes) override {
    ExchangeOutcome out;
    auto& tcp_layer = beast::get_lowest_layer(stream_);
    tcp_layer.expires_at(deadline);
    auto [write_ec, written] = co_await http::async_write(stream_, *request, kUseTuple);
    (void)written;
    if (write_ec) {
      out.error = classify_io_error(write_ec);
      out.nothing_received = true;
      out.write_failed = true;
      co_return out;
    }
    http::response_parser<http::string_body> parser;
    parser.header_limit(kMaxResponseHeaderBytes);
    parser.body_limit(max_body_bytes);
    if (head_request) parser.skip(true);
    auto [read_ec, read] = co_await http::async_read(stream_, buffer_, parser, kUseTuple);
    (void)read;
    if (read_ec) {
      out.error = classify_io_error(read_ec);
      out.nothing_received = !parser.got_some() && buffer_.size() == 0;
      co_return out;
    }
    tcp_layer.expires_never();
    auto& res = parser.get();
    // Bytes beyond the response mean the peer and we disagree about framing: do not
    // risk reading them as the next response.
    out.reusable = res.keep_alive() && !res.need_eof() && buffer_.size() == 0;
    out.response.status = res.result_int();
    const auto header = [&res](std::string_view name) -> std::optional<std::string> {
      auto it = res.find(name);
      if (it == res.end()) return std::nullopt;
      return std::string(it->value());
    };
    out.response.retry_after = header("Retry-After");
    out.response.ratelimit = header("Ratelimit");
    out.response.ratelimit_policy = header("Ratelimit-Policy");
    out.response.body = std::move(res.body());
    co_return out;
  }

  bool is_open() const override { return beast::get_lowest_layer(stream_).socket().is_open(); }
  bool idle_and_quiet() override {
    auto& socket = beast::get_lowest_layer(stream_).socket();
    if (!socket.is_open() || buffer_.size() != 0) return false;
    char byte;
    const ssize_t n = ::recv(socket.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

 private:
  Stream stream_;
  beast::flat_buffer buffer_;
};

}  // namespace

// ---------------------------------------------------------------------------------------
// Settings shared by the HttpUpstream and its pools

struct detail::HttpUpstreamSettings {
  HttpUpstreamOptions options;
  std::string authorization;  // "Bearer <token>"; empty with an email + global API key
  std::string host_header;
  std::string described;
  bool host_is_ip = false;
  std::string port_text;
  // https only. Mutable: each connection creates its SSL object from it, which OpenSSL
  // allows concurrently on one SSL_CTX.
  mutable std::optional<ssl::context> tls;
  std::uint64_t id = 0;  // never reused: keys this upstream's pool in each context
  std::atomic<bool> retired{false};
};

namespace {

using Settings = detail::HttpUpstreamSettings;

std::atomic<std::uint64_t> g_next_upstream_id{1};

// Resolves the host with a hard deadline. getaddrinfo cannot be interrupted, so the
// lookup completes into shared state that the caller stops waiting for at the deadline.
asio::awaitable<boost::system::result<std::vector<tcp::endpoint>>> resolve(
    Executor ex, std::shared_ptr<const Settings> s, TimePoint deadline) {
  using Endpoints = std::vector<tcp::endpoint>;
  const auto& url = s->options.base_url;
  if (s->host_is_ip) {
    co_return Endpoints{tcp::endpoint(asio::ip::make_address(url.host), url.port)};
  }
  struct Lookup {
    explicit Lookup(const Executor& e) : resolver(e), timer(e) {}
    tcp::resolver resolver;
    asio::steady_timer timer;
    std::optional<error_code> ec;
    Endpoints endpoints;
  };
  auto lookup = std::make_shared<Lookup>(ex);
  lookup->timer.expires_at(deadline);
  lookup->resolver.async_resolve(
      url.host, s->port_text, tcp::resolver::numeric_service,
      [lookup](error_code ec, const tcp::resolver::results_type& results) {
        lookup->ec = ec;
        for (const auto& entry : results) lookup->endpoints.push_back(entry.endpoint());
        lookup->timer.cancel();
      });
  co_await lookup->timer.async_wait(kUseTuple);
  if (!lookup->ec) {
    lookup->resolver.cancel();
    co_return make_error_code(UpstreamErrc::timeout);
  }
  if (*lookup->ec || lookup->endpoints.empty())
    co_return make_error_code(UpstreamErrc::unreachable);
  co_return std::move(lookup->endpoints);
}

asio::awaitable<boost::system::result<std::shared_ptr<Connection>>> open_connection(
    Executor ex, std::shared_ptr<const Settings> s, TimePoint connect_deadline) {
  auto endpoints = co_await resolve(ex, s, connect_deadline);
  if (!endpoints) co_return endpoints.error();

  PlainStream stream(ex);
  stream.expires_at(connect_deadline);
  auto [connect_ec, endpoint] = co_await stream.async_connect(*endpoints, kUseTuple);
  (void)endpoint;
  if (connect_ec) {
    co_return make_error_code(connect_ec == beast::error::timeout ? UpstreamErrc::timeout
                                                                  : UpstreamErrc::unreachable);
  }
  error_code ignored;
  stream.socket().set_option(tcp::no_delay(true), ignored);
  stream.expires_never();
  if (!s->tls) {
    co_return std::make_shared<StreamConnection<PlainStream>>(std::move(stream));
  }

  TlsStream tls(std::move(stream), *s->tls);
  const std::string& host = s->options.base_url.host;
  // SNI carries host names only (RFC 6066), never IP literals.
  if (!s->host_is_ip && SSL_set_tlsext_host_name(tls.native_handle(), host.c_str()) != 1) {
    co_return make_error_code(UpstreamErrc::tls_error);
  }
  error_code verify_ec;
  tls.set_verify_mode(ssl::verify_peer, verify_ec);
  if (!verify_ec) tls.set_verify_callback(ssl::host_name_verification(host), verify_ec);
  if (verify_ec) co_return make_error_code(UpstreamErrc::tls_error);
  beast::get_lowest_layer(tls).expires_at(connect_deadline);
  auto [handshake_ec] = co_await tls.async_handshake(ssl::stream_base::client, kUseTuple);
  if (handshake_ec) {
    co_return make_error_code(handshake_ec == beast::error::timeout ? UpstreamErrc::timeout
                                                                    : UpstreamErrc::tls_error);
  }
  beast::get_lowest_layer(tls).expires_never();
  co_return std::make_shared<StreamConnection<TlsStream>>(std::move(tls));
}

// ---------------------------------------------------------------------------------------
// The pool of one HttpUpstream on one execution context. Touched only from that
// context's thread (see the header), hence no lock.

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
  explicit ConnectionPool(std::shared_ptr<const Settings> settings)
      : settings_(std::move(settings)) {}

  const std::shared_ptr<const Settings>& settings() const { return settings_; }

  static asio::awaitable<boost::system::result<Lease>> acquire(std::shared_ptr<ConnectionPool> self,
                                                               Executor ex, TimePoint deadline) {
    const auto& opts = self->settings_->options;
    self->drop_expired_idle(Clock::now());
    if (!self->idle_.empty()) {
      // Most recently used first: it is the least likely to have been closed by the
      // peer, and the others get to age out.
      auto conn = std::move(self->idle_.back());
      self->idle_.pop_back();
      co_return Lease(self, std::move(conn));
    }
    if (self->slots_in_use_ < opts.max_connections) {
      ++self->slots_in_use_;
      co_return Lease(self, nullptr);
    }
    if (self->waiters_.size() >= opts.max_waiters) {
      co_return make_error_code(UpstreamErrc::overloaded);
    }
    Waiter waiter(ex, self);
    waiter.timer.expires_at(deadline);
    waiter.position = self->waiters_.insert(self->waiters_.end(), &waiter);
    waiter.queued = true;
    co_await waiter.timer.async_wait(kUseTuple);
    // A grant wins over an expired timer: the slot is ours either way.
    if (waiter.grant) {
      auto conn = std::move(*waiter.grant);
      waiter.grant.reset();
      co_return Lease(self, std::move(conn));
    }
    co_return make_error_code(UpstreamErrc::overloaded);
  }

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
    asio::steady_timer timer;
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

  std::shared_ptr<const Settings> settings_;
  std::size_t slots_in_use_ = 0;  // idle + leased connections, and slots being connected
  std::deque<std::shared_ptr<Connection>> idle_;  // oldest first
  std::list<Waiter*> waiters_;                    // oldest first
  bool shut_down_ = false;
};

Lease::~Lease() {
  conn_.reset();
  if (pool_) pool_->give_back(nullptr);
}

void Lease::recycle() {
  if (!pool_) return;
  auto pool = std::move(pool_);
  pool->give_back(std::move(conn_));
}

// One per execution context: the pools of every HttpUpstream used on it. Being a
// service ties the pools' sockets to the context's lifetime: they are closed in the
// context's shutdown phase, before any of its services is destroyed.
class PoolRegistry final : public asio::execution_context::service {
 public:
  static inline asio::execution_context::id id;

  explicit PoolRegistry(asio::execution_context& ctx) : service(ctx) {}

  std::shared_ptr<ConnectionPool> pool_for(const std::shared_ptr<const Settings>& s) {
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

std::shared_ptr<Request> build_request(const Settings& s, http::verb verb, std::string target,
                                       std::string body) {
  auto req = std::make_shared<Request>(verb, std::move(target), 11);
  req->set(http::field::host, s.host_header);
  req->set(http::field::user_agent, kUserAgent);
  req->set(http::field::accept, "application/json");
  if (!s.authorization.empty()) {
    req->set(http::field::authorization, s.authorization);
  } else {
    req->set(kAuthEmailHeader, s.options.email);
    req->set(kAuthKeyHeader, s.options.api_key);
  }
  if (!body.empty()) {
    req->set(http::field::content_type, "application/json");
    req->body() = std::move(body);
  }
  req->keep_alive(true);
  req->prepare_payload();
  return req;
}

// One configured credential value, e.g. the API token: upstream.<key>_env names an
// environment variable, upstream.<key>_file a file. Errors name those, never a value.
struct CredentialSource {
  std::string_view key;  // "token", "email" or "api_key"
  const std::string& env;
  const std::string& file;
  bool configured() const { return !env.empty() || !file.empty(); }
};

std::string read_credential_file(const CredentialSource& src, const std::string& env_note) {
  const std::string key_name = "upstream." + std::string(src.key) + "_file";
  std::ifstream in(src.file, std::ios::binary);
  if (!in) {
    throw std::runtime_error("upstream credential missing: cannot read " + key_name + " " +
                             src.file + env_note);
  }
  std::string text(kMaxCredentialFileBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > kMaxCredentialFileBytes) {
    throw std::runtime_error(key_name + " " + src.file + " is larger than 64 KiB");
  }
  std::string value(trim(text));
  if (value.empty()) {
    throw std::runtime_error("upstream credential missing: " + key_name + " " + src.file +
                             " is empty" + env_note);
  }
  return value;
}

// The environment variable (if set and non-empty) wins over the file; trimmed.
std::string read_credential(const CredentialSource& src) {
  const std::string env_key = "upstream." + std::string(src.key) + "_env";
  std::string env_note;
  if (!src.env.empty()) {
    const char* value = std::getenv(src.env.c_str());
    std::string text(value ? trim(value) : std::string_view{});
    if (!text.empty()) return text;
    env_note = " (and environment variable " + src.env + " from " + env_key +
               " is not set or empty)";
    if (src.file.empty()) {
      throw std::runtime_error("upstream credential missing: environment variable " + src.env +
                               " (" + env_key + ") is not set or empty, and no upstream." +
                               std::string(src.key) + "_file is configured");
    }
  }
  return read_credential_file(src, env_note);
}

// Exactly one credential kind: the loader refuses the rest too, but a Config may be
// built in code.
void read_upstream_credential(const config::UpstreamConfig& cfg, HttpUpstreamOptions& out) {
  const CredentialSource token{"token", cfg.token_env, cfg.token_file};
  const CredentialSource email{"email", cfg.email_env, cfg.email_file};
  const CredentialSource api_key{"api_key", cfg.api_key_env, cfg.api_key_file};
  if (token.configured() && (email.configured() || api_key.configured())) {
    throw std::runtime_error(
        "upstream credential: configure an API token (upstream.token_env / upstream.token_file) "
        "or an email and global API key (upstream.email_env / upstream.email_file with "
        "upstream.api_key_env / upstream.api_key_file), not both");
  }
  if (token.configured()) {
    out.token = read_credential(token);
    return;
  }
  if (email.configured() != api_key.configured()) {
    throw std::runtime_error(email.configured()
                                 ? "upstream credential missing: upstream.email_env / "
                                   "upstream.email_file needs upstream.api_key_env or "
                                   "upstream.api_key_file"
                                 : "upstream credential missing: upstream.api_key_env / "
                                   "upstream.api_key_file needs upstream.email_env or "
                                   "upstream.email_file");
  }
  if (email.configured()) {
    out.email = read_credential(email);
    out.api_key = read_credential(api_key);
    return;
  }
  throw std::runtime_error(
      "upstream credential missing: upstream.kind \"http\" needs upstream.token_env (the name "
      "of an environment variable holding the API token) or upstream.token_file, or an email "
      "and global API key (upstream.email_env / upstream.email_file with upstream.api_key_env "
      "/ upstream.api_key_file)");
}

[[noreturn]] void bad_url(std::string_view url, std::string_view why, bool echo_url = true) {
  std::string message = "upstream.base_url";
  if (echo_url) {
    message += " \"";
    message += url;
    message += '"';
  }
  message += ": ";
  message += why;
  throw std::runtime_error(message);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// BaseUrl

std::string BaseUrl::host_header() const {
  std::string out = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  const std::uint16_t default_port = scheme == Scheme::https ? 443 : 80;
  if (port != default_port) out += ":" + std::to_string(port);
  return out;
}

std::string BaseUrl::to_string() const {
  return (scheme == Scheme::https ? "https://" : "http://") + host_header() + path;
}

BaseUrl parse_base_url(std::string_view url) {
  BaseUrl out;
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) bad_url(url, "expected http://host[:port]/client/v4");
  std::string scheme(url.substr(0, scheme_end));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (scheme == "http") {
    out.scheme = BaseUrl::Scheme::http;
    out.port = 80;
  } else if (scheme == "https") {
    out.scheme = BaseUrl::Scheme::https;
    out.port = 443;
  } else {
    bad_url(url, "scheme must be http or https");
  }
  std::string_view rest = url.substr(scheme_end + 3);
  const auto authority_end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, authority_end);
  std::string_view path =
      authority_end == std::string_view::npos ? std::string_view{} : rest.substr(authority_end);
  if (authority.find('@') != std::string_view::npos) {
    bad_url(url,
            "must not contain user information (configure the credential with "
            "upstream.token_env / upstream.token_file, or upstream.email_* with "
            "upstream.api_key_*)",
            /*echo_url=*/false);
  }

  std::string_view host;
  std::string_view port_text;
  if (authority.starts_with('[')) {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) bad_url(url, "unterminated IPv6 address");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') bad_url(url, "unexpected characters after the IPv6 address");
      port_text = after.substr(1);
      if (port_text.empty()) bad_url(url, "empty port");
    }
    error_code ec;
    asio::ip::make_address_v6(std::string(host), ec);
    if (ec) bad_url(url, "invalid IPv6 address");
  } else {
    const auto colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty()) bad_url(url, "empty port");
    }
    const bool host_chars_ok = std::all_of(host.begin(), host.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '.' || c == '_';
    });
    if (!host_chars_ok) bad_url(url, "invalid host name");
  }
  if (host.empty()) bad_url(url, "missing host");
  out.host.assign(host);
  std::transform(out.host.begin(), out.host.end(), out.host.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });

  if (!port_text.empty()) {
    unsigned long port = 0;
    if (port_text.size() > 5 || !std::all_of(port_text.begin(), port_text.end(),
                                             [](char c) { return c >= '0' && c <= '9'; })) {
      bad_url(url, "port must be a number from 1 to 65535");
    }
    port = std::stoul(std::string(port_text));
    if (port == 0 || port > 65535) bad_url(url, "port must be a number from 1 to 65535");
    out.port = static_cast<std::uint16_t>(port);
  }

  if (path.find_first_of("?#") != std::string_view::npos) {
    bad_url(url, "must not have a query or fragment");
  }
  for (char c : path) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) bad_url(url, "path contains characters that need encoding");
  }
  if (path.ends_with('/')) path.remove_suffix(1);
  if (!path.ends_with(kApiPrefix)) {
    bad_url(url, "path must end with /client/v4 (e.g. http://127.0.0.1:9000/client/v4)");
  }
  out.path.assign(path);
  return out;
}

HttpUpstreamOptions http_upstream_options(const config::UpstreamConfig& cfg) {
  HttpUpstreamOptions out;
  out.base_url = parse_base_url(cfg.base_url);
  read_upstream_credential(cfg, out);
  out.connect_timeout = std::chrono::milliseconds(cfg.connect_timeout_ms);
  out.request_timeout = std::chrono::milliseconds(cfg.request_timeout_ms);
  out.max_connections = cfg.max_connections;
  out.tls_ca_file = cfg.tls_ca_file;
  return out;
}

// ---------------------------------------------------------------------------------------
// HttpUpstream

HttpUpstream::HttpUpstream(HttpUpstreamOptions options)
    : settings_(std::make_shared<detail::HttpUpstreamSettings>()) {
  auto& s = *settings_;
  const bool key_pair = !options.email.empty() || !options.api_key.empty();
  if (key_pair && !options.token.empty()) {
    throw std::runtime_error(
        "upstream: configure an API token or an email and global API key, not both");
  }
  if (key_pair) {
    if (options.email.empty()) throw std::runtime_error("upstream: the account email is empty");
    if (options.api_key.empty()) throw std::runtime_error("upstream: the global API key is empty");
    if (!is_header_safe(options.email)) {
      throw std::runtime_error(
          "upstream: the account email contains characters not allowed in an HTTP header");
    }
    if (!is_header_safe(options.api_key)) {
      throw std::runtime_error(
          "upstream: the global API key contains characters not allowed in an HTTP header");
    }
  } else {
    if (options.token.empty()) throw std::runtime_error("upstream: the API token is empty");
    if (!is_header_safe(options.token)) {
      throw std::runtime_error(
          "upstream: the API token contains characters not allowed in an HTTP header");
    }
  }
  if (options.max_connections == 0) {
    throw std::runtime_error("upstream.max_connections must be at least 1");
  }
  if (options.connect_timeout.count() <= 0 || options.request_timeout.count() <= 0) {
    throw std::runtime_error(
        "upstream.connect_timeout_ms and upstream.request_timeout_ms must be positive");
  }
  s.options = std::move(options);
  const BaseUrl& url = s.options.base_url;
  if (!key_pair) s.authorization = "Bearer " + s.options.token;
  s.host_header = url.host_header();
  s.described = url.to_string();
  s.host_is_ip = is_ip_literal(url.host);
  s.port_text = std::to_string(url.port);
  s.id = g_next_upstream_id.fetch_add(1, std::memory_order_relaxed);

  if (url.scheme == BaseUrl::Scheme::https) {
    auto& ctx = s.tls.emplace(ssl::context::tls_client);
    error_code ec;
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_compression, ec);
    if (SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION) != 1) {
      throw std::runtime_error("upstream TLS: cannot require TLS 1.2 or later");
    }
    ctx.set_default_verify_paths(ec);
    if (ec) throw std::runtime_error("upstream TLS: cannot load the system trust store");
    if (!s.options.tls_ca_file.empty()) {
      ctx.load_verify_file(s.options.tls_ca_file, ec);
      if (ec) {
        throw std::runtime_error("upstream TLS: cannot load CA file " + s.options.tls_ca_file +
                                 ": " + ec.message());
      }
    }
    ctx.set_verify_mode(ssl::verify_peer);
  }
}

HttpUpstream::~HttpUpstream() {
  // Pools still hold idle connections in the contexts that used this upstream; each
  // context drops them at its next call or at its shutdown, on its own thread.
  settings_->retired.store(true, std::memory_order_relaxed);
}

std::string HttpUpstream::describe() const { return settings_->described; }

boost::asio::awaitable<std::size_t> HttpUpstream::preconnect(std::size_t connections) {
  std::shared_ptr<const Settings> s = settings_;
  const auto& opts = s->options;
  Executor ex = co_await asio::this_coro::executor;
  auto& ctx = asio::query(ex, asio::execution::context);
  auto pool = asio::use_service<PoolRegistry>(ctx).pool_for(s);
  // Every lease is held until all are open: each takes an idle connection or a slot of
  // its own, so the pool ends up with that many idle connections.
  std::vector<Lease> leases;
  const std::size_t wanted = std::min(connections, opts.max_connections);
  while (leases.size() < wanted) {
    const TimePoint deadline = Clock::now() + opts.connect_timeout;
    auto lease = co_await ConnectionPool::acquire(pool, ex, deadline);
    if (!lease) break;
    if (lease->connection() == nullptr || !lease->connection()->idle_and_quiet()) {
      lease->discard_connection();
      auto opened = co_await open_connection(ex, s, deadline);
      if (!opened) break;
      lease->set_connection(std::move(*opened));
    }
    leases.push_back(std::move(*lease));
  }
  for (auto& lease : leases) lease.recycle();
  co_return leases.size();
}

boost::asio::awaitable<CallResult> HttpUpstream::call(ApiRequest request) {
  std::shared_ptr<const Settings> s = settings_;
  const auto& opts = s->options;
  const TimePoint deadline = Clock::now() + opts.request_timeout;

  const auto verb = to_verb(request.method);
  auto target = upstream_target(opts.base_url.path, request.target);
  if (!verb || !target) co_return fail(UpstreamErrc::bad_response);
  const bool head_request = *verb == http::verb::head;
  auto req = build_request(*s, *verb, std::move(*target), std::move(request.body));

  Executor ex = co_await asio::this_coro::executor;
  auto& ctx = asio::query(ex, asio::execution::context);
  auto pool = asio::use_service<PoolRegistry>(ctx).pool_for(s);
  auto lease = co_await ConnectionPool::acquire(std::move(pool), ex, deadline);
  if (!lease) co_return CallResult(boost::system::in_place_error, lease.error());

  // Writes change state: one is sent again only when it provably never reached the
  // upstream. Reads are idempotent.
  const bool idempotent = *verb == http::verb::get || *verb == http::verb::head;
  // At most two attempts: the second only when a reused keep-alive connection turned
  // out to be closed before any response byte arrived (the peer closed it while idle).
  for (int attempt = 0; attempt < 2; ++attempt) {
    // An idle connection the peer already closed is dropped before it carries anything.
    if (lease->connection() != nullptr && !lease->connection()->idle_and_quiet()) {
      lease->discard_connection();
    }
    const bool reused = lease->connection() != nullptr;
    if (!reused) {
      const TimePoint connect_deadline = std::min(deadline, Clock::now() + opts.connect_timeout);
      auto opened = co_await open_connection(ex, s, connect_deadline);
      if (!opened) co_return CallResult(boost::system::in_place_error, opened.error());
      lease->set_connection(std::move(*opened));
    }
    auto conn = lease->connection();
    auto out = co_await conn->exchange(req, deadline, head_request, opts.max_response_bytes);
    if (out.error == UpstreamErrc::ok) {
      if (out.reusable) lease->recycle();
      co_return std::move(out.response);
    }
    lease->discard_connection();
    const bool stale_keep_alive =
        reused && out.nothing_received && out.error == UpstreamErrc::connection_reset;
    if (!stale_keep_alive || !(idempotent || out.write_failed)) co_return fail(out.error);
  }
  co_return fail(UpstreamErrc::connection_reset);
}

}  // namespace sproxy::upstream
