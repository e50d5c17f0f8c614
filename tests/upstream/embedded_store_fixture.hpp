// Shared fixture of the EmbeddedStore tests (embedded_store_*_test.cpp): a store on a
// fresh SQLite file under a temporary directory, simulated time, and helpers to call it
// by method and target as the HTTP API would.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/raw_db.hpp"
#include "tests/support/store_key_fixture.hpp"
#include "tests/support/temp_dir.hpp"
#include "upstream/crypto.hpp"
#include "upstream/embedded_store.hpp"
#include "upstream/embedded_upstream.hpp"

namespace sproxy::upstream::embedded_testing {

namespace fs = std::filesystem;
using nlohmann::json;
using test::RawDb;

const std::string kAccount = "0123456789abcdef0123456789abcdef";
const std::string kOtherAccount = "fedcba9876543210fedcba9876543210";
constexpr Micros kT0 = 1'772'366'400'123'456;  // 2026-03-01T12:00:00.123456Z
constexpr Micros kSecond = 1'000'000;

// A fresh directory under the test temp dir, removed with everything in it.
inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_file(const fs::path& p, const std::string& content, mode_t mode) {
  {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << content;
  }
  ::chmod(p.c_str(), mode);
}

inline std::string base(const std::string& account = kAccount) {
  return "/client/v4/accounts/" + account + "/secrets_store";
}

inline bool looks_like_new_id(const std::string& id) { return is_valid_id(id) && id[12] == '4'; }

struct Reply {
  unsigned status = 0;
  json body;
  std::string raw;
};

inline testing::AssertionResult is_error(const Reply& r, unsigned status, int code,
                                         const std::string& message) {
  if (r.status != status) {
    return testing::AssertionFailure()
           << "status " << r.status << " != " << status << ": " << r.raw;
  }
  const json& b = r.body;
  if (b.value("success", true) || !b.contains("result") || !b["result"].is_null() ||
      !b["errors"].is_array() || b["errors"].empty()) {
    return testing::AssertionFailure() << "not an error envelope: " << r.raw;
  }
  if (b["errors"][0].value("code", 0) != code || b["errors"][0].value("message", "") != message) {
    return testing::AssertionFailure()
           << "expected {" << code << ", " << message << "}, got " << r.raw;
  }
  return testing::AssertionSuccess();
}

inline testing::AssertionResult is_success(const Reply& r, unsigned status = 200) {
  if (r.status != status || !r.body.value("success", false) || !r.body["errors"].empty()) {
    return testing::AssertionFailure()
           << "expected success " << status << ", got " << r.status << ": " << r.raw;
  }
  return testing::AssertionSuccess();
}

inline json secret_item(const std::string& name, const std::string& value,
                        json scopes = json::array({"workers"})) {
  return json{{"name", name}, {"value", value}, {"scopes", std::move(scopes)}};
}

// ---------------------------------------------------------------------------------------

class EmbeddedStoreTest : public testing::Test {
 protected:
  EmbeddedStoreTest() : key_(random_bytes(kAesKeyBytes)) {}

  EmbeddedStoreOptions options() const {
    EmbeddedStoreOptions o;
    o.data_path = db_path();
    o.key = key_;
    return o;
  }
  fs::path db_path() const { return dir_.path() / "data" / "store.db"; }

  void SetUp() override { reopen(options()); }

  // Every response of every test is checked: no value written through value_for() may
  // appear in any of them.
  void TearDown() override {
    for (const auto& body : bodies_) {
      for (const auto& value : values_) {
        EXPECT_EQ(body.find(value), std::string::npos) << "a secret value leaked into " << body;
      }
    }
  }

  void reopen(EmbeddedStoreOptions o) {
    store_.reset();
    store_ = std::make_unique<EmbeddedStore>(std::move(o));
  }
  void close() { store_.reset(); }

  // A distinctive value that cannot occur in a response by accident.
  std::string value_for(const std::string& name) {
    std::string v = "value-of-" + name + "-" + to_hex(random_bytes(8));
    values_.insert(v);
    return v;
  }

  Reply call(Method m, const std::string& target, std::string body = "", Micros now = kT0) {
    ApiResponse r = store_->handle(ApiRequest{m, target, std::move(body)}, now);
    bodies_.push_back(r.body);
    Reply out;
    out.status = r.status;
    out.raw = r.body;
    out.body = json::parse(r.body);
    return out;
  }

  std::string make_store(const std::string& name = "main", const std::string& account = kAccount,
                         Micros now = kT0) {
    Reply r = call(Method::post, base(account) + "/stores", json{{"name", name}}.dump(), now);
    if (r.status != 200) throw std::runtime_error("store create failed: " + r.raw);
    return r.body["result"]["id"];
  }

  json make_secrets(const std::string& store_id, const json& items, Micros now = kT0,
                    const std::string& account = kAccount) {
    Reply r =
        call(Method::post, base(account) + "/stores/" + store_id + "/secrets", items.dump(), now);
    if (r.status != 200) throw std::runtime_error("secret create failed: " + r.raw);
    return r.body["result"];
  }

  std::string make_secret(const std::string& store_id, const std::string& name, Micros now = kT0,
                          json scopes = json::array({"workers"})) {
    return make_secrets(store_id, json::array({secret_item(name, value_for(name), scopes)}),
                        now)[0]["id"];
  }

  std::string secrets_path(const std::string& store_id) {
    return base() + "/stores/" + store_id + "/secrets";
  }
  std::string secret_path(const std::string& store_id, const std::string& secret_id) {
    return secrets_path(store_id) + "/" + secret_id;
  }

  long usage() { return call(Method::get, base() + "/quota").body["result"]["secrets"]["usage"]; }
  std::vector<std::string> secret_names(const std::string& store_id,
                                        const std::string& query = "") {
    Reply r = call(Method::get, secrets_path(store_id) + query);
    std::vector<std::string> names;
    for (const auto& s : r.body["result"]) names.push_back(s["name"]);
    return names;
  }

  test::TempDir dir_;
  std::string key_;
  std::unique_ptr<EmbeddedStore> store_;
  std::vector<std::string> bodies_;
  std::set<std::string> values_;
};

class EmbeddedStoreStores : public EmbeddedStoreTest {};
class EmbeddedStoreSecrets : public EmbeddedStoreTest {};
class EmbeddedStoreQuota : public EmbeddedStoreTest {};
class EmbeddedStoreLists : public EmbeddedStoreTest {};
class EmbeddedStoreRouting : public EmbeddedStoreTest {};
class EmbeddedStorePersistence : public EmbeddedStoreTest {};
class EmbeddedStoreTypedApi : public EmbeddedStoreTest {};

}  // namespace sproxy::upstream::embedded_testing
