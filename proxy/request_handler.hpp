// RequestHandler: turns one HTTP request into one HTTP response.
//
// Contract, in order:
//   1. `GET /healthz` answers 200 {"status":"ok"} without credentials.
//   2. `POST /admin/purge` (only when an admin token hash is configured; otherwise
//      /admin/... is 404 7000) purges the cache; `Authorization: Bearer <admin token>`.
//   3. Secrets Store routes: parse_route errors (404 7000 / 405 7001 / 400 7003+7000),
//      then credentials (400 9106 / 400 6003), identity (403 10000), authorization
//      (403 10000, the upstream is not called), then the cache: reads through
//      `ReadThroughCache::read` (Cache-Control: no-cache revalidates), writes through
//      `ReadThroughCache::write`.
// Responses are JSON envelopes with `Server: secrets-proxy`; reads add `X-Cache` and
// `Age`; rate-limited answers add `Retry-After`. The handler is the only place on the
// request path that reads the clock. It neither logs nor copies request bodies.
//
// Thread safety: immutable after construction; `handle` may run concurrently on every io
// thread. The handler must outlive every `handle` coroutine it started. Errors are
// answers, not exceptions (only std::bad_alloc and the like escape).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <memory>
#include <string>
#include <string_view>

#include "cache/read_through.hpp"
#include "proxy/http_message.hpp"
#include "proxy/identity.hpp"

namespace sproxy::proxy {

inline constexpr std::string_view kHealthPath = "/healthz";
inline constexpr std::string_view kAdminPurgePath = "/admin/purge";

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

class RequestHandler {
 public:
  RequestHandler(std::shared_ptr<cache::ReadThroughCache> cache,
                 std::shared_ptr<const IdentityResolver> identities,
                 std::string admin_token_sha256);

  boost::asio::awaitable<HttpResponse> handle(HttpRequest request) const;

 private:
  HttpResponse handle_admin(const HttpRequest& request, std::string_view path) const;

  std::shared_ptr<cache::ReadThroughCache> cache_;
  std::shared_ptr<const IdentityResolver> identities_;
  std::string admin_token_sha256_;
};

}  // namespace sproxy::proxy
