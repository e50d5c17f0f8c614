#include "upstream/route.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace sproxy::upstream {
namespace {

constexpr std::string_view kAccount = "0123456789abcdef0123456789abcdef";
constexpr std::string_view kStore = "fedcba9876543210fedcba9876543210";
constexpr std::string_view kSecret = "00112233445566778899aabbccddeeff";

std::string base() { return "/client/v4/accounts/" + std::string(kAccount) + "/secrets_store"; }

constexpr Method kAllMethods[] = {Method::get, Method::post, Method::patch, Method::put,
                                  Method::del, Method::head, Method::other};

struct RouteCase {
  Method method;
  std::string suffix;
  RouteKind kind;
  std::string store_id;
  std::string secret_id;
};

std::vector<RouteCase> every_route() {
  const std::string s(kStore);
  const std::string x(kSecret);
  return {
      {Method::get, "/stores", RouteKind::list_stores, "", ""},
      {Method::post, "/stores", RouteKind::create_store, "", ""},
      {Method::get, "/stores/" + s, RouteKind::get_store, s, ""},
      {Method::del, "/stores/" + s, RouteKind::delete_store, s, ""},
      {Method::get, "/stores/" + s + "/secrets", RouteKind::list_secrets, s, ""},
      {Method::post, "/stores/" + s + "/secrets", RouteKind::create_secrets, s, ""},
      {Method::del, "/stores/" + s + "/secrets", RouteKind::bulk_delete, s, ""},
      {Method::get, "/stores/" + s + "/secrets/" + x, RouteKind::get_secret, s, x},
      {Method::patch, "/stores/" + s + "/secrets/" + x, RouteKind::patch_secret, s, x},
      {Method::del, "/stores/" + s + "/secrets/" + x, RouteKind::delete_secret, s, x},
      {Method::post, "/stores/" + s + "/secrets/" + x + "/duplicate", RouteKind::duplicate, s, x},
      {Method::get, "/quota", RouteKind::get_quota, "", ""},
  };
}

void expect_no_route(Method m, const std::string& target) {
  const auto r = parse_route(m, target);
  ASSERT_FALSE(r.ok()) << target;
  EXPECT_EQ(r.error(), errors::no_route()) << target;
}

TEST(Methods, RoundTripThroughTheirNames) {
  for (Method m : kAllMethods) {
    if (m == Method::other) continue;
    EXPECT_EQ(method_from_string(to_string(m)), m) << to_string(m);
  }
  EXPECT_EQ(to_string(Method::del), "DELETE");
  EXPECT_EQ(method_from_string("OPTIONS"), Method::other);
  EXPECT_EQ(method_from_string("get"), Method::other);  // methods are case-sensitive
  EXPECT_EQ(method_from_string(""), Method::other);
}

TEST(ParseRoute, RecognisesEveryRouteOfTheContract) {
  for (const auto& c : every_route()) {
    const auto r = parse_route(c.method, base() + c.suffix);
    ASSERT_TRUE(r.ok()) << to_string(c.method) << " " << c.suffix;
    EXPECT_EQ(r->kind, c.kind) << c.suffix;
    EXPECT_EQ(r->account_id, kAccount);
    EXPECT_EQ(r->store_id, c.store_id);
    EXPECT_EQ(r->secret_id, c.secret_id);
    EXPECT_TRUE(r->query.items.empty());
  }
}

TEST(ParseRoute, AnswersEveryOtherMethodOnAKnownPathWithMethodNotAllowed) {
  const auto routes = every_route();
  for (const auto& c : routes) {
    for (Method m : kAllMethods) {
      const bool allowed = std::any_of(routes.begin(), routes.end(), [&](const RouteCase& o) {
        return o.suffix == c.suffix && o.method == m;
      });
      if (allowed) continue;
      const auto r = parse_route(m, base() + c.suffix);
      ASSERT_FALSE(r.ok()) << to_string(m) << " " << c.suffix;
      EXPECT_EQ(r.error(), errors::method_not_allowed()) << to_string(m) << " " << c.suffix;
    }
  }
}

TEST(ParseRoute, ToleratesOneTrailingSlash) {
  for (const auto& c : every_route()) {
    const auto r = parse_route(c.method, base() + c.suffix + "/");
    ASSERT_TRUE(r.ok()) << c.suffix;
    EXPECT_EQ(r->kind, c.kind);
    EXPECT_EQ(r->secret_id, c.secret_id);
    expect_no_route(c.method, base() + c.suffix + "//");
  }
  const auto q = parse_route(Method::get, base() + "/stores/?page=2");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->kind, RouteKind::list_stores);
  ASSERT_NE(q->query.find("page"), nullptr);
  EXPECT_EQ(*q->query.find("page"), "2");
}

TEST(ParseRoute, DecodesPercentEncodedSegments) {
  const auto r = parse_route(Method::get,
                             "/client/v4/accounts/0123456789abcdef0123456789abcde%66"
                             "/secrets_st%6Fre/stores/st%2Fore%20id/secrets/a%2Bb");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, RouteKind::get_secret);
  EXPECT_EQ(r->account_id, kAccount);
  EXPECT_EQ(r->store_id, "st/ore id");
  EXPECT_EQ(r->secret_id, "a+b");  // '+' is only a space in queries
}

