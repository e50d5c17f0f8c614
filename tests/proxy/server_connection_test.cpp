// The server's connections: the connection cap, idle and read deadlines, stalled clients,
// one acceptor per io thread, and the graceful stop.
#include "tests/proxy/server_fixture.hpp"

namespace sproxy::proxy {
namespace {

using namespace server_testing;

// ---------------------------------------------------------------------------------------
// Connection limits and deadlines

TEST(ProxyServerLimits, AnswersConnectionsBeyondTheLimitWith503AndCloses) {
  HarnessOptions options = default_options();
  options.listen.max_connections = 1;
  ServerHarness harness(options);
  {
    auto first = harness.connect();
    ASSERT_EQ(first.get("/healthz").result_int(), 200);

    auto second = harness.connect();
    auto res = second.get("/healthz");
    expect_error(res, errors::service_unavailable("too_many_connections"));
    EXPECT_FALSE(res.keep_alive());
    EXPECT_TRUE(second.peer_closed());

    // The first connection is unaffected.
    EXPECT_EQ(first.get("/healthz").result_int(), 200);
  }
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() == 0; }));
  EXPECT_EQ(harness.connect().get("/healthz").result_int(), 200);
}

TEST(ProxyServerLimits, ClosesKeepAliveConnectionsAfterTheIdleTimeout) {
  HarnessOptions options = default_options();
  options.listen.idle_timeout_ms = 50;
  ServerHarness harness(options);
  auto client = harness.connect();
  ASSERT_EQ(client.get("/healthz").result_int(), 200);
  EXPECT_TRUE(client.peer_closed(std::chrono::seconds(5)));
}

TEST(ProxyServerLimits, ClosesAConnectionWhoseRequestDoesNotArriveInTime) {
  HarnessOptions options = default_options();
  options.listen.read_timeout_ms = 50;
  ServerHarness harness(options);
  auto client = harness.connect();
  client.send_raw("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");  // never finished
  EXPECT_TRUE(client.peer_closed(std::chrono::seconds(5)));
}

// Opens `count` connections that each send the start of a request header and stall.
std::vector<asio::ip::tcp::socket> stalled_connections(asio::io_context& ioc,
                                                       const asio::ip::tcp::endpoint& endpoint,
                                                       int count) {
  std::vector<asio::ip::tcp::socket> sockets;
  sockets.reserve(static_cast<std::size_t>(count));
  const std::string partial = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
  for (int i = 0; i < count; ++i) {
    asio::ip::tcp::socket socket(ioc);
    socket.connect(endpoint);
    asio::write(socket, asio::buffer(partial));
    sockets.push_back(std::move(socket));
  }
  return sockets;
}

// How many of `sockets` the server closes (EOF or reset) within `within`, reading
// nothing from them.
int closed_by_peer(asio::io_context& ioc, std::vector<asio::ip::tcp::socket>& sockets,
                   std::chrono::milliseconds within) {
  int closed = 0;
  std::vector<char> bytes(sockets.size());
  for (std::size_t i = 0; i < sockets.size(); ++i) {
    sockets[i].async_read_some(
        asio::buffer(&bytes[i], 1), [&closed](boost::system::error_code ec, std::size_t n) {
          if (n == 0 && (ec == asio::error::eof || ec == asio::error::connection_reset)) {
            ++closed;
          }
        });
  }
  ioc.restart();
  ioc.run_for(within);
  for (auto& socket : sockets) socket.close();
  ioc.restart();
  ioc.run_for(std::chrono::seconds(1));  // the cancelled reads complete
  return closed;
}

TEST(ProxyServerLimits, KeepsAnsweringWhileHundredsOfClientsStallMidHeader) {
  HarnessOptions options = default_options();
  options.listen.read_timeout_ms = 1'000;
  ServerHarness harness(options);
  asio::io_context ioc{1};
  constexpr int kStalled = 300;
  auto stalled = stalled_connections(ioc, harness.endpoint(), kStalled);
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() >= kStalled; }));

  // A normal client is served meanwhile, health checks included.
  auto client = harness.connect();
  EXPECT_EQ(client.get("/healthz").result_int(), 200);
  auto stores = client.get(api_base(kAccount) + "/stores", kReader);
  EXPECT_EQ(stores.result_int(), 200) << stores.body();
  EXPECT_EQ(harness.connect().get("/healthz").result_int(), 200);

  // Each stalled connection is closed at its read deadline.
  EXPECT_EQ(closed_by_peer(ioc, stalled, std::chrono::seconds(20)), kStalled);
  EXPECT_EQ(client.get("/healthz").result_int(), 200);
}

