// Opening the embedded store: the schema and its migration, loading the in-memory mirror,
// binding the database to its key (store_key.hpp), and re-sealing it under a new key.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <string_view>
#include <system_error>

#include "upstream/crypto.hpp"
#include "upstream/embedded_store_impl.hpp"
#include "upstream/file_io.hpp"
#include "upstream/key_file.hpp"
#include "upstream/store_key.hpp"

namespace sproxy::upstream {

namespace {

// Secret scopes are stored as one comma-joined column of sorted, known scope names.
std::optional<std::vector<std::string>> split_scopes(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    const auto comma = text.find(',');
    const std::string_view part = text.substr(0, comma);
    if (!is_known_scope(part)) return std::nullopt;
    out.emplace_back(part);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  if (out.empty() || !std::is_sorted(out.begin(), out.end()) ||
      std::adjacent_find(out.begin(), out.end()) != out.end()) {
    return std::nullopt;
  }
  return out;
}

constexpr int kSchemaVersion = 2;

// Schema v1. Secrets reference their store; `value` is nonce || AES-256-GCM ciphertext ||
// tag with the secret id as associated data, so a row's value cannot be moved to another
// secret. Account ids live on stores only: a secret's account is its store's account.
constexpr const char* kSchemaV1 = R"sql(
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
)sql";

// Schema v2 adds store-wide facts by name: `key_check` holds the key check
// (store_key.hpp), which binds the database to its key.
constexpr const char* kSchemaV2 = R"sql(
CREATE TABLE meta (
  name  TEXT PRIMARY KEY NOT NULL,
  value BLOB NOT NULL
) STRICT;
)sql";

}  // namespace

