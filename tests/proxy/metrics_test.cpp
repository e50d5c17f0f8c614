#include "tests/proxy/metrics_fixture.hpp"

namespace sproxy::proxy {
namespace {

using namespace metrics_testing;

// ---------------------------------------------------------------------------------------
// Metrics

TEST(Metrics, CountsEachRequestUnderItsRouteTemplateMethodStatusAndCacheOutcome) {
  Metrics m("1.2.3");
  m.record_request(RouteLabel::secrets, Method::get, 200, cache::Outcome::hit, 40us);
  m.record_request(RouteLabel::secrets, Method::get, 200, cache::Outcome::hit, 60us);
  m.record_request(RouteLabel::secrets, Method::get, 200, cache::Outcome::miss, 5ms);
  m.record_request(RouteLabel::secrets, Method::post, 201, std::nullopt, 8ms);
  m.record_request(RouteLabel::unmatched, Method::get, 404, std::nullopt, 30us);

  const auto e = scrape(m);
  const std::string name = "secrets_proxy_requests_total";
  EXPECT_EQ(e.value(name, {{"route", "/stores/{store_id}/secrets"},
                           {"method", "GET"},
                           {"status", "200"},
                           {"cache", "hit"}}),
            2.0);
  EXPECT_EQ(e.value(name, {{"route", "/stores/{store_id}/secrets"},
                           {"method", "GET"},
                           {"status", "200"},
                           {"cache", "miss"}}),
            1.0);
  EXPECT_EQ(e.value(name, {{"route", "/stores/{store_id}/secrets"},
                           {"method", "POST"},
                           {"status", "201"},
                           {"cache", "none"}}),
            1.0);
  EXPECT_EQ(e.value(name, {{"route", "unmatched"}, {"status", "404"}}), 1.0);
  // Only the combinations that happened are exported.
  EXPECT_EQ(e.count(name), 4u);
}

TEST(Metrics, ObservesRequestDurationsInTheirRoutesHistogram) {
  Metrics m("1.2.3");
  m.record_request(RouteLabel::secret, Method::get, 200, cache::Outcome::hit, 30us);
  m.record_request(RouteLabel::secret, Method::get, 200, cache::Outcome::miss, 20ms);
  m.record_request(RouteLabel::secret, Method::get, 504, cache::Outcome::miss, 12s);
  m.record_request(RouteLabel::quota, Method::get, 200, cache::Outcome::hit, 1ms);

  const auto e = scrape(m);
  const std::string h = "secrets_proxy_request_duration_seconds";
  const Labels secret = {{"route", "/stores/{store_id}/secrets/{secret_id}"}};
  EXPECT_EQ(e.type.at(h), "histogram");
  EXPECT_EQ(e.value(h + "_count", secret), 3.0);
  EXPECT_NEAR(*e.value(h + "_sum", secret), 0.00003 + 0.020 + 12.0, 1e-9);
  auto bucket = [&](const char* le) {
    Labels l = secret;
    l["le"] = le;
    return e.value(h + "_bucket", l);
  };
  EXPECT_EQ(bucket("5e-05"), 1.0);  // the 30 us hit
  EXPECT_EQ(bucket("0.025"), 2.0);  // + the 20 ms miss
  EXPECT_EQ(bucket("10"), 2.0);     // the 12 s one is past the last bound
  EXPECT_EQ(bucket("+Inf"), 3.0);
  EXPECT_EQ(e.value(h + "_count", {{"route", "/quota"}}), 1.0);
  EXPECT_EQ(e.value(h + "_count", {{"route", "/healthz"}}), 0.0);
}

TEST(Metrics, ExpositionDeclaresHelpAndTypeForEveryFamily) {
  Metrics m("1.2.3");
  m.record_request(RouteLabel::healthz, Method::get, 200, std::nullopt, 10us);
  m.refresh(upstream::GuardedUpstreamStats{}, upstream::CircuitSnapshot{},
            upstream::RateBudgetSnapshot{});
  const std::string text = m.serialize();
  const auto e = parse_exposition(text);

  const std::map<std::string, std::string> expected = {
      {"secrets_proxy_requests_total", "counter"},
      {"secrets_proxy_request_duration_seconds", "histogram"},
      {"secrets_proxy_cache_entries", "gauge"},
      {"secrets_proxy_cache_bytes", "gauge"},
      {"secrets_proxy_cache_hits_total", "counter"},
      {"secrets_proxy_cache_misses_total", "counter"},
      {"secrets_proxy_cache_stale_served_total", "counter"},
      {"secrets_proxy_cache_coalesced_waits_total", "counter"},
      {"secrets_proxy_cache_evictions_total", "counter"},
      {"secrets_proxy_cache_invalidations_total", "counter"},
      {"secrets_proxy_cache_refreshes_total", "counter"},
      {"secrets_proxy_cache_upstream_bad_answers_total", "counter"},
      {"secrets_proxy_cache_write_updates_total", "counter"},
      {"secrets_proxy_upstream_requests_total", "counter"},
      {"secrets_proxy_upstream_duration_seconds", "histogram"},
      {"secrets_proxy_upstream_429_total", "counter"},
      {"secrets_proxy_upstream_retries_total", "counter"},
      {"secrets_proxy_upstream_breaker_state", "gauge"},
      {"secrets_proxy_rate_budget_remaining", "gauge"},
      {"secrets_proxy_open_connections", "gauge"},
      {"secrets_proxy_connections_rejected_total", "counter"},
      {"secrets_proxy_tls_handshake_failures_total", "counter"},
      {"secrets_proxy_log_write_failures_total", "counter"},
      {"secrets_proxy_unhandled_errors_total", "counter"},
      {"secrets_proxy_audit_denials_total", "counter"},
      {"secrets_proxy_build_info", "gauge"},
  };
  for (const auto& [name, type] : expected) {
    ASSERT_TRUE(e.type.count(name)) << name << " has no TYPE line\n" << text;
    EXPECT_EQ(e.type.at(name), type) << name;
    ASSERT_TRUE(e.help.count(name)) << name << " has no HELP line";
    EXPECT_FALSE(e.help.at(name).empty()) << name;
  }
  // Nothing else is exported, and every sample belongs to a declared family.
  EXPECT_EQ(e.type.size(), expected.size());
  for (const auto& s : e.samples) {
    EXPECT_TRUE(expected.count(family_of(e, s.name))) << s.name;
  }
  // Counters and upstream outcomes are exported from the start, at zero.
  EXPECT_EQ(e.value("secrets_proxy_audit_denials_total"), 0.0);
  EXPECT_EQ(e.count("secrets_proxy_upstream_requests_total"), kUpstreamOutcomeCount);
  EXPECT_EQ(e.value("secrets_proxy_build_info", {{"version", "1.2.3"}}), 1.0);
}

TEST(Metrics, NeverPutsRequestDataIntoALabel) {
  // A canary shaped like the ids the API carries (32 lowercase hex) and free text in the
  // query: neither may appear anywhere in the exposition.
  const std::string account = "0123456789abcdef0123456789abcdef";
  const std::string canary_id = "cafef00dcafef00dcafef00dcafef00d";
  const std::string canary_text = "CANARY_SECRET_VALUE_7f3a";
  const std::string base = "/client/v4/accounts/" + account + "/secrets_store/stores/";
  const std::vector<std::pair<Method, std::string>> requests = {
      {Method::get, base + canary_id + "/secrets/" + canary_id + "?search=" + canary_text},
      {Method::get, base + canary_id + "/secrets?search=" + canary_text},
      {Method::post, base + canary_id + "/secrets/" + canary_id + "/duplicate"},
      {Method::get, "/client/v4/accounts/" + account + "/secrets_store/" + canary_text},
      {Method::get, "/" + canary_text + "/" + canary_id},
      {Method::get, "/healthz?token=" + canary_text},
  };
  Metrics m("1.2.3");
  for (const auto& [method, target] : requests) {
    m.record_request(classify_target(method, target), method, 200, cache::Outcome::hit, 1ms);
  }
  const std::string text = m.serialize();
  EXPECT_EQ(text.find(canary_id), std::string::npos);
  EXPECT_EQ(text.find(canary_text), std::string::npos);
  EXPECT_EQ(text.find(account), std::string::npos);

  const auto e = parse_exposition(text);
  const std::string name = "secrets_proxy_requests_total";
  EXPECT_EQ(e.value(name, {{"route", "/stores/{store_id}/secrets/{secret_id}"}}), 1.0);
  EXPECT_EQ(e.value(name, {{"route", "/stores/{store_id}/secrets"}}), 1.0);
  EXPECT_EQ(e.value(name, {{"route", "/stores/{store_id}/secrets/{secret_id}/duplicate"}}), 1.0);
  EXPECT_EQ(e.value(name, {{"route", "unmatched"}}), 2.0);
  EXPECT_EQ(e.value(name, {{"route", "/healthz"}}), 1.0);

  // Every route label value in the whole exposition is one of the fixed set.
  std::set<std::string> allowed;
  for (std::size_t i = 0; i < kRouteLabelCount; ++i) {
    allowed.insert(std::string(to_string(static_cast<RouteLabel>(i))));
  }
  for (const auto& s : e.samples) {
    auto it = s.labels.find("route");
    if (it != s.labels.end()) {
      EXPECT_TRUE(allowed.count(it->second)) << it->second;
    }
  }
}

TEST(Metrics, ClassifiesTargetsByRouteTemplate) {
  const std::string base = "/client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store";
  EXPECT_EQ(classify_target(Method::get, base + "/stores"), RouteLabel::stores);
  EXPECT_EQ(classify_target(Method::del, base + "/stores/s1"), RouteLabel::store);
  EXPECT_EQ(classify_target(Method::patch, base + "/stores/s1/secrets/x"), RouteLabel::secret);
  EXPECT_EQ(classify_target(Method::get, base + "/quota"), RouteLabel::quota);
  EXPECT_EQ(classify_target(Method::get, "/metrics"), RouteLabel::metrics);
  EXPECT_EQ(classify_target(Method::get, "/readyz"), RouteLabel::readyz);
  EXPECT_EQ(classify_target(Method::post, "/admin/purge"), RouteLabel::admin_purge);
  // A known path with a method it does not serve is a routing error.
  EXPECT_EQ(classify_target(Method::put, base + "/stores"), RouteLabel::unmatched);
  EXPECT_EQ(classify_target(Method::get, "/healthzz"), RouteLabel::unmatched);
  EXPECT_EQ(to_string(route_label(RouteKind::bulk_delete)), "/stores/{store_id}/secrets");
}

TEST(Metrics, LabelsAStatusOutsideHttpsRangeAsInvalid) {
  Metrics m("1.2.3");
  m.record_request(RouteLabel::stores, Method::get, 1000, std::nullopt, 1ms);
  m.record_request(RouteLabel::stores, Method::get, 0, std::nullopt, 1ms);
  m.record_request(RouteLabel::stores, Method::other, 599, std::nullopt, 1ms);
  const auto e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_requests_total", {{"status", "invalid"}}), 2.0);
  EXPECT_EQ(e.value("secrets_proxy_requests_total", {{"status", "599"}, {"method", "OTHER"}}), 1.0);
}

TEST(Metrics, MirrorsCacheStatsIntoMonotonicCountersAndGauges) {
  Metrics m("1.2.3");
  cache::CacheStats s;
  s.entries = 7;
  s.bytes = 4096;
  s.hits = 5;
  s.misses = 2;
  s.stale_served = 1;
  s.coalesced_waits = 3;
  s.evictions = 4;
  s.invalidations = 6;
  s.refreshes = 8;
  s.upstream_bad_answers = 9;
  s.write_updates = 10;
  m.refresh(s);
  auto e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_cache_entries"), 7.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_bytes"), 4096.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_hits_total"), 5.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_misses_total"), 2.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_stale_served_total"), 1.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_coalesced_waits_total"), 3.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_evictions_total"), 4.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_invalidations_total"), 6.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_refreshes_total"), 8.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_upstream_bad_answers_total"), 9.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_write_updates_total"), 10.0);

  // The same absolute values again add nothing; growth adds the difference.
  m.refresh(s);
  s.hits = 8;
  s.entries = 3;
  m.refresh(s);
  e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_cache_hits_total"), 8.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_misses_total"), 2.0);
  EXPECT_EQ(e.value("secrets_proxy_cache_entries"), 3.0);

  // A recreated source starts from zero again: the counter never goes down.
  s.hits = 3;
  m.refresh(s);
  EXPECT_EQ(scrape(m).value("secrets_proxy_cache_hits_total"), 11.0);
}

