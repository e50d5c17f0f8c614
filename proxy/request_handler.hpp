// RequestHandler: turns one HTTP request into one HTTP response.
//
// Contract, in order:
//   1. `GET /healthz` answers 200 {"status":"ok"} without credentials; `GET /metrics`
//      answers the Prometheus exposition without credentials (when metrics are on);
//      `GET /readyz` answers 200 {"status":"ready"} or 503 service_unavailable (is_ready
//      in readiness.hpp, read from the steady clock), without credentials.
//   2. `POST /admin/purge` purges the cache for `Authorization: Bearer <token>` of the
//      configured admin token or of a client with the `admin` permission (a client only
//      within its accounts and stores); `GET /admin/status` (same credentials) answers
//      cache stats and, for a guarded upstream, the rate budget and breaker state; any
//      other /admin/... path is 404 7000.
//   3. Secrets Store routes: parse_route errors (404 7000 / 405 7001 / 400 7003+7000),
//      then credentials (400 9106 / 400 6003, also for ambiguous ones: a credential header
//      twice, or a bearer token with the key pair), identity (403 10000), account, store and
//      permission checks (403 10000, the upstream is not called), then the cache.
//      A connection whose verified client certificate maps to a client (ConnectionContext)
//      is that client: no header credential is needed, and a credential that is sent must
//      be that same client's (another client's, or an unknown one, is 403 10000, audited
//      as credential_mismatch / unknown_credentials). A certificate that maps to no client
//      counts for nothing: the request's credentials decide as without TLS.
//      Reads go through `ReadThroughCache::read` with the caller's viewer, so one cached
//      snapshot serves every client and each sees only secrets sharing a scope with its
//      services (`Cache-Control: no-cache` revalidates). A hidden secret is answered
//      exactly like a missing one.
//      Writes are checked before they are forwarded. Every write body, admins' too, must
//      pass the model's parser (otherwise the parser's error, after the store and target
//      checks the upstream would make first); such a write is never forwarded and
//      invalidates nothing. For a client without `admin`, the target secret of a patch,
//      delete or duplicate, and every id of a bulk delete, must also be visible to it
//      (looked up through the cache; otherwise the lookup's answer, e.g. 404
//      secret_not_found, is the answer), and scopes set by a create, patch or duplicate
//      must be among its services (otherwise 403 10000). Then `ReadThroughCache::write`
//      forwards the request.
//      Every 404 about a secret, read or write, cached or not, hidden or missing, is the
//      one body the cache writes for a hidden secret (cache::secret_not_found_body), so an
//      upstream's own bytes for a missing secret cannot tell the two apart.
// Every write and every denial (and every read when the audit log asks for reads) is one
// audit line; see audit.hpp. Each denial also counts in secrets_proxy_audit_denials_total
// (a read's `secret_not_visible` only when the audit log is on: only then is it looked
// for). While the access log is on, every answer is one access line and carries an
// `X-Request-Id` header (access_log.hpp).
// Responses are JSON envelopes with `Server: secrets-proxy`; reads add `X-Cache` and `Age`;
// rate-limited answers add `Retry-After`; answers that came from an upstream call carry its
// `Ratelimit` / `Ratelimit-Policy` verbatim. The handler is the only place on the request
// path that reads the clock. It neither logs nor copies request bodies, and parsed write
// bodies (which hold values) are dropped before any await.
//
// Two steps: `start` does everything that needs no waiting and returns the response when
// nothing has to be awaited (a cache hit, /healthz, a refusal: the common case costs no
// coroutine frame); otherwise it returns a `Pending` that `finish` completes (a cache
// miss, a revalidation, a write, an audited read). `handle` is both in one.
// A connection's `ConnectionContext` lives as long as the connection; its credential memo
// lets a repeated credential skip the hash and the table search (identity.hpp).
//
// Thread safety: immutable after construction (identities may be swapped inside their
// resolver); `start`/`finish`/`handle` may run concurrently on every io thread (one
// ConnectionContext is used by one request at a time). The handler must outlive
// every `handle` coroutine it started. Errors are answers, not exceptions (only
// std::bad_alloc and the like escape).
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "cache/read_through.hpp"
#include "proxy/access_log.hpp"
#include "proxy/answer.hpp"
#include "proxy/audit.hpp"
#include "proxy/http_message.hpp"
#include "proxy/identity.hpp"
#include "proxy/metrics.hpp"
#include "proxy/readiness.hpp"
#include "proxy/reply.hpp"

