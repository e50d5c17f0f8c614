// HttpUpstream's connection pool: keep-alive reuse, preconnect, bounds and waiters, one pool
// per io_context, and the retry of a stale keep-alive connection.
#include "tests/upstream/http_upstream_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace http_testing;

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

}  // namespace
}  // namespace sproxy::upstream
