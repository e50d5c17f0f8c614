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
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/scripted_http_server.hpp"
#include "upstream/embedded_store.hpp"
#include "upstream/embedded_upstream.hpp"
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

// A scripted loopback server, an HttpUpstream pointed at it and one io_context to call
// on: the set-up of most tests here.
struct ScriptedUpstream {
  using MakeOptions = std::function<HttpUpstreamOptions(const ScriptedHttpServer&)>;
  using Adjust = std::function<void(HttpUpstreamOptions&)>;

  // Options from `make_options` (default: options_for) and a TLS server when `tls` is set.
  ScriptedUpstream(Script script, std::shared_ptr<asio::ssl::context> tls, MakeOptions make_options)
      : server(std::move(script), std::move(tls)), upstream(make_options(server)) {}
  // options_for(server), changed by `adjust`.
  explicit ScriptedUpstream(Script script, const Adjust& adjust = {})
      : ScriptedUpstream(std::move(script), nullptr, [&adjust](const ScriptedHttpServer& s) {
          auto o = options_for(s);
          if (adjust) adjust(o);
          return o;
        }) {}

  CallResult call(ApiRequest request = get()) { return run_call(io, upstream, std::move(request)); }
  std::vector<CallResult> call_all(std::vector<ApiRequest> requests) {
    return run_calls(io, upstream, std::move(requests));
  }

  ScriptedHttpServer server;
  HttpUpstream upstream;
  asio::io_context io;
};

// A loopback port with nothing listening on it.
std::uint16_t closed_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, {asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();
}

// Options for an upstream on a loopback port where nothing listens.
HttpUpstreamOptions unreachable_options() {
  HttpUpstreamOptions opts;
  opts.base_url =
      parse_base_url("http://127.0.0.1:" + std::to_string(closed_port()) + "/client/v4");
  opts.token = kToken;
  return opts;
}

// ---------------------------------------------------------------------------------------
// Forwarding

TEST(HttpUpstream, ForwardsMethodTargetAndBodyWithTheProxysOwnCredential) {
  ScriptedUpstream s([](const ReceivedRequest&) {
    return ScriptedReply::json(
        200, R"({"success":true,"errors":[],"messages":[],"result":[{"id":"x"}]})");
  });
  ApiRequest req;
  req.method = Method::post;
  req.target = std::string(kStoresTarget) + "/s1/secrets";
  req.body = R"([{"name":"A","value":"v","scopes":["workers"]}])";

  auto result = s.call(req);

  ASSERT_TRUE(result.has_value()) << result.error().message();
  EXPECT_EQ(result->status, 200u);
  EXPECT_EQ(result->body, R"({"success":true,"errors":[],"messages":[],"result":[{"id":"x"}]})");
  auto seen = s.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, req.target);
  EXPECT_EQ(seen[0].body, req.body);
  EXPECT_EQ(seen[0].header("Authorization"), std::string("Bearer ") + kToken);
  EXPECT_EQ(seen[0].header("Host"), "127.0.0.1:" + std::to_string(s.server.port()));
  EXPECT_EQ(seen[0].header("User-Agent"), "secrets-proxy");
  EXPECT_EQ(seen[0].header("Accept"), "application/json");
  EXPECT_EQ(seen[0].header("Content-Type"), "application/json");
  EXPECT_EQ(seen[0].header("Content-Length"), std::to_string(req.body.size()));
}

TEST(HttpUpstream, SendsNoContentTypeWhenTheRequestHasNoBody) {
  ScriptedUpstream s(ok_script());
  ApiRequest req = get();
  req.method = Method::del;
  req.target += "/s1?force=true";

  auto result = s.call(req);

  ASSERT_TRUE(result.has_value()) << result.error().message();
  auto seen = s.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "DELETE");
  EXPECT_EQ(seen[0].target, req.target);
  EXPECT_EQ(seen[0].header("Content-Type"), std::nullopt);
  EXPECT_EQ(seen[0].header("Authorization"), std::string("Bearer ") + kToken);
}

TEST(HttpUpstream, ForwardsUnderTheBaseUrlPathPrefix) {
  ScriptedUpstream s(ok_script(), nullptr, [](const ScriptedHttpServer& server) {
    return options_for(server, "/edge/tenant-1/client/v4");
  });

  auto result = s.call(get(std::string(kStoresTarget) + "?page=2&per_page=5"));

  ASSERT_TRUE(result.has_value()) << result.error().message();
  auto seen = s.server.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].target,
            "/edge/tenant-1/client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/"
            "stores?page=2&per_page=5");
}

