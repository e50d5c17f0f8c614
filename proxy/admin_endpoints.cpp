// The proxy's own endpoints beside the Secrets Store API: /admin/purge and /admin/status
// (admin token or `admin`/`purge` clients, audited), /metrics and /readyz.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/beast/http/field.hpp>
#include <chrono>
#include <nlohmann/json.hpp>

#include "cache/policy.hpp"
#include "proxy/handler_common.hpp"
#include "proxy/request_handler.hpp"

namespace sproxy::proxy {

namespace http = boost::beast::http;
using namespace handler_detail;

std::string_view PurgeRequest::scope() const {
  if (account_id.empty()) return "all";
  if (store_id.empty()) return "account";
  return "store";
}

Result<PurgeRequest> parse_purge_request(std::string_view body) {
  if (trim(body).empty()) return PurgeRequest{};
  const auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return errors::invalid_json_body();
  PurgeRequest out;
  for (const auto& [key, value] : j.items()) {
    // Unknown keys are refused: a misspelt "acount_id" must not purge everything.
    if (key != "account_id" && key != "store_id") return errors::invalid_json_body();
    if (!value.is_string() || !upstream::is_valid_id(value.get_ref<const std::string&>())) {
      return errors::invalid_json_body();
    }
    (key == "account_id" ? out.account_id : out.store_id) = value.get<std::string>();
  }
  if (!out.store_id.empty() && out.account_id.empty()) return errors::invalid_json_body();
  return out;
}

std::optional<DenyReason> check_purge(const Identity& identity, const PurgeRequest& purge) {
  if (!identity.has(Permission::purge) && !identity.has(Permission::admin)) {
    return DenyReason::permission_missing;
  }
  if (purge.account_id.empty()) {
    const bool every_account = std::find(identity.accounts.begin(), identity.accounts.end(), "*") !=
                               identity.accounts.end();
    if (!every_account) return DenyReason::account_not_allowed;
  } else if (!identity.has_account(purge.account_id)) {
    return DenyReason::account_not_allowed;
  }
  if (purge.store_id.empty() ? !identity.stores.empty() : !identity.has_store(purge.store_id)) {
    return DenyReason::store_not_allowed;
  }
  return std::nullopt;
}

std::variant<Identity, HttpResponse> RequestHandler::authorize_admin(const HttpRequest& request,
                                                                     std::string_view path,
                                                                     AuditRecord& record) const {
  const unsigned version = request.version();
  const bool status = path == kAdminStatusPath;
  if (path != kAdminPurgePath && !status) {
    return make_error_response(errors::no_route(), version);
  }
  if (request.method() != (status ? http::verb::get : http::verb::post)) {
    return make_error_response(errors::method_not_allowed(), version);
  }
  record.time = now();
  record.method = std::string(request.method_string());
  record.route = std::string(path);
  const auto deny = [&](const upstream::ApiError& error, DenyReason reason) {
    record.decision = AuditDecision::deny;
    record.status = error.status;
    record.reason = std::string(to_string(reason));
    audit(record);
    return make_error_response(error, version);
  };

  auto token = extract_bearer_token(request.base());
  if (!token) return deny(token.error(), credential_problem(token.error()));
  auto identity = identities_->resolve(Credentials{std::move(token).value()});
  if (!identity) return deny(identity.error(), DenyReason::unknown_credentials);
  record.client = identity->name;
  if (!identity->has(Permission::purge) && !identity->has(Permission::admin)) {
    return deny(errors::authentication_error(), DenyReason::permission_missing);
  }
  return std::move(identity).value();
}

HttpResponse RequestHandler::handle_admin(const HttpRequest& request, std::string_view path,
                                          std::optional<PurgeRequest>* purged) const {
  const unsigned version = request.version();
  AuditRecord record;
  auto authorized = authorize_admin(request, path, record);
  if (auto* refused = std::get_if<HttpResponse>(&authorized)) return std::move(*refused);
  const Identity* identity = &std::get<Identity>(authorized);
  if (path == kAdminStatusPath) return admin_status(version);

  auto purge = parse_purge_request(request.body());
  if (!purge) {
    record.status = purge.error().status;
    audit(record);
    return make_error_response(purge.error(), version);
  }
  record.account = purge->account_id;
  record.store = purge->store_id;
  if (auto denied = check_purge(*identity, *purge)) {
    const upstream::ApiError error = errors::authentication_error();
    record.decision = AuditDecision::deny;
    record.status = error.status;
    record.reason = std::string(to_string(*denied));
    audit(record);
    return make_error_response(error, version);
  }

  if (purge->account_id.empty()) {
    cache_->purge_all();
  } else if (purge->store_id.empty()) {
    cache_->purge_account(purge->account_id);
  } else {
    cache_->purge_store(purge->account_id, purge->store_id);
  }
  spdlog::info("admin: cache purged ({}) by {}", purge->scope(), identity->name);
  if (purged != nullptr) *purged = *purge;
  record.status = 200;
  audit(record);
  return make_json_response(
      200,
      cache::SharedBytes(upstream::envelope_success({{"purged", std::string(purge->scope())}})),
      version);
}

boost::asio::awaitable<Reply> publish_purge(std::shared_ptr<cache::WritePublisher> publisher,
                                            std::shared_ptr<cache::ReadThroughCache> cache,
                                            PurgeRequest purge, HttpResponse response,
                                            RouteLabel route) {
  // The shared entries go first: a process that drops its own on the message must not
  // fill them again from the shared cache.
  std::string account = purge.account_id;  // named: no temporaries inside co_await
  std::string store = purge.store_id;
  if (!co_await cache->purge_shared(std::move(account), std::move(store))) {
    spdlog::warn(
        "admin: the fleet's shared cache could not be purged ({}): its entries stay until "
        "their TTL",
        purge.scope());
  }
  // Again here: a miss between the purge above and the shared entries' deletion may have
  // filled from one of them (this process's own message evicts nothing).
  if (purge.account_id.empty()) {
    cache->purge_all();
  } else if (purge.store_id.empty()) {
    cache->purge_account(purge.account_id);
  } else {
    cache->purge_store(purge.account_id, purge.store_id);
  }
  std::vector<std::string> tags;
  if (!purge.store_id.empty()) {
    tags.push_back(cache::policy::store_tag(purge.account_id, purge.store_id));
  } else if (!purge.account_id.empty()) {
    tags.push_back(cache::policy::account_prefix(purge.account_id));
  }
  co_await publisher->publish(std::move(purge.account_id), std::move(tags));
  co_return Reply::of(std::move(response), route);
}

HttpResponse RequestHandler::handle_metrics(const HttpRequest& request) const {
  const unsigned version = request.version();
  if (!options_.metrics) return make_error_response(errors::no_route(), version);
  if (request.method() != http::verb::get) {
    return make_error_response(errors::method_not_allowed(), version);
  }
  HttpResponse res =
      make_json_response(200, cache::SharedBytes(options_.metrics->serialize()), version);
  res.set(http::field::content_type, kMetricsContentType);
  return res;
}

HttpResponse RequestHandler::handle_ready(const HttpRequest& request) const {
  const unsigned version = request.version();
  if (request.method() != http::verb::get) {
    return make_error_response(errors::method_not_allowed(), version);
  }
  if (!is_ready(options_.readiness, cache_->stats().entries, std::chrono::steady_clock::now())) {
    return make_error_response(errors::service_unavailable("not_ready"), version);
  }
  static const cache::SharedBytes body(std::string(R"({"status":"ready"})"));
  return make_json_response(200, body, version);
}

HttpResponse RequestHandler::admin_status(unsigned version) const {
  const cache::CacheStats stats = cache_->stats();
  nlohmann::json result = {{"cache",
                            {{"entries", stats.entries},
                             {"bytes", stats.bytes},
                             {"hits", stats.hits},
                             {"misses", stats.misses},
                             {"stale_served", stats.stale_served},
                             {"coalesced_waits", stats.coalesced_waits},
                             {"evictions", stats.evictions},
                             {"invalidations", stats.invalidations},
                             {"upstream_calls", stats.upstream_calls},
                             {"internal_errors", stats.internal_errors}}},
                           {"guarded", options_.guard != nullptr}};
  if (options_.guard) {
    const upstream::RateBudgetSnapshot budget = options_.guard->budget_snapshot();
    const upstream::CircuitSnapshot breaker = options_.guard->breaker_snapshot();
    // Whole seconds until the upstream's block ends, rounded up; null when not blocked.
    nlohmann::json blocked_for = nullptr;
    if (budget.blocked_until) {
      const auto left = *budget.blocked_until - std::chrono::steady_clock::now();
      blocked_for = left <= upstream::SteadyDuration::zero()
                        ? 0
                        : std::chrono::ceil<std::chrono::seconds>(left).count();
    }
    result["rate_budget"] = {
        {"remaining", budget.remaining},
        {"capacity", budget.capacity},
        {"window_seconds", std::chrono::duration_cast<std::chrono::seconds>(budget.window).count()},
        {"blocked_for_seconds", blocked_for}};
    result["breaker"] = {{"state", std::string(upstream::to_string(breaker.state))},
                         {"consecutive_failures", breaker.consecutive_failures},
                         {"opened_count", breaker.opened_count}};
  }
  if (options_.fleet_status) result["fleet"] = options_.fleet_status();
  return make_json_response(200, cache::SharedBytes(upstream::envelope_success(result)), version);
}

}  // namespace sproxy::proxy