TEST(ParseRoute, TakesStoreAndSecretIdsVerbatim) {
  const auto r = parse_route(
      Method::get, base() + "/stores/01234567-89AB-4def-8123-456789abcdef/secrets/NOT_AN_ID");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->store_id, "01234567-89AB-4def-8123-456789abcdef");
  EXPECT_EQ(r->secret_id, "NOT_AN_ID");
}

TEST(ParseRoute, KeepsTheQueryForTheCaller) {
  const auto r =
      parse_route(Method::del, base() + "/stores/" + std::string(kStore) + "?force=true");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, RouteKind::delete_store);
  ASSERT_NE(r->query.find("force"), nullptr);
  EXPECT_EQ(*r->query.find("force"), "true");

  const auto l = parse_route(Method::get, base() + "/stores/" + std::string(kStore) +
                                              "/secrets?scopes=workers&scopes=dex&search=a+b");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->query.all("scopes"), (std::vector<std::string>{"workers", "dex"}));
  EXPECT_EQ(*l->query.find("search"), "a b");
}

TEST(ParseRoute, RejectsAMalformedAccountIdWithTheTwoRoutingErrors) {
  const char* bad_accounts[] = {"abc",
                                "0123456789ABCDEF0123456789ABCDEF",
                                "0123456789abcdef0123456789abcde",
                                "0123456789abcdef0123456789abcdef0",
                                "01234567-89ab-cdef-0123-456789abcdef",
                                "%2e%2e",
                                ".."};
  for (const char* account : bad_accounts) {
    const std::string path =
        std::string("/client/v4/accounts/") + account + "/secrets_store/stores";
    const auto r = parse_route(Method::get, path + "?page=1");
    ASSERT_FALSE(r.ok()) << account;
    EXPECT_EQ(r.error(), errors::invalid_account_route(path)) << account;
    EXPECT_EQ(r.error().status, 400u);
  }
}

TEST(ParseRoute, JudgesTheAccountBeforeTheRestOfThePath) {
  const std::string path = "/client/v4/accounts/nope/workers/scripts";
  const auto r = parse_route(Method::get, path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), errors::invalid_account_route(path));
}

TEST(ParseRoute, AnswersPathsOutsideAnAccountWithNoRoute) {
  for (const char* target :
       {"", "/", "/client/v4", "/client/v4/accounts", "/client/v4/accounts/",
        "/client/v4/accounts//secrets_store/stores", "/client/v4/user/tokens/verify",
        "/client/v4/accounts/0123456789abcdef0123456789abcdef",
        "/client/v4/accounts/0123456789abcdef0123456789abcdef/", "/client/v4/accounts/abc",
        "/CLIENT/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/stores",
        "/client/v5/accounts/0123456789abcdef0123456789abcdef/secrets_store/stores",
        "client/v4/accounts/0123456789abcdef0123456789abcdef/secrets_store/stores"}) {
    expect_no_route(Method::get, target);
  }
}

TEST(ParseRoute, AnswersUnknownPathsUnderAValidAccountWithNoRoute) {
  const std::string s(kStore);
  const std::string x(kSecret);
  const std::string account = "/client/v4/accounts/" + std::string(kAccount);
  for (const std::string& target : {
           account + "/workers/scripts",
           account + "/secrets_store",
           account + "/secrets_store/",
           account + "/secrets_store/secrets",
           account + "/secrets_store/quota/x",
           account + "/secrets_store/Stores",
           account + "/secrets_store/stores/" + s + "/other",
           account + "/secrets_store/stores/" + s + "/secrets/" + x + "/clone",
           account + "/secrets_store/stores/" + s + "/secrets/" + x + "/duplicate/more",
           account + "/secrets_store/stores//secrets",
           account + "/secrets_store//stores",
           account + "/secrets_store/stores/../secrets",
           account + "/secrets_store/stores/" + s + "/secrets/%2E%2E",
           account + "/secrets_store/stores/./secrets",
       }) {
    expect_no_route(Method::get, target);
    // A wrong method on an unknown path is still "no route", not 405.
    expect_no_route(Method::put, target);
  }
}

TEST(ParseRoute, JudgesPathsLongerThanAnyRouteLikeShorterOnes) {
  const std::string s(kStore);
  const std::string x(kSecret);
  const std::string tail = "/secrets_store/stores/" + s + "/secrets/" + x + "/duplicate/a/b/%2E%2E";
  // The account is still judged first, however many segments follow it.
  const std::string bad_account = "/client/v4/accounts/nope" + tail;
  const auto r = parse_route(Method::get, bad_account);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), errors::invalid_account_route(bad_account));
  expect_no_route(Method::get, "/client/v4/accounts/" + std::string(kAccount) + tail);
  expect_no_route(Method::post, "/client/v4/accounts/" + std::string(kAccount) +
                                    "/secrets_store/stores/" + s + "/secrets/" + x +
                                    "/duplicate/x/");
}

