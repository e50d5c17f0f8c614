// Tests for the validation of names, scopes, comments and values, and the parsers of
// write request bodies (upstream/model.hpp, upstream/model_validation.cpp).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "tests/support/model_expect.hpp"
#include "upstream/model.hpp"

namespace sproxy::upstream {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

using test::error_of;
using test::expect_error;
using test::expect_token;

// ---------------------------------------------------------------------------------------
// Validation

TEST(Validation, NamesFollowTheContractPattern) {
  EXPECT_TRUE(validate_name("STRIPE_KEY-2").ok());
  EXPECT_TRUE(validate_name(std::string(255, 'a')).ok());
  expect_token(validate_name(""), "secret_name_empty");
  expect_token(validate_name(std::string(256, 'a')), "secret_name_invalid");
  for (const char* bad : {"has space", "dot.ted", "slash/", "caf\xc3\xa9", "a\nb", "$"}) {
    expect_token(validate_name(bad), "secret_name_invalid");
  }
}

TEST(Validation, ScopesAreSortedAndDeduplicated) {
  auto r = validate_scopes(json{"workers", "access", "workers", "dex"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, (std::vector<std::string>{"access", "dex", "workers"}));
  for (std::string_view s : kScopeNames) {
    EXPECT_TRUE(is_known_scope(s));
    EXPECT_TRUE(validate_scopes(json::array({std::string(s)})).ok()) << s;
  }
}

TEST(Validation, ScopesMustBeANonEmptyArrayOfKnownNames) {
  for (const json& bad : {json::array(), json("workers"), json(nullptr), json::array({"Workers"}),
                          json::array({"workers", "r2"}), json::array({1}), json::object()}) {
    expect_token(validate_scopes(bad), "secret_scope_invalid");
  }
  EXPECT_FALSE(is_known_scope("WORKERS"));
  EXPECT_FALSE(is_known_scope(""));
}

TEST(Validation, CommentIsAtMost4096BytesAndNullMeansUnset) {
  auto unset = validate_comment(nullptr);
  ASSERT_TRUE(unset.ok());
  EXPECT_FALSE(unset->has_value());
  auto max = validate_comment(std::string(kMaxCommentBytes, 'c'));
  ASSERT_TRUE(max.ok());
  EXPECT_EQ(max->value().size(), kMaxCommentBytes);
  auto empty = validate_comment("");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, std::optional<std::string>(""));
  expect_token(validate_comment(std::string(kMaxCommentBytes + 1, 'c')), "secret_comment_too_long");
  expect_token(validate_comment(7), "invalid_json_body");
  expect_token(validate_comment(json::array()), "invalid_json_body");
}

TEST(Validation, ValueIsOneToMaxBytesOfUtf8) {
  EXPECT_TRUE(validate_value("x", 10).ok());
  EXPECT_TRUE(validate_value(std::string(10, 'x'), 10).ok());
  EXPECT_TRUE(validate_value(std::string(kDefaultMaxValueBytes, 'x'), kDefaultMaxValueBytes).ok());
  EXPECT_TRUE(validate_value("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91", 64).ok());
  expect_token(validate_value("", 10), "secret_value_empty");
  expect_token(validate_value(std::string(11, 'x'), 10), "secret_value_too_long");
  expect_token(validate_value(std::string(kDefaultMaxValueBytes + 1, 'x'), kDefaultMaxValueBytes),
               "secret_value_too_long");
}

TEST(Validation, ValueRejectsEveryKindOfInvalidUtf8) {
  const char* bad[] = {
      "\x80",              // lone continuation byte
      "\xc3",              // truncated two-byte sequence
      "\xc0\x80",          // overlong NUL
      "\xe0\x80\xaf",      // overlong three-byte
      "\xed\xa0\x80",      // UTF-16 surrogate
      "\xf0\x8f\xbf\xbf",  // overlong four-byte
      "\xf4\x90\x80\x80",  // above U+10FFFF
      "\xf8\x88\x80\x80\x80",
      "\xff",
      "ok\xe2\x82",  // truncated at the end
  };
  for (const char* v : bad) expect_token(validate_value(v, 64), "secret_value_invalid");
}

// ---------------------------------------------------------------------------------------
// Body parsers

TEST(StoreCreateBody, ParsesTheName) {
  auto r = parse_store_create(R"({"name":"main","extra":true})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->name, "main");
}

TEST(StoreCreateBody, RejectsWrongShapesAsInvalidJsonBody) {
  for (const char* body : {"", "not json", R"([{"name":"main"}])", R"("main")", "null",
                           R"({"name":5})", R"({"name":null})", R"({"name":"a")"}) {
    expect_token(parse_store_create(body), "invalid_json_body");
  }
}

TEST(StoreCreateBody, AppliesTheNameRules) {
  expect_token(parse_store_create("{}"), "secret_name_empty");
  expect_token(parse_store_create(R"({"name":""})"), "secret_name_empty");
  expect_token(parse_store_create(R"({"name":"bad name"})"), "secret_name_invalid");
}

constexpr std::size_t kMax = kDefaultMaxValueBytes;

TEST(SecretCreateBody, ParsesEveryItemInOrder) {
  auto r = parse_secret_create(
      R"([{"name":"A","value":"v1","scopes":["workers","dex","workers"],"comment":"c"},
          {"name":"B","value":"v2","scopes":["access"],"comment":null,"ignored":1},
          {"name":"C","value":"v3","scopes":["ai_gateway"]}])",
      kMax);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].name, "A");
  EXPECT_EQ((*r)[0].value, "v1");
  EXPECT_EQ((*r)[0].scopes, (std::vector<std::string>{"dex", "workers"}));
  EXPECT_EQ((*r)[0].comment, std::optional<std::string>("c"));
  EXPECT_EQ((*r)[1].name, "B");
  EXPECT_FALSE((*r)[1].comment.has_value());
  EXPECT_EQ((*r)[2].name, "C");
  EXPECT_FALSE((*r)[2].comment.has_value());
}

