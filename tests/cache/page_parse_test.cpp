// A page of secrets from the upstream: parse_secrets_page takes a success envelope whose
// result is an array of valid secrets, and refuses any other body (malformed JSON, another
// envelope, one invalid secret), whatever its shape.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "cache/snapshot.hpp"
#include "upstream/model.hpp"

namespace sproxy::cache::testing {
namespace {

using upstream::Secret;
using Page = std::optional<ListPage<Secret>>;

// One secret as raw JSON members, in order (so that a test can repeat or drop one).
using Members = std::vector<std::pair<std::string, std::string>>;

Members secret_members(int i) {
  const std::string n = std::to_string(10 + i);
  return {{"comment", i % 2 == 0 ? R"("rotated \"quarterly\" \u00e9")" : "null"},
          {"created", R"("2026-03-01T12:00:00.123456Z")"},
          {"id", "\"0123456789abcdef0123456789abcd" + n + "\""},
          {"modified", R"("2026-03-02T08:30:00Z")"},
          {"name", "\"api_key_" + n + "\""},
          {"scopes", i % 3 == 0 ? R"(["workers","access","workers"])" : R"(["workers"])"},
          {"status", i % 4 == 0 ? R"("pending")" : R"("active")"},
          {"store_id", R"("5c0a4d3e2f1b0a9c8d7e6f5a4b3c2d1e")"}};
}

std::string object(const Members& members) {
  std::string out = "{";
  for (const auto& [k, v] : members) {
    if (out.size() > 1) out += ',';
    out += '"' + k + "\":" + v;
  }
  return out + '}';
}

std::string result_of(const std::vector<Members>& secrets) {
  std::string out = "[";
  for (const auto& s : secrets) {
    if (out.size() > 1) out += ',';
    out += object(s);
  }
  return out + ']';
}

std::vector<Members> three_secrets() {
  return {secret_members(0), secret_members(1), secret_members(2)};
}

// The envelope around `result`, with the members given replacing or adding to it.
std::string envelope(const std::string& result, const Members& extra = {},
                     const std::string& info =
                         R"({"page":1,"per_page":100,"count":3,"total_count":3,"total_pages":1})") {
  Members top = {{"success", "true"},
                 {"errors", "[]"},
                 {"messages", "[]"},
                 {"result", result},
                 {"result_info", info}};
  for (const auto& [k, v] : extra) top.emplace_back(k, v);
  return object(top);
}

// The page of `result_of({secret 0, variant, secret 1})`.
Page page_around(const Members& variant) {
  return parse_secrets_page(envelope(result_of({secret_members(0), variant, secret_members(1)})));
}

Members with(Members m, const std::string& key, const std::string& value) {
  for (auto& [k, v] : m) {
    if (k == key) {
      v = value;
      return m;
    }
  }
  m.emplace_back(key, value);
  return m;
}

Members without(Members m, const std::string& key) {
  std::erase_if(m, [&](const auto& kv) { return kv.first == key; });
  return m;
}

TEST(PageParse, AValidPageReadsEverySecret) {
  const std::string body = envelope(result_of(three_secrets()));
  const Page page = parse_secrets_page(body);
  ASSERT_TRUE(page.has_value());
  ASSERT_EQ(page->items.size(), 3U);
  EXPECT_EQ(page->total_pages, 1);
  const Secret& first = page->items[0];
  EXPECT_EQ(first.id, "0123456789abcdef0123456789abcd10");
  EXPECT_EQ(first.name, "api_key_10");
  EXPECT_EQ(first.comment, std::optional<std::string>("rotated \"quarterly\" \xc3\xa9"));
  EXPECT_EQ(first.scopes, (std::vector<std::string>{"access", "workers"}));  // sorted, unique
  EXPECT_EQ(first.status, upstream::SecretStatus::pending);
  EXPECT_EQ(first.created, *upstream::parse_timestamp("2026-03-01T12:00:00.123456Z"));
  EXPECT_FALSE(page->items[1].comment.has_value());
}

TEST(PageParse, TakesEverySuccessEnvelopeWithAnArrayOfSecrets) {
  const std::string r = result_of(three_secrets());
  for (const std::string& body : std::vector<std::string>{
           envelope(r),
           envelope(r, {{"extra", R"({"deep":[[{"a":null}],true,1.5e3,"s"]})"}}),
           R"({"errors":[],"result":[],"success":true})",
           R"({"success":true,"result":[]} )",
       }) {
    EXPECT_TRUE(parse_secrets_page(body).has_value()) << body;
  }
  EXPECT_EQ(parse_secrets_page(envelope("[]"))->items.size(), 0U);
}

TEST(PageParse, ReadsTotalPagesOnlyFromAnIntegerInResultInfo) {
  const std::string r = result_of(three_secrets());
  EXPECT_EQ(parse_secrets_page(envelope(r, {}, R"({"total_pages":7})"))->total_pages, 7);
  for (const std::string& info : std::vector<std::string>{
           "null", "[1,2]", R"("x")", R"({"total_pages":3.5})", R"({"total_pages":"3"})",
           R"({"total_pages":[2]})", R"({"cursors":{"after":"x"}})"}) {
    const Page page = parse_secrets_page(envelope(r, {}, info));
    ASSERT_TRUE(page.has_value()) << info;
    EXPECT_EQ(page->total_pages, 0) << info;
    EXPECT_EQ(page->items.size(), 3U) << info;
  }
}

TEST(PageParse, RefusesEveryBodyThatIsNotASuccessEnvelopeWithAnArrayOfSecrets) {
  for (const std::string& body : std::vector<std::string>{
           envelope("{}"),
           envelope("null"),
           envelope(R"("text")"),
           envelope("[[]]"),
           envelope(R"(["id"])"),
           envelope("[null]"),
           R"({"result":[],"success":"true"})",
           R"({"result":[],"success":1})",
           R"({"result":[],"success":{}})",
           R"({"result":[],"success":false})",
           R"({"result":[]})",
           R"({"success":true})",
           R"({"success":true,"result":[]} x)",
           R"({"success":true,"result":[})",
           R"([{"success":true,"result":[]}])",
           "",
           "null",
           "not json",
       }) {
    EXPECT_FALSE(parse_secrets_page(body).has_value()) << body;
  }
}

TEST(PageParse, RefusesAPageWithOneSecretMissingARequiredMemberOrOfTheWrongType) {
  const Members base = secret_members(3);
  for (const std::string key :
       {"id", "store_id", "name", "status", "created", "modified", "scopes"}) {
    EXPECT_FALSE(page_around(without(base, key)).has_value()) << "without " << key;
    EXPECT_FALSE(page_around(with(base, key, "17")).has_value()) << key << " a number";
    EXPECT_FALSE(page_around(with(base, key, R"({"a":1})")).has_value()) << key << " an object";
  }
  for (const std::string& invalid :
       std::vector<std::string>{R"("deleted")", R"("Active")", R"("")"}) {
    EXPECT_FALSE(page_around(with(base, "status", invalid)).has_value()) << invalid;
  }
  for (const std::string& invalid : std::vector<std::string>{
           R"("2026-13-01T00:00:00Z")", R"("yesterday")", R"("2026-03-01 12:00:00")"}) {
    EXPECT_FALSE(page_around(with(base, "created", invalid)).has_value()) << invalid;
    EXPECT_FALSE(page_around(with(base, "modified", invalid)).has_value()) << invalid;
  }
  for (const std::string& invalid :
       std::vector<std::string>{R"(["workers",1])", R"([["workers"]])", R"([null])"}) {
    EXPECT_FALSE(page_around(with(base, "scopes", invalid)).has_value()) << invalid;
  }
  EXPECT_FALSE(page_around(with(base, "id", R"("")")).has_value());
  EXPECT_FALSE(page_around(with(base, "comment", "17")).has_value());
}

TEST(PageParse, TakesTheSecretsTheModelAccepts) {
  const Members base = secret_members(3);
  for (const Members& variant : std::vector<Members>{
           without(base, "comment"),
           with(base, "comment", "null"),
           with(base, "comment", R"("")"),
           with(base, "scopes", "[]"),
           with(base, "scopes", R"(["b","a","b"])"),
           with(base, "scopes", R"(["new-scope"])"),
           with(base, "id", R"("ABC")"),
           with(base, "name", R"("tab\tand \ud83d\ude00")"),
           with(base, "unknown", R"({"nested":{"deeper":[1,[2,[3]]]},"k":"v"})"),
       }) {
    const Page page = page_around(variant);
    ASSERT_TRUE(page.has_value()) << object(variant);
    EXPECT_EQ(page->items.size(), 3U);
  }
  EXPECT_EQ(page_around(with(base, "scopes", R"(["b","a","b"])"))->items[1].scopes,
            (std::vector<std::string>{"a", "b"}));
}

TEST(PageParse, ALargePageKeepsOrderAndTotalPages) {
  std::vector<Members> secrets;
  for (int i = 0; i < 80; ++i) secrets.push_back(secret_members(i));
  const std::string body =
      envelope(result_of(secrets), {}, R"({"page":2,"per_page":80,"total_pages":4})");
  const Page page = parse_secrets_page(body);
  ASSERT_TRUE(page.has_value());
  ASSERT_EQ(page->items.size(), 80U);
  EXPECT_EQ(page->total_pages, 4);
  EXPECT_EQ(page->items[79].name, "api_key_89");
}

}  // namespace
}  // namespace sproxy::cache::testing