TEST(ParseQuery, SplitsDecodesAndKeepsRepeatedKeysInOrder) {
  const QueryParams q = parse_query("scopes=workers&page=2&scopes=dex&search=a+b%20c%2Bd");
  ASSERT_EQ(q.items.size(), 4u);
  EXPECT_EQ(q.items[0], (std::pair<std::string, std::string>{"scopes", "workers"}));
  EXPECT_EQ(q.all("scopes"), (std::vector<std::string>{"workers", "dex"}));
  EXPECT_EQ(*q.find("scopes"), "workers");
  EXPECT_EQ(*q.find("search"), "a b c+d");
  EXPECT_EQ(q.find("missing"), nullptr);
  EXPECT_TRUE(q.all("missing").empty());
}

TEST(ParseQuery, GivesKeysWithoutEqualsAnEmptyValue) {
  const QueryParams q = parse_query("force&a=&b=x=y");
  ASSERT_EQ(q.items.size(), 3u);
  EXPECT_EQ(*q.find("force"), "");
  EXPECT_EQ(*q.find("a"), "");
  EXPECT_EQ(*q.find("b"), "x=y");
}

TEST(ParseQuery, SkipsEmptyPairs) {
  const QueryParams q = parse_query("&a=1&&b=2&");
  ASSERT_EQ(q.items.size(), 2u);
  EXPECT_EQ(*q.find("a"), "1");
  EXPECT_EQ(*q.find("b"), "2");
  EXPECT_TRUE(parse_query("").items.empty());
}

TEST(ParseQuery, KeepsMalformedEscapesLiterally) {
  const QueryParams q = parse_query("a=%zz&b=%4&c=100%&d=%%41&%6B%65y=%41");
  EXPECT_EQ(*q.find("a"), "%zz");
  EXPECT_EQ(*q.find("b"), "%4");
  EXPECT_EQ(*q.find("c"), "100%");
  EXPECT_EQ(*q.find("d"), "%A");
  EXPECT_EQ(*q.find("key"), "A");
}

TEST(RouteKinds, HaveTemplatesForLogsAndMetrics) {
  EXPECT_EQ(route_template(RouteKind::list_stores), "/stores");
  EXPECT_EQ(route_template(RouteKind::create_store), "/stores");
  EXPECT_EQ(route_template(RouteKind::get_store), "/stores/{store_id}");
  EXPECT_EQ(route_template(RouteKind::delete_store), "/stores/{store_id}");
  EXPECT_EQ(route_template(RouteKind::list_secrets), "/stores/{store_id}/secrets");
  EXPECT_EQ(route_template(RouteKind::create_secrets), "/stores/{store_id}/secrets");
  EXPECT_EQ(route_template(RouteKind::bulk_delete), "/stores/{store_id}/secrets");
  EXPECT_EQ(route_template(RouteKind::get_secret), "/stores/{store_id}/secrets/{secret_id}");
  EXPECT_EQ(route_template(RouteKind::patch_secret), "/stores/{store_id}/secrets/{secret_id}");
  EXPECT_EQ(route_template(RouteKind::delete_secret), "/stores/{store_id}/secrets/{secret_id}");
  EXPECT_EQ(route_template(RouteKind::duplicate),
            "/stores/{store_id}/secrets/{secret_id}/duplicate");
  EXPECT_EQ(route_template(RouteKind::get_quota), "/quota");
}

TEST(RouteKinds, MarkExactlyTheStateChangingOnesAsWrites) {
  for (const auto& c : every_route()) {
    const bool write = c.method != Method::get;
    EXPECT_EQ(is_write(c.kind), write) << route_template(c.kind) << " " << to_string(c.method);
  }
}

TEST(RoutePath, BuildsTheFullPathOfEveryRoute) {
  for (const auto& c : every_route()) {
    EXPECT_EQ(route_path(c.kind, kAccount, c.store_id, c.secret_id), base() + c.suffix);
  }
}

TEST(RoutePath, EncodesIdsSoTheyCannotNameAnotherRoute) {
  EXPECT_EQ(route_path(RouteKind::get_secret, kAccount, "a/b", ".."),
            base() + "/stores/a%2Fb/secrets/%2E%2E");
  EXPECT_EQ(route_path(RouteKind::get_store, kAccount, "x?y#z", ""), base() + "/stores/x%3Fy%23z");
  for (const std::string id : {"a/b", "a b", "x?y=1", "%41", "-_~", "caf\xc3\xa9"}) {
    const auto r =
        parse_route(Method::patch, route_path(RouteKind::patch_secret, kAccount, id, id));
    ASSERT_TRUE(r.ok()) << id;
    EXPECT_EQ(r->kind, RouteKind::patch_secret);
    EXPECT_EQ(r->store_id, id);
    EXPECT_EQ(r->secret_id, id);
  }
}

}  // namespace
}  // namespace sproxy::upstream
