// ServerHarness: the real proxy server, in process, on 127.0.0.1 with an ephemeral port,
// backed by a real embedded store in a fresh temporary directory (removed afterwards).
//
// The wiring is main's: EmbeddedStore -> EmbeddedUpstream -> (optional test wrapper)
// -> (optional MeteredUpstream) -> ReadThroughCache -> RequestHandler -> Server. Tests pass clients
// by plaintext token; the harness configures only their SHA-256, as a real config would. The
// destructor stops the server gracefully and waits for its threads. Header-only; link sproxy_proxy.
#pragma once

#include <stdlib.h>

#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cache/read_through.hpp"
#include "config/config.hpp"
#include "proxy/access_log.hpp"
#include "proxy/audit.hpp"
#include "proxy/identity.hpp"
#include "proxy/metrics.hpp"
#include "proxy/readiness.hpp"
#include "proxy/request_handler.hpp"
#include "proxy/server.hpp"
#include "tests/support/http_test_client.hpp"
#include "tests/support/temp_dir.hpp"
#include "upstream/crypto.hpp"
#include "upstream/embedded_store.hpp"
#include "upstream/embedded_upstream.hpp"

namespace sproxy::test {

// A client that authenticates with `token` (only its SHA-256 is configured).
inline config::ClientConfig token_client(std::string name, const std::string& token,
                                         std::vector<std::string> permissions,
                                         std::vector<std::string> services = {},
                                         std::vector<std::string> accounts = {"*"}) {
  config::ClientConfig c;
  c.name = std::move(name);
  c.token_sha256 = upstream::sha256_hex(token);
  c.permissions = std::move(permissions);
  c.services = std::move(services);
  c.accounts = std::move(accounts);
  return c;
}

// A client that authenticates with X-Auth-Email + X-Auth-Key.
inline config::ClientConfig key_pair_client(std::string name, std::string email,
                                            const std::string& key,
                                            std::vector<std::string> permissions) {
  config::ClientConfig c;
  c.name = std::move(name);
  c.email = std::move(email);
  c.key_sha256 = upstream::sha256_hex(key);
  c.permissions = std::move(permissions);
  c.accounts = {"*"};
  return c;
}

// Listener settings for tests: loopback, ephemeral port, one thread.
// Waits (bounded by `within`) for a server-side condition that follows a real event;
// the condition's last value.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds within = std::chrono::seconds(5)) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
}

inline config::ListenConfig test_listen_config() {
  config::ListenConfig l;
  l.address = "127.0.0.1";
  l.port = 0;
  l.threads = 1;
  return l;
}

struct HarnessOptions {
  config::ListenConfig listen = test_listen_config();
  std::vector<config::ClientConfig> clients;
  std::string admin_token;  // plaintext; empty = none (admin clients may still purge)
  config::CacheConfig cache;
  // Where audit lines go (e.g. an ostream sink the test reads); empty = no audit log.
  spdlog::sink_ptr audit_sink;
  bool audit_reads = false;
  // Wraps the embedded upstream (e.g. to delay or count calls); may be empty.
  std::function<std::shared_ptr<upstream::Upstream>(std::shared_ptr<upstream::Upstream>)>
      wrap_upstream;
  // Metrics wired as main wires them: the upstream metered, collect hooks for the cache
  // and the server, requests recorded, GET /metrics served.
  bool metrics = false;
  // Readiness as for a remote upstream (answers tracked) instead of the embedded store.
  bool remote_upstream = false;
  // Wraps the upstream in a GuardedUpstream (default options) that /admin/status reports.
  bool guard = false;
  // The access log (see proxy/access_log.hpp); null = none.
  std::shared_ptr<const proxy::AccessLog> access_log;
};

