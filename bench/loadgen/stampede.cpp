// sproxy_loadgen's Asio connections, the recording of one answer, and the --stampede round
// (one request per connection, all at once).
#include "loadgen.hpp"

namespace loadgen {

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
                   std::uint64_t wire_bytes, std::optional<std::uint64_t> latency_ns) {
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

}  // namespace loadgen
