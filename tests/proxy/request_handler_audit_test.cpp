// The request handler's audit trail, ambiguous credentials, admins' write bodies, and
// missing secrets answered in the proxy's own bytes whatever the upstream writes.
#include "tests/proxy/request_handler_fixture.hpp"

namespace sproxy::proxy {
namespace {

using namespace handler_testing;

// ---------------------------------------------------------------------------------------
// Audit

TEST_P(HandlerRules, AuditsAnAllowedWriteWithItsClientRouteIdsAndNames) {
  ASSERT_EQ(rig_.patch(secret("W"), "t-writer", R"({"comment":"c"})").result_int(), 200);
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), 1u);
  const json& l = lines[0];
  EXPECT_EQ(l["time"], upstream::format_timestamp(rig_.now()));
  EXPECT_EQ(l["client"], "writer");
  EXPECT_EQ(l["method"], "PATCH");
  EXPECT_EQ(l["route"], "/stores/{store_id}/secrets/{secret_id}");
  EXPECT_EQ(l["account"], kAccount);
  EXPECT_EQ(l["store"], store_);
  EXPECT_EQ(l["secret_id"], ids_["W"]);
  EXPECT_EQ(l["secret_name"], "W");
  EXPECT_EQ(l["decision"], "allow");
  EXPECT_EQ(l["status"], 200);
  EXPECT_FALSE(l.contains("reason"));
}

TEST_P(HandlerRules, AuditsTheSecretsACreateMade) {
  auto res = rig_.post(
      secrets(), "t-writer",
      json::array({secret_json("N1", {"workers"}), secret_json("N2", {"workers"})}).dump());
  ASSERT_EQ(res.result_int(), 200);
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), 1u);
  const json result = json_of(res)["result"];
  EXPECT_EQ(lines[0]["secrets"], json::array({{{"id", result[0]["id"]}, {"name", "N1"}},
                                              {{"id", result[1]["id"]}, {"name", "N2"}}}));
}

TEST_P(HandlerRules, AuditsEveryDenialWithItsReason) {
  (void)rig_.get(secret("W"), "t-unknown");
  (void)rig_.get(secret("W"), "");
  (void)rig_.get(base() + "/stores", "t-elsewhere");
  (void)rig_.post(base() + "/stores", "t-writer", R"({"name":"x"})");
  (void)rig_.post(secrets(), "t-writer", json::array({secret_json("X", {"dex"})}).dump());
  (void)rig_.del(secret("D"), "t-writer");
  (void)rig_.get(secret("D"), "t-reader");
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), 7u);
  std::vector<std::string> reasons;
  for (const auto& l : lines) {
    EXPECT_EQ(l["decision"], "deny") << l.dump();
    reasons.push_back(l["reason"].get<std::string>());
  }
  EXPECT_THAT(reasons, ElementsAre("unknown_credentials", "missing_credentials",
                                   "account_not_allowed", "permission_missing", "scope_not_allowed",
                                   "secret_not_visible", "secret_not_visible"));
  EXPECT_EQ(lines[0]["client"], nullptr);
  EXPECT_EQ(lines[0]["status"], 403);
  EXPECT_EQ(lines[1]["status"], 400);
  EXPECT_EQ(lines[4]["client"], "writer");
  EXPECT_EQ(lines[4]["secrets"], json::array({{{"id", nullptr}, {"name", "X"}}}));
  EXPECT_EQ(lines[5]["status"], 404);
  EXPECT_EQ(lines[5]["secret_name"], "D");
  EXPECT_EQ(lines[6]["method"], "GET");
}

TEST_P(HandlerRules, DoesNotAuditAllowedReadsUnlessAskedTo) {
  (void)rig_.get(secrets(), "t-reader");
  (void)rig_.get(secret("W"), "t-reader");
  (void)rig_.get(secrets() + "/" + kUnknownId, "t-reader");
  EXPECT_TRUE(rig_.audit_lines().empty());
}

