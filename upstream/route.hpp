// Routing of Secrets Store API requests: turns a method and a request target into a
// typed Route, or the contract's routing error (400 7003+7000 for a malformed account
// id, 404 7000 for an unknown path, 405 7001 for a known path with the wrong method).
//
// Store and secret ids are NOT validated here: a malformed one is an unknown resource
// (404 store_not_found / secret_not_found), decided by whoever looks it up.
// Pure functions; thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "upstream/model.hpp"

namespace sproxy::upstream {

enum class Method { get, post, patch, put, del, head, other };

Method method_from_string(std::string_view m);
std::string_view to_string(Method m);

enum class RouteKind {
  list_stores,     // GET    /stores
  create_store,    // POST   /stores
  get_store,       // GET    /stores/{store_id}
  delete_store,    // DELETE /stores/{store_id}[?force=true]
  list_secrets,    // GET    /stores/{store_id}/secrets
  create_secrets,  // POST   /stores/{store_id}/secrets
  bulk_delete,     // DELETE /stores/{store_id}/secrets
  get_secret,      // GET    /stores/{store_id}/secrets/{secret_id}
  patch_secret,    // PATCH  /stores/{store_id}/secrets/{secret_id}
  delete_secret,   // DELETE /stores/{store_id}/secrets/{secret_id}
  duplicate,       // POST   /stores/{store_id}/secrets/{secret_id}/duplicate
  get_quota,       // GET    /quota
};

// Route template for logs and metrics, e.g. "/stores/{store_id}/secrets".
std::string_view route_template(RouteKind k);
// True for the kinds that change state.
bool is_write(RouteKind k);

// Decoded query parameters in request order; repeated keys are kept
// (`?scopes=a&scopes=b`). Keys and values are percent-decoded, '+' is a space.
struct QueryParams {
  std::vector<std::pair<std::string, std::string>> items;
  // First value of `key`, or nullptr.
  const std::string* find(std::string_view key) const;
  // Every value of `key`, in order.
  std::vector<std::string> all(std::string_view key) const;
};

QueryParams parse_query(std::string_view query);
// The same into `out`, replacing what it held (its storage is reused).
void parse_query_into(std::string_view query, QueryParams& out);

inline constexpr std::string_view kApiPrefix = "/client/v4";

struct Route {
  RouteKind kind = RouteKind::list_stores;
  std::string account_id;
  std::string store_id;   // empty for account-level routes
  std::string secret_id;  // empty unless the route names a secret
  QueryParams query;
};

// `target` is the HTTP request target: path plus optional '?query'. The path must
// start with /client/v4/accounts/{account_id}/secrets_store. A trailing slash is
// tolerated. Percent-encoded path segments are decoded before matching.
Result<Route> parse_route(Method method, std::string_view target);
// The same into `out`, reusing its strings' storage (a per-thread scratch route parses
// without allocating). After an error `out` holds nothing meaningful.
Status parse_route_into(Method method, std::string_view target, Route& out);

// The path (without query) of a route, e.g. for building upstream requests:
// /client/v4/accounts/A/secrets_store/stores/S/secrets
std::string route_path(RouteKind kind, std::string_view account_id, std::string_view store_id,
                       std::string_view secret_id);

}  // namespace sproxy::upstream
