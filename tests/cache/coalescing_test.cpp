// Miss coalescing: concurrent misses for one key make one upstream request, bounded in
// waiters and in waiting time; waiters resume on their own executors.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/this_coro.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "tests/cache/cache_fixture.hpp"

namespace sproxy::cache::testing {
namespace {

namespace asio = boost::asio;

class CoalescingTest : public CacheFixture {};

// One io_context run by one thread, and what its readers observed.
struct Side {
  asio::io_context ioc;
  std::thread::id thread;
  std::atomic<int> done{0};
  std::atomic<int> on_own_thread{0};
  std::atomic<int> ok{0};
};

asio::awaitable<void> read_on_side(ReadThroughCache* cache, upstream::Route route, Side* side) {
  // A named local, not a braced temporary inside co_await: GCC 12 copies such a
  // temporary into the callee's frame bytewise, which a std::string member does not survive.
  ReadOptions options;
  Answer a = co_await cache->read(std::move(route), std::move(options), kT0);
  if (std::this_thread::get_id() == side->thread &&
      side->ioc.get_executor().running_in_this_thread()) {
    side->on_own_thread.fetch_add(1);
  }
  if (a.status == 200 && a.outcome == Outcome::miss) side->ok.fetch_add(1);
  side->done.fetch_add(1);
}

TEST_F(CoalescingTest, MakesOneUpstreamCallForAThousandConcurrentMisses) {
  const std::string secret = create_secret_directly("A");
  fake->hold(RouteKind::list_secrets);
  std::vector<std::shared_ptr<test::Spawned<Answer>>> readers;
  for (int i = 0; i < 1000; ++i) {
    // Half list, half get: both read the same whole-store snapshot key.
    const std::string path = i % 2 ? secrets_path() : secret_path(secret);
    readers.push_back(
        test::spawn(ioc.get_executor(), cache->read(route(Method::get, base() + path), {}, kT0)));
  }
  test::run_until(ioc, [&] { return fake->held() == 1; });
  test::run_ready(ioc);  // every reader reaches its wait
  EXPECT_EQ(cache->stats().coalesced_waits, 999u);
  fake->release();
  test::run_until(ioc, [&] {
    return std::all_of(readers.begin(), readers.end(), [](auto& r) { return r->done(); });
  });
  EXPECT_EQ(fake->calls(), 1u);
  const std::string list = direct(base() + secrets_path()).body;
  const std::string get = direct(base() + secret_path(secret)).body;
  for (int i = 0; i < 1000; ++i) {
    const Answer& a = readers[i]->get();
    ASSERT_EQ(a.status, 200u);
    ASSERT_EQ(a.outcome, Outcome::miss);
    ASSERT_EQ(*a.body, i % 2 ? list : get);
  }
  EXPECT_EQ(cache->stats().misses, 1000u);
  // And the result was stored once for everyone after them.
  EXPECT_EQ(read(secrets_path(), kT0).outcome, Outcome::hit);
  EXPECT_EQ(fake->calls(), 1u);
}

TEST_F(CoalescingTest, WakesWaitersOnTwoIoContextsEachOnItsOwnThread) {
  create_secret_directly("A");
  fake->hold(RouteKind::list_secrets);
  constexpr int kPerThread = 500;

  Side sides[2];
  std::vector<std::thread> threads;
  for (Side& s : sides) {
    for (int i = 0; i < kPerThread; ++i) {
      asio::co_spawn(s.ioc,
                     read_on_side(cache.get(), route(Method::get, base() + secrets_path()), &s),
                     asio::detached);
    }
  }
  std::atomic<int> started{0};
  for (Side& s : sides) {
    threads.emplace_back([&s, &started] {
      s.thread = std::this_thread::get_id();
      started.fetch_add(1);
      s.ioc.run();
    });
  }
  // Everyone is waiting on the one held fill: 999 joined, 1 leads.
  while (cache->stats().coalesced_waits < 2 * kPerThread - 1 || fake->held() < 1) {
    std::this_thread::yield();
  }
  EXPECT_EQ(fake->calls(), 1u);
  fake->release();
  for (auto& t : threads) t.join();
  for (Side& s : sides) {
    EXPECT_EQ(s.done.load(), kPerThread);
    EXPECT_EQ(s.ok.load(), kPerThread);
    EXPECT_EQ(s.on_own_thread.load(), kPerThread);
  }
  EXPECT_EQ(fake->calls(), 1u);
}

TEST_F(CoalescingTest, RefusesWaitersBeyondMaxWaitersWithServiceUnavailable) {
  cfg.max_waiters = 3;
  SetUp();
  fake->hold(RouteKind::get_quota);
  std::vector<std::shared_ptr<test::Spawned<Answer>>> readers;
  for (int i = 0; i < 5; ++i) {
    readers.push_back(test::spawn(ioc.get_executor(),
                                  cache->read(route(Method::get, base() + "/quota"), {}, kT0)));
  }
  test::run_until(ioc, [&] { return fake->held() == 1; });
  test::run_ready(ioc);
  fake->release();
  test::run_until(ioc, [&] {
    return std::all_of(readers.begin(), readers.end(), [](auto& r) { return r->done(); });
  });
  int ok = 0, refused = 0;
  for (auto& r : readers) {
    const Answer& a = r->get();
    if (a.status == 200) ++ok;
    if (a.status == 503) {
      ++refused;
      EXPECT_EQ(nlohmann::json::parse(*a.body)["errors"][0]["message"],
                "service_unavailable: too_many_waiters");
    }
  }
  EXPECT_EQ(ok, 3);
  EXPECT_EQ(refused, 2);
  EXPECT_EQ(fake->calls(), 1u);
}

TEST_F(CoalescingTest, GivesUpWaitingAfterMaxWaitWithGatewayTimeout) {
  cfg.max_wait_ms = 20;  // a real timer: the fill stays held until the test releases it
  SetUp();
  fake->hold(RouteKind::get_quota);
  auto reader =
      test::spawn(ioc.get_executor(), cache->read(route(Method::get, base() + "/quota"), {}, kT0));
  test::run_until(ioc, [&] { return reader->done(); });
  EXPECT_EQ(reader->get().status, 504u);
  EXPECT_EQ(*reader->get().body, upstream::envelope_error(upstream::errors::gateway_timeout()));
  // The fill itself carried on and, once answered, serves later reads.
  fake->release();
  test::run_until(ioc, [&] { return fake->held() == 0 && cache->stats().entries == 1; });
  EXPECT_EQ(read("/quota", kT0).outcome, Outcome::hit);
  EXPECT_EQ(fake->calls(), 1u);
}

TEST_F(CoalescingTest, ACancelledWaiterGivesUpAtOnceAndTheOthersStillGetTheFill) {
  fake->hold(RouteKind::get_quota);
  asio::cancellation_signal cancel;
  std::optional<Answer> cancelled;
  asio::co_spawn(ioc, cache->read(route(Method::get, base() + "/quota"), {}, kT0),
                 asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e, Answer a) {
                   if (!e) cancelled = std::move(a);
                 }));
  auto other =
      test::spawn(ioc.get_executor(), cache->read(route(Method::get, base() + "/quota"), {}, kT0));
  test::run_until(ioc, [&] { return fake->held() == 1; });
  test::run_ready(ioc);
  cancel.emit(asio::cancellation_type::terminal);
  test::run_until(ioc, [&] { return cancelled.has_value(); });
  EXPECT_EQ(cancelled->status, 504u);
  EXPECT_FALSE(other->done());
  fake->release();
  test::run_until(ioc, [&] { return other->done(); });
  EXPECT_EQ(other->get().status, 200u) << *other->get().body;
  EXPECT_EQ(other->get().outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(), 1u);
}

