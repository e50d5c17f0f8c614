// Randomized property test of scope enforcement: thousands of random (identity, store
// content, list query) cases through the real handler + cache + embedded store in
// process, and a few hundred through the real server over HTTP. Fixed seeds, bounded
// loops. For every case:
// - no answer ever holds a secret outside the caller's scopes (admins see all);
// - paging through the list reaches exactly the visible secrets that match the query, in
//   the contract's order, with result_info computed over that set, and a page past the
//   end is empty;
// - a get answers a visible secret, and a hidden one exactly like a missing one.
// The store's content changes between cases (writes through the proxy), so cached views
// are invalidated and rebuilt along the way. The oracle is written here from the
// contract's rules, independently of the model's list engine.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tests/proxy/handler_fixture.hpp"
#include "tests/support/http_test_client.hpp"
#include "tests/support/server_harness.hpp"

namespace sproxy::proxy {
namespace {

namespace http = boost::beast::http;
using nlohmann::json;
using upstream::Secret;

constexpr std::array<const char*, 6> kScopes = {"access", "ai_gateway", "containers",
                                                "dex",    "websearch",  "workers"};
constexpr std::array<const char*, 8> kWords = {"alpha", "Beta",  "gamma", "DELTA",
                                               "eps",   "Zeta_", "eta-9", "theta"};
constexpr std::array<const char*, 5> kOrders = {"name", "comment", "created", "modified", "status"};
constexpr std::array<long, 9> kPerPages = {1, 2, 3, 5, 7, 10, 20, 50, 100};
const std::string kUnknownId = "abcdefabcdefabcdefabcdefabcdefab";

using Rng = std::mt19937_64;

std::size_t pick(Rng& rng, std::size_t n) {
  return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
}
bool chance(Rng& rng, double p) { return std::bernoulli_distribution(p)(rng); }

// A caller as the test knows it.
struct Caller {
  std::string token;
  std::set<std::string> services;
  bool admin = false;

  bool sees(const Secret& s) const {
    if (admin) return true;
    return std::any_of(s.scopes.begin(), s.scopes.end(),
                       [&](const std::string& sc) { return services.count(sc) > 0; });
  }
};

// Every subset of the six services, with read or write (a third are writers), plus
// admins with and without services.
std::vector<Caller> caller_pool() {
  std::vector<Caller> out;
  for (unsigned mask = 0; mask < 64; ++mask) {
    Caller c;
    c.token = "t-caller-" + std::to_string(mask);
    for (unsigned i = 0; i < 6; ++i) {
      if (mask & (1u << i)) c.services.insert(kScopes[i]);
    }
    out.push_back(std::move(c));
  }
  out.push_back(Caller{"t-admin-none", {}, true});
  out.push_back(Caller{"t-admin-dex", {"dex"}, true});
  return out;
}

std::vector<config::ClientConfig> client_configs(const std::vector<Caller>& callers) {
  std::vector<config::ClientConfig> out;
  for (std::size_t i = 0; i < callers.size(); ++i) {
    const Caller& c = callers[i];
    std::vector<std::string> perms = c.admin      ? std::vector<std::string>{"admin"}
                                     : i % 3 == 0 ? std::vector<std::string>{"write"}
                                                  : std::vector<std::string>{"read"};
    out.push_back(test::token_client("caller" + std::to_string(i), c.token, perms,
                                     {c.services.begin(), c.services.end()}));
  }
  return out;
}

std::vector<std::string> random_scopes(Rng& rng) {
  std::vector<std::string> out;
  for (const char* s : kScopes) {
    if (chance(rng, 0.3)) out.push_back(s);
  }
  if (out.empty()) out.push_back(kScopes[pick(rng, kScopes.size())]);
  return out;
}

json random_secret(Rng& rng, int serial) {
  json j = {{"name", std::string(kWords[pick(rng, kWords.size())]) + "_" + std::to_string(serial)},
            {"value", "v" + std::to_string(serial)},
            {"scopes", random_scopes(rng)}};
  if (chance(rng, 0.6)) {
    j["comment"] =
        std::string(kWords[pick(rng, kWords.size())]) + " " + kWords[pick(rng, kWords.size())];
  }
  return j;
}

struct ListQuery {
  std::optional<long> per_page;
  std::optional<std::string> order;
  std::optional<std::string> direction;
  std::optional<std::string> search;
  std::vector<std::string> scopes;

