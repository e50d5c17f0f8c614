// Micro-benchmarks of the read-through cache (Google Benchmark; built by CI, never run
// as pass/fail). Everything runs in this process, in memory, on one thread unless noted,
// with bounded iteration time. Report ratios from one run (see BENCHMARKING.md).
//
//   cache_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// - BM_StorageLookupHit: ShardedLruStorage::lookup of a present key.
// - BM_ReadHitSecretGet / BM_ReadHitListMemoized: a full ReadThroughCache::read served
//   from cache (coroutine included), for a secret get and a repeated list query.
// - BM_StorageInsertWithEviction: insert into a full storage (every insert evicts).
// - BM_ListView100SecretsScopedViewer: computing one list answer over a 100-secret
//   snapshot for a viewer limited to some services (the memo-miss path).
// - BM_ApplyPatchTo100SecretSnapshot / BM_ApplyCreateTo100SecretSnapshot: write-through,
//   a write's answer merged into a 100-secret snapshot and the new snapshot built (what
//   a write does to the cache instead of a refill).
// - BM_CoalescedMiss/N: N concurrent readers miss one key; one upstream fetch of a real
//   embedded store answers all (counter upstream_calls_per_batch must stay 1).
// - BM_SnapshotMemory: heap held by 100 whole-store snapshots of 100 secrets shaped like
//   the load benchmark's (counters: heap_bytes_per_secret from mallinfo2, and
//   byte_size_per_secret, the estimate the cache budget counts).
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cache/read_through.hpp"
#include "cache/snapshot.hpp"
#include "cache/storage.hpp"
#include "cache/write_effect.hpp"
#include "tests/support/fake_upstream.hpp"
#include "upstream/list_query.hpp"
#include "upstream/model.hpp"
#include "upstream/route.hpp"

// Heap allocations so far in this process (cache_bench_allocs.cpp replaces operator new).
std::uint64_t allocation_count() noexcept;

namespace {

namespace asio = boost::asio;
using sproxy::cache::Answer;
using sproxy::cache::ReadOptions;
using sproxy::cache::ReadThroughCache;
using sproxy::upstream::Micros;

constexpr char kAccount[] = "0123456789abcdef0123456789abcdef";
constexpr Micros kT0 = 1'767'225'600'000'000;

class Blob final : public sproxy::cache::CacheObject {
 public:
  explicit Blob(std::size_t n) : data_(n, 'x') {}
  std::size_t byte_size() const noexcept override { return sizeof(Blob) + data_.capacity(); }

 private:
  std::string data_;
};

std::string base() { return std::string("/client/v4/accounts/") + kAccount + "/secrets_store"; }

sproxy::upstream::Route route(const std::string& target) {
  return sproxy::upstream::parse_route(sproxy::upstream::Method::get, target).value();
}

// A real embedded store with one store of 100 secrets over a spread of scopes, and a
// cache in front of it.
struct Fixture {
  Fixture() {
    fake = std::make_shared<sproxy::test::FakeUpstream>();
    fake->set_now(kT0);
    store_id = fake->store().create_store(kAccount, {"bench"}, kT0)->id;
    const std::vector<std::vector<std::string>> scope_sets = {
        {"workers"}, {"dex"}, {"access", "workers"}, {"ai_gateway", "dex"}, {"websearch"}};
    std::vector<sproxy::upstream::SecretCreate> in;
    for (int i = 0; i < 100; ++i) {
      in.push_back(
          {"SECRET_" + std::to_string(i), "value", scope_sets[i % scope_sets.size()],
           i % 3 ? std::optional<std::string>("comment " + std::to_string(i)) : std::nullopt});
    }
    auto created = fake->store().create_secrets(kAccount, store_id, std::move(in), kT0);
    secret_id = created->front().id;
    sproxy::config::CacheConfig cfg;
    cache = std::make_unique<ReadThroughCache>(cfg, fake);
  }
  std::string secrets_target() const { return base() + "/stores/" + store_id + "/secrets"; }

