#include "upstream/list_query.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace sproxy::upstream {
namespace {

using nlohmann::json;

// Ids that sort in the order of their suffix digit.
std::string id_n(int n) {
  std::string id = std::to_string(n);
  return std::string(32 - id.size(), '0') + id;
}

Secret secret(int n, std::string name, std::optional<std::string> comment,
              std::vector<std::string> scopes, SecretStatus status, Micros created,
              Micros modified) {
  return Secret{id_n(n),           "fedcba9876543210fedcba9876543210",
                std::move(name),   std::move(comment),
                std::move(scopes), status,
                created,           modified};
}

Store store(int n, std::string name, Micros created, Micros modified) {
  return Store{id_n(n), "0123456789abcdef0123456789abcdef", std::move(name), created, modified};
}

template <class T>
std::vector<std::string> ids(const Page<T>& p) {
  std::vector<std::string> out;
  for (const T* item : p.items) out.push_back(item->id);
  return out;
}

std::vector<std::string> ids_of(std::initializer_list<int> ns) {
  std::vector<std::string> out;
  for (int n : ns) out.push_back(id_n(n));
  return out;
}

std::vector<std::string> reversed(std::vector<std::string> v) {
  std::reverse(v.begin(), v.end());
  return v;
}

template <class T>
void expect_token(const Result<T>& r, const std::string& token) {
  ASSERT_FALSE(r.ok()) << "expected " << token;
  EXPECT_EQ(r.error(), errors::validation(token));
}

// ---------------------------------------------------------------------------------------
// Parameter parsing

TEST(ListParams, DefaultToFirstPageOfTwentyByCreatedAscending) {
  auto s = parse_secret_list_query(parse_query(""));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->page, 1);
  EXPECT_EQ(s->per_page, 20);
  EXPECT_EQ(s->order, "created");
  EXPECT_EQ(s->direction, SortDirection::asc);
  EXPECT_TRUE(s->search.empty());
  EXPECT_TRUE(s->scopes.empty());
  auto st = parse_store_list_query(parse_query(""));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->page, 1);
  EXPECT_EQ(st->per_page, 20);
  EXPECT_EQ(st->order, "created");
  EXPECT_EQ(st->direction, SortDirection::asc);
}

TEST(ListParams, AcceptPageAndPerPageAtTheirBounds) {
  auto q = parse_secret_list_query(parse_query("page=1000000000&per_page=100"));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->page, 1'000'000'000);
  EXPECT_EQ(q->per_page, 100);
  auto one = parse_store_list_query(parse_query("page=1&per_page=1"));
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->page, 1);
  EXPECT_EQ(one->per_page, 1);
  auto zeros = parse_store_list_query(parse_query("page=007&per_page=020"));
  ASSERT_TRUE(zeros.ok());
  EXPECT_EQ(zeros->page, 7);
  EXPECT_EQ(zeros->per_page, 20);
}

TEST(ListParams, RejectAPageThatIsNotAPositiveIntegerOfSaneSize) {
  for (const char* v : {"0", "-1", "abc", "", "1.5", "1e3", "+1", " 1", "1 ", "0x10", "1000000001",
                        "99999999999999999999999"}) {
    const std::string query = std::string("page=") + v;
    expect_token(parse_secret_list_query(parse_query(query)), "invalid_page_parameter");
    expect_token(parse_store_list_query(parse_query(query)), "invalid_page_parameter");
  }
}

TEST(ListParams, RejectAPerPageOutsideOneToAHundred) {
  for (const char* v : {"0", "101", "x", "", "-5", "50.0", "1000"}) {
    const std::string query = std::string("per_page=") + v;
    expect_token(parse_secret_list_query(parse_query(query)), "invalid_per_page_parameter");
    expect_token(parse_store_list_query(parse_query(query)), "invalid_per_page_parameter");
  }
}

TEST(ListParams, AcceptTheOrderFieldsOfEachList) {
  for (const char* o : {"name", "comment", "created", "modified", "status"}) {
    auto q = parse_secret_list_query(parse_query(std::string("order=") + o));
    ASSERT_TRUE(q.ok()) << o;
    EXPECT_EQ(q->order, o);
  }
  for (const char* o : {"name", "created", "modified"}) {
    auto q = parse_store_list_query(parse_query(std::string("order=") + o));
    ASSERT_TRUE(q.ok()) << o;
    EXPECT_EQ(q->order, o);
  }
}

