// The access log over HTTP (request ids, fields, the switch), the /admin/status metrics
// label, denials in secrets_proxy_audit_denials_total, and the canary test: a known
// secret value and known tokens never appear in any log, audit line, metric or response.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "proxy/access_log.hpp"
#include "proxy/logging.hpp"
#include "tests/support/server_harness.hpp"

namespace sproxy::proxy {
namespace {

using nlohmann::json;
using test::api_base;
using test::bearer;
using test::body_json;
using test::HarnessOptions;
using test::Headers;
using test::ServerHarness;
using test::TestResponse;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kAccount = "0123456789abcdef0123456789abcdef";

// A sink formatted like the proxy's, whose text is read back (under the sink's own mutex)
// from the test's thread while the server's threads write.
class StringSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string text() {
    std::lock_guard lock(mutex_);
    return text_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    text_.append(formatted.data(), formatted.size());
  }
  void flush_() override {}

 private:
  std::string text_;
};

class CapturedOutput {
 public:
  explicit CapturedOutput(LogFormat format = LogFormat::json)
      : sink_(std::make_shared<StringSink>()) {
    sink_->set_formatter(std::make_unique<LogLineFormatter>(format));
  }
  spdlog::sink_ptr sink() const { return sink_; }
  std::shared_ptr<spdlog::logger> logger(std::string name) const {
    auto l = std::make_shared<spdlog::logger>(std::move(name), sink_);
    l->set_level(spdlog::level::trace);
    return l;
  }
  std::string text() { return sink_->text(); }
  std::vector<json> json_lines() {
    std::vector<json> result;
    std::istringstream in(text());
    for (std::string line; std::getline(in, line);) result.push_back(json::parse(line));
    return result;
  }

 private:
  std::shared_ptr<StringSink> sink_;
};

std::string header(const TestResponse& r, const std::string& name) {
  auto it = r.find(name);
  return it == r.end() ? std::string() : std::string(it->value());
}

class AccessLogOverHttp : public ::testing::Test {
 protected:
  AccessLogOverHttp()
      : access_(std::make_shared<AccessLog>(output_.logger(std::string(kAccessLoggerName)),
                                            LogFormat::json, true)),
        harness_([&] {
          HarnessOptions o;
          o.clients = {test::token_client("admin", "t-admin", {"admin"}),
                       test::token_client("reader", "t-reader", {"read"}, {"workers"})};
          o.metrics = true;
          o.access_log = access_;
          return o;
        }()) {}

  std::vector<json> access_lines() {
    std::vector<json> out;
    for (auto& j : output_.json_lines()) {
      if (j["msg"] == "access") out.push_back(std::move(j));
    }
    return out;
  }

