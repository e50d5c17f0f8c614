// RequestHandler: turns one HTTP request into one Reply (reply.hpp).
//
// Contract: the proxy's own endpoints first (/healthz, /readyz, /metrics without
// credentials; /admin/purge and /admin/status for the admin token or admin clients, see
// admin_endpoints.hpp), then Secrets Store routes: route errors (404 7000 / 405 7001 /
// 400 7003+7000), credentials (400 9106 / 400 6003), identity and account, store and
// permission checks (403 10000; the upstream is not called), then the cache: reads see
// only secrets sharing a scope with the client's services (a hidden secret is answered
// exactly like a missing one), writes are checked first (write_authorization.hpp).
// Every write and denial is audited (audit.hpp); every answer is counted (metrics.hpp)
// and, with the access log on, logged with an X-Request-Id (access_log.hpp).
// The handler is the only place on the request path that reads the clock; it neither
// logs nor copies request bodies. Thread safety: immutable after construction; may run
// on every io thread at once (one ConnectionContext serves one request at a time). The
// handler must outlive every reply it made. Errors are answers, not exceptions.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "cache/fleet_sync.hpp"
#include "cache/read_through.hpp"
#include "proxy/access_log.hpp"
#include "proxy/admin_endpoints.hpp"
#include "proxy/answer.hpp"
#include "proxy/audit.hpp"
#include "proxy/http_message.hpp"
#include "proxy/identity.hpp"
#include "proxy/metrics.hpp"
#include "proxy/readiness.hpp"
#include "proxy/reply.hpp"
#include "proxy/write_authorization.hpp"

namespace sproxy::proxy {

inline constexpr std::string_view kHealthPath = "/healthz";
inline constexpr std::string_view kMetricsPath = "/metrics";

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
  // The credential that last resolved on this connection and whom it resolved to: a
  // repeated credential skips the hash and the table search (identity.hpp).
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
  // Fleet mode's invalidation state, for `GET /admin/status` ("fleet"); empty: not shown.
  std::function<nlohmann::json()> fleet_status;
  // Fleet mode: a purge is published to the fleet before it is answered (writes are
  // published by the cache), and a non-admin write to an existing secret is checked
  // against a snapshot as new as Redis's generation of its store. nullptr: not in fleet
  // mode.
  std::shared_ptr<cache::FleetSync> fleet_sync;
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
  // `purged` (when given) is set to what a successful purge dropped.
  HttpResponse handle_admin(const HttpRequest& request, std::string_view path,
                            std::optional<PurgeRequest>* purged = nullptr) const;
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
  // A purge in fleet mode: answered once it is published, then recorded.
  boost::asio::awaitable<Reply> finish_purge(PurgeRequest purge, HttpResponse response,
                                             RouteLabel label, Trace trace) const;
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