void EmbeddedStore::Impl::open() {
  // No key yet is fine when there is a key file to create (bind_key decides).
  if (opt.key.size() != kAesKeyBytes && !(opt.key.empty() && !opt.key_file.empty())) {
    fail_startup("embedded store key must be 32 bytes");
  }
  if (opt.max_stores_per_account < 0 || opt.max_secrets_per_account < 0) {
    fail_startup("embedded store limits must not be negative");
  }
  if (opt.max_value_bytes == 0) fail_startup("embedded store max_value_bytes must be positive");
  if (opt.activation_delay < 0)
    fail_startup("embedded store activation delay must not be negative");
  if (opt.data_path.empty()) fail_startup("embedded store data_path is empty");

  if (opt.data_path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(opt.data_path.parent_path(), ec);
    if (ec) {
      fail_startup("cannot create directory " + opt.data_path.parent_path().string() + ": " +
                   ec.message());
    }
  }
  // Create the file owner-only before SQLite does; SQLite gives its -wal file the same mode.
  if (const int fd = ::open(opt.data_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600); fd >= 0) {
    ::close(fd);
  } else {
    const int err = errno;
    fail_startup("cannot open embedded store " + opt.data_path.string() + ": " + errno_text(err));
  }

  db.open(opt.data_path);

  // EXCLUSIVE locking: this process alone owns the file for as long as it is open, so the
  // in-memory mirror cannot go stale behind our back (a second proxy on the same file
  // fails at start-up with "database is locked"). Set before WAL so the WAL index lives
  // in process memory rather than a -shm file.
  db.exec_startup("PRAGMA locking_mode=EXCLUSIVE");
  if (db.pragma_text("PRAGMA journal_mode=WAL") != "wal") {
    fail_startup("embedded store " + opt.data_path.string() + ": cannot enable WAL mode");
  }
  db.exec_startup("PRAGMA synchronous=FULL");
  db.exec_startup("PRAGMA foreign_keys=ON");
  db.exec_startup("PRAGMA secure_delete=ON");

  if (const std::string check = db.pragma_text("PRAGMA quick_check"); check != "ok") {
    fail_startup("embedded store " + opt.data_path.string() + " is corrupt: " + check);
  }
  migrate();

  db.prepare_transactions();
  insert_store = db.prepare(
      "INSERT INTO stores (id, account_id, name, created, modified) VALUES (?, ?, ?, ?, ?)");
  delete_store = db.prepare("DELETE FROM stores WHERE id = ?");
  insert_secret = db.prepare(
      "INSERT INTO secrets (id, store_id, name, comment, scopes, created, modified, "
      "value_changed_at, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
  // value = NULL keeps the stored ciphertext (a PATCH without a new value).
  update_secret = db.prepare(
      "UPDATE secrets SET comment = ?, scopes = ?, modified = ?, value_changed_at = ?, "
      "value = COALESCE(?, value) WHERE id = ?");
  delete_secret = db.prepare("DELETE FROM secrets WHERE id = ?");
  delete_store_secrets = db.prepare("DELETE FROM secrets WHERE store_id = ?");
  select_value = db.prepare("SELECT value FROM secrets WHERE id = ?");
  put_meta = db.prepare("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)");

  load_mirror();
  bind_key();
}

void EmbeddedStore::Impl::migrate() {
  const long version = std::strtol(db.pragma_text("PRAGMA user_version").c_str(), nullptr, 10);
  if (version == kSchemaVersion) return;
  if (version > kSchemaVersion) {
    fail_startup("embedded store " + opt.data_path.string() + " has schema version " +
                 std::to_string(version) + ", newer than this binary supports (" +
                 std::to_string(kSchemaVersion) + ")");
  }
  if (version != 0 && version != 1) {
    fail_startup("embedded store " + opt.data_path.string() + " has unknown schema version " +
                 std::to_string(version));
  }
  // Schema and version land in one transaction: a crash leaves the version and tables
  // as they were.
  db.exec_startup("BEGIN IMMEDIATE");
  char* msg = nullptr;
  const std::string sql = std::string(version == 0 ? kSchemaV1 : "") + kSchemaV2 +
                          "PRAGMA user_version = " + std::to_string(kSchemaVersion) + ";";
  if (sqlite3_exec(db.get(), sql.c_str(), nullptr, nullptr, &msg) != SQLITE_OK) {
    std::string text = msg != nullptr ? msg : sqlite3_errmsg(db.get());
    sqlite3_free(msg);
    sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    fail_startup("embedded store " + opt.data_path.string() + ": creating schema: " + text);
  }
  db.exec_startup("COMMIT");
}

void EmbeddedStore::Impl::load_mirror() {
  const std::string where = "embedded store " + opt.data_path.string();
  {
    StmtPtr s = db.prepare("SELECT id, account_id, name, created, modified FROM stores");
    StmtUse use(s.get());
    int rc;
    while ((rc = use.step()) == SQLITE_ROW) {
      Store st{use.column_text(0), use.column_text(1), use.column_text(2), use.column_int(3),
               use.column_int(4)};
      if (!is_valid_id(st.id) || !is_valid_id(st.account_id)) {
        fail_startup(where + ": malformed store row " + st.id);
      }
      mirror.store_ids_by_account[st.account_id].push_back(st.id);
      std::string id = st.id;
      mirror.stores[id].store = std::move(st);
    }
    if (rc != SQLITE_DONE) db.startup_error(rc, "loading stores");
  }
  StmtPtr s = db.prepare(
      "SELECT id, store_id, name, comment, scopes, created, modified, value_changed_at "
      "FROM secrets");
  StmtUse use(s.get());
  int rc;
  while ((rc = use.step()) == SQLITE_ROW) {
    SecretRecord rec;
    rec.meta.id = use.column_text(0);
    rec.meta.store_id = use.column_text(1);
    rec.meta.name = use.column_text(2);
    if (!use.column_is_null(3)) rec.meta.comment = use.column_text(3);
    auto scopes = split_scopes(use.column_text(4));
    rec.meta.created = use.column_int(5);
    rec.meta.modified = use.column_int(6);
    rec.value_changed_at = use.column_int(7);
    auto store = mirror.stores.find(rec.meta.store_id);
    if (!is_valid_id(rec.meta.id) || !scopes || store == mirror.stores.end()) {
      fail_startup(where + ": malformed secret row " + rec.meta.id);
    }
    rec.meta.scopes = std::move(*scopes);
    store->second.ids_by_name[rec.meta.name] = rec.meta.id;
    std::string id = rec.meta.id;
    store->second.secrets.emplace(std::move(id), std::move(rec));
  }
  if (rc != SQLITE_DONE) db.startup_error(rc, "loading secrets");
}

// Checks the key against the database's key check, or records the check where there is
// none yet (see the header). Throws naming the key's source and what to do.
void EmbeddedStore::Impl::bind_key() {
  const std::optional<std::string> check = read_key_check();
  const std::size_t secrets = secret_count();
  const std::string db_name = "embedded store " + opt.data_path.string();
  if (opt.key.empty()) {
    if (check || secrets > 0) {
      fail_startup(opt.key_source + " is missing, but " + db_name + " was set up with a key (" +
                   std::to_string(secrets) +
                   " sealed values): restore the key file backed up with this database (a new "
                   "key would not open them); no key was created");
    }
    opt.key = open_or_create_key_file(opt.key_file);
  } else if (check) {
    if (key_check_opens(opt.key, *check) || finish_interrupted_rotation(*check)) return;
    fail_startup(opt.key_source + " does not match " + db_name +
                 " (its values are sealed with another key): use the key that belongs to this "
                 "database (restore the key file backed up with it); the proxy does not start "
                 "with another key");
  } else if (secrets > 0 && !key_opens_newest_value()) {
    fail_startup(opt.key_source + " does not open the values of " + db_name +
                 " (they are sealed with another key): use the key that belongs to this "
                 "database (restore the key file backed up with it)");
  }
  if (const int rc = put_key_check(opt.key); rc != SQLITE_OK) {
    db.startup_error(rc, "recording the key check");
  }
}

std::optional<std::string> EmbeddedStore::Impl::read_key_check() {
  StmtPtr s = db.prepare("SELECT value FROM meta WHERE name = 'key_check'");
  StmtUse use(s.get());
  const int rc = use.step();
  if (rc == SQLITE_DONE) return std::nullopt;
  if (rc != SQLITE_ROW) db.startup_error(rc, "reading the key check");
  return use.column_blob(0);
}

int EmbeddedStore::Impl::put_key_check(std::string_view key) {
  return StmtUse(put_meta.get()).text("key_check").blob(seal_key_check(key)).run();
}

std::size_t EmbeddedStore::Impl::secret_count() const {
  std::size_t n = 0;
  for (const auto& [id, store] : mirror.stores) n += store.secrets.size();
  return n;
}

// A database from before key checks: opening one value proves the key (AES-GCM
// authenticates). The newest, because a database whose key file was lost and recreated
// before checks existed holds older values under the lost key; the current key is the
// one its newest values were sealed with.
bool EmbeddedStore::Impl::key_opens_newest_value() {
  StmtPtr s =
      db.prepare("SELECT id, value FROM secrets ORDER BY value_changed_at DESC, id LIMIT 1");
  StmtUse use(s.get());
  const int rc = use.step();
  if (rc != SQLITE_ROW) db.startup_error(rc, "reading a sealed value");
  std::optional<std::string> plain = aes_gcm_open(opt.key, use.column_blob(1), use.column_text(0));
  if (!plain) return false;
  wipe(*plain);
  return true;
}

// True when the staged key of a rotation (store_key.hpp) opens `check`: the rotation
// committed but did not install its key file. Installs it when asked to, else refuses.
bool EmbeddedStore::Impl::finish_interrupted_rotation(const std::string& check) {
  if (opt.key_file.empty()) return false;
  const std::filesystem::path staged = staged_key_path(opt.key_file);
  std::optional<std::string> key = read_staged_key(staged);
  if (!key) return false;
  WipeOnExit wipe_staged(*key);
  if (!key_check_opens(*key, check)) return false;
  if (!opt.finish_key_rotation) {
    fail_startup(opt.key_source + " does not match embedded store " + opt.data_path.string() +
                 ", but the staged key " + staged.string() +
                 " does: a key rotation stopped after re-sealing the database; run "
                 "`secrets-proxy store rotate-key` to finish it");
  }
  install_staged_key(staged, opt.key_file);
  opt.key.swap(*key);  // the former key is wiped with *key
  finished_rotation = true;
  return true;
}

std::size_t EmbeddedStore::Impl::reseal_all(std::string& new_key) {
  const std::string where = "embedded store " + opt.data_path.string();
  if (db.broken()) throw std::runtime_error(where + ": " + *db.broken());
  std::vector<std::string> ids;
  for (const auto& [store_id, store] : mirror.stores) {
    for (const auto& [id, rec] : store.secrets) ids.push_back(id);
  }
  StmtPtr update = db.prepare("UPDATE secrets SET value = ? WHERE id = ?");
  std::optional<std::string> unopened;
  std::exception_ptr failure;
  const int rc = db.transact([&] {
    try {
      for (const auto& id : ids) {
        std::optional<std::string> plain = open_value(id);
        if (!plain) {
          unopened = id;
          return SQLITE_ABORT;
        }
        WipeOnExit wipe_plain(*plain);
        const std::string sealed = aes_gcm_seal(new_key, *plain, id);
        if (int r = StmtUse(update.get()).blob(sealed).text(id).run(); r != SQLITE_OK) return r;
      }
      return put_key_check(new_key);
    } catch (...) {
      failure = std::current_exception();  // rolled back below, then rethrown
      return SQLITE_ABORT;
    }
  });
  if (failure) std::rethrow_exception(failure);
  if (unopened) {
    throw std::runtime_error(where + ": secret " + *unopened + " does not open under " +
                             opt.key_source +
                             " (sealed with another key before key checks existed): delete it "
                             "or restore its key, then rotate again; nothing was changed");
  }
  if (rc != SQLITE_OK) {
    throw std::runtime_error(
        where + ": re-sealing under the new key " +
        (db.broken() ? std::string("may or may not have been committed (") + sqlite3_errstr(rc) +
                           "); the next start tells which key the database holds"
                     : std::string("failed (") + sqlite3_errstr(rc) + "); nothing was changed"));
  }
  opt.key.swap(new_key);  // the caller wipes the former key with new_key
  // Best effort: move the pages sealed under the former key out of the WAL now.
  sqlite3_exec(db.get(), "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr);
  return ids.size();
}

}  // namespace sproxy::upstream
