// Whole-store views answer list queries exactly as the upstream would: for a large
// randomized (fixed seed, bounded) set of queries, the cache's bytes equal the embedded
// store's own answer to the same target, and viewer-filtered answers equal the list
// engine's answer over the store's secrets with the same filter.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "cache/snapshot.hpp"
#include "tests/cache/cache_fixture.hpp"
#include "upstream/list_query.hpp"

namespace sproxy::cache::testing {
namespace {

constexpr int kQueries = 600;

class ListViewTest : public CacheFixture {
 protected:
  void SetUp() override {
    options.max_stores_per_account = 40;
    options.max_secrets_per_account = 1000;
    CacheFixture::SetUp();
    // The upstream answers after every secret below was created (statuses settled).
    fake->set_now(kT0 + 10 * kMs);
  }

  // Secrets with colliding names/comments/times so ties and the search matter.
  void populate(std::mt19937& rng, int count) {
    const std::vector<std::string> words = {"alpha", "Beta", "gamma", "DELTA", "eps", "zeta"};
    const std::vector<std::vector<std::string>> scope_sets = {
        {"workers"},
        {"dex"},
        {"access", "workers"},
        {"ai_gateway", "containers", "dex"},
        {"websearch"},
        {"access", "ai_gateway", "containers", "dex", "websearch", "workers"}};
    for (int i = 0; i < count; ++i) {
      const std::string name = words[rng() % words.size()] + "_" + std::to_string(rng() % 1000) +
                               "_" + std::to_string(i);
      std::optional<std::string> comment;
      if (rng() % 3 != 0)
        comment = words[rng() % words.size()] + " note " + std::to_string(rng() % 7);
      const Micros at = kT0 + static_cast<Micros>(rng() % 5) * kMs;  // many equal times
      std::vector<upstream::SecretCreate> in;
      in.push_back(
          upstream::SecretCreate{name, "v", scope_sets[rng() % scope_sets.size()], comment});
      ASSERT_TRUE(fake->store().create_secrets(kAccount, store_id, std::move(in), at).ok());
    }
  }

