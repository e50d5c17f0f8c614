// Small helpers the request handler's files share (request_handler.cpp,
// admin_endpoints.cpp, write_authorization.cpp): audit records, reading an answer's
// envelope, the one 404 body for a missing or hidden secret. Internal to the proxy
// library. Pure functions; thread-safe.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "cache/read_through.hpp"
#include "cache/snapshot.hpp"
#include "proxy/audit.hpp"
#include "proxy/identity.hpp"
#include "proxy/metrics.hpp"
#include "proxy/request_handler.hpp"
#include "upstream/model.hpp"

namespace sproxy::proxy::handler_detail {

using upstream::Micros;
using upstream::RouteKind;
namespace errors = upstream::errors;

inline bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// The metrics label of a path under /admin.
inline RouteLabel admin_label(std::string_view path) {
  if (path == kAdminPurgePath) return RouteLabel::admin_purge;
  if (path == kAdminStatusPath) return RouteLabel::admin_status;
  return RouteLabel::unmatched;
}

// The audit reason of a credential extract_credentials refused.
inline DenyReason credential_problem(const upstream::ApiError& error) {
  if (error == errors::missing_credentials()) return DenyReason::missing_credentials;
  if (error == errors::invalid_request_headers()) return DenyReason::ambiguous_credentials;
  return DenyReason::malformed_credentials;
}

inline AuditRecord audit_record(Micros now, const std::optional<std::string>& client,
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
inline nlohmann::json answer_result(const cache::Answer& answer) {
  if (answer.status < 200 || answer.status >= 300 || !answer.body) return nullptr;
  auto j = nlohmann::json::parse(*answer.body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return nullptr;
  auto it = j.find("result");
  if (it == j.end()) return nullptr;
  return std::move(*it);
}

inline std::optional<std::string> string_member(const nlohmann::json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

// True for the routes whose 404 may be about a secret the request names (in its path or,
// for a bulk delete, in its body).
inline bool names_secret(RouteKind kind) {
  return kind == RouteKind::get_secret || kind == RouteKind::patch_secret ||
         kind == RouteKind::delete_secret || kind == RouteKind::duplicate ||
         kind == RouteKind::bulk_delete;
}

// Gives a 404 about a secret the one body the proxy writes for a secret the client may not
// see (cache::secret_not_found_body): an upstream's own bytes for a missing secret (its
// formatting, members of its own) would tell missing from hidden. A store's 404 names no
// secret and stays as it is. No parsing, no allocation.
inline void answer_missing_secret_canonically(RouteKind kind, cache::Answer& answer) {
  if (answer.status != 404 || !names_secret(kind)) return;
  const cache::SharedBytes& canonical = cache::secret_not_found_body();
  if (answer.body.data() == canonical.data()) return;
  if (answer.body && answer.body.view().find("store_not_found") != std::string_view::npos) return;
  answer.body = canonical;
}

}  // namespace sproxy::proxy::handler_detail
