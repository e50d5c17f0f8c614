#include "upstream/http_upstream.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/scripted_http_server.hpp"
#include "upstream/embedded_store.hpp"
#include "upstream/factory.hpp"
#include "upstream/guarded_upstream.hpp"

namespace sproxy::upstream {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using test::ReceivedRequest;
using test::Script;
using test::ScriptedHttpServer;
using test::ScriptedReply;
using Kind = ScriptedReply::Kind;
using Clock = std::chrono::steady_clock;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* kToken = "proxy-own-token-7f3a";
constexpr const char* kStoresTarget =
    "/client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/stores";
const std::string kOkBody = R"({"success":true,"errors":[],"messages":[],"result":[]})";

Script ok_script() {
  return [](const ReceivedRequest&) { return ScriptedReply::json(200, kOkBody); };
}

HttpUpstreamOptions options_for(const ScriptedHttpServer& server,
                                std::string_view path = "/client/v4") {
  HttpUpstreamOptions o;
  o.base_url = parse_base_url(server.base_url(path));
  o.token = kToken;
  o.connect_timeout = 2s;
  o.request_timeout = 5s;
  o.max_connections = 4;
  return o;
}

ApiRequest get(std::string target = kStoresTarget) {
  ApiRequest r;
  r.method = Method::get;
  r.target = std::move(target);
  return r;
}

// Runs every call concurrently on `io` (one thread) and returns the results in order.
std::vector<CallResult> run_calls(asio::io_context& io, Upstream& upstream,
                                  std::vector<ApiRequest> requests) {
  std::vector<std::optional<CallResult>> slots(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    asio::co_spawn(io, upstream.call(std::move(requests[i])),
                   [&slots, i](std::exception_ptr e, CallResult r) {
                     if (e) std::rethrow_exception(e);
                     slots[i].emplace(std::move(r));
                   });
  }
  io.restart();
  io.run();
  std::vector<CallResult> out;
  for (auto& s : slots) {
    if (!s) throw std::logic_error("a call did not complete");
    out.push_back(std::move(*s));
  }
  return out;
}

CallResult run_call(asio::io_context& io, Upstream& upstream, ApiRequest request) {
  std::vector<ApiRequest> one;
  one.push_back(std::move(request));
  return std::move(run_calls(io, upstream, std::move(one)).front());
}

// A loopback port with nothing listening on it.
std::uint16_t closed_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, {asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();
}

// ---------------------------------------------------------------------------------------
// Forwarding

TEST(HttpUpstream, ForwardsMethodTargetAndBodyWithTheProxysOwnCredential) {
  ScriptedHttpServer server([](const ReceivedRequest&) {
    return ScriptedReply::json(
        200, R"({"success":true,"errors":[],"messages":[],"result":[{"id":"x"}]})");
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;
  ApiRequest req;
  req.method = Method::post;
  req.target = std::string(kStoresTarget) + "/s1/secrets";
  req.body = R"([{"name":"A","value":"v","scopes":["workers"]}])";

  auto result = run_call(io, upstream, req);

  ASSERT_TRUE(result.has_value()) << result.error().message();
  EXPECT_EQ(result->status, 200u);
  EXPECT_EQ(result->body, R"({"success":true,"errors":[],"messages":[],"result":[{"id":"x"}]})");
  auto seen = server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, req.target);
  EXPECT_EQ(seen[0].body, req.body);
  EXPECT_EQ(seen[0].header("Authorization"), std::string("Bearer ") + kToken);
  EXPECT_EQ(seen[0].header("Host"), "127.0.0.1:" + std::to_string(server.port()));
  EXPECT_EQ(seen[0].header("User-Agent"), "secrets-proxy");
  EXPECT_EQ(seen[0].header("Accept"), "application/json");
  EXPECT_EQ(seen[0].header("Content-Type"), "application/json");
  EXPECT_EQ(seen[0].header("Content-Length"), std::to_string(req.body.size()));
}

TEST(HttpUpstream, SendsNoContentTypeWhenTheRequestHasNoBody) {
  ScriptedHttpServer server(ok_script());
  HttpUpstream upstream(options_for(server));
  asio::io_context io;
  ApiRequest req = get();
  req.method = Method::del;
  req.target += "/s1?force=true";

  auto result = run_call(io, upstream, req);

  ASSERT_TRUE(result.has_value()) << result.error().message();
  auto seen = server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "DELETE");
  EXPECT_EQ(seen[0].target, req.target);
  EXPECT_EQ(seen[0].header("Content-Type"), std::nullopt);
  EXPECT_EQ(seen[0].header("Authorization"), std::string("Bearer ") + kToken);
}

TEST(HttpUpstream, ForwardsUnderTheBaseUrlPathPrefix) {
  ScriptedHttpServer server(ok_script());
  HttpUpstream upstream(options_for(server, "/edge/tenant-1/client/v4"));
  asio::io_context io;

  auto result = run_call(io, upstream, get(std::string(kStoresTarget) + "?page=2&per_page=5"));

  ASSERT_TRUE(result.has_value()) << result.error().message();
  auto seen = server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].target,
            "/edge/tenant-1/client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/"
            "stores?page=2&per_page=5");
}

