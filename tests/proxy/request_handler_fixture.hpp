// Shared fixture of the request handler's rule tests (request_handler_*_test.cpp): a
// handler rig over the real cache and an embedded store with an explicit clock, holding
// one secret per scope set, run with the cache on and with it off.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <map>
#include <string>
#include <vector>

#include "proxy/request_handler.hpp"
#include "tests/proxy/handler_fixture.hpp"

namespace sproxy::proxy::handler_testing {

namespace http = boost::beast::http;
namespace errors = upstream::errors;
using nlohmann::json;
using test::body_of;
using test::json_of;
using test::token_client;
using test::wire_form;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;
using upstream::RouteKind;

const std::string kAccount = "0123456789abcdef0123456789abcdef";
const std::string kOtherAccount = "fedcba9876543210fedcba9876543210";
const std::string kUnknownId = "abcdefabcdefabcdefabcdefabcdefab";
const std::string kPurgeToken = "t-purge";

inline std::string base(const std::string& account = kAccount) {
  return "/client/v4/accounts/" + account + "/secrets_store";
}

// The response is exactly the contract's envelope for `error`.
inline void expect_error(const HttpResponse& res, const upstream::ApiError& error) {
  EXPECT_EQ(res.result_int(), error.status) << body_of(res);
  EXPECT_EQ(body_of(res), upstream::envelope_error(error));
}

inline test::HandlerRigOptions rig_options(bool cache_enabled) {
  test::HandlerRigOptions o;
  o.clients = {
      token_client("admin", "t-admin", {"admin"}),
      token_client("writer", "t-writer", {"write"}, {"workers"}),
      token_client("dex-writer", "t-dex-writer", {"write"}, {"dex"}),
      token_client("reader", "t-reader", {"read"}, {"workers"}),
      token_client("nothing", "t-nothing", {"read", "write"}),
      token_client("elsewhere", "t-elsewhere", {"admin"}, {}, {kOtherAccount}),
  };
  o.admin_token = kPurgeToken;
  o.cache.enabled = cache_enabled;
  return o;
}

// A store holding one secret per scope set below, created by the admin.
class HandlerRules : public ::testing::TestWithParam<bool> {
 protected:
  HandlerRules() : rig_(rig_options(GetParam())) {
    auto store = rig_.post(base() + "/stores", "t-admin", R"({"name":"main"})");
    EXPECT_EQ(store.result_int(), 200) << body_of(store);
    store_ = json_of(store)["result"]["id"].get<std::string>();
    auto created = rig_.post(secrets(), "t-admin",
                             json::array({
                                             secret_json("W", {"workers"}),
                                             secret_json("D", {"dex"}),
                                             secret_json("WD", {"dex", "workers"}),
                                             secret_json("A", {"access"}),
                                         })
                                 .dump());
    EXPECT_EQ(created.result_int(), 200) << body_of(created);
    const json created_body = json_of(created);
    for (const auto& s : created_body["result"]) {
      ids_[s["name"].get<std::string>()] = s["id"].get<std::string>();
    }
    rig_.upstream().reset_counts();
    rig_.clear_audit();
  }

  static json secret_json(const std::string& name, std::vector<std::string> scopes,
                          const std::string& value = "value-of-a-secret") {
    return {{"name", name}, {"value", value}, {"scopes", std::move(scopes)}};
  }
  std::string secrets() const { return base() + "/stores/" + store_ + "/secrets"; }
  std::string secret(const std::string& name) { return secrets() + "/" + ids_.at(name); }
  std::vector<std::string> listed_names(const std::string& token) {
    auto res = rig_.get(secrets() + "?per_page=100", token);
    EXPECT_EQ(res.result_int(), 200) << body_of(res);
    std::vector<std::string> names;
    const json body = json_of(res);
    for (const auto& s : body["result"]) names.push_back(s["name"].get<std::string>());
    return names;
  }
  std::size_t stored_secrets() { return rig_.store().list_secrets(kAccount, store_, 0)->size(); }
  std::size_t write_calls() {
    std::size_t n = 0;
    for (auto k : {RouteKind::create_secrets, RouteKind::patch_secret, RouteKind::delete_secret,
                   RouteKind::bulk_delete, RouteKind::duplicate, RouteKind::create_store,
                   RouteKind::delete_store}) {
      n += rig_.upstream().calls(k);
    }
    return n;
  }

  test::HandlerRig rig_;
  std::string store_;
  std::map<std::string, std::string> ids_;
};

}  // namespace sproxy::proxy::handler_testing