TEST(SecretCreateBody, RejectsWrongShapesAsInvalidJsonBody) {
  const char* bodies[] = {
      "",
      "{",
      "[]",
      R"({"name":"A","value":"v","scopes":["workers"]})",
      R"([{"name":"A","value":"v","scopes":["workers"]}, 5])",
      R"([{"name":7,"value":"v","scopes":["workers"]}])",
      R"([{"name":"A","value":7,"scopes":["workers"]}])",
      R"([{"name":"A","value":null,"scopes":["workers"]}])",
      R"([{"name":"A","value":"v","scopes":["workers"],"comment":7}])",
      R"([{"name":"A","value":"v","scopes":["workers"],"comment":["x"]}])",
  };
  for (const char* body : bodies)
    expect_token(parse_secret_create(body, kMax), "invalid_json_body");
}

TEST(SecretCreateBody, ReportsEachRuleViolationWithItsToken) {
  const std::pair<const char*, const char*> cases[] = {
      {R"([{"value":"v","scopes":["workers"]}])", "secret_name_empty"},
      {R"([{"name":"","value":"v","scopes":["workers"]}])", "secret_name_empty"},
      {R"([{"name":"a b","value":"v","scopes":["workers"]}])", "secret_name_invalid"},
      {R"([{"name":"A","scopes":["workers"]}])", "secret_value_empty"},
      {R"([{"name":"A","value":"","scopes":["workers"]}])", "secret_value_empty"},
      {R"([{"name":"A","value":"v"}])", "secret_scope_invalid"},
      {R"([{"name":"A","value":"v","scopes":[]}])", "secret_scopes_empty"},
      {R"([{"name":"A","value":"v","scopes":"workers"}])", "secret_scope_invalid"},
      {R"([{"name":"A","value":"v","scopes":["r2"]}])", "secret_scope_invalid"},
      {R"([{"name":"A","value":"v","scopes":["workers"]},{"name":"B","value":"v","scopes":[]}])",
       "secret_scopes_empty"},
  };
  for (const auto& [body, token] : cases) expect_token(parse_secret_create(body, kMax), token);

  const std::string long_comment = R"([{"name":"A","value":"v","scopes":["workers"],"comment":")" +
                                   std::string(kMaxCommentBytes + 1, 'c') + R"("}])";
  expect_token(parse_secret_create(long_comment, kMax), "secret_comment_too_long");
}

