// The embedded store's key check (start-up refuses a missing or foreign key, adopts the
// key of a database from before key checks only when it opens its values) and
// `store rotate-key` (every value re-sealed, the key file replaced, interrupted rotations
// finished).
#include "upstream/store_key.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/support/raw_db.hpp"
#include "tests/support/store_key_fixture.hpp"
#include "upstream/crypto.hpp"
#include "upstream/embedded_store.hpp"

namespace sproxy::upstream {
namespace {

namespace fs = std::filesystem;
using test::RawDb;

const std::string kAccount = "0123456789abcdef0123456789abcdef";
constexpr Micros kT0 = 1'772'366'400'123'456;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_key_file(const fs::path& p, const std::string& key) {
  fs::create_directories(p.parent_path());
  fs::remove(p);
  std::ofstream(p, std::ios::binary) << to_hex(key) << "\n";
  ::chmod(p.c_str(), 0600);
}

mode_t file_mode(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return 0;
  return st.st_mode & 0777;
}

// The schema the store wrote before key checks existed (version 1), verbatim.
constexpr const char* kLegacySchema = R"sql(
CREATE TABLE stores (
  id         TEXT PRIMARY KEY NOT NULL,
  account_id TEXT NOT NULL,
  name       TEXT NOT NULL,
  created    INTEGER NOT NULL,
  modified   INTEGER NOT NULL
) STRICT;
CREATE INDEX stores_by_account ON stores(account_id);
CREATE TABLE secrets (
  id               TEXT PRIMARY KEY NOT NULL,
  store_id         TEXT NOT NULL REFERENCES stores(id),
  name             TEXT NOT NULL,
  comment          TEXT,
  scopes           TEXT NOT NULL,
  created          INTEGER NOT NULL,
  modified         INTEGER NOT NULL,
  value_changed_at INTEGER NOT NULL,
  value            BLOB NOT NULL,
  UNIQUE (store_id, name)
) STRICT;
PRAGMA user_version = 1;
)sql";

const std::string kLegacyStore = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

class StoreKeyTest : public test::StoreKeyFixture {
 protected:
  fs::path staged_path() const { return staged_key_path(key_path()); }
  std::string key_in_file() const { return from_hex(read_file(key_path()).substr(0, 64)).value(); }