TEST(HttpUpstream, RefusesATargetOutsideClientV4WithoutContactingTheUpstream) {
  ScriptedUpstream s(ok_script());

  auto outside = s.call(get("/admin/purge"));
  auto lookalike = s.call(get("/client/v4x/accounts"));
  auto injected = s.call(get("/client/v4/accounts HTTP/1.1\r\nX-Evil: 1"));
  ApiRequest other = get();
  other.method = Method::other;
  auto unknown_method = s.call(other);

  EXPECT_EQ(outside.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(lookalike.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(injected.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(unknown_method.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(s.server.accepted_connections(), 0u);
}

TEST(HttpUpstream, DescribesItselfByItsNormalizedBaseUrl) {
  ScriptedUpstream s(ok_script(), nullptr, [](const ScriptedHttpServer& server) {
    return options_for(server, "/edge/client/v4/");
  });
  EXPECT_EQ(s.upstream.describe(),
            "http://127.0.0.1:" + std::to_string(s.server.port()) + "/edge/client/v4");
}

// ---------------------------------------------------------------------------------------
// Status and headers pass through

TEST(HttpUpstream, PassesA429ThroughWithRetryAfterAndRateLimitHeaders) {
  const std::string body =
      R"({"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}],"messages":[],"result":null})";
  ScriptedUpstream s([&](const ReceivedRequest&) {
    return ScriptedReply::json(429, body)
        .with_header("Retry-After", "30")
        .with_header("Ratelimit", "\"default\";r=0;t=30")
        .with_header("Ratelimit-Policy", "\"burst\";q=1200;w=300");
  });

  auto result = s.call();

  ASSERT_TRUE(result.has_value()) << result.error().message();
  EXPECT_EQ(result->status, 429u);
  EXPECT_EQ(result->body, body);
  EXPECT_EQ(result->retry_after, "30");
  EXPECT_EQ(result->ratelimit, "\"default\";r=0;t=30");
  EXPECT_EQ(result->ratelimit_policy, "\"burst\";q=1200;w=300");
}

TEST(HttpUpstream, PassesA5xxThroughAsAnAnswerNotATransportError) {
  ScriptedUpstream s([](const ReceivedRequest&) {
    return ScriptedReply::json(503, R"({"success":false,"errors":[{"code":1002,"message":"x"}]})")
        .with_header("Retry-After", "5");
  });

  auto result = s.call();

  ASSERT_TRUE(result.has_value()) << result.error().message();
  EXPECT_EQ(result->status, 503u);
  EXPECT_EQ(result->retry_after, "5");
  EXPECT_EQ(result->ratelimit, std::nullopt);
}

TEST(HttpUpstream, ReadsAChunkedResponseBody) {
  ScriptedUpstream s([](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, kOkBody);
    r.chunked = true;
    return r;
  });

  auto first = s.call();
  auto second = s.call();

  ASSERT_TRUE(first.has_value()) << first.error().message();
  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(first->body, kOkBody);
  EXPECT_EQ(s.server.accepted_connections(), 1u);
}

// ---------------------------------------------------------------------------------------
// Connection pool

TEST(HttpUpstream, ReusesOneKeepAliveConnectionForSequentialCalls) {
  ScriptedUpstream s(ok_script());

  for (int i = 0; i < 25; ++i) {
    auto result = s.call();
    ASSERT_TRUE(result.has_value()) << "call " << i << ": " << result.error().message();
  }

  EXPECT_EQ(s.server.request_count(), 25u);
  EXPECT_EQ(s.server.accepted_connections(), 1u);
}

// Runs upstream.preconnect(n) on `io` and returns how many it opened.
std::size_t run_preconnect(asio::io_context& io, Upstream& upstream, std::size_t n) {
  std::optional<std::size_t> opened;
  asio::co_spawn(io, upstream.preconnect(n), [&opened](std::exception_ptr e, std::size_t k) {
    if (e) std::rethrow_exception(e);
    opened = k;
  });
  io.restart();
  io.run();
  if (!opened) throw std::logic_error("preconnect did not complete");
  return *opened;
}

TEST(HttpUpstream, PreconnectsIdleConnectionsThatTheFirstCallsUse) {
  ScriptedUpstream s(ok_script());

  EXPECT_EQ(run_preconnect(s.io, s.upstream, 2), 2u);
  EXPECT_TRUE(s.server.wait_until([&] { return s.server.accepted_connections() == 2; }));
  EXPECT_EQ(s.server.request_count(), 0u);  // opening a connection sends nothing

  // Two concurrent calls take the two open connections: no new one.
  auto results = s.call_all({get(), get()});
  for (auto& r : results) ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(s.server.accepted_connections(), 2u);
  // Again: the idle ones are counted, not opened twice.
  EXPECT_EQ(run_preconnect(s.io, s.upstream, 2), 2u);
  EXPECT_EQ(s.server.accepted_connections(), 2u);
}

TEST(HttpUpstream, PreconnectsNoMoreThanTheConnectionBound) {
  ScriptedUpstream s(ok_script(), [](HttpUpstreamOptions& o) { o.max_connections = 3; });

  EXPECT_EQ(run_preconnect(s.io, s.upstream, 10), 3u);
  EXPECT_TRUE(s.server.wait_until([&] { return s.server.accepted_connections() == 3; }));
  EXPECT_TRUE(s.call().has_value());
  EXPECT_EQ(s.server.accepted_connections(), 3u);
}

