// sproxy_loadgen: a constant-rate (open-loop) HTTP/1.1 load generator, and a counting
// HTTP relay, for the load benchmark (bench/load/run.sh).
//
// Load mode:
//   sproxy_loadgen --url http://127.0.0.1:8787 [--target PATH]... [--targets FILE]
//                  [-H 'Name: value']... [--connections N] [--rate R] [--duration S]
//                  [--max-requests M] [--timeout-ms T] [--label TEXT] [--warm PATH]
//                  [--stampede]
//
//   Request i (0-based) is scheduled at t0 + i / R and is sent on connection i mod N, so
//   the R requests per second are spread evenly over the N keep-alive connections. Its
//   latency is measured from that scheduled time, not from when it was actually written:
//   a request that had to wait for a slow answer on its connection carries the wait (no
//   coordinated omission). Targets are used in order, cycling. --rate 0 sends each
//   connection's next request as soon as its previous answer is in (closed loop).
//   Scheduling stops at --duration seconds or --max-requests, whichever comes first; the
//   run is cut --timeout-ms after the last scheduled send at the latest.
//   Prints one JSON object: achieved requests/s, latency percentiles (p50, p90, p99,
//   p99.9, max) from the scheduled time, service time from the actual send, how late
//   sends were, counts per status and per X-Cache value, errors, bytes per response.
//
//   --warm PATH: every connection first sends one GET PATH (with the -H headers) and
//   reads its answer before the first measured request is scheduled, so that the server
//   has accepted every connection and is serving it (not counted in the results).
//
//   --stampede: every connection sends exactly one request, all at once as soon as every
//   connection is open (and warm). Each request is timed on its own: from just before
//   its write to the kernel's receive timestamp (SO_TIMESTAMPNS) of the first byte of its
//   answer, so neither the time this one thread takes to write the other requests nor
//   the time it takes to read the other answers is counted. `service_us` then holds the
//   same span ending when this process got to the answer, and `send_spread_us` how long
//   writing all requests took. --rate, --duration and --max-requests are ignored.
//
//   Pacing reads the clock; no kernel timer is armed per request. While the next send is
//   due within 500 us the generator polls its sockets without sleeping, so at the rates
//   of the load benchmark it keeps its core busy and an answer never has to wake it up;
//   further ahead it sleeps until shortly before the send. Each request costs it one
//   send and usually one recv: it sustains over 200k req/s on one core against nginx
//   `return 200`, so that its own queue does not set the latencies it reports.
//
//   --busy-poll: the generator never sleeps, also in the closed loop and --stampede (one
//   core at 100%); for separating a server's own cost from the cost of waking an idle
//   client on the other core.
//
//   A targets file holds one request a line: `METHOD PATH [BODY]` (BODY is the rest of
//   the line, sent as application/json); empty lines and lines starting with # are
//   skipped. The same file drives bench/load/targets.lua for wrk.
//
// Relay mode:
//   sproxy_loadgen --relay --listen 127.0.0.1:0 --upstream 127.0.0.1:9000
//
//   Forwards HTTP/1.1 requests one by one to the upstream (one upstream keep-alive
//   connection per client connection) and counts them, in total, per method and per
//   target, and times them (first request, last answer, longest upstream round trip, for
//   lining up with a --stampede run). It answers `GET /__relay/stats` itself with those
//   counts as JSON and
//   `POST /__relay/reset` by zeroing them. It prints `relay listening on http://ADDR:PORT`
//   once listening and runs until SIGINT or SIGTERM.
//
// Both modes are single-threaded; pin them with taskset. Loopback use only. Load mode
// runs on plain non-blocking sockets and one epoll set (--stampede and the relay on Asio).
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::nanoseconds;

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
constexpr std::uint64_t kBodyLimit = 64ull * 1024 * 1024;
constexpr std::uint32_t kHeaderLimit = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Command line

struct Options {
  bool relay = false;
  // load mode
  std::string host = "127.0.0.1";
  std::string port = "80";
  std::string host_header;
  std::vector<std::string> targets;  // "METHOD PATH [BODY]"
  std::vector<std::pair<std::string, std::string>> headers;
  std::size_t connections = 64;
  double rate = 1000.0;
  double duration_s = 10.0;
  std::uint64_t max_requests = std::numeric_limits<std::uint64_t>::max();
  int timeout_ms = 10'000;
  std::string label;
  std::string warm_path;
  bool stampede = false;
  bool busy_poll = false;
  // relay mode
  std::string listen = "127.0.0.1:0";
  std::string upstream;
};

[[noreturn]] void usage_error(const std::string& message) {
  throw std::invalid_argument(message + " (see the header of bench/loadgen.cpp)");
}

std::pair<std::string, std::string> split_host_port(const std::string& s) {
  const auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) {
    usage_error("expected HOST:PORT, got \"" + s + "\"");
  }
  std::string host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return {host, s.substr(colon + 1)};
}

void parse_url(const std::string& url, Options& o) {
  constexpr std::string_view kScheme = "http://";
  if (url.rfind(kScheme, 0) != 0) usage_error("--url must start with http://");
  std::string rest = url.substr(kScheme.size());
  const auto slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  o.host_header = authority;
  if (authority.find(':') == std::string::npos || authority.back() == ']') {
    o.host = authority;
    o.port = "80";
  } else {
    std::tie(o.host, o.port) = split_host_port(authority);
  }
  // A path in --url is the default target when no other is given.
  if (slash != std::string::npos && rest.size() > slash + 1) {
    o.targets.push_back("GET " + rest.substr(slash));
  }
}

