// Identity, permission and scope rules over HTTP: the real server on 127.0.0.1:0 over a
// real embedded store.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/base_sink.h>

#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/api_expect.hpp"
#include "tests/support/http_test_client.hpp"
#include "tests/support/server_harness.hpp"

namespace sproxy::proxy {
namespace {

namespace http = boost::beast::http;
namespace errors = upstream::errors;
using nlohmann::json;
using test::api_base;
using test::bearer;
using test::body_json;
using test::expect_error;
using test::HarnessOptions;
using test::kAccount;
using test::ServerHarness;
using test::TestResponse;

const std::string kUnknownId = "abcdefabcdefabcdefabcdefabcdefab";

// Status line, every header but those named in `except`, and the body.
std::string wire_form(const TestResponse& res, const std::vector<http::field>& except = {}) {
  std::string out = std::to_string(res.version()) + " " + std::to_string(res.result_int()) + "\n";
  for (const auto& field : res.base()) {
    if (std::find(except.begin(), except.end(), field.name()) != except.end()) continue;
    out += std::string(field.name_string()) + ": " + std::string(field.value()) + "\n";
  }
  return out + "\n" + res.body();
}

// Collects audit lines written on the server's threads; read them from the test's.
class CapturingSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::vector<std::string> lines() {
    std::lock_guard lock(mutex_);
    return lines_;
  }
  void clear() {
    std::lock_guard lock(mutex_);
    lines_.clear();
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    std::string line = fmt::to_string(formatted);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    lines_.push_back(std::move(line));
  }
  void flush_() override {}

 private:
  std::vector<std::string> lines_;
};

HarnessOptions options(bool cache_enabled, std::shared_ptr<CapturingSink> audit) {
  HarnessOptions o;
  o.clients = {test::token_client("admin", "t-admin", {"admin"}),
               test::token_client("writer", "t-writer", {"write"}, {"workers"}),
               test::token_client("reader", "t-reader", {"read"}, {"workers", "dex"})};
  o.cache.enabled = cache_enabled;
  o.audit_sink = std::move(audit);
  return o;
}

class AuthorizationOverHttp : public ::testing::TestWithParam<bool> {
 protected:
  AuthorizationOverHttp() : harness_(options(GetParam(), audit_)) {
    auto client = harness_.connect();
    auto store =
        client.post(api_base(kAccount) + "/stores", R"({"name":"main"})", bearer("t-admin"));
    EXPECT_EQ(store.result_int(), 200) << store.body();
    store_ = body_json(store)["result"]["id"].get<std::string>();
    auto created =
        client.post(secrets(),
                    json::array({{{"name", "W"}, {"value", "w-value"}, {"scopes", {"workers"}}},
                                 {{"name", "A"}, {"value", "a-value"}, {"scopes", {"access"}}}})
                        .dump(),
                    bearer("t-admin"));
    EXPECT_EQ(created.result_int(), 200) << created.body();
    const json created_body = body_json(created);
    for (const auto& s : created_body["result"]) {
      ids_[s["name"].get<std::string>()] = s["id"].get<std::string>();
    }
  }

  std::string secrets() const { return api_base(kAccount) + "/stores/" + store_ + "/secrets"; }
  std::size_t stored() { return harness_.store().list_secrets(kAccount, store_, 0)->size(); }

  std::shared_ptr<CapturingSink> audit_ = std::make_shared<CapturingSink>();
  ServerHarness harness_;
  std::string store_;
  std::map<std::string, std::string> ids_;
};

INSTANTIATE_TEST_SUITE_P(CacheOnAndOff, AuthorizationOverHttp, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "cached" : "uncached"; });

TEST_P(AuthorizationOverHttp, GivesAReadOnlyIdentityThe403EnvelopeOnEveryWriteRoute) {
  auto client = harness_.connect();
  const auto reader = bearer("t-reader");
  const std::string secret = secrets() + "/" + ids_["W"];
  const std::vector<TestResponse> answers = {
      client.post(api_base(kAccount) + "/stores", R"({"name":"other"})", reader),
      client.del(api_base(kAccount) + "/stores/" + store_, reader),
      client.del(api_base(kAccount) + "/stores/" + store_ + "?force=true", reader),
      client.post(secrets(), R"([{"name":"N","value":"v","scopes":["workers"]}])", reader),
      client.patch(secret, R"({"comment":"c"})", reader),
      client.del(secret, reader),
      client.del(secrets(), reader, json{{"ids", {ids_["W"]}}}.dump()),
      client.post(secret + "/duplicate", R"({"name":"COPY","scopes":["workers"]})", reader),
      client.post("/admin/purge", "", reader),
  };
  for (const auto& res : answers) {
    expect_error(res, errors::authentication_error());
    EXPECT_EQ(res[http::field::content_type], "application/json");
    EXPECT_TRUE(res.keep_alive());
  }
  EXPECT_EQ(stored(), 2u);
  EXPECT_EQ(harness_.store().list_stores(kAccount)->size(), 1u);
  // Reads still work for it, on the same connection.
  EXPECT_EQ(client.get(secret, reader).result_int(), 200);
}