TEST(Metrics, RunsCollectHooksOnEveryScrape) {
  Metrics m("1.2.3");
  std::uint64_t hits = 0;
  int runs = 0;
  m.add_collect_hook([&](Metrics& self) {
    ++runs;
    cache::CacheStats s;
    s.hits = hits;
    self.refresh(s);
  });
  hits = 4;
  EXPECT_EQ(scrape(m).value("secrets_proxy_cache_hits_total"), 4.0);
  hits = 10;
  EXPECT_EQ(scrape(m).value("secrets_proxy_cache_hits_total"), 10.0);
  EXPECT_EQ(runs, 2);
  EXPECT_THROW(m.add_collect_hook({}), std::invalid_argument);
}

TEST(Metrics, ReportsTheUpstreamGuardsStateAndCounters) {
  Metrics m("1.2.3");
  // Without a guard there is no breaker state nor budget to report.
  auto before = scrape(m);
  EXPECT_FALSE(before.type.count("secrets_proxy_upstream_breaker_state"));
  EXPECT_FALSE(before.value("secrets_proxy_rate_budget_remaining").has_value());
  EXPECT_EQ(before.value("secrets_proxy_upstream_retries_total"), 0.0);

  upstream::GuardedUpstreamStats stats;
  stats.upstream_429s = 2;
  stats.retries = 9;
  upstream::CircuitSnapshot breaker;
  breaker.state = upstream::CircuitState::open;
  upstream::RateBudgetSnapshot budget;
  budget.remaining = 1057;
  m.refresh(stats, breaker, budget);
  auto e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_upstream_429_total"), 2.0);
  EXPECT_EQ(e.value("secrets_proxy_upstream_retries_total"), 9.0);
  EXPECT_EQ(e.value("secrets_proxy_upstream_breaker_state"), 2.0);
  EXPECT_EQ(e.value("secrets_proxy_rate_budget_remaining"), 1057.0);

  breaker.state = upstream::CircuitState::half_open;
  stats.upstream_429s = 3;
  m.refresh(stats, breaker, budget);
  e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_upstream_breaker_state"), 1.0);
  EXPECT_EQ(e.value("secrets_proxy_upstream_429_total"), 3.0);
  breaker.state = upstream::CircuitState::closed;
  m.refresh(stats, breaker, budget);
  EXPECT_EQ(scrape(m).value("secrets_proxy_upstream_breaker_state"), 0.0);
}

