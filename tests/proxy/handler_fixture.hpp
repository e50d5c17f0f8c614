// HandlerRig: the real RequestHandler over the real ReadThroughCache and a FakeUpstream
// (an embedded store with call counters), driven in process on the test's own thread
// with an explicit clock, and an audit log captured in memory. Tests pass clients by
// plaintext token; only their SHA-256 is configured, as in a real config.
// Header-only; link sproxy_proxy.
#pragma once

#include <spdlog/sinks/ostream_sink.h>

#include <boost/asio/io_context.hpp>
#include <boost/beast/http/verb.hpp>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cache/read_through.hpp"
#include "proxy/audit.hpp"
#include "proxy/identity.hpp"
#include "proxy/request_handler.hpp"
#include "tests/support/fake_upstream.hpp"
#include "tests/support/run_awaitable.hpp"
#include "tests/support/server_harness.hpp"

namespace sproxy::test {

struct HandlerRigOptions {
  std::vector<config::ClientConfig> clients;
  std::string admin_token;  // plaintext; empty = none
  config::CacheConfig cache;
  bool audit_reads = false;
  std::size_t max_value_bytes = upstream::kDefaultMaxValueBytes;
  long max_stores_per_account = 1;
  long max_secrets_per_account = 100;
  // The upstream the cache calls, made from the fake (which still counts every call);
  // empty: the fake itself.
  std::function<std::shared_ptr<upstream::Upstream>(std::shared_ptr<upstream::Upstream>)>
      wrap_upstream;
};

// An answer in the form tests compare: status line, every header, then the body.
inline std::string wire_form(const proxy::HttpResponse& res) {
  std::ostringstream out;
  out << res.base();
  if (res.body()) out << *res.body();
  return out.str();
}

inline std::string body_of(const proxy::HttpResponse& res) {
  return res.body() ? std::string(*res.body()) : std::string();
}

inline nlohmann::json json_of(const proxy::HttpResponse& res) {
  return nlohmann::json::parse(body_of(res));
}

class HandlerRig {
 public:
  explicit HandlerRig(HandlerRigOptions o) {
    FakeUpstream::Options fo;
    fo.max_stores_per_account = o.max_stores_per_account;
    fo.max_secrets_per_account = o.max_secrets_per_account;
    upstream_ = std::make_shared<FakeUpstream>(fo);
    upstream_->set_now(now_);
    cache_ = std::make_shared<cache::ReadThroughCache>(
        o.cache, o.wrap_upstream ? o.wrap_upstream(upstream_) : upstream_);
    const std::string admin_hash =
        o.admin_token.empty() ? std::string() : upstream::sha256_hex(o.admin_token);
    identities_ = std::make_shared<proxy::ReloadableIdentityResolver>(
        std::make_shared<const proxy::ConfigIdentityResolver>(o.clients, admin_hash));
    audit_sink_ = std::make_shared<spdlog::sinks::ostream_sink_mt>(audit_out_);
    proxy::HandlerOptions ho;
    ho.max_value_bytes = o.max_value_bytes;
    ho.audit = std::make_shared<const proxy::AuditLog>(audit_sink_, o.audit_reads);
    ho.clock = [this] { return now_; };
    handler_ = std::make_shared<const proxy::RequestHandler>(cache_, identities_, ho);
  }

  HandlerRig(const HandlerRig&) = delete;
  HandlerRig& operator=(const HandlerRig&) = delete;

  static proxy::HttpRequest request(boost::beast::http::verb method, const std::string& target,
                                    const std::string& token, std::string body = {},
                                    const Headers& extra = {}) {
    proxy::HttpRequest req{method, target, 11};
    req.set(boost::beast::http::field::host, "127.0.0.1");
    if (!token.empty()) req.set(boost::beast::http::field::authorization, "Bearer " + token);
    for (const auto& [name, value] : extra) req.set(name, value);
    req.body() = std::move(body);
    req.prepare_payload();
    return req;
  }

  proxy::HttpResponse call(boost::beast::http::verb method, const std::string& target,
                           const std::string& token, std::string body = {},
                           const Headers& extra = {}) {
    return run_awaitable(ioc_,
                         handler_->handle(request(method, target, token, std::move(body), extra)));
  }

  // Answers `req` as the server does for one request of `connection` (kept across calls).
  proxy::Reply answer(proxy::ConnectionContext& connection, proxy::HttpRequest req) {
    return handler_->answer(std::move(req), connection, ioc_.get_executor());
  }
  // answer(), awaited when it has to wait: one request of `connection`.
  proxy::HttpResponse call_on(proxy::ConnectionContext& connection, boost::beast::http::verb method,
                              const std::string& target, const std::string& token,
                              std::string body = {}) {
    return call_on(connection, request(method, target, token, std::move(body)));
  }
  proxy::HttpResponse call_on(proxy::ConnectionContext& connection, proxy::HttpRequest req) {
    proxy::Reply reply = answer(connection, std::move(req));
    if (reply.ready()) return reply.take_response();
    proxy::Reply finished = run_awaitable(ioc_, std::move(reply.rest));
    return finished.take_response();
  }
  proxy::HttpResponse get(const std::string& target, const std::string& token) {
    return call(boost::beast::http::verb::get, target, token);
  }
  proxy::HttpResponse post(const std::string& target, const std::string& token, std::string body) {
    return call(boost::beast::http::verb::post, target, token, std::move(body));
  }
  proxy::HttpResponse patch(const std::string& target, const std::string& token, std::string body) {
    return call(boost::beast::http::verb::patch, target, token, std::move(body));
  }
  proxy::HttpResponse del(const std::string& target, const std::string& token,
                          std::string body = {}) {
    return call(boost::beast::http::verb::delete_, target, token, std::move(body));
  }

  // Moves the clock (and the store's) forward.
  void advance(upstream::Micros by) {
    now_ += by;
    upstream_->set_now(now_);
  }
  upstream::Micros now() const { return now_; }

  // Every audit line written so far, parsed.
  std::vector<nlohmann::json> audit_lines() {
    audit_sink_->flush();
    std::vector<nlohmann::json> out;
    std::istringstream in(audit_out_.str());
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    }
    return out;
  }
  std::string audit_text() {
    audit_sink_->flush();
    return audit_out_.str();
  }
  void clear_audit() { audit_out_.str({}); }

  FakeUpstream& upstream() { return *upstream_; }
  upstream::EmbeddedStore& store() { return upstream_->store(); }
  cache::ReadThroughCache& cache() { return *cache_; }
  proxy::ReloadableIdentityResolver& identities() { return *identities_; }

 private:
  upstream::Micros now_ = 1'767'225'600'000'000;  // 2026-01-01T00:00:00Z
  boost::asio::io_context ioc_{1};
  std::shared_ptr<FakeUpstream> upstream_;
  std::shared_ptr<cache::ReadThroughCache> cache_;
  std::shared_ptr<proxy::ReloadableIdentityResolver> identities_;
  std::ostringstream audit_out_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> audit_sink_;
  std::shared_ptr<const proxy::RequestHandler> handler_;
};

}  // namespace sproxy::test
