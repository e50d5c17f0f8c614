// EmbeddedStore on disk: persistence across reopening, encryption at rest, failed writes,
// start-up errors, and how the store key is resolved.
#include "tests/upstream/embedded_store_fixture.hpp"

namespace sproxy::upstream {
namespace {

using namespace embedded_testing;

// ---------------------------------------------------------------------------------------
// Persistence and encryption at rest

TEST_F(EmbeddedStorePersistence, ReopeningTheFileRestoresEveryStoreAndSecretExactly) {
  auto o = options();
  o.max_stores_per_account = 2;
  reopen(o);
  const std::string a = make_store("a", kAccount, kT0);
  const std::string b = make_store("b", kAccount, kT0 + 1);
  const std::string gone = make_store("gone", kOtherAccount, kT0 + 2);
  json items = json::array({secret_item("ONE", value_for("ONE"), json::array({"dex", "workers"})),
                            secret_item("TWO", value_for("TWO"))});
  items[0]["comment"] = "first";
  const json created = make_secrets(a, items, kT0 + 3);
  const std::string one = created[0]["id"];
  const std::string two = created[1]["id"];
  ASSERT_TRUE(
      is_success(call(Method::patch, secret_path(a, one),
                      json{{"value", value_for("ONE-v2")}, {"comment", nullptr}}.dump(), kT0 + 4)));
  ASSERT_TRUE(is_success(call(Method::post, secret_path(a, two) + "/duplicate",
                              R"({"name":"THREE","scopes":["access"]})", kT0 + 5)));
  const std::string doomed = make_secret(b, "DOOMED", kT0 + 6);
  ASSERT_TRUE(is_success(call(Method::del, secret_path(b, doomed)), 202));
  ASSERT_TRUE(is_success(call(Method::del, base(kOtherAccount) + "/stores/" + gone)));

  const Micros later = kT0 + 100;
  const auto stores_before = store_->list_stores(kAccount).value();
  const auto a_before = store_->list_secrets(kAccount, a, later).value();
  const auto b_before = store_->list_secrets(kAccount, b, later).value();
  std::vector<std::string> values_before;
  for (const auto& s : a_before)
    values_before.push_back(store_->reveal_value_for_test(a, s.id).value());

  close();
  reopen(o);

  EXPECT_EQ(store_->list_stores(kAccount).value(), stores_before);
  EXPECT_TRUE(store_->list_stores(kOtherAccount)->empty());
  const auto a_after = store_->list_secrets(kAccount, a, later).value();
  EXPECT_EQ(a_after, a_before);
  EXPECT_EQ(store_->list_secrets(kAccount, b, later).value(), b_before);
  ASSERT_EQ(a_after.size(), 3u);
  for (std::size_t i = 0; i < a_after.size(); ++i) {
    EXPECT_EQ(store_->reveal_value_for_test(a, a_after[i].id).value(), values_before[i]);
  }
  auto reloaded_one = store_->get_secret(kAccount, a, one, later);
  ASSERT_TRUE(reloaded_one.ok());
  EXPECT_EQ(reloaded_one->comment, std::nullopt);
  EXPECT_EQ(reloaded_one->scopes, (std::vector<std::string>{"dex", "workers"}));
  EXPECT_EQ(reloaded_one->created, kT0 + 3);
  EXPECT_EQ(reloaded_one->modified, kT0 + 4);
  EXPECT_EQ(store_->quota(kAccount)->usage, 3);
  // Name uniqueness and limits still hold after the reload.
  EXPECT_TRUE(is_error(
      call(Method::post, secrets_path(a), json::array({secret_item("TWO", value_for("x"))}).dump()),
      400, 1003, "secret_name_already_exists: TWO"));
  EXPECT_TRUE(is_error(call(Method::post, base() + "/stores", R"({"name":"c"})"), 400, 1003,
                       "maximum_stores_exceeded"));
}

TEST_F(EmbeddedStorePersistence, ValuesAreEncryptedAtRestUnderTheSecretId) {
  const std::string store = make_store();
  const std::string value = value_for("PLAIN");
  const std::string id = make_secrets(store, json::array({secret_item("PLAIN", value)}))[0]["id"];
  EXPECT_EQ(store_->reveal_value_for_test(store, id).value(), value);

  // While open, the value lives in the WAL or the main file; neither holds the plaintext.
  const fs::path wal = db_path().string() + "-wal";
  EXPECT_EQ(read_file(db_path()).find(value), std::string::npos);
  EXPECT_EQ(read_file(wal).find(value), std::string::npos);
  close();
  EXPECT_EQ(read_file(db_path()).find(value), std::string::npos);

  const std::string blob = RawDb(db_path()).value_of(id);
  EXPECT_EQ(blob.size(), kGcmNonceBytes + value.size() + kGcmTagBytes);
  EXPECT_EQ(blob.find(value), std::string::npos);
  EXPECT_EQ(aes_gcm_open(key_, blob, id), value);
  EXPECT_EQ(aes_gcm_open(key_, blob, std::string(32, '0')), std::nullopt);
}

TEST_F(EmbeddedStorePersistence, TamperedCiphertextFailsToOpenAndIsNeverCopied) {
  const std::string store = make_store();
  const std::string id = make_secret(store, "A");
  close();
  {
    RawDb raw(db_path());
    std::string blob = raw.value_of(id);
    ASSERT_GT(blob.size(), kGcmNonceBytes + kGcmTagBytes);
    blob[kGcmNonceBytes] = static_cast<char>(blob[kGcmNonceBytes] ^ 0x01);  // first ciphertext byte
    raw.set_value(id, blob);
  }
  reopen(options());
  auto revealed = store_->reveal_value_for_test(store, id);
  ASSERT_FALSE(revealed.ok());
  EXPECT_EQ(revealed.error(), errors::internal_error());
  // Metadata reads still work; a duplicate cannot launder the broken value.
  EXPECT_TRUE(is_success(call(Method::get, secret_path(store, id))));
  EXPECT_TRUE(is_error(call(Method::post, secret_path(store, id) + "/duplicate",
                            R"({"name":"B","scopes":["workers"]})"),
                       500, 1002, "internal_error"));
  EXPECT_EQ(usage(), 1);
}

TEST_F(EmbeddedStorePersistence, ACiphertextMovedToAnotherSecretFailsToOpen) {
  const std::string store = make_store();
  const std::string a = make_secret(store, "A");
  const std::string b = make_secret(store, "B");
  close();
  {
    RawDb raw(db_path());
    raw.set_value(b, raw.value_of(a));
  }
  reopen(options());
  EXPECT_TRUE(store_->reveal_value_for_test(store, a).ok());
  EXPECT_FALSE(store_->reveal_value_for_test(store, b).ok());
}

TEST_F(EmbeddedStorePersistence, AnotherKeyCannotOpenTheValues) {
  const std::string store = make_store();
  const std::string id = make_secret(store, "A");
  close();
  auto o = options();
  o.key = random_bytes(kAesKeyBytes);
  EXPECT_THROW(EmbeddedStore{o}, std::runtime_error);  // the key check refuses it at start
  RawDb raw(db_path());
  EXPECT_FALSE(aes_gcm_open(o.key, raw.value_of(id), id).has_value());
  EXPECT_TRUE(aes_gcm_open(key_, raw.value_of(id), id).has_value());
}

// Runs in a death-test child: caps the size any file may grow to, so the next large write
// fails on disk. Returns 0 when the store answered as expected, else prints why.
int write_under_a_file_size_cap(EmbeddedStoreOptions o, const std::string& store_id,
                                const std::string& big_value) {
  std::signal(SIGXFSZ, SIG_IGN);  // a capped write then fails with EFBIG instead of killing
  const fs::path db = o.data_path;
  EmbeddedStore s(std::move(o));  // a fresh open starts with an empty WAL
  rlimit original{};
  ::getrlimit(RLIMIT_FSIZE, &original);
  rlimit capped = original;
  capped.rlim_cur = static_cast<rlim_t>(fs::file_size(db)) + 4096;
  if (::setrlimit(RLIMIT_FSIZE, &capped) != 0) return 10;
  const std::string secrets = base() + "/stores/" + store_id + "/secrets";
  ApiResponse failed = s.handle(
      ApiRequest{Method::post, secrets, json::array({secret_item("BIG", big_value)}).dump()},
      kT0 + 1);
  ::setrlimit(RLIMIT_FSIZE, &original);
  const json body = json::parse(failed.body);
  if (failed.status != 503 || body["errors"][0]["code"] != 1002 ||
      !body["errors"][0]["message"].get<std::string>().starts_with(
          "service_unavailable: storage: ")) {
    std::fprintf(stderr, "unexpected answer to the capped write: %u %s\n", failed.status,
                 failed.body.c_str());
    return 1;
  }
  if (failed.body.find(big_value) != std::string::npos) return 2;
  if (s.list_secrets(kAccount, store_id, kT0)->size() != 1 || s.quota(kAccount)->usage != 1) {
    return 3;  // the mirror must not show the rolled-back secret
  }
  // A failed write is not fatal: once space is back, writes succeed again.
  ApiResponse after = s.handle(
      ApiRequest{Method::post, secrets, json::array({secret_item("AFTER", "small")}).dump()},
      kT0 + 2);
  if (after.status != 200) {
    std::fprintf(stderr, "write after the failure: %u %s\n", after.status, after.body.c_str());
    return 4;
  }
  return 0;
}

TEST_F(EmbeddedStorePersistence, AWriteThatFailsOnDiskRollsBackAndLeavesTheStoreUsable) {
  const std::string store = make_store();
  make_secret(store, "KEPT", kT0);
  const std::string big = value_for("BIG") + std::string(60000, 'z');
  close();
  EXPECT_EXIT(std::exit(write_under_a_file_size_cap(options(), store, big)),
              testing::ExitedWithCode(0), "");
  reopen(options());
  EXPECT_EQ(secret_names(store), (std::vector<std::string>{"KEPT", "AFTER"}));
  EXPECT_EQ(usage(), 2);
  close();
  RawDb raw(db_path());
  EXPECT_EQ(raw.text("PRAGMA integrity_check"), "ok");
}

TEST_F(EmbeddedStorePersistence, ASecondInstanceOnTheSameFileIsRefusedWhileTheFirstIsOpen) {
  make_store();
  try {
    EmbeddedStore second(options());
    FAIL() << "a second instance opened the same database";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("locked"), std::string::npos) << e.what();
  }
  EXPECT_EQ(store_->list_stores(kAccount)->size(), 1u);
  EXPECT_TRUE(is_success(call(Method::post, base(kOtherAccount) + "/stores", R"({"name":"x"})")));
}

TEST_F(EmbeddedStorePersistence, UsesWalFullSyncAndOwnerOnlyPermissions) {
  make_store();
  struct stat st {};
  ASSERT_EQ(::stat(db_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  close();
  RawDb raw(db_path());
  EXPECT_EQ(raw.text("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(raw.text("PRAGMA user_version"), "2");
  EXPECT_EQ(raw.text("PRAGMA integrity_check"), "ok");
}

TEST_F(EmbeddedStorePersistence, ANewerSchemaVersionIsAStartUpError) {
  close();
  {
    RawDb raw(db_path());
    raw.exec("PRAGMA user_version = 3");
  }
  try {
    EmbeddedStore s(options());
    FAIL() << "opened a database from the future";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("schema version 3"), std::string::npos) << e.what();
  }
}

TEST_F(EmbeddedStorePersistence, AFileThatIsNotADatabaseIsAStartUpError) {
  close();
  const fs::path bad = dir_.path() / "garbage.db";
  write_file(bad, std::string(8192, 'g'), 0600);
  auto o = options();
  o.data_path = bad;
  EXPECT_THROW(EmbeddedStore{o}, std::runtime_error);
}

TEST_F(EmbeddedStorePersistence, AKeyOfTheWrongLengthIsAStartUpError) {
  close();
  auto o = options();
  o.key = "short";
  EXPECT_THROW(EmbeddedStore{o}, std::runtime_error);
}

// ---------------------------------------------------------------------------------------
// Key resolution

using EmbeddedStoreKey = test::StoreKeyFixture;

TEST_F(EmbeddedStoreKey, CreatesAKeyFileWithMode0600OnFirstUseAndReusesIt) {
  {
    EmbeddedStore created(embedded_store_options(cfg_));  // a new database: creates the key file
  }
  const EmbeddedStoreOptions first = embedded_store_options(cfg_);
  EXPECT_EQ(first.key.size(), kAesKeyBytes);
  struct stat st {};
  ASSERT_EQ(::stat(cfg_.key_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string content = read_file(cfg_.key_file);
  ASSERT_EQ(content.size(), 65u);
  EXPECT_EQ(content.back(), '\n');
  EXPECT_EQ(from_hex(content.substr(0, 64)), first.key);
  // Written to a temp file and linked into place: nothing else is left beside it.
  std::vector<std::string> beside;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::filesystem::path(cfg_.key_file).parent_path())) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(std::filesystem::path(cfg_.key_file).filename().string(), 0) == 0) {
      beside.push_back(name);
    }
  }
  EXPECT_EQ(beside.size(), 1u) << "key file and leftovers: " << ::testing::PrintToString(beside);

  const EmbeddedStoreOptions second = embedded_store_options(cfg_);
  EXPECT_EQ(second.key, first.key);
  EXPECT_EQ(read_file(cfg_.key_file), content);

  // A store sealed with the first key opens with the reused one.
  std::string secret_id;
  std::string store_id;
  {
    EmbeddedStore s(first);
    store_id = s.create_store(kAccount, {"main"}, kT0)->id;
    secret_id = s.create_secrets(kAccount, store_id, {{"A", "hello", {"dex"}, {}}}, kT0)->at(0).id;
  }
  EmbeddedStore again(second);
  EXPECT_EQ(again.reveal_value_for_test(store_id, secret_id).value(), "hello");
}

TEST_F(EmbeddedStoreKey, AcceptsAKeyFileWithoutTrailingNewline) {
  const std::string key = random_bytes(kAesKeyBytes);
  fs::create_directories(fs::path(cfg_.key_file).parent_path());
  write_file(cfg_.key_file, to_hex(key), 0600);
  EXPECT_EQ(embedded_store_options(cfg_).key, key);
}

TEST_F(EmbeddedStoreKey, TheEnvironmentVariableTakesPrecedenceOverTheKeyFile) {
  const std::string key = random_bytes(kAesKeyBytes);
  ::setenv(env_.c_str(), to_hex(key).c_str(), 1);
  EXPECT_EQ(embedded_store_options(cfg_).key, key);
  EXPECT_FALSE(fs::exists(cfg_.key_file));
}

TEST_F(EmbeddedStoreKey, AMalformedEnvironmentKeyIsAStartUpError) {
  for (const std::string& bad :
       {std::string(), std::string(63, 'a'), std::string(66, 'a'), std::string(63, 'a') + "g"}) {
    ::setenv(env_.c_str(), bad.c_str(), 1);
    const std::string err = options_error();
    EXPECT_NE(err.find(env_), std::string::npos) << err;
    EXPECT_NE(err.find("64 hex"), std::string::npos) << err;
  }
  EXPECT_FALSE(fs::exists(cfg_.key_file));
}

TEST_F(EmbeddedStoreKey, AKeyFileWithWrongContentIsAStartUpError) {
  fs::create_directories(fs::path(cfg_.key_file).parent_path());
  const std::string hex = to_hex(random_bytes(kAesKeyBytes));
  for (const std::string& bad : {std::string(), hex.substr(0, 62) + "\n", hex + "\n\n", hex + "00",
                                 " " + hex, hex.substr(0, 63) + "x"}) {
    write_file(cfg_.key_file, bad, 0600);
    const std::string err = options_error();
    EXPECT_NE(err.find(cfg_.key_file), std::string::npos) << err;
    EXPECT_NE(err.find("64 hex"), std::string::npos) << err;
    // The message never echoes key material.
    EXPECT_EQ(err.find(hex.substr(0, 16)), std::string::npos) << err;
  }
}

TEST_F(EmbeddedStoreKey, AKeyFileOpenToGroupOrOthersIsAStartUpError) {
  fs::create_directories(fs::path(cfg_.key_file).parent_path());
  for (mode_t mode : {0640, 0604, 0660, 0644}) {
    write_file(cfg_.key_file, to_hex(random_bytes(kAesKeyBytes)) + "\n", mode);
    const std::string err = options_error();
    EXPECT_NE(err.find(cfg_.key_file), std::string::npos) << err;
    EXPECT_NE(err.find("chmod 600"), std::string::npos) << err;
  }
  ::chmod(cfg_.key_file.c_str(), 0400);
  EXPECT_EQ(options_error(), "");
}

TEST_F(EmbeddedStoreKey, OptionsCarryTheConfiguredLimitsAndDelay) {
  cfg_.max_stores_per_account = 4;
  cfg_.max_secrets_per_account = 250;
  cfg_.max_value_bytes = 1024;
  cfg_.activation_delay_ms = 1500;
  const EmbeddedStoreOptions o = embedded_store_options(cfg_);
  EXPECT_EQ(o.data_path, fs::path(cfg_.data_path));
  EXPECT_EQ(o.max_stores_per_account, 4);
  EXPECT_EQ(o.max_secrets_per_account, 250);
  EXPECT_EQ(o.max_value_bytes, 1024u);
  EXPECT_EQ(o.activation_delay, 1'500'000);
}

}  // namespace
}  // namespace sproxy::upstream