TEST(Metrics, ReportsWhetherTheFleetsBudgetIsSharedOnlyInFleetMode) {
  Metrics m("1.2.3");
  upstream::GuardedUpstreamStats stats;
  m.refresh(stats, upstream::CircuitSnapshot{}, upstream::RateBudgetSnapshot{});
  auto alone = scrape(m);
  EXPECT_FALSE(alone.type.count("secrets_proxy_fleet_budget_shared"));
  EXPECT_FALSE(alone.type.count("secrets_proxy_rate_budget_tokens_total"));

  stats.fleet_mode = true;
  stats.fleet_shared = true;
  stats.fleet_grants = 7;
  m.refresh(stats, upstream::CircuitSnapshot{}, upstream::RateBudgetSnapshot{});
  auto e = scrape(m);
  EXPECT_EQ(e.type.at("secrets_proxy_fleet_budget_shared"), "gauge");
  EXPECT_EQ(e.value("secrets_proxy_fleet_budget_shared"), 1.0);
  EXPECT_EQ(e.value("secrets_proxy_rate_budget_tokens_total", {{"source", "fleet"}}), 7.0);
  EXPECT_EQ(e.value("secrets_proxy_rate_budget_tokens_total", {{"source", "fallback"}}), 0.0);

  stats.fleet_shared = false;
  stats.fallback_grants = 3;
  m.refresh(stats, upstream::CircuitSnapshot{}, upstream::RateBudgetSnapshot{});
  e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_fleet_budget_shared"), 0.0);
  EXPECT_EQ(e.value("secrets_proxy_rate_budget_tokens_total", {{"source", "fallback"}}), 3.0);
}