  CapturedOutput output_;
  std::shared_ptr<AccessLog> access_;
  ServerHarness harness_;
};

TEST_F(AccessLogOverHttp, WritesOneLinePerRequestAndReturnsTheRequestId) {
  auto client = harness_.connect();
  auto health = client.get("/healthz", {{"X-Request-Id", "abc-123"}});
  EXPECT_EQ(header(health, "X-Request-Id"), "abc-123");
  // An id that is not acceptable is replaced by a new one.
  auto replaced = client.get("/healthz", {{"X-Request-Id", "bad id with spaces"}});
  EXPECT_THAT(header(replaced, "X-Request-Id"), ::testing::MatchesRegex("[0-9a-f]{32}"));

  auto store = client.post(api_base(kAccount) + "/stores", R"({"name":"main"})", bearer("t-admin"));
  ASSERT_EQ(store.result_int(), 200);
  const std::string id = body_json(store)["result"]["id"];
  const std::string target = api_base(kAccount) + "/stores/" + id;
  // The create cached the new store (write-through): a revalidation goes upstream.
  auto revalidate = bearer("t-reader");
  revalidate.emplace_back("Cache-Control", "no-cache");
  EXPECT_EQ(client.get(target, revalidate).result_int(), 200);
  EXPECT_EQ(client.get(target, bearer("t-reader")).result_int(), 200);
  EXPECT_EQ(client.get(target, bearer("nobody")).result_int(), 403);

  const auto lines = access_lines();
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_EQ(lines[0]["request_id"], "abc-123");
  EXPECT_EQ(lines[0]["route"], "/healthz");
  EXPECT_TRUE(lines[0]["client"].is_null());
  EXPECT_EQ(lines[1]["request_id"], header(replaced, "X-Request-Id"));
  // The write: the admin client, the upstream's time, no cache outcome.
  EXPECT_EQ(lines[2]["client"], "admin");
  EXPECT_EQ(lines[2]["method"], "POST");
  EXPECT_EQ(lines[2]["route"], "/stores");
  EXPECT_TRUE(lines[2]["upstream_ms"].is_number());
  EXPECT_TRUE(lines[2]["cache"].is_null());
  // A miss went to the upstream, the hit did not.
  EXPECT_EQ(lines[3]["client"], "reader");
  EXPECT_EQ(lines[3]["route"], "/stores/{store_id}");
  EXPECT_EQ(lines[3]["cache"], "MISS");
  EXPECT_TRUE(lines[3]["upstream_ms"].is_number());
  EXPECT_EQ(lines[4]["cache"], "HIT");
  EXPECT_TRUE(lines[4]["upstream_ms"].is_null());
  EXPECT_EQ(lines[5]["status"], 403);
  EXPECT_TRUE(lines[5]["client"].is_null());
  for (const auto& line : lines) {
    EXPECT_TRUE(line["duration_ms"].is_number());
    // The route template, never the raw target.
    EXPECT_THAT(line.dump(), Not(HasSubstr(id)));
    EXPECT_THAT(line.dump(), Not(HasSubstr(kAccount)));
  }
}

TEST_F(AccessLogOverHttp, WritesNothingAndSendsNoRequestIdWhenSwitchedOff) {
  access_->set_enabled(false);
  auto client = harness_.connect();
  auto health = client.get("/healthz", {{"X-Request-Id", "abc-123"}});
  EXPECT_EQ(health.result_int(), 200);
  EXPECT_EQ(health.find("X-Request-Id"), health.end());
  EXPECT_TRUE(access_lines().empty());
  access_->set_enabled(true);
  client.get("/healthz");
  EXPECT_EQ(access_lines().size(), 1u);
}

TEST_F(AccessLogOverHttp, LabelsAdminStatusAndCountsDenials) {
  auto client = harness_.connect();
  EXPECT_EQ(client.get("/admin/status", bearer("t-admin")).result_int(), 200);
  EXPECT_EQ(client.get(api_base(kAccount) + "/stores", bearer("nobody")).result_int(), 403);
  EXPECT_EQ(client.get(api_base(kAccount) + "/stores").result_int(), 400);
  const std::string metrics = client.get("/metrics").body();
  EXPECT_THAT(metrics, HasSubstr(R"(secrets_proxy_requests_total{cache="none",method="GET",)"
                                 R"(route="/admin/status",status="200"} 1)"));
  EXPECT_THAT(metrics, Not(HasSubstr(R"(route="/admin/purge",status)")));
  EXPECT_THAT(metrics, HasSubstr("secrets_proxy_audit_denials_total 2"));
  EXPECT_EQ(access_lines().front()["route"], "/admin/status");
}

// ---------------------------------------------------------------------------------------
// Canary: known secret values and credentials, pushed through every path that could leak
// them, must not appear in any output.

class CanaryTest : public ::testing::Test {
 protected:
  static constexpr const char* kValue = "CANARY-VALUE-7f3a9c";
  static constexpr const char* kWriterToken = "CANARY-TOKEN-WRITER-51d2";
  static constexpr const char* kReaderToken = "CANARY-TOKEN-READER-0be4";
  static constexpr const char* kAdminToken = "CANARY-TOKEN-ADMIN-c8e1";
  static constexpr const char* kPurgeToken = "CANARY-TOKEN-PURGE-93aa";
  static constexpr const char* kUnknownToken = "CANARY-TOKEN-UNKNOWN-44f0";
  static constexpr const char* kApiKey = "CANARY-API-KEY-a1b2";

  CanaryTest() : previous_(spdlog::default_logger()) {
    // Every process log line, at debug, goes to the capture.
    auto logger = logs_.logger("secrets-proxy");
    logger->set_level(spdlog::level::debug);
    spdlog::set_default_logger(logger);
  }
  ~CanaryTest() override { spdlog::set_default_logger(previous_); }

