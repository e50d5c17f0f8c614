#include "cache/persist.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cache/snapshot.hpp"
#include "tests/cache/cache_fixture.hpp"
#include "tests/support/temp_dir.hpp"
#include "upstream/crypto.hpp"

namespace sproxy::cache::testing {
namespace {

using test::Fault;
using upstream::UpstreamErrc;

std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

unsigned mode_of(const std::filesystem::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0);
  return st.st_mode & 07777;
}

using test::TempDir;

constexpr std::size_t kBudget = 64 * 1024 * 1024;

class PersistTest : public CacheFixture {
 protected:
  void SetUp() override {
    CacheFixture::SetUp();
    key = upstream::random_bytes(upstream::kAesKeyBytes);
    path = dir.path() / "state" / "cache.snap";
    secret_id = create_secret_directly("api-key", {"workers"}, std::string("for the api"));
    other_store = create_store_directly("other", kOtherAccount);
  }

  // Fills every kind of entry (and a memoized list page) at kT0.
  void fill_everything() {
    ASSERT_EQ(read("/stores", kT0).status, 200u);
    ASSERT_EQ(read("/stores/" + store_id, kT0).status, 200u);
    ASSERT_EQ(read(secrets_path(), kT0).status, 200u);
    ASSERT_EQ(read(secret_path(secret_id), kT0).status, 200u);
    ASSERT_EQ(read("/quota", kT0).status, 200u);
    // A negative entry: a store that does not exist.
    ASSERT_EQ(read("/stores/" + std::string(32, 'a'), kT0).status, 404u);
  }

  // A second cache over the same upstream, as a restarted proxy would have.
  std::unique_ptr<ReadThroughCache> restarted(config::CacheConfig c) {
    return std::make_unique<ReadThroughCache>(c, fake);
  }
  Answer read_from(ReadThroughCache& c, const std::string& path_part, Micros now) {
    return test::run_awaitable(ioc, c.read(route(Method::get, base() + path_part), {}, now));
  }

  SaveResult save(Micros now = kT0) { return save_cache(*cache, path, key, now); }
  LoadResult load_into(ReadThroughCache& c, Micros now, std::string_view k = {}) {
    return load_cache(c, path, k.empty() ? std::string_view(key) : k, kBudget, now);
  }