TEST(Metrics, AddsUnhandledErrorsFromEverySource) {
  Metrics m("1.2.3");
  m.record_unhandled_error();
  m.refresh_server(12, 2, 0, 0);
  cache::CacheStats s;
  s.internal_errors = 3;
  m.refresh(s);
  m.refresh_server(5, 2, 0, 0);  // unchanged: adds nothing
  auto e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_unhandled_errors_total"), 6.0);
  EXPECT_EQ(e.value("secrets_proxy_open_connections"), 5.0);

  m.record_audit_denial();
  e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_audit_denials_total"), 1.0);
}

TEST(Metrics, MirrorsTheServersRejectedConnectionsAndFailedLogWrites) {
  Metrics m("1.2.3");
  m.refresh_server(0, 0, 0, 2);
  m.refresh_log_write_failures(5);
  auto e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_connections_rejected_total"), 2.0);
  EXPECT_EQ(e.value("secrets_proxy_log_write_failures_total"), 5.0);
  m.refresh_server(0, 0, 0, 2);  // unchanged: adds nothing
  m.refresh_server(0, 0, 0, 3);
  m.refresh_log_write_failures(7);
  e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_connections_rejected_total"), 3.0);
  EXPECT_EQ(e.value("secrets_proxy_log_write_failures_total"), 7.0);
}