void read_targets_file(const std::string& path, Options& o) {
  std::ifstream in(path);
  if (!in) usage_error("cannot read targets file " + path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.front() == '#') continue;
    o.targets.push_back(line);
  }
}

double parse_number(const std::string& flag, const std::string& value) {
  try {
    std::size_t used = 0;
    const double v = std::stod(value, &used);
    if (used != value.size() || !std::isfinite(v) || v < 0) throw std::invalid_argument(flag);
    return v;
  } catch (const std::exception&) {
    usage_error(flag + " expects a non-negative number, got \"" + value + "\"");
  }
}

Options parse_options(int argc, char** argv) {
  Options o;
  std::vector<std::string> url_targets;
  bool have_url = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--relay") {
      o.relay = true;
    } else if (arg == "--listen") {
      o.listen = value();
    } else if (arg == "--upstream") {
      o.upstream = value();
    } else if (arg == "--url") {
      Options parsed;
      parse_url(value(), parsed);
      o.host = parsed.host;
      o.port = parsed.port;
      o.host_header = parsed.host_header;
      url_targets = parsed.targets;
      have_url = true;
    } else if (arg == "--target") {
      o.targets.push_back("GET " + value());
    } else if (arg == "--targets") {
      read_targets_file(value(), o);
    } else if (arg == "-H" || arg == "--header") {
      const std::string h = value();
      const auto colon = h.find(':');
      if (colon == std::string::npos || colon == 0) usage_error("-H expects 'Name: value'");
      std::string v = h.substr(colon + 1);
      v.erase(0, v.find_first_not_of(' '));
      o.headers.emplace_back(h.substr(0, colon), v);
    } else if (arg == "--connections" || arg == "-c") {
      o.connections = static_cast<std::size_t>(parse_number(arg, value()));
    } else if (arg == "--rate" || arg == "-R") {
      o.rate = parse_number(arg, value());
    } else if (arg == "--duration" || arg == "-d") {
      o.duration_s = parse_number(arg, value());
    } else if (arg == "--max-requests" || arg == "-n") {
      o.max_requests = static_cast<std::uint64_t>(parse_number(arg, value()));
    } else if (arg == "--timeout-ms") {
      o.timeout_ms = static_cast<int>(parse_number(arg, value()));
    } else if (arg == "--label") {
      o.label = value();
    } else if (arg == "--warm") {
      o.warm_path = value();
      if (o.warm_path.empty() || o.warm_path.front() != '/') usage_error("--warm expects /PATH");
    } else if (arg == "--stampede") {
      o.stampede = true;
    } else if (arg == "--busy-poll") {
      o.busy_poll = true;
    } else if (arg == "--help" || arg == "-h") {
      std::cout << "usage: sproxy_loadgen --url http://HOST:PORT[/PATH] [--target PATH]... "
                   "[--targets FILE] [-H 'K: V']... [--connections N] [--rate R] "
                   "[--duration S] [--max-requests M] [--timeout-ms T] [--label TEXT] "
                   "[--warm PATH] [--stampede] [--busy-poll]\n"
                   "       sproxy_loadgen --relay --listen HOST:PORT --upstream HOST:PORT\n";
      std::exit(0);
    } else {
      usage_error("unknown argument \"" + arg + "\"");
    }
  }
  if (o.relay) {
    if (o.upstream.empty()) usage_error("--relay needs --upstream HOST:PORT");
    return o;
  }
  if (!have_url) usage_error("--url is required");
  if (o.targets.empty()) o.targets = url_targets;
  if (o.targets.empty()) o.targets.push_back("GET /");
  if (o.connections == 0) usage_error("--connections must be at least 1");
  if (o.timeout_ms <= 0) usage_error("--timeout-ms must be positive");
  if (o.stampede) {
    // One request per connection, all at once (closed loop, one round).
    o.rate = 0;
    o.max_requests = o.connections;
    o.duration_s = std::max(o.duration_s, o.timeout_ms / 1000.0 + 1.0);
  }
  return o;
}

