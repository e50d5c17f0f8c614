// Metrics: the proxy's Prometheus metrics, owned in one prometheus::Registry and
// rendered in the text exposition format by `serialize()` (served by our own Beast
// server; prometheus-cpp's civetweb exposer is not used).
//
// Contract:
// - Request path: `record_request` / `record_upstream` / `record_*` are cheap (see
//   metrics.cpp for the cost model) and never throw except std::bad_alloc. They take
//   only enums and numbers: no label value is ever built from request bytes, so a secret
//   name, value, id or token in a request target cannot reach the exposition. Routes are
//   labelled by their template ("/stores/{store_id}/secrets"); client names are not
//   labels at all.
// - State that lives elsewhere (cache::CacheStats, the upstream guard's stats and
//   snapshots, the server's connection count) is copied in at scrape time: register a
//   collect hook (`add_collect_hook`) that calls the `refresh*` functions (a hook holds
//   what it reads weakly when that object owns this Metrics, e.g. the cache through a
//   MeteredUpstream: a shared_ptr there is a cycle that never frees); `serialize()`
//   runs every hook first. `refresh*` take ABSOLUTE values. Counters are mirrored: each
//   source value is remembered and the counter is incremented by the difference, so the
//   exported counter stays monotonic; a source that goes backwards (it was recreated)
//   is taken as having restarted from zero.
// - MeteredUpstream wraps any Upstream and records every call's outcome and latency.
//
// Metric families (all prefixed secrets_proxy_):
//   requests_total{route,method,status,cache}  request_duration_seconds{route} (histogram)
//   cache_entries  cache_bytes  cache_{hits,misses,stale_served,coalesced_waits,
//   evictions,invalidations,refreshes,upstream_bad_answers,write_updates}_total
//   upstream_requests_total{outcome}
//   upstream_duration_seconds (histogram)  upstream_429_total  upstream_retries_total
//   upstream_breaker_state (0 closed, 1 half_open, 2 open)  rate_budget_remaining
//   fleet mode only: fleet_budget_shared (1 the fleet's shared budget, 0 the local
//   fallback share)  rate_budget_tokens_total{source="fleet"|"fallback"}
//   open_connections  connections_rejected_total  tls_handshake_failures_total
//   unhandled_errors_total  log_write_failures_total
//   audit_denials_total  build_info{version}
//
// Thread safety: every member function may be called concurrently from any thread.
// `add_collect_hook` must not be called from inside a hook. Hooks run on the thread
// that calls `serialize()` and must not call `serialize()`.
// Ownership: share one Metrics as shared_ptr; hooks must only capture what outlives the
// last `serialize()` call (e.g. shared_ptrs, or objects that live as long as the server).
#pragma once

