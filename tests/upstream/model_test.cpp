#include "upstream/model.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "tests/support/model_expect.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

using test::error_of;
using test::expect_error;
using test::expect_token;

// ---------------------------------------------------------------------------------------
// Error catalogue

TEST(ErrorCatalogue, GivesTheContractStatusCodeAndMessageForEveryEntry) {
  expect_error(errors::invalid_json_body(), 400, 1001, "invalid_json_body");
  expect_error(errors::validation("secret_name_empty"), 400, 1001, "secret_name_empty");
  expect_error(errors::name_taken("STRIPE_KEY"), 400, 1003,
               "secret_name_already_exists: STRIPE_KEY");
  expect_error(errors::store_not_found(), 404, 1001, "store_not_found");
  expect_error(errors::secret_not_found(), 404, 1001, "secret_not_found");
  expect_error(errors::store_not_empty(), 409, 1003, "store_not_empty");
  expect_error(errors::maximum_stores_exceeded(), 400, 1003, "maximum_stores_exceeded");
  expect_error(errors::maximum_secrets_exceeded(100), 400, 1003,
               "maximum_secrets_exceeded: max 100");
  expect_error(errors::secret_value_too_long(), 400, 1001, "secret_value_too_long");
  expect_error(errors::secret_name_immutable(), 400, 1001, "secret_name_immutable");
  expect_error(errors::no_route(), 404, 7000, "No route for that URI");
  expect_error(errors::method_not_allowed(), 405, 7001, "Method not allowed for this route");
  expect_error(errors::missing_credentials(), 400, 9106,
               "Missing X-Auth-Key, X-Auth-Email or Authorization headers");
  expect_error(errors::authentication_error(), 403, 10000, "Authentication error");
  expect_error(errors::payload_too_large(), 413, 1001, "request_body_too_large");
  expect_error(errors::headers_too_large(), 431, 1001, "request_headers_too_large");
  expect_error(errors::service_unavailable("too_many_waiters"), 503, 1002,
               "service_unavailable: too_many_waiters");
  expect_error(errors::upstream_failure("connect_timeout"), 502, 1002,
               "upstream_unavailable: connect_timeout");
  expect_error(errors::gateway_timeout(), 504, 1002, "upstream_timeout");
  expect_error(errors::internal_error(), 500, 1002, "internal_error");
}

TEST(ErrorCatalogue, OmitsTheDetailSeparatorWhenTheDetailIsEmpty) {
  expect_error(errors::service_unavailable(""), 503, 1002, "service_unavailable");
  expect_error(errors::upstream_failure(""), 502, 1002, "upstream_unavailable");
}

TEST(ErrorCatalogue, OnlyTheRateLimitErrorCarriesRetryAfter) {
  const ApiError e = errors::rate_limited(300);
  expect_error(e, 429, 971, "Please wait and consider throttling your request speed");
  EXPECT_EQ(e.retry_after_seconds, 300);
  EXPECT_FALSE(errors::authentication_error().retry_after_seconds.has_value());
  EXPECT_FALSE(errors::service_unavailable("x").retry_after_seconds.has_value());
}

TEST(ErrorCatalogue, InvalidAccountRouteNamesThePathAndAddsNoRoute) {
  const ApiError e = errors::invalid_account_route("/client/v4/accounts/xyz/secrets_store/stores");
  EXPECT_EQ(e.status, 400u);
  ASSERT_EQ(e.errors.size(), 2u);
  EXPECT_EQ(e.errors[0],
            (ApiMessage{7003,
                        "Could not route to /client/v4/accounts/xyz/secrets_store/stores, perhaps "
                        "your object identifier is invalid?",
                        {}}));
  EXPECT_EQ(e.errors[1], (ApiMessage{7000, "No route for that URI", {}}));
}

TEST(ErrorCatalogue, MalformedAuthorizationChainsTheHeaderFormatError) {
  const ApiError e = errors::malformed_authorization();
  EXPECT_EQ(e.status, 400u);
  ASSERT_EQ(e.errors.size(), 1u);
  EXPECT_EQ(e.errors[0].code, 6003);
  EXPECT_EQ(e.errors[0].message, "Invalid request headers");
  ASSERT_EQ(e.errors[0].error_chain.size(), 1u);
  EXPECT_EQ(e.errors[0].error_chain[0],
            (ApiMessage{6111, "Invalid format for Authorization header", {}}));
}