TEST(Metrics, MirrorsTheServersTlsHandshakeFailures) {
  Metrics m("1.2.3");
  EXPECT_EQ(scrape(m).value("secrets_proxy_tls_handshake_failures_total"), 0.0);
  m.refresh_server(0, 0, 3, 0);
  EXPECT_EQ(scrape(m).value("secrets_proxy_tls_handshake_failures_total"), 3.0);
  m.refresh_server(0, 0, 3, 0);  // unchanged: adds nothing
  m.refresh_server(0, 0, 4, 0);
  auto e = scrape(m);
  EXPECT_EQ(e.value("secrets_proxy_tls_handshake_failures_total"), 4.0);
  EXPECT_EQ(e.value("secrets_proxy_unhandled_errors_total"), 0.0);
}

TEST(Metrics, LosesNoRequestRecordedConcurrently) {
  Metrics m("1.2.3");
  constexpr int kPerThread = 20'000;
  auto work = [&m](unsigned status) {
    for (int i = 0; i < kPerThread; ++i) {
      m.record_request(RouteLabel::secrets, Method::get, status, cache::Outcome::hit, 50us);
      m.record_request(RouteLabel::secrets, Method::get, 200, cache::Outcome::miss, 50us);
    }
  };
  std::thread a(work, 200);
  std::thread b(work, 404);
  std::string mid = m.serialize();  // scraping while recording is safe
  a.join();
  b.join();
  EXPECT_FALSE(mid.empty());
  const auto e = scrape(m);
  const std::string n = "secrets_proxy_requests_total";
  EXPECT_EQ(e.value(n, {{"status", "200"}, {"cache", "hit"}}), kPerThread);
  EXPECT_EQ(e.value(n, {{"status", "404"}, {"cache", "hit"}}), kPerThread);
  EXPECT_EQ(e.value(n, {{"status", "200"}, {"cache", "miss"}}), 2.0 * kPerThread);
  EXPECT_EQ(e.value("secrets_proxy_request_duration_seconds_count",
                    {{"route", "/stores/{store_id}/secrets"}}),
            4.0 * kPerThread);
}

}  // namespace
}  // namespace sproxy::proxy