TEST(SecretCreateBody, EnforcesTheConfiguredValueLimit) {
  const char* body = R"([{"name":"A","value":"12345","scopes":["workers"]}])";
  EXPECT_TRUE(parse_secret_create(body, 5).ok());
  const auto r = parse_secret_create(body, 4);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), errors::secret_value_too_long());
}

TEST(SecretCreateBody, RejectsANameRepeatedInsideTheBatchAsTaken) {
  const auto r = parse_secret_create(
      R"([{"name":"A","value":"1","scopes":["workers"]},
          {"name":"B","value":"2","scopes":["workers"]},
          {"name":"A","value":"3","scopes":["dex"]}])",
      kMax);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), errors::name_taken("A"));
  expect_error(r.error(), 400, 1003, "secret_name_already_exists: A");
}

TEST(SecretCreateBody, NeverEchoesTheValueInAnError) {
  const std::string value = "sk_live_TOPSECRET";
  const std::string bodies[] = {
      R"([{"name":"A","value":")" + value + R"(","scopes":["nope"]}])",
      R"([{"name":"bad name","value":")" + value + R"(","scopes":["workers"]}])",
      R"([{"name":"A","value":")" + value + R"(","scopes":["workers"],"comment":1}])",
      R"([{"name":"A","value":")" + value + R"(","scopes":["workers"]},
          {"name":"A","value":")" +
          value + R"(","scopes":["workers"]}])",
  };
  for (const auto& body : bodies) {
    const auto r = parse_secret_create(body, kMax);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(envelope_error(r.error()), Not(HasSubstr("TOPSECRET")));
  }
  const auto too_long =
      parse_secret_create(R"([{"name":"A","value":")" + value + R"(","scopes":["workers"]}])", 4);
  ASSERT_FALSE(too_long.ok());
  EXPECT_THAT(envelope_error(too_long.error()), Not(HasSubstr("TOPSECRET")));
}

TEST(SecretPatchBody, AnEmptyObjectChangesNothing) {
  auto r = parse_secret_patch("{}", kMax);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->empty());
  auto ignored = parse_secret_patch(R"({"unknown":1})", kMax);
  ASSERT_TRUE(ignored.ok());
  EXPECT_TRUE(ignored->empty());
}

TEST(SecretPatchBody, ParsesValueScopesAndComment) {
  auto r =
      parse_secret_patch(R"({"value":"new","scopes":["workers","access"],"comment":"c"})", kMax);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->empty());
  EXPECT_EQ(r->value, std::optional<std::string>("new"));
  EXPECT_EQ(r->scopes, (std::vector<std::string>{"access", "workers"}));
  ASSERT_TRUE(r->comment.has_value());
  EXPECT_EQ(*r->comment, std::optional<std::string>("c"));
}

TEST(SecretPatchBody, NullCommentClearsIt) {
  auto r = parse_secret_patch(R"({"comment":null})", kMax);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->empty());
  ASSERT_TRUE(r->comment.has_value());
  EXPECT_FALSE(r->comment->has_value());
  EXPECT_FALSE(r->value.has_value());
  EXPECT_FALSE(r->scopes.has_value());
}

TEST(SecretPatchBody, RejectsANameAsImmutable) {
  auto r = parse_secret_patch(R"({"name":"OTHER","value":"v"})", kMax);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), errors::secret_name_immutable());
  expect_token(parse_secret_patch(R"({"name":null})", kMax), "secret_name_immutable");
}