namespace sproxy::proxy {

inline constexpr std::string_view kHealthPath = "/healthz";
inline constexpr std::string_view kAdminPurgePath = "/admin/purge";
inline constexpr std::string_view kMetricsPath = "/metrics";
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

// What the parser and the scope rule say about a write body, without keeping any value.
struct WriteBodyCheck {
  std::optional<upstream::ApiError> invalid;  // the parser's error
  bool scopes_allowed = true;                 // every scope set is within the identity's
  std::vector<std::string> names;  // create: the names in the body; duplicate: the new name
  std::vector<std::string> ids;    // bulk delete: the ids (unique)
};
// For create_store, create_secrets, patch_secret, duplicate and bulk_delete (other kinds:
// no check).
WriteBodyCheck check_write_body(upstream::RouteKind kind, std::string_view body,
                                const Identity& identity, std::size_t max_value_bytes);

// Buffers one request at a time reuses (its parsed route, the cache's keys), so that a
// cache hit allocates nothing once they have grown. Filled and read within one call to
// the handler; nothing in them carries over to the next request.
struct RequestScratch {
  upstream::Route route;
  cache::ReadScratch read;
};

// What the connection knows about its peer, kept for every request on it.
struct ConnectionContext {
  // The client certificate the TLS handshake verified; null without one.
  std::shared_ptr<const PeerCertificate> peer_certificate;
  // The credential that last resolved on this connection and whom it resolved to.
  CredentialMemo credentials;
  // The connection's request buffers (one request is handled at a time).
  RequestScratch scratch;
};

struct HandlerOptions {
  // The longest secret value the upstream accepts; write bodies are parsed with it.
  std::size_t max_value_bytes = upstream::kDefaultMaxValueBytes;
  std::shared_ptr<const AuditLog> audit;  // nullptr: no audit lines
  // Microseconds since the epoch; empty: the system clock. Tests pass their own time.
  std::function<upstream::Micros()> clock;
  // Every answered request is recorded here (route template, method, status, cache
  // outcome, duration from the process's steady clock), and `GET /metrics` serves its
  // exposition without credentials. nullptr: nothing recorded, /metrics is 404.
  std::shared_ptr<Metrics> metrics;
  // What `GET /readyz` decides from (see readiness.hpp); it never calls the upstream.
  ReadinessOptions readiness;
  // The upstream's guard, for `GET /admin/status`; nullptr when the upstream is not guarded.
  std::shared_ptr<const upstream::GuardedUpstream> guard;
  // One access line per answered request while it is enabled (see access_log.hpp); the
  // response then carries `X-Request-Id`. nullptr: no access log.
  std::shared_ptr<const AccessLog> access_log;
};

class RequestHandler {
 public:
  RequestHandler(std::shared_ptr<cache::ReadThroughCache> cache,
                 std::shared_ptr<const IdentityResolver> identities, HandlerOptions options = {});

  // The reply to `request`: ready when nothing has to be awaited (a cache hit, /healthz, a
  // refusal), else with the coroutine that finishes it (reply.hpp). `connection` must
  // outlive the reply; `ex` runs any background refresh a hit starts.
  Reply answer(HttpRequest request, ConnectionContext& connection,
               const boost::asio::any_io_executor& ex) const;
  // The refusal `answer` would give a request with this head, decided before its body is
  // read (the server then need not read it): no such route or method, or credentials
  // (with the connection's certificate) that name no client allowed to make the call.
  // Recorded (audit, metrics, access log) as `answer` records it. nullopt when the
  // request may go on (its body is read, and `answer` decides again in full). The
  // proxy's own unauthenticated endpoints are left to `answer`.
  std::optional<HttpResponse> refuse_before_body(const HttpRequest& head,
                                                 ConnectionContext& connection) const;
  // `answer`, awaited when needed, as a message.
  boost::asio::awaitable<HttpResponse> handle(HttpRequest request,
                                              ConnectionContext connection = {}) const;

 private:
  struct SecretLookup;
  // What the metrics and the access log need from the start of a request.
  struct Trace {
    std::chrono::steady_clock::time_point started;
    upstream::Method method = upstream::Method::get;
    std::string request_id;  // set only while the access log is on
  };