  std::shared_ptr<sproxy::test::FakeUpstream> fake;
  std::unique_ptr<ReadThroughCache> cache;
  std::string store_id;
  std::string secret_id;
  asio::io_context ioc;
};

// Runs the benchmark loop inside one coroutine, so each iteration is one co_await read.
// The timing includes copying the route and options (the API takes them by value; the
// server moves its parsed route in); allocations are counted for the read alone.
asio::awaitable<void> read_loop(benchmark::State* state, ReadThroughCache* cache,
                                sproxy::upstream::Route r, ReadOptions opt) {
  std::uint64_t allocations = 0;
  for (auto _ : *state) {
    sproxy::upstream::Route route_copy = r;
    ReadOptions opt_copy = opt;
    const std::uint64_t before = allocation_count();
    Answer a = co_await cache->read(std::move(route_copy), std::move(opt_copy), kT0 + 1);
    allocations += allocation_count() - before;
    benchmark::DoNotOptimize(a.body);
  }
  state->counters["allocs_per_read"] =
      benchmark::Counter(static_cast<double>(allocations), benchmark::Counter::kAvgIterations);
}

Answer read_once(Fixture& f, const std::string& target, ReadOptions opt, Micros now) {
  Answer out;
  asio::co_spawn(f.ioc, f.cache->read(route(target), opt, now),
                 [&out](std::exception_ptr, Answer a) { out = std::move(a); });
  f.ioc.restart();
  f.ioc.run();
  return out;
}

void BM_StorageLookupHit(benchmark::State& state) {
  sproxy::cache::ShardedLruStorage s({64 << 20, 1 << 20}, 16);
  std::vector<std::string> keys;
  for (int i = 0; i < 1000; ++i) {
    keys.push_back(std::string(kAccount) + "/store/" + std::to_string(100000 + i) + "/secrets");
    s.insert(keys.back(), "t/", std::make_shared<Blob>(300), {0, kT0 * 2, kT0 * 2}, 0);
  }
  std::size_t i = 0;
  for (auto _ : state) {
    auto found = s.lookup(keys[i++ % keys.size()], kT0);
    benchmark::DoNotOptimize(found);
  }
}
BENCHMARK(BM_StorageLookupHit);

void BM_ReadHitSecretGet(benchmark::State& state) {
  Fixture f;
  const std::string target = f.secrets_target() + "/" + f.secret_id;
  read_once(f, target, {}, kT0);  // fill
  asio::co_spawn(f.ioc, read_loop(&state, f.cache.get(), route(target), {}), asio::detached);
  f.ioc.restart();
  f.ioc.run();
  state.counters["upstream_calls"] = static_cast<double>(f.fake->calls());
}
BENCHMARK(BM_ReadHitSecretGet);

void BM_ReadHitListMemoized(benchmark::State& state) {
  Fixture f;
  const std::string target = f.secrets_target() + "?order=name&per_page=20&page=2";
  ReadOptions opt;
  opt.viewer = sproxy::cache::Viewer{false, {"dex", "workers"}};
  read_once(f, target, opt, kT0);  // fill + memoize
  asio::co_spawn(f.ioc, read_loop(&state, f.cache.get(), route(target), opt), asio::detached);
  f.ioc.restart();
  f.ioc.run();
  state.counters["upstream_calls"] = static_cast<double>(f.fake->calls());
}
BENCHMARK(BM_ReadHitListMemoized);

void BM_StorageInsertWithEviction(benchmark::State& state) {
  // 1 MiB over 4 shards, ~1.3 KB entries: full after ~800 inserts, then every insert evicts.
  sproxy::cache::ShardedLruStorage s({1 << 20, 1 << 20}, 4);
  std::vector<std::string> keys;
  for (int i = 0; i < 4096; ++i) keys.push_back("acct/store/" + std::to_string(i) + "/secrets");
  auto value = std::make_shared<Blob>(1000);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    s.insert(keys[i], "acct/store/", value, {0, kT0 * 2, kT0 * 2}, 0);
  }
  std::size_t i = 0;
  for (auto _ : state) {
    s.insert(keys[i++ % keys.size()], "acct/store/", value, {0, kT0 * 2, kT0 * 2}, 0);
  }
  state.counters["evictions"] = static_cast<double>(s.stats().evictions);
}
BENCHMARK(BM_StorageInsertWithEviction);