TEST(HttpUpstream, PreconnectToAnUnreachableUpstreamOpensNoneAndCallsStillWork) {
  HttpUpstream upstream(unreachable_options());
  asio::io_context io;

  EXPECT_EQ(run_preconnect(io, upstream, 2), 0u);
  EXPECT_EQ(run_call(io, upstream, get()).error(), UpstreamErrc::unreachable);
}

TEST(HttpUpstream, ClosesIdleConnectionsOlderThanMaxIdleInsteadOfReusingThem) {
  ScriptedUpstream s(ok_script(), [](HttpUpstreamOptions& o) {
    o.max_idle = 0ms;  // every idle connection is already too old at the next call
  });

  for (int i = 0; i < 3; ++i) ASSERT_TRUE(s.call().has_value());

  EXPECT_EQ(s.server.accepted_connections(), 3u);
  EXPECT_TRUE(s.server.wait_until([&] { return s.server.open_connections() == 1; }));
}

TEST(HttpUpstream, OpensANewConnectionWhenTheServerAsksToClose) {
  ScriptedUpstream s([](const ReceivedRequest&) {
    return ScriptedReply::json(200, kOkBody).with_header("Connection", "close");
  });

  auto first = s.call();
  auto second = s.call();

  ASSERT_TRUE(first.has_value()) << first.error().message();
  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(s.server.accepted_connections(), 2u);
  EXPECT_EQ(s.server.request_count(), 2u);
}

TEST(HttpUpstream, NeverOpensMoreConnectionsThanTheBoundAndCompletesEveryCall) {
  ScriptedUpstream s(
      [](const ReceivedRequest&) { return ScriptedReply::json(200, kOkBody).after(20ms); },
      [](HttpUpstreamOptions& o) { o.max_connections = 2; });

  auto results = s.call_all(std::vector<ApiRequest>(12, get()));

  for (const auto& r : results) ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(s.server.request_count(), 12u);
  EXPECT_LE(s.server.peak_open_connections(), 2u);
  EXPECT_LE(s.server.accepted_connections(), 2u);
}

TEST(HttpUpstream, RefusesCallersBeyondTheWaiterLimitAsOverloaded) {
  ScriptedUpstream s(
      [](const ReceivedRequest&) { return ScriptedReply::json(200, kOkBody).after(30ms); },
      [](HttpUpstreamOptions& o) {
        o.max_connections = 1;
        o.max_waiters = 1;
      });

  // Started in order on one thread: the first takes the only slot, the second waits,
  // the third finds the waiting line full.
  auto results = s.call_all(std::vector<ApiRequest>(3, get()));

  ASSERT_TRUE(results[0].has_value()) << results[0].error().message();
  ASSERT_TRUE(results[1].has_value()) << results[1].error().message();
  EXPECT_EQ(results[2].error(), UpstreamErrc::overloaded);
  EXPECT_EQ(s.server.accepted_connections(), 1u);
}

TEST(HttpUpstream, BoundsTheWaitForAConnectionByTheRequestDeadline) {
  ScriptedUpstream s([](const ReceivedRequest&) { return ScriptedReply::of(Kind::never_respond); },
                     [](HttpUpstreamOptions& o) {
                       o.max_connections = 1;
                       o.request_timeout = 200ms;
                     });

  const auto start = Clock::now();
  auto results = s.call_all(std::vector<ApiRequest>(3, get()));
  const auto elapsed = Clock::now() - start;

  EXPECT_EQ(results[0].error(), UpstreamErrc::timeout);
  for (const auto& r : results) {
    ASSERT_FALSE(r.has_value());
    EXPECT_TRUE(r.error() == UpstreamErrc::timeout || r.error() == UpstreamErrc::overloaded)
        << r.error().message();
  }
  EXPECT_LT(elapsed, 2s);
  EXPECT_EQ(s.server.peak_open_connections(), 1u);
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
  ScriptedUpstream s([](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, kOkBody);
    r.kind = Kind::respond_then_close;
    return r;
  });

  auto first = s.call();
  ASSERT_TRUE(first.has_value()) << first.error().message();
  ASSERT_TRUE(s.server.wait_until([&] { return s.server.open_connections() == 0; }));
  auto second = s.call();

  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(second->body, kOkBody);
  EXPECT_EQ(s.server.accepted_connections(), 2u);
  EXPECT_EQ(s.server.request_count(), 2u);
}

TEST(HttpUpstream, RetriesAStaleConnectionAtMostOnce) {
  ScriptedUpstream s([](const ReceivedRequest& r) {
    if (r.index == 0) {
      auto reply = ScriptedReply::json(200, kOkBody);
      reply.kind = Kind::respond_then_close;
      return reply;
    }
    return ScriptedReply::of(Kind::close_without_response);
  });

  ASSERT_TRUE(s.call().has_value());
  ASSERT_TRUE(s.server.wait_until([&] { return s.server.open_connections() == 0; }));
  auto second = s.call();

  EXPECT_EQ(second.error(), UpstreamErrc::connection_reset);
  EXPECT_EQ(s.server.accepted_connections(), 2u);
  EXPECT_EQ(s.server.request_count(), 2u);
}

