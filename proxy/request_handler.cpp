#include "proxy/request_handler.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/beast/http/field.hpp>
#include <cctype>
#include <chrono>
#include <nlohmann/json.hpp>
#include <utility>

#include "cache/snapshot.hpp"
#include "proxy/answer.hpp"

namespace sproxy::proxy {
namespace {

namespace http = boost::beast::http;
namespace errors = upstream::errors;
using upstream::Micros;
using upstream::RouteKind;

Micros now_micros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const cache::SharedBytes& health_body() {
  static const cache::SharedBytes body(std::string(R"({"status":"ok"})"));
  return body;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// True when a Cache-Control header lists the `no-cache` directive.
bool wants_revalidation(const http::fields& headers) {
  for (auto it = headers.find(http::field::cache_control);
       it != headers.end() && it->name() == http::field::cache_control; ++it) {
    std::string_view rest = it->value();
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      const std::string_view directive = trim(rest.substr(0, comma));
      if (iequals(directive.substr(0, directive.find('=')), "no-cache")) return true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}

// The metrics label of a path under /admin.
RouteLabel admin_label(std::string_view path) {
  if (path == kAdminPurgePath) return RouteLabel::admin_purge;
  if (path == kAdminStatusPath) return RouteLabel::admin_status;
  return RouteLabel::unmatched;
}

// The audit reason of a credential extract_credentials refused.
DenyReason credential_problem(const upstream::ApiError& error) {
  if (error == errors::missing_credentials()) return DenyReason::missing_credentials;
  if (error == errors::invalid_request_headers()) return DenyReason::ambiguous_credentials;
  return DenyReason::malformed_credentials;
}

}  // namespace

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

WriteBodyCheck check_write_body(upstream::RouteKind kind, std::string_view body,
                                const Identity& identity, std::size_t max_value_bytes) {
  // The parsed bodies hold secret values; they live only inside this function.
  WriteBodyCheck out;
  switch (kind) {
    case RouteKind::create_secrets: {
      auto parsed = upstream::parse_secret_create(body, max_value_bytes);
      if (!parsed) {
        out.invalid = parsed.error();
        break;
      }
      for (const auto& item : *parsed) {
        out.names.push_back(item.name);
        out.scopes_allowed = out.scopes_allowed && scopes_within(identity, item.scopes);
      }
      break;
    }
    case RouteKind::patch_secret: {
      auto parsed = upstream::parse_secret_patch(body, max_value_bytes);
      if (!parsed) {
        out.invalid = parsed.error();
        break;
      }
      if (parsed->scopes) out.scopes_allowed = scopes_within(identity, *parsed->scopes);
      break;
    }
    case RouteKind::duplicate: {
      auto parsed = upstream::parse_secret_duplicate(body);
      if (!parsed) {
        out.invalid = parsed.error();
        break;
      }
      out.names.push_back(parsed->name);
      out.scopes_allowed = scopes_within(identity, parsed->scopes);
      break;
    }
    case RouteKind::create_store: {
      auto parsed = upstream::parse_store_create(body);
      if (!parsed) out.invalid = parsed.error();
      break;
    }
    case RouteKind::bulk_delete: {
      auto parsed = upstream::parse_bulk_delete(body);
      if (!parsed) {
        out.invalid = parsed.error();
        break;
      }
      out.ids = std::move(parsed->ids);
      break;
    }
    default:
      break;
  }
  return out;
}

namespace {

upstream::Route route_of(RouteKind kind, std::string account_id, std::string store_id,
                         std::string secret_id = {}) {
  upstream::Route r;
  r.kind = kind;
  r.account_id = std::move(account_id);
  r.store_id = std::move(store_id);
  r.secret_id = std::move(secret_id);
  return r;
}

AuditRecord audit_record(Micros now, const std::optional<std::string>& client,
                         std::string_view method, const upstream::Route& route) {
  AuditRecord r;
  r.time = now;
  r.client = client;
  r.method = std::string(method);
  r.route = std::string(upstream::route_template(route.kind));
  r.account = route.account_id;
  r.store = route.store_id;
  r.secret_id = route.secret_id;
  return r;
}

// The `result` of a 2xx envelope, or null (answers are the upstream's; never trusted).
nlohmann::json answer_result(const cache::Answer& answer) {
  if (answer.status < 200 || answer.status >= 300 || !answer.body) return nullptr;
  auto j = nlohmann::json::parse(*answer.body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return nullptr;
  auto it = j.find("result");
  if (it == j.end()) return nullptr;
  return std::move(*it);
}

std::optional<std::string> string_member(const nlohmann::json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

std::optional<AuditSecret> audit_secret(const nlohmann::json& j) {
  auto id = string_member(j, "id");
  if (!id) return std::nullopt;
  return AuditSecret{std::move(*id), string_member(j, "name")};
}

// Fills the audit record of a successful write from its answer: what was created or
// changed, by id and name (answers never hold values).
void describe_write_result(AuditRecord& record, RouteKind kind, const cache::Answer& answer) {
  const nlohmann::json result = answer_result(answer);
  switch (kind) {
    case RouteKind::create_store:
      if (auto id = string_member(result, "id")) record.store = *id;
      break;
    case RouteKind::create_secrets:
      if (result.is_array()) {
        record.secrets.clear();
        for (const auto& item : result) {
          if (auto s = audit_secret(item)) record.secrets.push_back(std::move(*s));
        }
      }
      break;
    case RouteKind::patch_secret:
      if (auto name = string_member(result, "name")) record.secret_name = std::move(name);
      break;
    case RouteKind::duplicate:
      if (auto s = audit_secret(result)) record.secrets = {std::move(*s)};
      break;
    default:
      break;
  }
}

// True for the routes whose 404 may be about a secret the request names (in its path or,
// for a bulk delete, in its body).
bool names_secret(RouteKind kind) {
  return kind == RouteKind::get_secret || kind == RouteKind::patch_secret ||
         kind == RouteKind::delete_secret || kind == RouteKind::duplicate ||
         kind == RouteKind::bulk_delete;
}

// Gives a 404 about a secret the one body the proxy writes for a secret the client may not
// see (cache::secret_not_found_body): an upstream's own bytes for a missing secret (its
// formatting, members of its own) would tell missing from hidden. A store's 404 names no
// secret and stays as it is. No parsing, no allocation.
void answer_missing_secret_canonically(RouteKind kind, cache::Answer& answer) {
  if (answer.status != 404 || !names_secret(kind)) return;
  const cache::SharedBytes& canonical = cache::secret_not_found_body();
  if (answer.body.data() == canonical.data()) return;
  if (answer.body && answer.body.view().find("store_not_found") != std::string_view::npos) return;
  answer.body = canonical;
}

}  // namespace

struct RequestHandler::SecretLookup {
  cache::Answer answer;  // the get as the viewer sees it
  bool hidden = false;   // the secret exists, but not for this viewer
  std::optional<std::string> name;
};

RequestHandler::RequestHandler(std::shared_ptr<cache::ReadThroughCache> cache,
                               std::shared_ptr<const IdentityResolver> identities,
                               HandlerOptions options)
    : cache_(std::move(cache)), identities_(std::move(identities)), options_(std::move(options)) {}

Micros RequestHandler::now() const { return options_.clock ? options_.clock() : now_micros(); }

void RequestHandler::audit(const AuditRecord& record) const {
  if (record.decision == AuditDecision::deny && options_.metrics) {
    options_.metrics->record_audit_denial();
  }
  if (options_.audit) options_.audit->write(record);
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

HttpResponse RequestHandler::handle_admin(const HttpRequest& request, std::string_view path) const {
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
  record.status = 200;
  audit(record);
  return make_json_response(
      200,
      cache::SharedBytes(upstream::envelope_success({{"purged", std::string(purge->scope())}})),
      version);
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
  return make_json_response(200, cache::SharedBytes(upstream::envelope_success(result)), version);
}

RequestHandler::Trace RequestHandler::begin_trace(const HttpRequest& request) const {
  Trace trace;
  if (!options_.metrics && !access_logging()) return trace;
  // Measured here, on the request path's only clock reads, so the duration covers the
  // whole answer (cache, upstream, audit).
  trace.started = std::chrono::steady_clock::now();
  trace.method = upstream::method_from_string(request.method_string());
  if (access_logging()) trace.request_id = request_id_for(request.base());
  return trace;
}

void RequestHandler::record(Reply& reply, Trace& trace) const {
  const bool access = access_logging() && !trace.request_id.empty();
  if (!options_.metrics && !access) return;
  const auto took = std::chrono::steady_clock::now() - trace.started;
  const unsigned status = reply.status();
  if (options_.metrics) {
    options_.metrics->record_request(reply.route, trace.method, status, reply.cache, took);
  }
  if (access) {
    options_.access_log->write(AccessRecord{trace.request_id, reply.client, trace.method,
                                            reply.route, status, reply.cache, reply.upstream_time,
                                            took});
    if (reply.cached) {
      reply.request_id = std::move(trace.request_id);
    } else {
      reply.response.set("X-Request-Id", trace.request_id);
    }
  }
}

Reply RequestHandler::answer(HttpRequest request, ConnectionContext& connection,
                             const boost::asio::any_io_executor& ex) const {
  const unsigned version = request.version();
  try {
    Trace trace = begin_trace(request);
    Reply reply = dispatch(std::move(request), connection, ex, trace);
    // A reply that waits records itself when it is finished.
    if (reply.ready()) record(reply, trace);
    return reply;
  } catch (const std::exception& e) {
    // Not control flow: a safety net so one failing request gets a 500, not a dropped
    // connection.
    spdlog::error("request handler failed: {}", e.what());
  }
  return Reply::of(make_error_response(errors::internal_error(), version));
}

boost::asio::awaitable<Reply> RequestHandler::finish_write(
    HttpRequest request, upstream::Route route, std::shared_ptr<const ResolvedClient> client,
    Micros now, Trace trace) const {
  const unsigned version = request.version();
  try {
    std::string name;
    if (access_logging()) name = client->identity.name;
    // Awaited into a named local: GCC 12 destroys temporaries of a co_await inside a
    // co_return expression or a braced initializer twice.
    Reply reply =
        co_await handle_write(std::move(request), std::move(route), std::move(client), now);
    reply.client = std::move(name);
    record(reply, trace);
    co_return reply;
  } catch (const std::exception& e) {
    spdlog::error("request handler failed: {}", e.what());
  }
  co_return Reply::of(make_error_response(errors::internal_error(), version));
}

boost::asio::awaitable<HttpResponse> RequestHandler::handle(HttpRequest request,
                                                            ConnectionContext connection) const {
  auto ex = co_await boost::asio::this_coro::executor;
  Reply reply = answer(std::move(request), connection, ex);
  if (!reply.ready()) {
    Reply finished = co_await std::move(reply.rest);
    reply = std::move(finished);
  }
  co_return reply.take_response();
}

Reply RequestHandler::refuse(const HttpRequest& request, const upstream::Route& route,
                             RouteLabel label, Micros now, const std::optional<std::string>& client,
                             const upstream::ApiError& error, DenyReason reason) const {
  if (options_.audit || options_.metrics) {
    AuditRecord record = audit_record(now, client, request.method_string(), route);
    record.decision = AuditDecision::deny;
    record.status = error.status;
    record.reason = std::string(to_string(reason));
    audit(record);
  }
  return Reply::of(make_error_response(error, request.version()), label);
}

std::variant<std::shared_ptr<const ResolvedClient>, Reply> RequestHandler::identify(
    const HttpRequest& request, ConnectionContext& connection, const upstream::Route& route,
    RouteLabel label, Micros now) const {
  // Read before resolving: a reload between the two leaves the memo under the old
  // generation, so the next request resolves again.
  const std::uint64_t generation = identities_->generation();
  const RawCredential raw = raw_credential(request.base());
  if (raw.ambiguous) {
    // Before the memo: a remembered credential sent again next to another one must not
    // pass as the remembered one.
    return refuse(request, route, label, now, std::nullopt, errors::invalid_request_headers(),
                  DenyReason::ambiguous_credentials);
  }
  if (auto known = connection.credentials.find(raw, generation)) return known;

  const auto deny = [&](const std::optional<std::string>& client, const upstream::ApiError& error,
                        DenyReason reason) {
    return refuse(request, route, label, now, client, error, reason);
  };

  // A verified client certificate that maps to a client identifies the caller.
  Result<Identity> identity = errors::authentication_error();
  if (connection.peer_certificate) {
    identity = identities_->resolve_certificate(*connection.peer_certificate);
  }
  auto credentials = extract_credentials(request.base());
  const bool sent_none = !credentials && credentials.error() == errors::missing_credentials();
  if (!identity || !sent_none) {
    if (!credentials) {
      return deny(std::nullopt, credentials.error(), credential_problem(credentials.error()));
    }
    auto by_credentials = identities_->resolve(*credentials);
    if (!by_credentials) {
      return deny(identity ? std::optional<std::string>(identity->name) : std::nullopt,
                  by_credentials.error(), DenyReason::unknown_credentials);
    }
    if (identity && by_credentials->name != identity->name) {
      return deny(identity->name, errors::authentication_error(), DenyReason::credential_mismatch);
    }
    identity = std::move(by_credentials);
  }
  auto client = std::make_shared<const ResolvedClient>(std::move(identity).value());
  connection.credentials.remember(raw, generation, client);
  return client;
}

std::variant<std::shared_ptr<const ResolvedClient>, Reply> RequestHandler::admit(
    const HttpRequest& request, ConnectionContext& connection, const upstream::Route& route,
    RouteLabel label, Micros now) const {
  auto identified = identify(request, connection, route, label, now);
  if (std::holds_alternative<Reply>(identified)) return identified;
  const auto& client = std::get<std::shared_ptr<const ResolvedClient>>(identified);
  const Identity& identity = client->identity;
  if (auto denied = check_access(identity, route)) {
    spdlog::debug("denied {} {} to client {}: {}", std::string_view(request.method_string()),
                  upstream::route_template(route.kind), identity.name, to_string(*denied));
    Reply reply =
        refuse(request, route, label, now, identity.name, errors::authentication_error(), *denied);
    if (access_logging()) reply.client = identity.name;
    return reply;
  }
  return identified;
}

std::optional<HttpResponse> RequestHandler::refuse_before_body(
    const HttpRequest& head, ConnectionContext& connection) const {
  const unsigned version = head.version();
  const std::string_view target = head.target();
  const std::string_view path = target.substr(0, target.find('?'));
  if (path == kHealthPath || path == kReadyPath || path == kMetricsPath) return std::nullopt;
  try {
    Trace trace = begin_trace(head);
    std::optional<Reply> refused;
    if (path == "/admin" || path.substr(0, 7) == "/admin/") {
      // The same checks as the endpoint's own, on the head alone; an allowed caller's
      // request is checked (and audited) again once its body is in.
      AuditRecord record;
      auto authorized = authorize_admin(head, path, record);
      if (auto* response = std::get_if<HttpResponse>(&authorized)) {
        refused = Reply::of(std::move(*response), admin_label(path));
      }
    } else {
      upstream::Route route;
      const auto method = upstream::method_from_string(head.method_string());
      if (auto parsed = upstream::parse_route_into(method, target, route); !parsed) {
        refused = Reply::of(make_error_response(parsed.error(), version));
      } else {
        auto admitted = admit(head, connection, route, route_label(route.kind), now());
        if (auto* reply = std::get_if<Reply>(&admitted)) refused = std::move(*reply);
      }
    }
    if (!refused) return std::nullopt;
    record(*refused, trace);
    return refused->take_response();
  } catch (const std::exception& e) {
    spdlog::error("request handler failed: {}", e.what());
  }
  return make_error_response(errors::internal_error(), version);
}

Reply RequestHandler::dispatch(HttpRequest request, ConnectionContext& connection,
                               const boost::asio::any_io_executor& ex, Trace& trace) const {
  const unsigned version = request.version();
  const std::string_view target = request.target();
  const std::string_view path = target.substr(0, target.find('?'));

  if (path == kHealthPath) {
    if (request.method() != http::verb::get) {
      return Reply::of(make_error_response(errors::method_not_allowed(), version),
                       RouteLabel::healthz);
    }
    return Reply::of(make_json_response(200, health_body(), version), RouteLabel::healthz);
  }
  if (path == kReadyPath) return Reply::of(handle_ready(request), RouteLabel::readyz);
  if (path == kMetricsPath) {
    return Reply::of(handle_metrics(request),
                     options_.metrics ? RouteLabel::metrics : RouteLabel::unmatched);
  }
  if (path == "/admin" || path.substr(0, 7) == "/admin/") {
    return Reply::of(handle_admin(request, path), admin_label(path));
  }

  const auto method = upstream::method_from_string(request.method_string());
  // Parsed into the connection's route, whose strings keep their storage: a hit
  // allocates nothing for it. Copied into a reply that waits, which outlives this call.
  RequestScratch& scratch = connection.scratch;
  if (auto parsed = upstream::parse_route_into(method, target, scratch.route); !parsed) {
    return Reply::of(make_error_response(parsed.error(), version));
  }
  const upstream::Route& route = scratch.route;
  const RouteLabel label = route_label(route.kind);

  const Micros now = this->now();
  auto admitted = admit(request, connection, route, label, now);
  if (auto* refused = std::get_if<Reply>(&admitted)) return std::move(*refused);
  auto client = std::get<std::shared_ptr<const ResolvedClient>>(std::move(admitted));
  if (!upstream::is_write(route.kind)) {
    return answer_read(request, route, std::move(client), now, ex, scratch, trace);
  }
  Reply later;
  later.rest = finish_write(std::move(request), route, std::move(client), now, std::move(trace));
  return later;
}

Reply RequestHandler::answer_read(const HttpRequest& request, const upstream::Route& route,
                                  std::shared_ptr<const ResolvedClient> client, Micros now,
                                  const boost::asio::any_io_executor& ex, RequestScratch& scratch,
                                  Trace& trace) const {
  const unsigned version = request.version();
  const bool revalidate = wants_revalidation(request.base());
  std::optional<cache::Answer> answer;
  if (!revalidate) {
    answer = try_answer_from_cache(route, *client, now, ex, scratch);
    if (answer && !audits_read(route.kind, *client, *answer)) {
      return read_reply(std::move(*answer), route.kind, version, *client);
    }
  }
  // A cache answer that still has to be audited goes along, so it is not read twice.
  Reply later;
  later.rest = finish_read(route, std::move(client), revalidate, std::move(answer), now,
                           std::move(trace), version);
  return later;
}

std::optional<cache::Answer> RequestHandler::try_answer_from_cache(
    const upstream::Route& route, const ResolvedClient& client, Micros now,
    const boost::asio::any_io_executor& ex, RequestScratch& scratch) const {
  return cache_->try_read(route, client.viewer, now, ex, scratch.read, client.identity.name);
}

bool RequestHandler::looks_for_hidden(RouteKind kind, const ResolvedClient& client,
                                      const cache::Answer& answer) const {
  // A non-admin's get that finds nothing may have been refused a hidden secret: a
  // denial for the audit log.
  return options_.audit && kind == RouteKind::get_secret && !client.viewer.all &&
         answer.status == 404;
}

bool RequestHandler::audits_read(RouteKind kind, const ResolvedClient& client,
                                 const cache::Answer& answer) const {
  return (options_.audit && options_.audit->reads()) || looks_for_hidden(kind, client, answer);
}

Reply RequestHandler::read_reply(cache::Answer answer, upstream::RouteKind kind, unsigned version,
                                 const ResolvedClient& client) const {
  answer_missing_secret_canonically(kind, answer);
  Reply reply;
  reply.route = route_label(kind);
  reply.cache = answer.outcome;
  reply.upstream_time = answer.upstream_time;
  if (access_logging()) reply.client = client.identity.name;
  if (can_serialize_directly(answer, version)) {
    reply.cached = std::move(answer);
    reply.version = version;
  } else {
    reply.response = answer_response(answer, version, /*is_read=*/true);
  }
  return reply;
}

boost::asio::awaitable<Reply> RequestHandler::finish_read(
    upstream::Route route, std::shared_ptr<const ResolvedClient> client, bool revalidate,
    std::optional<cache::Answer> cached, Micros now, Trace trace, unsigned version) const {
  const auto kind = route.kind;
  try {
    const Identity& identity = client->identity;
    cache::Answer answer;
    if (cached) {
      answer = std::move(*cached);
    } else {
      cache::ReadOptions options;
      options.revalidate = revalidate;
      options.viewer = client->viewer;
      options.client = identity.name;
      // The route is only needed afterwards for an audit line.
      upstream::Route read_route = options_.audit ? route : std::move(route);
      cache::Answer read = co_await cache_->read(std::move(read_route), std::move(options), now);
      answer = std::move(read);
    }
    spdlog::debug("GET {} client={} -> {} {}", upstream::route_template(kind), identity.name,
                  answer.status, cache::to_string(answer.outcome));

    const bool audit_reads = options_.audit && options_.audit->reads();
    const bool check_hidden = looks_for_hidden(kind, *client, answer);
    if (audit_reads || check_hidden) {
      AuditRecord record =
          audit_record(now, identity.name, upstream::to_string(upstream::Method::get), route);
      record.status = answer.status;
      if (check_hidden) {
        // Asked for hidden and missing secrets alike, so the answer's timing does not tell
        // them apart.
        cache::ReadOptions all;
        all.viewer = cache::Viewer{true, {}};
        const cache::Answer any = co_await cache_->read(route, std::move(all), now);
        if (any.status == 200) {
          record.decision = AuditDecision::deny;
          record.reason = std::string(to_string(DenyReason::secret_not_visible));
          record.secret_name = string_member(answer_result(any), "name");
        }
      }
      if (audit_reads || record.decision == AuditDecision::deny) audit(record);
    }
    Reply reply = read_reply(std::move(answer), kind, version, *client);
    record(reply, trace);
    co_return reply;
  } catch (const std::exception& e) {
    spdlog::error("request handler failed: {}", e.what());
  }
  co_return Reply::of(make_error_response(errors::internal_error(), version));
}

boost::asio::awaitable<RequestHandler::SecretLookup> RequestHandler::lookup_secret(
    std::string account_id, std::string store_id, std::string secret_id, cache::Viewer viewer,
    std::string client, Micros now) const {
  SecretLookup out;
  const bool viewer_all = viewer.all;
  cache::ReadOptions options;
  options.viewer = std::move(viewer);
  options.client = std::move(client);
  upstream::Route route = route_of(RouteKind::get_secret, account_id, store_id, secret_id);
  out.answer = co_await cache_->read(std::move(route), std::move(options), now);
  answer_missing_secret_canonically(RouteKind::get_secret, out.answer);
  if (out.answer.status == 200) {
    out.name = string_member(answer_result(out.answer), "name");
  } else if (out.answer.status == 404 && !viewer_all) {
    // Hidden or missing: the caller's answer is the same either way; the audit line is
    // not. Both cases make this second lookup, so timing does not tell them apart.
    cache::ReadOptions all;
    all.viewer = cache::Viewer{true, {}};
    upstream::Route again = route_of(RouteKind::get_secret, std::move(account_id),
                                     std::move(store_id), std::move(secret_id));
    const cache::Answer any = co_await cache_->read(std::move(again), std::move(all), now);
    if (any.status == 200) {
      out.hidden = true;
      out.name = string_member(answer_result(any), "name");
    }
  }
  co_return out;
}

boost::asio::awaitable<RequestHandler::WriteVetting> RequestHandler::vet_write(
    HttpRequest request, upstream::Route route, std::shared_ptr<const ResolvedClient> client,
    Micros now) const {
  WriteVetting out;
  const Identity& identity = client->identity;
  const cache::Viewer& viewer = client->viewer;
  const unsigned version = request.version();
  const auto kind = route.kind;
  const bool admin = identity.has(Permission::admin);
  out.record = audit_record(now, identity.name, request.method_string(), route);
  // The answer of a write refused here, before the upstream is called.
  const auto refuse = [&](HttpResponse response, std::optional<DenyReason> reason) {
    out.record.status = response.result_int();
    if (reason) {
      out.record.decision = AuditDecision::deny;
      out.record.reason = std::string(to_string(*reason));
    }
    audit(out.record);
    out.refused = Reply::of(std::move(response), route_label(kind));
    out.request = std::move(request);
    return std::move(out);
  };
  // A target the client cannot see: exactly what a missing secret gets (the lookup's
  // answer); the upstream is not called.
  const auto refuse_unseen = [&](const SecretLookup& target) {
    return refuse(answer_response(target.answer, version, /*is_read=*/false),
                  target.hidden ? std::optional(DenyReason::secret_not_visible) : std::nullopt);
  };
  const bool targets_secret = kind == RouteKind::patch_secret || kind == RouteKind::delete_secret ||
                              kind == RouteKind::duplicate;

  if (!admin && targets_secret) {
    SecretLookup target = co_await lookup_secret(route.account_id, route.store_id, route.secret_id,
                                                 viewer, identity.name, now);
    out.record.secret_name = target.name;
    if (target.answer.status != 200) co_return refuse_unseen(target);
  }

  // Every body is checked, admins' too: one the upstream would refuse is answered here,
  // without spending the upstream's budget or invalidating anything.
  WriteBodyCheck body = check_write_body(kind, request.body(), identity, options_.max_value_bytes);
  if (body.invalid) {
    // What the upstream checks before the body is answered first, as it would be: the
    // store, and the target of a patch or duplicate (a non-admin's is looked up above).
    if (kind == RouteKind::create_secrets || kind == RouteKind::bulk_delete) {
      upstream::Route store_route =
          route_of(RouteKind::get_store, route.account_id, route.store_id);
      cache::ReadOptions store_options;
      store_options.client = identity.name;
      const cache::Answer store =
          co_await cache_->read(std::move(store_route), std::move(store_options), now);
      if (store.status != 200) {
        co_return refuse(answer_response(store, version, /*is_read=*/false), std::nullopt);
      }
    } else if (admin && targets_secret) {
      SecretLookup target = co_await lookup_secret(route.account_id, route.store_id,
                                                   route.secret_id, viewer, identity.name, now);
      if (target.answer.status != 200) co_return refuse_unseen(target);
    }
    co_return refuse(make_error_response(*body.invalid, version), std::nullopt);
  }
  if (kind == RouteKind::create_secrets || kind == RouteKind::duplicate) {
    for (auto& name : body.names) out.record.secrets.push_back(AuditSecret{{}, std::move(name)});
  }
  if (!body.scopes_allowed) {
    co_return refuse(make_error_response(errors::authentication_error(), version),
                     DenyReason::scope_not_allowed);
  }
  if (kind == RouteKind::bulk_delete) {
    for (auto& id : body.ids) {
      out.record.secrets.push_back(AuditSecret{std::move(id), std::nullopt});
    }
    // All or nothing, like the upstream: one id the client may not see (or that does
    // not exist) refuses the whole request. Admins see every secret: the upstream decides.
    if (!admin) {
      for (auto& secret : out.record.secrets) {
        SecretLookup target = co_await lookup_secret(route.account_id, route.store_id, secret.id,
                                                     viewer, identity.name, now);
        secret.name = target.name;
        if (target.answer.status != 200) co_return refuse_unseen(target);
      }
    }
  }
  out.request = std::move(request);
  co_return out;
}

boost::asio::awaitable<Reply> RequestHandler::handle_write(
    HttpRequest request_in, upstream::Route route, std::shared_ptr<const ResolvedClient> client,
    Micros now) const {
  const Identity& identity = client->identity;
  const unsigned version = request_in.version();
  const auto method = upstream::method_from_string(request_in.method_string());
  const auto kind = route.kind;
  // Awaited into a named local (see finish_write).
  WriteVetting vetted = co_await vet_write(std::move(request_in), route, client, now);
  if (vetted.refused) co_return std::move(*vetted.refused);
  HttpRequest request = std::move(vetted.request);
  AuditRecord record = std::move(vetted.record);

  upstream::ApiRequest api{method, std::string(request.target()), std::move(request.body()),
                           identity.name};
  cache::Answer answer = co_await cache_->write(std::move(route), std::move(api), now);
  answer_missing_secret_canonically(kind, answer);
  spdlog::debug("{} {} client={} -> {}", upstream::to_string(method),
                upstream::route_template(kind), identity.name, answer.status);
  record.status = answer.status;
  describe_write_result(record, kind, answer);
  audit(record);
  Reply reply = Reply::of(answer_response(answer, version, /*is_read=*/false), route_label(kind));
  reply.upstream_time = answer.upstream_time;
  co_return reply;
}

}  // namespace sproxy::proxy