class ServerHarness {
 public:
  explicit ServerHarness(HarnessOptions options) {
    upstream::EmbeddedStoreOptions store_options;
    store_options.data_path = dir_.path() / "store.db";
    store_options.key = upstream::random_bytes(upstream::kAesKeyBytes);
    store_ = std::make_shared<upstream::EmbeddedStore>(std::move(store_options));
    std::shared_ptr<upstream::Upstream> up = std::make_shared<upstream::EmbeddedUpstream>(store_);
    if (options.wrap_upstream) up = options.wrap_upstream(std::move(up));
    if (options.guard) {
      guard_ = std::make_shared<upstream::GuardedUpstream>(std::move(up));
      up = guard_;
    }
    std::shared_ptr<proxy::UpstreamReachability> reachability;
    if (options.remote_upstream) {
      reachability = std::make_shared<proxy::UpstreamReachability>(std::move(up));
      up = reachability;
    }
    if (options.metrics) {
      metrics_ = std::make_shared<proxy::Metrics>("test");
      up = std::make_shared<proxy::MeteredUpstream>(std::move(up), metrics_);
    }
    upstream_ = up;
    cache_ = std::make_shared<cache::ReadThroughCache>(options.cache, up);
    const std::string admin_hash =
        options.admin_token.empty() ? std::string() : upstream::sha256_hex(options.admin_token);
    identities_ = std::make_shared<proxy::ReloadableIdentityResolver>(
        std::make_shared<const proxy::ConfigIdentityResolver>(options.clients, admin_hash));
    proxy::HandlerOptions handler_options;
    if (options.audit_sink) {
      handler_options.audit =
          std::make_shared<const proxy::AuditLog>(options.audit_sink, options.audit_reads);
    }
    handler_options.metrics = metrics_;
    handler_options.guard = guard_;
    handler_options.access_log = options.access_log;
    handler_options.readiness.embedded_upstream = !options.remote_upstream;
    handler_options.readiness.reachability = reachability;
    handler_ = std::make_shared<const proxy::RequestHandler>(cache_, identities_, handler_options);
    server_ = std::make_unique<proxy::Server>(options.listen, handler_);
    if (metrics_) {
      // Scrapes come only through the server, so the hooks never outlive what they read.
      // Weak: the cache owns the metered upstream, which owns the metrics and this hook.
      metrics_->add_collect_hook([weak = std::weak_ptr(cache_)](proxy::Metrics& m) {
        if (auto live = weak.lock()) m.refresh(live->stats());
      });
      metrics_->add_collect_hook([server = server_.get()](proxy::Metrics& m) {
        m.refresh_server(server->connection_count(), server->escaped_exceptions(),
                         server->tls_handshake_failures(), server->connections_rejected());
      });
      if (guard_) {
        metrics_->add_collect_hook([guard = guard_](proxy::Metrics& m) {
          m.refresh(guard->stats(), guard->breaker_snapshot(), guard->budget_snapshot());
        });
      }
    }
    server_->start();
  }

  ~ServerHarness() {
    // The server goes first: no connection may outlive the cache and store it calls.
    server_.reset();
  }

  ServerHarness(const ServerHarness&) = delete;
  ServerHarness& operator=(const ServerHarness&) = delete;

  boost::asio::ip::tcp::endpoint endpoint() const { return server_->endpoint(); }
  proxy::Server& server() { return *server_; }
  upstream::EmbeddedStore& store() { return *store_; }
  cache::ReadThroughCache& cache() { return *cache_; }
  // Null unless HarnessOptions::metrics.
  std::shared_ptr<proxy::Metrics> metrics() const { return metrics_; }
  // Null unless HarnessOptions::guard.
  std::shared_ptr<upstream::GuardedUpstream> guard() const { return guard_; }
  // The identity table requests resolve against (tests swap it to model a reload).
  proxy::ReloadableIdentityResolver& identities() { return *identities_; }
  const std::filesystem::path& dir() const { return dir_.path(); }

  HttpTestClient connect() const { return HttpTestClient(endpoint()); }

 private:
  TempDir dir_;
  std::shared_ptr<upstream::EmbeddedStore> store_;
  std::shared_ptr<upstream::Upstream> upstream_;
  std::shared_ptr<cache::ReadThroughCache> cache_;
  std::shared_ptr<proxy::ReloadableIdentityResolver> identities_;
  std::shared_ptr<proxy::Metrics> metrics_;
  std::shared_ptr<upstream::GuardedUpstream> guard_;
  std::shared_ptr<const proxy::RequestHandler> handler_;
  std::unique_ptr<proxy::Server> server_;
};

// The API base path of an account.
inline std::string api_base(const std::string& account_id) {
  return "/client/v4/accounts/" + account_id + "/secrets_store";
}

// `Authorization: Bearer <token>`.
inline Headers bearer(const std::string& token) { return {{"Authorization", "Bearer " + token}}; }

}  // namespace sproxy::test