  // The canary clients, admin token, metrics, audit (reads too) and access log.
  HarnessOptions canary_options() {
    HarnessOptions o;
    o.clients = {test::token_client("admin", kAdminToken, {"admin"}),
                 test::token_client("writer", kWriterToken, {"write"}, {"workers"}),
                 test::token_client("reader", kReaderToken, {"read"}, {"workers"}),
                 test::key_pair_client("keyed", "ops@example.com", kApiKey, {"read"})};
    o.admin_token = kPurgeToken;
    o.metrics = true;
    o.audit_sink = audit_.sink();
    o.audit_reads = true;
    o.access_log = std::make_shared<AccessLog>(logs_.logger(std::string(kAccessLoggerName)),
                                               LogFormat::json, true);
    return o;
  }

  // Sends `r`'s answer to the responses checked at the end, and returns it.
  TestResponse keep(TestResponse r) {
    responses_.push_back(r);
    return r;
  }

  static std::string create_body(const std::string& name, const std::string& scope) {
    const std::string value = kValue;
    return json::array({{{"name", name}, {"value", value}, {"scopes", {scope}}}}).dump();
  }

  void send_reads(test::HttpTestClient& client, const std::string& secrets,
                  const std::string& secret, const std::string& hidden_secret) {
    const std::string value = kValue;
    // Reads: miss, hit, list, a hidden secret, the key-pair credential.
    EXPECT_EQ(keep(client.get(secret, bearer(kReaderToken))).result_int(), 200);
    EXPECT_EQ(keep(client.get(secret, bearer(kReaderToken))).result_int(), 200);
    EXPECT_EQ(keep(client.get(secrets + "?search=" + value, bearer(kReaderToken))).result_int(),
              200);
    EXPECT_EQ(keep(client.get(hidden_secret, bearer(kReaderToken))).result_int(), 404);
    EXPECT_EQ(
        keep(client.get(secrets, {{"X-Auth-Email", "ops@example.com"}, {"X-Auth-Key", kApiKey}}))
            .result_int(),
        200);
  }

  void send_writes(test::HttpTestClient& client, const std::string& secrets,
                   const std::string& secret, const std::string& hidden_secret) {
    const std::string value = kValue;
    // Writes that succeed and that fail.
    EXPECT_EQ(
        keep(client.patch(secret, json({{"value", value + "-2"}}).dump(), bearer(kWriterToken)))
            .result_int(),
        200);
    EXPECT_EQ(
        keep(client.post(secrets, create_body("S2", "dex"), bearer(kWriterToken))).result_int(),
        403);  // scope not allowed
    EXPECT_EQ(
        keep(client.post(secrets, create_body("S3", "workers"), bearer(kReaderToken))).result_int(),
        403);  // permission missing
    EXPECT_EQ(
        keep(client.patch(hidden_secret, json({{"value", value}}).dump(), bearer(kWriterToken)))
            .result_int(),
        404);  // not visible
    EXPECT_EQ(keep(client.post(secrets, R"([{"name":"B","value":")" + value, bearer(kWriterToken)))
                  .result_int(),
              400);  // truncated JSON holding the value
    EXPECT_EQ(keep(client.post(secrets, create_body("bad name!", "workers"), bearer(kWriterToken)))
                  .result_int(),
              400);
    EXPECT_EQ(keep(client.post(secrets,
                               json::array({{{"name", "L"},
                                             {"value", std::string(70000, 'x') + value},
                                             {"scopes", {"workers"}}}})
                                   .dump(),
                               bearer(kWriterToken)))
                      .result_int() /
                  100,
              4u);  // too long
    EXPECT_EQ(keep(client.patch(secret, R"({"value":)" + std::string("\"") + value + "\", 5}",
                                bearer(kWriterToken)))
                  .result_int(),
              400);
    EXPECT_EQ(keep(client.del(secrets, bearer(kWriterToken), R"({"ids":[")" + value + "\"]"))
                  .result_int(),
              400);
    EXPECT_EQ(
        keep(client.post(secret + "/duplicate",
                         json({{"name", "D1"}, {"scopes", {"workers"}}, {"value", value}}).dump(),
                         bearer(kWriterToken)))
                .result_int() >= 200,
        true);
  }