TEST(HandlerAudit, AuditsEveryReadWhenAskedTo) {
  auto o = rig_options(true);
  o.audit_reads = true;
  test::HandlerRig rig(o);
  (void)rig.get(base() + "/stores", "t-reader");
  (void)rig.get(base() + "/quota", "t-reader");
  const auto lines = rig.audit_lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["route"], "/stores");
  EXPECT_EQ(lines[0]["decision"], "allow");
  EXPECT_EQ(lines[1]["route"], "/quota");
  EXPECT_EQ(lines[1]["status"], 200);
}

TEST(HandlerAudit, NeverWritesAValueOrATokenToTheAuditOrTheLog) {
  const std::string canary_value = "CANARY-VALUE-3f1d9c";
  const std::string canary_token = "sproxy_CANARY-TOKEN-77aa01";
  const std::string canary_unknown = "sproxy_CANARY-UNKNOWN-55bb02";
  auto o = rig_options(true);
  o.audit_reads = true;
  o.clients.push_back(token_client("canary", canary_token, {"write"}, {"workers"}));
  test::HandlerRig rig(o);

  // The process log too, at its most verbose, for the duration of the test.
  std::ostringstream log_out;
  auto previous = spdlog::default_logger();
  auto capture = std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_out));
  capture->set_level(spdlog::level::trace);
  spdlog::set_default_logger(capture);

  const std::string store_id =
      json_of(rig.post(base() + "/stores", "t-admin", R"({"name":"s"})"))["result"]["id"];
  const std::string secrets = base() + "/stores/" + store_id + "/secrets";
  const auto item = [&](const std::string& name, const std::string& scope) {
    return json{{"name", name}, {"value", canary_value}, {"scopes", {scope}}};
  };
  auto created = rig.post(secrets, canary_token, json::array({item("C1", "workers")}).dump());
  ASSERT_EQ(created.result_int(), 200);
  const std::string id = json_of(created)["result"][0]["id"];
  (void)rig.post(secrets, canary_token, json::array({item("C2", "dex")}).dump());  // denied
  (void)rig.post(secrets, canary_token, json::array({item("bad name", "workers")}).dump());
  (void)rig.post(secrets, "t-admin", json::array({item("C3", "access")}).dump());
  (void)rig.patch(secrets + "/" + id, canary_token, json{{"value", canary_value}}.dump());
  (void)rig.post(secrets + "/" + id + "/duplicate", canary_token,
                 R"({"name":"C4","scopes":["workers"]})");
  (void)rig.get(secrets, canary_token);
  (void)rig.get(secrets, canary_unknown);
  (void)rig.post("/admin/purge", canary_unknown, "");
  (void)rig.del(secrets + "/" + id, canary_token);

  spdlog::set_default_logger(previous);
  const std::string audit = rig.audit_text();
  ASSERT_GE(rig.audit_lines().size(), 10u);
  for (const std::string& needle :
       {canary_value, canary_token, canary_unknown, upstream::sha256_hex(canary_token),
        upstream::sha256_hex(canary_unknown), std::string("CANARY")}) {
    EXPECT_THAT(audit, Not(HasSubstr(needle))) << needle;
    EXPECT_THAT(log_out.str(), Not(HasSubstr(needle))) << needle;
  }
  // The audit still names what happened.
  EXPECT_THAT(audit, HasSubstr(R"("client":"canary")"));
  EXPECT_THAT(audit, HasSubstr(R"("name":"C4")"));
}

// ---------------------------------------------------------------------------------------
// Ambiguous credentials

TEST_P(HandlerRules, RefusesAmbiguousCredentialsWithTheContracts6003AndAuditsThem) {
  const auto with = [&](std::vector<std::pair<std::string, std::string>> credentials) {
    HttpRequest req = test::HandlerRig::request(http::verb::get, secret("W"), "");
    for (const auto& [name, value] : credentials) req.insert(name, value);
    ConnectionContext connection;
    return rig_.call_on(connection, std::move(req));
  };
  const std::vector<std::vector<std::pair<std::string, std::string>>> cases = {
      {{"Authorization", "Bearer t-reader"}, {"Authorization", "Bearer t-admin"}},
      {{"Authorization", "Bearer t-reader"}, {"Authorization", "Bearer t-reader"}},
      {{"Authorization", "Bearer t-reader"}, {"X-Auth-Key", "k"}},
      {{"Authorization", "Bearer t-reader"}, {"X-Auth-Email", "a@example.com"}},
      {{"X-Auth-Email", "a@example.com"}, {"X-Auth-Key", "k"}, {"X-Auth-Key", "k2"}},
      {{"X-Auth-Email", "a@example.com"}, {"X-Auth-Email", "b@example.com"}, {"X-Auth-Key", "k"}},
  };
  for (const auto& credentials : cases)
    expect_error(with(credentials), errors::invalid_request_headers());
  EXPECT_EQ(rig_.upstream().calls(), 0u);
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), cases.size());
  for (const auto& line : lines) {
    EXPECT_EQ(line["decision"], "deny");
    EXPECT_EQ(line["reason"], "ambiguous_credentials");
    EXPECT_EQ(line["status"], 400);
    EXPECT_EQ(line["client"], nullptr);
  }
}