TEST_F(CoalescingTest, WaitersOfAnIoContextShutDownFirstDieWithItAndTheFillStillLands) {
  fake->hold(RouteKind::get_quota);
  // The fill runs on the fixture's io_context; the waiters on one that goes away first.
  auto leader =
      test::spawn(ioc.get_executor(), cache->read(route(Method::get, base() + "/quota"), {}, kT0));
  test::run_until(ioc, [&] { return fake->held() == 1; });
  {
    asio::io_context doomed;
    std::vector<std::shared_ptr<test::Spawned<Answer>>> waiters;
    for (int i = 0; i < 3; ++i) {
      waiters.push_back(test::spawn(doomed.get_executor(),
                                    cache->read(route(Method::get, base() + "/quota"), {}, kT0)));
    }
    test::run_ready(doomed);
    EXPECT_EQ(cache->stats().coalesced_waits, 3u);
    for (auto& w : waiters) EXPECT_FALSE(w->done());
  }  // the parked waiters' coroutines are destroyed with `doomed` (no leak, no wake-up)
  fake->release();
  test::run_until(ioc, [&] { return leader->done(); });
  EXPECT_EQ(leader->get().status, 200u);
  EXPECT_EQ(read("/quota", kT0).outcome, Outcome::hit);
  EXPECT_EQ(fake->calls(), 1u);
}

