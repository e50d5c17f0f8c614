// The behaviour every Upstream implementation shares, checked through the Upstream
// interface alone: each implementation in front of a real embedded store in a fresh
// directory (the embedded upstream itself; HttpUpstream talking to a loopback HTTP
// server that answers from the store; the guard and the emulation decorators around
// the embedded upstream). Whatever sits behind the interface, a caller gets the API's
// envelopes and statuses, and never a secret's value.
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/run_awaitable.hpp"
#include "tests/support/scripted_http_server.hpp"
#include "tests/support/temp_dir.hpp"
#include "upstream/crypto.hpp"
#include "upstream/embedded_store.hpp"
#include "upstream/embedded_upstream.hpp"
#include "upstream/emulation.hpp"
#include "upstream/guarded_upstream.hpp"
#include "upstream/http_upstream.hpp"
#include "upstream/model.hpp"
#include "upstream/route.hpp"

namespace sproxy::upstream {
namespace {

using nlohmann::json;

const std::string kStores =
    "/client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/stores";
const std::string kUnknownId = "abcdefabcdefabcdefabcdefabcdefab";

// An implementation under test over `store`, and whatever must live as long as it.
struct Built {
  std::shared_ptr<Upstream> upstream;
  std::shared_ptr<void> keep_alive;
};

struct Implementation {
  std::string name;
  std::function<Built(std::shared_ptr<EmbeddedStore>)> make;
};

Built embedded(std::shared_ptr<EmbeddedStore> store) {
  return {std::make_shared<EmbeddedUpstream>(std::move(store)), nullptr};
}

// HttpUpstream against a loopback server whose every answer is the store's.
Built http(std::shared_ptr<EmbeddedStore> store) {
  auto server = std::make_shared<test::ScriptedHttpServer>([store](const test::ReceivedRequest& r) {
    const ApiRequest request{method_from_string(r.method), r.target, r.body};
    const Micros now = std::chrono::duration_cast<std::chrono::microseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
    const ApiResponse answer = store->handle(request, now);
    return test::ScriptedReply::json(answer.status, answer.body);
  });
  HttpUpstreamOptions options;
  options.base_url = parse_base_url(server->base_url());
  options.token = "proxy-own-token-for-conformance";
  return {std::make_shared<HttpUpstream>(options), server};
}

Built guarded(std::shared_ptr<EmbeddedStore> store) {
  return {std::make_shared<GuardedUpstream>(embedded(std::move(store)).upstream), nullptr};
}

// The stand-in's chain at rest: the rate limit (far from its limit) over fault injection
// that injects nothing.
Built emulation(std::shared_ptr<EmbeddedStore> store) {
  auto faults = std::make_shared<FaultInjectingUpstream>(embedded(std::move(store)).upstream,
                                                         FaultInjectionOptions{});
  return {std::make_shared<RateLimitEmulator>(std::move(faults)), nullptr};
}

class UpstreamConformance : public ::testing::TestWithParam<Implementation> {
 protected:
  UpstreamConformance() {
    EmbeddedStoreOptions options;
    options.data_path = dir_.path() / "store.db";
    options.key = random_bytes(kAesKeyBytes);
    store_ = std::make_shared<EmbeddedStore>(std::move(options));
    built_ = GetParam().make(store_);
  }

  ApiResponse call(Method method, const std::string& target, std::string body = {}) {
    CallResult r =
        test::run_awaitable(io_, built_.upstream->call({method, target, std::move(body)}));
    EXPECT_TRUE(r) << r.error().message();
    return r ? std::move(*r) : ApiResponse{};
  }

  // A new store named "main"; its id.
  std::string create_store() {
    const ApiResponse created = call(Method::post, kStores, R"({"name":"main"})");
    EXPECT_EQ(created.status, 200u) << created.body;
    return json::parse(created.body)["result"]["id"].get<std::string>();
  }

  test::TempDir dir_;
  std::shared_ptr<EmbeddedStore> store_;
  boost::asio::io_context io_;
  Built built_;
};

TEST_P(UpstreamConformance, CreatesAStoreAndReadsItBackInTheSuccessEnvelope) {
  const std::string id = create_store();

  const ApiResponse read = call(Method::get, kStores + "/" + id);
  ASSERT_EQ(read.status, 200u) << read.body;
  const json body = json::parse(read.body);
  EXPECT_EQ(body["success"], true);
  EXPECT_EQ(body["errors"], json::array());
  EXPECT_EQ(body["result"]["id"], id);
  EXPECT_EQ(body["result"]["name"], "main");
}

TEST_P(UpstreamConformance, AnswersAnUnknownSecretWithTheContractsNotFoundEnvelope) {
  const std::string id = create_store();

  const ApiResponse missing = call(Method::get, kStores + "/" + id + "/secrets/" + kUnknownId);
  EXPECT_EQ(missing.status, 404u);
  EXPECT_EQ(missing.body, envelope_error(errors::secret_not_found()));
}

TEST_P(UpstreamConformance, AnswersAMalformedBodyWithTheInvalidJsonEnvelope) {
  const ApiResponse refused = call(Method::post, kStores, "{\"name\":");
  EXPECT_EQ(refused.status, 400u);
  EXPECT_EQ(refused.body, envelope_error(errors::invalid_json_body()));
}

TEST_P(UpstreamConformance, NeverAnswersWithASecretsValue) {
  const std::string id = create_store();
  const std::string value = "conformance-value-" + to_hex(random_bytes(8));
  const std::string secrets = kStores + "/" + id + "/secrets";

  const ApiResponse created =
      call(Method::post, secrets,
           json::array({{{"name", "API_KEY"}, {"value", value}, {"scopes", {"workers"}}}}).dump());
  ASSERT_EQ(created.status, 200u) << created.body;
  const std::string secret_id = json::parse(created.body)["result"][0]["id"].get<std::string>();
  const ApiResponse listed = call(Method::get, secrets);
  const ApiResponse read = call(Method::get, secrets + "/" + secret_id);

  EXPECT_EQ(listed.status, 200u);
  EXPECT_EQ(read.status, 200u);
  EXPECT_EQ(json::parse(read.body)["result"]["name"], "API_KEY");
  for (const ApiResponse* answer : {&created, &listed, &read}) {
    EXPECT_EQ(answer->body.find(value), std::string::npos) << answer->body;
  }
}

TEST_P(UpstreamConformance, DescribesItselfAndPreconnectsNoMoreThanAsked) {
  EXPECT_FALSE(built_.upstream->describe().empty());
  EXPECT_LE(test::run_awaitable(io_, built_.upstream->preconnect(1)), 1u);
  // Still answers afterwards.
  EXPECT_EQ(call(Method::get, kStores).status, 200u);
}

INSTANTIATE_TEST_SUITE_P(
    EveryImplementation, UpstreamConformance,
    ::testing::Values(Implementation{"embedded", embedded}, Implementation{"http", http},
                      Implementation{"guarded", guarded}, Implementation{"emulation", emulation}),
    [](const ::testing::TestParamInfo<Implementation>& info) { return info.param.name; });

}  // namespace
}  // namespace sproxy::upstream
