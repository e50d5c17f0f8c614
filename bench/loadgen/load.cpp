// sproxy_loadgen's load mode: paced and closed-loop load on one thread, non-blocking
// sockets and one epoll set, and the JSON report of a run.
#include "loadgen.hpp"

namespace loadgen {

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

}  // namespace loadgen