  TempDir dir;
  std::string key;
  std::filesystem::path path;
  std::string secret_id;
  std::string other_store;
};

// ---------------------------------------------------------------------------------------
// Round trip

TEST_F(PersistTest, RestoresEveryKindOfEntryWithTheSameAnswersAndNoUpstreamCall) {
  fill_everything();
  const Answer list_before = read(secrets_path() + "?order=name&per_page=5", kT0);
  const SaveResult saved = save();
  ASSERT_TRUE(saved.ok) << saved.message;
  // Stores list, store, secrets snapshot, quota, negative; the memoized page is not saved.
  EXPECT_EQ(saved.entries, 5u);

  auto again = restarted(cfg);
  const LoadResult loaded = load_into(*again, kT0 + 1000 * kMs);
  ASSERT_EQ(loaded.status, LoadStatus::loaded) << loaded.message;
  EXPECT_EQ(loaded.entries, 5u);
  EXPECT_EQ(loaded.restored, 5u);
  EXPECT_EQ(loaded.saved_at, kT0);

  fake->reset_counts();
  const Micros later = kT0 + 1000 * kMs;
  for (const std::string& p :
       {std::string("/stores"), "/stores/" + store_id, secrets_path(), secret_path(secret_id),
        std::string("/quota"), "/stores/" + std::string(32, 'a')}) {
    const Answer before = read(p, later);
    const Answer after = read_from(*again, p, later);
    EXPECT_EQ(after.outcome, Outcome::hit) << p;
    EXPECT_EQ(after.status, before.status) << p;
    EXPECT_EQ(body(after), body(before)) << p;
    // The original age is kept: stored at kT0, read a second later.
    EXPECT_EQ(after.age, 1000 * kMs) << p;
  }
  const Answer list_after = read_from(*again, secrets_path() + "?order=name&per_page=5", later);
  EXPECT_EQ(list_after.outcome, Outcome::hit);
  EXPECT_EQ(body(list_after), body(list_before));
  EXPECT_EQ(fake->calls(), 0u);
}

TEST_F(PersistTest, KeepsNoSecretValueInTheFileOrItsPlaintext) {
  fill_everything();
  const auto records = cache->export_records(kT0);
  const std::string plain = encode_records(records, kT0);
  EXPECT_EQ(plain.find("value-api-key"), std::string::npos);
  EXPECT_NE(plain.find("for the api"), std::string::npos);  // metadata is there
  ASSERT_TRUE(save().ok);
  const std::string file = read_bytes(path);
  EXPECT_EQ(file.find("value-api-key"), std::string::npos);
  EXPECT_EQ(file.find("for the api"), std::string::npos);  // sealed
  EXPECT_EQ(file.find("api-key"), std::string::npos);
}

TEST_F(PersistTest, DecodesWhatItEncodesAndNothingWithExtraBytes) {
  fill_everything();
  const auto records = cache->export_records(kT0);
  const std::string plain = encode_records(records, kT0);
  auto decoded = decode_records(plain);
  ASSERT_TRUE(decoded.has_value());
  ASSERT_EQ(decoded->records.size(), records.size());
  for (std::size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(decoded->records[i].key, records[i].key);
    EXPECT_EQ(decoded->records[i].tag, records[i].tag);
    EXPECT_EQ(decoded->records[i].meta.stored_at, records[i].meta.stored_at);
    EXPECT_EQ(decoded->records[i].meta.fresh_until, records[i].meta.fresh_until);
    EXPECT_EQ(decoded->records[i].value->type(), records[i].value->type());
  }
  EXPECT_FALSE(decode_records(plain + "x").has_value());
  for (std::size_t cut : {std::size_t{0}, std::size_t{5}, std::size_t{12}, plain.size() - 1}) {
    EXPECT_FALSE(decode_records(std::string_view(plain).substr(0, cut)).has_value()) << cut;
  }
  // A count far beyond what the bytes could hold.
  std::string huge = plain;
  huge[8] = huge[9] = huge[10] = huge[11] = '\xff';
  EXPECT_FALSE(decode_records(huge).has_value());
}

// ---------------------------------------------------------------------------------------
// Expiry: original age kept, expired entries only stale

TEST_F(PersistTest, ServesAnExpiredRestoredEntryOnlyAsStaleWhenTheUpstreamFails) {
  fill_everything();
  ASSERT_TRUE(save().ok);
  // The secrets TTL (10 s) has passed by the time the proxy is back.
  const Micros back = kT0 + 11'000 * kMs;
  auto again = restarted(cfg);
  ASSERT_EQ(load_into(*again, back).status, LoadStatus::loaded);

  fake->fail_always(Fault::transport(UpstreamErrc::unreachable));
  const Answer stale = read_from(*again, secret_path(secret_id), back);
  EXPECT_EQ(stale.status, 200u);
  EXPECT_EQ(stale.outcome, Outcome::stale);
  EXPECT_EQ(stale.age, 11'000 * kMs);
  // The store GET (TTL 20 s) is still fresh.
  EXPECT_EQ(read_from(*again, "/stores/" + store_id, back).outcome, Outcome::hit);
  // A negative entry is never served stale.
  EXPECT_EQ(read_from(*again, "/stores/" + std::string(32, 'a'), back).status, 502u);

  // With the upstream back, the expired entry is a miss, not a hit.
  fake->clear_faults();
  fake->reset_counts();
  const Answer fresh = read_from(*again, secret_path(secret_id), back);
  EXPECT_EQ(fresh.outcome, Outcome::miss);
  EXPECT_EQ(fake->calls(), 1u);
}

TEST_F(PersistTest, DropsEntriesPastStaleIfErrorAndCapsFreshnessAtTheCurrentTtl) {
  fill_everything();
  ASSERT_TRUE(save().ok);
  // Each kind may be served stale for 60 s past its TTL (the longest is 30 s).
  auto late = restarted(cfg);
  const LoadResult r = load_into(*late, kT0 + 90'000 * kMs);
  EXPECT_EQ(r.status, LoadStatus::loaded);
  EXPECT_EQ(r.restored, 0u);
  EXPECT_EQ(late->stats().entries, 0u);
  auto just_in_time = restarted(cfg);
  EXPECT_EQ(load_into(*just_in_time, kT0 + 90'000 * kMs - 1).restored, 1u);  // the stores list

  // A shorter TTL configured since the save bounds freshness; a kind no longer cached
  // is not restored.
  config::CacheConfig shorter = cfg;
  shorter.ttl.secrets_ms = 1'000;
  shorter.ttl.quota_ms = 0;
  auto again = restarted(shorter);
  ASSERT_EQ(load_into(*again, kT0 + 2'000 * kMs).status, LoadStatus::loaded);
  fake->fail_always(Fault::http(503));
  EXPECT_EQ(read_from(*again, secrets_path(), kT0 + 2'000 * kMs).outcome, Outcome::stale);
  EXPECT_EQ(read_from(*again, "/quota", kT0 + 2'000 * kMs).outcome, Outcome::bypass);
}

TEST_F(PersistTest, SkipsEntriesStoredAfterNowWhenTheClockWentBack) {
  fill_everything();
  ASSERT_TRUE(save().ok);
  auto again = restarted(cfg);
  const LoadResult r = load_into(*again, kT0 - 1);
  EXPECT_EQ(r.status, LoadStatus::loaded);
  EXPECT_EQ(r.restored, 0u);
}

// ---------------------------------------------------------------------------------------
// Invalidation

TEST_F(PersistTest, InvalidatesRestoredEntriesOnWritesAndPurges) {
  fill_everything();
  ASSERT_TRUE(save().ok);
  cache = restarted(cfg);
  ASSERT_EQ(load_into(*cache, kT0).status, LoadStatus::loaded);

  // A write through the cache erases the restored snapshot: the next read asks upstream.
  const Answer patched =
      write(Method::patch, secret_path(secret_id), R"({"comment":"rotated"})", kT0);
  ASSERT_EQ(patched.status, 200u) << body(patched);
  fake->reset_counts();
  const Answer after = read(secret_path(secret_id), kT0);
  EXPECT_EQ(after.outcome, Outcome::miss);
  EXPECT_NE(body(after).find("rotated"), std::string::npos);
  EXPECT_EQ(fake->calls(), 1u);

  cache->purge_all();
  EXPECT_EQ(cache->stats().entries, 0u);
  ASSERT_EQ(load_into(*cache, kT0).status, LoadStatus::loaded);
  cache->purge_store(kAccount, store_id);
  fake->reset_counts();
  EXPECT_EQ(read("/stores/" + store_id, kT0).outcome, Outcome::miss);
  EXPECT_EQ(read("/quota", kT0).outcome, Outcome::hit);  // another tag: untouched
}

// ---------------------------------------------------------------------------------------
// Rejected files: one message, an empty cache

class RejectedFile : public PersistTest {
 protected:
  void SetUp() override {
    PersistTest::SetUp();
    fill_everything();
    ASSERT_TRUE(save().ok);
    good = read_bytes(path);
  }
  // Loads into a fresh cache; expects `status` and an empty cache.
  void expect_rejected(LoadStatus status, std::string_view k = {}) {
    auto again = restarted(cfg);
    const LoadResult r = load_into(*again, kT0, k);
    EXPECT_EQ(r.status, status) << r.message;
    EXPECT_EQ(r.restored, 0u);
    EXPECT_EQ(again->stats().entries, 0u);
    EXPECT_NE(r.message.find("starting with an empty cache"), std::string::npos) << r.message;
    EXPECT_EQ(r.message.find('\n'), std::string::npos);
  }
  std::string good;
};

TEST_F(RejectedFile, WhenAnyByteIsChanged) {
  // Every byte past the header (nonce, ciphertext, tag) is authenticated.
  for (std::size_t at = 12; at < good.size(); at += std::max<std::size_t>(1, good.size() / 97)) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x01);
    write_bytes(path, bad);
    expect_rejected(LoadStatus::unauthenticated);
  }
  std::string bad = good;
  bad.back() = static_cast<char>(bad.back() ^ 0x80);
  write_bytes(path, bad);
  expect_rejected(LoadStatus::unauthenticated);
}

TEST_F(RejectedFile, WhenSealedWithAnotherKey) {
  expect_rejected(LoadStatus::unauthenticated, upstream::random_bytes(upstream::kAesKeyBytes));
}

TEST_F(RejectedFile, WhenTruncated) {
  for (std::size_t cut : {good.size() - 1, good.size() - 16, std::size_t{40}, std::size_t{13}}) {
    write_bytes(path, good.substr(0, cut));
    expect_rejected(LoadStatus::unauthenticated);
  }
  for (std::size_t cut : {std::size_t{0}, std::size_t{7}, std::size_t{11}}) {
    write_bytes(path, good.substr(0, cut));
    expect_rejected(LoadStatus::not_a_snapshot);
  }
}

TEST_F(RejectedFile, WhenItIsNotASnapshotOrOfAnotherVersion) {
  write_bytes(path, "{\"not\": \"a snapshot\"}");
  expect_rejected(LoadStatus::not_a_snapshot);

  // A well-sealed file of another version (its own header as associated data).
  std::string head(kPersistMagic);
  head += std::string("\x02\x00\x00\x00", 4);
  write_bytes(path, head + upstream::aes_gcm_seal(key, encode_records({}, kT0), head));
  expect_rejected(LoadStatus::wrong_version);

  // This version's header on a body sealed for another version.
  std::string relabelled = good;
  relabelled[8] = '\x02';
  write_bytes(path, relabelled);
  expect_rejected(LoadStatus::wrong_version);
}

TEST_F(RejectedFile, WhenTheAuthenticatedContentsAreMalformed) {
  std::string plain = encode_records(cache->export_records(kT0), kT0);
  plain += "trailing";
  write_bytes(path, seal_snapshot_file(key, plain));
  expect_rejected(LoadStatus::malformed);
}

TEST_F(RejectedFile, WhenLargerThanTheCacheBudgetAllows) {
  auto again = restarted(cfg);
  const LoadResult r = load_cache(*again, path, key, good.size() - 1, kT0);
  EXPECT_EQ(r.status, LoadStatus::too_large);
  EXPECT_EQ(again->stats().entries, 0u);
}

TEST_F(PersistTest, StartsColdWithoutAFile) {
  auto again = restarted(cfg);
  const LoadResult r = load_into(*again, kT0);
  EXPECT_EQ(r.status, LoadStatus::missing);
  EXPECT_EQ(again->stats().entries, 0u);
}

// ---------------------------------------------------------------------------------------
// Bounds and the file itself

TEST_F(PersistTest, RestoresNoMoreThanTheCacheByteBudget) {
  for (int i = 0; i < 40; ++i) create_secret_directly("s" + std::to_string(i));
  fill_everything();
  const std::uint64_t full = cache->stats().bytes;
  ASSERT_TRUE(save().ok);
  config::CacheConfig small = cfg;
  small.max_bytes = full / 2;
  small.shards = 1;
  auto again = restarted(small);
  const LoadResult r = load_into(*again, kT0);
  EXPECT_EQ(r.status, LoadStatus::loaded);
  EXPECT_LE(again->stats().bytes, small.max_bytes);
  EXPECT_LT(again->stats().entries, r.entries);
}

TEST_F(PersistTest, WritesAtomicallyWithMode0600AndNoTempFileLeft) {
  fill_everything();
  ASSERT_TRUE(save().ok);
  EXPECT_EQ(mode_of(path), 0600u);
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));
  const std::string first = read_bytes(path);

  // A leftover temp file with a wide mode is replaced, and the new file is again 0600.
  write_bytes(path.string() + ".tmp", "partial");
  ::chmod((path.string() + ".tmp").c_str(), 0644);
  ::chmod(path.c_str(), 0644);
  ASSERT_TRUE(save(kT0 + 1).ok);
  EXPECT_EQ(mode_of(path), 0600u);
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));
  // A fresh nonce per save: the same contents never seal to the same bytes.
  EXPECT_NE(read_bytes(path), first);

  // A temp file left by a crashed save is removed at load and never read.
  write_bytes(path.string() + ".tmp", "partial");
  auto again = restarted(cfg);
  EXPECT_EQ(load_into(*again, kT0).status, LoadStatus::loaded);
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));
}

TEST_F(PersistTest, ReportsAFailedSaveWithoutThrowing) {
  fill_everything();
  // The parent "directory" is a file.
  write_bytes(dir.path() / "blocker", "x");
  const SaveResult r = save_cache(*cache, dir.path() / "blocker" / "cache.snap", key, kT0);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.message.find("not saved"), std::string::npos);
}

// ---------------------------------------------------------------------------------------
// The persister and the key

TEST_F(PersistTest, PersisterLoadsAtStartAndSavesOnStop) {
  std::shared_ptr<ReadThroughCache> shared = restarted(cfg);
  std::vector<std::string> lines;
  Micros clock = kT0;
  {
    CachePersister p(
        shared, CachePersister::Options{path, key, std::chrono::seconds(0), kBudget},
        [&] { return clock; }, [&](bool, const std::string& line) { lines.push_back(line); });
    EXPECT_EQ(p.load().status, LoadStatus::missing);
    p.start();
    ASSERT_EQ(read_from(*shared, secrets_path(), kT0).outcome, Outcome::miss);
    p.stop();
    p.stop();  // idempotent: one save
  }
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NE(lines[1].find("saved"), std::string::npos);
  ASSERT_TRUE(std::filesystem::exists(path));

  auto again = std::shared_ptr<ReadThroughCache>(restarted(cfg));
  CachePersister p2(
      again, CachePersister::Options{path, key, std::chrono::seconds(0), kBudget},
      [&] { return clock; }, [](bool, const std::string&) {});
  const LoadResult r = p2.load();
  EXPECT_EQ(r.status, LoadStatus::loaded);
  EXPECT_EQ(r.restored, 1u);
  fake->fail_always(Fault::transport(UpstreamErrc::unreachable));
  EXPECT_EQ(read_from(*again, secret_path(secret_id), kT0).outcome, Outcome::hit);
}

TEST_F(PersistTest, PersisterSavesEveryIntervalOnItsOwnThread) {
  std::shared_ptr<ReadThroughCache> shared = restarted(cfg);
  ASSERT_EQ(read_from(*shared, secrets_path(), kT0).outcome, Outcome::miss);
  CachePersister p(
      shared, CachePersister::Options{path, key, std::chrono::seconds(1), kBudget},
      [] { return kT0; }, [](bool, const std::string&) {});
  p.start();
  // Bounded wait for the first periodic save (no stop() has run).
  for (int i = 0; i < 200 && !std::filesystem::exists(path); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(std::filesystem::exists(path));
  auto again = restarted(cfg);
  EXPECT_EQ(load_into(*again, kT0).restored, 1u);
}

TEST_F(PersistTest, PersisterDestroyedWithoutStopDoesNotOverwriteTheFile) {
  fill_everything();
  ASSERT_TRUE(save().ok);
  const std::string before = read_bytes(path);
  {
    std::shared_ptr<ReadThroughCache> empty = restarted(cfg);
    CachePersister p(
        empty, CachePersister::Options{path, key, std::chrono::seconds(3600), kBudget},
        [] { return kT0; }, [](bool, const std::string&) {});
    p.start();
  }
  EXPECT_EQ(read_bytes(path), before);
}

TEST_F(PersistTest, ResolvesItsOwnKeyFileOrTheStoreKey) {
  config::Config c;
  c.store.key_env = "";
  c.store.key_file = (dir.path() / "store.key").string();
  const std::string store_key = resolve_persist_key(c);
  EXPECT_EQ(store_key.size(), upstream::kAesKeyBytes);
  EXPECT_EQ(resolve_persist_key(c), store_key);

  c.cache.persist.key_file = (dir.path() / "keys" / "cache.key").string();
  const std::string own = resolve_persist_key(c);
  EXPECT_EQ(own.size(), upstream::kAesKeyBytes);
  EXPECT_NE(own, store_key);
  EXPECT_EQ(mode_of(c.cache.persist.key_file), 0600u);

  config::Config env_only;
  env_only.cache.persist.key_env = "SPROXY_PERSIST_TEST_KEY_THAT_IS_NEVER_SET";
  EXPECT_THROW(resolve_persist_key(env_only), std::runtime_error);
  ::setenv("SPROXY_PERSIST_TEST_KEY_SET", std::string(64, 'a').c_str(), 1);
  env_only.cache.persist.key_env = "SPROXY_PERSIST_TEST_KEY_SET";
  EXPECT_EQ(resolve_persist_key(env_only), std::string(32, '\xaa'));
  ::unsetenv("SPROXY_PERSIST_TEST_KEY_SET");
}

}  // namespace
}  // namespace sproxy::cache::testing
