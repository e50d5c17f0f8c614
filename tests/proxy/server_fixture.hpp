// Shared set-up of the server integration tests (server_*_test.cpp): the real server on
// 127.0.0.1:0 over a real embedded store, spoken to over HTTP, its clients and tokens, and
// helpers to check the API's error envelope.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <list>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "proxy/server.hpp"
#include "tests/support/http_test_client.hpp"
#include "tests/support/run_awaitable.hpp"
#include "tests/support/server_harness.hpp"
#include "upstream/emulation.hpp"
#include "upstream/http_upstream.hpp"

namespace sproxy::proxy::server_testing {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace errors = upstream::errors;
using nlohmann::json;
using test::api_base;
using test::bearer;
using test::body_json;
using test::eventually;
using test::HarnessOptions;
using test::Headers;
using test::HttpTestClient;
using test::ServerHarness;
using test::TestResponse;
using ::testing::AnyOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kAccount = "0123456789abcdef0123456789abcdef";
const std::string kOtherAccount = "fedcba9876543210fedcba9876543210";
const std::string kUnknownId = "abcdefabcdefabcdefabcdefabcdefab";
const std::string kSecretValue = "s3cr3t-VALUE-never-echoed";
const std::string kAdminPurgeToken = "purge-token-for-tests";

const Headers kAdmin = bearer("t-admin");
const Headers kWriter = bearer("t-writer");
const Headers kReader = bearer("t-reader");

inline HarnessOptions default_options() {
  HarnessOptions o;
  o.listen.max_header_bytes = 4 * 1024;
  o.listen.max_body_bytes = 16 * 1024;
  o.clients = {test::token_client("admin", "t-admin", {"admin"}),
               test::token_client("writer", "t-writer", {"write"}, {"workers"}),
               test::token_client("reader", "t-reader", {"read"}, {"workers"}),
               test::token_client("elsewhere", "t-elsewhere", {"admin"}, {}, {kOtherAccount}),
               test::key_pair_client("ops", "ops@example.com", "k-ops", {"read"}),
               test::token_client("dex-reader", "t-dex", {"read"}, {"dex"})};
  o.admin_token = kAdminPurgeToken;
  return o;
}

inline std::vector<int> error_codes(const TestResponse& res) {
  std::vector<int> codes;
  const json body = body_json(res);
  for (const auto& e : body.at("errors")) codes.push_back(e.at("code").get<int>());
  return codes;
}

// The response is exactly the contract's envelope for `error`.
inline void expect_error(const TestResponse& res, const upstream::ApiError& error) {
  EXPECT_EQ(res.result_int(), error.status) << res.body();
  EXPECT_EQ(body_json(res), json::parse(upstream::envelope_error(error))) << res.body();
}

inline std::string header(const TestResponse& res, http::field f) { return std::string(res[f]); }
inline std::string header(const TestResponse& res, std::string_view name) {
  return std::string(res[name]);
}

class ProxyServer : public ::testing::Test {
 protected:
  ServerHarness harness_{default_options()};

  std::string create_store(const std::string& name = "main") {
    auto client = harness_.connect();
    auto res = client.post(api_base(kAccount) + "/stores", json{{"name", name}}.dump(), kAdmin);
    EXPECT_EQ(res.result_int(), 200) << res.body();
    return body_json(res)["result"]["id"].get<std::string>();
  }
};

}  // namespace sproxy::proxy::server_testing
