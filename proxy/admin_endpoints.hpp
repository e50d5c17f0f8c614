// The proxy's admin endpoints: what a purge names and who may ask for it.
//
// `POST /admin/purge` purges the cache for `Authorization: Bearer <token>` of the
// configured admin token or of a client with the `admin` (or `purge`) permission, a
// client only within its accounts and stores; `GET /admin/status` (same credentials)
// answers cache stats and, for a guarded upstream, the rate budget and breaker state; any
// other /admin/... path is 404 7000. Every call is audited. The handler serves them
// (RequestHandler::handle_admin); the pure parts are here. Thread-safe.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "cache/read_through.hpp"
#include "proxy/audit.hpp"
#include "proxy/identity.hpp"
#include "proxy/reply.hpp"
#include "upstream/model.hpp"

namespace sproxy::proxy {

inline constexpr std::string_view kAdminPurgePath = "/admin/purge";
inline constexpr std::string_view kAdminStatusPath = "/admin/status";

// Which cache entries a purge drops.
struct PurgeRequest {
  std::string account_id;          // empty = every account
  std::string store_id;            // empty = every store of the account
  std::string_view scope() const;  // "all" | "account" | "store"
};

// `{}`, `{"account_id"}` or `{"account_id","store_id"}`; an empty body means all.
// Anything else (unknown keys, malformed ids, a store without its account): 400
// invalid_json_body.
Result<PurgeRequest> parse_purge_request(std::string_view body);

// Whether `identity` may purge what `purge` names: the admin token and admin clients may,
// the latter only within their accounts (all accounts need "*") and stores (a purge wider
// than one store needs a client without a store list). nullopt when allowed.
std::optional<DenyReason> check_purge(const Identity& identity, const PurgeRequest& purge);

// Fleet mode: drops the same scope (every account, one account, one store) from the
// fleet's shared cache, then publishes it to the fleet, then yields the purge's answer.
boost::asio::awaitable<Reply> publish_purge(std::shared_ptr<cache::WritePublisher> publisher,
                                            std::shared_ptr<cache::ReadThroughCache> cache,
                                            PurgeRequest purge, HttpResponse response,
                                            RouteLabel route);

}  // namespace sproxy::proxy