  std::string to_query(long page) const {
    std::string q = "?page=" + std::to_string(page);
    if (per_page) q += "&per_page=" + std::to_string(*per_page);
    if (order) q += "&order=" + *order;
    if (direction) q += "&direction=" + *direction;
    if (search) q += "&search=" + *search;
    for (const auto& s : scopes) q += "&scopes=" + s;
    return q;
  }
};

ListQuery random_query(Rng& rng) {
  ListQuery q;
  if (chance(rng, 0.8)) q.per_page = kPerPages[pick(rng, kPerPages.size())];
  if (chance(rng, 0.7)) q.order = kOrders[pick(rng, kOrders.size())];
  if (chance(rng, 0.5)) q.direction = chance(rng, 0.5) ? "asc" : "desc";
  if (chance(rng, 0.35)) {
    // Case-insensitive substrings of the words names and comments are made of.
    std::string w = kWords[pick(rng, kWords.size())];
    const std::size_t from = pick(rng, w.size());
    w = w.substr(from, 1 + pick(rng, w.size() - from));
    if (chance(rng, 0.5)) std::transform(w.begin(), w.end(), w.begin(), ::toupper);
    q.search = w;
  }
  if (chance(rng, 0.3)) {
    q.scopes.push_back(kScopes[pick(rng, kScopes.size())]);
    if (chance(rng, 0.3)) q.scopes.push_back(kScopes[pick(rng, kScopes.size())]);
  }
  return q;
}

upstream::Micros real_now() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string lower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

// The contract's answer to `q` over `truth` as `caller` sees it: every matching visible
// secret in order (key, then id; desc is that order reversed).
std::vector<const Secret*> expected_list(const std::vector<Secret>& truth, const Caller& caller,
                                         const ListQuery& q) {
  std::vector<const Secret*> out;
  const std::string needle = lower(q.search.value_or(""));
  for (const Secret& s : truth) {
    if (!caller.sees(s)) continue;
    if (!needle.empty() && lower(s.name).find(needle) == std::string::npos &&
        !(s.comment && lower(*s.comment).find(needle) != std::string::npos)) {
      continue;
    }
    const bool all_scopes = std::all_of(q.scopes.begin(), q.scopes.end(), [&](const auto& sc) {
      return std::find(s.scopes.begin(), s.scopes.end(), sc) != s.scopes.end();
    });
    if (all_scopes) out.push_back(&s);
  }
  const std::string order = q.order.value_or("created");
  const auto key_cmp = [&](const Secret& a, const Secret& b) -> int {
    const auto three_way = [](const auto& x, const auto& y) {
      return x < y ? -1 : (y < x ? 1 : 0);
    };
    if (order == "name") return three_way(a.name, b.name);
    if (order == "comment") return three_way(a.comment.value_or(""), b.comment.value_or(""));
    if (order == "modified") return three_way(a.modified, b.modified);
    if (order == "status") {
      return three_way(std::string(upstream::to_string(a.status)),
                       std::string(upstream::to_string(b.status)));
    }
    return three_way(a.created, b.created);
  };
  std::sort(out.begin(), out.end(), [&](const Secret* a, const Secret* b) {
    const int c = key_cmp(*a, *b);
    return c != 0 ? c < 0 : a->id < b->id;
  });
  if (q.direction == std::optional<std::string>("desc")) std::reverse(out.begin(), out.end());
  return out;
}

// One answer as the checks need it, from the handler or from HTTP.
struct Reply {
  unsigned status = 0;
  std::string body;
  std::string comparable;  // what must be equal between a hidden and a missing secret
};

// Runs one case: pages through the list and gets one secret. `fetch(target, token)`.
template <class Fetch>
void check_case(Fetch&& fetch, const std::string& secrets_path, const std::vector<Secret>& truth,
                const Caller& caller, const ListQuery& q, Rng& rng) {
  std::set<std::string> visible_ids;
  std::map<std::string, const Secret*> by_id;
  for (const Secret& s : truth) {
    by_id[s.id] = &s;
    if (caller.sees(s)) visible_ids.insert(s.id);
  }
  const std::vector<const Secret*> expected = expected_list(truth, caller, q);
  const long per_page = q.per_page.value_or(20);
  const long total_pages = static_cast<long>((expected.size() + per_page - 1) / per_page);

  std::vector<std::string> reached;
  for (long page = 1; page <= total_pages + 1; ++page) {  // bounded: one page past the end
    const Reply r = fetch(secrets_path + q.to_query(page), caller.token);
    ASSERT_EQ(r.status, 200u) << r.body;
    const json body = json::parse(r.body);
    for (const auto& item : body.at("result")) {
      const std::string id = item.at("id").get<std::string>();
      // The property: nothing outside the caller's scopes, ever.
      ASSERT_TRUE(visible_ids.count(id) > 0) << "hidden secret " << id << " in " << r.body;
      ASSERT_EQ(item.at("name"), by_id.at(id)->name);
      reached.push_back(id);
    }
    const json& info = body.at("result_info");
    ASSERT_EQ(info.at("total_count").get<long>(), static_cast<long>(expected.size())) << r.body;
    ASSERT_EQ(info.at("total_pages").get<long>(), total_pages);
    ASSERT_EQ(info.at("page").get<long>(), page);
    ASSERT_EQ(info.at("per_page").get<long>(), per_page);
    const long from = (page - 1) * per_page;
    const long want = std::clamp<long>(static_cast<long>(expected.size()) - from, 0, per_page);
    ASSERT_EQ(info.at("count").get<long>(), want);
    ASSERT_EQ(static_cast<long>(body.at("result").size()), want);
  }
  std::vector<std::string> expected_ids;
  for (const Secret* s : expected) expected_ids.push_back(s->id);
  ASSERT_EQ(reached, expected_ids) << "query " << q.to_query(1);

  // One get: a random secret of the store, or one that does not exist.
  const Reply missing = fetch(secrets_path + "/" + kUnknownId, caller.token);
  ASSERT_EQ(missing.status, 404u);
  if (truth.empty()) return;
  const Secret& target = truth[pick(rng, truth.size())];
  const Reply got = fetch(secrets_path + "/" + target.id, caller.token);
  if (caller.sees(target)) {
    ASSERT_EQ(got.status, 200u) << got.body;
    ASSERT_EQ(json::parse(got.body)["result"]["id"], target.id);
  } else {
    ASSERT_EQ(got.comparable, missing.comparable)
        << "a hidden secret answered unlike a missing one";
  }
}

// ---------------------------------------------------------------------------------------
// In process: the handler, thousands of cases

struct InProcessRun {
  bool cache_enabled;
  int stores;
  int cases;
  std::uint64_t seed;
};

void PrintTo(const InProcessRun& run, std::ostream* out) {
  *out << (run.cache_enabled ? "cached" : "uncached") << ", " << run.stores << " stores, "
       << run.cases << " cases, seed " << run.seed;
}

class ScopePropertyInProcess : public ::testing::TestWithParam<InProcessRun> {};

INSTANTIATE_TEST_SUITE_P(Runs, ScopePropertyInProcess,
                         ::testing::Values(InProcessRun{true, 12, 3000, 0x5eed0001},
                                           InProcessRun{false, 6, 400, 0x5eed0002}),
                         [](const auto& info) {
                           return info.param.cache_enabled ? "cached" : "uncached";
                         });

TEST_P(ScopePropertyInProcess, NeverShowsASecretOutsideTheCallersScopesAndPagesThroughAllItMaySee) {
  const InProcessRun run = GetParam();
  Rng rng(run.seed);
  const std::vector<Caller> callers = caller_pool();
  test::HandlerRigOptions o;
  o.clients = client_configs(callers);
  o.cache.enabled = run.cache_enabled;
  o.max_stores_per_account = 1000;
  o.max_secrets_per_account = 100'000;
  test::HandlerRig rig(o);
  const std::string account = "0123456789abcdef0123456789abcdef";
  const std::string base = "/client/v4/accounts/" + account + "/secrets_store";
  const std::string admin = "t-admin-none";

  int serial = 0;
  std::vector<std::string> stores;
  for (int i = 0; i < run.stores; ++i) {
    auto res = rig.post(base + "/stores", admin, json{{"name", "s" + std::to_string(i)}}.dump());
    ASSERT_EQ(res.result_int(), 200) << test::body_of(res);
    stores.push_back(test::json_of(res)["result"]["id"].get<std::string>());
    // Several batches at different times, so created/modified orders are not all ties.
    const int batches = static_cast<int>(pick(rng, 8));
    for (int b = 0; b < batches; ++b) {
      json items = json::array();
      const int n = 1 + static_cast<int>(pick(rng, 6));
      for (int k = 0; k < n; ++k) items.push_back(random_secret(rng, serial++));
      rig.advance(1'000 + static_cast<upstream::Micros>(pick(rng, 5'000)));
      ASSERT_EQ(rig.post(base + "/stores/" + stores.back() + "/secrets", admin, items.dump())
                    .result_int(),
                200);
    }
  }