#include <array>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cache/read_through.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/resilience.hpp"
#include "upstream/route.hpp"
#include "upstream/upstream.hpp"

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace sproxy::proxy {

// Content-Type of `Metrics::serialize()`'s output.
inline constexpr std::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

// The `route` label: the API's route templates and the proxy's own endpoints.
enum class RouteLabel : std::uint8_t {
  stores,            // /stores
  store,             // /stores/{store_id}
  secrets,           // /stores/{store_id}/secrets
  secret,            // /stores/{store_id}/secrets/{secret_id}
  secret_duplicate,  // /stores/{store_id}/secrets/{secret_id}/duplicate
  quota,             // /quota
  healthz,           // /healthz
  readyz,            // /readyz
  metrics,           // /metrics
  admin_purge,       // /admin/purge
  unmatched,         // no route matched (routing errors: 400 / 404 / 405)
  admin_status,      // /admin/status
};
inline constexpr std::size_t kRouteLabelCount = 12;

// The template a request was routed to.
RouteLabel route_label(upstream::RouteKind kind);
// The label value, e.g. "/stores/{store_id}/secrets" or "unmatched".
std::string_view to_string(RouteLabel route);
// Classifies a raw request target (path + optional query) for callers that have no
// parsed route. Allocates (it runs upstream::parse_route); prefer route_label(kind) on
// the request path. The proxy's own endpoints match on the exact path (any query).
RouteLabel classify_target(upstream::Method method, std::string_view target);

// The `outcome` label of secrets_proxy_upstream_requests_total.
enum class UpstreamOutcome : std::uint8_t {
  ok,           // any answer below 400
  http_4xx,     // 4xx other than 429
  http_5xx,     // 5xx (and any status >= 600)
  http_429,     // 429, the upstream's or a synthesized one
  timeout,      // UpstreamErrc::timeout
  unreachable,  // UpstreamErrc::unreachable
  reset,        // UpstreamErrc::connection_reset
  tls,          // UpstreamErrc::tls_error
  other,        // every other failure (bad_response, overloaded, circuit_open, ...)
};
inline constexpr std::size_t kUpstreamOutcomeCount = 9;

std::string_view to_string(UpstreamOutcome outcome);
UpstreamOutcome classify_upstream_result(const upstream::CallResult& result);

// Histogram buckets (seconds) of both duration histograms: 50 us .. 10 s.
const std::vector<double>& duration_buckets();

class Metrics {
 public:
  using CollectHook = std::function<void(Metrics&)>;

  // `version` is the build's version (the build_info label), not request data.
  explicit Metrics(std::string_view version);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // ---- Recording (request path) -----------------------------------------------------
  // One answered request. `status` is the HTTP status sent (a value outside 100..599 is
  // labelled "invalid"); `cache` is the cache's outcome, or nullopt for requests the
  // cache did not answer (writes, errors before the cache, the proxy's own endpoints),
  // labelled "none".
  void record_request(RouteLabel route, upstream::Method method, unsigned status,
                      std::optional<cache::Outcome> cache, std::chrono::nanoseconds duration);
  // One upstream call (MeteredUpstream calls this).
  void record_upstream(UpstreamOutcome outcome, std::chrono::nanoseconds duration);
  // An exception that escaped a coroutine (counted where it is caught).
  void record_unhandled_error();
  // A request refused by authorization: one per audit record with decision `deny` (see
  // RequestHandler), whether or not the audit log is written.
  void record_audit_denial();

  // ---- Refresh from absolute values (collect hooks) --------------------------------
  void refresh(const cache::CacheStats& stats);
  // The upstream guard: 429s received and retries (counters), breaker state and
  // remaining rate budget (gauges; exported from the first call on, absent before).
  void refresh(const upstream::GuardedUpstreamStats& stats,
               const upstream::CircuitSnapshot& breaker,
               const upstream::RateBudgetSnapshot& budget);
  // The server: open connections (gauge), exceptions that escaped connection
  // coroutines since start (added to unhandled_errors_total), TLS handshakes that
  // failed since start (tls_handshake_failures_total) and connections refused since
  // start (connections_rejected_total: max_connections reached, descriptors exhausted).
  void refresh_server(std::size_t open_connections, std::uint64_t escaped_exceptions,
                      std::uint64_t tls_handshake_failures, std::uint64_t connections_rejected);
  // Log lines the log's destination refused since start (log_write_failures_total).
  void refresh_log_write_failures(std::uint64_t failures);

  // Runs on every serialize(), in registration order, before collecting.
  void add_collect_hook(CollectHook hook);

  // Runs the hooks, then renders every family in the text exposition format.
  std::string serialize();

  // For tests and for registering extra collectables; do not remove families.
  prometheus::Registry& registry() { return *registry_; }

 private:
  // A counter fed from an absolute, monotonic source value.
  struct Mirror {
    prometheus::Counter* counter = nullptr;
    std::uint64_t last = 0;
    void update(std::uint64_t value);
  };

  prometheus::Counter& request_counter(RouteLabel route, upstream::Method method, unsigned status,
                                       std::optional<cache::Outcome> cache);
  // The families the constructor registers, by what they measure.
  void register_request_families(prometheus::Registry& reg);
  void register_cache_families(prometheus::Registry& reg);
  void register_guard_families(prometheus::Registry& reg);
  void register_server_families(prometheus::Registry& reg);

  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  std::array<prometheus::Histogram*, kRouteLabelCount> request_duration_{};
  std::array<prometheus::Counter*, kUpstreamOutcomeCount> upstream_requests_{};
  prometheus::Histogram* upstream_duration_ = nullptr;

  prometheus::Gauge* cache_entries_ = nullptr;
  prometheus::Gauge* cache_bytes_ = nullptr;
  prometheus::Family<prometheus::Gauge>* breaker_family_ = nullptr;
  prometheus::Family<prometheus::Gauge>* budget_family_ = nullptr;
  prometheus::Gauge* breaker_state_ = nullptr;     // created by the first guard refresh;
  prometheus::Gauge* budget_remaining_ = nullptr;  // guarded by mirrors_mu_
  prometheus::Family<prometheus::Gauge>* fleet_shared_family_ = nullptr;
  prometheus::Family<prometheus::Counter>* budget_tokens_family_ = nullptr;
  prometheus::Gauge* fleet_shared_ = nullptr;  // created by the first fleet-mode refresh
  prometheus::Gauge* open_connections_ = nullptr;
  prometheus::Counter* unhandled_errors_ = nullptr;
  prometheus::Counter* audit_denials_ = nullptr;

  // Lazily resolved children of requests_, keyed by the packed label tuple.
  std::mutex requests_mu_;
  std::unordered_map<std::uint32_t, prometheus::Counter*> request_children_;

  // Mirrors of absolute sources; guarded by mirrors_mu_.
  std::mutex mirrors_mu_;
  Mirror cache_hits_, cache_misses_, cache_stale_, cache_coalesced_, cache_evictions_,
      cache_invalidations_, cache_refreshes_, cache_internal_errors_, cache_bad_answers_,
      cache_write_updates_, upstream_429s_, upstream_retries_, server_escaped_,
      tls_handshake_failures_, connections_rejected_, log_write_failures_, fleet_tokens_,
      fallback_tokens_;

  // Serializes whole collect passes (hooks + Collect) and guards hooks_.
  std::mutex collect_mu_;
  std::vector<CollectHook> hooks_;
};

// An Upstream decorator that records each call's outcome and latency in `metrics`
// (secrets_proxy_upstream_requests_total{outcome}, secrets_proxy_upstream_duration_seconds)
// and otherwise passes requests and results through untouched. Where it is placed
// decides what it counts: around the transport (inside a GuardedUpstream) it sees every
// real attempt, retries included; around the guard it sees what the cache saw,
// synthesized 429s and circuit_open included.
// An exception from the inner upstream is counted as `other` and rethrown.
// Time: reads the injected clock (default: steady_clock) before and after each call.
// Thread safety: as the inner upstream. Ownership: holds `inner`, `metrics` and the
// clock; each call copies them, so the decorator may be destroyed while calls are in
// flight. describe() is the inner upstream's: metering changes no behaviour.
class MeteredUpstream final : public upstream::Upstream {
 public:
  // Throws std::invalid_argument when `inner` or `metrics` is null. A null clock uses
  // upstream::GuardedUpstream::system_clock().
  MeteredUpstream(std::shared_ptr<upstream::Upstream> inner, std::shared_ptr<Metrics> metrics,
                  std::shared_ptr<const upstream::GuardedUpstream::Clock> clock = nullptr);

  boost::asio::awaitable<upstream::CallResult> call(upstream::ApiRequest request) override;
  boost::asio::awaitable<std::size_t> preconnect(std::size_t connections) override;
  std::string describe() const override;
  std::optional<std::int64_t> activation_delay() const override {
    return inner_->activation_delay();
  }

 private:
  std::shared_ptr<upstream::Upstream> inner_;
  std::shared_ptr<Metrics> metrics_;
  std::shared_ptr<const upstream::GuardedUpstream::Clock> clock_;
};

}  // namespace sproxy::proxy