TEST_F(CoalescingTest, WaitersThatGaveUpFreeTheirPlacesAndAreNotWoken) {
  cfg.max_waiters = 3;
  cfg.max_wait_ms = 20;  // a real timer: the fill stays held until the test releases it
  SetUp();
  fake->hold(RouteKind::get_quota);
  auto spawn_readers = [&] {
    std::vector<std::shared_ptr<test::Spawned<Answer>>> readers;
    for (int i = 0; i < 3; ++i) {
      readers.push_back(test::spawn(ioc.get_executor(),
                                    cache->read(route(Method::get, base() + "/quota"), {}, kT0)));
    }
    return readers;
  };
  auto all_done = [](const auto& readers) {
    return std::all_of(readers.begin(), readers.end(), [](auto& r) { return r->done(); });
  };
  auto gave_up = spawn_readers();
  test::run_until(ioc, [&] { return all_done(gave_up); });
  for (auto& r : gave_up) EXPECT_EQ(r->get().status, 504u);

  // Their places are free again: three new readers join the same held fill.
  cfg.max_wait_ms = 60'000;
  cache->reconfigure(cfg);
  auto waiting = spawn_readers();
  test::run_ready(ioc);
  EXPECT_EQ(fake->held(), 1u);
  fake->release();
  test::run_until(ioc, [&] { return all_done(waiting); });
  for (auto& r : waiting) {
    EXPECT_EQ(r->get().status, 200u);
    EXPECT_EQ(r->get().outcome, Outcome::miss);
  }
  EXPECT_EQ(fake->calls(), 1u);
}

TEST_F(CoalescingTest, DoesNotTrapLaterReadersInAFillWhoseIoContextWasDestroyed) {
  cfg.max_wait_ms = 2'000;  // bounds this test should the dead flight be joined
  SetUp();
  fake->set_latency(std::chrono::hours(1));
  {
    asio::io_context doomed;
    auto abandoned = test::spawn(doomed.get_executor(),
                                 cache->read(route(Method::get, base() + "/quota"), {}, kT0));
    test::run_until(doomed, [&] { return fake->calls() == 1; });
    EXPECT_FALSE(abandoned->done());
  }  // the fill's frame dies with its io_context
  fake->set_latency(std::chrono::milliseconds(0));
  const Answer a = read("/quota", kT0);
  EXPECT_EQ(a.status, 200u);
  EXPECT_EQ(a.outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(), 2u);
}