TEST(SecretPatchBody, ValidatesWhatIsPresent) {
  expect_token(parse_secret_patch("[]", kMax), "invalid_json_body");
  expect_token(parse_secret_patch("nope", kMax), "invalid_json_body");
  expect_token(parse_secret_patch(R"({"value":5})", kMax), "invalid_json_body");
  expect_token(parse_secret_patch(R"({"value":null})", kMax), "invalid_json_body");
  expect_token(parse_secret_patch(R"({"value":""})", kMax), "secret_value_empty");
  expect_token(parse_secret_patch(R"({"value":"12345"})", 4), "secret_value_too_long");
  expect_token(parse_secret_patch(R"({"scopes":[]})", kMax), "secret_scope_invalid");
  expect_token(parse_secret_patch(R"({"scopes":null})", kMax), "secret_scope_invalid");
  expect_token(parse_secret_patch(R"({"scopes":["bogus"]})", kMax), "secret_scope_invalid");
  expect_token(parse_secret_patch(R"({"comment":1})", kMax), "invalid_json_body");
  expect_token(parse_secret_patch(
                   R"({"comment":")" + std::string(kMaxCommentBytes + 1, 'c') + R"("})", kMax),
               "secret_comment_too_long");
}

TEST(SecretDuplicateBody, ParsesNameScopesAndOptionalComment) {
  auto r = parse_secret_duplicate(R"({"name":"COPY","scopes":["dex","access"]})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->name, "COPY");
  EXPECT_EQ(r->scopes, (std::vector<std::string>{"access", "dex"}));
  EXPECT_FALSE(r->comment.has_value());
  auto c = parse_secret_duplicate(R"({"name":"COPY","scopes":["dex"],"comment":"why"})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->comment, std::optional<std::string>("why"));
}

TEST(SecretDuplicateBody, RequiresANameAndScopes) {
  expect_token(parse_secret_duplicate(R"([{"name":"COPY","scopes":["dex"]}])"),
               "invalid_json_body");
  expect_token(parse_secret_duplicate(""), "invalid_json_body");
  expect_token(parse_secret_duplicate(R"({"scopes":["dex"]})"), "secret_name_empty");
  expect_token(parse_secret_duplicate(R"({"name":"","scopes":["dex"]})"), "secret_name_empty");
  expect_token(parse_secret_duplicate(R"({"name":"a.b","scopes":["dex"]})"), "secret_name_invalid");
  expect_token(parse_secret_duplicate(R"({"name":1,"scopes":["dex"]})"), "invalid_json_body");
  expect_token(parse_secret_duplicate(R"({"name":"COPY"})"), "secret_scope_invalid");
  expect_token(parse_secret_duplicate(R"({"name":"COPY","scopes":["x"]})"), "secret_scope_invalid");
  expect_token(parse_secret_duplicate(R"({"name":"COPY","scopes":[]})"), "secret_scopes_empty");
  expect_token(parse_secret_duplicate(R"({"name":"COPY","scopes":["dex"],"comment":false})"),
               "invalid_json_body");
}

TEST(BulkDeleteBody, ParsesIdsAndDropsDuplicatesKeepingOrder) {
  auto r = parse_bulk_delete(R"({"ids":["b","a","b","c","a"]})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->ids, (std::vector<std::string>{"b", "a", "c"}));
}

TEST(BulkDeleteBody, RejectsMissingOrMalformedIdsAsInvalidJsonBody) {
  for (const char* body : {"", "{}", "[]", R"(["a"])", R"({"ids":[]})", R"({"ids":"a"})",
                           R"({"ids":[1]})", R"({"ids":["a",null]})", R"({"id":["a"]})"}) {
    expect_token(parse_bulk_delete(body), "invalid_json_body");
  }
}

}  // namespace
}  // namespace sproxy::upstream
