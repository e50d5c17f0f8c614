// A page of secrets from the upstream is read by a streaming reader that falls back to a
// JSON tree for anything it does not take. Whatever the body (valid, malformed, odd but
// valid JSON), parse_secrets_page must give exactly what the tree parse gives.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "cache/snapshot.hpp"
#include "tests/support/page_parse_compare.hpp"
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

std::vector<Members> three_secrets() { return {secret_members(0), secret_members(1), secret_members(2)}; }

// The envelope around `result`, with the members given replacing or adding to it.
std::string envelope(const std::string& result, const Members& extra = {},
                     const std::string& info = R"({"page":1,"per_page":100,"count":3,"total_count":3,"total_pages":1})") {
  Members top = {{"success", "true"}, {"errors", "[]"}, {"messages", "[]"}, {"result", result},
                 {"result_info", info}};
  for (const auto& [k, v] : extra) top.emplace_back(k, v);
  return object(top);
}

// The streaming reader never answers differently from the tree: it gives the tree's page
// or leaves the body to it. Returns whether it took the body.
bool expect_same(const std::string& body) {
  const test::PageComparison c = test::compare_page_parsers(body);
  EXPECT_EQ(c.difference, "") << body;
  return c.taken;
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
  EXPECT_TRUE(expect_same(body));  // the streaming reader took it
}

TEST(PageParse, AgreesWithTheTreeOnEnvelopes) {
  const std::string r = result_of(three_secrets());
  int taken = 0;
  for (const std::string& body : std::vector<std::string>{
           envelope(r),
           envelope("[]"),
           envelope(r, {}, "null"),
           envelope(r, {}, "[1,2]"),
           envelope(r, {}, R"("x")"),
           envelope(r, {}, R"({"total_pages":3.5})"),
           envelope(r, {}, R"({"total_pages":"3"})"),
           envelope(r, {}, R"({"total_pages":-1})"),
           envelope(r, {}, R"({"total_pages":9223372036854775807})"),
           envelope(r, {}, R"({"total_pages":18446744073709551615})"),
           envelope(r, {}, R"({"total_pages":{"a":[1]}})"),
           envelope(r, {}, R"({"total_pages":[2]})"),
           envelope(r, {}, R"({"total_pages":2,"total_pages":3})"),
           envelope(r, {}, R"({"cursors":{"after":"x","before":[null,{}]},"total_pages":7})"),
           envelope(r, {{"success", "false"}}),
           envelope(r, {{"success", "true"}}),
           envelope(r, {{"result", "[]"}}),
           envelope(r, {{"extra", R"({"deep":[[{"a":null}],true,1.5e3,"s"]})"}}),
           envelope("{}"),
           envelope("null"),
           envelope(R"("text")"),
           envelope("[[]]"),
           envelope(R"(["id"])"),
           envelope("[null]"),
           R"({"errors":[],"result":[],"success":true})",
           R"({"result":[],"success":"true"})",
           R"({"result":[],"success":1})",
           R"({"result":[],"success":{}})",
           R"({"result":[]})",
           R"({"success":true})",
           R"({"success":true,"result":[]} )",
           R"({"success":true,"result":[]} x)",
           R"({"success":true,"result":[})",
           R"([{"success":true,"result":[]}])",
           "",
           "null",
           "not json",
       }) {
    taken += expect_same(body) ? 1 : 0;
  }
  // Taken (15): the plain page, an empty result, every result_info but the one with a
  // repeated total_pages and the one beyond a long, the deep extra member, the minimal
  // envelope and the one with trailing whitespace. Left to the tree: everything else.
  EXPECT_EQ(taken, 15);
}

TEST(PageParse, AgreesWithTheTreeOnSecrets) {
  std::vector<Members> variants;
  const Members base = secret_members(3);
  for (const auto& [key, value] : base) {
    (void)value;
    variants.push_back(without(base, key));                        // each member missing
    variants.push_back(with(base, key, "17"));                     // a number
    variants.push_back(with(base, key, "null"));                   // null
    variants.push_back(with(base, key, R"({"a":1})"));            // an object
    variants.push_back(with(base, key, R"(["workers"])"));         // an array of strings
    variants.push_back(with(base, key, "true"));                   // a boolean
    Members twice = base;
    twice.emplace_back(key, value);
    variants.push_back(twice);                                     // the member repeated
  }
  for (const std::string& v : std::vector<std::string>{R"("")", R"("ABC")", R"("0123456789abcdef0123456789abcdef0")"}) {
    variants.push_back(with(base, "id", v));
  }
  for (const std::string& v : std::vector<std::string>{R"("deleted")", R"("Active")", R"("")"}) {
    variants.push_back(with(base, "status", v));
  }
  for (const std::string& v : std::vector<std::string>{R"("2026-13-01T00:00:00Z")", R"("yesterday")", R"("2026-03-01 12:00:00")"}) {
    variants.push_back(with(base, "created", v));
    variants.push_back(with(base, "modified", v));
  }
  for (const std::string& v : std::vector<std::string>{"[]", R"(["workers",1])", R"(["b","a","b"])", R"([["workers"]])",
                               R"([null])", R"(["new-scope"])"}) {
    variants.push_back(with(base, "scopes", v));
  }
  Members other_id = base;  // repeated with another value: the tree keeps the last
  other_id.emplace_back("id", R"("ffffffffffffffffffffffffffffffff")");
  variants.push_back(other_id);
  Members comment_then_null = with(base, "comment", R"("first")");
  comment_then_null.emplace_back("comment", "null");
  variants.push_back(comment_then_null);
  variants.push_back(with(base, "comment", R"("")"));
  variants.push_back(with(base, "name", R"("tab\tand \ud83d\ude00")"));
  variants.push_back(with(base, "unknown", R"({"nested":{"deeper":[1,[2,[3]]]},"k":"v"})"));
  variants.push_back(with(base, "unknown_list", R"([{"id":"x"},[],{}])"));
  std::vector<std::string> taken;
  for (const auto& variant : variants) {
    const std::string body = envelope(result_of({secret_members(0), variant, secret_members(1)}));
    if (expect_same(body)) taken.push_back(object(variant));
  }
  // Taken (12): the valid variants, each member once: no comment, a null or empty
  // comment, ["workers"] as scopes, ids the tree does not check ("ABC", 33 characters),
  // scopes [], ["b","a","b"] and ["new-scope"], escapes in a name, two unknown members.
  EXPECT_EQ(taken.size(), 12U) << ::testing::PrintToString(taken);
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
  EXPECT_TRUE(expect_same(body));
}

}  // namespace
}  // namespace sproxy::cache::testing