ApiRequest post_secret() {
  ApiRequest r;
  r.method = Method::post;
  r.target = std::string(kStoresTarget) + "/s1/secrets";
  r.body = R"([{"name":"A","value":"v","scopes":["workers"]}])";
  return r;
}

TEST(HttpUpstream, SendsAWriteOnAFreshConnectionWhenTheIdleOneWasClosedByThePeer) {
  ScriptedUpstream s([](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, kOkBody);
    r.kind = Kind::respond_then_close;
    return r;
  });

  ASSERT_TRUE(s.call().has_value());
  ASSERT_TRUE(s.server.wait_until([&] { return s.server.open_connections() == 0; }));
  auto write = s.call(post_secret());

  ASSERT_TRUE(write.has_value()) << write.error().message();
  EXPECT_EQ(s.server.accepted_connections(), 2u);
  EXPECT_EQ(s.server.request_count(), 2u);  // the write was sent once
}

TEST(HttpUpstream, NeverSendsAWriteAgainOnceTheUpstreamMayHaveReceivedIt) {
  ScriptedUpstream s([](const ReceivedRequest& r) {
    if (r.index == 0) return ScriptedReply::json(200, kOkBody);  // keeps the connection
    return ScriptedReply::of(Kind::close_without_response);
  });

  ASSERT_TRUE(s.call().has_value());
  auto write = s.call(post_secret());

  // The request was written on a live connection and then the connection broke: it may
  // have been applied, so it is reported, not repeated.
  EXPECT_EQ(write.error(), UpstreamErrc::connection_reset);
  EXPECT_EQ(s.server.request_count(), 2u);
  EXPECT_EQ(s.server.accepted_connections(), 1u);
}

TEST(HttpUpstream, DoesNotRetryWhenAFreshConnectionIsClosedWithoutAnswer) {
  ScriptedUpstream s(
      [](const ReceivedRequest&) { return ScriptedReply::of(Kind::close_without_response); });

  auto result = s.call();

  EXPECT_EQ(result.error(), UpstreamErrc::connection_reset);
  EXPECT_EQ(s.server.accepted_connections(), 1u);
  EXPECT_EQ(s.server.request_count(), 1u);
}

// ---------------------------------------------------------------------------------------
// Transport failures

// The error of one call whose response is `raw` (then the connection closes).
boost::system::error_code error_of_a_call_answered_with(std::string raw) {
  ScriptedUpstream s([raw](const ReceivedRequest&) { return ScriptedReply::raw_bytes(raw); });
  auto result = s.call();
  return result.has_value() ? boost::system::error_code{} : result.error();
}

TEST(HttpUpstream, ReportsARefusedConnectionAsUnreachable) {
  HttpUpstream upstream(unreachable_options());
  asio::io_context io;

  auto result = run_call(io, upstream, get());

  EXPECT_EQ(result.error(), UpstreamErrc::unreachable);
}

TEST(HttpUpstream, TimesOutAServerThatNeverAnswers) {
  ScriptedUpstream s([](const ReceivedRequest&) { return ScriptedReply::of(Kind::never_respond); },
                     [](HttpUpstreamOptions& o) { o.request_timeout = 200ms; });

  const auto start = Clock::now();
  auto result = s.call();
  const auto elapsed = Clock::now() - start;

  EXPECT_EQ(result.error(), UpstreamErrc::timeout);
  EXPECT_GE(elapsed, 190ms);
  EXPECT_LT(elapsed, 2s);
  EXPECT_EQ(s.server.request_count(), 1u);
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
  ScriptedUpstream s([](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, std::string(2000, 'x'));
    r.kind = Kind::reset_mid_response;
    return r;
  });

  auto result = s.call();

  EXPECT_EQ(result.error(), UpstreamErrc::connection_reset);
  EXPECT_EQ(s.server.accepted_connections(), 1u);
}

TEST(HttpUpstream, ReportsACloseMidBodyAsConnectionReset) {
  EXPECT_EQ(
      error_of_a_call_answered_with("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"success\":"),
      UpstreamErrc::connection_reset);
}

TEST(HttpUpstream, ReportsAPeerThatDoesNotSpeakHttpAsBadResponse) {
  EXPECT_EQ(error_of_a_call_answered_with("SSH-2.0-OpenSSH_9.2\r\n\r\n"),
            UpstreamErrc::bad_response);
}

TEST(HttpUpstream, RejectsAResponseBodyAboveTheCapAsBadResponse) {
  ScriptedUpstream s(
      [](const ReceivedRequest& r) {
        auto reply = ScriptedReply::json(200, std::string(4096, 'x'));
        reply.chunked = r.index % 2 == 1;
        return reply;
      },
      [](HttpUpstreamOptions& o) { o.max_response_bytes = 1024; });

  auto with_length = s.call();
  auto chunked = s.call();

  EXPECT_EQ(with_length.error(), UpstreamErrc::bad_response);
  EXPECT_EQ(chunked.error(), UpstreamErrc::bad_response);
}