// Pre-serializes every target once; the hot loop only writes these bytes.
std::vector<std::string> build_requests(const Options& o) {
  std::vector<std::string> out;
  out.reserve(o.targets.size());
  for (const auto& line : o.targets) {
    std::istringstream in(line);
    std::string method, path;
    in >> method >> path;
    if (method.empty() || path.empty() || path.front() != '/') {
      usage_error("bad target line \"" + line + "\" (expected METHOD /PATH [BODY])");
    }
    std::string body;
    std::getline(in, body);
    body.erase(0, body.find_first_not_of(" \t"));
    http::request<http::string_body> req;
    req.method_string(method);
    req.target(path);
    req.version(11);
    req.set(http::field::host, o.host_header);
    req.set(http::field::user_agent, "sproxy_loadgen");
    for (const auto& [name, value] : o.headers) req.set(name, value);
    if (!body.empty()) {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
    }
    req.keep_alive(true);
    req.prepare_payload();
    std::ostringstream wire;
    wire << req;
    out.push_back(wire.str());
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Load mode

struct Results {
  std::vector<std::uint64_t> latency_ns;  // from the scheduled send time
  std::vector<std::uint64_t> service_ns;  // from the actual send time
  std::vector<std::uint64_t> lag_ns;      // actual send - scheduled send
  std::map<unsigned, std::uint64_t> status;
  std::map<std::string, std::uint64_t> x_cache;
  std::map<std::string, std::uint64_t> errors;
  std::uint64_t issued = 0;
  std::uint64_t header_bytes = 0;
  std::uint64_t body_bytes = 0;
  std::uint64_t connects = 0;
  std::uint64_t warmed = 0;
  Clock::time_point last_done{};
  Clock::time_point first_send = Clock::time_point::max();
  Clock::time_point last_send = Clock::time_point::min();
  // --stampede only, CLOCK_REALTIME ns (comparable with the relay's stats).
  std::int64_t first_send_rt = 0;
  std::int64_t first_answer_rt = 0;
  std::int64_t last_answer_rt = 0;
};

struct LoadRun {
  const Options& opt;
  std::vector<std::string> requests;
  std::string warm_request;
  tcp::resolver::results_type endpoints;
  Results results;
  Clock::time_point t0{};
  Clock::time_point t_end{};
  std::size_t ready = 0;  // connections that finished their first connect attempt
  std::size_t finished = 0;
  std::optional<asio::steady_timer> start_gate;
  std::optional<asio::steady_timer> watchdog;

  explicit LoadRun(const Options& o) : opt(o) {}

  // Paced runs only: when request i is due.
  Clock::time_point scheduled(std::uint64_t i) const {
    return t0 + nanoseconds(static_cast<std::int64_t>(static_cast<double>(i) * 1e9 / opt.rate));
  }

  void error(const std::string& what) { ++results.errors[what]; }
};

asio::awaitable<bool> connect(LoadRun& run, beast::tcp_stream& stream) {
  stream.expires_after(std::chrono::milliseconds(run.opt.timeout_ms));
  auto [ec, ep] = co_await stream.async_connect(run.endpoints, kUseTuple);
  if (ec) {
    run.error(ec == beast::error::timeout ? "connect_timeout" : "connect");
    co_return false;
  }
  stream.socket().set_option(tcp::no_delay(true));
  ++run.results.connects;
  co_return true;
}

void close(beast::tcp_stream& stream) {
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  stream.close();
}

// One unmeasured GET of --warm on a fresh connection: the server has accepted it and
// serves it before the measured requests start.
asio::awaitable<bool> warm(LoadRun& run, beast::tcp_stream& stream, beast::flat_buffer& buffer) {
  stream.expires_after(std::chrono::milliseconds(run.opt.timeout_ms));
  auto [wec, wn] = co_await asio::async_write(stream, asio::buffer(run.warm_request), kUseTuple);
  if (!wec) {
    http::response_parser<http::string_body> parser;
    parser.body_limit(kBodyLimit);
    auto [rec, rn] = co_await http::async_read(stream, buffer, parser, kUseTuple);
    if (!rec && parser.get().keep_alive()) {
      ++run.results.warmed;
      co_return true;
    }
  }
  run.error("warm");
  close(stream);
  buffer.clear();
  co_return false;
}

// Waits until the socket has data, and returns the kernel's receive timestamp of its
// first byte (CLOCK_REALTIME, ns) without consuming it; 0 when there is none.
asio::awaitable<std::int64_t> kernel_rx_time(beast::tcp_stream& stream) {
  auto [ec] = co_await stream.socket().async_wait(tcp::socket::wait_read, kUseTuple);
  if (ec) co_return 0;
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(timespec)) * 2];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  if (::recvmsg(stream.socket().native_handle(), &msg, MSG_PEEK | MSG_DONTWAIT) <= 0) co_return 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
      timespec ts{};
      std::memcpy(&ts, CMSG_DATA(c), sizeof(ts));
      co_return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
    }
  }
  co_return 0;
}

std::int64_t realtime_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// Files one answer in the results. Its latency is measured from the scheduled send time
// unless given (a --stampede request's, from its kernel receive timestamp).
void record_answer(Results& r, Clock::time_point sched, Clock::time_point sent,
                   Clock::time_point done, const http::response<http::string_body>& res,
                   std::uint64_t wire_bytes, std::optional<std::uint64_t> latency_ns = {}) {
  auto span = [](Clock::time_point from, Clock::time_point to) {
    return static_cast<std::uint64_t>(std::max<std::int64_t>((to - from).count(), 0));
  };
  r.latency_ns.push_back(latency_ns ? *latency_ns : span(sched, done));
  r.service_ns.push_back(span(sent, done));
  r.lag_ns.push_back(span(sched, sent));
  ++r.status[res.result_int()];
  if (auto it = res.find("X-Cache"); it != res.end()) ++r.x_cache[std::string(it->value())];
  r.body_bytes += res.body().size();
  r.header_bytes += wire_bytes >= res.body().size() ? wire_bytes - res.body().size() : 0;
  r.last_done = std::max(r.last_done, done);
}