TEST(ProxyServerLimits, FreesTheConnectionCapTakenByStalledClientsAtTheReadDeadline) {
  HarnessOptions options = default_options();
  options.listen.read_timeout_ms = 500;
  options.listen.max_connections = 20;
  ServerHarness harness(options);
  asio::io_context ioc{1};
  auto stalled = stalled_connections(ioc, harness.endpoint(), 20);
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() == 20; }));

  // At the cap, a new connection gets the 503 envelope, /healthz included.
  auto refused = harness.connect();
  expect_error(refused.get("/healthz"), errors::service_unavailable("too_many_connections"));

  // The stalled clients are closed at their read deadline, which frees the cap.
  EXPECT_EQ(closed_by_peer(ioc, stalled, std::chrono::seconds(20)), 20);
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() == 0; },
                         std::chrono::seconds(10)));
  EXPECT_EQ(harness.connect().get("/healthz").result_int(), 200);
}

// Listening sockets on `port` in /proc/net/tcp (IPv4).
int listening_sockets_on(unsigned short port) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // header
  int count = 0;
  char port_hex[8];
  std::snprintf(port_hex, sizeof port_hex, "%04X", port);
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string slot, local, remote, state;
    fields >> slot >> local >> remote >> state;
    if (state == "0A" && local.substr(local.find(':') + 1) == port_hex) ++count;
  }
  return count;
}

TEST(ProxyServerThreads, BindsOneAcceptorPerThreadOnTheSameEphemeralPort) {
  HarnessOptions options = default_options();
  options.listen.threads = 3;
  ServerHarness harness(options);
  const auto port = harness.endpoint().port();
  ASSERT_NE(port, 0);
  EXPECT_EQ(listening_sockets_on(port), 3);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(harness.connect().get("/healthz").result_int(), 200);
  }
}

// Which threads ran a per-thread task.
struct ThreadsSeen {
  std::mutex mu;
  std::vector<std::thread::id> ids;
};

boost::asio::awaitable<void> note_thread(std::shared_ptr<ThreadsSeen> seen) {
  std::lock_guard lock(seen->mu);
  seen->ids.push_back(std::this_thread::get_id());
  co_return;
}

