// Shared set-up of the HttpUpstream tests (http_upstream_*_test.cpp): a scripted loopback
// server, an HttpUpstream pointed at it, helpers to run calls on one io_context and a
// fresh temporary directory.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/scripted_http_server.hpp"
#include "upstream/embedded_store.hpp"
#include "upstream/embedded_upstream.hpp"
#include "upstream/factory.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/http_upstream.hpp"

namespace sproxy::upstream::http_testing {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using test::ReceivedRequest;
using test::Script;
using test::ScriptedHttpServer;
using test::ScriptedReply;
using Kind = ScriptedReply::Kind;
using Clock = std::chrono::steady_clock;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* kToken = "proxy-own-token-7f3a";
constexpr const char* kStoresTarget =
    "/client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/stores";
const std::string kOkBody = R"({"success":true,"errors":[],"messages":[],"result":[]})";

inline Script ok_script() {
  return [](const ReceivedRequest&) { return ScriptedReply::json(200, kOkBody); };
}

inline HttpUpstreamOptions options_for(const ScriptedHttpServer& server,
                                       std::string_view path = "/client/v4") {
  HttpUpstreamOptions o;
  o.base_url = parse_base_url(server.base_url(path));
  o.token = kToken;
  o.connect_timeout = 2s;
  o.request_timeout = 5s;
  o.max_connections = 4;
  return o;
}

inline ApiRequest get(std::string target = kStoresTarget) {
  ApiRequest r;
  r.method = Method::get;
  r.target = std::move(target);
  return r;
}

// Runs every call concurrently on `io` (one thread) and returns the results in order.
inline std::vector<CallResult> run_calls(asio::io_context& io, Upstream& upstream,
                                         std::vector<ApiRequest> requests) {
  std::vector<std::optional<CallResult>> slots(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    asio::co_spawn(io, upstream.call(std::move(requests[i])),
                   [&slots, i](std::exception_ptr e, CallResult r) {
                     if (e) std::rethrow_exception(e);
                     slots[i].emplace(std::move(r));
                   });
  }
  io.restart();
  io.run();
  std::vector<CallResult> out;
  for (auto& s : slots) {
    if (!s) throw std::logic_error("a call did not complete");
    out.push_back(std::move(*s));
  }
  return out;
}

inline CallResult run_call(asio::io_context& io, Upstream& upstream, ApiRequest request) {
  std::vector<ApiRequest> one;
  one.push_back(std::move(request));
  return std::move(run_calls(io, upstream, std::move(one)).front());
}

// A scripted loopback server, an HttpUpstream pointed at it and one io_context to call
// on: the set-up of most tests here.
struct ScriptedUpstream {
  using MakeOptions = std::function<HttpUpstreamOptions(const ScriptedHttpServer&)>;
  using Adjust = std::function<void(HttpUpstreamOptions&)>;

  // Options from `make_options` (default: options_for) and a TLS server when `tls` is set.
  ScriptedUpstream(Script script, std::shared_ptr<asio::ssl::context> tls, MakeOptions make_options)
      : server(std::move(script), std::move(tls)), upstream(make_options(server)) {}
  // options_for(server), changed by `adjust`.
  explicit ScriptedUpstream(Script script, const Adjust& adjust = {})
      : ScriptedUpstream(std::move(script), nullptr, [&adjust](const ScriptedHttpServer& s) {
          auto o = options_for(s);
          if (adjust) adjust(o);
          return o;
        }) {}

  CallResult call(ApiRequest request = get()) { return run_call(io, upstream, std::move(request)); }
  std::vector<CallResult> call_all(std::vector<ApiRequest> requests) {
    return run_calls(io, upstream, std::move(requests));
  }

  ScriptedHttpServer server;
  HttpUpstream upstream;
  asio::io_context io;
};

// A loopback port with nothing listening on it.
inline std::uint16_t closed_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, {asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();
}

// Options for an upstream on a loopback port where nothing listens.
inline HttpUpstreamOptions unreachable_options() {
  HttpUpstreamOptions opts;
  opts.base_url =
      parse_base_url("http://127.0.0.1:" + std::to_string(closed_port()) + "/client/v4");
  opts.token = kToken;
  return opts;
}

inline ApiRequest post_secret() {
  ApiRequest r;
  r.method = Method::post;
  r.target = std::string(kStoresTarget) + "/s1/secrets";
  r.body = R"([{"name":"A","value":"v","scopes":["workers"]}])";
  return r;
}
constexpr const char* kEmail = "ops@example.com";
constexpr const char* kApiKey = "c2547eb745079dac9320b638f5e225cf483cc5cfdda41";

inline std::filesystem::path fresh_temp_dir(std::string_view name) {
  auto dir = std::filesystem::path(::testing::TempDir()) /
             ("sproxy_http_" + std::string(name) + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace sproxy::upstream::http_testing