TEST(ListParams, RejectUnknownOrderFields) {
  for (const char* o : {"id", "NAME", "", "scopes"}) {
    expect_token(parse_secret_list_query(parse_query(std::string("order=") + o)),
                 "invalid_order_parameter");
  }
  for (const char* o : {"comment", "status", "id", ""}) {
    expect_token(parse_store_list_query(parse_query(std::string("order=") + o)),
                 "invalid_order_parameter");
  }
}

TEST(ListParams, AcceptOnlyAscAndDescDirections) {
  auto desc = parse_secret_list_query(parse_query("direction=desc"));
  ASSERT_TRUE(desc.ok());
  EXPECT_EQ(desc->direction, SortDirection::desc);
  auto asc = parse_store_list_query(parse_query("direction=asc"));
  ASSERT_TRUE(asc.ok());
  EXPECT_EQ(asc->direction, SortDirection::asc);
  for (const char* d : {"DESC", "up", "", "descending"}) {
    expect_token(parse_secret_list_query(parse_query(std::string("direction=") + d)),
                 "invalid_direction_parameter");
    expect_token(parse_store_list_query(parse_query(std::string("direction=") + d)),
                 "invalid_direction_parameter");
  }
}

TEST(ListParams, CollectRepeatedScopesAndRejectUnknownOnes) {
  auto q = parse_secret_list_query(parse_query("scopes=workers&scopes=dex&scopes=workers"));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->scopes, (std::vector<std::string>{"dex", "workers"}));
  for (const char* bad : {"scopes=workers&scopes=r2", "scopes=", "scopes=workers,dex"}) {
    expect_token(parse_secret_list_query(parse_query(bad)), "secret_scope_invalid");
  }
}

TEST(ListParams, TakeTheSearchTextDecoded) {
  auto q = parse_secret_list_query(parse_query("search=Stripe+key%21"));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->search, "Stripe key!");
}

TEST(ListParams, IgnoreUnknownParametersAndSecretOnlyOnesOnStores) {
  EXPECT_TRUE(parse_secret_list_query(parse_query("foo=bar&cursor=x")).ok());
  auto st = parse_store_list_query(parse_query("scopes=bogus&search=x&foo=1&page=2"));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->page, 2);
}

TEST(ListParams, UseTheFirstValueOfARepeatedPagingKey) {
  auto q = parse_secret_list_query(parse_query("page=3&page=x"));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->page, 3);
}

// ---------------------------------------------------------------------------------------
// Paging

std::vector<Secret> numbered_secrets(int n) {
  std::vector<Secret> out;
  for (int i = 1; i <= n; ++i) {
    out.push_back(secret(i, "S" + std::to_string(i), std::nullopt, {"workers"},
                         SecretStatus::active, 1000 + i, 1000 + i));
  }
  return out;
}

TEST(Paging, SplitsTheSortedSetIntoPagesWithResultInfo) {
  std::vector<Store> stores;
  for (int i = 5; i >= 1; --i) stores.push_back(store(i, "s" + std::to_string(i), i * 10, i));
  StoreListQuery q;
  q.per_page = 2;
  q.page = 1;
  auto p1 = query_stores(stores, q);
  EXPECT_EQ(ids(p1), ids_of({1, 2}));
  EXPECT_EQ(p1.info, (ResultInfo{1, 2, 2, 5, 3}));
  q.page = 2;
  auto p2 = query_stores(stores, q);
  EXPECT_EQ(ids(p2), ids_of({3, 4}));
  EXPECT_EQ(p2.info, (ResultInfo{2, 2, 2, 5, 3}));
  q.page = 3;
  auto p3 = query_stores(stores, q);
  EXPECT_EQ(ids(p3), ids_of({5}));
  EXPECT_EQ(p3.info, (ResultInfo{3, 2, 1, 5, 3}));
}