// ---------------------------------------------------------------------------------------
// Envelope

TEST(Envelope, SuccessWritesTheContractKeysInOrder) {
  EXPECT_EQ(envelope_success(json{{"a", 1}}),
            R"({"success":true,"errors":[],"messages":[],"result":{"a":1}})");
  EXPECT_EQ(envelope_success(nullptr),
            R"({"success":true,"errors":[],"messages":[],"result":null})");
}

TEST(Envelope, SuccessAppendsResultInfoOnlyWhenGiven) {
  const ResultInfo info{2, 10, 3, 13, 2};
  EXPECT_EQ(
      envelope_success(json::array(), info),
      R"({"success":true,"errors":[],"messages":[],"result":[],)"
      R"("result_info":{"page":2,"per_page":10,"count":3,"total_count":13,"total_pages":2}})");
}

TEST(Envelope, ErrorHasNullResultAndEveryError) {
  EXPECT_EQ(envelope_error(errors::store_not_found()),
            R"({"success":false,"errors":[{"code":1001,"message":"store_not_found"}],)"
            R"("messages":[],"result":null})");
  const json j = json::parse(envelope_error(errors::invalid_account_route("/p")));
  EXPECT_EQ(j["success"], false);
  EXPECT_EQ(j["errors"].size(), 2u);
  EXPECT_EQ(j["errors"][0]["code"], 7003);
  EXPECT_EQ(j["errors"][1]["code"], 7000);
  EXPECT_TRUE(j["result"].is_null());
  EXPECT_EQ(j["messages"], json::array());
}

TEST(Envelope, ErrorWritesTheErrorChainOnlyInsideTheErrorThatHasOne) {
  EXPECT_EQ(envelope_error(errors::malformed_authorization()),
            R"({"success":false,"errors":[{"code":6003,"error_chain":[{"code":6111,)"
            R"("message":"Invalid format for Authorization header"}],)"
            R"("message":"Invalid request headers"}],"messages":[],"result":null})");
  EXPECT_THAT(envelope_error(errors::no_route()), Not(HasSubstr("error_chain")));
}

