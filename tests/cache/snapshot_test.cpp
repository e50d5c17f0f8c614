// The compact whole-store snapshot: its GET envelopes, list answers and persisted form
// are byte for byte what serializing each secret would give (store ids included, though
// the snapshot keeps the shared store id once), a served envelope keeps the snapshot
// alive, and byte_size counts what the snapshot holds. Plus SharedBytes itself.
#include "cache/snapshot.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cache/persist.hpp"
#include "cache/shared_bytes.hpp"
#include "upstream/list_query.hpp"
#include "upstream/model.hpp"

namespace sproxy::cache::testing {
namespace {

using upstream::Secret;

constexpr char kStore[] = "5c0a4d3e2f1b0a9c8d7e6f5a4b3c2d1e";
constexpr char kOtherStore[] = "aaaabbbbccccddddeeeeffff00001111";
constexpr upstream::Micros kT0 = 1'767'225'600'000'000;

std::string id_of(int i) {
  std::string id = "0123456789abcdef0123456789abcdef";
  const std::string n = std::to_string(i);
  id.replace(id.size() - n.size(), n.size(), n);
  return id;
}

// Names, comments (some with characters JSON escapes) and scopes that vary.
std::vector<Secret> make_secrets(int count, const std::string& store = kStore) {
  const std::vector<std::vector<std::string>> scope_sets = {
      {"workers"}, {"dex"}, {"access", "workers"}, {}};
  std::vector<Secret> out;
  for (int i = 0; i < count; ++i) {
    Secret s;
    s.id = id_of(1000 + (i * 37) % count);  // not in id order
    s.store_id = store;
    s.name = "key_" + std::to_string(i);
    if (i % 3 == 0) s.comment = "rotated \"quarterly\"\n\\ " + std::to_string(i);
    s.scopes = scope_sets[i % scope_sets.size()];
    s.status = i % 2 ? upstream::SecretStatus::active : upstream::SecretStatus::pending;
    s.created = kT0 + i;
    s.modified = kT0 + 2 * i;
    out.push_back(s);
  }
  return out;
}

std::string envelope_of(const Secret& s) {
  return upstream::envelope_success(upstream::to_json(s));
}

TEST(SecretsSnapshot, ServesEachSecretsEnvelopeByteForByte) {
  const auto secrets = make_secrets(50);
  auto snap = std::make_shared<const SecretsSnapshot>(1, secrets);
  ASSERT_EQ(snap->size(), secrets.size());
  EXPECT_EQ(snap->store_id(), kStore);
  for (const auto& s : secrets) {
    auto index = snap->find(s.id);
    ASSERT_TRUE(index.has_value()) << s.id;
    EXPECT_EQ(*SecretsSnapshot::share_envelope(snap, *index), envelope_of(s));
    EXPECT_EQ(snap->secret_json(*index), upstream::to_json(s).dump());
    EXPECT_EQ(snap->secret(*index), s);
  }
  EXPECT_FALSE(snap->find(id_of(1)).has_value());
}

TEST(SecretsSnapshot, AServedEnvelopeKeepsTheSnapshotAlive) {
  const auto secrets = make_secrets(3);
  auto snap = std::make_shared<const SecretsSnapshot>(1, secrets);
  const SharedBytes body = SecretsSnapshot::share_envelope(snap, *snap->find(secrets[2].id));
  std::weak_ptr<const SecretsSnapshot> weak = snap;
  snap.reset();
  EXPECT_FALSE(weak.expired());
  EXPECT_EQ(*body, envelope_of(secrets[2]));
}

TEST(SecretsSnapshot, ListsWithStoreIdsExactlyAsTheListEngineSerializes) {
  const auto secrets = make_secrets(60);
  const SecretsSnapshot snap(1, secrets);
  for (const char* order : {"name", "created", "comment", "status"}) {
    upstream::SecretListQuery q;
    q.order = order;
    q.per_page = 25;
    q.page = 2;
    EXPECT_EQ(snap.list(q, Viewer{}), upstream::list_envelope(upstream::query_secrets(secrets, q)))
        << order;
    const Viewer dex{false, {"dex"}};
    EXPECT_EQ(snap.list(q, dex),
              upstream::list_envelope(upstream::query_secrets(
                  secrets, q, [&](const Secret& s) { return is_visible(dex, s); })))
        << order;
  }
  upstream::SecretListQuery past_the_end;
  past_the_end.page = 9;
  EXPECT_EQ(snap.list(past_the_end, Viewer{}),
            upstream::list_envelope(upstream::query_secrets(secrets, past_the_end)));
  const auto listed = nlohmann::json::parse(snap.list(upstream::SecretListQuery{}, Viewer{}));
  ASSERT_EQ(listed["result"].size(), 20u);
  for (const auto& item : listed["result"]) EXPECT_EQ(item["store_id"], kStore);
}

TEST(SecretsSnapshot, KeepsTheStoreIdOfASecretListedWithAnotherOne) {
  auto secrets = make_secrets(5);
  secrets[3].store_id = kOtherStore;
  const SecretsSnapshot snap(1, secrets);
  EXPECT_EQ(snap.store_id(), kStore);
  for (std::size_t i = 0; i < secrets.size(); ++i) {
    const auto index = *snap.find(secrets[i].id);
    EXPECT_EQ(snap.secret(index).store_id, secrets[i].store_id) << i;
    EXPECT_EQ(nlohmann::json::parse(snap.secret_json(index))["store_id"], secrets[i].store_id);
  }
}

TEST(SecretsSnapshot, KeepsEveryStoreIdAsListedWhenOneIsEmpty) {
  auto secrets = make_secrets(4);
  secrets[1].store_id.clear();
  auto snap = std::make_shared<const SecretsSnapshot>(1, secrets);
  EXPECT_EQ(snap->store_id(), "");
  for (const auto& s : secrets) {
    const auto index = *snap->find(s.id);
    EXPECT_EQ(snap->secret(index), s);
    EXPECT_EQ(*SecretsSnapshot::share_envelope(snap, index), envelope_of(s));
  }
}

TEST(SecretsSnapshot, AnEmptyStoreListsNothing) {
  const SecretsSnapshot snap(1, {});
  EXPECT_EQ(snap.size(), 0u);
  EXPECT_EQ(snap.store_id(), "");
  EXPECT_EQ(snap.json_array(), "[]");
  EXPECT_EQ(snap.list(upstream::SecretListQuery{}, Viewer{}),
            upstream::list_envelope(upstream::query_secrets({}, upstream::SecretListQuery{})));
}

TEST(SecretsSnapshot, KeepsTheLastCopyOfASecretListedTwice) {
  auto secrets = make_secrets(4);
  Secret again = secrets[1];
  again.name = "renamed";
  secrets.push_back(again);
  const SecretsSnapshot snap(1, secrets);
  EXPECT_EQ(snap.size(), 4u);
  EXPECT_EQ(snap.secret(*snap.find(again.id)), again);
}

TEST(SecretsSnapshot, RoundTripsThroughThePersistedFormWithItsStoreIds) {
  auto secrets = make_secrets(30);
  secrets[7].store_id = kOtherStore;
  auto snap = std::make_shared<const SecretsSnapshot>(1, secrets);
  // The persisted array is what serializing the secrets in listing order gives.
  nlohmann::json expected = nlohmann::json::array();
  for (const auto& s : secrets) expected.push_back(upstream::to_json(s));
  EXPECT_EQ(snap->json_array(), expected.dump());

  CacheRecord record{"secrets/key", "secrets/tag", EntryMeta{kT0, kT0 + 1, kT0 + 2}, snap};
  auto decoded = decode_records(encode_records({record}, kT0));
  ASSERT_TRUE(decoded.has_value());
  ASSERT_EQ(decoded->records.size(), 1u);
  ASSERT_EQ(decoded->records[0].value->type(), CachedValue::Type::secrets);
  const auto& restored = static_cast<const SecretsSnapshot&>(*decoded->records[0].value);
  ASSERT_EQ(restored.size(), secrets.size());
  for (const auto& s : secrets) EXPECT_EQ(restored.secret(*restored.find(s.id)), s);
}

TEST(SecretsSnapshot, ByteSizeCountsTheEnvelopesAndTheStoreIdOnce) {
  const auto secrets = make_secrets(100);
  const SecretsSnapshot snap(1, secrets);
  std::size_t envelope_bytes = 0;
  for (const auto& s : secrets) envelope_bytes += envelope_of(s).size();
  EXPECT_GE(snap.byte_size(), envelope_bytes + secrets.size() * sizeof(Secret));
  EXPECT_LE(snap.byte_size(), 2 * (envelope_bytes + secrets.size() * sizeof(Secret)));

  // Each secret listed with a store id of its own keeps a heap copy the budget counts.
  auto apart = secrets;
  for (std::size_t i = 0; i < apart.size(); ++i) {
    apart[i].store_id = id_of(static_cast<int>(5000 + i));
  }
  const SecretsSnapshot apart_snap(1, apart);
  EXPECT_GE(apart_snap.byte_size(), snap.byte_size() + (secrets.size() - 1) * 32);
}

TEST(SharedBytes, TellsNoBodyFromAnEmptyOne) {
  const SharedBytes none;
  EXPECT_FALSE(none);
  EXPECT_TRUE(none.empty());
  const SharedBytes empty{std::string()};
  EXPECT_TRUE(empty);
  EXPECT_TRUE(empty.empty());
  const SharedBytes owned{std::string("{\"a\":1}")};
  EXPECT_EQ(*owned, "{\"a\":1}");
  EXPECT_EQ(owned.size(), 7u);
}

TEST(SharedBytes, KeepsItsOwnerAlive) {
  auto whole = std::make_shared<const std::string>("0123456789");
  std::weak_ptr<const std::string> weak = whole;
  const SharedBytes all(whole);
  const SharedBytes part(whole, std::string_view(*whole).substr(2, 3));
  whole.reset();
  EXPECT_FALSE(weak.expired());
  EXPECT_EQ(*all, "0123456789");
  EXPECT_EQ(*part, "234");
}

}  // namespace
}  // namespace sproxy::cache::testing
