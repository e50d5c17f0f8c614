#include "cache/policy.hpp"

#include <gtest/gtest.h>

#include <algorithm>

#include "cache/generations.hpp"
#include "cache/snapshot.hpp"

namespace sproxy::cache {
namespace {

using policy::View;
using upstream::RouteKind;

constexpr char kAccount[] = "0123456789abcdef0123456789abcdef";
constexpr char kStore[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
constexpr char kOtherStore[] = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

upstream::Route route_of(RouteKind kind, std::string store = kStore, std::string secret = {}) {
  upstream::Route r;
  r.kind = kind;
  r.account_id = kAccount;
  r.store_id = std::move(store);
  r.secret_id = std::move(secret);
  return r;
}

upstream::ApiResponse response(unsigned status, const upstream::ApiError& e) {
  return upstream::ApiResponse{status, upstream::envelope_error(e)};
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

TEST(CachePolicy, AnswersSecretListsAndGetsFromTheWholeStoreView) {
  EXPECT_EQ(policy::view_of(RouteKind::list_secrets), View::secrets);
  EXPECT_EQ(policy::view_of(RouteKind::get_secret), View::secrets);
  EXPECT_EQ(policy::view_of(RouteKind::list_stores), View::stores);
  EXPECT_EQ(policy::view_of(RouteKind::get_store), View::store);
  EXPECT_EQ(policy::view_of(RouteKind::get_quota), View::quota);
  EXPECT_FALSE(policy::view_of(RouteKind::patch_secret).has_value());
  EXPECT_FALSE(policy::view_of(RouteKind::create_store).has_value());
}

TEST(CachePolicy, TakesEachViewsTtlFromItsOwnSettingInMicroseconds) {
  config::CacheTtlConfig ttl;
  ttl.stores_ms = 1;
  ttl.store_ms = 2;
  ttl.secrets_ms = 3;
  ttl.quota_ms = 0;
  EXPECT_EQ(policy::ttl_of(View::stores, ttl), 1000);
  EXPECT_EQ(policy::ttl_of(View::store, ttl), 2000);
  EXPECT_EQ(policy::ttl_of(View::secrets, ttl), 3000);
  EXPECT_EQ(policy::ttl_of(View::quota, ttl), 0);
  ttl.quota_ms = -5;
  EXPECT_EQ(policy::ttl_of(View::quota, ttl), 0);
}

TEST(CachePolicy, NestsEveryKeyOfAStoreUnderThatStoresTag) {
  const std::string tag = policy::store_tag(kAccount, kStore);
  EXPECT_EQ(policy::tag_of(View::secrets, kAccount, kStore), tag);
  EXPECT_EQ(policy::tag_of(View::store, kAccount, kStore), tag);
  EXPECT_TRUE(policy::memo_tag(View::secrets, kAccount, kStore).starts_with(tag));
  EXPECT_NE(policy::entry_key(View::secrets, kAccount, kStore),
            policy::entry_key(View::store, kAccount, kStore));
  // Account-level tags sit under the account prefix; one store's tag is no prefix of another's.
  const std::string account = policy::account_prefix(kAccount);
  EXPECT_TRUE(tag.starts_with(account));
  EXPECT_TRUE(policy::tag_of(View::stores, kAccount, {}).starts_with(account));
  EXPECT_TRUE(policy::tag_of(View::quota, kAccount, {}).starts_with(account));
  EXPECT_TRUE(policy::memo_tag(View::stores, kAccount, {})
                  .starts_with(policy::tag_of(View::stores, kAccount, {})));
  EXPECT_FALSE(policy::store_tag(kAccount, kOtherStore).starts_with(tag));
  EXPECT_FALSE(policy::tag_of(View::stores, kAccount, {}).starts_with(tag));
}

TEST(CachePolicy, WritesTheSameKeyIntoAReusedBuffer) {
  std::string buf = "leftover";
  policy::entry_key(buf, View::secrets, kAccount, kStore);
  EXPECT_EQ(buf, policy::entry_key(View::secrets, kAccount, kStore));
}

TEST(CachePolicy, StoresSuccessAndNegativeNotFoundAnswers) {
  EXPECT_EQ(policy::classify(upstream::ApiResponse{200, "{}"}), policy::Verdict::store);
  EXPECT_EQ(policy::classify(response(404, upstream::errors::store_not_found())),
            policy::Verdict::negative);
  EXPECT_EQ(policy::classify(response(404, upstream::errors::secret_not_found())),
            policy::Verdict::negative);
}

TEST(CachePolicy, PassesOnOtherClientErrorsWithoutStoringThem) {
  EXPECT_EQ(policy::classify(response(404, upstream::errors::no_route())), policy::Verdict::refuse);
  EXPECT_EQ(policy::classify(response(403, upstream::errors::authentication_error())),
            policy::Verdict::refuse);
  EXPECT_EQ(policy::classify(response(400, upstream::errors::validation("x"))),
            policy::Verdict::refuse);
  EXPECT_EQ(policy::classify(upstream::ApiResponse{404, "not json"}), policy::Verdict::refuse);
}

TEST(CachePolicy, TreatsServerErrorsAndRateLimitsAsFailures) {
  EXPECT_EQ(policy::classify(response(500, upstream::errors::internal_error())),
            policy::Verdict::failure);
  EXPECT_EQ(policy::classify(response(503, upstream::errors::service_unavailable("x"))),
            policy::Verdict::failure);
  EXPECT_EQ(policy::classify(response(429, upstream::errors::rate_limited(3))),
            policy::Verdict::failure);
}

TEST(CachePolicy, KeepsPositiveEntriesForStaleIfErrorButNegativeOnesOnlyWhileFresh) {
  const auto pos = policy::lifetime(1000, 50, 30, false);
  EXPECT_EQ(pos.fresh_until, 1050);
  EXPECT_EQ(pos.keep_until, 1080);
  const auto neg = policy::lifetime(1000, 50, 30, true);
  EXPECT_EQ(neg.fresh_until, 1050);
  EXPECT_EQ(neg.keep_until, 1050);
  EXPECT_TRUE(policy::is_fresh(1050, 1049));
  EXPECT_FALSE(policy::is_fresh(1050, 1050));
  EXPECT_TRUE(policy::servable_as_stale(1050, 1079, 30));
  EXPECT_FALSE(policy::servable_as_stale(1050, 1080, 30));
}

// One row of decide_read's table: an entry stored at 0, fresh until 100.
struct ReadCase {
  const char* what;
  bool positive;
  Micros now;
  policy::RefreshWindows windows;
  policy::ReadDecision expected;
};

TEST(CachePolicy, DecidesWhatAReadDoesWithTheEntryItFound) {
  using policy::Serve;
  const EntryMeta entry{0, 100, 200};
  const ReadCase cases[] = {
      {"fresh, no windows", true, 50, {0, 0}, {Serve::hit, false}},
      {"expired at its fresh_until", true, 100, {0, 0}, {Serve::miss, false}},
      {"before the refresh-ahead window", true, 89, {10, 0}, {Serve::hit, false}},
      {"at the window's start", true, 90, {10, 0}, {Serve::hit, true}},
      {"inside the window", true, 99, {10, 0}, {Serve::hit, true}},
      {"window capped at the last quarter", true, 74, {50, 0}, {Serve::hit, false}},
      {"inside the last quarter", true, 75, {50, 0}, {Serve::hit, true}},
      {"negative entry in the window", false, 95, {10, 0}, {Serve::hit, false}},
      {"just expired, stale-while-revalidate", true, 100, {0, 10}, {Serve::stale, true}},
      {"end of the stale window", true, 109, {0, 10}, {Serve::stale, true}},
      {"past the stale window", true, 110, {0, 10}, {Serve::miss, false}},
      {"negative entry expired", false, 101, {0, 10}, {Serve::miss, false}},
      {"both windows, fresh", true, 95, {10, 10}, {Serve::hit, true}},
      {"both windows, expired", true, 105, {10, 10}, {Serve::stale, true}},
  };
  for (const ReadCase& c : cases) {
    EXPECT_EQ(policy::decide_read(entry, c.positive, c.now, c.windows), c.expected) << c.what;
  }
}

TEST(CachePolicy, NeverRefreshesAheadAnEntryWithNoLifeLeftToShare) {
  // A TTL of 3: a quarter of it rounds down to nothing.
  EXPECT_EQ(policy::decide_read(EntryMeta{0, 3, 3}, true, 2, {10, 0}),
            (policy::ReadDecision{policy::Serve::hit, false}));
}

TEST(CachePolicy, CallsOnlyDataPositiveAndStoredErrorsNegative) {
  EXPECT_TRUE(policy::is_positive(StoredAnswer(200, "{}")));
  EXPECT_TRUE(policy::is_positive(StoredAnswer(204, "")));
  EXPECT_FALSE(policy::is_positive(StoredAnswer(404, "{}")));
  EXPECT_FALSE(policy::is_positive(StoredAnswer(302, "{}")));
  EXPECT_TRUE(policy::is_positive(SecretsSnapshot(1, {})));
  EXPECT_TRUE(policy::is_positive(StoresSnapshot(1, {})));
}

TEST(CachePolicy, TellsTheViewOfEveryMainEntryKeyAndOfNothingElse) {
  for (const View v : {View::stores, View::store, View::secrets, View::quota}) {
    EXPECT_EQ(policy::view_of_entry_key(policy::entry_key(v, kAccount, kStore)), v)
        << policy::to_string(v);
  }
  EXPECT_FALSE(policy::view_of_entry_key(policy::memo_tag(View::secrets, kAccount, kStore) + "#1"));
  EXPECT_FALSE(policy::view_of_entry_key(std::string(kAccount) + "/store/" + kStore + "/"));
  EXPECT_FALSE(policy::view_of_entry_key("quota"));
  EXPECT_FALSE(policy::view_of_entry_key(""));
}

TEST(CachePolicy, SecretWritesInvalidateTheirStoreAndQuotaOnly) {
  for (RouteKind k : {RouteKind::create_secrets, RouteKind::patch_secret, RouteKind::delete_secret,
                      RouteKind::bulk_delete, RouteKind::duplicate}) {
    const auto tags = policy::invalidated_tags(route_of(k), nullptr);
    EXPECT_EQ(tags.size(), 2u);
    EXPECT_TRUE(contains(tags, policy::store_tag(kAccount, kStore)));
    EXPECT_TRUE(contains(tags, policy::tag_of(View::quota, kAccount, {})));
    EXPECT_FALSE(contains(tags, policy::tag_of(View::stores, kAccount, {})));
  }
}

TEST(CachePolicy, StoreDeleteInvalidatesTheListTheStoreAndQuota) {
  const auto tags = policy::invalidated_tags(route_of(RouteKind::delete_store), nullptr);
  EXPECT_TRUE(contains(tags, policy::tag_of(View::stores, kAccount, {})));
  EXPECT_TRUE(contains(tags, policy::store_tag(kAccount, kStore)));
  EXPECT_TRUE(contains(tags, policy::tag_of(View::quota, kAccount, {})));
}

TEST(CachePolicy, StoreCreateInvalidatesTheListQuotaAndTheNewStore) {
  upstream::ApiResponse created{200,
                                R"({"success":true,"errors":[],"messages":[],"result":{"id":")" +
                                    std::string(kOtherStore) + R"(","name":"n"}})"};
  const auto tags = policy::invalidated_tags(route_of(RouteKind::create_store, ""), &created);
  EXPECT_TRUE(contains(tags, policy::tag_of(View::stores, kAccount, {})));
  EXPECT_TRUE(contains(tags, policy::tag_of(View::quota, kAccount, {})));
  EXPECT_TRUE(contains(tags, policy::store_tag(kAccount, kOtherStore)));
  // Without an answer (transport failure) the list and quota are still invalidated.
  const auto blind = policy::invalidated_tags(route_of(RouteKind::create_store, ""), nullptr);
  EXPECT_TRUE(contains(blind, policy::tag_of(View::stores, kAccount, {})));
  EXPECT_TRUE(contains(blind, policy::tag_of(View::quota, kAccount, {})));
}

TEST(CachePolicy, ReadsInvalidateNothing) {
  EXPECT_TRUE(policy::invalidated_tags(route_of(RouteKind::list_secrets), nullptr).empty());
  EXPECT_TRUE(policy::invalidated_tags(route_of(RouteKind::get_quota), nullptr).empty());
}

TEST(CachePolicy, GivesEquivalentListQueriesOneMemoKey) {
  upstream::SecretListQuery a;
  a.scopes = {"workers", "dex"};
  upstream::SecretListQuery b;
  b.scopes = {"dex", "workers", "dex"};
  std::string ka, kb;
  policy::memo_key(ka, "e", 7, a, true, {});
  policy::memo_key(kb, "e", 7, b, true, {});
  EXPECT_EQ(ka, kb);
}

TEST(CachePolicy, SeparatesMemoKeysByQuerySnapshotAndViewer) {
  upstream::SecretListQuery q;
  std::string base, other;
  policy::memo_key(base, "e", 7, q, true, {});

  policy::memo_key(other, "e", 8, q, true, {});
  EXPECT_NE(base, other);
  policy::memo_key(other, "e", 7, q, false, {"workers"});
  EXPECT_NE(base, other);
  std::string other_viewer;
  policy::memo_key(other_viewer, "e", 7, q, false, {"dex"});
  EXPECT_NE(other, other_viewer);

  for (auto change :
       {+[](upstream::SecretListQuery& x) { x.page = 2; },
        +[](upstream::SecretListQuery& x) { x.per_page = 21; },
        +[](upstream::SecretListQuery& x) { x.order = "name"; },
        +[](upstream::SecretListQuery& x) { x.direction = upstream::SortDirection::desc; },
        +[](upstream::SecretListQuery& x) { x.search = "k"; },
        +[](upstream::SecretListQuery& x) { x.scopes = {"dex"}; }}) {
    upstream::SecretListQuery changed;
    change(changed);
    policy::memo_key(other, "e", 7, changed, true, {});
    EXPECT_NE(base, other);
  }
}

TEST(CachePolicy, SeparatesStoresListMemoKeysByTheViewersStores) {
  upstream::StoreListQuery q;
  std::string any, one, two, again;
  policy::memo_key(any, "e", 7, q, {});
  policy::memo_key(one, "e", 7, q, {std::string(kStore)});
  policy::memo_key(two, "e", 7, q, {std::string(kStore), std::string(kOtherStore)});
  policy::memo_key(again, "e", 7, q, {std::string(kStore)});
  EXPECT_NE(any, one);
  EXPECT_NE(one, two);
  EXPECT_NE(any, two);
  EXPECT_EQ(one, again);
  EXPECT_TRUE(policy::is_memo_key(one));
}

TEST(CachePolicy, CannotBeFooledBySeparatorsInsideASearchText) {
  upstream::SecretListQuery a;
  a.search = "x|v*";
  upstream::SecretListQuery b;
  b.search = "x";
  std::string ka, kb;
  policy::memo_key(ka, "e", 1, a, false, {});
  policy::memo_key(kb, "e", 1, b, true, {});
  EXPECT_NE(ka, kb);
}

TEST(CachePolicy, RebuildsAnUpstreamTargetWithItsQueryReEncoded) {
  auto r = route_of(RouteKind::list_secrets);
  r.query.items = {{"search", "a b&c"}, {"scopes", "dex"}, {"scopes", "workers"}};
  EXPECT_EQ(policy::upstream_target(r), std::string("/client/v4/accounts/") + kAccount +
                                            "/secrets_store/stores/" + kStore +
                                            "/secrets?search=a%20b%26c&scopes=dex&scopes=workers");
  auto g = route_of(RouteKind::get_secret, kStore, kOtherStore);
  EXPECT_EQ(policy::upstream_target(g), std::string("/client/v4/accounts/") + kAccount +
                                            "/secrets_store/stores/" + kStore + "/secrets/" +
                                            kOtherStore);
}

TEST(CachePolicy, FetchesWholeViewsAHundredPerPage) {
  EXPECT_EQ(policy::page_target(View::secrets, kAccount, kStore, 3),
            std::string("/client/v4/accounts/") + kAccount + "/secrets_store/stores/" + kStore +
                "/secrets?per_page=100&page=3");
  EXPECT_EQ(
      policy::page_target(View::stores, kAccount, {}, 1),
      std::string("/client/v4/accounts/") + kAccount + "/secrets_store/stores?per_page=100&page=1");
}

TEST(CachePolicy, MapsTransportFailuresToGatewayErrors) {
  using upstream::UpstreamErrc;
  EXPECT_EQ(policy::transport_error(UpstreamErrc::timeout).status, 504u);
  EXPECT_EQ(policy::transport_error(UpstreamErrc::connection_reset).status, 502u);
  EXPECT_EQ(policy::transport_error(UpstreamErrc::unreachable).status, 502u);
  EXPECT_EQ(policy::transport_error(UpstreamErrc::bad_response).status, 502u);
  EXPECT_EQ(policy::transport_error(UpstreamErrc::overloaded).status, 503u);
  EXPECT_EQ(policy::transport_error(UpstreamErrc::circuit_open).status, 503u);
  const auto limited = policy::transport_error(UpstreamErrc::rate_limited);
  EXPECT_EQ(limited.status, 429u);
  EXPECT_TRUE(limited.retry_after_seconds.has_value());
}

// ---------------------------------------------------------------------------------------

TEST(Generations, KeepsATicketCurrentUntilItsTagIsBumped) {
  Generations g;
  const auto t = g.current("a/");
  EXPECT_EQ(g.current("a/"), t);
  g.bump("b/");
  EXPECT_EQ(g.current("a/"), t);
  g.bump("a/");
  EXPECT_NE(g.current("a/"), t);
}

TEST(Generations, CommitsOnlyWithACurrentTicket) {
  Generations g;
  const auto t = g.current("a/");
  int stored = 0;
  EXPECT_TRUE(g.commit_if_current("a/", t, [&] { ++stored; }));
  g.bump("a/");
  EXPECT_FALSE(g.commit_if_current("a/", t, [&] { ++stored; }));
  EXPECT_EQ(stored, 1);
}

TEST(Generations, MakesEveryEarlierTicketStaleOnBumpAll) {
  Generations g;
  const auto a = g.current("a/");
  const auto b = g.current("b/");
  g.bump_all();
  EXPECT_NE(g.current("a/"), a);
  EXPECT_NE(g.current("b/"), b);
}

TEST(Generations, NeverLetsAForgottenTagLookUnchanged) {
  // One stripe remembering two tags: bumping many tags forces forgetting.
  Generations g(1, 2);
  const auto before = g.current("x/");  // never bumped yet
  g.bump("x/");
  for (int i = 0; i < 10; ++i) g.bump("other" + std::to_string(i));
  EXPECT_NE(g.current("x/"), before);
  const auto mid = g.current("y/");
  g.bump("y/");
  for (int i = 10; i < 20; ++i) g.bump("other" + std::to_string(i));
  EXPECT_NE(g.current("y/"), mid);
}

}  // namespace
}  // namespace sproxy::cache