  upstream::Micros now() const;
  void audit(const AuditRecord& record) const;
  Trace begin_trace(const HttpRequest& request) const;
  // Records a ready reply (metrics, access line); it then carries the request id.
  void record(Reply& reply, Trace& trace) const;
  // Everything before the first wait; `trace` goes to the coroutine of a reply that waits.
  Reply dispatch(HttpRequest request, ConnectionContext& connection,
                 const boost::asio::any_io_executor& ex, Trace& trace) const;
  // A read of `route` for `client`: answered from the cache at once when it holds the
  // answer, else a reply that waits for the cache.
  Reply answer_read(const HttpRequest& request, const upstream::Route& route,
                    std::shared_ptr<const ResolvedClient> client, upstream::Micros now,
                    const boost::asio::any_io_executor& ex, RequestScratch& scratch,
                    Trace& trace) const;
  // The cache's answer when it has one for this read that needs no wait and no audit line.
  std::optional<cache::Answer> try_answer_from_cache(const upstream::Route& route,
                                                     const ResolvedClient& client,
                                                     upstream::Micros now,
                                                     const boost::asio::any_io_executor& ex,
                                                     RequestScratch& scratch) const;
  // The client the request's credentials (and the connection's certificate) name, or the
  // refusal to send.
  std::variant<std::shared_ptr<const ResolvedClient>, Reply> identify(const HttpRequest& request,
                                                                      ConnectionContext& connection,
                                                                      const upstream::Route& route,
                                                                      RouteLabel label,
                                                                      upstream::Micros now) const;
  HttpResponse handle_metrics(const HttpRequest& request) const;
  HttpResponse handle_ready(const HttpRequest& request) const;
  HttpResponse admin_status(unsigned version) const;
  // The admin endpoints' route, method, credential and permission checks: the caller's
  // identity, or the refusal to send (audited). `record` gets the request's audit fields.
  std::variant<Identity, HttpResponse> authorize_admin(const HttpRequest& request,
                                                       std::string_view path,
                                                       AuditRecord& record) const;
  HttpResponse handle_admin(const HttpRequest& request, std::string_view path) const;
  // identify, then the identity's account, store and permission checks for `route`.
  std::variant<std::shared_ptr<const ResolvedClient>, Reply> admit(const HttpRequest& request,
                                                                   ConnectionContext& connection,
                                                                   const upstream::Route& route,
                                                                   RouteLabel label,
                                                                   upstream::Micros now) const;
  // A refusal before the upstream is asked: audited (and counted) with the client when
  // one is known.
  Reply refuse(const HttpRequest& request, const upstream::Route& route, RouteLabel label,
               upstream::Micros now, const std::optional<std::string>& client,
               const upstream::ApiError& error, DenyReason reason) const;
  // True when a read's answer may hide a secret the client cannot see (looked for only
  // while the audit log is on).
  bool looks_for_hidden(upstream::RouteKind kind, const ResolvedClient& client,
                        const cache::Answer& answer) const;
  // True when a read's answer has an audit line to write (reads audited, or a hidden
  // secret to look for).
  bool audits_read(upstream::RouteKind kind, const ResolvedClient& client,
                   const cache::Answer& answer) const;
  // A read's reply from the cache's answer: `cached` when it can be, else a message.
  Reply read_reply(cache::Answer answer, upstream::RouteKind kind, unsigned version,
                   const ResolvedClient& client) const;
  // The rest of a read that waits (the cache read and its audit) and of a write.
  boost::asio::awaitable<Reply> finish_read(upstream::Route route,
                                            std::shared_ptr<const ResolvedClient> client,
                                            bool revalidate, std::optional<cache::Answer> answer,
                                            upstream::Micros now, Trace trace,
                                            unsigned version) const;
  boost::asio::awaitable<Reply> finish_write(HttpRequest request, upstream::Route route,
                                             std::shared_ptr<const ResolvedClient> client,
                                             upstream::Micros now, Trace trace) const;
  boost::asio::awaitable<Reply> handle_write(HttpRequest request, upstream::Route route,
                                             std::shared_ptr<const ResolvedClient> client,
                                             upstream::Micros now) const;
  // A write's checks before it is forwarded (see the contract): the request back with its
  // audit record, or the refusal (already audited).
  struct WriteVetting {
    HttpRequest request;
    AuditRecord record;
    std::optional<Reply> refused;
  };
  boost::asio::awaitable<WriteVetting> vet_write(HttpRequest request, upstream::Route route,
                                                 std::shared_ptr<const ResolvedClient> client,
                                                 upstream::Micros now) const;
  bool access_logging() const { return options_.access_log && options_.access_log->enabled(); }
  // The secret as `viewer` sees it, and whether it exists but is hidden from it.
  boost::asio::awaitable<SecretLookup> lookup_secret(std::string account_id, std::string store_id,
                                                     std::string secret_id, cache::Viewer viewer,
                                                     std::string client,
                                                     upstream::Micros now) const;

  std::shared_ptr<cache::ReadThroughCache> cache_;
  std::shared_ptr<const IdentityResolver> identities_;
  HandlerOptions options_;
};

}  // namespace sproxy::proxy