TEST_P(HandlerRules, RefusesAnAmbiguousCredentialWhoseFirstHeaderTheConnectionRemembers) {
  ConnectionContext connection;
  ASSERT_EQ(rig_.call_on(connection, http::verb::get, secret("W"), "t-reader").result_int(), 200);
  ASSERT_EQ(rig_.call_on(connection, http::verb::get, secret("W"), "t-reader").result_int(), 200);
  // The remembered credential first, another after it: refused at start, not a hit.
  HttpRequest req = test::HandlerRig::request(http::verb::get, secret("A"), "t-reader");
  req.insert(http::field::authorization, "Bearer t-admin");
  Reply step = rig_.answer(connection, std::move(req));
  ASSERT_TRUE(step.ready());
  expect_error(step.take_response(), errors::invalid_request_headers());
  // The memo still serves the plain credential afterwards.
  EXPECT_EQ(rig_.call_on(connection, http::verb::get, secret("W"), "t-reader").result_int(), 200);
}

TEST_P(HandlerRules, RefusesAmbiguousCredentialsAtTheAdminEndpoint) {
  HttpRequest req = test::HandlerRig::request(http::verb::post, "/admin/purge", "t-admin");
  req.insert(http::field::authorization, "Bearer " + kPurgeToken);
  ConnectionContext connection;
  expect_error(rig_.call_on(connection, std::move(req)), errors::invalid_request_headers());
  const auto lines = rig_.audit_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].value("reason", ""), "ambiguous_credentials");
}

// ---------------------------------------------------------------------------------------
// Admins' write bodies

TEST(AdminWriteBodies, AreValidatedLikeEveryonesWithoutCallingTheUpstreamOrInvalidating) {
  test::HandlerRig rig(rig_options(true));
  const std::string store =
      json_of(rig.post(base() + "/stores", "t-admin", R"({"name":"main"})"))["result"]["id"];
  const std::string secrets = base() + "/stores/" + store + "/secrets";
  auto created = rig.post(secrets, "t-admin", R"([{"name":"W","value":"v","scopes":["workers"]}])");
  ASSERT_EQ(created.result_int(), 200) << body_of(created);
  const std::string secret = secrets + "/" + json_of(created)["result"][0]["id"].get<std::string>();
  // What the checks before a body read: the store, and the secret's snapshot.
  ASSERT_EQ(rig.get(base() + "/stores/" + store, "t-admin").result_int(), 200);
  ASSERT_EQ(rig.get(secret, "t-admin").result_int(), 200);
  rig.upstream().reset_counts();
  rig.clear_audit();

  const std::string bad_name = R"([{"name":"bad name","value":"v","scopes":["workers"]}])";
  const std::string no_name = R"({"scopes":["workers"]})";
  const std::string too_long =
      json::array({{{"name", "LONG"},
                    {"value", std::string(upstream::kDefaultMaxValueBytes + 1, 'x')},
                    {"scopes", {"workers"}}}})
          .dump();
  expect_error(rig.post(secrets, "t-admin", "{not json"), errors::invalid_json_body());
  expect_error(rig.post(secrets, "t-admin", bad_name),
               upstream::parse_secret_create(bad_name, upstream::kDefaultMaxValueBytes).error());
  expect_error(rig.post(secrets, "t-admin", too_long), errors::secret_value_too_long());
  expect_error(rig.patch(secret, "t-admin", R"({"name":"RENAMED"})"),
               errors::secret_name_immutable());
  expect_error(rig.post(secret + "/duplicate", "t-admin", no_name),
               upstream::parse_secret_duplicate(no_name).error());
  expect_error(rig.del(secrets, "t-admin", R"({"ids":"x"})"), errors::invalid_json_body());
  expect_error(rig.post(base() + "/stores", "t-admin", "[]"), errors::invalid_json_body());

  EXPECT_EQ(rig.upstream().calls(), 0u);
  const auto hit = rig.get(secret, "t-admin");
  EXPECT_EQ(hit.result_int(), 200);
  EXPECT_EQ(hit["X-Cache"], "HIT");
  EXPECT_EQ(rig.upstream().calls(), 0u);
  // Audited like anyone's refused write: what was asked and what it got.
  const auto lines = rig.audit_lines();
  ASSERT_EQ(lines.size(), 7u);
  for (const auto& line : lines) {
    EXPECT_EQ(line["client"], "admin");
    EXPECT_EQ(line["status"], 400);
  }
}