void BM_ListView100SecretsScopedViewer(benchmark::State& state) {
  Fixture f;
  auto secrets = f.fake->store().list_secrets(kAccount, f.store_id, kT0).value();
  sproxy::cache::SecretsSnapshot snap(1, std::move(secrets));
  sproxy::upstream::SecretListQuery q;
  q.order = "name";
  q.per_page = 20;
  q.page = 2;
  const sproxy::cache::Viewer viewer{false, {"dex", "workers"}};
  for (auto _ : state) {
    std::string body = snap.list(q, viewer);
    benchmark::DoNotOptimize(body);
  }
}
BENCHMARK(BM_ListView100SecretsScopedViewer);

void apply_to_100_secrets(benchmark::State& state, sproxy::upstream::RouteKind kind) {
  Fixture f;
  auto secrets = f.fake->store().list_secrets(kAccount, f.store_id, kT0).value();
  const sproxy::cache::SecretsSnapshot snap(1, secrets);
  sproxy::cache::policy::WriteEffect effect;
  sproxy::upstream::Secret answered = secrets[37];
  if (kind == sproxy::upstream::RouteKind::create_secrets) {
    answered.id = "0123456789abcdef0123456789abcdef";
    answered.name = "CREATED";
  }
  answered.comment = "written";
  answered.modified += 1;
  effect.secrets.push_back(answered);
  std::vector<sproxy::upstream::Secret> merged;
  std::uint64_t seq = 2;
  for (auto _ : state) {
    const auto m = sproxy::cache::policy::merge_secrets(snap, kind, f.store_id, effect, merged);
    if (m != sproxy::cache::policy::Merge::changed) state.SkipWithError("nothing merged");
    auto updated = std::make_shared<const sproxy::cache::SecretsSnapshot>(seq++, std::move(merged));
    benchmark::DoNotOptimize(updated);
  }
}

void BM_ApplyPatchTo100SecretSnapshot(benchmark::State& state) {
  apply_to_100_secrets(state, sproxy::upstream::RouteKind::patch_secret);
}
BENCHMARK(BM_ApplyPatchTo100SecretSnapshot);

void BM_ApplyCreateTo100SecretSnapshot(benchmark::State& state) {
  apply_to_100_secrets(state, sproxy::upstream::RouteKind::create_secrets);
}
BENCHMARK(BM_ApplyCreateTo100SecretSnapshot);

// A 32-char lowercase hex id, like the upstream's.
std::string hex_id(std::uint64_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(32, '0');
  std::uint64_t x = n * 0x9e3779b97f4a7c15ULL + 1;
  for (char& c : id) {
    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9ULL;
    c = kHex[x >> 60];
  }
  return id;
}

// One store's secrets as bench/load/run.sh seeds them: name "<kind>_key_NNN", scope
// workers, every third with a comment.
std::vector<sproxy::upstream::Secret> load_shaped_secrets(std::uint64_t store) {
  static const char* kKinds[] = {"api", "db", "mail", "pay", "auth"};
  std::vector<sproxy::upstream::Secret> secrets;
  for (int i = 0; i < 100; ++i) {
    sproxy::upstream::Secret s;
    s.id = hex_id(store * 1000 + static_cast<std::uint64_t>(i) + 1);
    s.store_id = hex_id(store * 1000);
    char name[32];
    std::snprintf(name, sizeof name, "%s_key_%03d", kKinds[i % 5], i);
    s.name = name;
    if (i % 3 == 0) s.comment = std::string(kKinds[i % 5]) + " credential, rotated quarterly";
    s.scopes = {"workers"};
    s.status = sproxy::upstream::SecretStatus::active;
    s.created = kT0 + i;
    s.modified = kT0 + i;
    secrets.push_back(std::move(s));
  }
  return secrets;
}

