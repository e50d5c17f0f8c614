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
#include "proxy/handler_common.hpp"

namespace sproxy::proxy {

using namespace handler_detail;

namespace {

namespace http = boost::beast::http;

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

}  // namespace

RequestHandler::RequestHandler(std::shared_ptr<cache::ReadThroughCache> cache,
                               std::shared_ptr<const IdentityResolver> identities,
                               HandlerOptions options)
    : cache_(std::move(cache)), identities_(std::move(identities)), options_(std::move(options)) {}

Micros RequestHandler::now() const {
  return options_.clock ? options_.clock() : upstream::wall_clock_micros();
}

// Each denial also counts in secrets_proxy_audit_denials_total (a read's
// `secret_not_visible` only when the audit log is on: only then is it looked for).
void RequestHandler::audit(const AuditRecord& record) const {
  if (record.decision == AuditDecision::deny && options_.metrics) {
    options_.metrics->record_audit_denial();
  }
  if (options_.audit) options_.audit->write(record);
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

boost::asio::awaitable<Reply> RequestHandler::finish_purge(PurgeRequest purge,
                                                           HttpResponse response, RouteLabel label,
                                                           Trace trace) const {
  Reply reply = co_await publish_purge(options_.fleet_sync, cache_, std::move(purge),
                                       std::move(response), label);
  record(reply, trace);
  co_return reply;
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

// A connection whose verified client certificate maps to a client is that client: no
// header credential is needed, and a credential that is sent must be that same client's
// (another client's, or an unknown one, is 403 10000, audited as credential_mismatch /
// unknown_credentials). A certificate that maps to no client counts for nothing: the
// request's credentials decide as without TLS. A credential header sent twice, or a bearer
// token with the key pair, is ambiguous (400 6003).
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
    std::optional<PurgeRequest> purged;
    HttpResponse response = handle_admin(request, path, &purged);
    if (purged && options_.fleet_sync) {
      Reply later;
      later.rest = finish_purge(std::move(*purged), std::move(response), admin_label(path),
                                std::move(trace));
      return later;
    }
    return Reply::of(std::move(response), admin_label(path));
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

// One cached snapshot serves every client; the viewer shows each only the secrets sharing a
// scope with its services. `Cache-Control: no-cache` revalidates. Reads answer with
// X-Cache and Age (answer.hpp).
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

}  // namespace sproxy::proxy
