// Micro-benchmarks of the proxy's per-request work around a cache hit (Google Benchmark;
// built by CI, never run as pass/fail). In memory, one thread, bounded iteration time.
// Report ratios from one run (see BENCHMARKING.md); bench/profile-hit.sh profiles the
// whole request path.
//
//   proxy_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// - BM_TokenCheckHit: identity resolution from a request's headers, as the handler does
//   it: extract_credentials (Authorization: Bearer), then the reloadable resolver over
//   the config-backed one (SHA-256 of the token compared with every client's hash), for
//   a token that matches (the 2nd of 3 clients).
// - BM_TokenCheckRemembered: the same token again on the same connection: the credential
//   headers read as sent and compared with the connection's memo (no hash, no search).
// - BM_ResponseSerializationSecretGet: a cached secret get answer (a snapshot's
//   pre-serialized envelope, X-Cache HIT) to wire bytes through a response message: the
//   response the handler builds, prepared for keep-alive as the server does, and its
//   head serialized into a reused buffer (the body is written from the snapshot's bytes
//   as they are). The path of TLS connections and of answers that waited.
// - BM_DirectAnswerSecretGet: the same answer's head written straight from the answer
//   (serialize_answer_head), the path of a cache hit on a plain connection.
// All report allocs_per_op (cache_bench_allocs.cpp counts operator new).
#include <benchmark/benchmark.h>

#include <boost/beast/http/fields.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cache/read_through.hpp"
#include "cache/snapshot.hpp"
#include "config/config.hpp"
#include "proxy/answer.hpp"
#include "proxy/http_io.hpp"
#include "proxy/identity.hpp"
#include "upstream/crypto.hpp"
#include "upstream/model.hpp"

// Heap allocations so far in this process (cache_bench_allocs.cpp replaces operator new).
std::uint64_t allocation_count() noexcept;

namespace {

namespace http = boost::beast::http;
using namespace sproxy;

config::ClientConfig client(const std::string& name, const std::string& token,
                            std::vector<std::string> services,
                            std::vector<std::string> permissions) {
  config::ClientConfig c;
  c.name = name;
  c.token_sha256 = upstream::sha256_hex(token);
  c.services = std::move(services);
  c.accounts = {"*"};
  c.permissions = std::move(permissions);
  return c;
}

void BM_TokenCheckHit(benchmark::State& state) {
  const std::string token = "bench-reader-0123456789abcdef0123456789abcdef";
  proxy::ReloadableIdentityResolver identities(
      std::make_shared<const proxy::ConfigIdentityResolver>(
          std::vector<config::ClientConfig>{
              client("bench-upstream", "bench-upstream-token", {"workers", "dex"},
                     {"read", "write", "admin"}),
              client("bench-reader", token, {"workers"}, {"read"}),
              client("bench-writer", "bench-writer-token", {"workers"}, {"read", "write"})},
          upstream::sha256_hex("admin-token")));
  http::fields headers;
  headers.set(http::field::host, "127.0.0.1:8787");
  headers.set(http::field::user_agent, "wrk");
  headers.set(http::field::authorization, "Bearer " + token);

  std::uint64_t allocations = 0;
  for (auto _ : state) {
    const std::uint64_t before = allocation_count();
    auto credentials = proxy::extract_credentials(headers);
    auto identity = identities.resolve(*credentials);
    allocations += allocation_count() - before;
    if (!identity) state.SkipWithError("token did not resolve");
    benchmark::DoNotOptimize(identity);
  }
  state.counters["allocs_per_op"] =
      benchmark::Counter(static_cast<double>(allocations), benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_TokenCheckHit);

void BM_TokenCheckRemembered(benchmark::State& state) {
  const std::string token = "bench-reader-0123456789abcdef0123456789abcdef";
  http::fields headers;
  headers.set(http::field::host, "127.0.0.1:8787");
  headers.set(http::field::user_agent, "wrk");
  headers.set(http::field::authorization, "Bearer " + token);
  proxy::CredentialMemo memo;
  memo.remember(proxy::raw_credential(headers), 1,
                std::make_shared<const proxy::ResolvedClient>(proxy::identity_from_config(
                    client("bench-reader", token, {"workers"}, {"read"}))));

  std::uint64_t allocations = 0;
  for (auto _ : state) {
    const std::uint64_t before = allocation_count();
    auto known = memo.find(proxy::raw_credential(headers), 1);
    allocations += allocation_count() - before;
    if (!known) state.SkipWithError("token not remembered");
    benchmark::DoNotOptimize(known);
  }
  state.counters["allocs_per_op"] =
      benchmark::Counter(static_cast<double>(allocations), benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_TokenCheckRemembered);

// A cached secret get answer: a snapshot's pre-serialized envelope, X-Cache HIT.
cache::Answer cached_secret_get() {
  upstream::Secret secret;
  secret.id = "3f1c2b7a9d8e4f60a1b2c3d4e5f60718";
  secret.store_id = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
  secret.name = "api_key_000";
  secret.comment = "api credential, rotated quarterly";
  secret.scopes = {"workers"};
  secret.status = upstream::SecretStatus::active;
  secret.created = 1'767'225'600'000'000;
  secret.modified = secret.created;
  auto snapshot =
      std::make_shared<const cache::SecretsSnapshot>(1, std::vector<upstream::Secret>{secret});
  cache::Answer answer;
  answer.status = 200;
  answer.body = cache::SecretsSnapshot::share_envelope(snapshot, 0);
  answer.outcome = cache::Outcome::hit;
  answer.age = 12'345'678;
  return answer;
}

void BM_ResponseSerializationSecretGet(benchmark::State& state) {
  const cache::Answer answer = cached_secret_get();
  std::string head;
  std::size_t bytes = 0;
  std::uint64_t allocations = 0;
  for (auto _ : state) {
    const std::uint64_t before = allocation_count();
    proxy::HttpResponse response = proxy::answer_response(answer, 11, /*is_read=*/true);
    response.keep_alive(true);
    response.prepare_payload();
    proxy::serialize_response_head(response, head);
    bytes = head.size() + proxy::response_body_buffer(response).size();
    allocations += allocation_count() - before;
    benchmark::DoNotOptimize(head.data());
  }
  state.counters["allocs_per_op"] =
      benchmark::Counter(static_cast<double>(allocations), benchmark::Counter::kAvgIterations);
  state.counters["bytes_per_response"] = static_cast<double>(bytes);
}
BENCHMARK(BM_ResponseSerializationSecretGet);

void BM_DirectAnswerSecretGet(benchmark::State& state) {
  const cache::Answer answer = cached_secret_get();
  std::string head;
  std::size_t bytes = 0;
  std::uint64_t allocations = 0;
  for (auto _ : state) {
    const std::uint64_t before = allocation_count();
    proxy::serialize_answer_head(answer, 11, {}, /*keep_alive=*/true, head);
    bytes = head.size() + answer.body.size();
    allocations += allocation_count() - before;
    benchmark::DoNotOptimize(head.data());
  }
  state.counters["allocs_per_op"] =
      benchmark::Counter(static_cast<double>(allocations), benchmark::Counter::kAvgIterations);
  state.counters["bytes_per_response"] = static_cast<double>(bytes);
}
BENCHMARK(BM_DirectAnswerSecretGet);

}  // namespace

BENCHMARK_MAIN();