TEST(HttpUpstream, RefusesATargetOutsideClientV4WithoutContactingTheUpstream) {
  ScriptedHttpServer server(ok_script());
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto outside = run_call(io, upstream, get("/admin/purge"));
  auto lookalike = run_call(io, upstream, get("/client/v4x/accounts"));
  auto injected = run_call(io, upstream, get("/client/v4/accounts HTTP/1.1\r\nX-Evil: 1"));
  ApiRequest other = get();
  other.method = Method::other;
  auto unknown_method = run_call(io, upstream, other);

  EXPECT_EQ(outside.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(lookalike.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(injected.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(unknown_method.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(server.accepted_connections(), 0u);
}

TEST(HttpUpstream, DescribesItselfByItsNormalizedBaseUrl) {
  ScriptedHttpServer server(ok_script());
  HttpUpstream upstream(options_for(server, "/edge/client/v4/"));
  EXPECT_EQ(upstream.describe(),
            "http://127.0.0.1:" + std::to_string(server.port()) + "/edge/client/v4");
}

// ---------------------------------------------------------------------------------------
// Status and headers pass through

TEST(HttpUpstream, PassesA429ThroughWithRetryAfterAndRateLimitHeaders) {
  const std::string body =
      R"({"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}],"messages":[],"result":null})";
  ScriptedHttpServer server([&](const ReceivedRequest&) {
    return ScriptedReply::json(429, body)
        .with_header("Retry-After", "30")
        .with_header("Ratelimit", "\"default\";r=0;t=30")
        .with_header("Ratelimit-Policy", "\"burst\";q=1200;w=300");
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  ASSERT_TRUE(result.has_value()) << result.error().message();
  EXPECT_EQ(result->status, 429u);
  EXPECT_EQ(result->body, body);
  EXPECT_EQ(result->retry_after, "30");
  EXPECT_EQ(result->ratelimit, "\"default\";r=0;t=30");
  EXPECT_EQ(result->ratelimit_policy, "\"burst\";q=1200;w=300");
}

TEST(HttpUpstream, PassesA5xxThroughAsAnAnswerNotATransportError) {
  ScriptedHttpServer server([](const ReceivedRequest&) {
    return ScriptedReply::json(503, R"({"success":false,"errors":[{"code":1002,"message":"x"}]})")
        .with_header("Retry-After", "5");
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  ASSERT_TRUE(result.has_value()) << result.error().message();
  EXPECT_EQ(result->status, 503u);
  EXPECT_EQ(result->retry_after, "5");
  EXPECT_EQ(result->ratelimit, std::nullopt);
}

TEST(HttpUpstream, ReadsAChunkedResponseBody) {
  ScriptedHttpServer server([](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, kOkBody);
    r.chunked = true;
    return r;
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto first = run_call(io, upstream, get());
  auto second = run_call(io, upstream, get());

  ASSERT_TRUE(first.has_value()) << first.error().message();
  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(first->body, kOkBody);
  EXPECT_EQ(server.accepted_connections(), 1u);
}

// ---------------------------------------------------------------------------------------
// Connection pool

TEST(HttpUpstream, ReusesOneKeepAliveConnectionForSequentialCalls) {
  ScriptedHttpServer server(ok_script());
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  for (int i = 0; i < 25; ++i) {
    auto result = run_call(io, upstream, get());
    ASSERT_TRUE(result.has_value()) << "call " << i << ": " << result.error().message();
  }

  EXPECT_EQ(server.request_count(), 25u);
  EXPECT_EQ(server.accepted_connections(), 1u);
}

TEST(HttpUpstream, ClosesIdleConnectionsOlderThanMaxIdleInsteadOfReusingThem) {
  ScriptedHttpServer server(ok_script());
  auto opts = options_for(server);
  opts.max_idle = 0ms;  // every idle connection is already too old at the next call
  HttpUpstream upstream(opts);
  asio::io_context io;

  for (int i = 0; i < 3; ++i) ASSERT_TRUE(run_call(io, upstream, get()).has_value());

  EXPECT_EQ(server.accepted_connections(), 3u);
  EXPECT_TRUE(server.wait_until([&] { return server.open_connections() == 1; }));
}

TEST(HttpUpstream, OpensANewConnectionWhenTheServerAsksToClose) {
  ScriptedHttpServer server([](const ReceivedRequest&) {
    return ScriptedReply::json(200, kOkBody).with_header("Connection", "close");
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto first = run_call(io, upstream, get());
  auto second = run_call(io, upstream, get());

  ASSERT_TRUE(first.has_value()) << first.error().message();
  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(server.accepted_connections(), 2u);
  EXPECT_EQ(server.request_count(), 2u);
}

TEST(HttpUpstream, NeverOpensMoreConnectionsThanTheBoundAndCompletesEveryCall) {
  ScriptedHttpServer server(
      [](const ReceivedRequest&) { return ScriptedReply::json(200, kOkBody).after(20ms); });
  auto opts = options_for(server);
  opts.max_connections = 2;
  HttpUpstream upstream(opts);
  asio::io_context io;

  auto results = run_calls(io, upstream, std::vector<ApiRequest>(12, get()));

  for (const auto& r : results) ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(server.request_count(), 12u);
  EXPECT_LE(server.peak_open_connections(), 2u);
  EXPECT_LE(server.accepted_connections(), 2u);
}

TEST(HttpUpstream, RefusesCallersBeyondTheWaiterLimitAsOverloaded) {
  ScriptedHttpServer server(
      [](const ReceivedRequest&) { return ScriptedReply::json(200, kOkBody).after(30ms); });
  auto opts = options_for(server);
  opts.max_connections = 1;
  opts.max_waiters = 1;
  HttpUpstream upstream(opts);
  asio::io_context io;

  // Started in order on one thread: the first takes the only slot, the second waits,
  // the third finds the waiting line full.
  auto results = run_calls(io, upstream, std::vector<ApiRequest>(3, get()));

  ASSERT_TRUE(results[0].has_value()) << results[0].error().message();
  ASSERT_TRUE(results[1].has_value()) << results[1].error().message();
  EXPECT_EQ(results[2].error(), UpstreamErrc::overloaded);
  EXPECT_EQ(server.accepted_connections(), 1u);
}

TEST(HttpUpstream, BoundsTheWaitForAConnectionByTheRequestDeadline) {
  ScriptedHttpServer server(
      [](const ReceivedRequest&) { return ScriptedReply::of(Kind::never_respond); });
  auto opts = options_for(server);
  opts.max_connections = 1;
  opts.request_timeout = 200ms;
  HttpUpstream upstream(opts);
  asio::io_context io;

  const auto start = Clock::now();
  auto results = run_calls(io, upstream, std::vector<ApiRequest>(3, get()));
  const auto elapsed = Clock::now() - start;

  EXPECT_EQ(results[0].error(), UpstreamErrc::timeout);
  for (const auto& r : results) {
    ASSERT_FALSE(r.has_value());
    EXPECT_TRUE(r.error() == UpstreamErrc::timeout || r.error() == UpstreamErrc::overloaded)
        << r.error().message();
  }
  EXPECT_LT(elapsed, 2s);
  EXPECT_EQ(server.peak_open_connections(), 1u);
}

TEST(HttpUpstream, KeepsOnePoolPerIoContextSoThreadsCanShareOneUpstream) {
  ScriptedHttpServer server(ok_script());
  auto opts = options_for(server);
  opts.max_connections = 1;
  HttpUpstream upstream(opts);
  std::atomic<int> failures{0};

  auto worker = [&] {
    asio::io_context io;
    for (int i = 0; i < 20; ++i) {
      auto results = run_calls(io, upstream, std::vector<ApiRequest>(2, get()));
      for (const auto& r : results) {
        if (!r.has_value()) ++failures;
      }
    }
  };
  std::thread a(worker);
  std::thread b(worker);
  a.join();
  b.join();

  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(server.request_count(), 80u);
  // One connection per io_context, each reused for all of that context's calls.
  EXPECT_EQ(server.accepted_connections(), 2u);
}

TEST(HttpUpstream, ClosesIdleConnectionsWhenTheirIoContextIsDestroyed) {
  ScriptedHttpServer server(ok_script());
  HttpUpstream upstream(options_for(server));
  {
    asio::io_context io;
    ASSERT_TRUE(run_call(io, upstream, get()).has_value());
    EXPECT_TRUE(server.wait_until([&] { return server.open_connections() == 1; }));
  }
  EXPECT_TRUE(server.wait_until([&] { return server.open_connections() == 0; }));

  asio::io_context io;
  auto again = run_call(io, upstream, get());
  ASSERT_TRUE(again.has_value()) << again.error().message();
  EXPECT_EQ(server.accepted_connections(), 2u);
}

TEST(HttpUpstream, ReleasesItsIdleConnectionsOnceDestroyed) {
  ScriptedHttpServer server(ok_script());
  asio::io_context io;
  {
    HttpUpstream first(options_for(server));
    ASSERT_TRUE(run_call(io, first, get()).has_value());
  }
  EXPECT_EQ(server.open_connections(), 1u);
  HttpUpstream second(options_for(server));

  ASSERT_TRUE(run_call(io, second, get()).has_value());

  // The first upstream's idle connection was dropped at the next call on the context.
  EXPECT_TRUE(server.wait_until([&] { return server.open_connections() == 1; }));
  EXPECT_EQ(server.accepted_connections(), 2u);
}

TEST(HttpUpstream, SurvivesItsIoContextBeingDestroyedMidCall) {
  ScriptedHttpServer server([](const ReceivedRequest& r) {
    if (r.index == 0) return ScriptedReply::of(Kind::never_respond);
    return ScriptedReply::json(200, kOkBody);
  });
  auto opts = options_for(server);
  opts.max_connections = 1;
  HttpUpstream upstream(opts);
  int completed = 0;
  {
    asio::io_context io;
    // One call holds the only connection, two wait for it; then the context dies.
    for (int i = 0; i < 3; ++i) {
      asio::co_spawn(io, upstream.call(get()),
                     [&completed](std::exception_ptr, CallResult) { ++completed; });
    }
    io.run_for(100ms);
  }
  EXPECT_EQ(completed, 0);
  EXPECT_TRUE(server.wait_until([&] { return server.open_connections() == 0; }));

  asio::io_context io;
  auto again = run_call(io, upstream, get());
  ASSERT_TRUE(again.has_value()) << again.error().message();
  EXPECT_EQ(server.accepted_connections(), 2u);
}

// ---------------------------------------------------------------------------------------
// Stale keep-alive connections

TEST(HttpUpstream, RetriesAStaleKeepAliveConnectionTransparentlyOnAFreshOne) {
  ScriptedHttpServer server([](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, kOkBody);
    r.kind = Kind::respond_then_close;
    return r;
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto first = run_call(io, upstream, get());
  ASSERT_TRUE(first.has_value()) << first.error().message();
  ASSERT_TRUE(server.wait_until([&] { return server.open_connections() == 0; }));
  auto second = run_call(io, upstream, get());

  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(second->body, kOkBody);
  EXPECT_EQ(server.accepted_connections(), 2u);
  EXPECT_EQ(server.request_count(), 2u);
}

TEST(HttpUpstream, RetriesAStaleConnectionAtMostOnce) {
  ScriptedHttpServer server([](const ReceivedRequest& r) {
    if (r.index == 0) {
      auto reply = ScriptedReply::json(200, kOkBody);
      reply.kind = Kind::respond_then_close;
      return reply;
    }
    return ScriptedReply::of(Kind::close_without_response);
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  ASSERT_TRUE(run_call(io, upstream, get()).has_value());
  ASSERT_TRUE(server.wait_until([&] { return server.open_connections() == 0; }));
  auto second = run_call(io, upstream, get());

  EXPECT_EQ(second.error(), UpstreamErrc::connection_reset);
  EXPECT_EQ(server.accepted_connections(), 2u);
  EXPECT_EQ(server.request_count(), 2u);
}

ApiRequest post_secret() {
  ApiRequest r;
  r.method = Method::post;
  r.target = std::string(kStoresTarget) + "/s1/secrets";
  r.body = R"([{"name":"A","value":"v","scopes":["workers"]}])";
  return r;
}

TEST(HttpUpstream, SendsAWriteOnAFreshConnectionWhenTheIdleOneWasClosedByThePeer) {
  ScriptedHttpServer server([](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, kOkBody);
    r.kind = Kind::respond_then_close;
    return r;
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  ASSERT_TRUE(run_call(io, upstream, get()).has_value());
  ASSERT_TRUE(server.wait_until([&] { return server.open_connections() == 0; }));
  auto write = run_call(io, upstream, post_secret());

  ASSERT_TRUE(write.has_value()) << write.error().message();
  EXPECT_EQ(server.accepted_connections(), 2u);
  EXPECT_EQ(server.request_count(), 2u);  // the write was sent once
}

TEST(HttpUpstream, NeverSendsAWriteAgainOnceTheUpstreamMayHaveReceivedIt) {
  ScriptedHttpServer server([](const ReceivedRequest& r) {
    if (r.index == 0) return ScriptedReply::json(200, kOkBody);  // keeps the connection
    return ScriptedReply::of(Kind::close_without_response);
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  ASSERT_TRUE(run_call(io, upstream, get()).has_value());
  auto write = run_call(io, upstream, post_secret());

  // The request was written on a live connection and then the connection broke: it may
  // have been applied, so it is reported, not repeated.
  EXPECT_EQ(write.error(), UpstreamErrc::connection_reset);
  EXPECT_EQ(server.request_count(), 2u);
  EXPECT_EQ(server.accepted_connections(), 1u);
}

TEST(HttpUpstream, DoesNotRetryWhenAFreshConnectionIsClosedWithoutAnswer) {
  ScriptedHttpServer server(
      [](const ReceivedRequest&) { return ScriptedReply::of(Kind::close_without_response); });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::connection_reset);
  EXPECT_EQ(server.accepted_connections(), 1u);
  EXPECT_EQ(server.request_count(), 1u);
}

// ---------------------------------------------------------------------------------------
// Transport failures

TEST(HttpUpstream, ReportsARefusedConnectionAsUnreachable) {
  HttpUpstreamOptions opts;
  opts.base_url =
      parse_base_url("http://127.0.0.1:" + std::to_string(closed_port()) + "/client/v4");
  opts.token = kToken;
  HttpUpstream upstream(opts);
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::unreachable);
}

TEST(HttpUpstream, TimesOutAServerThatNeverAnswers) {
  ScriptedHttpServer server(
      [](const ReceivedRequest&) { return ScriptedReply::of(Kind::never_respond); });
  auto opts = options_for(server);
  opts.request_timeout = 200ms;
  HttpUpstream upstream(opts);
  asio::io_context io;

  const auto start = Clock::now();
  auto result = run_call(io, upstream, get());
  const auto elapsed = Clock::now() - start;

  EXPECT_EQ(result.error(), UpstreamErrc::timeout);
  EXPECT_GE(elapsed, 190ms);
  EXPECT_LT(elapsed, 2s);
  EXPECT_EQ(server.request_count(), 1u);
}

TEST(HttpUpstream, TimesOutAConnectThatIsNeverAccepted) {
  // A listener with a full accept queue drops further SYNs, so the connect hangs.
  asio::io_context server_io;
  asio::ip::tcp::acceptor listener(server_io);
  const asio::ip::tcp::endpoint any_port{asio::ip::make_address("127.0.0.1"), 0};
  listener.open(any_port.protocol());
  listener.bind(any_port);
  listener.listen(0);
  const auto port = listener.local_endpoint().port();
  std::vector<std::unique_ptr<asio::ip::tcp::socket>> fillers;
  for (int i = 0; i < 2; ++i) {
    // async_connect issues the non-blocking connect(2) at once; server_io never runs.
    auto s = std::make_unique<asio::ip::tcp::socket>(server_io);
    s->async_connect({asio::ip::make_address("127.0.0.1"), port}, [](boost::system::error_code) {});
    fillers.push_back(std::move(s));
  }
  std::this_thread::sleep_for(50ms);  // let the handshakes of the fillers settle
  HttpUpstreamOptions opts;
  opts.base_url = parse_base_url("http://127.0.0.1:" + std::to_string(port) + "/client/v4");
  opts.token = kToken;
  opts.connect_timeout = 200ms;
  opts.request_timeout = 5s;
  HttpUpstream upstream(opts);
  asio::io_context io;

  const auto start = Clock::now();
  auto result = run_call(io, upstream, get());
  const auto elapsed = Clock::now() - start;

  EXPECT_EQ(result.error(), UpstreamErrc::timeout);
  EXPECT_LT(elapsed, 2s);
}

TEST(HttpUpstream, ReportsAResetMidResponseAsConnectionReset) {
  ScriptedHttpServer server([](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, std::string(2000, 'x'));
    r.kind = Kind::reset_mid_response;
    return r;
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::connection_reset);
  EXPECT_EQ(server.accepted_connections(), 1u);
}

TEST(HttpUpstream, ReportsACloseMidBodyAsConnectionReset) {
  ScriptedHttpServer server([](const ReceivedRequest&) {
    return ScriptedReply::raw_bytes("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"success\":");
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::connection_reset);
}

TEST(HttpUpstream, ReportsAPeerThatDoesNotSpeakHttpAsBadResponse) {
  ScriptedHttpServer server([](const ReceivedRequest&) {
    return ScriptedReply::raw_bytes("SSH-2.0-OpenSSH_9.2\r\n\r\n");
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::bad_response);
}

TEST(HttpUpstream, RejectsAResponseBodyAboveTheCapAsBadResponse) {
  ScriptedHttpServer server([](const ReceivedRequest& r) {
    auto reply = ScriptedReply::json(200, std::string(4096, 'x'));
    reply.chunked = r.index % 2 == 1;
    return reply;
  });
  auto opts = options_for(server);
  opts.max_response_bytes = 1024;
  HttpUpstream upstream(opts);
  asio::io_context io;

  auto with_length = run_call(io, upstream, get());
  auto chunked = run_call(io, upstream, get());

  EXPECT_EQ(with_length.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(chunked.error(), UpstreamErrc::bad_response);
}

TEST(HttpUpstream, RejectsADeclaredBodyAboveTheDefaultSixteenMebibyteCap) {
  ScriptedHttpServer server([](const ReceivedRequest&) {
    return ScriptedReply::raw_bytes("HTTP/1.1 200 OK\r\nContent-Length: 16777217\r\n\r\n{");
  });
  HttpUpstream upstream(options_for(server));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::bad_response);
}

// ---------------------------------------------------------------------------------------
// Base URLs

TEST(BaseUrl, ParsesHostPortAndPathPrefix) {
  auto url = parse_base_url("http://127.0.0.1:9000/edge/client/v4");
  EXPECT_EQ(url.scheme, BaseUrl::Scheme::http);
  EXPECT_EQ(url.host, "127.0.0.1");
  EXPECT_EQ(url.port, 9000);
  EXPECT_EQ(url.path, "/edge/client/v4");
  EXPECT_EQ(url.host_header(), "127.0.0.1:9000");
}

TEST(BaseUrl, DefaultsThePortByScheme) {
  auto https = parse_base_url("HTTPS://API.Cloudflare.com/client/v4/");
  EXPECT_EQ(https.scheme, BaseUrl::Scheme::https);
  EXPECT_EQ(https.host, "api.cloudflare.com");
  EXPECT_EQ(https.port, 443);
  EXPECT_EQ(https.path, "/client/v4");
  EXPECT_EQ(https.host_header(), "api.cloudflare.com");
  EXPECT_EQ(https.to_string(), "https://api.cloudflare.com/client/v4");
  EXPECT_EQ(parse_base_url("http://localhost/client/v4").port, 80);
}

TEST(BaseUrl, AcceptsBracketedIpv6Literals) {
  auto url = parse_base_url("http://[::1]:8080/client/v4");
  EXPECT_EQ(url.host, "::1");
  EXPECT_EQ(url.host_header(), "[::1]:8080");
  EXPECT_EQ(url.to_string(), "http://[::1]:8080/client/v4");
}

TEST(BaseUrl, RejectsMalformedUrlsWithAClearMessage) {
  const auto message_for = [](std::string_view url) {
    try {
      parse_base_url(url);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_THAT(message_for("127.0.0.1:9000/client/v4"), HasSubstr("upstream.base_url"));
  EXPECT_THAT(message_for("ftp://host/client/v4"), HasSubstr("scheme must be http or https"));
  EXPECT_THAT(message_for("http://host:9000/v4"), HasSubstr("must end with /client/v4"));
  EXPECT_THAT(message_for("http://host:9000"), HasSubstr("must end with /client/v4"));
  EXPECT_THAT(message_for("http://host:9000/myclient/v4"), HasSubstr("must end with /client/v4"));
  EXPECT_THAT(message_for("http://host:0/client/v4"), HasSubstr("port"));
  EXPECT_THAT(message_for("http://host:65536/client/v4"), HasSubstr("port"));
  EXPECT_THAT(message_for("http://host:/client/v4"), HasSubstr("port"));
  EXPECT_THAT(message_for("http://host:9x/client/v4"), HasSubstr("port"));
  EXPECT_THAT(message_for("http:///client/v4"), HasSubstr("missing host"));
  EXPECT_THAT(message_for("http://ho st/client/v4"), HasSubstr("invalid host"));
  EXPECT_THAT(message_for("http://[::1/client/v4"), HasSubstr("IPv6"));
  EXPECT_THAT(message_for("http://host/client/v4?x=1"), HasSubstr("query or fragment"));
  EXPECT_THAT(message_for("http://host/client/v4#top"), HasSubstr("query or fragment"));
}

TEST(BaseUrl, NeverEchoesUserInformationInItsError) {
  std::string message;
  try {
    parse_base_url("http://user:hunter2@host/client/v4");
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  EXPECT_THAT(message, HasSubstr("user information"));
  EXPECT_THAT(message, Not(HasSubstr("hunter2")));
}

TEST(HttpUpstream, RefusesAnEmptyOrHeaderBreakingToken) {
  HttpUpstreamOptions opts;
  opts.base_url = parse_base_url("http://127.0.0.1:9/client/v4");
  opts.token = "";
  EXPECT_THROW(HttpUpstream{opts}, std::runtime_error);
  opts.token = "abc\r\nX-Evil: 1";
  try {
    HttpUpstream upstream(opts);
    ADD_FAILURE() << "a token with CR LF was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(std::string(e.what()), Not(HasSubstr("abc")));
  }
}

// ---------------------------------------------------------------------------------------
// Factory

class ScopedEnv {
 public:
  ScopedEnv(std::string name, const char* value) : name_(std::move(name)) {
    if (value) {
      ::setenv(name_.c_str(), value, 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  ~ScopedEnv() { ::unsetenv(name_.c_str()); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
};

std::filesystem::path fresh_temp_dir(std::string_view name) {
  auto dir = std::filesystem::path(::testing::TempDir()) /
             ("sproxy_http_" + std::string(name) + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::string factory_error(const config::Config& cfg) {
  try {
    make_upstream(cfg);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(MakeUpstream, BuildsAnHttpUpstreamThatSendsTheTokenFromTheEnvironment) {
  ScriptedHttpServer server(ok_script());
  ScopedEnv env("SPROXY_TEST_UPSTREAM_TOKEN", "  env-token-42\n");
  config::Config cfg;
  cfg.upstream.kind = "http";
  cfg.upstream.base_url = server.base_url();
  cfg.upstream.token_env = "SPROXY_TEST_UPSTREAM_TOKEN";

  auto upstream = make_upstream(cfg);
  asio::io_context io;
  auto result = run_call(io, *upstream, get());

  EXPECT_EQ(upstream->describe(), "guarded(" + server.base_url() + ")");
  ASSERT_TRUE(result.has_value()) << result.error().message();
  ASSERT_EQ(server.request_count(), 1u);
  EXPECT_EQ(server.requests()[0].header("Authorization"), "Bearer env-token-42");
}

TEST(MakeUpstream, ReadsTheTokenFromTheFileWhenTheEnvironmentVariableIsUnset) {
  ScriptedHttpServer server(ok_script());
  auto dir = fresh_temp_dir("token_file");
  { std::ofstream(dir / "token") << "file-token-9\n"; }
  ScopedEnv env("SPROXY_TEST_UPSTREAM_TOKEN", nullptr);
  config::Config cfg;
  cfg.upstream.kind = "http";
  cfg.upstream.base_url = server.base_url();
  cfg.upstream.token_env = "SPROXY_TEST_UPSTREAM_TOKEN";
  cfg.upstream.token_file = (dir / "token").string();

  auto upstream = make_upstream(cfg);
  asio::io_context io;
  ASSERT_TRUE(run_call(io, *upstream, get()).has_value());

  EXPECT_EQ(server.requests().at(0).header("Authorization"), "Bearer file-token-9");
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, NamesTheEnvironmentVariableWhenTheCredentialIsMissing) {
  ScopedEnv env("SPROXY_TEST_UPSTREAM_TOKEN", nullptr);
  config::Config cfg;
  cfg.upstream.kind = "http";
  cfg.upstream.base_url = "http://127.0.0.1:9/client/v4";
  cfg.upstream.token_env = "SPROXY_TEST_UPSTREAM_TOKEN";

  EXPECT_THAT(factory_error(cfg), HasSubstr("SPROXY_TEST_UPSTREAM_TOKEN"));
}

TEST(MakeUpstream, NamesTheTokenFileWhenItCannotBeReadOrIsEmpty) {
  auto dir = fresh_temp_dir("token_missing");
  config::Config cfg;
  cfg.upstream.kind = "http";
  cfg.upstream.base_url = "http://127.0.0.1:9/client/v4";
  cfg.upstream.token_file = (dir / "absent").string();
  EXPECT_THAT(factory_error(cfg), HasSubstr((dir / "absent").string()));

  { std::ofstream(dir / "empty") << " \n"; }
  cfg.upstream.token_file = (dir / "empty").string();
  EXPECT_THAT(factory_error(cfg), HasSubstr("is empty"));
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, RequiresSomeCredentialForHttp) {
  config::Config cfg;
  cfg.upstream.kind = "http";
  cfg.upstream.base_url = "http://127.0.0.1:9/client/v4";

  EXPECT_THAT(factory_error(cfg), HasSubstr("upstream.token_env"));
}

TEST(MakeUpstream, RejectsAMalformedBaseUrl) {
  ScopedEnv env("SPROXY_TEST_UPSTREAM_TOKEN", "t");
  config::Config cfg;
  cfg.upstream.kind = "http";
  cfg.upstream.base_url = "http://127.0.0.1:9000/api";
  cfg.upstream.token_env = "SPROXY_TEST_UPSTREAM_TOKEN";

  EXPECT_THAT(factory_error(cfg), HasSubstr("upstream.base_url"));
}

TEST(MakeUpstream, RejectsAnUnknownKind) {
  config::Config cfg;
  cfg.upstream.kind = "carrier-pigeon";

  EXPECT_THAT(factory_error(cfg), HasSubstr("carrier-pigeon"));
}

TEST(MakeUpstream, GuardsAnHttpUpstreamWithTheConfiguredLimits) {
  ScriptedHttpServer server(ok_script());
  ScopedEnv env("SPROXY_TEST_UPSTREAM_TOKEN", "t");
  config::Config cfg;
  cfg.upstream.kind = "http";
  cfg.upstream.base_url = server.base_url();
  cfg.upstream.token_env = "SPROXY_TEST_UPSTREAM_TOKEN";
  cfg.upstream.rate_limit_requests = 600;
  cfg.upstream.rate_limit_window_s = 60;
  cfg.upstream.rate_limit_margin = 0.25;
  cfg.upstream.rate_limit_per_second = 40;
  cfg.upstream.max_retries = 4;
  cfg.upstream.breaker_failures = 7;
  cfg.upstream.breaker_open_ms = 1'234;
  cfg.upstream.write_budget_wait_ms = 0;

  auto upstream = make_upstream(cfg);

  EXPECT_EQ(upstream->describe().rfind("guarded(", 0), 0u) << upstream->describe();
  auto guarded = std::dynamic_pointer_cast<GuardedUpstream>(upstream);
  ASSERT_NE(guarded, nullptr);
  const GuardedUpstreamOptions& o = guarded->options();
  EXPECT_EQ(o.budget.limit, 600);
  EXPECT_EQ(o.budget.window, 60s);
  EXPECT_DOUBLE_EQ(o.budget.safety_margin, 0.25);
  EXPECT_EQ(o.budget.burst_limit, 40);
  EXPECT_EQ(o.max_retries, 4);
  EXPECT_EQ(o.breaker.failure_threshold, 7);
  EXPECT_EQ(o.breaker.open_duration, 1'234ms);
  EXPECT_EQ(o.write_budget_wait, 0ms);
  EXPECT_EQ(guarded->budget_snapshot().capacity, 450);  // 600 less the 25% margin
}

TEST(MakeUpstream, AnswersFromTheGuardOnceTheConfiguredBudgetIsSpent) {
  ScriptedHttpServer server(ok_script());
  ScopedEnv env("SPROXY_TEST_UPSTREAM_TOKEN", "t");
  config::Config cfg;
  cfg.upstream.kind = "http";
  cfg.upstream.base_url = server.base_url();
  cfg.upstream.token_env = "SPROXY_TEST_UPSTREAM_TOKEN";
  cfg.upstream.rate_limit_requests = 1;
  cfg.upstream.rate_limit_margin = 0;

  auto upstream = make_upstream(cfg);
  asio::io_context io;
  auto first = run_call(io, *upstream, get());
  auto second = run_call(io, *upstream, get());

  ASSERT_TRUE(first.has_value()) << first.error().message();
  EXPECT_EQ(first->status, 200u);
  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(second->status, 429u);
  EXPECT_TRUE(second->retry_after.has_value());
  EXPECT_EQ(server.request_count(), 1u);  // the second call never left the proxy
}

TEST(MakeUpstream, PassesTheTlsCaFileToTheHttpUpstream) {
  ScopedEnv env("SPROXY_TEST_UPSTREAM_TOKEN", "t");
  config::UpstreamConfig cfg;
  cfg.kind = "http";
  cfg.base_url = "https://127.0.0.1:9/client/v4";
  cfg.token_env = "SPROXY_TEST_UPSTREAM_TOKEN";
  cfg.tls_ca_file = "/nonexistent/sproxy-test-ca.pem";

  EXPECT_EQ(http_upstream_options(cfg).tls_ca_file, "/nonexistent/sproxy-test-ca.pem");
  config::Config full;
  full.upstream = cfg;
  // The unloadable CA file is reported at start-up, so it did reach the TLS context.
  EXPECT_THAT(factory_error(full), HasSubstr("/nonexistent/sproxy-test-ca.pem"));
}

TEST(MakeUpstream, DoesNotGuardTheEmbeddedStore) {
  auto dir = fresh_temp_dir("embedded_unguarded");
  ScopedEnv key("SPROXY_TEST_STORE_KEY",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
  config::Config cfg;
  cfg.store.data_path = (dir / "store.db").string();
  cfg.store.key_env = "SPROXY_TEST_STORE_KEY";
  cfg.store.key_file = (dir / "store.key").string();
  cfg.upstream.rate_limit_requests = 1;

  auto upstream = make_upstream(cfg);

  EXPECT_EQ(std::dynamic_pointer_cast<GuardedUpstream>(upstream), nullptr);
  EXPECT_EQ(upstream->describe().find("guarded("), std::string::npos);
  upstream.reset();
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, BuildsTheEmbeddedStoreByDefault) {
  auto dir = fresh_temp_dir("embedded");
  ScopedEnv key("SPROXY_TEST_STORE_KEY",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
  config::Config cfg;
  cfg.store.data_path = (dir / "store.db").string();
  cfg.store.key_env = "SPROXY_TEST_STORE_KEY";
  cfg.store.key_file = (dir / "store.key").string();

  auto upstream = make_upstream(cfg);

  EXPECT_EQ(upstream->describe(), "embedded");
  EXPECT_NE(dynamic_cast<EmbeddedUpstream*>(upstream.get()), nullptr);
  upstream.reset();
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------------------------------
// TLS, with a CA and server certificates made at test time

using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (!ext) throw std::runtime_error(std::string("bad test certificate extension ") + value);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

struct KeyAndCert {
  PkeyPtr key{nullptr, EVP_PKEY_free};
  X509Ptr cert{nullptr, X509_free};

  std::string cert_pem() const {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
    PEM_write_bio_X509(bio.get(), cert.get());
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(n));
  }
  std::string key_pem() const {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
    PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<std::size_t>(n));
  }
};

// `issuer` null: a self-signed CA. Otherwise a server certificate with `san`.
KeyAndCert make_certificate(const std::string& common_name, const KeyAndCert* issuer,
                            const char* san) {
  static std::atomic<long> serial{1000};
  KeyAndCert out;
  out.key.reset(EVP_EC_gen("P-256"));
  out.cert.reset(X509_new());
  if (!out.key || !out.cert) throw std::runtime_error("cannot create test key or certificate");
  X509* cert = out.cert.get();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
  X509_set_pubkey(cert, out.key.get());
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                             0);
  X509* issuer_cert = issuer ? issuer->cert.get() : cert;
  X509_set_issuer_name(cert, X509_get_subject_name(issuer_cert));
  add_extension(cert, issuer_cert, NID_subject_key_identifier, "hash");
  if (!issuer) {
    add_extension(cert, issuer_cert, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert, issuer_cert, NID_authority_key_identifier, "keyid:always");
    add_extension(cert, issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert, issuer_cert, NID_key_usage, "critical,digitalSignature");
    add_extension(cert, issuer_cert, NID_ext_key_usage, "serverAuth");
    add_extension(cert, issuer_cert, NID_subject_alt_name, san);
  }
  EVP_PKEY* signer = issuer ? issuer->key.get() : out.key.get();
  if (X509_sign(cert, signer, EVP_sha256()) == 0) throw std::runtime_error("cannot sign test cert");
  return out;
}

class HttpUpstreamTls : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fresh_temp_dir("tls");
    ca_ = make_certificate("sproxy test CA", nullptr, nullptr);
    other_ca_ = make_certificate("sproxy unrelated CA", nullptr, nullptr);
    write(dir_ / "ca.pem", ca_.cert_pem());
    write(dir_ / "other_ca.pem", other_ca_.cert_pem());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static void write(const std::filesystem::path& p, const std::string& text) {
    std::ofstream(p, std::ios::binary) << text;
  }

  std::shared_ptr<asio::ssl::context> server_context(const char* san) {
    KeyAndCert leaf = make_certificate("sproxy test server", &ca_, san);
    auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
    const std::string chain = leaf.cert_pem();
    const std::string key = leaf.key_pem();
    ctx->use_certificate_chain(asio::buffer(chain));
    ctx->use_private_key(asio::buffer(key), asio::ssl::context::pem);
    return ctx;
  }

  HttpUpstreamOptions tls_options(const ScriptedHttpServer& server, std::string host,
                                  const char* ca_file = "ca.pem") {
    HttpUpstreamOptions o;
    o.base_url =
        parse_base_url("https://" + host + ":" + std::to_string(server.port()) + "/client/v4");
    o.token = kToken;
    o.request_timeout = 5s;
    o.tls_ca_file = (dir_ / ca_file).string();
    return o;
  }

  std::filesystem::path dir_;
  KeyAndCert ca_;
  KeyAndCert other_ca_;
};

TEST_F(HttpUpstreamTls, TalksToAServerWhoseChainAndIpAddressVerify) {
  ScriptedHttpServer server(ok_script(), server_context("IP:127.0.0.1"));
  HttpUpstream upstream(tls_options(server, "127.0.0.1"));
  asio::io_context io;

  auto first = run_call(io, upstream, get());
  auto second = run_call(io, upstream, get());

  ASSERT_TRUE(first.has_value()) << first.error().message();
  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(first->body, kOkBody);
  ASSERT_EQ(server.request_count(), 2u);
  EXPECT_EQ(server.requests()[0].header("Authorization"), std::string("Bearer ") + kToken);
  EXPECT_EQ(server.requests()[0].tls_server_name, "");  // no SNI for an IP literal
  EXPECT_EQ(server.accepted_connections(), 1u);         // kept alive over TLS too
}

TEST_F(HttpUpstreamTls, SendsSniAndVerifiesTheHostName) {
  ScriptedHttpServer server(ok_script(), server_context("DNS:localhost"));
  HttpUpstream upstream(tls_options(server, "localhost"));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  ASSERT_TRUE(result.has_value()) << result.error().message();
  ASSERT_EQ(server.request_count(), 1u);
  EXPECT_EQ(server.requests()[0].tls_server_name, "localhost");
  EXPECT_EQ(server.requests()[0].header("Host"), "localhost:" + std::to_string(server.port()));
}

TEST_F(HttpUpstreamTls, RefusesACertificateFromAnUnknownCaBeforeSendingAnything) {
  ScriptedHttpServer server(ok_script(), server_context("IP:127.0.0.1"));
  HttpUpstream upstream(tls_options(server, "127.0.0.1", "other_ca.pem"));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::tls_error);
  EXPECT_EQ(server.request_count(), 0u);
}

TEST_F(HttpUpstreamTls, RefusesACertificateForAnotherHostBeforeSendingAnything) {
  ScriptedHttpServer server(ok_script(), server_context("DNS:api.example.com"));
  HttpUpstream upstream(tls_options(server, "127.0.0.1"));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::tls_error);
  EXPECT_EQ(server.request_count(), 0u);
}

TEST_F(HttpUpstreamTls, RetriesAStaleTlsConnectionOnAFreshOne) {
  Script script = [](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, kOkBody);
    r.kind = Kind::respond_then_close;
    return r;
  };
  ScriptedHttpServer server(script, server_context("IP:127.0.0.1"));
  HttpUpstream upstream(tls_options(server, "127.0.0.1"));
  asio::io_context io;

  ASSERT_TRUE(run_call(io, upstream, get()).has_value());
  ASSERT_TRUE(server.wait_until([&] { return server.open_connections() == 0; }));
  auto second = run_call(io, upstream, get());

  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(server.accepted_connections(), 2u);
  EXPECT_EQ(server.request_count(), 2u);
}

TEST_F(HttpUpstreamTls, RefusesAPlainHttpPeerAsATlsError) {
  ScriptedHttpServer plain(ok_script());
  HttpUpstream upstream(tls_options(plain, "127.0.0.1"));
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::tls_error);
}

TEST_F(HttpUpstreamTls, RefusesAnUnloadableCaFileAtStartUp) {
  HttpUpstreamOptions o;
  o.base_url = parse_base_url("https://127.0.0.1:9/client/v4");
  o.token = kToken;
  o.tls_ca_file = (dir_ / "absent.pem").string();
  EXPECT_THROW(HttpUpstream{o}, std::runtime_error);
}

}  // namespace
}  // namespace sproxy::upstream
