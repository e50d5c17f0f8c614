// Shared fixture of the read-through cache tests: a ReadThroughCache in front of a
// FakeUpstream (a real EmbeddedStore), simulated time, and helpers to issue reads and
// writes by request target as the proxy's handler would.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <memory>
#include <string>
#include <vector>

#include "cache/read_through.hpp"
#include "tests/support/fake_upstream.hpp"
#include "tests/support/run_awaitable.hpp"
#include "upstream/route.hpp"

namespace sproxy::cache::testing {

using upstream::Method;
using upstream::Micros;
using upstream::RouteKind;

inline constexpr char kAccount[] = "0123456789abcdef0123456789abcdef";
inline constexpr char kOtherAccount[] = "fedcba9876543210fedcba9876543210";
inline constexpr Micros kT0 = 1'767'225'600'000'000;  // 2026-01-01T00:00:00Z
inline constexpr Micros kMs = 1000;

inline std::string base(const std::string& account = kAccount) {
  return "/client/v4/accounts/" + account + "/secrets_store";
}

class CacheFixture : public ::testing::Test {
 protected:
  CacheFixture() {
    cfg.ttl.stores_ms = 30'000;
    cfg.ttl.store_ms = 20'000;
    cfg.ttl.secrets_ms = 10'000;
    cfg.ttl.quota_ms = 5'000;
    cfg.ttl.negative_ms = 2'000;
    cfg.stale_if_error_ms = 60'000;
    // The shared tests pin exact expiry behaviour (a read at the TTL is a miss, a read
    // just before it makes no upstream call); refresh_ahead_test.cpp turns these on.
    cfg.refresh_ahead_ms = 0;
    cfg.stale_while_revalidate_ms = 0;
  }

  void SetUp() override {
    fake = std::make_shared<test::FakeUpstream>(options);
    fake->set_now(kT0);
    cache = std::make_unique<ReadThroughCache>(cfg, fake);
    store_id = create_store_directly("main");
  }

  // Direct changes to the upstream (as another writer, not through this cache).
  std::string create_store_directly(const std::string& name,
                                    const std::string& account = kAccount) {
    auto s = fake->store().create_store(account, upstream::StoreCreate{name}, kT0);
    EXPECT_TRUE(s.ok());
    return s.ok() ? s->id : std::string();
  }
  std::string create_secret_directly(const std::string& name,
                                     std::vector<std::string> scopes = {"workers"},
                                     std::optional<std::string> comment = std::nullopt,
                                     Micros now = kT0) {
    std::vector<upstream::SecretCreate> in;
    in.push_back(upstream::SecretCreate{name, "value-" + name, std::move(scopes), comment});
    auto r = fake->store().create_secrets(kAccount, store_id, std::move(in), now);
    EXPECT_TRUE(r.ok());
    return r.ok() ? r->front().id : std::string();
  }
  void patch_comment_directly(const std::string& secret_id, const std::string& comment) {
    upstream::SecretPatch p;
    p.comment = std::optional<std::string>(comment);
    EXPECT_TRUE(fake->store().patch_secret(kAccount, store_id, secret_id, p, kT0).ok());
  }

  upstream::Route route(Method m, const std::string& target) {
    auto r = upstream::parse_route(m, target);
    EXPECT_TRUE(r.ok()) << target;
    return r.ok() ? r.value() : upstream::Route{};
  }

  Answer read(const std::string& path, Micros now, ReadOptions opt = {}) {
    return test::run_awaitable(ioc, cache->read(route(Method::get, base() + path), opt, now));
  }
  Answer read_target(const std::string& target, Micros now, ReadOptions opt = {}) {
    return test::run_awaitable(ioc, cache->read(route(Method::get, target), opt, now));
  }
  Answer write(Method m, const std::string& path, std::string body, Micros now) {
    upstream::ApiRequest req{m, base() + path, std::move(body)};
    return test::run_awaitable(ioc, cache->write(route(m, req.target), req, now));
  }
  // What the upstream itself answers for a GET right now (no counting, no faults).
  upstream::ApiResponse direct(const std::string& target, Micros now = kT0) {
    return fake->store().handle(upstream::ApiRequest{Method::get, target, {}}, now);
  }

  std::string secrets_path() const { return "/stores/" + store_id + "/secrets"; }
  std::string secret_path(const std::string& id) const { return secrets_path() + "/" + id; }

  static std::string body(const Answer& a) { return a.body ? std::string(*a.body) : std::string(); }

  config::CacheConfig cfg;
  test::FakeUpstream::Options options;
  boost::asio::io_context ioc;
  std::shared_ptr<test::FakeUpstream> fake;
  std::unique_ptr<ReadThroughCache> cache;
  std::string store_id;
};

}  // namespace sproxy::cache::testing
