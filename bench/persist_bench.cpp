// Micro-benchmarks of the cache's warm-start file (Google Benchmark; built by CI, never
// run as pass/fail). One thread, in memory except where a file is named; each iteration
// handles 10,000 cache entries. Report ratios from one run (see BENCHMARKING.md).
//
//   persist_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// Argument 0: 10,000 stored answers (a store's GET envelope each).
// Argument 1: 10,000 whole-store secrets snapshots of 10 secrets each (100,000 secrets).
// - BM_PersistEncodeSeal: export from a filled cache, encode, AES-256-GCM seal (no I/O).
// - BM_PersistSave: the same, written atomically to a file in the temp dir (fsyncs).
// - BM_PersistLoad: read, open, decode and restore that file into an empty cache.
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cache/persist.hpp"
#include "cache/policy.hpp"
#include "cache/snapshot.hpp"
#include "upstream/crypto.hpp"
#include "upstream/upstream.hpp"

namespace {

using namespace sproxy;
using cache::policy::View;
using upstream::Micros;

constexpr Micros kT0 = 1'767'225'600'000'000;
constexpr Micros kMinute = 60'000'000;
constexpr int kEntries = 10'000;

// A 32-character lowercase hex id derived from `n`.
std::string hex_id(unsigned long n, char salt) {
  char buf[33];
  std::snprintf(buf, sizeof buf, "%c%031lx", salt, n);
  return buf;
}

// An upstream that is never called: the benchmarks fill the cache through restore().
class NoUpstream final : public upstream::Upstream {
 public:
  boost::asio::awaitable<upstream::CallResult> call(upstream::ApiRequest) override {
    co_return boost::system::error_code(upstream::UpstreamErrc::unreachable);
  }
  std::string describe() const override { return "none"; }
};

config::CacheConfig bench_config() {
  config::CacheConfig c;
  c.ttl.secrets_ms = c.ttl.store_ms = 3'600'000;
  c.max_bytes = 1024ull * 1024 * 1024;
  return c;
}

std::vector<cache::CacheRecord> make_records(bool snapshots) {
  const std::string account = hex_id(1, 'a');
  std::vector<cache::CacheRecord> out;
  out.reserve(kEntries);
  for (int i = 0; i < kEntries; ++i) {
    const std::string store = hex_id(static_cast<unsigned long>(i), 'b');
    cache::CacheRecord r;
    r.meta = cache::EntryMeta{kT0, kT0 + 30 * kMinute, kT0 + 60 * kMinute};
    if (snapshots) {
      std::vector<upstream::Secret> secrets;
      for (int s = 0; s < 10; ++s) {
        upstream::Secret sec;
        sec.id = hex_id(static_cast<unsigned long>(i * 10 + s), 'c');
        sec.store_id = store;
        sec.name = "secret_" + std::to_string(s);
        sec.comment = "rotated monthly";
        sec.scopes = {"workers"};
        sec.status = upstream::SecretStatus::active;
        sec.created = sec.modified = kT0;
        secrets.push_back(std::move(sec));
      }
      r.key = cache::policy::entry_key(View::secrets, account, store);
      r.tag = cache::policy::tag_of(View::secrets, account, store);
      r.value = std::make_shared<const cache::SecretsSnapshot>(i + 1, std::move(secrets));
    } else {
      upstream::Store st{store, account, "store-" + std::to_string(i), kT0, kT0};
      r.key = cache::policy::entry_key(View::store, account, store);
      r.tag = cache::policy::tag_of(View::store, account, store);
      r.value = std::make_shared<const cache::StoredAnswer>(
          200, upstream::envelope_success(upstream::to_json(st)));
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::shared_ptr<cache::ReadThroughCache> filled_cache(bool snapshots) {
  auto c =
      std::make_shared<cache::ReadThroughCache>(bench_config(), std::make_shared<NoUpstream>());
  c->restore(make_records(snapshots), kT0);
  return c;
}

std::filesystem::path bench_file() {
  return std::filesystem::temp_directory_path() /
         ("sproxy-persist-bench-" + std::to_string(::getpid()) + ".snap");
}

void BM_PersistEncodeSeal(benchmark::State& state) {
  const auto c = filled_cache(state.range(0) == 1);
  const std::string key = upstream::random_bytes(upstream::kAesKeyBytes);
  std::size_t bytes = 0;
  for (auto _ : state) {
    const std::string file =
        cache::seal_snapshot_file(key, cache::encode_records(c->export_records(kT0), kT0));
    bytes = file.size();
    benchmark::DoNotOptimize(file.data());
  }
  state.counters["file_bytes"] = static_cast<double>(bytes);
  state.counters["entries"] = static_cast<double>(c->stats().entries);
}
BENCHMARK(BM_PersistEncodeSeal)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->MinTime(1.0);

void BM_PersistSave(benchmark::State& state) {
  const auto c = filled_cache(state.range(0) == 1);
  const std::string key = upstream::random_bytes(upstream::kAesKeyBytes);
  const auto path = bench_file();
  for (auto _ : state) {
    const cache::SaveResult r = cache::save_cache(*c, path, key, kT0);
    if (!r.ok) state.SkipWithError(r.message.c_str());
  }
  std::filesystem::remove(path);
}
BENCHMARK(BM_PersistSave)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->MinTime(1.0);

void BM_PersistLoad(benchmark::State& state) {
  const std::string key = upstream::random_bytes(upstream::kAesKeyBytes);
  const auto path = bench_file();
  {
    const auto c = filled_cache(state.range(0) == 1);
    if (!cache::save_cache(*c, path, key, kT0).ok) state.SkipWithError("save failed");
  }
  std::size_t restored = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto empty =
        std::make_shared<cache::ReadThroughCache>(bench_config(), std::make_shared<NoUpstream>());
    state.ResumeTiming();
    const cache::LoadResult r = cache::load_cache(*empty, path, key, 1ull << 31, kT0 + kMinute);
    restored = r.restored;
    state.PauseTiming();
    empty.reset();  // destruction is not part of the load
    state.ResumeTiming();
  }
  if (restored != static_cast<std::size_t>(kEntries))
    state.SkipWithError("not every entry restored");
  state.counters["restored"] = static_cast<double>(restored);
  std::filesystem::remove(path);
}
BENCHMARK(BM_PersistLoad)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