  static std::string random_secret_query(std::mt19937& rng) {
    const std::vector<std::string> orders = {"name", "comment", "created", "modified", "status"};
    const std::vector<std::string> searches = {"a", "ALPHA", "note 3", "_1", "zz", "eta", "%"};
    const std::vector<std::string> scopes = {"workers",    "dex",        "access",
                                             "ai_gateway", "containers", "websearch"};
    std::vector<std::string> parts;
    if (rng() % 2) parts.push_back("page=" + std::to_string(1 + rng() % 12));
    if (rng() % 2) parts.push_back("per_page=" + std::to_string(1 + rng() % 100));
    if (rng() % 2) parts.push_back("order=" + orders[rng() % orders.size()]);
    if (rng() % 3 == 0) parts.push_back(std::string("direction=") + (rng() % 2 ? "asc" : "desc"));
    if (rng() % 3 == 0) parts.push_back("search=" + searches[rng() % searches.size()]);
    for (int n = static_cast<int>(rng() % 4); n-- > 0 && rng() % 2;) {
      parts.push_back("scopes=" + scopes[rng() % scopes.size()]);
    }
    if (rng() % 25 == 0) parts.push_back("per_page=0");      // invalid
    if (rng() % 25 == 0) parts.push_back("order=size");      // invalid
    if (rng() % 25 == 0) parts.push_back("scopes=unknown");  // invalid
    std::shuffle(parts.begin(), parts.end(), rng);
    std::string q;
    for (const auto& p : parts) q += (q.empty() ? "?" : "&") + p;
    return q;
  }
};

TEST_F(ListViewTest, MatchesTheUpstreamByteForByteForRandomQueries) {
  std::mt19937 rng(20260301);
  populate(rng, 180);
  fake->reset_counts();
  const Micros now = kT0 + 10 * kMs;
  for (int i = 0; i < kQueries; ++i) {
    const std::string target = base() + secrets_path() + random_secret_query(rng);
    const Answer got = read_target(target, now);
    const upstream::ApiResponse want = direct(target, now);
    ASSERT_EQ(got.status, want.status) << target;
    ASSERT_EQ(*got.body, want.body) << target;
  }
  // 180 secrets: two pages, fetched once for all the queries above.
  EXPECT_EQ(fake->calls(), 2u);
}

TEST_F(ListViewTest, MatchesTheUpstreamForEveryGetInTheStore) {
  std::mt19937 rng(7);
  populate(rng, 120);
  const Micros now = kT0 + 10 * kMs;
  auto all = fake->store().list_secrets(kAccount, store_id, now);
  ASSERT_TRUE(all.ok());
  for (const auto& s : *all) {
    const std::string target = base() + secret_path(s.id);
    ASSERT_EQ(*read_target(target, now).body, direct(target, now).body);
  }
  EXPECT_EQ(fake->calls(), 2u);
}

TEST_F(ListViewTest, FiltersEveryQueryByViewerLikeTheListEngine) {
  std::mt19937 rng(99);
  populate(rng, 150);
  const Micros now = kT0 + 10 * kMs;
  auto all = fake->store().list_secrets(kAccount, store_id, now);
  ASSERT_TRUE(all.ok());
  const std::vector<Viewer> viewers = {Viewer{false, {"workers"}}, Viewer{false, {"dex"}},
                                       Viewer{false, {"access", "websearch"}}, Viewer{false, {}},
                                       Viewer{true, {}}};
  for (int i = 0; i < kQueries / 2; ++i) {
    const std::string query = random_secret_query(rng);
    const Viewer& viewer = viewers[rng() % viewers.size()];
    ReadOptions opt;
    opt.viewer = viewer;
    const std::string target = base() + secrets_path() + query;
    const Answer got = read_target(target, now, opt);

    auto parsed =
        upstream::parse_secret_list_query(upstream::parse_route(Method::get, target)->query);
    if (!parsed) {
      ASSERT_EQ(got.status, parsed.error().status) << target;
      continue;
    }
    const std::string want = upstream::list_envelope(upstream::query_secrets(
        *all, *parsed, [&](const upstream::Secret& s) { return is_visible(viewer, s); }));
    ASSERT_EQ(got.status, 200u) << target;
    ASSERT_EQ(*got.body, want) << target;
    // Every secret the viewer gets from the list, it can also get by id; no other.
    const auto listed = nlohmann::json::parse(*got.body);
    for (const auto& item : listed["result"]) {
      ASSERT_EQ(read_target(base() + secret_path(item["id"]), now, opt).status, 200u);
    }
  }
  for (const auto& s : *all) {
    const Viewer& viewer = viewers[0];
    ReadOptions opt;
    opt.viewer = viewer;
    EXPECT_EQ(read_target(base() + secret_path(s.id), now, opt).status,
              is_visible(viewer, s) ? 200u : 404u);
  }
  EXPECT_EQ(fake->calls(), 2u);
}

TEST_F(ListViewTest, AnswersStoresListQueriesLikeTheUpstream) {
  std::mt19937 rng(1234);
  for (int i = 0; i < 30; ++i) {
    const Micros at = kT0 + static_cast<Micros>(rng() % 4) * kMs;
    ASSERT_TRUE(fake->store()
                    .create_store(kAccount,
                                  upstream::StoreCreate{"store_" + std::to_string(rng() % 50) +
                                                        "_" + std::to_string(i)},
                                  at)
                    .ok());
  }
  fake->reset_counts();
  const std::vector<std::string> orders = {"name", "created", "modified"};
  for (int i = 0; i < kQueries / 2; ++i) {
    std::string q =
        "?page=" + std::to_string(1 + rng() % 8) + "&per_page=" + std::to_string(1 + rng() % 30);
    if (rng() % 2) q += "&order=" + orders[rng() % orders.size()];
    if (rng() % 2) q += std::string("&direction=") + (rng() % 2 ? "asc" : "desc");
    if (rng() % 30 == 0) q += "&direction=sideways";
    const std::string target = base() + "/stores" + q;
    const Answer got = read_target(target, kT0 + 10 * kMs);
    const auto want = direct(target, kT0 + 10 * kMs);
    ASSERT_EQ(got.status, want.status) << target;
    ASSERT_EQ(*got.body, want.body) << target;
  }
  EXPECT_EQ(fake->calls(), 1u);
}

TEST_F(ListViewTest, ServesARepeatedListQueryFromItsMemoizedBytes) {
  // A create answers `pending`; the store says so too while the activation delay runs.
  options.activation_delay = 3'600'000'000;
  SetUp();
  std::mt19937 rng(5);
  populate(rng, 40);
  const std::string target = base() + secrets_path() + "?order=name&per_page=7&page=2";
  const Answer first = read_target(target, kT0 + 10 * kMs);
  const Answer again = read_target(target, kT0 + 10 * kMs + 1);
  EXPECT_EQ(again.outcome, Outcome::hit);
  // The same shared bytes, not a recomputation.
  EXPECT_EQ(first.body.data(), again.body.data());
  // A write replaces the snapshot (from its answer) and drops the memoized answer with it.
  write(Method::post, secrets_path(), R"([{"name":"aaa_new","value":"v","scopes":["dex"]}])",
        kT0 + 10 * kMs + 2);
  const Answer after = read_target(target, kT0 + 10 * kMs + 3);
  EXPECT_EQ(after.outcome, Outcome::hit);
  EXPECT_NE(after.body.data(), first.body.data());
  EXPECT_EQ(*after.body, direct(target, kT0 + 10 * kMs).body);
}

TEST_F(ListViewTest, ServesEverySecretGetFromItsPreSerializedEnvelope) {
  const std::string id = create_secret_directly("A");
  const Answer first = read(secret_path(id), kT0);
  const Answer again = read(secret_path(id), kT0 + 1);
  EXPECT_EQ(first.body.data(), again.body.data());
}

}  // namespace
}  // namespace sproxy::cache::testing