TEST(AdminWriteBodies, AreAnsweredAfterTheStoreAndTargetChecksTheUpstreamMakesFirst) {
  test::HandlerRig rig(rig_options(true));
  const std::string store =
      json_of(rig.post(base() + "/stores", "t-admin", R"({"name":"main"})"))["result"]["id"];
  const std::string unknown_store = base() + "/stores/" + kUnknownId + "/secrets";
  expect_error(rig.post(unknown_store, "t-admin", "{not json"), errors::store_not_found());
  expect_error(rig.del(unknown_store, "t-admin", "{not json"), errors::store_not_found());
  expect_error(rig.patch(unknown_store + "/" + kUnknownId, "t-admin", "{not json"),
               errors::store_not_found());
  const std::string missing = base() + "/stores/" + store + "/secrets/" + kUnknownId;
  expect_error(rig.patch(missing, "t-admin", "{not json"), errors::secret_not_found());
  expect_error(rig.post(missing + "/duplicate", "t-admin", "{not json"),
               errors::secret_not_found());
  for (auto kind : {RouteKind::create_secrets, RouteKind::patch_secret, RouteKind::bulk_delete,
                    RouteKind::duplicate}) {
    EXPECT_EQ(rig.upstream().calls(kind), 0u);
  }
}

// ---------------------------------------------------------------------------------------
// A missing secret is answered in the proxy's bytes, whatever the upstream writes

// An upstream that writes its error envelopes as the same JSON in other bytes (indented),
// as another implementation of the API may.
class ReformattingUpstream final : public upstream::Upstream {
 public:
  explicit ReformattingUpstream(std::shared_ptr<upstream::Upstream> inner)
      : inner_(std::move(inner)) {}
  std::string describe() const override { return "reformatting"; }
  boost::asio::awaitable<upstream::CallResult> call(upstream::ApiRequest request) override {
    upstream::CallResult r = co_await inner_->call(std::move(request));
    if (r && r->status >= 400) r->body = json::parse(r->body).dump(2);
    co_return r;
  }

 private:
  std::shared_ptr<upstream::Upstream> inner_;
};

enum class CacheMode { enabled, disabled, secrets_ttl_zero };

class HiddenAndMissingSecrets : public ::testing::TestWithParam<CacheMode> {
 protected:
  HiddenAndMissingSecrets() : rig_(options()) {
    auto store = rig_.post(base() + "/stores", "t-admin", R"({"name":"main"})");
    store_ = json_of(store)["result"]["id"].get<std::string>();
    auto created = rig_.post(secrets(), "t-admin",
                             R"([{"name":"W","value":"w","scopes":["workers"]},)"
                             R"({"name":"D","value":"d","scopes":["dex"]}])");
    EXPECT_EQ(created.result_int(), 200) << body_of(created);
    const json created_body = json_of(created);
    for (const auto& s : created_body["result"]) {
      ids_[s["name"].get<std::string>()] = s["id"].get<std::string>();
    }
  }