TEST(Envelope, ErrorReplacesBytesThatAreNotUtf8InsteadOfThrowing) {
  std::string body;
  EXPECT_NO_THROW(body =
                      envelope_error(errors::invalid_account_route("/client/v4/accounts/\xff/x")));
  const json j = json::parse(body, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_THAT(j["errors"][0]["message"].get<std::string>(), HasSubstr("/client/v4/accounts/"));
}

TEST(Envelope, ResultInfoSerializesAllFiveFields) {
  EXPECT_EQ(
      to_json(ResultInfo{1, 20, 0, 0, 0}),
      (json{{"page", 1}, {"per_page", 20}, {"count", 0}, {"total_count", 0}, {"total_pages", 0}}));
}

// ---------------------------------------------------------------------------------------
// Identifiers

TEST(Ids, AcceptOnlyThirtyTwoLowercaseHexCharacters) {
  EXPECT_TRUE(is_valid_id("0123456789abcdef0123456789abcdef"));
  EXPECT_FALSE(is_valid_id("0123456789ABCDEF0123456789abcdef"));
  EXPECT_FALSE(is_valid_id("0123456789abcdef0123456789abcde"));
  EXPECT_FALSE(is_valid_id("0123456789abcdef0123456789abcdef0"));
  EXPECT_FALSE(is_valid_id("01234567-89ab-4def-8123-456789abcdef"));
  EXPECT_FALSE(is_valid_id("0123456789abcdeg0123456789abcdef"));
  EXPECT_FALSE(is_valid_id(""));
}

TEST(Ids, NewIdsAreVersionFourUuidsWithoutDashes) {
  for (int i = 0; i < 200; ++i) {
    const std::string id = new_id();
    ASSERT_TRUE(is_valid_id(id)) << id;
    EXPECT_EQ(id[12], '4') << id;
    EXPECT_THAT(std::string("89ab"), HasSubstr(std::string(1, id[16]))) << id;
  }
}

TEST(Ids, NewIdsAreUnique) {
  std::set<std::string> seen;
  for (int i = 0; i < 10'000; ++i) seen.insert(new_id());
  EXPECT_EQ(seen.size(), 10'000u);
}

// ---------------------------------------------------------------------------------------
// Timestamps

TEST(Timestamps, FormatAsRfc3339UtcWithMicroseconds) {
  EXPECT_EQ(format_timestamp(0), "1970-01-01T00:00:00.000000Z");
  EXPECT_EQ(format_timestamp(1772366400123456), "2026-03-01T12:00:00.123456Z");
  EXPECT_EQ(format_timestamp(1709251199999999), "2024-02-29T23:59:59.999999Z");
  EXPECT_EQ(format_timestamp(946684800000000), "2000-01-01T00:00:00.000000Z");
  EXPECT_EQ(format_timestamp(253402300799999999), "9999-12-31T23:59:59.999999Z");
}

TEST(Timestamps, FormatTimesBeforeTheEpoch) {
  EXPECT_EQ(format_timestamp(-1), "1969-12-31T23:59:59.999999Z");
  EXPECT_EQ(format_timestamp(-2203891200000000), "1900-03-01T00:00:00.000000Z");
  EXPECT_EQ(format_timestamp(-62135596800000000), "0001-01-01T00:00:00.000000Z");
}

TEST(Timestamps, RoundTripThroughFormatAndParse) {
  const Micros samples[] = {0,
                            1,
                            999'999,
                            -1,
                            1772366400123456,
                            1709251199999999,
                            946684800000000,
                            -2203891200000000,
                            -62135596800000000,
                            253402300799999999};
  for (Micros t : samples) EXPECT_EQ(parse_timestamp(format_timestamp(t)), t) << t;
  // A sweep with a stride that is not a whole number of days or seconds.
  for (Micros t = -62135596800000000; t < 253402300799999999; t += 98'765'432'109'877) {
    ASSERT_EQ(parse_timestamp(format_timestamp(t)), t) << t;
  }
}

TEST(Timestamps, ParseAcceptsZeroToNineFractionDigits) {
  EXPECT_EQ(parse_timestamp("2026-03-01T12:00:00Z"), 1772366400000000);
  EXPECT_EQ(parse_timestamp("2026-03-01T12:00:00.1Z"), 1772366400100000);
  EXPECT_EQ(parse_timestamp("2026-03-01T12:00:00.123Z"), 1772366400123000);
  EXPECT_EQ(parse_timestamp("2026-03-01T12:00:00.123456Z"), 1772366400123456);
  // Digits past microseconds are truncated, not rounded.
  EXPECT_EQ(parse_timestamp("2026-03-01T12:00:00.123456999Z"), 1772366400123456);
}

TEST(Timestamps, ParseAcceptsLowercaseSeparatorsAsRfc3339Allows) {
  EXPECT_EQ(parse_timestamp("2026-03-01t12:00:00.5z"), 1772366400500000);
}

TEST(Timestamps, ParseRejectsMalformedText) {
  const char* bad[] = {
      "",
      "2026-03-01",
      "2026-03-01T12:00:00",              // no zone
      "2026-03-01T12:00:00+00:00",        // only 'Z' is accepted
      "2026-03-01T12:00:00.Z",            // a dot needs digits
      "2026-03-01T12:00:00.1234567890Z",  // ten fraction digits
      "2026-03-01T12:00:00.123456Zx",     // trailing bytes
      "2026-03-01 12:00:00Z",
      "2026/03/01T12:00:00Z",
      "2026-13-01T12:00:00Z",
      "2026-00-01T12:00:00Z",
      "2026-02-29T12:00:00Z",  // not a leap year
      "1900-02-29T12:00:00Z",  // not a leap year either
      "2026-04-31T12:00:00Z",
      "2026-03-00T12:00:00Z",
      "2026-03-01T24:00:00Z",
      "2026-03-01T12:60:00Z",
      "2026-03-01T12:00:60Z",
      "2026-3-01T12:00:00Z",
      "+026-03-01T12:00:00Z",
      "2026-03-01T12:00:0aZ",
  };
  for (const char* s : bad) EXPECT_FALSE(parse_timestamp(s).has_value()) << s;
  EXPECT_TRUE(parse_timestamp("2024-02-29T12:00:00Z").has_value());
  EXPECT_TRUE(parse_timestamp("2000-02-29T12:00:00Z").has_value());
}

// ---------------------------------------------------------------------------------------
// Resources

Secret sample_secret() {
  Secret s;
  s.id = "0123456789abcdef0123456789abcdef";
  s.store_id = "fedcba9876543210fedcba9876543210";
  s.name = "STRIPE_KEY";
  s.comment = "billing";
  s.scopes = {"ai_gateway", "workers"};
  s.status = SecretStatus::active;
  s.created = 1772366400123456;
  s.modified = 1772366401000000;
  return s;
}

Store sample_store() {
  return Store{"fedcba9876543210fedcba9876543210", "00000000000000000000000000000001", "main",
               1772366400000000, 1772366400000001};
}

TEST(Resources, SecretSerializesEveryContractField) {
  EXPECT_EQ(to_json(sample_secret()), json::parse(R"({"id":"0123456789abcdef0123456789abcdef",
                            "store_id":"fedcba9876543210fedcba9876543210",
                            "name":"STRIPE_KEY","comment":"billing",
                            "scopes":["ai_gateway","workers"],"status":"active",
                            "created":"2026-03-01T12:00:00.123456Z",
                            "modified":"2026-03-01T12:00:01.000000Z"})"));
}

TEST(Resources, SecretWithoutCommentSerializesNullAndPendingStatus) {
  Secret s = sample_secret();
  s.comment.reset();
  s.status = SecretStatus::pending;
  const json j = to_json(s);
  ASSERT_TRUE(j.contains("comment"));
  EXPECT_TRUE(j["comment"].is_null());
  EXPECT_EQ(j["status"], "pending");
  EXPECT_EQ(to_string(SecretStatus::pending), "pending");
  EXPECT_EQ(to_string(SecretStatus::active), "active");
}

TEST(Resources, StoreAndQuotaSerializeTheContractShape) {
  EXPECT_EQ(to_json(sample_store()), json::parse(R"({"id":"fedcba9876543210fedcba9876543210",
                            "account_id":"00000000000000000000000000000001","name":"main",
                            "created":"2026-03-01T12:00:00.000000Z",
                            "modified":"2026-03-01T12:00:00.000001Z"})"));
  EXPECT_EQ(to_json(Quota{100, 7}), json::parse(R"({"secrets":{"quota":100,"usage":7}})"));
}

TEST(Resources, RoundTripThroughJson) {
  const Secret s = sample_secret();
  auto parsed = secret_from_json(to_json(s));
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, s);

  Secret no_comment = s;
  no_comment.comment.reset();
  auto parsed2 = secret_from_json(to_json(no_comment));
  ASSERT_TRUE(parsed2.ok());
  EXPECT_EQ(*parsed2, no_comment);

  auto store = store_from_json(to_json(sample_store()));
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(*store, sample_store());

  auto quota = quota_from_json(to_json(Quota{100, 7}));
  ASSERT_TRUE(quota.ok());
  EXPECT_EQ(*quota, (Quota{100, 7}));
}

TEST(Resources, SecretFromJsonSortsScopesAndTreatsAMissingCommentAsNull) {
  json j = to_json(sample_secret());
  j.erase("comment");
  j["scopes"] = {"workers", "dex", "workers"};
  j["unknown_field"] = 1;
  auto s = secret_from_json(j);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->comment.has_value());
  EXPECT_EQ(s->scopes, (std::vector<std::string>{"dex", "workers"}));
}

TEST(Resources, MalformedUpstreamResourcesAreRejectedAsBadUpstreamResource) {
  const auto expect_bad = [](const ApiError& e) {
    expect_error(e, 502, 1002, "upstream_unavailable: bad_upstream_resource");
  };
  const json good = to_json(sample_secret());
  std::vector<json> bad_secrets;
  bad_secrets.push_back(json::array());
  bad_secrets.push_back(nullptr);
  for (const char* key : {"id", "store_id", "name", "status", "created", "modified", "scopes"}) {
    json j = good;
    j.erase(key);
    bad_secrets.push_back(j);
  }
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, json>>{{"id", 5},
                                                 {"name", nullptr},
                                                 {"comment", 3},
                                                 {"status", "deleted"},
                                                 {"created", "yesterday"},
                                                 {"modified", 12345},
                                                 {"scopes", "workers"},
                                                 {"scopes", json::array({1})}}) {
    json j = good;
    j[key] = value;
    bad_secrets.push_back(j);
  }
  for (const auto& j : bad_secrets) {
    auto r = secret_from_json(j);
    ASSERT_FALSE(r.ok()) << j.dump();
    expect_bad(r.error());
  }

  json store = to_json(sample_store());
  store["created"] = "2026-02-30T00:00:00Z";
  expect_bad(error_of(store_from_json(store)));
  store = to_json(sample_store());
  store.erase("account_id");
  expect_bad(error_of(store_from_json(store)));
  expect_bad(error_of(store_from_json(json::array())));

  expect_bad(error_of(quota_from_json(json::parse(R"({"secrets":{"quota":1}})"))));
  expect_bad(error_of(quota_from_json(json::parse(R"({"secrets":{"quota":1.5,"usage":1}})"))));
  expect_bad(error_of(quota_from_json(json::parse(R"({"secrets":[]})"))));
  expect_bad(error_of(quota_from_json(json::parse(R"({"quota":1,"usage":1})"))));
}