  // Bad and unknown credentials, then the admin endpoints.
  void send_bad_credentials_and_admin_calls(test::HttpTestClient& client,
                                            const std::string& secrets) {
    const std::string value = kValue;
    // Bad and unknown credentials.
    EXPECT_EQ(keep(client.get(secrets, bearer(kUnknownToken))).result_int(), 403);
    EXPECT_EQ(keep(client.get(secrets, {{"Authorization", std::string("Basic ") + kWriterToken}}))
                  .result_int(),
              400);
    EXPECT_EQ(
        keep(client.get(secrets, {{"Authorization", std::string("Bearer ") + kWriterToken + " x"}}))
            .result_int(),
        400);
    EXPECT_EQ(keep(client.get(secrets, {{"X-Auth-Key", kApiKey}})).result_int(), 400);
    // Admin endpoints.
    EXPECT_EQ(keep(client.get("/admin/status", bearer(kPurgeToken))).result_int(), 200);
    EXPECT_EQ(keep(client.post("/admin/purge", "{}", bearer(kUnknownToken))).result_int(), 403);
    EXPECT_EQ(keep(client.post("/admin/purge", std::string(R"({"account_id":")") + value + "\"}",
                               bearer(kPurgeToken)))
                  .result_int(),
              400);
    EXPECT_EQ(keep(client.post("/admin/purge", "{}", bearer(kPurgeToken))).result_int(), 200);
  }

  // Every kept response's header fields and body, as text.
  std::string answers_text() const {
    std::string answers;
    for (const auto& r : responses_) {
      for (const auto& field : r.base()) {
        answers += std::string(field.name_string()) + ": " + std::string(field.value()) + "\n";
      }
      answers += r.body() + "\n";
    }
    return answers;
  }

  std::shared_ptr<spdlog::logger> previous_;
  CapturedOutput logs_;
  CapturedOutput audit_;
  std::vector<TestResponse> responses_;
};

TEST_F(CanaryTest, NoValueOrTokenReachesLogsAuditMetricsOrResponses) {
  ServerHarness harness(canary_options());
  auto client = harness.connect();
  auto store =
      keep(client.post(api_base(kAccount) + "/stores", R"({"name":"main"})", bearer(kAdminToken)));
  ASSERT_EQ(store.result_int(), 200);
  const std::string secrets = api_base(kAccount) + "/stores/" +
                              body_json(store)["result"]["id"].get<std::string>() + "/secrets";
  auto created = keep(client.post(secrets, create_body("S1", "workers"), bearer(kWriterToken)));
  ASSERT_EQ(created.result_int(), 200) << created.body();
  const std::string id = body_json(created)["result"][0]["id"];
  const std::string secret = secrets + "/" + id;
  auto hidden = keep(client.post(secrets, create_body("H1", "dex"), bearer(kAdminToken)));
  ASSERT_EQ(hidden.result_int(), 200);
  const std::string hidden_secret =
      secrets + "/" + body_json(hidden)["result"][0]["id"].get<std::string>();

  send_reads(client, secrets, secret, hidden_secret);
  send_writes(client, secrets, secret, hidden_secret);
  send_bad_credentials_and_admin_calls(client, secrets);
  const std::string metrics = keep(client.get("/metrics")).body();

  const std::string answers = answers_text();
  const std::string logs = logs_.text();
  const std::string audit = audit_.text();
  // Not vacuous: every request was logged and audited, at debug level.
  EXPECT_GE(std::count(logs.begin(), logs.end(), '\n'), static_cast<long>(responses_.size()));
  EXPECT_THAT(logs, HasSubstr(R"("level":"debug")"));
  EXPECT_THAT(audit, HasSubstr("scope_not_allowed"));
  EXPECT_THAT(audit, HasSubstr("secret_not_visible"));
  EXPECT_THAT(metrics, HasSubstr("secrets_proxy_requests_total"));

  for (const std::string& canary :
       {std::string(kValue), std::string(kWriterToken), std::string(kReaderToken),
        std::string(kAdminToken), std::string(kPurgeToken), std::string(kUnknownToken),
        std::string(kApiKey), std::string("CANARY")}) {
    EXPECT_THAT(logs, Not(HasSubstr(canary))) << canary;
    EXPECT_THAT(audit, Not(HasSubstr(canary))) << canary;
    EXPECT_THAT(metrics, Not(HasSubstr(canary))) << canary;
    EXPECT_THAT(answers, Not(HasSubstr(canary))) << canary;
  }
}

}  // namespace
}  // namespace sproxy::proxy
