// Writes: what is checked before a write is forwarded (the body parsed as the upstream
// would, the target visible to the client, scopes within its services), the forwarding
// through the cache, and the audit line of every write.
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>
#include <utility>

#include "proxy/handler_common.hpp"
#include "proxy/request_handler.hpp"

namespace sproxy::proxy {

using namespace handler_detail;

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

}  // namespace

struct RequestHandler::SecretLookup {
  cache::Answer answer;  // the get as the viewer sees it
  bool hidden = false;   // the secret exists, but not for this viewer
  std::optional<std::string> name;
};

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

  // Fleet mode: the target is looked up in a snapshot as new as the fleet's last write to
  // its store (one Redis read; an upstream refetch only when the snapshot is older).
  if (!admin && (targets_secret || kind == RouteKind::bulk_delete) && options_.fleet_sync) {
    co_await options_.fleet_sync->refresh_store(route.account_id, route.store_id);
  }
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