// ---------------------------------------------------------------------------------------
// Transport error category

TEST(UpstreamErrc, HasItsOwnNamedCategoryWithAMessagePerEnumerator) {
  EXPECT_STREQ(upstream_category().name(), "sproxy.upstream");
  std::set<std::string> messages;
  for (int e = 0; e <= static_cast<int>(UpstreamErrc::shutting_down); ++e) {
    const boost::system::error_code ec = make_error_code(static_cast<UpstreamErrc>(e));
    EXPECT_EQ(&ec.category(), &upstream_category());
    EXPECT_EQ(ec.value(), e);
    messages.insert(ec.message());
  }
  EXPECT_EQ(messages.size(), static_cast<std::size_t>(UpstreamErrc::shutting_down) + 1);
  EXPECT_EQ(make_error_code(static_cast<UpstreamErrc>(99)).message(), "unknown upstream error");
}

TEST(UpstreamErrc, ConvertsImplicitlyToAnErrorCodeThatIsFalseOnlyForOk) {
  const boost::system::error_code timeout = UpstreamErrc::timeout;
  EXPECT_TRUE(timeout.failed());
  EXPECT_EQ(timeout, UpstreamErrc::timeout);
  EXPECT_NE(timeout, UpstreamErrc::unreachable);
  const boost::system::error_code ok = UpstreamErrc::ok;
  EXPECT_FALSE(ok.failed());
  const CallResult r = UpstreamErrc::circuit_open;
  ASSERT_TRUE(r.has_error());
  EXPECT_EQ(r.error(), UpstreamErrc::circuit_open);
}

