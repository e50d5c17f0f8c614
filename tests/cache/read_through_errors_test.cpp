// ReadThroughCache when the upstream fails: stale-if-error, upstream answers that are not
// API answers, and negative caching.
#include "tests/cache/read_through_fixture.hpp"

namespace sproxy::cache::testing {
namespace {

// ---------------------------------------------------------------------------------------
// Stale-if-error

struct FailureCase {
  const char* name;
  Fault fault;
};

class StaleIfError : public CacheFixture, public ::testing::WithParamInterface<FailureCase> {};

TEST_P(StaleIfError, ServesTheLastGoodEntryWhenTheUpstreamFails) {
  const std::string secret = create_secret_directly("A");
  const std::vector<std::string> paths = {"/stores", "/stores/" + store_id, secrets_path(),
                                          secret_path(secret), "/quota"};
  std::vector<std::string> good;
  for (const auto& p : paths) good.push_back(body(read(p, kT0)));
  fake->fail_always(GetParam().fault);
  const Micros expired = kT0 + 40'000 * kMs;  // past every TTL, within stale_if_error
  for (std::size_t i = 0; i < paths.size(); ++i) {
    const Answer a = read(paths[i], expired);
    EXPECT_EQ(a.outcome, Outcome::stale) << paths[i];
    EXPECT_EQ(a.status, 200u) << paths[i];
    EXPECT_EQ(body(a), good[i]) << paths[i];
    EXPECT_EQ(a.age, 40'000 * kMs) << paths[i];
  }
  EXPECT_EQ(cache->stats().stale_served, paths.size());
}

INSTANTIATE_TEST_SUITE_P(
    UpstreamFailures, StaleIfError,
    ::testing::Values(FailureCase{"http500", Fault::http(500)},
                      FailureCase{"http503", Fault::http(503)},
                      FailureCase{"rate_limited", Fault::too_many_requests(30)},
                      FailureCase{"timeout", Fault::transport(UpstreamErrc::timeout)},
                      FailureCase{"reset", Fault::transport(UpstreamErrc::connection_reset)},
                      FailureCase{"unreachable", Fault::transport(UpstreamErrc::unreachable)}),
    [](const ::testing::TestParamInfo<FailureCase>& i) { return std::string(i.param.name); });

TEST_F(ReadThroughCacheTest, PassesOnAnUpstreamNoInsteadOfServingStale) {
  read("/quota", kT0);
  for (unsigned status : {400u, 401u, 403u, 404u}) {
    cache->purge_all();
    read("/quota", kT0);
    fake->fail_next(Fault::http(status));
    const Answer a = read("/quota", kT0 + 6'000 * kMs);
    EXPECT_EQ(a.status, status);
    EXPECT_EQ(a.outcome, Outcome::miss);
  }
}

TEST_F(ReadThroughCacheTest, StopsServingStaleOnceStaleIfErrorHasPassed) {
  read("/quota", kT0);
  fake->fail_always(Fault::http(503));
  const Micros fresh_until = kT0 + cfg.ttl.quota_ms * kMs;
  const Micros limit = fresh_until + cfg.stale_if_error_ms * kMs;
  EXPECT_EQ(read("/quota", limit - 1).outcome, Outcome::stale);
  const Answer gone = read("/quota", limit);
  EXPECT_EQ(gone.status, 503u);
  EXPECT_EQ(gone.outcome, Outcome::miss);
}

TEST_F(ReadThroughCacheTest, TurnsTransportFailuresIntoGatewayErrorsWhenNothingIsCached) {
  fake->fail_next(Fault::transport(UpstreamErrc::timeout));
  const Answer timeout = read("/quota", kT0);
  EXPECT_EQ(timeout.status, 504u);
  EXPECT_EQ(body(timeout), upstream::envelope_error(upstream::errors::gateway_timeout()));
  fake->fail_next(Fault::transport(UpstreamErrc::connection_reset));
  const Answer reset = read("/quota", kT0);
  EXPECT_EQ(reset.status, 502u);
  EXPECT_EQ(json_of(reset)["errors"][0]["code"], 1002);
}

TEST_F(ReadThroughCacheTest, PassesServerErrorsAndRateLimitsThroughWhenNothingIsCached) {
  fake->fail_next(Fault::http(503));
  const Answer unavailable = read(secrets_path(), kT0);
  EXPECT_EQ(unavailable.status, 503u);
  fake->fail_next(Fault::too_many_requests(42));
  const Answer limited = read(secrets_path(), kT0);
  EXPECT_EQ(limited.status, 429u);
  EXPECT_EQ(limited.retry_after, "42");
  EXPECT_EQ(body(limited), upstream::envelope_error(upstream::errors::rate_limited(42)));
}

// ---------------------------------------------------------------------------------------
// Upstream answers that are not API answers

struct GarbageCase {
  const char* name;
  // The garbage body, made from the good body of the same read.
  std::function<std::string(const std::string& good)> body;
};

class GarbageAnswer : public CacheFixture,
                      public ::testing::WithParamInterface<std::tuple<const char*, GarbageCase>> {
 protected:
  std::string path() const {
    const std::string which = std::get<0>(GetParam());
    return which == std::string("store") ? "/stores/" + store_id : "/quota";
  }
  std::string garbage() { return std::get<1>(GetParam()).body(direct(base() + path()).body); }
};

TEST_P(GarbageAnswer, IsAnsweredAs502UpstreamUnavailableAndNotCached) {
  const std::string bad = garbage();
  fake->fail_next(Fault::raw_answer(200, bad));
  const Answer a = read(path(), kT0);
  EXPECT_EQ(a.status, 502u);
  EXPECT_EQ(body(a), upstream::envelope_error(upstream::errors::upstream_failure("bad_response")));
  EXPECT_EQ(cache->stats().upstream_bad_answers, 1u);
  // Nothing was stored: the next read asks again and gets the good answer.
  const Answer next = read(path(), kT0);
  EXPECT_EQ(next.status, 200u);
  EXPECT_EQ(next.outcome, Outcome::miss);
  EXPECT_EQ(body(next), direct(base() + path()).body);
  EXPECT_EQ(fake->calls(), 2u);
}

TEST_P(GarbageAnswer, NeverReplacesTheGoodEntryWhichIsServedStaleInstead) {
  const std::string good = body(read(path(), kT0));
  const std::string bad = garbage();
  const Micros expired = kT0 + 30'000 * kMs;  // past the TTL, within stale_if_error
  for (int i = 0; i < 2; ++i) {
    fake->fail_next(Fault::raw_answer(200, bad));
    const Answer a = read(path(), expired + i);
    EXPECT_EQ(a.status, 200u);
    EXPECT_EQ(a.outcome, Outcome::stale);
    EXPECT_EQ(body(a), good);
  }
  EXPECT_EQ(cache->stats().upstream_bad_answers, 2u);
}

INSTANTIATE_TEST_SUITE_P(
    StoreAndQuota, GarbageAnswer,
    ::testing::Combine(
        ::testing::Values("store", "quota"),
        ::testing::Values(
            GarbageCase{"not_json", [](const std::string&) { return "<html>OK</html>"; }},
            GarbageCase{"json_not_an_envelope",
                        [](const std::string& good) {
                          return nlohmann::json::parse(good)["result"].dump();
                        }},
            GarbageCase{"success_false",
                        [](const std::string& good) {
                          auto j = nlohmann::json::parse(good);
                          j["success"] = false;
                          return j.dump();
                        }},
            GarbageCase{
                "wrong_result_shape",
                [](const std::string& good) {
                  auto j = nlohmann::json::parse(good);
                  j["result"] = nlohmann::json::array();
                  return j.dump();
                }},
            GarbageCase{"truncated",
                        [](const std::string& good) { return good.substr(0, good.size() / 2); }})),
    [](const auto& i) {
      return std::string(std::get<0>(i.param)) + "_" + std::get<1>(i.param).name;
    });

TEST_F(ReadThroughCacheTest, WrapsAnErrorWithoutAnEnvelopeInTheApisEnvelope) {
  const std::string html = "<html><body>502 Bad Gateway</body></html>";
  for (unsigned status : {500u, 502u, 503u, 403u, 404u}) {
    fake->fail_next(Fault::raw_answer(status, html));
    const Answer a = read("/quota", kT0);
    EXPECT_EQ(a.status, 502u) << status;
    EXPECT_EQ(body(a), upstream::envelope_error(upstream::errors::upstream_failure("bad_response")))
        << status;
  }
  // A list page too, and a read that bypasses the cache.
  fake->fail_next(Fault::raw_answer(502, html));
  EXPECT_EQ(body(read(secrets_path(), kT0)),
            upstream::envelope_error(upstream::errors::upstream_failure("bad_response")));
  fake->fail_next(Fault::raw_answer(502, html));
  const Answer bypassed = read("/stores/not-a-valid-id", kT0);
  EXPECT_EQ(bypassed.outcome, Outcome::bypass);
  EXPECT_EQ(bypassed.status, 502u);
  EXPECT_EQ(json_of(bypassed)["errors"][0]["message"], "upstream_unavailable: bad_response");
  EXPECT_EQ(cache->stats().upstream_bad_answers, 7u);
}

TEST_F(ReadThroughCacheTest, KeepsA429WithoutAnEnvelopeARateLimitInTheApisEnvelope) {
  fake->fail_next(Fault::raw_answer(429, "<html>Too Many Requests</html>"));
  const Answer a = read("/quota", kT0);
  EXPECT_EQ(a.status, 429u);
  EXPECT_EQ(a.retry_after, std::to_string(policy::kDefaultRetryAfterSeconds));
  EXPECT_EQ(body(a), upstream::envelope_error(
                         upstream::errors::rate_limited(policy::kDefaultRetryAfterSeconds)));
}

TEST_F(ReadThroughCacheTest, PassesOnAnUpstreamErrorWithItsEnvelopeAsItIs) {
  const std::string envelope = upstream::envelope_error(upstream::errors::validation("odd"));
  fake->fail_next(Fault::raw_answer(400, envelope));
  const Answer a = read("/quota", kT0);
  EXPECT_EQ(a.status, 400u);
  EXPECT_EQ(body(a), envelope);
  EXPECT_EQ(cache->stats().upstream_bad_answers, 0u);
}

TEST_F(ReadThroughCacheTest, NeverPassesOnAWritesGarbageSuccessButStillInvalidates) {
  const std::vector<std::string> garbage = {"<html>OK</html>", "{}",
                                            R"({"success":true,"errors":[],"result":{}})"};
  for (std::size_t i = 0; i < garbage.size(); ++i) {
    ASSERT_EQ(json_of(read("/quota", kT0))["result"]["secrets"]["usage"], i);
    fake->fail_next(Fault::raw_answer(200, garbage[i]).after_apply());
    const std::string name = "S" + std::to_string(i);
    const Answer w = write(Method::post, secrets_path(),
                           R"([{"name":")" + name + R"(","value":"v","scopes":["workers"]}])", kT0);
    EXPECT_EQ(w.status, 502u) << garbage[i];
    EXPECT_EQ(json_of(w)["errors"][0]["message"], "upstream_unavailable: bad_response");
    // The write was applied upstream, and the quota entry it changes was invalidated.
    EXPECT_EQ(json_of(read("/quota", kT0))["result"]["secrets"]["usage"], i + 1) << garbage[i];
  }
  EXPECT_EQ(cache->stats().upstream_bad_answers, garbage.size());
}

// ---------------------------------------------------------------------------------------
// Negative caching

TEST_F(ReadThroughCacheTest, CachesAnUnknownStoreForTheNegativeTtl) {
  const std::string unknown(32, 'c');
  for (const std::string& p : {"/stores/" + unknown, "/stores/" + unknown + "/secrets",
                               "/stores/" + unknown + "/secrets/" + std::string(32, 'd')}) {
    cache->purge_all();
    fake->reset_counts();
    const Answer first = read(p, kT0);
    EXPECT_EQ(first.status, 404u) << p;
    EXPECT_EQ(json_of(first)["errors"][0]["message"], "store_not_found") << p;
    EXPECT_EQ(read(p, kT0 + cfg.ttl.negative_ms * kMs - 1).outcome, Outcome::hit) << p;
    EXPECT_EQ(fake->calls(), 1u) << p;
    EXPECT_EQ(read(p, kT0 + cfg.ttl.negative_ms * kMs).outcome, Outcome::miss) << p;
    EXPECT_EQ(fake->calls(), 2u) << p;
  }
}

TEST_F(ReadThroughCacheTest, DropsANegativeEntryOnAnyWriteToThatStore) {
  const std::string unknown(32, 'c');
  ASSERT_EQ(read("/stores/" + unknown + "/secrets", kT0).status, 404u);
  // A write to that store (it fails: the store does not exist) still drops the entry.
  write(Method::post, "/stores/" + unknown + "/secrets",
        R"([{"name":"N","value":"v","scopes":["dex"]}])", kT0);
  EXPECT_EQ(read("/stores/" + unknown + "/secrets", kT0).outcome, Outcome::miss);
}

TEST_F(ReadThroughCacheTest, KeepsAKnownMissingStoreA404EvenForAnInvalidQuery) {
  const std::string unknown(32, 'c');
  ASSERT_EQ(read("/stores/" + unknown + "/secrets", kT0).status, 404u);
  const Answer a = read("/stores/" + unknown + "/secrets?page=0", kT0);
  EXPECT_EQ(a.status, 404u);
  EXPECT_EQ(json_of(a)["errors"][0]["message"], "store_not_found");
}

TEST_F(ReadThroughCacheTest, DoesNotCacheNegativeAnswersWithANegativeTtlOfZero) {
  cfg.ttl.negative_ms = 0;
  SetUp();
  const std::string unknown(32, 'c');
  EXPECT_EQ(read("/stores/" + unknown, kT0).status, 404u);
  EXPECT_EQ(read("/stores/" + unknown, kT0).outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(), 2u);
}

}  // namespace
}  // namespace sproxy::cache::testing