// --stampede: one request per connection, all written as soon as every connection is
// open, each timed from just before its write to the kernel's receive timestamp of the
// first byte of its answer.
asio::awaitable<void> stampede_connection(LoadRun& run) {
  auto ex = co_await asio::this_coro::executor;
  beast::tcp_stream stream(ex);
  beast::flat_buffer buffer;
  const auto& opt = run.opt;
  const auto timeout = std::chrono::milliseconds(opt.timeout_ms);

  bool connected = co_await connect(run, stream);
  if (connected && !opt.warm_path.empty()) connected = co_await warm(run, stream, buffer);
  if (connected) {
    const int on = 1;
    if (::setsockopt(stream.socket().native_handle(), SOL_SOCKET, SO_TIMESTAMPNS, &on,
                     sizeof(on)) != 0) {
      run.error("so_timestampns");
    }
  }
  // Every connection is open (or has failed) before the first request is written.
  if (++run.ready == opt.connections) {
    run.t0 = Clock::now();
    run.start_gate->cancel();
  } else {
    co_await run.start_gate->async_wait(kUseTuple);
  }

  ++run.results.issued;
  if (!connected) connected = co_await connect(run, stream);
  if (connected) {
    auto& r = run.results;
    const auto sent = Clock::now();
    const std::int64_t sent_rt = realtime_ns();
    r.first_send = std::min(r.first_send, sent);
    r.last_send = std::max(r.last_send, sent);
    stream.expires_after(timeout);
    auto [wec, wn] =
        co_await asio::async_write(stream, asio::buffer(run.requests.front()), kUseTuple);
    if (wec) {
      run.error(wec == beast::error::timeout ? "write_timeout" : "write");
    } else {
      const std::int64_t rx_rt = buffer.size() == 0 ? co_await kernel_rx_time(stream) : 0;
      if (rx_rt == 0) run.error("no_kernel_timestamp");
      http::response_parser<http::string_body> parser;
      parser.body_limit(kBodyLimit);
      parser.header_limit(kHeaderLimit);
      auto [rec, rn] = co_await http::async_read(stream, buffer, parser, kUseTuple);
      if (rec) {
        run.error(rec == beast::error::timeout ? "read_timeout" : "read");
      } else {
        if (r.first_send_rt == 0 || sent_rt < r.first_send_rt) r.first_send_rt = sent_rt;
        if (rx_rt != 0 && (r.first_answer_rt == 0 || rx_rt < r.first_answer_rt)) {
          r.first_answer_rt = rx_rt;
        }
        r.last_answer_rt = std::max(r.last_answer_rt, rx_rt);
        std::optional<std::uint64_t> latency;
        if (rx_rt != 0) {
          latency = static_cast<std::uint64_t>(std::max<std::int64_t>(rx_rt - sent_rt, 0));
        }
        record_answer(r, sent, sent, Clock::now(), parser.get(), rn, latency);
      }
    }
    close(stream);
  }
  if (++run.finished == opt.connections) run.watchdog->cancel();
}

// ---------------------------------------------------------------------------------------
// Paced and closed-loop load: one thread, non-blocking sockets, one epoll set, no Asio.
//
// Sends are paced by reading the clock, never by arming a kernel timer. On a VM every
// timerfd_settime or timed sleep costs an exit: with one Asio timer per request the
// generator spent a fifth of its core re-arming the timerfd and ran at 99% CPU at 57k
// req/s, so that its own queue (p50 ~140 us from send to reading the answer, against
// a server that answers in a few) set the latencies it reported. While the next send is
// due within kSpinWindow the loop polls (epoll_wait with a zero timeout); a send further
// ahead sleeps in epoll_pwait2 until kSpinWindow before it (in-flight answers wake it).
// Closed loop (--rate 0) sleeps until an answer comes unless --busy-poll.

constexpr auto kSpinWindow = std::chrono::microseconds(500);
constexpr auto kLongestSleep = std::chrono::milliseconds(50);  // timeouts are checked
constexpr auto kTimeoutScan = std::chrono::milliseconds(1);
constexpr int kMaxEvents = 256;
constexpr std::size_t kRecvChunk = 64 * 1024;

struct PacedConn {
  int fd = -1;
  std::uint64_t next = 0;    // index of the next request this connection sends
  std::uint64_t queued = 0;  // requests due (paced) that it has not sent yet
  bool in_flight = false;
  bool want_write = false;  // EPOLLOUT armed: the request did not fit in the socket at once
  Clock::time_point sched{};
  Clock::time_point sent{};
  const std::string* wire = nullptr;
  std::size_t written = 0;
  std::string in;              // received bytes the parser has not taken yet
  std::uint64_t consumed = 0;  // bytes of the current answer the parser took
  std::optional<http::response_parser<http::string_body>> parser;
};

class PacedLoad {
 public:
  explicit PacedLoad(LoadRun& run) : run_(run), opt_(run.opt), conns_(run.opt.connections) {
    ep_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
    for (std::size_t c = 0; c < conns_.size(); ++c) conns_[c].next = c;
  }
  PacedLoad(const PacedLoad&) = delete;
  PacedLoad& operator=(const PacedLoad&) = delete;
  ~PacedLoad() {
    for (auto& c : conns_) close_conn(c);
    ::close(ep_);
  }