TEST(Paging, APagePastTheEndIsEmptyNotAnError) {
  const auto secrets = numbered_secrets(5);
  SecretListQuery q;
  q.per_page = 2;
  q.page = 4;
  auto p = query_secrets(secrets, q);
  EXPECT_TRUE(p.items.empty());
  EXPECT_EQ(p.info, (ResultInfo{4, 2, 0, 5, 3}));
  q.page = 1'000'000'000;
  q.per_page = 100;
  auto far = query_secrets(secrets, q);
  EXPECT_TRUE(far.items.empty());
  EXPECT_EQ(far.info, (ResultInfo{1'000'000'000, 100, 0, 5, 1}));
}

TEST(Paging, AnEmptySetHasZeroPages) {
  auto p = query_secrets({}, SecretListQuery{});
  EXPECT_TRUE(p.items.empty());
  EXPECT_EQ(p.info, (ResultInfo{1, 20, 0, 0, 0}));
  auto s = query_stores({}, StoreListQuery{});
  EXPECT_EQ(s.info, (ResultInfo{1, 20, 0, 0, 0}));
}

TEST(Paging, PerPageOneGivesOneItemPerPage) {
  const auto secrets = numbered_secrets(3);
  SecretListQuery q;
  q.per_page = 1;
  for (int page = 1; page <= 3; ++page) {
    q.page = page;
    auto p = query_secrets(secrets, q);
    EXPECT_EQ(ids(p), ids_of({page}));
    EXPECT_EQ(p.info, (ResultInfo{page, 1, 1, 3, 3}));
  }
}

TEST(Paging, PerPageAHundredSplitsAHundredAndFiftyIntoTwoPages) {
  const auto secrets = numbered_secrets(150);
  SecretListQuery q;
  q.per_page = 100;
  auto p1 = query_secrets(secrets, q);
  EXPECT_EQ(p1.items.size(), 100u);
  EXPECT_EQ(p1.items.front()->id, id_n(1));
  EXPECT_EQ(p1.items.back()->id, id_n(100));
  EXPECT_EQ(p1.info, (ResultInfo{1, 100, 100, 150, 2}));
  q.page = 2;
  auto p2 = query_secrets(secrets, q);
  EXPECT_EQ(p2.items.size(), 50u);
  EXPECT_EQ(p2.items.front()->id, id_n(101));
  EXPECT_EQ(p2.info, (ResultInfo{2, 100, 50, 150, 2}));
}

TEST(Paging, ExactMultipleOfPerPageHasNoExtraPage) {
  const auto secrets = numbered_secrets(40);
  auto p = query_secrets(secrets, SecretListQuery{});
  EXPECT_EQ(p.info, (ResultInfo{1, 20, 20, 40, 2}));
}

TEST(Paging, ClampsAHandBuiltQueryOutsideTheContractRanges) {
  const auto secrets = numbered_secrets(3);
  SecretListQuery q;
  q.page = 0;
  q.per_page = 0;
  auto p = query_secrets(secrets, q);
  EXPECT_EQ(ids(p), ids_of({1}));
  EXPECT_EQ(p.info, (ResultInfo{1, 1, 1, 3, 3}));
}

// ---------------------------------------------------------------------------------------
// Sorting

// Secrets with ties on every field, listed in no particular order.
std::vector<Secret> tied_secrets() {
  using S = SecretStatus;
  return {
      secret(4, "b", "x", {"workers"}, S::pending, 200, 300),
      secret(1, "b", std::nullopt, {"workers"}, S::active, 100, 300),
      secret(5, "a", "", {"workers"}, S::active, 200, 100),
      secret(2, "c", "x", {"workers"}, S::pending, 100, 200),
      secret(3, "B", "X", {"workers"}, S::active, 50, 200),
  };
}

std::vector<std::string> secret_order(const std::string& order, SortDirection d) {
  const auto secrets = tied_secrets();
  SecretListQuery q;
  q.order = order;
  q.direction = d;
  return ids(query_secrets(secrets, q));
}

TEST(Sorting, SecretsByNameCompareBytesWithTiesById) {
  // "B" (0x42) sorts before lowercase; the two "b" tie and fall back to id 1 < 4.
  EXPECT_EQ(secret_order("name", SortDirection::asc), ids_of({3, 5, 1, 4, 2}));
  EXPECT_EQ(secret_order("name", SortDirection::desc), reversed(ids_of({3, 5, 1, 4, 2})));
}

TEST(Sorting, SecretsByCommentTreatNullAsEmpty) {
  // null (id 1) and "" (id 5) tie; "X" < "x"; the two "x" tie by id.
  EXPECT_EQ(secret_order("comment", SortDirection::asc), ids_of({1, 5, 3, 2, 4}));
  EXPECT_EQ(secret_order("comment", SortDirection::desc), reversed(ids_of({1, 5, 3, 2, 4})));
}

TEST(Sorting, SecretsByStatusPutActiveBeforePending) {
  EXPECT_EQ(secret_order("status", SortDirection::asc), ids_of({1, 3, 5, 2, 4}));
  EXPECT_EQ(secret_order("status", SortDirection::desc), reversed(ids_of({1, 3, 5, 2, 4})));
}

TEST(Sorting, SecretsByCreatedCompareTimesNumerically) {
  EXPECT_EQ(secret_order("created", SortDirection::asc), ids_of({3, 1, 2, 4, 5}));
  EXPECT_EQ(secret_order("created", SortDirection::desc), reversed(ids_of({3, 1, 2, 4, 5})));
}

TEST(Sorting, SecretsByModifiedCompareTimesNumerically) {
  EXPECT_EQ(secret_order("modified", SortDirection::asc), ids_of({5, 2, 3, 1, 4}));
  EXPECT_EQ(secret_order("modified", SortDirection::desc), reversed(ids_of({5, 2, 3, 1, 4})));
}

TEST(Sorting, NamesCompareAsUtf8Bytes) {
  using S = SecretStatus;
  const std::vector<Secret> secrets = {
      secret(1, "z", "\xc3\xa9", {"workers"}, S::active, 1, 1),  // é (0xC3 0xA9)
      secret(2, "y", "z", {"workers"}, S::active, 1, 1),
      secret(3, "x", "Z", {"workers"}, S::active, 1, 1),
  };
  SecretListQuery q;
  q.order = "comment";
  EXPECT_EQ(ids(query_secrets(secrets, q)), ids_of({3, 2, 1}));
}

TEST(Sorting, StoresByEachFieldBothDirectionsWithTiesById) {
  const std::vector<Store> stores = {
      store(3, "b", 10, 5),
      store(1, "b", 20, 5),
      store(2, "a", 20, 1),
  };
  const auto order_of = [&](const std::string& order, SortDirection d) {
    StoreListQuery q;
    q.order = order;
    q.direction = d;
    return ids(query_stores(stores, q));
  };
  EXPECT_EQ(order_of("name", SortDirection::asc), ids_of({2, 1, 3}));
  EXPECT_EQ(order_of("name", SortDirection::desc), ids_of({3, 1, 2}));
  EXPECT_EQ(order_of("created", SortDirection::asc), ids_of({3, 1, 2}));
  EXPECT_EQ(order_of("created", SortDirection::desc), ids_of({2, 1, 3}));
  EXPECT_EQ(order_of("modified", SortDirection::asc), ids_of({2, 1, 3}));
  EXPECT_EQ(order_of("modified", SortDirection::desc), ids_of({3, 1, 2}));
}

TEST(Sorting, PagesFollowTheSortOrder) {
  const auto secrets = tied_secrets();
  SecretListQuery q;
  q.order = "name";
  q.direction = SortDirection::desc;
  q.per_page = 2;
  q.page = 2;
  EXPECT_EQ(ids(query_secrets(secrets, q)), ids_of({1, 5}));
}

// ---------------------------------------------------------------------------------------
// Filters

std::vector<Secret> filter_fixture() {
  using S = SecretStatus;
  return {
      secret(1, "STRIPE_KEY", "billing", {"workers"}, S::active, 1, 1),
      secret(2, "db_password", "Stripe webhook", {"dex", "workers"}, S::active, 2, 2),
      secret(3, "OTHER", std::nullopt, {"access", "dex", "workers"}, S::active, 3, 3),
      secret(4, "ai", "for the gateway", {"ai_gateway"}, S::active, 4, 4),
  };
}

TEST(Filters, SearchMatchesNameOrCommentIgnoringAsciiCase) {
  const auto secrets = filter_fixture();
  SecretListQuery q;
  q.search = "sTrIpE";
  auto p = query_secrets(secrets, q);
  EXPECT_EQ(ids(p), ids_of({1, 2}));
  EXPECT_EQ(p.info.total_count, 2);
  q.search = "GATEWAY";
  EXPECT_EQ(ids(query_secrets(secrets, q)), ids_of({4}));
  q.search = "other";
  EXPECT_EQ(ids(query_secrets(secrets, q)), ids_of({3}));
  q.search = "nothing-like-this";
  auto none = query_secrets(secrets, q);
  EXPECT_TRUE(none.items.empty());
  EXPECT_EQ(none.info, (ResultInfo{1, 20, 0, 0, 0}));
}

TEST(Filters, EmptySearchMatchesEverything) {
  const auto secrets = filter_fixture();
  SecretListQuery q;
  q.search = "";
  EXPECT_EQ(query_secrets(secrets, q).info.total_count, 4);
}

TEST(Filters, SearchFoldsOnlyAsciiLetters) {
  using S = SecretStatus;
  const std::vector<Secret> secrets = {
      secret(1, "a", "CAF\xc3\x89", {"workers"}, S::active, 1, 1),  // CAFÉ
      secret(2, "b", "caf\xc3\xa9", {"workers"}, S::active, 2, 2),  // café
  };
  SecretListQuery q;
  q.search = "caf\xc3\xa9";
  EXPECT_EQ(ids(query_secrets(secrets, q)), ids_of({2}));
  q.search = "Caf";
  EXPECT_EQ(ids(query_secrets(secrets, q)), ids_of({1, 2}));
}

TEST(Filters, ScopesRequireEveryListedScope) {
  const auto secrets = filter_fixture();
  SecretListQuery q;
  q.scopes = {"workers"};
  EXPECT_EQ(ids(query_secrets(secrets, q)), ids_of({1, 2, 3}));
  q.scopes = {"dex", "workers"};
  EXPECT_EQ(ids(query_secrets(secrets, q)), ids_of({2, 3}));
  q.scopes = {"access", "dex", "workers"};
  EXPECT_EQ(ids(query_secrets(secrets, q)), ids_of({3}));
  q.scopes = {"access", "ai_gateway"};
  auto none = query_secrets(secrets, q);
  EXPECT_TRUE(none.items.empty());
  EXPECT_EQ(none.info.total_count, 0);
}

TEST(Filters, ScopesFromTheQueryStringApply) {
  const auto secrets = filter_fixture();
  auto q = parse_secret_list_query(parse_query("scopes=dex&scopes=workers&search=stripe"));
  ASSERT_TRUE(q.ok());
  auto p = query_secrets(secrets, *q);
  EXPECT_EQ(ids(p), ids_of({2}));
  EXPECT_EQ(p.info.total_count, 1);
}

TEST(Filters, VisibleFilterAppliesBeforePagingAndCounts) {
  const auto secrets = numbered_secrets(10);
  const SecretFilter even = [](const Secret& s) { return (s.id.back() - '0') % 2 == 0; };
  SecretListQuery q;
  q.per_page = 2;
  q.page = 2;
  auto p = query_secrets(secrets, q, even);
  // Visible: 2, 4, 6, 8, 10 (id_n(10) ends in '0').
  EXPECT_EQ(ids(p), ids_of({6, 8}));
  EXPECT_EQ(p.info, (ResultInfo{2, 2, 2, 5, 3}));
  q.page = 3;
  auto last = query_secrets(secrets, q, even);
  EXPECT_EQ(ids(last), ids_of({10}));
  EXPECT_EQ(last.info, (ResultInfo{3, 2, 1, 5, 3}));
}

TEST(Filters, VisibleFilterCombinesWithSearchAndScopes) {
  const auto secrets = filter_fixture();
  SecretListQuery q;
  q.scopes = {"workers"};
  const SecretFilter not_first = [](const Secret& s) { return s.id != id_n(1); };
  auto p = query_secrets(secrets, q, not_first);
  EXPECT_EQ(ids(p), ids_of({2, 3}));
  EXPECT_EQ(p.info.total_count, 2);
}

// ---------------------------------------------------------------------------------------
// Envelope

TEST(ListEnvelope, SerializesThePageItemsAndResultInfo) {
  const auto secrets = filter_fixture();
  SecretListQuery q;
  q.per_page = 1;
  q.page = 2;
  const auto page = query_secrets(secrets, q);
  const json j = json::parse(list_envelope(page));
  EXPECT_EQ(j["success"], true);
  EXPECT_EQ(j["errors"], json::array());
  EXPECT_EQ(j["messages"], json::array());
  ASSERT_EQ(j["result"].size(), 1u);
  EXPECT_EQ(j["result"][0], to_json(secrets[1]));
  EXPECT_EQ(j["result_info"], to_json(ResultInfo{2, 1, 1, 4, 4}));
}

TEST(ListEnvelope, WritesAnEmptyArrayForAnEmptyPage) {
  std::vector<Store> stores = {store(1, "main", 1, 1)};
  StoreListQuery q;
  q.page = 2;
  EXPECT_EQ(list_envelope(query_stores(stores, q)),
            R"({"success":true,"errors":[],"messages":[],"result":[],)"
            R"("result_info":{"page":2,"per_page":20,"count":0,"total_count":1,"total_pages":1}})");
  q.page = 1;
  const json j = json::parse(list_envelope(query_stores(stores, q)));
  EXPECT_EQ(j["result"], json::array({to_json(stores[0])}));
}

}  // namespace
}  // namespace sproxy::upstream
