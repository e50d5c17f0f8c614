// sproxy_loadgen's relay mode: a counting HTTP/1.1 relay (see main.cpp).
#include "loadgen.hpp"

namespace loadgen {

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

}  // namespace loadgen