  // Starts the store as the proxy does.
  std::unique_ptr<EmbeddedStore> start() {
    return std::make_unique<EmbeddedStore>(embedded_store_options(cfg_));
  }
  // The start-up error; empty when the store started.
  std::string start_error() {
    try {
      start();
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "";
  }
  std::string rotate_error() {
    try {
      rotate_store_key(cfg_);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "";
  }

  // A store with one secret per name; the values are remembered by secret id.
  void seed(const std::vector<std::string>& names) {
    auto store = start();
    store_id_ = store->create_store(kAccount, {"main"}, kT0)->id;
    for (const auto& name : names) {
      const std::string value = "value-of-" + name + "-" + to_hex(random_bytes(8));
      const auto created =
          store->create_secrets(kAccount, store_id_, {{name, value, {"workers"}, {}}}, kT0);
      values_[created->at(0).id] = value;
    }
  }

  // Every remembered value opens in `store`.
  void expect_values_open(EmbeddedStore& store) {
    for (const auto& [id, value] : values_) {
      auto opened = store.reveal_value_for_test(store_id_, id);
      ASSERT_TRUE(opened.ok()) << id;
      EXPECT_EQ(*opened, value);
    }
  }

  // A version-1 database (from before key checks) with one store and `values` (name ->
  // value), each sealed with `keys[i]` and written one second after the one before.
  void make_legacy_database(const std::vector<std::pair<std::string, std::string>>& values,
                            const std::vector<std::string>& keys) {
    fs::create_directories(fs::path(cfg_.data_path).parent_path());
    RawDb raw(cfg_.data_path);
    raw.exec(kLegacySchema);
    raw.exec("INSERT INTO stores VALUES ('" + kLegacyStore + "', '" + kAccount + "', 'main', " +
             std::to_string(kT0) + ", " + std::to_string(kT0) + ")");
    for (std::size_t i = 0; i < values.size(); ++i) {
      const std::string id = to_hex(random_bytes(16));
      raw.insert_secret(id, kLegacyStore, values[i].first, kT0 + static_cast<Micros>(i) * 1'000'000,
                        aes_gcm_seal(keys[i], values[i].second, id));
      values_[id] = values[i].second;
    }
    store_id_ = kLegacyStore;
  }

  std::string store_id_;
  std::map<std::string, std::string> values_;  // secret id -> value
};

// ---------------------------------------------------------------------------------------
// Start-up

TEST_F(StoreKeyTest, ANewEmptyDatabaseCreatesItsKeyFileAndRecordsTheKeyCheck) {
  // Reading the settings creates nothing: only the store knows whether the database is new.
  EXPECT_TRUE(embedded_store_options(cfg_).key.empty());
  EXPECT_FALSE(fs::exists(key_path()));

  start();
  ASSERT_TRUE(fs::exists(key_path()));
  EXPECT_EQ(file_mode(key_path()), 0600u);
  const std::string key = key_in_file();
  RawDb raw(cfg_.data_path);
  const std::string check = raw.key_check();
  ASSERT_FALSE(check.empty());
  EXPECT_TRUE(key_check_opens(key, check));
  EXPECT_FALSE(key_check_opens(random_bytes(kAesKeyBytes), check));
  // The check is not the key, in any spelling.
  EXPECT_EQ(check.find(key), std::string::npos);
  EXPECT_EQ(check.find(to_hex(key).substr(0, 16)), std::string::npos);
}

TEST_F(StoreKeyTest, RefusesToStartNamingTheKeyFileWhenItIsMissingForADatabaseWithSecrets) {
  seed({"A", "B"});
  fs::remove(key_path());
  const std::string err = start_error();
  EXPECT_NE(err.find("store key file " + cfg_.key_file + " is missing"), std::string::npos) << err;
  EXPECT_NE(err.find("restore the key file"), std::string::npos) << err;
  EXPECT_EQ(err.find('\n'), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(key_path())) << "a new key was created for a database with secrets";
}

TEST_F(StoreKeyTest, RefusesToStartWhenTheKeyFileIsMissingForADatabaseThatHasAKeyButNoSecrets) {
  start();
  fs::remove(key_path());
  EXPECT_NE(start_error().find(cfg_.key_file + " is missing"), std::string::npos);
  EXPECT_FALSE(fs::exists(key_path()));
}

TEST_F(StoreKeyTest, RefusesToStartWhenAnotherKeyIsInTheKeyFile) {
  seed({"A"});
  const std::string key = key_in_file();
  write_key_file(key_path(), random_bytes(kAesKeyBytes));
  const std::string err = start_error();
  EXPECT_NE(err.find("store key file " + cfg_.key_file + " does not match embedded store " +
                     cfg_.data_path),
            std::string::npos)
      << err;
  EXPECT_EQ(err.find('\n'), std::string::npos) << err;

  // Putting the right key back is all it takes.
  write_key_file(key_path(), key);
  auto store = start();
  expect_values_open(*store);
}

TEST_F(StoreKeyTest, RefusesAnotherKeyEvenBeforeAnySecretIsWritten) {
  start();
  write_key_file(key_path(), random_bytes(kAesKeyBytes));
  EXPECT_NE(start_error().find("does not match"), std::string::npos);
}

TEST_F(StoreKeyTest, RefusesAnEnvironmentKeyThatDoesNotMatchNamingTheVariable) {
  seed({"A"});
  ::setenv(env_.c_str(), to_hex(random_bytes(kAesKeyBytes)).c_str(), 1);
  const std::string err = start_error();
  EXPECT_NE(err.find("store key environment variable " + env_ + " does not match"),
            std::string::npos)
      << err;
  ::setenv(env_.c_str(), to_hex(key_in_file()).c_str(), 1);
  EXPECT_EQ(start_error(), "");
}

TEST_F(StoreKeyTest, AdoptsTheKeyOfALegacyDatabaseWhenItOpensItsValuesAndRecordsTheCheck) {
  const std::string key = random_bytes(kAesKeyBytes);
  write_key_file(key_path(), key);
  make_legacy_database({{"A", "alpha"}, {"B", "beta"}}, {key, key});
  {
    auto store = start();
    expect_values_open(*store);
  }
  {
    RawDb raw(cfg_.data_path);
    EXPECT_TRUE(key_check_opens(key, raw.key_check()));
    EXPECT_EQ(raw.blob("PRAGMA user_version"), "2");
  }
  // From now on another key is refused even where it could not be tried on a value.
  write_key_file(key_path(), random_bytes(kAesKeyBytes));
  EXPECT_NE(start_error().find("does not match"), std::string::npos);
}

TEST_F(StoreKeyTest, RefusesALegacyDatabaseWhoseValuesTheKeyDoesNotOpen) {
  const std::string sealing_key = random_bytes(kAesKeyBytes);
  write_key_file(key_path(), random_bytes(kAesKeyBytes));
  make_legacy_database({{"A", "alpha"}}, {sealing_key});
  const std::string err = start_error();
  EXPECT_NE(err.find("store key file " + cfg_.key_file + " does not open the values of"),
            std::string::npos)
      << err;
  EXPECT_EQ(RawDb(cfg_.data_path).key_check(), "")
      << "a check was recorded for a key that does not fit";
  // With the key that sealed it, the same database is adopted.
  write_key_file(key_path(), sealing_key);
  EXPECT_EQ(start_error(), "");
}

TEST_F(StoreKeyTest, ALegacyDatabaseIsBoundToTheKeyOfItsNewestValue) {
  // A key file lost and recreated before key checks existed: older values under the lost
  // key, newer ones under the current one, which is the key the store went on with.
  const std::string lost = random_bytes(kAesKeyBytes);
  const std::string current = random_bytes(kAesKeyBytes);
  make_legacy_database({{"OLD", "old"}, {"NEW", "new"}}, {lost, current});
  write_key_file(key_path(), current);
  EXPECT_EQ(start_error(), "");
  write_key_file(key_path(), lost);
  EXPECT_NE(start_error().find("does not match"), std::string::npos);
}

TEST_F(StoreKeyTest, ALegacyDatabaseWithoutSecretsAndWithoutAKeyFileGetsANewKey) {
  make_legacy_database({}, {});
  EXPECT_EQ(start_error(), "");
  ASSERT_TRUE(fs::exists(key_path()));
  RawDb raw(cfg_.data_path);
  EXPECT_TRUE(key_check_opens(key_in_file(), raw.key_check()));
}

// ---------------------------------------------------------------------------------------
// store rotate-key

TEST_F(StoreKeyTest, RotateKeyReSealsEveryValueUnderANewKeyAndReplacesTheKeyFile) {
  seed({"A", "B", "C"});
  const std::string old_key = key_in_file();
  std::map<std::string, std::string> old_sealed;
  {
    RawDb raw(cfg_.data_path);
    for (const auto& [id, value] : values_) old_sealed[id] = raw.value_of(id);
  }

  const KeyRotation rotation = rotate_store_key(cfg_);
  EXPECT_EQ(rotation.resealed, 3u);
  EXPECT_FALSE(rotation.finished_interrupted);
  EXPECT_EQ(rotation.key_file, key_path());

  const std::string new_key = key_in_file();
  EXPECT_NE(new_key, old_key);
  EXPECT_EQ(file_mode(key_path()), 0600u);
  EXPECT_EQ(read_file(key_path()).size(), 65u);
  EXPECT_FALSE(fs::exists(staged_path()));
  {
    RawDb raw(cfg_.data_path);
    EXPECT_TRUE(key_check_opens(new_key, raw.key_check()));
    EXPECT_FALSE(key_check_opens(old_key, raw.key_check()));
    for (const auto& [id, value] : values_) {
      const std::string sealed = raw.value_of(id);
      EXPECT_NE(sealed, old_sealed[id]);
      EXPECT_EQ(aes_gcm_open(new_key, sealed, id), value);
      EXPECT_EQ(aes_gcm_open(old_key, sealed, id), std::nullopt);
    }
  }

  // The store starts with the new key, and old secrets are as usable as before.
  auto store = start();
  expect_values_open(*store);
  const std::string source = values_.begin()->first;
  auto copy = store->duplicate_secret(kAccount, store_id_, source, {"COPY", {"workers"}, {}}, kT0);
  ASSERT_TRUE(copy.ok()) << copy.error().status;
  EXPECT_EQ(store->reveal_value_for_test(store_id_, copy->id).value(), values_.begin()->second);
  store.reset();

  // The former key no longer starts it.
  write_key_file(key_path(), old_key);
  EXPECT_NE(start_error().find("does not match"), std::string::npos);
}

TEST_F(StoreKeyTest, RotateKeyIsRefusedWhenTheKeyDoesNotMatchTheDatabase) {
  seed({"A"});
  const std::string key = key_in_file();
  const std::string other = random_bytes(kAesKeyBytes);
  write_key_file(key_path(), other);
  const std::string err = rotate_error();
  EXPECT_NE(err.find("does not match"), std::string::npos) << err;
  EXPECT_EQ(key_in_file(), other);
  EXPECT_FALSE(fs::exists(staged_path()));
  write_key_file(key_path(), key);
  auto store = start();
  expect_values_open(*store);
}

TEST_F(StoreKeyTest, RotateKeyIsRefusedWhenTheKeyComesFromTheEnvironment) {
  seed({"A"});
  ::setenv(env_.c_str(), to_hex(key_in_file()).c_str(), 1);
  const std::string before = read_file(key_path());
  const std::string err = rotate_error();
  EXPECT_NE(err.find("environment variable " + env_), std::string::npos) << err;
  EXPECT_EQ(read_file(key_path()), before);
}

TEST_F(StoreKeyTest, RotateKeyIsRefusedWithoutADatabaseOrAKeyFile) {
  EXPECT_NE(rotate_error().find("does not exist"), std::string::npos);
  EXPECT_FALSE(fs::exists(cfg_.data_path));
  seed({"A"});
  fs::remove(key_path());
  EXPECT_NE(rotate_error().find(cfg_.key_file + " does not exist"), std::string::npos);
  EXPECT_FALSE(fs::exists(key_path()));
}

TEST_F(StoreKeyTest, RotateKeyChangesNothingWhenAValueDoesNotOpen) {
  seed({"A", "B"});
  const std::string key = key_in_file();
  const std::string broken_id = values_.begin()->first;
  {
    RawDb raw(cfg_.data_path);
    std::string sealed = raw.value_of(broken_id);
    sealed.back() = static_cast<char>(sealed.back() ^ 1);
    raw.set_value(broken_id, sealed);
  }
  const std::string other_id = std::next(values_.begin())->first;
  const std::string other_sealed = RawDb(cfg_.data_path).value_of(other_id);

  const std::string err = rotate_error();
  EXPECT_NE(err.find("secret " + broken_id + " does not open"), std::string::npos) << err;
  EXPECT_EQ(key_in_file(), key);
  RawDb raw(cfg_.data_path);
  EXPECT_EQ(raw.value_of(other_id), other_sealed);
  EXPECT_TRUE(key_check_opens(key, raw.key_check()));
}

TEST_F(StoreKeyTest, ARotationStoppedBeforeInstallingItsKeyIsNamedAtStartAndFinishedByRotateKey) {
  seed({"A", "B"});
  const std::string next = random_bytes(kAesKeyBytes);
  {
    // What rotate_store_key does, up to a crash right after the commit.
    auto store = start();
    write_staged_key(staged_path(), next);
    EXPECT_EQ(store->reseal_all(next), 2u);
  }
  const std::string err = start_error();
  EXPECT_NE(err.find("store key file " + cfg_.key_file + " does not match"), std::string::npos)
      << err;
  EXPECT_NE(err.find(staged_path().string()), std::string::npos) << err;
  EXPECT_NE(err.find("secrets-proxy store rotate-key"), std::string::npos) << err;
  EXPECT_TRUE(fs::exists(staged_path())) << "a plain start must not touch the key files";

  const KeyRotation rotation = rotate_store_key(cfg_);
  EXPECT_TRUE(rotation.finished_interrupted);
  EXPECT_EQ(rotation.resealed, 0u);
  EXPECT_EQ(key_in_file(), next);
  EXPECT_EQ(file_mode(key_path()), 0600u);
  EXPECT_FALSE(fs::exists(staged_path()));
  auto store = start();
  expect_values_open(*store);
}

TEST_F(StoreKeyTest, AStagedKeyLeftByARotationThatDidNotCommitIsIgnoredAndReplaced) {
  seed({"A"});
  const std::string key = key_in_file();
  const std::string stale = random_bytes(kAesKeyBytes);
  write_staged_key(staged_path(), stale);
  EXPECT_EQ(start_error(), "");
  // A torn staged file (a crash while it was written) is no key at all: ignored too.
  std::ofstream(staged_path(), std::ios::trunc) << "0123";
  EXPECT_EQ(start_error(), "");

  write_staged_key(staged_path(), stale);
  EXPECT_EQ(rotate_store_key(cfg_).resealed, 1u);
  EXPECT_NE(key_in_file(), key);
  EXPECT_NE(key_in_file(), stale);
  EXPECT_FALSE(fs::exists(staged_path()));
  auto store = start();
  expect_values_open(*store);
}

}  // namespace
}  // namespace sproxy::upstream
