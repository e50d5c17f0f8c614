// The pure half of write-through: what a write's answer says it changed, and merging
// that into cached secrets, stores and the quota (cache/write_effect.hpp).
#include "cache/write_effect.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sproxy::cache::policy {
namespace {

using upstream::Method;
using upstream::RouteKind;
using upstream::Secret;

constexpr char kAccount[] = "0123456789abcdef0123456789abcdef";
constexpr char kStore[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
constexpr char kId[] = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
constexpr char kOtherId[] = "cccccccccccccccccccccccccccccccc";

std::string base() { return std::string("/client/v4/accounts/") + kAccount + "/secrets_store"; }

upstream::Route route(Method m, const std::string& path) {
  auto r = upstream::parse_route(m, base() + path);
  EXPECT_TRUE(r.ok()) << path;
  return r.ok() ? *r : upstream::Route{};
}

Secret secret(const std::string& id, upstream::Micros modified, const std::string& comment = "c") {
  Secret s;
  s.id = id;
  s.store_id = kStore;
  s.name = "N" + id.substr(0, 4);
  s.comment = comment;
  s.scopes = {"workers"};
  s.created = 1;
  s.modified = modified;
  return s;
}

upstream::ApiResponse ok(const nlohmann::json& result, unsigned status = 200) {
  return upstream::ApiResponse{status, upstream::envelope_success(result)};
}

const std::string kSecretPath = std::string("/stores/") + kStore + "/secrets/" + kId;

TEST(WriteEffect, IsUnknownForAnythingButASuccessEnvelopeOfTheRoutesShape) {
  const auto patch = route(Method::patch, kSecretPath);
  EXPECT_FALSE(effect_of_write(patch, {}, {500, upstream::envelope_success(nullptr)}));
  EXPECT_FALSE(effect_of_write(patch, {}, {200, "not json"}));
  EXPECT_FALSE(effect_of_write(patch, {}, ok(nlohmann::json::array())));
  // A patch answered with another secret than the one it named.
  EXPECT_FALSE(effect_of_write(patch, {}, ok(upstream::to_json(secret(kOtherId, 2)))));
  const auto create = route(Method::post, std::string("/stores/") + kStore + "/secrets");
  EXPECT_FALSE(effect_of_write(create, {}, ok(upstream::to_json(secret(kId, 2)))));
  auto effect =
      effect_of_write(create, {},
                      ok(nlohmann::json::array({upstream::to_json(secret(kId, 2)),
                                                upstream::to_json(secret(kOtherId, 2))})));
  ASSERT_TRUE(effect);
  EXPECT_EQ(effect->secrets.size(), 2u);
  EXPECT_EQ(effect->usage_delta, 2);
}

TEST(WriteEffect, CountsABulkDeleteOnlyWhenItsIdsAreDistinct) {
  const auto bulk = route(Method::del, std::string("/stores/") + kStore + "/secrets");
  const auto accepted = upstream::ApiResponse{202, upstream::envelope_success(nullptr)};
  auto distinct = effect_of_write(
      bulk, std::string(R"({"ids":[")") + kId + R"(",")" + kOtherId + "\"]}", accepted);
  ASSERT_TRUE(distinct);
  EXPECT_EQ(distinct->deleted_ids.size(), 2u);
  EXPECT_EQ(distinct->usage_delta, -2);
  auto repeated =
      effect_of_write(bulk, std::string(R"({"ids":[")") + kId + R"(",")" + kId + "\"]}", accepted);
  ASSERT_TRUE(repeated);
  EXPECT_EQ(repeated->deleted_ids.size(), 1u);
  EXPECT_FALSE(repeated->usage_delta);
  EXPECT_FALSE(effect_of_write(bulk, R"({"ids":"x"})", accepted));
}

TEST(WriteEffect, LeavesAForcedStoreDeletesUsageToTheCache) {
  const auto accepted = ok(nullptr);
  auto plain = effect_of_write(route(Method::del, std::string("/stores/") + kStore), {}, accepted);
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->usage_delta, 0);
  auto forced = effect_of_write(
      route(Method::del, std::string("/stores/") + kStore + "?force=true"), {}, accepted);
  ASSERT_TRUE(forced);
  EXPECT_FALSE(forced->usage_delta);
}

TEST(MergeSecrets, KeepsTheNewerOfTheCachedAndTheAnsweredSecret) {
  std::vector<Secret> cached = {secret(kId, 5, "cached")};
  WriteEffect older;
  older.secrets = {secret(kId, 4, "older")};
  EXPECT_EQ(merge_secrets(cached, RouteKind::patch_secret, kStore, older), Merge::unchanged);
  EXPECT_EQ(cached[0].comment, "cached");
  WriteEffect same;
  same.secrets = {secret(kId, 5, "cached")};
  EXPECT_EQ(merge_secrets(cached, RouteKind::patch_secret, kStore, same), Merge::unchanged);
  WriteEffect newer;
  newer.secrets = {secret(kId, 6, "newer")};
  EXPECT_EQ(merge_secrets(cached, RouteKind::patch_secret, kStore, newer), Merge::changed);
  EXPECT_EQ(cached[0].comment, "newer");
}

TEST(MergeSecrets, DoubtsWhatItCannotOrder) {
  std::vector<Secret> cached = {secret(kId, 5, "cached")};
  WriteEffect tie;  // same `modified`, other content: which came last is unknown
  tie.secrets = {secret(kId, 5, "other")};
  EXPECT_EQ(merge_secrets(cached, RouteKind::patch_secret, kStore, tie), Merge::doubt);
  WriteEffect absent;  // a patch of a secret the cached list does not hold
  absent.secrets = {secret(kOtherId, 6)};
  EXPECT_EQ(merge_secrets(cached, RouteKind::patch_secret, kStore, absent), Merge::doubt);
  WriteEffect elsewhere;  // a secret of another store
  elsewhere.secrets = {secret(kOtherId, 6)};
  elsewhere.secrets[0].store_id = kOtherId;
  EXPECT_EQ(merge_secrets(cached, RouteKind::create_secrets, kStore, elsewhere), Merge::doubt);
}

TEST(MergeSecrets, AddsCreatedAndRemovesDeletedSecrets) {
  std::vector<Secret> cached = {secret(kId, 5)};
  WriteEffect created;
  created.secrets = {secret(kOtherId, 6)};
  EXPECT_EQ(merge_secrets(cached, RouteKind::create_secrets, kStore, created), Merge::changed);
  EXPECT_EQ(cached.size(), 2u);
  WriteEffect deleted;
  deleted.deleted_ids = {kId, "dddddddddddddddddddddddddddddddd"};
  EXPECT_EQ(merge_secrets(cached, RouteKind::bulk_delete, kStore, deleted), Merge::changed);
  ASSERT_EQ(cached.size(), 1u);
  EXPECT_EQ(cached[0].id, kOtherId);
  EXPECT_EQ(merge_secrets(cached, RouteKind::bulk_delete, kStore, deleted), Merge::unchanged);
}

TEST(SettlePending, TurnsWhatTheDelayHasActivatedAndTellsWhenTheNextTurns) {
  std::vector<Secret> secrets = {secret(kId, 100), secret(kOtherId, 300)};
  secrets[0].status = upstream::SecretStatus::pending;
  secrets[1].status = upstream::SecretStatus::pending;
  std::vector<Secret> unknown = secrets;
  EXPECT_FALSE(settle_pending(unknown, std::nullopt, 1'000));
  EXPECT_EQ(unknown, secrets);  // an unknown delay leaves them as answered
  EXPECT_EQ(settle_pending(secrets, 50, 200), 350);
  EXPECT_EQ(secrets[0].status, upstream::SecretStatus::active);
  EXPECT_EQ(secrets[1].status, upstream::SecretStatus::pending);
  EXPECT_FALSE(settle_pending(secrets, 0, 0));
  EXPECT_EQ(secrets[1].status, upstream::SecretStatus::active);
}

TEST(QuotaWithUsage, ChangesTheUsageAndNothingElse) {
  const std::string body = upstream::envelope_success(upstream::to_json(upstream::Quota{100, 7}));
  EXPECT_EQ(quota_with_usage(body, 2),
            upstream::envelope_success(upstream::to_json(upstream::Quota{100, 9})));
  EXPECT_EQ(quota_with_usage(body, -7),
            upstream::envelope_success(upstream::to_json(upstream::Quota{100, 0})));
  EXPECT_FALSE(quota_with_usage(body, -8));
  EXPECT_FALSE(quota_with_usage("{}", 1));
  EXPECT_FALSE(quota_with_usage(upstream::envelope_error(upstream::errors::internal_error()), 1));
}

}  // namespace
}  // namespace sproxy::cache::policy