  static test::HandlerRigOptions options() {
    test::HandlerRigOptions o = rig_options(true);
    o.cache.enabled = GetParam() != CacheMode::disabled;
    if (GetParam() == CacheMode::secrets_ttl_zero) o.cache.ttl.secrets_ms = 0;
    o.wrap_upstream = [](std::shared_ptr<upstream::Upstream> fake) {
      return std::make_shared<ReformattingUpstream>(std::move(fake));
    };
    return o;
  }

  std::string secrets() const { return base() + "/stores/" + store_ + "/secrets"; }
  std::string hidden() const { return secrets() + "/" + ids_.at("D"); }
  std::string missing() const { return secrets() + "/" + kUnknownId; }
  // Puts whatever the cache keeps in the same state before each of two compared answers.
  void warm() { (void)rig_.get(secrets(), "t-admin"); }

  test::HandlerRig rig_;
  std::string store_;
  std::map<std::string, std::string> ids_;
};

INSTANTIATE_TEST_SUITE_P(EveryCacheSetting, HiddenAndMissingSecrets,
                         ::testing::Values(CacheMode::enabled, CacheMode::disabled,
                                           CacheMode::secrets_ttl_zero),
                         [](const auto& info) {
                           switch (info.param) {
                             case CacheMode::enabled:
                               return "cached";
                             case CacheMode::disabled:
                               return "uncached";
                             case CacheMode::secrets_ttl_zero:
                               return "secrets_ttl_zero";
                           }
                           return "unknown";
                         });

TEST_P(HiddenAndMissingSecrets, GetTheSameBytesOnEveryRouteNamingASecret) {
  const std::string canonical = upstream::envelope_error(errors::secret_not_found());
  const auto same = [&](const char* what, const auto& ask_hidden, const auto& ask_missing) {
    warm();
    const HttpResponse a = ask_hidden();
    warm();
    const HttpResponse b = ask_missing();
    EXPECT_EQ(a.result_int(), 404) << what;
    EXPECT_EQ(body_of(a), canonical) << what;
    EXPECT_EQ(wire_form(a), wire_form(b)) << what;
  };
  same(
      "get", [&] { return rig_.get(hidden(), "t-reader"); },
      [&] { return rig_.get(missing(), "t-reader"); });
  same(
      "get, an admin's missing", [&] { return rig_.get(hidden(), "t-reader"); },
      [&] { return rig_.get(missing(), "t-admin"); });
  same(
      "patch", [&] { return rig_.patch(hidden(), "t-writer", R"({"comment":"x"})"); },
      [&] { return rig_.patch(missing(), "t-writer", R"({"comment":"x"})"); });
  same(
      "patch, an admin's missing",
      [&] { return rig_.patch(hidden(), "t-writer", R"({"comment":"x"})"); },
      [&] { return rig_.patch(missing(), "t-admin", R"({"comment":"x"})"); });
  same(
      "delete", [&] { return rig_.del(hidden(), "t-writer"); },
      [&] { return rig_.del(missing(), "t-admin"); });
  const std::string copy = R"({"name":"COPY","scopes":["workers"]})";
  same(
      "duplicate", [&] { return rig_.post(hidden() + "/duplicate", "t-writer", copy); },
      [&] { return rig_.post(missing() + "/duplicate", "t-admin", copy); });
  same(
      "bulk delete",
      [&] {
        return rig_.del(secrets(), "t-writer", json{{"ids", {ids_["W"], ids_["D"]}}}.dump());
      },
      [&] {
        return rig_.del(secrets(), "t-admin", json{{"ids", {ids_["W"], kUnknownId}}}.dump());
      });
  // Nothing was written.
  EXPECT_EQ(rig_.store().list_secrets(kAccount, store_, 0)->size(), 2u);
}

TEST_P(HiddenAndMissingSecrets, LeaveAStoresOwn404AsTheUpstreamWroteIt) {
  const auto res =
      rig_.get(base() + "/stores/" + kUnknownId + "/secrets/" + kUnknownId, "t-reader");
  EXPECT_EQ(res.result_int(), 404);
  EXPECT_EQ(json_of(res)["errors"][0]["message"], "store_not_found");
}

}  // namespace
}  // namespace sproxy::proxy