void BM_SnapshotMemory(benchmark::State& state) {
  constexpr std::size_t kStores = 100;
  double heap_per_secret = 0;
  double estimate_per_secret = 0;
  for (auto _ : state) {
    std::vector<std::shared_ptr<const sproxy::cache::SecretsSnapshot>> snapshots;
    snapshots.reserve(kStores);
    const std::size_t before = mallinfo2().uordblks;
    std::size_t estimate = 0;
    std::size_t secrets = 0;
    for (std::size_t i = 0; i < kStores; ++i) {
      auto snap =
          std::make_shared<const sproxy::cache::SecretsSnapshot>(i + 1, load_shaped_secrets(i + 1));
      estimate += snap->byte_size();
      secrets += snap->size();
      snapshots.push_back(std::move(snap));
    }
    const std::size_t after = mallinfo2().uordblks;
    heap_per_secret = static_cast<double>(after - before) / static_cast<double>(secrets);
    estimate_per_secret = static_cast<double>(estimate) / static_cast<double>(secrets);
    benchmark::DoNotOptimize(snapshots);
  }
  state.counters["heap_bytes_per_secret"] = heap_per_secret;
  state.counters["byte_size_per_secret"] = estimate_per_secret;
}
BENCHMARK(BM_SnapshotMemory)->Iterations(3);

// What a miss does with the upstream's answer for one store: parse a page of 100
// secrets (shaped as the load benchmark seeds them) and build the store's snapshot.
void BM_FillSecretsPage(benchmark::State& state) {
  const auto secrets = load_shaped_secrets(7);
  std::string items;
  for (const auto& s : secrets) {
    if (!items.empty()) items += ',';
    sproxy::upstream::append_json(items, s);
  }
  const std::string body =
      R"({"success":true,"errors":[],"messages":[],"result":[)" + items +
      R"(],"result_info":{"page":1,"per_page":100,"count":100,"total_count":100,"total_pages":1}})";
  auto fill = [&body] {
    auto page = sproxy::cache::parse_secrets_page(body);
    return std::make_shared<const sproxy::cache::SecretsSnapshot>(1, std::move(page->items));
  };
  // What a filled snapshot keeps, as a cache entry would: measured once, outside the timed
  // loop (mallinfo2 walks the heap and consolidates it).
  const std::size_t heap_before = mallinfo2().uordblks;
  auto kept = fill();
  state.counters["heap_bytes_per_secret"] =
      static_cast<double>(mallinfo2().uordblks - heap_before) / 100.0;
  kept.reset();
  std::uint64_t allocations = 0;
  for (auto _ : state) {
    const std::uint64_t before = allocation_count();
    auto snap = fill();
    allocations += allocation_count() - before;
    benchmark::DoNotOptimize(snap);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * 100);
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * body.size()));
  state.counters["allocs_per_fill"] =
      benchmark::Counter(static_cast<double>(allocations), benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_FillSecretsPage);

void BM_CoalescedMiss(benchmark::State& state) {
  Fixture f;
  const int waiters = static_cast<int>(state.range(0));
  const auto r = route(base() + "/quota");
  std::size_t batches = 0;
  for (auto _ : state) {
    f.cache->purge_all();
    for (int i = 0; i < waiters; ++i) {
      asio::co_spawn(f.ioc, f.cache->read(r, {}, kT0), asio::detached);
    }
    f.ioc.restart();
    f.ioc.run();
    ++batches;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(batches) * waiters);
  state.counters["upstream_calls_per_batch"] =
      static_cast<double>(f.fake->calls()) / static_cast<double>(batches);
}
BENCHMARK(BM_CoalescedMiss)->Arg(1)->Arg(64)->Arg(1000);

}  // namespace

BENCHMARK_MAIN();
