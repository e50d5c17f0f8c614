#include "proxy/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <exception>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace sproxy::proxy {
namespace {

using upstream::Method;
using upstream::RouteKind;
using upstream::UpstreamErrc;

// Metric names. deploy/check-dashboard.sh reads the names between the quotes of every
// `"secrets_proxy_...` literal in this file: keep each name a whole string literal.
constexpr const char* kRequestsTotal = "secrets_proxy_requests_total";
constexpr const char* kRequestDuration = "secrets_proxy_request_duration_seconds";
constexpr const char* kCacheEntries = "secrets_proxy_cache_entries";
constexpr const char* kCacheBytes = "secrets_proxy_cache_bytes";
constexpr const char* kCacheHits = "secrets_proxy_cache_hits_total";
constexpr const char* kCacheMisses = "secrets_proxy_cache_misses_total";
constexpr const char* kCacheStale = "secrets_proxy_cache_stale_served_total";
constexpr const char* kCacheCoalesced = "secrets_proxy_cache_coalesced_waits_total";
constexpr const char* kCacheEvictions = "secrets_proxy_cache_evictions_total";
constexpr const char* kCacheInvalidations = "secrets_proxy_cache_invalidations_total";
constexpr const char* kCacheRefreshes = "secrets_proxy_cache_refreshes_total";
constexpr const char* kCacheBadAnswers = "secrets_proxy_cache_upstream_bad_answers_total";
constexpr const char* kCacheWriteUpdates = "secrets_proxy_cache_write_updates_total";
constexpr const char* kUpstreamRequests = "secrets_proxy_upstream_requests_total";
constexpr const char* kUpstreamDuration = "secrets_proxy_upstream_duration_seconds";
constexpr const char* kUpstream429 = "secrets_proxy_upstream_429_total";
constexpr const char* kUpstreamRetries = "secrets_proxy_upstream_retries_total";
constexpr const char* kBreakerState = "secrets_proxy_upstream_breaker_state";
constexpr const char* kBudgetRemaining = "secrets_proxy_rate_budget_remaining";
constexpr const char* kFleetShared = "secrets_proxy_fleet_budget_shared";
constexpr const char* kBudgetTokens = "secrets_proxy_rate_budget_tokens_total";
constexpr const char* kOpenConnections = "secrets_proxy_open_connections";
constexpr const char* kConnectionsRejected = "secrets_proxy_connections_rejected_total";
constexpr const char* kTlsHandshakeFailures = "secrets_proxy_tls_handshake_failures_total";
constexpr const char* kLogWriteFailures = "secrets_proxy_log_write_failures_total";
constexpr const char* kUnhandledErrors = "secrets_proxy_unhandled_errors_total";
constexpr const char* kAuditDenials = "secrets_proxy_audit_denials_total";
constexpr const char* kBuildInfo = "secrets_proxy_build_info";

constexpr std::array<RouteLabel, kRouteLabelCount> kAllRoutes = {
    RouteLabel::stores,           RouteLabel::store,
    RouteLabel::secrets,          RouteLabel::secret,
    RouteLabel::secret_duplicate, RouteLabel::quota,
    RouteLabel::healthz,          RouteLabel::readyz,
    RouteLabel::metrics,          RouteLabel::admin_purge,
    RouteLabel::unmatched,        RouteLabel::admin_status,
};

constexpr std::array<UpstreamOutcome, kUpstreamOutcomeCount> kAllOutcomes = {
    UpstreamOutcome::ok,       UpstreamOutcome::http_4xx, UpstreamOutcome::http_5xx,
    UpstreamOutcome::http_429, UpstreamOutcome::timeout,  UpstreamOutcome::unreachable,
    UpstreamOutcome::reset,    UpstreamOutcome::tls,      UpstreamOutcome::other,
};

// The `cache` label: the cache's outcome, or "none" when the cache did not answer.
constexpr std::uint32_t kCacheNone = 4;
std::uint32_t cache_index(std::optional<cache::Outcome> o) {
  if (!o) return kCacheNone;
  switch (*o) {
    case cache::Outcome::hit:
      return 0;
    case cache::Outcome::miss:
      return 1;
    case cache::Outcome::stale:
      return 2;
    case cache::Outcome::bypass:
      return 3;
  }
  return kCacheNone;
}
std::string cache_label(std::uint32_t index) {
  constexpr std::array<const char*, 5> kNames = {"hit", "miss", "stale", "bypass", "none"};
  return kNames[index < kNames.size() ? index : kCacheNone];
}

bool valid_status(unsigned status) { return status >= 100 && status <= 599; }

// Label tuple -> one integer: route (4 bits), method (3), cache (3), status (10; 0 for
// an invalid status). Every field is range-checked by construction of its enum.
std::uint32_t pack_request_key(RouteLabel route, Method method, unsigned status,
                               std::uint32_t cache) {
  const std::uint32_t s = valid_status(status) ? status : 0;
  return static_cast<std::uint32_t>(route) | (static_cast<std::uint32_t>(method) << 4) |
         (cache << 7) | (s << 10);
}

double seconds(std::chrono::nanoseconds d) {
  // A clock that went backwards must not make a negative observation.
  return d.count() <= 0 ? 0.0 : std::chrono::duration<double>(d).count();
}

double breaker_value(upstream::CircuitState s) {
  switch (s) {
    case upstream::CircuitState::closed:
      return 0;
    case upstream::CircuitState::half_open:
      return 1;
    case upstream::CircuitState::open:
      return 2;
  }
  return 0;
}

prometheus::Counter& counter(prometheus::Registry& reg, const char* name, const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(reg).Add({});
}

prometheus::Gauge& gauge(prometheus::Registry& reg, const char* name, const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(reg).Add({});
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Labels

RouteLabel route_label(RouteKind kind) {
  switch (kind) {
    case RouteKind::list_stores:
    case RouteKind::create_store:
      return RouteLabel::stores;
    case RouteKind::get_store:
    case RouteKind::delete_store:
      return RouteLabel::store;
    case RouteKind::list_secrets:
    case RouteKind::create_secrets:
    case RouteKind::bulk_delete:
      return RouteLabel::secrets;
    case RouteKind::get_secret:
    case RouteKind::patch_secret:
    case RouteKind::delete_secret:
      return RouteLabel::secret;
    case RouteKind::duplicate:
      return RouteLabel::secret_duplicate;
    case RouteKind::get_quota:
      return RouteLabel::quota;
  }
  return RouteLabel::unmatched;
}

std::string_view to_string(RouteLabel route) {
  switch (route) {
    case RouteLabel::stores:
      return upstream::route_template(RouteKind::list_stores);
    case RouteLabel::store:
      return upstream::route_template(RouteKind::get_store);
    case RouteLabel::secrets:
      return upstream::route_template(RouteKind::list_secrets);
    case RouteLabel::secret:
      return upstream::route_template(RouteKind::get_secret);
    case RouteLabel::secret_duplicate:
      return upstream::route_template(RouteKind::duplicate);
    case RouteLabel::quota:
      return upstream::route_template(RouteKind::get_quota);
    case RouteLabel::healthz:
      return "/healthz";
    case RouteLabel::readyz:
      return "/readyz";
    case RouteLabel::metrics:
      return "/metrics";
    case RouteLabel::admin_purge:
      return "/admin/purge";
    case RouteLabel::admin_status:
      return "/admin/status";
    case RouteLabel::unmatched:
      return "unmatched";
  }
  return "unmatched";
}

RouteLabel classify_target(Method method, std::string_view target) {
  const std::string_view path = target.substr(0, target.find('?'));
  for (RouteLabel own : {RouteLabel::healthz, RouteLabel::readyz, RouteLabel::metrics,
                         RouteLabel::admin_purge, RouteLabel::admin_status}) {
    if (path == to_string(own)) return own;
  }
  auto route = upstream::parse_route(method, target);
  return route ? route_label(route->kind) : RouteLabel::unmatched;
}

std::string_view to_string(UpstreamOutcome outcome) {
  switch (outcome) {
    case UpstreamOutcome::ok:
      return "ok";
    case UpstreamOutcome::http_4xx:
      return "http_4xx";
    case UpstreamOutcome::http_5xx:
      return "http_5xx";
    case UpstreamOutcome::http_429:
      return "http_429";
    case UpstreamOutcome::timeout:
      return "timeout";
    case UpstreamOutcome::unreachable:
      return "unreachable";
    case UpstreamOutcome::reset:
      return "reset";
    case UpstreamOutcome::tls:
      return "tls";
    case UpstreamOutcome::other:
      return "other";
  }
  return "other";
}

UpstreamOutcome classify_upstream_result(const upstream::CallResult& result) {
  if (result) {
    const unsigned status = result->status;
    if (status == 429) return UpstreamOutcome::http_429;
    if (status >= 500) return UpstreamOutcome::http_5xx;
    if (status >= 400) return UpstreamOutcome::http_4xx;
    return UpstreamOutcome::ok;
  }
  const boost::system::error_code& ec = result.error();
  if (ec.category() != upstream::upstream_category()) return UpstreamOutcome::other;
  switch (static_cast<UpstreamErrc>(ec.value())) {
    case UpstreamErrc::timeout:
      return UpstreamOutcome::timeout;
    case UpstreamErrc::unreachable:
      return UpstreamOutcome::unreachable;
    case UpstreamErrc::connection_reset:
      return UpstreamOutcome::reset;
    case UpstreamErrc::tls_error:
      return UpstreamOutcome::tls;
    default:
      return UpstreamOutcome::other;
  }
}

const std::vector<double>& duration_buckets() {
  // From a cache hit served in tens of microseconds to the upstream's request timeout
  // (10 s by default); roughly 1-2.5-5 per decade so p50/p99 interpolate well.
  static const std::vector<double> kBuckets = {
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
      0.05,    0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0,
  };
  return kBuckets;
}

// ---------------------------------------------------------------------------------------
// Metrics

void Metrics::Mirror::update(std::uint64_t value) {
  // A source that went backwards was recreated and counts again from zero.
  const std::uint64_t delta = value >= last ? value - last : value;
  if (delta > 0) counter->Increment(static_cast<double>(delta));
  last = value;
}

Metrics::Metrics(std::string_view version)
    : registry_(
          std::make_shared<prometheus::Registry>(prometheus::Registry::InsertBehavior::Throw)) {
  auto& reg = *registry_;
  register_request_families(reg);
  register_cache_families(reg);
  register_guard_families(reg);
  register_server_families(reg);

  prometheus::BuildGauge()
      .Name(kBuildInfo)
      .Help("Always 1; the version label is the build's version.")
      .Register(reg)
      .Add({{"version", std::string(version)}})
      .Set(1);
}

void Metrics::register_request_families(prometheus::Registry& reg) {
  requests_ = &prometheus::BuildCounter()
                   .Name(kRequestsTotal)
                   .Help(
                       "Requests answered, by route template, method, HTTP status and "
                       "cache outcome (hit, miss, stale, bypass; none when the cache did "
                       "not answer).")
                   .Register(reg);

  // Bounded label sets are resolved once, here, so recording is an array index.
  auto& request_duration = prometheus::BuildHistogram()
                               .Name(kRequestDuration)
                               .Help(
                                   "Time from a request's arrival to its answer, by "
                                   "route template.")
                               .Register(reg);
  for (RouteLabel r : kAllRoutes) {
    request_duration_[static_cast<std::size_t>(r)] =
        &request_duration.Add({{"route", std::string(to_string(r))}}, duration_buckets());
  }

  auto& upstream_requests =
      prometheus::BuildCounter()
          .Name(kUpstreamRequests)
          .Help(
              "Upstream calls by outcome: ok (< 400), http_4xx, http_429, http_5xx, or "
              "the transport failure (timeout, unreachable, reset, tls, other).")
          .Register(reg);
  for (UpstreamOutcome o : kAllOutcomes) {
    upstream_requests_[static_cast<std::size_t>(o)] =
        &upstream_requests.Add({{"outcome", std::string(to_string(o))}});
  }
  upstream_duration_ = &prometheus::BuildHistogram()
                            .Name(kUpstreamDuration)
                            .Help("Duration of upstream calls, every outcome included.")
                            .Register(reg)
                            .Add({}, duration_buckets());
}

void Metrics::register_cache_families(prometheus::Registry& reg) {
  cache_entries_ = &gauge(reg, kCacheEntries, "Entries held by the read-through cache.");
  cache_bytes_ = &gauge(reg, kCacheBytes, "Bytes held by the read-through cache's entries.");
  cache_hits_.counter = &counter(reg, kCacheHits, "Reads answered from a fresh cache entry.");
  cache_misses_.counter = &counter(reg, kCacheMisses, "Reads that needed an upstream fill.");
  cache_stale_.counter =
      &counter(reg, kCacheStale,
               "Reads answered from an expired entry because the upstream failed "
               "(stale-if-error).");
  cache_coalesced_.counter =
      &counter(reg, kCacheCoalesced,
               "Reads that waited on another request's in-flight fill of the same key.");
  cache_evictions_.counter =
      &counter(reg, kCacheEvictions, "Entries evicted to stay within the cache's byte budget.");
  cache_invalidations_.counter =
      &counter(reg, kCacheInvalidations, "Cache invalidations caused by writes and purges.");
  cache_refreshes_.counter =
      &counter(reg, kCacheRefreshes, "Background refreshes started ahead of or just past expiry.");
  cache_bad_answers_.counter =
      &counter(reg, kCacheBadAnswers,
               "Upstream answers that were not API answers (garbage bodies, errors without an "
               "envelope), answered as 502 or from a stale entry, never stored.");
  cache_write_updates_.counter =
      &counter(reg, kCacheWriteUpdates,
               "Cached entries a write updated in place from its answer (write-through).");
}

void Metrics::register_guard_families(prometheus::Registry& reg) {
  upstream_429s_.counter =
      &counter(reg, kUpstream429,
               "429 answers received from the upstream itself (not synthesized "
               "by the local rate budget).");
  upstream_retries_.counter =
      &counter(reg, kUpstreamRetries, "Upstream calls that were retries of a failed attempt.");
  // Exported only once a guard reports (refresh): without one there is no breaker and no
  // budget, and a 0 would read as "closed" / "exhausted".
  breaker_family_ = &prometheus::BuildGauge()
                         .Name(kBreakerState)
                         .Help("Upstream circuit breaker state: 0 closed, 1 half_open, 2 open.")
                         .Register(reg);
  budget_family_ = &prometheus::BuildGauge()
                        .Name(kBudgetRemaining)
                        .Help("Upstream requests the local rate budget would admit right now.")
                        .Register(reg);
  // Fleet mode only (created by the first refresh from a guard with a fleet budget).
  fleet_shared_family_ =
      &prometheus::BuildGauge()
           .Name(kFleetShared)
           .Help(
               "1 while the upstream rate budget is shared by the fleet through Redis, 0 "
               "while Redis cannot be asked and this process keeps to its fallback share.")
           .Register(reg);
  budget_tokens_family_ =
      &prometheus::BuildCounter()
           .Name(kBudgetTokens)
           .Help(
               "Rate-budget tokens granted in fleet mode, by the fleet's shared budget or by "
               "the local fallback share.")
           .Register(reg);
}

void Metrics::register_server_families(prometheus::Registry& reg) {
  open_connections_ = &gauge(reg, kOpenConnections, "Client connections open right now.");
  connections_rejected_.counter =
      &counter(reg, kConnectionsRejected,
               "Client connections refused (max_connections reached, or no file descriptor "
               "left), each answered with a 503.");
  log_write_failures_.counter =
      &counter(reg, kLogWriteFailures,
               "Log lines that could not be written (e.g. the reader of stdout went away).");
  tls_handshake_failures_.counter =
      &counter(reg, kTlsHandshakeFailures,
               "TLS handshakes with clients that failed (bad client hello, unverified client "
               "certificate, handshake timeout).");
  unhandled_errors_ =
      &counter(reg, kUnhandledErrors,
               "Exceptions that escaped a connection coroutine or a background cache fill.");
  cache_internal_errors_.counter = unhandled_errors_;
  server_escaped_.counter = unhandled_errors_;
  audit_denials_ = &counter(reg, kAuditDenials,
                            "Requests refused by authentication or authorization (missing or "
                            "unknown credentials, account, store, permission or scope not "
                            "allowed, secret not visible), as the audit log records them.");
}

Metrics::~Metrics() = default;

// Cost model of the request counter. The label set includes the numeric status, so the
// children cannot all be created up front without exporting thousands of empty series
// (12 routes x 7 methods x 500 statuses x 5 cache outcomes) or collapsing statuses into
// classes. Children are therefore created on first use and remembered in a map keyed by
// the packed label tuple: after the first request of a combination, recording is one
// short uncontended-in-practice lock, an integer hash lookup and an atomic add, with no
// allocation and no label strings built. A lock-free table would not make the request
// lock-free anyway: prometheus-cpp's Histogram::Observe takes a per-child mutex, and the
// duration histogram is observed on every request too.
prometheus::Counter& Metrics::request_counter(RouteLabel route, Method method, unsigned status,
                                              std::optional<cache::Outcome> cache) {
  const std::uint32_t ci = cache_index(cache);
  const std::uint32_t key = pack_request_key(route, method, status, ci);
  std::lock_guard lock(requests_mu_);
  auto [it, inserted] = request_children_.try_emplace(key, nullptr);
  if (inserted) {
    try {
      it->second = &requests_->Add(
          {{"route", std::string(to_string(route))},
           {"method", std::string(upstream::to_string(method))},
           {"status", valid_status(status) ? std::to_string(status) : std::string("invalid")},
           {"cache", cache_label(ci)}});
    } catch (...) {
      request_children_.erase(it);
      throw;
    }
  }
  return *it->second;
}

void Metrics::record_request(RouteLabel route, Method method, unsigned status,
                             std::optional<cache::Outcome> cache,
                             std::chrono::nanoseconds duration) {
  // Enum values from a cast are folded in so that the packed key stays unambiguous.
  if (static_cast<std::size_t>(route) >= kRouteLabelCount) route = RouteLabel::unmatched;
  if (static_cast<std::size_t>(method) > static_cast<std::size_t>(Method::other)) {
    method = Method::other;
  }
  request_counter(route, method, status, cache).Increment();
  request_duration_[static_cast<std::size_t>(route)]->Observe(seconds(duration));
}

void Metrics::record_upstream(UpstreamOutcome outcome, std::chrono::nanoseconds duration) {
  const auto index = static_cast<std::size_t>(outcome);
  upstream_requests_[index < kUpstreamOutcomeCount
                         ? index
                         : static_cast<std::size_t>(UpstreamOutcome::other)]
      ->Increment();
  upstream_duration_->Observe(seconds(duration));
}

void Metrics::record_unhandled_error() { unhandled_errors_->Increment(); }
void Metrics::record_audit_denial() { audit_denials_->Increment(); }

void Metrics::refresh(const cache::CacheStats& stats) {
  cache_entries_->Set(static_cast<double>(stats.entries));
  cache_bytes_->Set(static_cast<double>(stats.bytes));
  std::lock_guard lock(mirrors_mu_);
  cache_hits_.update(stats.hits);
  cache_misses_.update(stats.misses);
  cache_stale_.update(stats.stale_served);
  cache_coalesced_.update(stats.coalesced_waits);
  cache_evictions_.update(stats.evictions);
  cache_invalidations_.update(stats.invalidations);
  cache_refreshes_.update(stats.refreshes);
  cache_bad_answers_.update(stats.upstream_bad_answers);
  cache_write_updates_.update(stats.write_updates);
  cache_internal_errors_.update(stats.internal_errors);
}

void Metrics::refresh(const upstream::GuardedUpstreamStats& stats,
                      const upstream::CircuitSnapshot& breaker,
                      const upstream::RateBudgetSnapshot& budget) {
  std::lock_guard lock(mirrors_mu_);
  if (breaker_state_ == nullptr) breaker_state_ = &breaker_family_->Add({});
  if (budget_remaining_ == nullptr) budget_remaining_ = &budget_family_->Add({});
  breaker_state_->Set(breaker_value(breaker.state));
  budget_remaining_->Set(static_cast<double>(budget.remaining));
  upstream_429s_.update(stats.upstream_429s);
  upstream_retries_.update(stats.retries);
  if (!stats.fleet_mode) return;
  if (fleet_shared_ == nullptr) {
    fleet_shared_ = &fleet_shared_family_->Add({});
    fleet_tokens_.counter = &budget_tokens_family_->Add({{"source", "fleet"}});
    fallback_tokens_.counter = &budget_tokens_family_->Add({{"source", "fallback"}});
  }
  fleet_shared_->Set(stats.fleet_shared ? 1.0 : 0.0);
  fleet_tokens_.update(stats.fleet_grants);
  fallback_tokens_.update(stats.fallback_grants);
}

void Metrics::refresh_server(std::size_t open_connections, std::uint64_t escaped_exceptions,
                             std::uint64_t tls_handshake_failures,
                             std::uint64_t connections_rejected) {
  open_connections_->Set(static_cast<double>(open_connections));
  std::lock_guard lock(mirrors_mu_);
  server_escaped_.update(escaped_exceptions);
  tls_handshake_failures_.update(tls_handshake_failures);
  connections_rejected_.update(connections_rejected);
}

void Metrics::refresh_log_write_failures(std::uint64_t failures) {
  std::lock_guard lock(mirrors_mu_);
  log_write_failures_.update(failures);
}

void Metrics::add_collect_hook(CollectHook hook) {
  if (!hook) throw std::invalid_argument("Metrics::add_collect_hook: empty hook");
  std::lock_guard lock(collect_mu_);
  hooks_.push_back(std::move(hook));
}

std::string Metrics::serialize() {
  std::vector<prometheus::MetricFamily> families;
  {
    std::lock_guard lock(collect_mu_);
    for (auto& hook : hooks_) hook(*this);
    families = registry_->Collect();
  }
  std::ostringstream out;
  prometheus::TextSerializer{}.Serialize(out, families);
  return std::move(out).str();
}

// ---------------------------------------------------------------------------------------
// MeteredUpstream

MeteredUpstream::MeteredUpstream(std::shared_ptr<upstream::Upstream> inner,
                                 std::shared_ptr<Metrics> metrics,
                                 std::shared_ptr<const upstream::GuardedUpstream::Clock> clock)
    : inner_(std::move(inner)),
      metrics_(std::move(metrics)),
      clock_(clock ? std::move(clock) : upstream::GuardedUpstream::system_clock()) {
  if (!inner_) throw std::invalid_argument("MeteredUpstream: inner upstream is null");
  if (!metrics_) throw std::invalid_argument("MeteredUpstream: metrics is null");
}

boost::asio::awaitable<upstream::CallResult> MeteredUpstream::call(upstream::ApiRequest request) {
  // Copies, so that nothing below touches `this` once the call has suspended.
  auto inner = inner_;
  auto metrics = metrics_;
  auto clock = clock_;
  const upstream::SteadyTime start = clock->now();
  std::exception_ptr escaped;
  std::optional<upstream::CallResult> result;
  try {
    result.emplace(co_await inner->call(std::move(request)));
  } catch (...) {
    escaped = std::current_exception();
  }
  const auto elapsed = std::chrono::duration_cast<std::chrono::nanoseconds>(clock->now() - start);
  if (escaped) {
    metrics->record_upstream(UpstreamOutcome::other, elapsed);
    std::rethrow_exception(escaped);
  }
  metrics->record_upstream(classify_upstream_result(*result), elapsed);
  co_return std::move(*result);
}

boost::asio::awaitable<std::size_t> MeteredUpstream::preconnect(std::size_t connections) {
  const std::shared_ptr<upstream::Upstream> inner = inner_;
  const std::size_t open = co_await inner->preconnect(connections);
  co_return open;
}

std::string MeteredUpstream::describe() const { return inner_->describe(); }

}  // namespace sproxy::proxy