TEST_F(CoalescingTest, SharesOneFailureWithEveryWaiter) {
  fake->hold(RouteKind::get_quota);
  fake->fail_next(test::Fault::http(503));
  std::vector<std::shared_ptr<test::Spawned<Answer>>> readers;
  for (int i = 0; i < 10; ++i) {
    readers.push_back(test::spawn(ioc.get_executor(),
                                  cache->read(route(Method::get, base() + "/quota"), {}, kT0)));
  }
  test::run_until(ioc, [&] { return fake->held() == 1; });
  fake->release();
  test::run_until(ioc, [&] {
    return std::all_of(readers.begin(), readers.end(), [](auto& r) { return r->done(); });
  });
  for (auto& r : readers) EXPECT_EQ(r->get().status, 503u);
  EXPECT_EQ(fake->calls(), 1u);
}

// ---------------------------------------------------------------------------------------
// Revalidations (Cache-Control: no-cache)

ReadOptions no_cache() {
  ReadOptions o;
  o.revalidate = true;
  return o;
}

TEST_F(CoalescingTest, MakesOneUpstreamCallForConcurrentNoCacheReadsOfOneKey) {
  read("/quota", kT0);  // a fresh entry, which no-cache reads skip
  fake->reset_counts();
  fake->hold(RouteKind::get_quota);
  std::vector<std::shared_ptr<test::Spawned<Answer>>> readers;
  for (int i = 0; i < 100; ++i) {
    readers.push_back(
        test::spawn(ioc.get_executor(),
                    cache->read(route(Method::get, base() + "/quota"), no_cache(), kT0 + 1 * kMs)));
  }
  test::run_until(ioc, [&] { return fake->held() == 1; });
  test::run_ready(ioc);
  EXPECT_EQ(cache->stats().coalesced_waits, 99u);
  fake->release();
  test::run_until(ioc, [&] {
    return std::all_of(readers.begin(), readers.end(), [](auto& r) { return r->done(); });
  });
  EXPECT_EQ(fake->calls(), 1u);
  for (const auto& r : readers) {
    EXPECT_EQ(r->get().status, 200u);
    EXPECT_EQ(r->get().outcome, Outcome::miss);
  }
}

TEST_F(CoalescingTest, LetsANoCacheReadJoinOnlyAFillThatStartedAfterItArrived) {
  fake->hold(RouteKind::get_quota);
  // A miss at t=10 ms leads a fill; a no-cache read that arrived at t=20 ms must not take
  // that fill's answer, which may predate it: it asks the upstream itself.
  auto miss = test::spawn(ioc.get_executor(),
                          cache->read(route(Method::get, base() + "/quota"), {}, kT0 + 10 * kMs));
  test::run_until(ioc, [&] { return fake->held() == 1; });
  auto later = test::spawn(ioc.get_executor(), cache->read(route(Method::get, base() + "/quota"),
                                                           no_cache(), kT0 + 20 * kMs));
  test::run_until(ioc, [&] { return fake->held() == 2; });
  // A no-cache read that arrived before the second fill started joins it, and so does a
  // plain miss.
  auto earlier = test::spawn(ioc.get_executor(), cache->read(route(Method::get, base() + "/quota"),
                                                             no_cache(), kT0 + 15 * kMs));
  auto plain = test::spawn(ioc.get_executor(),
                           cache->read(route(Method::get, base() + "/quota"), {}, kT0 + 16 * kMs));
  test::run_ready(ioc);
  EXPECT_EQ(fake->held(), 2u);
  EXPECT_EQ(cache->stats().coalesced_waits, 2u);
  fake->release();
  test::run_until(
      ioc, [&] { return miss->done() && later->done() && earlier->done() && plain->done(); });
  EXPECT_EQ(fake->calls(), 2u);
  for (const auto* r : {&miss, &later, &earlier, &plain}) EXPECT_EQ((*r)->get().status, 200u);
}

}  // namespace
}  // namespace sproxy::cache::testing