  void run(Clock::time_point hard_limit) {
    for (std::size_t c = 0; c < conns_.size(); ++c) open(c);  // a failure is retried later
    run_.t0 = Clock::now() + std::chrono::milliseconds(5);
    run_.t_end = run_.t0 + nanoseconds(static_cast<std::int64_t>(opt_.duration_s * 1e9));
    auto next_scan = run_.t0;
    std::array<epoll_event, kMaxEvents> events{};
    for (;;) {
      auto now = Clock::now();
      if (now >= hard_limit) {
        run_.error("cut_at_time_limit");
        return;
      }
      if (now >= run_.t0) {
        release_due(now);
        start_sends(now);
      }
      if (finished(now)) return;
      if (now >= next_scan) {
        expire_stalled(now);
        next_scan = now + kTimeoutScan;
      }
      const int n =
          ::epoll_pwait2(ep_, events.data(), kMaxEvents, wait_for(now, hard_limit), nullptr);
      if (n < 0 && errno != EINTR) {
        throw std::runtime_error(std::string("epoll_pwait2: ") + std::strerror(errno));
      }
      for (int e = 0; e < n; ++e) {
        auto& c = conns_[events[e].data.u64];
        if (c.fd < 0) continue;
        if ((events[e].events & EPOLLOUT) && c.want_write) flush(c);
        if (c.fd >= 0 && (events[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) receive(c);
      }
    }
  }

 private:
  // Paced: hands every request whose time has come to its connection (i mod N).
  void release_due(Clock::time_point now) {
    if (opt_.rate <= 0) return;
    while (release_ < opt_.max_requests) {
      const auto at = run_.scheduled(release_);
      if (at >= run_.t_end || at > now) return;
      ++conns_[release_ % conns_.size()].queued;
      ++release_;
    }
  }

  bool releasing_done() const {
    if (opt_.rate <= 0) return true;
    return release_ >= opt_.max_requests || run_.scheduled(release_) >= run_.t_end;
  }

  // Every idle connection with a request due sends it (closed loop: at once, until the
  // duration is over).
  void start_sends(Clock::time_point now) {
    const bool paced = opt_.rate > 0;
    for (auto& c : conns_) {
      while (!c.in_flight &&
             (paced ? c.queued > 0 : now < run_.t_end && c.next < opt_.max_requests)) {
        if (paced) --c.queued;
        const std::uint64_t i = c.next;
        c.next += conns_.size();
        send(c, i, paced ? run_.scheduled(i) : now);
      }
    }
  }

  // Nothing more to send and no answer outstanding.
  bool finished(Clock::time_point now) const {
    if (!releasing_done()) return false;
    const bool closed_loop_open = opt_.rate <= 0 && now < run_.t_end;
    for (const auto& c : conns_) {
      if (c.in_flight || c.queued > 0) return false;
      if (closed_loop_open && c.next < opt_.max_requests) return false;
    }
    return true;
  }

  // The epoll_pwait2 timeout: none while a send is due within kSpinWindow (or with
  // --busy-poll), else until kSpinWindow before it.
  timespec* wait_for(Clock::time_point now, Clock::time_point hard_limit) {
    Clock::time_point wake = std::min(hard_limit, now + kLongestSleep);
    if (now < run_.t0) {
      wake = std::min(wake, run_.t0);
    } else if (opt_.rate > 0) {
      if (!releasing_done()) wake = std::min(wake, run_.scheduled(release_));
    } else {
      wake = std::min(wake, run_.t_end);
    }
    const auto sleep = wake - kSpinWindow - now;
    if (opt_.busy_poll || sleep <= nanoseconds(0)) {
      timeout_ = {0, 0};
    } else {
      const auto ns = std::chrono::duration_cast<nanoseconds>(sleep).count();
      timeout_ = {static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    }
    return &timeout_;
  }

  // Opens conns_[index] (a blocking connect; loopback), sends the --warm request on it
  // if asked, then makes it non-blocking. False on failure (counted).
  bool open(std::size_t index) {
    auto& c = conns_[index];
    const char* failure = "connect";
    for (const auto& entry : run_.endpoints) {
      const auto ep = entry.endpoint();
      const int fd = ::socket(ep.protocol().family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) continue;
      const timeval tv{opt_.timeout_ms / 1000, (opt_.timeout_ms % 1000) * 1000};
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      if (::connect(fd, ep.data(), static_cast<socklen_t>(ep.size())) != 0) {
        if (errno == EINPROGRESS || errno == ETIMEDOUT) failure = "connect_timeout";
        ::close(fd);
        continue;
      }
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      ++run_.results.connects;
      if (!run_.warm_request.empty() && !warm_blocking(fd)) {
        run_.error("warm");
        ::close(fd);
        return false;
      }
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = index;
      if (::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) {
        run_.error("epoll_ctl");
        ::close(fd);
        return false;
      }
      c.fd = fd;
      c.in.clear();
      return true;
    }
    run_.error(failure);
    return false;
  }

  // The --warm request on a fresh blocking socket: written, and its keep-alive answer read.
  bool warm_blocking(int fd) {
    const std::string& wire = run_.warm_request;
    for (std::size_t done = 0; done < wire.size();) {
      const ssize_t n = ::send(fd, wire.data() + done, wire.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return false;
      done += static_cast<std::size_t>(n);
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(kBodyLimit);
    parser.eager(true);
    std::string in;
    while (!parser.is_done()) {
      char buf[4096];
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return false;
      in.append(buf, static_cast<std::size_t>(n));
      beast::error_code ec;
      const auto used = parser.put(asio::buffer(in), ec);
      in.erase(0, used);
      if (ec && ec != http::error::need_more) return false;
    }
    if (!in.empty() || !parser.get().keep_alive()) return false;
    ++run_.results.warmed;
    return true;
  }

  void close_conn(PacedConn& c) {
    if (c.fd >= 0) {
      ::epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
      ::close(c.fd);
    }
    c.fd = -1;
    c.want_write = false;
    c.in_flight = false;
    c.in.clear();
    c.parser.reset();
  }

  void fail(PacedConn& c, const char* what) {
    run_.error(what);
    close_conn(c);
  }

  void send(PacedConn& c, std::uint64_t i, Clock::time_point sched) {
    ++run_.results.issued;
    if (c.fd < 0 && !open(static_cast<std::size_t>(&c - conns_.data()))) return;
    c.in_flight = true;
    c.sched = sched;
    c.wire = &run_.requests[i % run_.requests.size()];
    c.written = 0;
    c.consumed = 0;
    c.parser.emplace();
    c.parser->body_limit(kBodyLimit);
    c.parser->header_limit(kHeaderLimit);
    c.parser->eager(true);
    c.sent = Clock::now();
    flush(c);
  }

  // Writes what is left of the current request; arms EPOLLOUT if the socket is full.
  void flush(PacedConn& c) {
    while (c.written < c.wire->size()) {
      const ssize_t n =
          ::send(c.fd, c.wire->data() + c.written, c.wire->size() - c.written, MSG_NOSIGNAL);
      if (n > 0) {
        c.written += static_cast<std::size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!c.want_write) set_events(c, EPOLLIN | EPOLLOUT);
        c.want_write = true;
        return;
      } else {
        fail(c, "write");
        return;
      }
    }
    if (c.want_write) set_events(c, EPOLLIN);
    c.want_write = false;
  }

  void set_events(PacedConn& c, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = static_cast<std::uint64_t>(&c - conns_.data());
    ::epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  void receive(PacedConn& c) {
    for (;;) {
      const ssize_t n = ::recv(c.fd, scratch_.get(), kRecvChunk, 0);
      if (n > 0) {
        c.in.append(scratch_.get(), static_cast<std::size_t>(n));
        // A short read drained the socket (level-triggered: more data wakes us again).
        if (static_cast<std::size_t>(n) < kRecvChunk) break;
        continue;
      }
      if (n == 0) return end_of_stream(c);
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (!c.in_flight) return close_conn(c);  // an idle connection reset by the server
      return fail(c, "read");
    }
    if (c.in.empty()) return;
    if (!c.in_flight) return fail(c, "unsolicited_bytes");
    std::size_t used = 0;
    while (used < c.in.size() && !c.parser->is_done()) {
      beast::error_code ec;
      const auto n = c.parser->put(asio::buffer(c.in.data() + used, c.in.size() - used), ec);
      used += n;
      c.consumed += n;
      if (ec == http::error::need_more) break;
      if (ec) return fail(c, "read");
    }
    c.in.erase(0, used);
    if (c.parser->is_done()) answered(c);
  }

  void end_of_stream(PacedConn& c) {
    if (c.in_flight) {
      beast::error_code ec;
      c.parser->put_eof(ec);
      if (!ec && c.parser->is_done()) {
        answered(c);
      } else {
        return fail(c, "read");
      }
    }
    close_conn(c);  // an idle keep-alive connection the server closed; reopened when needed
  }

  void answered(PacedConn& c) {
    const auto& res = c.parser->get();
    record_answer(run_.results, c.sched, c.sent, Clock::now(), res, c.consumed);
    const bool keep = res.keep_alive();
    c.in_flight = false;
    c.parser.reset();
    if (!c.in.empty()) return fail(c, "unsolicited_bytes");
    if (!keep) close_conn(c);
  }

  // A request without its answer after --timeout-ms fails and its connection is closed.
  void expire_stalled(Clock::time_point now) {
    const auto timeout = std::chrono::milliseconds(opt_.timeout_ms);
    for (auto& c : conns_) {
      if (c.in_flight && now - c.sent > timeout) {
        fail(c, c.written < c.wire->size() ? "write_timeout" : "read_timeout");
      }
    }
  }

  LoadRun& run_;
  const Options& opt_;
  std::vector<PacedConn> conns_;
  int ep_ = -1;
  std::uint64_t release_ = 0;  // the next request to hand to its connection (paced)
  timespec timeout_{};
  std::unique_ptr<char[]> scratch_ = std::make_unique<char[]>(kRecvChunk);
};

nlohmann::json summarize(std::vector<std::uint64_t>& ns, bool full) {
  nlohmann::json j = nlohmann::json::object();
  if (ns.empty()) return j;
  std::sort(ns.begin(), ns.end());
  auto at = [&](double p) {
    // nearest rank
    const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(ns.size())));
    const std::size_t idx = rank == 0 ? 0 : std::min(rank - 1, ns.size() - 1);
    return std::round(static_cast<double>(ns[idx]) / 100.0) / 10.0;  // us, 0.1 resolution
  };
  long double sum = 0;
  for (auto v : ns) sum += v;
  j["p50"] = at(0.50);
  if (full) j["p90"] = at(0.90);
  j["p99"] = at(0.99);
  if (full) j["p999"] = at(0.999);
  j["max"] = std::round(static_cast<double>(ns.back()) / 100.0) / 10.0;
  if (full) {
    j["mean"] = std::round(static_cast<double>(sum / ns.size()) / 100.0) / 10.0;
  }
  return j;
}

// Runs the --stampede round on one Asio thread, bounded by `hard_limit`.
void run_stampede(LoadRun& run, asio::io_context& io, Clock::time_point hard_limit) {
  run.start_gate.emplace(io, Clock::time_point::max());
  run.watchdog.emplace(io, hard_limit);
  for (std::size_t c = 0; c < run.opt.connections; ++c) {
    asio::co_spawn(io, stampede_connection(run), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
  }
  run.watchdog->async_wait([&](const beast::error_code& ec) {
    if (!ec) {
      run.error("cut_at_time_limit");
      io.stop();
    }
  });
  if (run.opt.busy_poll) {
    while (!io.stopped()) io.poll();  // bounded by the watchdog like run()
  } else {
    io.run();
  }
}

int run_load(const Options& opt) {
  asio::io_context io{1};
  LoadRun run(opt);
  run.requests = build_requests(opt);
  if (!opt.warm_path.empty()) {
    Options warm_opt = opt;
    warm_opt.targets = {"GET " + opt.warm_path};
    run.warm_request = build_requests(warm_opt).front();
  }
  tcp::resolver resolver(io);
  run.endpoints = resolver.resolve(opt.host, opt.port);

  const std::uint64_t expected =
      opt.rate > 0
          ? std::min<std::uint64_t>(opt.max_requests,
                                    static_cast<std::uint64_t>(opt.rate * opt.duration_s) + 1)
          : 1'000'000;
  run.results.latency_ns.reserve(std::min<std::uint64_t>(expected, 50'000'000));
  run.results.service_ns.reserve(run.results.latency_ns.capacity());
  run.results.lag_ns.reserve(run.results.latency_ns.capacity());

  // Bound in time whatever happens: connect phase + duration + one timeout + slack.
  const auto started = Clock::now();
  const auto hard_limit = started + std::chrono::milliseconds(opt.timeout_ms) * 2 +
                          nanoseconds(static_cast<std::int64_t>(opt.duration_s * 1e9)) +
                          std::chrono::seconds(1);
  if (opt.stampede) {
    run_stampede(run, io, hard_limit);
  } else {
    PacedLoad(run).run(hard_limit);
  }

  auto& r = run.results;
  const std::uint64_t completed = r.latency_ns.size();
  std::uint64_t failed = 0;
  for (const auto& [k, v] : r.errors) {
    if (k != "cut_at_time_limit" && k.rfind("connect", 0) != 0) failed += v;
  }
  const double elapsed =
      completed > 0 ? std::chrono::duration<double>(r.last_done - run.t0).count() : 0.0;

  nlohmann::json out;
  if (!opt.label.empty()) out["label"] = opt.label;
  out["connections"] = opt.connections;
  out["offered_rps"] = opt.rate;
  out["duration_s"] = opt.duration_s;
  out["targets"] = run.requests.size();
  out["requests"] = r.issued;
  out["completed"] = completed;
  out["failed"] = failed;
  out["connects"] = r.connects;
  if (!opt.warm_path.empty()) out["warmed"] = r.warmed;
  if (opt.stampede) {
    out["latency_basis"] = "send to kernel receive timestamp, per request";
    // Wall-clock instants (CLOCK_REALTIME, ns) to line up with the relay's stats.
    out["first_send_ns"] = r.first_send_rt;
    out["first_answer_ns"] = r.first_answer_rt;
    out["last_answer_ns"] = r.last_answer_rt;
    out["send_spread_us"] =
        r.last_send >= r.first_send
            ? std::round(
                  std::chrono::duration<double, std::micro>(r.last_send - r.first_send).count())
            : 0.0;
  }
  out["elapsed_s"] = std::round(elapsed * 1000.0) / 1000.0;
  out["rps"] =
      elapsed > 0 ? std::round(static_cast<double>(completed) / elapsed * 10.0) / 10.0 : 0.0;
  out["latency_us"] = summarize(r.latency_ns, true);
  out["service_us"] = summarize(r.service_ns, false);
  out["send_lag_us"] = summarize(r.lag_ns, false);
  nlohmann::json status = nlohmann::json::object();
  for (const auto& [k, v] : r.status) status[std::to_string(k)] = v;
  out["status"] = status;
  out["x_cache"] = r.x_cache.empty() ? nlohmann::json::object() : nlohmann::json(r.x_cache);
  out["errors"] = r.errors.empty() ? nlohmann::json::object() : nlohmann::json(r.errors);
  const double n = completed > 0 ? static_cast<double>(completed) : 1.0;
  out["bytes_per_response"] = {
      {"header", std::round(static_cast<double>(r.header_bytes) / n * 10.0) / 10.0},
      {"body", std::round(static_cast<double>(r.body_bytes) / n * 10.0) / 10.0},
      {"total", std::round(static_cast<double>(r.header_bytes + r.body_bytes) / n * 10.0) / 10.0}};
  std::cout << out.dump() << std::endl;
  return 0;
}

// ---------------------------------------------------------------------------------------
// Relay mode

struct RelayCounts {
  std::uint64_t requests = 0;
  // CLOCK_REALTIME ns: when the first request since the last reset came in, and when the
  // last upstream answer was passed on; the longest upstream round trip seen from here.
  std::int64_t first_request_ns = 0;
  std::int64_t last_answer_ns = 0;
  std::int64_t max_upstream_ns = 0;
  std::map<std::string, std::uint64_t> by_method;
  std::unordered_map<std::string, std::uint64_t> by_target;
  std::uint64_t upstream_errors = 0;
};

nlohmann::json relay_stats(const RelayCounts& c) {
  std::uint64_t max_per_target = 0;
  std::string busiest;
  for (const auto& [target, n] : c.by_target) {
    if (n > max_per_target || (n == max_per_target && target < busiest)) {
      max_per_target = n;
      busiest = target;
    }
  }
  return {
      {"requests", c.requests},
      {"by_method", c.by_method.empty() ? nlohmann::json::object() : nlohmann::json(c.by_method)},
      {"targets", c.by_target.size()},
      {"max_per_target", max_per_target},
      {"busiest_target", busiest},
      {"upstream_errors", c.upstream_errors},
      {"first_request_ns", c.first_request_ns},
      {"last_answer_ns", c.last_answer_ns},
      {"max_upstream_us", std::round(static_cast<double>(c.max_upstream_ns) / 100.0) / 10.0}};
}

template <class Message>
asio::awaitable<beast::error_code> send(beast::tcp_stream& stream, Message& msg) {
  stream.expires_after(std::chrono::seconds(60));
  auto [ec, n] = co_await http::async_write(stream, msg, kUseTuple);
  co_return ec;
}

asio::awaitable<void> relay_session(tcp::socket socket, tcp::endpoint upstream_ep,
                                    std::shared_ptr<RelayCounts> counts) {
  beast::tcp_stream client(std::move(socket));
  beast::tcp_stream upstream(client.get_executor());
  bool upstream_open = false;
  beast::flat_buffer client_buf;
  beast::flat_buffer upstream_buf;
  client.socket().set_option(tcp::no_delay(true));

  for (;;) {
    http::request_parser<http::string_body> req_parser;
    req_parser.body_limit(kBodyLimit);
    req_parser.header_limit(kHeaderLimit);
    client.expires_after(std::chrono::minutes(10));
    auto [ec, n] = co_await http::async_read(client, client_buf, req_parser, kUseTuple);
    if (ec) break;
    http::request<http::string_body> req = req_parser.release();
    const bool client_keep_alive = req.keep_alive();

    if (req.target().starts_with("/__relay/")) {
      http::response<http::string_body> res{http::status::ok, req.version()};
      res.set(http::field::content_type, "application/json");
      if (req.target() == "/__relay/stats") {
        res.body() = relay_stats(*counts).dump();
      } else if (req.target() == "/__relay/reset" && req.method() == http::verb::post) {
        *counts = RelayCounts{};
        res.body() = R"({"reset":true})";
      } else {
        res.result(http::status::not_found);
        res.body() = R"({"error":"unknown relay path"})";
      }
      res.keep_alive(client_keep_alive);
      res.prepare_payload();
      if (co_await send(client, res) || !client_keep_alive) break;
      continue;
    }

    ++counts->requests;
    const std::int64_t received = realtime_ns();
    if (counts->first_request_ns == 0) counts->first_request_ns = received;
    ++counts->by_method[std::string(req.method_string())];
    ++counts->by_target[std::string(req.target())];

    std::optional<http::response<http::string_body>> res;
    // One retry on a fresh connection: the upstream may have closed an idle keep-alive
    // connection just as this request went out.
    for (int attempt = 0; attempt < 2 && !res; ++attempt) {
      if (!upstream_open) {
        upstream.expires_after(std::chrono::seconds(5));
        auto [cec] = co_await upstream.async_connect(upstream_ep, kUseTuple);
        if (cec) continue;
        upstream.socket().set_option(tcp::no_delay(true));
        upstream_open = true;
        upstream_buf.clear();
      }
      if (co_await send(upstream, req)) {
        close(upstream);
        upstream_open = false;
        continue;
      }
      http::response_parser<http::string_body> res_parser;
      res_parser.body_limit(kBodyLimit);
      res_parser.header_limit(kHeaderLimit);
      if (req.method() == http::verb::head) res_parser.skip(true);
      upstream.expires_after(std::chrono::seconds(60));
      auto [rec, rn] = co_await http::async_read(upstream, upstream_buf, res_parser, kUseTuple);
      if (rec) {
        close(upstream);
        upstream_open = false;
        continue;
      }
      res = res_parser.release();
    }
    if (!res) {
      ++counts->upstream_errors;
      http::response<http::string_body> bad{http::status::bad_gateway, req.version()};
      bad.set(http::field::content_type, "application/json");
      bad.body() = R"({"error":"relay: upstream unreachable"})";
      bad.keep_alive(false);
      bad.prepare_payload();
      co_await send(client, bad);
      break;
    }
    if (!res->keep_alive()) {
      close(upstream);
      upstream_open = false;
    }
    res->keep_alive(client_keep_alive);
    const std::int64_t answered = realtime_ns();
    counts->max_upstream_ns = std::max(counts->max_upstream_ns, answered - received);
    counts->last_answer_ns = std::max(counts->last_answer_ns, answered);
    if (co_await send(client, *res) || !client_keep_alive) break;
  }
  close(client);
  if (upstream_open) close(upstream);
}

asio::awaitable<void> relay_accept(tcp::acceptor& acceptor, tcp::endpoint upstream_ep,
                                   std::shared_ptr<RelayCounts> counts) {
  auto ex = co_await asio::this_coro::executor;
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(kUseTuple);
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) {
      asio::steady_timer pause(ex, std::chrono::milliseconds(50));
      co_await pause.async_wait(kUseTuple);
      continue;
    }
    asio::co_spawn(ex, relay_session(std::move(socket), upstream_ep, counts),
                   [](std::exception_ptr e) {
                     if (!e) return;
                     try {
                       std::rethrow_exception(e);
                     } catch (const std::exception& ex) {
                       std::cerr << "relay: session failed: " << ex.what() << "\n";
                     }
                   });
  }
}

int run_relay(const Options& opt) {
  asio::io_context io{1};
  tcp::resolver resolver(io);
  const auto [up_host, up_port] = split_host_port(opt.upstream);
  const tcp::endpoint upstream_ep = *resolver.resolve(up_host, up_port).begin();
  const auto [host, port] = split_host_port(opt.listen);
  const tcp::endpoint listen_ep = *resolver.resolve(host, port).begin();

  tcp::acceptor acceptor(io);
  acceptor.open(listen_ep.protocol());
  acceptor.set_option(asio::socket_base::reuse_address(true));
  acceptor.bind(listen_ep);
  acceptor.listen(asio::socket_base::max_listen_connections);
  const auto bound = acceptor.local_endpoint();
  const std::string shown = bound.address().is_v6() ? "[" + bound.address().to_string() + "]"
                                                    : bound.address().to_string();
  std::cout << "relay listening on http://" << shown << ":" << bound.port() << " -> "
            << opt.upstream << std::endl;

  auto counts = std::make_shared<RelayCounts>();
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const beast::error_code&, int) { io.stop(); });
  asio::co_spawn(io, relay_accept(acceptor, upstream_ep, counts), asio::detached);
  io.run();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options opt = parse_options(argc, argv);
    return opt.relay ? run_relay(opt) : run_load(opt);
  } catch (const std::invalid_argument& e) {
    std::cerr << "sproxy_loadgen: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sproxy_loadgen: " << e.what() << "\n";
    return 1;
  }
}