TEST(ProxyServerThreads, RunsAPerThreadTaskOnceOnEveryIoThread) {
  HarnessOptions options = default_options();
  options.listen.threads = 3;
  ServerHarness harness(options);
  auto seen = std::make_shared<ThreadsSeen>();
  harness.server().run_on_each_thread([seen] { return note_thread(seen); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    {
      std::lock_guard lock(seen->mu);
      if (seen->ids.size() >= 3 || std::chrono::steady_clock::now() > deadline) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::lock_guard lock(seen->mu);
  ASSERT_EQ(seen->ids.size(), 3u);
  std::sort(seen->ids.begin(), seen->ids.end());
  EXPECT_EQ(std::unique(seen->ids.begin(), seen->ids.end()), seen->ids.end());
  EXPECT_EQ(std::count(seen->ids.begin(), seen->ids.end(), std::this_thread::get_id()), 0);
}

TEST(ProxyServerThreads, RefusesToStartOnAPortAnotherSocketHolds) {
  // A plain listening socket without SO_REUSEPORT blocks the port for everyone.
  asio::io_context ioc;
  asio::ip::tcp::acceptor blocker(ioc, {asio::ip::make_address("127.0.0.1"), 0});
  HarnessOptions options = default_options();
  options.listen.port = blocker.local_endpoint().port();
  try {
    ServerHarness harness(options);
    FAIL() << "expected start to fail";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot listen on 127.0.0.1:"));
  }
}

// ---------------------------------------------------------------------------------------
// Graceful stop

// Holds every upstream call until `open`, so a test can have requests in flight.
class GatedUpstream final : public upstream::Upstream {
 public:
  explicit GatedUpstream(std::shared_ptr<upstream::Upstream> inner) : inner_(std::move(inner)) {}

  asio::awaitable<upstream::CallResult> call(upstream::ApiRequest request) override {
    asio::steady_timer gate(co_await asio::this_coro::executor,
                            asio::steady_timer::time_point::max());
    std::list<asio::steady_timer*>::iterator registered;
    bool wait = false;
    {
      std::lock_guard lock(mutex_);
      ++entered_;
      if (!open_) {
        registered = waiting_.insert(waiting_.end(), &gate);
        wait = true;
      }
    }
    entered_changed_.notify_all();
    if (wait) {
      // Unregisters even when the frame is destroyed while waiting.
      struct Unregister {
        GatedUpstream* self;
        std::list<asio::steady_timer*>::iterator it;
        ~Unregister() {
          std::lock_guard lock(self->mutex_);
          if (it != self->waiting_.end()) self->waiting_.erase(it);
        }
      } unregister{this, registered};
      co_await gate.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    co_return co_await inner_->call(std::move(request));
  }

  std::string describe() const override { return "gated " + inner_->describe(); }

  bool wait_until_entered(int calls) {
    std::unique_lock lock(mutex_);
    return entered_changed_.wait_for(lock, std::chrono::seconds(10),
                                     [&] { return entered_ >= calls; });
  }

  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    for (auto* timer : waiting_) {
      asio::post(timer->get_executor(), [timer] { timer->cancel(); });
    }
  }

 private:
  std::shared_ptr<upstream::Upstream> inner_;
  std::mutex mutex_;
  std::condition_variable entered_changed_;
  std::list<asio::steady_timer*> waiting_;
  int entered_ = 0;
  bool open_ = false;
};

HarnessOptions gated_options(std::shared_ptr<GatedUpstream>* gate, int grace_ms) {
  HarnessOptions options = default_options();
  options.listen.shutdown_grace_ms = grace_ms;
  options.wrap_upstream = [gate](std::shared_ptr<upstream::Upstream> inner) {
    *gate = std::make_shared<GatedUpstream>(std::move(inner));
    return std::static_pointer_cast<upstream::Upstream>(*gate);
  };
  return options;
}

TEST(ProxyServerStop, FinishesRequestsInFlightAndClosesIdleConnections) {
  std::shared_ptr<GatedUpstream> gate;
  ServerHarness harness(gated_options(&gate, 10'000));

  HttpTestClient idle = harness.connect();
  ASSERT_EQ(idle.get("/healthz").result_int(), 200);

  HttpTestClient busy = harness.connect();
  busy.send(http::verb::get, api_base(kAccount) + "/stores", {}, kReader);
  ASSERT_TRUE(gate->wait_until_entered(1));

  harness.server().stop();
  EXPECT_TRUE(idle.peer_closed());

  gate->open();
  auto res = busy.read_response();
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_FALSE(res.keep_alive());
  EXPECT_TRUE(busy.peer_closed());

  harness.server().wait();
  EXPECT_EQ(harness.server().connection_count(), 0u);
  EXPECT_THROW(HttpTestClient(harness.endpoint(), std::chrono::seconds(2)), std::runtime_error);
}

TEST(ProxyServerStop, ClosesConnectionsStillSendingARequestAtOnce) {
  std::shared_ptr<GatedUpstream> gate;
  HarnessOptions options = gated_options(&gate, 30'000);
  options.listen.read_timeout_ms = 60'000;
  ServerHarness harness(options);

  HttpTestClient mid_head = harness.connect();
  mid_head.send_raw("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
  HttpTestClient mid_body = harness.connect();
  mid_body.send_raw("POST " + api_base(kAccount) +
                    "/stores HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t-admin\r\n"
                    "Content-Length: 100\r\n\r\n{\"name\":");
  HttpTestClient busy = harness.connect();
  busy.send(http::verb::get, api_base(kAccount) + "/stores", {}, kReader);
  ASSERT_TRUE(gate->wait_until_entered(1));
  ASSERT_TRUE(eventually([&] { return harness.server().connection_count() == 3; }));

  harness.server().stop();
  // Neither the read deadline nor the grace period: closed now.
  EXPECT_TRUE(mid_head.peer_closed(std::chrono::seconds(5)));
  EXPECT_TRUE(mid_body.peer_closed(std::chrono::seconds(5)));

  // The request being processed still gets its answer.
  gate->open();
  auto res = busy.read_response();
  EXPECT_EQ(res.result_int(), 200) << res.body();
  EXPECT_FALSE(res.keep_alive());
  harness.server().wait();
  EXPECT_EQ(harness.server().connection_count(), 0u);
}

TEST(ProxyServerStop, ClosesConnectionsStillBusyAfterTheGracePeriod) {
  std::shared_ptr<GatedUpstream> gate;
  ServerHarness harness(gated_options(&gate, 50));

  HttpTestClient busy = harness.connect();
  busy.send(http::verb::get, api_base(kAccount) + "/stores", {}, kReader);
  ASSERT_TRUE(gate->wait_until_entered(1));

  harness.server().stop();
  // Closed at the end of the grace period although its upstream call has not returned.
  EXPECT_TRUE(busy.peer_closed());

  // The call still running is not abandoned: it completes into the closed connection,
  // and then the server is done.
  gate->open();
  harness.server().wait();
  EXPECT_EQ(harness.server().connection_count(), 0u);
}

TEST(ProxyServerStop, StopsAtOnceWhenNothingIsOpen) {
  ServerHarness harness(default_options());
  const auto started = std::chrono::steady_clock::now();
  harness.server().stop();
  harness.server().wait();
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(2));
}

}  // namespace
}  // namespace sproxy::proxy