TEST_P(AuthorizationOverHttp, AnswersAHiddenSecretByteForByteLikeAMissingOne) {
  auto client = harness_.connect();
  const auto reader = bearer("t-reader");
  (void)client.get(secrets(), reader);  // same cache state for both answers
  const auto hidden = client.get(secrets() + "/" + ids_["A"], reader);
  const auto missing = client.get(secrets() + "/" + kUnknownId, reader);
  expect_error(hidden, errors::secret_not_found());
  EXPECT_FALSE(hidden[http::field::age].empty());
  if (GetParam()) {
    // Age counts seconds of the real clock and may tick between the two requests.
    EXPECT_EQ(wire_form(hidden, {http::field::age}), wire_form(missing, {http::field::age}));
  } else {
    EXPECT_EQ(wire_form(hidden), wire_form(missing));
  }
  EXPECT_EQ(client.get(secrets() + "/" + ids_["A"], bearer("t-admin")).result_int(), 200);
}

TEST_P(AuthorizationOverHttp, AnswersWritesToAHiddenSecretByteForByteLikeToAMissingOne) {
  auto client = harness_.connect();
  const auto writer = bearer("t-writer");
  const std::string hidden = secrets() + "/" + ids_["A"];
  const std::string missing = secrets() + "/" + kUnknownId;
  EXPECT_EQ(wire_form(client.patch(hidden, R"({"comment":"c"})", writer)),
            wire_form(client.patch(missing, R"({"comment":"c"})", writer)));
  EXPECT_EQ(wire_form(client.del(hidden, writer)), wire_form(client.del(missing, writer)));
  EXPECT_EQ(
      wire_form(client.post(hidden + "/duplicate", R"({"name":"C","scopes":["workers"]})", writer)),
      wire_form(
          client.post(missing + "/duplicate", R"({"name":"C","scopes":["workers"]})", writer)));
  EXPECT_EQ(wire_form(client.del(secrets(), writer, json{{"ids", {ids_["A"]}}}.dump())),
            wire_form(client.del(secrets(), writer, json{{"ids", {kUnknownId}}}.dump())));
  expect_error(client.del(hidden, writer), errors::secret_not_found());
  EXPECT_EQ(stored(), 2u);
}

TEST_P(AuthorizationOverHttp, StopsARemovedTokenAtOnceOnAnOpenConnection) {
  auto client = harness_.connect();
  ASSERT_EQ(client.get(secrets(), bearer("t-reader")).result_int(), 200);
  harness_.identities().replace(std::make_shared<const ConfigIdentityResolver>(
      std::vector{test::token_client("admin", "t-admin", {"admin"})}));
  expect_error(client.get(secrets(), bearer("t-reader")), errors::authentication_error());
  EXPECT_EQ(client.get(secrets(), bearer("t-admin")).result_int(), 200);
}

TEST_P(AuthorizationOverHttp, AuditsEachWriteAndDenialOnce) {
  auto client = harness_.connect();
  audit_->clear();
  ASSERT_EQ(client.patch(secrets() + "/" + ids_["W"], R"({"comment":"c"})", bearer("t-writer"))
                .result_int(),
            200);
  EXPECT_EQ(
      client.post(secrets(), R"([{"name":"X","value":"v","scopes":["dex"]}])", bearer("t-writer"))
          .result_int(),
      403);
  EXPECT_EQ(client.get(secrets(), bearer("t-reader")).result_int(), 200);
  std::vector<json> lines;
  for (const auto& line : audit_->lines()) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["decision"], "allow");
  EXPECT_EQ(lines[0]["secret_name"], "W");
  EXPECT_EQ(lines[1]["decision"], "deny");
  EXPECT_EQ(lines[1]["reason"], "scope_not_allowed");
}

TEST_P(AuthorizationOverHttp, RefusesAGetWithTwoCredentialsOnAConnectionThatJustUsedOne) {
  auto client = harness_.connect();
  const std::string secret = secrets() + "/" + ids_["W"];
  // A plain GET (the in-place parse); the second is a hit when the cache is on.
  ASSERT_EQ(client.get(secret, bearer("t-reader")).result_int(), 200);
  ASSERT_EQ(client.get(secret, bearer("t-reader")).result_int(), 200);
  for (const test::Headers& credentials :
       {test::Headers{{"Authorization", "Bearer t-reader"}, {"Authorization", "Bearer t-admin"}},
        test::Headers{{"Authorization", "Bearer t-reader"}, {"Authorization", "Bearer t-reader"}},
        test::Headers{{"Authorization", "Bearer t-reader"}, {"X-Auth-Key", "k"}},
        test::Headers{
            {"X-Auth-Email", "a@example.com"}, {"X-Auth-Key", "k"}, {"X-Auth-Key", "k"}}}) {
    const auto res = client.get(secret, credentials);
    expect_error(res, errors::invalid_request_headers());
    EXPECT_TRUE(res.keep_alive());
  }
  // The connection serves on, with its single credential.
  EXPECT_EQ(client.get(secret, bearer("t-reader")).result_int(), 200);
}

}  // namespace
}  // namespace sproxy::proxy