TEST(HttpUpstream, RejectsADeclaredBodyAboveTheDefaultSixteenMebibyteCap) {
  EXPECT_EQ(error_of_a_call_answered_with("HTTP/1.1 200 OK\r\nContent-Length: 16777217\r\n\r\n{"),
            UpstreamErrc::bad_response);
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
// Email + global API key credential

constexpr const char* kEmail = "ops@example.com";
constexpr const char* kApiKey = "c2547eb745079dac9320b638f5e225cf483cc5cfdda41";

// The error message of constructing an HttpUpstream with `opts` ("(accepted)" if none).
std::string constructor_error(const HttpUpstreamOptions& opts) {
  try {
    HttpUpstream upstream(opts);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(HttpUpstream, SendsTheEmailAndGlobalApiKeyHeadersAndNoAuthorization) {
  ScriptedUpstream s(ok_script(), [](HttpUpstreamOptions& o) {
    o.token.clear();
    o.email = kEmail;
    o.api_key = kApiKey;
  });

  auto read = s.call();
  auto write = s.call(post_secret());

  ASSERT_TRUE(read.has_value()) << read.error().message();
  ASSERT_TRUE(write.has_value()) << write.error().message();
  ASSERT_EQ(s.server.request_count(), 2u);
  for (const auto& seen : s.server.requests()) {
    EXPECT_EQ(seen.header("X-Auth-Email"), kEmail);
    EXPECT_EQ(seen.header("X-Auth-Key"), kApiKey);
    EXPECT_EQ(seen.header("Authorization"), std::nullopt);
  }
}

TEST(HttpUpstream, SendsNoKeyHeadersWithAnApiToken) {
  ScriptedUpstream s(ok_script());

  ASSERT_TRUE(s.call().has_value());

  const auto seen = s.server.requests().at(0);
  EXPECT_EQ(seen.header("Authorization"), std::string("Bearer ") + kToken);
  EXPECT_EQ(seen.header("X-Auth-Email"), std::nullopt);
  EXPECT_EQ(seen.header("X-Auth-Key"), std::nullopt);
}

TEST(HttpUpstream, RefusesBothCredentialKindsOrHalfAPairWithoutNamingTheValues) {
  HttpUpstreamOptions opts;
  opts.base_url = parse_base_url("http://127.0.0.1:9/client/v4");
  opts.token = kToken;
  opts.email = kEmail;
  opts.api_key = kApiKey;
  EXPECT_THAT(constructor_error(opts), HasSubstr("not both"));
  opts.token.clear();
  opts.api_key.clear();
  EXPECT_THAT(constructor_error(opts), HasSubstr("the global API key is empty"));
  opts.email.clear();
  opts.api_key = kApiKey;
  EXPECT_THAT(constructor_error(opts), HasSubstr("the account email is empty"));
  opts.email = kEmail;
  opts.api_key = std::string(kApiKey) + "\r\nX-Evil: 1";
  const std::string broken_key = constructor_error(opts);
  EXPECT_THAT(broken_key, HasSubstr("global API key contains characters"));
  opts.api_key = kApiKey;
  opts.email = "ops@example.com\nX-Evil: 1";
  EXPECT_THAT(constructor_error(opts), HasSubstr("account email contains characters"));
  for (const std::string& message : {broken_key, constructor_error(opts)}) {
    EXPECT_THAT(message, Not(HasSubstr(kApiKey)));
    EXPECT_THAT(message, Not(HasSubstr(kEmail)));
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

constexpr const char* kTokenEnv = "SPROXY_TEST_UPSTREAM_TOKEN";
constexpr const char* kNothingListens = "http://127.0.0.1:9/client/v4";

// An http upstream config; the token from the environment variable `token_env` unless
// that is empty.
config::Config http_config(std::string base_url = kNothingListens,
                           std::string token_env = kTokenEnv) {
  config::Config cfg;
  cfg.upstream.kind = config::UpstreamKind::http;
  cfg.upstream.base_url = std::move(base_url);
  cfg.upstream.token_env = std::move(token_env);
  return cfg;
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
  ScopedEnv env(kTokenEnv, "  env-token-42\n");
  config::Config cfg = http_config(server.base_url());

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
  ScopedEnv env(kTokenEnv, nullptr);
  config::Config cfg = http_config(server.base_url());
  cfg.upstream.token_file = (dir / "token").string();

  auto upstream = make_upstream(cfg);
  asio::io_context io;
  ASSERT_TRUE(run_call(io, *upstream, get()).has_value());

  EXPECT_EQ(server.requests().at(0).header("Authorization"), "Bearer file-token-9");
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, NamesTheEnvironmentVariableWhenTheCredentialIsMissing) {
  ScopedEnv env(kTokenEnv, nullptr);
  config::Config cfg = http_config();

  EXPECT_THAT(factory_error(cfg), HasSubstr(kTokenEnv));
}

TEST(MakeUpstream, NamesTheTokenFileWhenItCannotBeReadOrIsEmpty) {
  auto dir = fresh_temp_dir("token_missing");
  config::Config cfg = http_config(kNothingListens, "");
  cfg.upstream.token_file = (dir / "absent").string();
  EXPECT_THAT(factory_error(cfg), HasSubstr((dir / "absent").string()));

  { std::ofstream(dir / "empty") << " \n"; }
  cfg.upstream.token_file = (dir / "empty").string();
  EXPECT_THAT(factory_error(cfg), HasSubstr("is empty"));
  std::filesystem::remove_all(dir);
}

constexpr const char* kEmailEnv = "SPROXY_TEST_UPSTREAM_EMAIL";
constexpr const char* kApiKeyEnv = "SPROXY_TEST_UPSTREAM_API_KEY";

// An http upstream config with the email + global API key credential from the
// environment variables kEmailEnv and kApiKeyEnv.
config::Config key_pair_config(std::string base_url = kNothingListens) {
  config::Config cfg = http_config(std::move(base_url), "");
  cfg.upstream.email_env = kEmailEnv;
  cfg.upstream.api_key_env = kApiKeyEnv;
  return cfg;
}

TEST(MakeUpstream, BuildsAnHttpUpstreamThatSendsTheEmailAndKeyFromTheEnvironment) {
  ScriptedHttpServer server(ok_script());
  ScopedEnv email(kEmailEnv, " ops@example.com\n");
  ScopedEnv key(kApiKeyEnv, kApiKey);

  auto upstream = make_upstream(key_pair_config(server.base_url()));
  asio::io_context io;
  auto result = run_call(io, *upstream, get());

  ASSERT_TRUE(result.has_value()) << result.error().message();
  ASSERT_EQ(server.request_count(), 1u);
  EXPECT_EQ(server.requests()[0].header("X-Auth-Email"), kEmail);
  EXPECT_EQ(server.requests()[0].header("X-Auth-Key"), kApiKey);
  EXPECT_EQ(server.requests()[0].header("Authorization"), std::nullopt);
}

TEST(MakeUpstream, ReadsTheEmailAndKeyFromFilesWhenTheVariablesAreUnset) {
  ScriptedHttpServer server(ok_script());
  auto dir = fresh_temp_dir("key_pair_files");
  { std::ofstream(dir / "email") << kEmail << "\n"; }
  { std::ofstream(dir / "api_key") << kApiKey << "\n"; }
  ScopedEnv email(kEmailEnv, nullptr);
  ScopedEnv key(kApiKeyEnv, nullptr);
  config::Config cfg = key_pair_config(server.base_url());
  cfg.upstream.email_file = (dir / "email").string();
  cfg.upstream.api_key_file = (dir / "api_key").string();

  auto upstream = make_upstream(cfg);
  asio::io_context io;
  ASSERT_TRUE(run_call(io, *upstream, get()).has_value());

  EXPECT_EQ(server.requests().at(0).header("X-Auth-Email"), kEmail);
  EXPECT_EQ(server.requests().at(0).header("X-Auth-Key"), kApiKey);
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, RefusesATokenAndAnEmailAndKeyTogether) {
  ScopedEnv token(kTokenEnv, "t");
  ScopedEnv email(kEmailEnv, kEmail);
  ScopedEnv key(kApiKeyEnv, kApiKey);
  config::Config cfg = key_pair_config();
  cfg.upstream.token_env = kTokenEnv;

  const std::string message = factory_error(cfg);

  EXPECT_THAT(message, HasSubstr("upstream.token_env"));
  EXPECT_THAT(message, HasSubstr("upstream.api_key_env"));
  EXPECT_THAT(message, HasSubstr("not both"));
  EXPECT_THAT(message, Not(HasSubstr(kApiKey)));
}

TEST(MakeUpstream, NamesTheMissingHalfOfAnEmailAndKeyPair) {
  ScopedEnv key(kApiKeyEnv, kApiKey);
  config::Config only_key = http_config(kNothingListens, "");
  only_key.upstream.api_key_env = kApiKeyEnv;
  EXPECT_THAT(factory_error(only_key),
              HasSubstr("needs upstream.email_env or upstream.email_file"));

  config::Config only_email = http_config(kNothingListens, "");
  only_email.upstream.email_file = "/nonexistent/email";
  EXPECT_THAT(factory_error(only_email),
              HasSubstr("needs upstream.api_key_env or upstream.api_key_file"));
}

TEST(MakeUpstream, NamesTheUnsetVariableOrUnreadableFileButNeverTheKey) {
  auto dir = fresh_temp_dir("key_pair_missing");
  ScopedEnv email(kEmailEnv, kEmail);
  ScopedEnv key(kApiKeyEnv, nullptr);
  config::Config cfg = key_pair_config();
  EXPECT_THAT(factory_error(cfg), HasSubstr(std::string(kApiKeyEnv) + " (upstream.api_key_env)"));

  cfg.upstream.api_key_file = (dir / "absent").string();
  EXPECT_THAT(factory_error(cfg), HasSubstr("upstream.api_key_file " + (dir / "absent").string()));

  // A key that cannot go into a header is refused without being echoed.
  ScopedEnv bad_key(kApiKeyEnv, "secret-global-key\x01tail");
  const std::string message = factory_error(key_pair_config());
  EXPECT_THAT(message, HasSubstr("global API key"));
  EXPECT_THAT(message, Not(HasSubstr("secret-global-key")));
  EXPECT_THAT(message, Not(HasSubstr(kEmail)));
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, NamesBothCredentialKindsWhenNoneIsConfigured) {
  const std::string message = factory_error(http_config(kNothingListens, ""));
  EXPECT_THAT(message, HasSubstr("upstream.token_env"));
  EXPECT_THAT(message, HasSubstr("upstream.email_env"));
  EXPECT_THAT(message, HasSubstr("upstream.api_key_env"));
}

TEST(MakeUpstream, RejectsAMalformedBaseUrl) {
  ScopedEnv env(kTokenEnv, "t");
  config::Config cfg = http_config("http://127.0.0.1:9000/api");

  EXPECT_THAT(factory_error(cfg), HasSubstr("upstream.base_url"));
}

TEST(MakeUpstream, GuardsAnHttpUpstreamWithTheConfiguredLimits) {
  ScriptedHttpServer server(ok_script());
  ScopedEnv env(kTokenEnv, "t");
  config::Config cfg = http_config(server.base_url());
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
  ScopedEnv env(kTokenEnv, "t");
  config::Config cfg = http_config(server.base_url());
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
  ScopedEnv env(kTokenEnv, "t");
  config::UpstreamConfig cfg;
  cfg.kind = config::UpstreamKind::http;
  cfg.base_url = "https://127.0.0.1:9/client/v4";
  cfg.token_env = kTokenEnv;
  cfg.tls_ca_file = "/nonexistent/sproxy-test-ca.pem";

  EXPECT_EQ(http_upstream_options(cfg).tls_ca_file, "/nonexistent/sproxy-test-ca.pem");
  config::Config full;
  full.upstream = cfg;
  // The unloadable CA file is reported at start-up, so it did reach the TLS context.
  EXPECT_THAT(factory_error(full), HasSubstr("/nonexistent/sproxy-test-ca.pem"));
}

// An embedded-store config in `dir`, keyed by SPROXY_TEST_STORE_KEY (set it to
// kEmbeddedTestKey for the test's scope).
constexpr const char* kEmbeddedTestKey =
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
config::Config embedded_store_config(const std::filesystem::path& dir) {
  config::Config cfg;
  cfg.store.data_path = (dir / "store.db").string();
  cfg.store.key_env = "SPROXY_TEST_STORE_KEY";
  cfg.store.key_file = (dir / "store.key").string();
  return cfg;
}

TEST(MakeUpstream, DoesNotGuardTheEmbeddedStore) {
  auto dir = fresh_temp_dir("embedded_unguarded");
  ScopedEnv key("SPROXY_TEST_STORE_KEY", kEmbeddedTestKey);
  config::Config cfg = embedded_store_config(dir);
  cfg.upstream.rate_limit_requests = 1;

  auto upstream = make_upstream(cfg);

  EXPECT_EQ(std::dynamic_pointer_cast<GuardedUpstream>(upstream), nullptr);
  EXPECT_EQ(upstream->describe().find("guarded("), std::string::npos);
  upstream.reset();
  std::filesystem::remove_all(dir);
}

TEST(MakeUpstream, BuildsTheEmbeddedStoreByDefault) {
  auto dir = fresh_temp_dir("embedded");
  ScopedEnv key("SPROXY_TEST_STORE_KEY", kEmbeddedTestKey);
  config::Config cfg = embedded_store_config(dir);

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

// When a certificate is valid, relative to now.
struct Validity {
  std::chrono::seconds not_before{-3600};
  std::chrono::seconds not_after{24 * 3600};
};

// `issuer` null: a self-signed CA. Otherwise a server certificate with `san`.
KeyAndCert make_certificate(const std::string& common_name, const KeyAndCert* issuer,
                            const char* san, Validity validity = {}) {
  static std::atomic<long> serial{1000};
  KeyAndCert out;
  out.key.reset(EVP_EC_gen("P-256"));
  out.cert.reset(X509_new());
  if (!out.key || !out.cert) throw std::runtime_error("cannot create test key or certificate");
  X509* cert = out.cert.get();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert), static_cast<long>(validity.not_before.count()));
  X509_gmtime_adj(X509_getm_notAfter(cert), static_cast<long>(validity.not_after.count()));
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

  // A server context whose certificate, for `san`, is signed by the test CA.
  std::shared_ptr<asio::ssl::context> server_context(const char* san, Validity validity = {}) {
    KeyAndCert leaf = make_certificate("sproxy test server", &ca_, san, validity);
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

  // A TLS server presenting `server_tls`, and an upstream that trusts `ca_file` and
  // calls it by `host`.
  std::unique_ptr<ScriptedUpstream> tls_upstream(Script script,
                                                 std::shared_ptr<asio::ssl::context> server_tls,
                                                 std::string host, const char* ca_file = "ca.pem") {
    return std::make_unique<ScriptedUpstream>(
        std::move(script), std::move(server_tls),
        [&](const ScriptedHttpServer& server) { return tls_options(server, host, ca_file); });
  }

  // Checks a call that verification refused: a TLS error, no request on the wire, and
  // the server saw its handshake fail.
  static void expect_refused_before_any_request(ScriptedUpstream& s) {
    auto result = s.call();
    ASSERT_FALSE(result.has_value()) << "the call succeeded";
    EXPECT_EQ(result.error(), UpstreamErrc::tls_error);
    EXPECT_THAT(result.error().message(), HasSubstr("certificate verification failed"));
    EXPECT_EQ(s.server.request_count(), 0u);
    EXPECT_TRUE(s.server.wait_until([&] { return s.server.tls_handshake_failures() == 1; }));
  }

  std::filesystem::path dir_;
  KeyAndCert ca_;
  KeyAndCert other_ca_;
};

TEST_F(HttpUpstreamTls, TalksToAServerWhoseChainAndIpAddressVerify) {
  auto s = tls_upstream(ok_script(), server_context("IP:127.0.0.1"), "127.0.0.1");

  auto first = s->call();
  auto second = s->call();

  ASSERT_TRUE(first.has_value()) << first.error().message();
  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(first->body, kOkBody);
  ASSERT_EQ(s->server.request_count(), 2u);
  EXPECT_EQ(s->server.requests()[0].header("Authorization"), std::string("Bearer ") + kToken);
  EXPECT_EQ(s->server.requests()[0].tls_server_name, "");  // no SNI for an IP literal
  EXPECT_EQ(s->server.accepted_connections(), 1u);         // kept alive over TLS too
}

TEST_F(HttpUpstreamTls, SendsSniAndVerifiesTheHostName) {
  auto s = tls_upstream(ok_script(), server_context("DNS:localhost"), "localhost");

  auto result = s->call();

  ASSERT_TRUE(result.has_value()) << result.error().message();
  ASSERT_EQ(s->server.request_count(), 1u);
  EXPECT_EQ(s->server.requests()[0].tls_server_name, "localhost");
  EXPECT_EQ(s->server.requests()[0].header("Host"),
            "localhost:" + std::to_string(s->server.port()));
}

TEST_F(HttpUpstreamTls, RefusesACertificateFromAnUnknownCaBeforeSendingAnything) {
  auto s = tls_upstream(ok_script(), server_context("IP:127.0.0.1"), "127.0.0.1", "other_ca.pem");
  expect_refused_before_any_request(*s);
}

TEST_F(HttpUpstreamTls, RefusesACertificateForAnotherHostBeforeSendingAnything) {
  auto s = tls_upstream(ok_script(), server_context("DNS:api.example.com"), "127.0.0.1");
  expect_refused_before_any_request(*s);
}

TEST_F(HttpUpstreamTls, RefusesAnExpiredCertificateFromTheTrustedCaBeforeSendingAnything) {
  // Signed by the trusted CA, for the right address, but its validity ended a day ago.
  const Validity expired{-48h, -24h};
  auto s = tls_upstream(ok_script(), server_context("IP:127.0.0.1", expired), "127.0.0.1");
  expect_refused_before_any_request(*s);
}

TEST_F(HttpUpstreamTls, RefusesACertificateThatIsNotYetValidBeforeSendingAnything) {
  const Validity future{24h, 48h};
  auto s = tls_upstream(ok_script(), server_context("IP:127.0.0.1", future), "127.0.0.1");
  expect_refused_before_any_request(*s);
}

TEST_F(HttpUpstreamTls, RetriesAStaleTlsConnectionOnAFreshOne) {
  Script script = [](const ReceivedRequest&) {
    auto r = ScriptedReply::json(200, kOkBody);
    r.kind = Kind::respond_then_close;
    return r;
  };
  auto s = tls_upstream(script, server_context("IP:127.0.0.1"), "127.0.0.1");

  ASSERT_TRUE(s->call().has_value());
  ASSERT_TRUE(s->server.wait_until([&] { return s->server.open_connections() == 0; }));
  auto second = s->call();

  ASSERT_TRUE(second.has_value()) << second.error().message();
  EXPECT_EQ(s->server.accepted_connections(), 2u);
  EXPECT_EQ(s->server.request_count(), 2u);
}

TEST_F(HttpUpstreamTls, RefusesAPlainHttpPeerAsATlsError) {
  auto s = tls_upstream(ok_script(), nullptr, "127.0.0.1");

  auto result = s->call();

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