  const auto fetch = [&](const std::string& target, const std::string& token) {
    const HttpResponse res = rig.get(target, token);
    return Reply{res.result_int(), test::body_of(res), test::wire_form(res)};
  };

  for (int c = 0; c < run.cases; ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    if (c % 40 == 39) {
      // Change one store through the proxy (as an admin), so views are invalidated.
      const std::string& store = stores[pick(rng, stores.size())];
      const std::string secrets_path = base + "/stores/" + store + "/secrets";
      const auto truth = *rig.store().list_secrets(account, store, rig.now());
      rig.advance(1'000);
      if (truth.empty() || chance(rng, 0.4)) {
        ASSERT_EQ(rig.post(secrets_path, admin, json::array({random_secret(rng, serial++)}).dump())
                      .result_int(),
                  200);
      } else if (chance(rng, 0.5)) {
        const Secret& s = truth[pick(rng, truth.size())];
        ASSERT_EQ(
            rig.patch(secrets_path + "/" + s.id, admin, json{{"scopes", random_scopes(rng)}}.dump())
                .result_int(),
            200);
      } else {
        ASSERT_EQ(
            rig.del(secrets_path + "/" + truth[pick(rng, truth.size())].id, admin).result_int(),
            202);
      }
    }
    const std::string& store = stores[pick(rng, stores.size())];
    const Caller& caller = callers[pick(rng, callers.size())];
    const ListQuery q = random_query(rng);
    const auto truth = *rig.store().list_secrets(account, store, rig.now());
    check_case(fetch, base + "/stores/" + store + "/secrets", truth, caller, q, rng);
    if (HasFailure()) break;
  }
}

// ---------------------------------------------------------------------------------------
// Over HTTP: the real server, a few hundred cases

TEST(ScopePropertyOverHttp, NeverShowsASecretOutsideTheCallersScopesAndPagesThroughAllItMaySee) {
  Rng rng(0x5eed0003);
  const std::vector<Caller> callers = caller_pool();
  test::HarnessOptions options;
  options.clients = client_configs(callers);
  test::ServerHarness harness(options);
  auto client = harness.connect();
  const std::string admin = "t-admin-dex";

  // The embedded store's default limits: one store per account, so one account each.
  const std::vector<std::string> accounts = {"0123456789abcdef0123456789abcdef",
                                             "11111111111111111111111111111111",
                                             "22222222222222222222222222222222"};
  std::vector<std::string> stores;
  int serial = 0;
  for (const auto& account : accounts) {
    const std::string base = test::api_base(account);
    auto res = client.post(base + "/stores", R"({"name":"main"})", test::bearer(admin));
    ASSERT_EQ(res.result_int(), 200) << res.body();
    stores.push_back(test::body_json(res)["result"]["id"].get<std::string>());
    const int batches = 1 + static_cast<int>(pick(rng, 6));
    for (int b = 0; b < batches; ++b) {
      json items = json::array();
      const int n = 1 + static_cast<int>(pick(rng, 8));
      for (int k = 0; k < n; ++k) items.push_back(random_secret(rng, serial++));
      ASSERT_EQ(client
                    .post(base + "/stores/" + stores.back() + "/secrets", items.dump(),
                          test::bearer(admin))
                    .result_int(),
                200);
    }
  }

  const auto fetch = [&](const std::string& target, const std::string& token) {
    const test::TestResponse res = client.get(target, test::bearer(token));
    // Age counts seconds of the real clock and may tick between two requests; everything
    // else about a hidden secret's answer must equal a missing one's.
    std::string comparable = std::to_string(res.result_int()) + "\n";
    for (const auto& field : res.base()) {
      if (field.name() == http::field::age) continue;
      comparable += std::string(field.name_string()) + ": " + std::string(field.value()) + "\n";
    }
    return Reply{res.result_int(), res.body(), comparable + res.body()};
  };

  constexpr int kCases = 300;
  for (int c = 0; c < kCases; ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const std::size_t which = pick(rng, accounts.size());
    const std::string secrets_path =
        test::api_base(accounts[which]) + "/stores/" + stores[which] + "/secrets";
    if (c % 25 == 24) {
      // A write through the proxy between cases (under the store's quota of 100).
      const auto truth = *harness.store().list_secrets(accounts[which], stores[which], real_now());
      if (truth.size() < 90 && (truth.empty() || chance(rng, 0.5))) {
        ASSERT_EQ(client
                      .post(secrets_path, json::array({random_secret(rng, serial++)}).dump(),
                            test::bearer(admin))
                      .result_int(),
                  200);
      } else {
        ASSERT_EQ(
            client.del(secrets_path + "/" + truth[pick(rng, truth.size())].id, test::bearer(admin))
                .result_int(),
            202);
      }
    }
    const Caller& caller = callers[pick(rng, callers.size())];
    const ListQuery q = random_query(rng);
    // With no activation delay every secret is active at any time after its write.
    const auto truth = *harness.store().list_secrets(accounts[which], stores[which], real_now());
    check_case(fetch, secrets_path, truth, caller, q, rng);
    if (HasFailure()) break;
  }
}

}  // namespace
}  // namespace sproxy::proxy