TEST(SecretJson, AppendsTheBytesOfTheJsonValueDumped) {
  Secret plain;
  plain.id = "3f1c2b7a9d8e4f60a1b2c3d4e5f60718";
  plain.store_id = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
  plain.name = "API_KEY";
  plain.scopes = {"ai_gateway", "workers"};
  plain.status = SecretStatus::active;
  plain.created = 1'767'225'600'123'456;
  plain.modified = 1'767'225'601'000'000;
  std::vector<Secret> cases{plain};
  Secret odd = plain;
  odd.comment =
      "quote \" backslash \\ tab \t newline \n bell \x07 del \x7f caf\xc3\xa9 \xe2\x82\xac";
  odd.scopes = {};
  odd.status = SecretStatus::pending;
  cases.push_back(odd);
  Secret broken = plain;
  broken.comment = std::string("invalid \xff\xfe utf-8 \xc3", 18);
  broken.name = "";
  broken.store_id = "";
  cases.push_back(broken);
  Secret empty_comment = plain;
  empty_comment.comment = "";
  cases.push_back(empty_comment);
  for (const Secret& s : cases) {
    std::string out = "kept:";
    append_json(out, s);
    EXPECT_EQ(out, "kept:" + to_json(s).dump(-1, ' ', false, json::error_handler_t::replace));
  }
}

}  // namespace
}  // namespace sproxy::upstream
