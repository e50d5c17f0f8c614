#include "upstream/embedded_store.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "upstream/crypto.hpp"
#include "upstream/file_io.hpp"
#include "upstream/key_file.hpp"
#include "upstream/sqlite_db.hpp"
#include "upstream/store_key.hpp"

namespace sproxy::upstream {

namespace {

// ---------------------------------------------------------------------------------------
// Small helpers

void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
}

// Wipes a plaintext buffer when the scope ends, whatever path leaves it.
class WipeOnExit {
 public:
  explicit WipeOnExit(std::string& s) : s_(s) {}
  ~WipeOnExit() { wipe(s_); }
  WipeOnExit(const WipeOnExit&) = delete;
  WipeOnExit& operator=(const WipeOnExit&) = delete;

 private:
  std::string& s_;
};

// Secret scopes are stored as one comma-joined column of sorted, known scope names.
std::string join_scopes(const std::vector<std::string>& scopes) {
  std::string out;
  for (const auto& s : scopes) {
    if (!out.empty()) out += ',';
    out += s;
  }
  return out;
}

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

// Typed callers may bypass the body parsers; the store re-checks the rules it relies on.
Result<std::vector<std::string>> normalize_scopes(std::vector<std::string> scopes) {
  if (scopes.empty()) return errors::validation("secret_scope_invalid");
  for (const auto& s : scopes) {
    if (!is_known_scope(s)) return errors::validation("secret_scope_invalid");
  }
  sort_unique(scopes);
  return scopes;
}

Status check_comment(const std::optional<std::string>& comment) {
  if (comment && comment->size() > kMaxCommentBytes) {
    return errors::validation("secret_comment_too_long");
  }
  return Ok{};
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

// ---------------------------------------------------------------------------------------
// In-memory mirror of all metadata (never values).

struct SecretRecord {
  Secret meta;  // `status` is computed on every read from value_changed_at
  Micros value_changed_at = 0;
};

struct StoreRecord {
  Store store;
  std::unordered_map<std::string, SecretRecord> secrets;  // by secret id
  std::unordered_map<std::string, std::string> ids_by_name;
};

struct Mirror {
  std::unordered_map<std::string, StoreRecord> stores;  // by store id
  std::unordered_map<std::string, std::vector<std::string>> store_ids_by_account;
};

bool by_created_then_id(const auto& a, const auto& b) {
  return a.created != b.created ? a.created < b.created : a.id < b.id;
}

// ---------------------------------------------------------------------------------------
// Responses

ApiResponse error_response(const ApiError& e) {
  ApiResponse r;
  r.status = e.status;
  r.body = envelope_error(e);
  if (e.retry_after_seconds) r.retry_after = std::to_string(*e.retry_after_seconds);
  return r;
}

ApiResponse success_response(unsigned status, const nlohmann::json& result) {
  ApiResponse r;
  r.status = status;
  r.body = envelope_success(result);
  return r;
}

nlohmann::json secrets_json(const std::vector<Secret>& secrets) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& s : secrets) arr.push_back(to_json(s));
  return arr;
}

}  // namespace

// =======================================================================================

EmbeddedStoreOptions embedded_store_options(const config::EmbeddedStoreConfig& cfg) {
  EmbeddedStoreOptions o;
  o.data_path = cfg.data_path;
  if (std::optional<std::string> key = key_from_env(cfg)) {
    o.key = std::move(*key);
    o.key_source = "store key environment variable " + cfg.key_env;
  } else {
    require_key_file_setting(cfg);
    o.key_file = cfg.key_file;
    o.key_source = "store key file " + cfg.key_file;
    o.key = open_key_file(o.key_file).value_or(std::string());
  }
  o.max_stores_per_account = cfg.max_stores_per_account;
  o.max_secrets_per_account = cfg.max_secrets_per_account;
  o.max_value_bytes = cfg.max_value_bytes;
  o.activation_delay = cfg.activation_delay_ms * 1000;
  return o;
}

struct EmbeddedStore::Impl {
  EmbeddedStoreOptions opt;
  SqliteDb db;
  StmtPtr insert_store, delete_store, insert_secret, update_secret, delete_secret,
      delete_store_secrets, select_value, put_meta;

  // Writers are serialised by write_mu for the whole operation (validation against the
  // mirror, transaction, apply); it also guards the connection and its statements.
  // Readers only take mirror_mu shared, which a writer takes exclusively just to apply an
  // already committed change, so reads never wait for a disk sync. A writer reads the
  // mirror without mirror_mu: only writers change it, and they are serialised.
  std::mutex write_mu;
  mutable std::shared_mutex mirror_mu;
  Mirror mirror;
  // Opening installed the staged key of an interrupted rotation (opt.finish_key_rotation).
  bool finished_rotation = false;

  explicit Impl(EmbeddedStoreOptions o)
      : opt(std::move(o)), db("embedded store " + opt.data_path.string()) {}
  ~Impl() { wipe(opt.key); }

  // ----- start-up

  void open() {
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

  void migrate() {
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

  void load_mirror() {
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

  // ----- the key (start-up)

  // Checks the key against the database's key check, or records the check where there is
  // none yet (see the header). Throws naming the key's source and what to do.
  void bind_key() {
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

  std::optional<std::string> read_key_check() {
    StmtPtr s = db.prepare("SELECT value FROM meta WHERE name = 'key_check'");
    StmtUse use(s.get());
    const int rc = use.step();
    if (rc == SQLITE_DONE) return std::nullopt;
    if (rc != SQLITE_ROW) db.startup_error(rc, "reading the key check");
    return use.column_blob(0);
  }

  int put_key_check(std::string_view key) {
    return StmtUse(put_meta.get()).text("key_check").blob(seal_key_check(key)).run();
  }

  std::size_t secret_count() const {
    std::size_t n = 0;
    for (const auto& [id, store] : mirror.stores) n += store.secrets.size();
    return n;
  }

  // A database from before key checks: opening one value proves the key (AES-GCM
  // authenticates). The newest, because a database whose key file was lost and recreated
  // before checks existed holds older values under the lost key; the current key is the
  // one its newest values were sealed with.
  bool key_opens_newest_value() {
    StmtPtr s =
        db.prepare("SELECT id, value FROM secrets ORDER BY value_changed_at DESC, id LIMIT 1");
    StmtUse use(s.get());
    const int rc = use.step();
    if (rc != SQLITE_ROW) db.startup_error(rc, "reading a sealed value");
    std::optional<std::string> plain =
        aes_gcm_open(opt.key, use.column_blob(1), use.column_text(0));
    if (!plain) return false;
    wipe(*plain);
    return true;
  }

  // True when the staged key of a rotation (store_key.hpp) opens `check`: the rotation
  // committed but did not install its key file. Installs it when asked to, else refuses.
  bool finish_interrupted_rotation(const std::string& check) {
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

  // ----- rotation (caller holds write_mu)

  std::size_t reseal_all(std::string& new_key) {
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

  // ----- lookups (caller holds write_mu or mirror_mu)

  const StoreRecord* find_store(const std::string& account_id, const std::string& store_id) const {
    auto it = mirror.stores.find(store_id);
    if (it == mirror.stores.end() || it->second.store.account_id != account_id) return nullptr;
    return &it->second;
  }
  StoreRecord* find_store(const std::string& account_id, const std::string& store_id) {
    return const_cast<StoreRecord*>(std::as_const(*this).find_store(account_id, store_id));
  }

  long account_secret_count(const std::string& account_id) const {
    long n = 0;
    if (auto it = mirror.store_ids_by_account.find(account_id);
        it != mirror.store_ids_by_account.end()) {
      for (const auto& id : it->second) n += static_cast<long>(mirror.stores.at(id).secrets.size());
    }
    return n;
  }

  long account_store_count(const std::string& account_id) const {
    auto it = mirror.store_ids_by_account.find(account_id);
    return it == mirror.store_ids_by_account.end() ? 0 : static_cast<long>(it->second.size());
  }

  Secret view(const SecretRecord& rec, Micros now) const {
    Secret s = rec.meta;
    s.status = now >= rec.value_changed_at + opt.activation_delay ? SecretStatus::active
                                                                  : SecretStatus::pending;
    return s;
  }

  // ----- writes (caller holds write_mu)

  std::optional<ApiError> refuse_if_broken() const {
    if (db.broken()) return errors::service_unavailable(*db.broken());
    return std::nullopt;
  }

  ApiError storage_error(int rc) const {
    return errors::service_unavailable(std::string("storage: ") + sqlite3_errstr(rc));
  }

  int insert_secret_row(const SecretRecord& rec, const std::string& sealed) {
    return StmtUse(insert_secret.get())
        .text(rec.meta.id)
        .text(rec.meta.store_id)
        .text(rec.meta.name)
        .text_or_null(rec.meta.comment)
        .text(join_scopes(rec.meta.scopes))
        .integer(rec.meta.created)
        .integer(rec.meta.modified)
        .integer(rec.value_changed_at)
        .blob(sealed)
        .run();
  }

  // Reads and decrypts a stored value; the caller wipes the result.
  std::optional<std::string> open_value(const std::string& secret_id) {
    StmtUse use(select_value.get());
    use.text(secret_id);
    if (use.step() != SQLITE_ROW) return std::nullopt;
    return aes_gcm_open(opt.key, use.column_blob(0), secret_id);
  }

  void add_to_mirror(StoreRecord& store, SecretRecord rec) {
    store.ids_by_name[rec.meta.name] = rec.meta.id;
    std::string id = rec.meta.id;
    store.secrets.insert_or_assign(std::move(id), std::move(rec));
  }

  void erase_from_mirror(StoreRecord& store, const std::string& secret_id) {
    auto it = store.secrets.find(secret_id);
    if (it == store.secrets.end()) return;
    store.ids_by_name.erase(it->second.meta.name);
    store.secrets.erase(it);
  }
};

// =======================================================================================
// EmbeddedStore

EmbeddedStore::EmbeddedStore(EmbeddedStoreOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {
  wipe(options.key);  // moved-from, but a short-string buffer may still hold bytes
  impl_->open();
}

EmbeddedStore::~EmbeddedStore() = default;

Result<std::vector<Store>> EmbeddedStore::list_stores(const std::string& account_id) const {
  std::shared_lock lock(impl_->mirror_mu);
  std::vector<Store> out;
  if (auto it = impl_->mirror.store_ids_by_account.find(account_id);
      it != impl_->mirror.store_ids_by_account.end()) {
    for (const auto& id : it->second) out.push_back(impl_->mirror.stores.at(id).store);
  }
  std::sort(out.begin(), out.end(),
            [](const Store& a, const Store& b) { return by_created_then_id(a, b); });
  return out;
}

// Store names need not be unique within an account (decision): the contract gives no
// uniqueness rule or error for stores, Cloudflare identifies stores by id only, and the
// default limit of one store per account makes a clash moot in practice.
Result<Store> EmbeddedStore::create_store(const std::string& account_id, const StoreCreate& in,
                                          Micros now) {
  if (auto v = validate_name(in.name); !v) return v.error();
  std::lock_guard write(impl_->write_mu);
  if (auto e = impl_->refuse_if_broken()) return *e;
  if (impl_->account_store_count(account_id) >= impl_->opt.max_stores_per_account) {
    return errors::maximum_stores_exceeded();
  }
  Store st{new_id(), account_id, in.name, now, now};
  const int rc = impl_->db.transact([&] {
    return StmtUse(impl_->insert_store.get())
        .text(st.id)
        .text(st.account_id)
        .text(st.name)
        .integer(st.created)
        .integer(st.modified)
        .run();
  });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  std::unique_lock apply(impl_->mirror_mu);
  impl_->mirror.store_ids_by_account[account_id].push_back(st.id);
  impl_->mirror.stores[st.id].store = st;
  return st;
}

Result<Store> EmbeddedStore::get_store(const std::string& account_id,
                                       const std::string& store_id) const {
  std::shared_lock lock(impl_->mirror_mu);
  const StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  return store->store;
}

Status EmbeddedStore::delete_store(const std::string& account_id, const std::string& store_id,
                                   bool force) {
  std::lock_guard write(impl_->write_mu);
  const StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  if (!store->secrets.empty() && !force) return errors::store_not_empty();
  if (auto e = impl_->refuse_if_broken()) return *e;
  const int rc = impl_->db.transact([&] {
    if (int r = StmtUse(impl_->delete_store_secrets.get()).text(store_id).run(); r != SQLITE_OK) {
      return r;
    }
    return StmtUse(impl_->delete_store.get()).text(store_id).run();
  });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  std::unique_lock apply(impl_->mirror_mu);
  auto& ids = impl_->mirror.store_ids_by_account[account_id];
  ids.erase(std::remove(ids.begin(), ids.end(), store_id), ids.end());
  if (ids.empty()) impl_->mirror.store_ids_by_account.erase(account_id);
  impl_->mirror.stores.erase(store_id);
  return Ok{};
}

Result<std::vector<Secret>> EmbeddedStore::list_secrets(const std::string& account_id,
                                                        const std::string& store_id,
                                                        Micros now) const {
  std::shared_lock lock(impl_->mirror_mu);
  const StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  std::vector<Secret> out;
  out.reserve(store->secrets.size());
  for (const auto& [id, rec] : store->secrets) out.push_back(impl_->view(rec, now));
  std::sort(out.begin(), out.end(),
            [](const Secret& a, const Secret& b) { return by_created_then_id(a, b); });
  return out;
}

Result<std::vector<Secret>> EmbeddedStore::create_secrets(const std::string& account_id,
                                                          const std::string& store_id,
                                                          std::vector<SecretCreate> in,
                                                          Micros now) {
  // Plaintext values are wiped however this function returns.
  struct WipeAll {
    std::vector<SecretCreate>& items;
    ~WipeAll() {
      for (auto& item : items) wipe(item.value);
    }
  } wipe_all{in};

  std::lock_guard write(impl_->write_mu);
  StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  if (in.empty()) return errors::invalid_json_body();

  // Validate the whole batch before touching anything: all-or-nothing.
  std::unordered_set<std::string_view> batch_names;
  for (auto& item : in) {
    if (auto v = validate_name(item.name); !v) return v.error();
    if (auto v = validate_value(item.value, impl_->opt.max_value_bytes); !v) return v.error();
    auto scopes = normalize_scopes(std::move(item.scopes));
    if (!scopes) return scopes.error();
    item.scopes = std::move(*scopes);
    if (auto v = check_comment(item.comment); !v) return v.error();
    if (store->ids_by_name.contains(item.name) || !batch_names.insert(item.name).second) {
      return errors::name_taken(item.name);
    }
  }
  const long max = impl_->opt.max_secrets_per_account;
  if (impl_->account_secret_count(account_id) + static_cast<long>(in.size()) > max) {
    return errors::maximum_secrets_exceeded(max);
  }
  if (auto e = impl_->refuse_if_broken()) return *e;

  std::vector<SecretRecord> records;
  std::vector<std::string> sealed;
  records.reserve(in.size());
  sealed.reserve(in.size());
  for (auto& item : in) {
    SecretRecord rec;
    // Ids are 122 random bits; a collision would fail the PRIMARY KEY and the whole batch.
    rec.meta.id = new_id();
    rec.meta.store_id = store_id;
    rec.meta.name = item.name;
    rec.meta.comment = item.comment;
    rec.meta.scopes = item.scopes;
    rec.meta.status = SecretStatus::pending;
    rec.meta.created = rec.meta.modified = rec.value_changed_at = now;
    sealed.push_back(aes_gcm_seal(impl_->opt.key, item.value, rec.meta.id));
    wipe(item.value);
    records.push_back(std::move(rec));
  }

  const int rc = impl_->db.transact([&] {
    for (std::size_t i = 0; i < records.size(); ++i) {
      if (int r = impl_->insert_secret_row(records[i], sealed[i]); r != SQLITE_OK) return r;
    }
    return SQLITE_OK;
  });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  // A create always answers `pending` (decision), whatever the activation delay.
  std::vector<Secret> out;
  out.reserve(records.size());
  for (const auto& rec : records) out.push_back(rec.meta);
  std::unique_lock apply(impl_->mirror_mu);
  for (auto& rec : records) impl_->add_to_mirror(*store, std::move(rec));
  return out;
}

Result<Secret> EmbeddedStore::get_secret(const std::string& account_id, const std::string& store_id,
                                         const std::string& secret_id, Micros now) const {
  std::shared_lock lock(impl_->mirror_mu);
  const StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  auto it = store->secrets.find(secret_id);
  if (it == store->secrets.end()) return errors::secret_not_found();
  return impl_->view(it->second, now);
}

Result<Secret> EmbeddedStore::patch_secret(const std::string& account_id,
                                           const std::string& store_id,
                                           const std::string& secret_id, SecretPatch in,
                                           Micros now) {
  std::string no_value;
  std::string& plaintext = in.value ? *in.value : no_value;
  WipeOnExit wipe_plaintext(plaintext);

  std::lock_guard write(impl_->write_mu);
  StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  auto it = store->secrets.find(secret_id);
  if (it == store->secrets.end()) return errors::secret_not_found();
  // An empty PATCH changes nothing, not even `modified` (decision).
  if (in.empty()) return impl_->view(it->second, now);

  SecretRecord rec = it->second;
  std::optional<std::string> sealed;
  if (in.value) {
    if (auto v = validate_value(plaintext, impl_->opt.max_value_bytes); !v) return v.error();
  }
  if (in.scopes) {
    auto scopes = normalize_scopes(std::move(*in.scopes));
    if (!scopes) return scopes.error();
    rec.meta.scopes = std::move(*scopes);
  }
  if (in.comment) {
    if (auto v = check_comment(*in.comment); !v) return v.error();
    rec.meta.comment = *in.comment;
  }
  if (auto e = impl_->refuse_if_broken()) return *e;
  rec.meta.modified = now;
  if (in.value) {
    rec.value_changed_at = now;
    sealed = aes_gcm_seal(impl_->opt.key, plaintext, secret_id);
    wipe(plaintext);
  }

  const int rc = impl_->db.transact([&] {
    return StmtUse(impl_->update_secret.get())
        .text_or_null(rec.meta.comment)
        .text(join_scopes(rec.meta.scopes))
        .integer(rec.meta.modified)
        .integer(rec.value_changed_at)
        .blob_or_null(sealed)
        .text(secret_id)
        .run();
  });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  Secret out = impl_->view(rec, now);
  if (in.value) out.status = SecretStatus::pending;  // a new value always answers pending
  std::unique_lock apply(impl_->mirror_mu);
  it->second = std::move(rec);
  return out;
}

Status EmbeddedStore::delete_secret(const std::string& account_id, const std::string& store_id,
                                    const std::string& secret_id) {
  std::lock_guard write(impl_->write_mu);
  StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  if (!store->secrets.contains(secret_id)) return errors::secret_not_found();
  if (auto e = impl_->refuse_if_broken()) return *e;
  const int rc =
      impl_->db.transact([&] { return StmtUse(impl_->delete_secret.get()).text(secret_id).run(); });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  std::unique_lock apply(impl_->mirror_mu);
  impl_->erase_from_mirror(*store, secret_id);
  return Ok{};
}

Status EmbeddedStore::bulk_delete(const std::string& account_id, const std::string& store_id,
                                  const BulkDelete& in) {
  std::lock_guard write(impl_->write_mu);
  StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  if (in.ids.empty()) return errors::invalid_json_body();
  // All ids must exist in this store, or nothing is deleted (decision). Repeats are one.
  std::vector<std::string> ids = in.ids;
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (const auto& id : ids) {
    if (!store->secrets.contains(id)) return errors::secret_not_found();
  }
  if (auto e = impl_->refuse_if_broken()) return *e;
  const int rc = impl_->db.transact([&] {
    for (const auto& id : ids) {
      if (int r = StmtUse(impl_->delete_secret.get()).text(id).run(); r != SQLITE_OK) return r;
    }
    return SQLITE_OK;
  });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  std::unique_lock apply(impl_->mirror_mu);
  for (const auto& id : ids) impl_->erase_from_mirror(*store, id);
  return Ok{};
}

Result<Secret> EmbeddedStore::duplicate_secret(const std::string& account_id,
                                               const std::string& store_id,
                                               const std::string& secret_id,
                                               const SecretDuplicate& in, Micros now) {
  std::lock_guard write(impl_->write_mu);
  StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  if (!store->secrets.contains(secret_id)) return errors::secret_not_found();
  if (auto v = validate_name(in.name); !v) return v.error();
  auto scopes = normalize_scopes(in.scopes);
  if (!scopes) return scopes.error();
  if (auto v = check_comment(in.comment); !v) return v.error();
  if (store->ids_by_name.contains(in.name)) return errors::name_taken(in.name);
  const long max = impl_->opt.max_secrets_per_account;
  if (impl_->account_secret_count(account_id) + 1 > max) {
    return errors::maximum_secrets_exceeded(max);
  }
  if (auto e = impl_->refuse_if_broken()) return *e;

  SecretRecord rec;
  rec.meta.id = new_id();
  rec.meta.store_id = store_id;
  rec.meta.name = in.name;
  rec.meta.comment = in.comment;
  rec.meta.scopes = std::move(*scopes);
  rec.meta.status = SecretStatus::pending;
  rec.meta.created = rec.meta.modified = rec.value_changed_at = now;

  // The value is copied server-side: opened under the source id, sealed again under the
  // new id with a fresh nonce, and the plaintext wiped.
  std::optional<std::string> plaintext = impl_->open_value(secret_id);
  if (!plaintext) return errors::internal_error();  // stored value fails authentication
  std::string sealed;
  {
    WipeOnExit wipe_plaintext(*plaintext);
    sealed = aes_gcm_seal(impl_->opt.key, *plaintext, rec.meta.id);
  }

  const int rc = impl_->db.transact([&] { return impl_->insert_secret_row(rec, sealed); });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  Secret out = rec.meta;
  std::unique_lock apply(impl_->mirror_mu);
  impl_->add_to_mirror(*store, std::move(rec));
  return out;
}

std::size_t EmbeddedStore::reseal_all(std::string new_key) {
  WipeOnExit wipe_key(new_key);
  if (new_key.size() != kAesKeyBytes) throw std::invalid_argument("reseal_all needs a 32-byte key");
  std::lock_guard write(impl_->write_mu);
  return impl_->reseal_all(new_key);
}

bool EmbeddedStore::finished_key_rotation() const { return impl_->finished_rotation; }

Result<Quota> EmbeddedStore::quota(const std::string& account_id) const {
  std::shared_lock lock(impl_->mirror_mu);
  return Quota{impl_->opt.max_secrets_per_account, impl_->account_secret_count(account_id)};
}

Result<std::string> EmbeddedStore::reveal_value_for_test(const std::string& store_id,
                                                         const std::string& secret_id) const {
  std::lock_guard write(impl_->write_mu);
  auto store = impl_->mirror.stores.find(store_id);
  if (store == impl_->mirror.stores.end()) return errors::store_not_found();
  if (!store->second.secrets.contains(secret_id)) return errors::secret_not_found();
  std::optional<std::string> value = impl_->open_value(secret_id);
  if (!value) return errors::internal_error();
  return std::move(*value);
}

// ---------------------------------------------------------------------------------------
// Request handling

namespace {

// Routing and body parsing around the typed API. The store is checked before anything
// else under it (contract), then the secret, then the query or body.
ApiResponse dispatch(EmbeddedStore& store, const ApiRequest& request, std::size_t max_value_bytes,
                     Micros now) {
  auto route = parse_route(request.method, request.target);
  if (!route) return error_response(route.error());
  const Route& r = *route;

  const bool under_store = !r.store_id.empty();
  if (under_store) {
    if (auto st = store.get_store(r.account_id, r.store_id); !st) return error_response(st.error());
  }
  // Bodies are parsed only once the secret they address is known to exist.
  if (r.kind == RouteKind::patch_secret || r.kind == RouteKind::duplicate) {
    if (auto s = store.get_secret(r.account_id, r.store_id, r.secret_id, now); !s) {
      return error_response(s.error());
    }
  }

  switch (r.kind) {
    case RouteKind::list_stores: {
      auto q = parse_store_list_query(r.query);
      if (!q) return error_response(q.error());
      auto stores = store.list_stores(r.account_id);
      if (!stores) return error_response(stores.error());
      return ApiResponse{200, list_envelope(query_stores(*stores, *q))};
    }
    case RouteKind::create_store: {
      auto in = parse_store_create(request.body);
      if (!in) return error_response(in.error());
      auto st = store.create_store(r.account_id, *in, now);
      if (!st) return error_response(st.error());
      return success_response(200, to_json(*st));
    }
    case RouteKind::get_store: {
      auto st = store.get_store(r.account_id, r.store_id);
      if (!st) return error_response(st.error());
      return success_response(200, to_json(*st));
    }
    case RouteKind::delete_store: {
      const std::string* force = r.query.find("force");
      auto done =
          store.delete_store(r.account_id, r.store_id, force != nullptr && *force == "true");
      if (!done) return error_response(done.error());
      return success_response(200, nullptr);
    }
    case RouteKind::list_secrets: {
      auto q = parse_secret_list_query(r.query);
      if (!q) return error_response(q.error());
      auto secrets = store.list_secrets(r.account_id, r.store_id, now);
      if (!secrets) return error_response(secrets.error());
      return ApiResponse{200, list_envelope(query_secrets(*secrets, *q))};
    }
    case RouteKind::create_secrets: {
      auto in = parse_secret_create(request.body, max_value_bytes);
      if (!in) return error_response(in.error());
      auto created = store.create_secrets(r.account_id, r.store_id, std::move(*in), now);
      if (!created) return error_response(created.error());
      return success_response(200, secrets_json(*created));
    }
    case RouteKind::bulk_delete: {
      auto in = parse_bulk_delete(request.body);
      if (!in) return error_response(in.error());
      auto done = store.bulk_delete(r.account_id, r.store_id, *in);
      if (!done) return error_response(done.error());
      return success_response(202, nullptr);
    }
    case RouteKind::get_secret: {
      auto s = store.get_secret(r.account_id, r.store_id, r.secret_id, now);
      if (!s) return error_response(s.error());
      return success_response(200, to_json(*s));
    }
    case RouteKind::patch_secret: {
      auto in = parse_secret_patch(request.body, max_value_bytes);
      if (!in) return error_response(in.error());
      auto s = store.patch_secret(r.account_id, r.store_id, r.secret_id, std::move(*in), now);
      if (!s) return error_response(s.error());
      return success_response(200, to_json(*s));
    }
    case RouteKind::delete_secret: {
      auto done = store.delete_secret(r.account_id, r.store_id, r.secret_id);
      if (!done) return error_response(done.error());
      return success_response(202, nullptr);
    }
    case RouteKind::duplicate: {
      auto in = parse_secret_duplicate(request.body);
      if (!in) return error_response(in.error());
      auto s = store.duplicate_secret(r.account_id, r.store_id, r.secret_id, *in, now);
      if (!s) return error_response(s.error());
      return success_response(200, to_json(*s));
    }
    case RouteKind::get_quota: {
      auto q = store.quota(r.account_id);
      if (!q) return error_response(q.error());
      return success_response(200, to_json(*q));
    }
  }
  return error_response(errors::no_route());
}

}  // namespace

ApiResponse EmbeddedStore::handle(const ApiRequest& request, Micros now) {
  try {
    return dispatch(*this, request, impl_->opt.max_value_bytes, now);
  } catch (const std::exception&) {
    // Only OpenSSL/SQLite failures or allocation failure get here; the message is not
    // echoed because nothing guarantees it is free of request data.
    return error_response(errors::internal_error());
  }
}

// =======================================================================================
// EmbeddedUpstream

namespace {

Micros system_now() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Runs `fn` on `worker` and completes with its ApiResponse on the completion handler's
// associated executor (for a coroutine: the caller's executor). The caller's executor is
// kept busy (outstanding work) until the result is delivered.
template <class Executor, class Fn, class Token>
auto async_run_on(Executor worker, Fn fn, Token&& token) {
  return boost::asio::async_initiate<Token, void(ApiResponse)>(
      [](auto handler, Executor worker, Fn fn) {
        auto caller = boost::asio::prefer(boost::asio::get_associated_executor(handler),
                                          boost::asio::execution::outstanding_work.tracked);
        boost::asio::post(worker, [handler = std::move(handler), fn = std::move(fn),
                                   caller = std::move(caller)]() mutable {
          ApiResponse response;
          try {
            response = fn();
          } catch (...) {
            response = error_response(errors::internal_error());
          }
          // The tracked executor (the caller's outstanding work) moves into the completion,
          // so it is released on the caller's own thread after the handler ran: once the
          // completion is posted, this worker holds nothing of the caller's context, which
          // may be gone as soon as the handler returns.
          auto target = boost::asio::prefer(caller, boost::asio::execution::outstanding_work.untracked);
          boost::asio::post(target, [handler = std::move(handler), response = std::move(response),
                                     work = std::move(caller)]() mutable {
            std::move(handler)(std::move(response));
          });
        });
      },
      token, std::move(worker), std::move(fn));
}

}  // namespace

struct EmbeddedUpstream::Worker {
  boost::asio::thread_pool pool{1};
};

EmbeddedUpstream::EmbeddedUpstream(std::shared_ptr<EmbeddedStore> store)
    : store_(std::move(store)), worker_(std::make_unique<Worker>()) {
  if (!store_) throw std::invalid_argument("EmbeddedUpstream needs a store");
}

EmbeddedUpstream::~EmbeddedUpstream() {
  // Finish queued calls (their results go to the callers' executors) before the thread ends.
  worker_->pool.join();
}

boost::asio::awaitable<CallResult> EmbeddedUpstream::call(ApiRequest request) {
  // A named job rather than a temporary inside the co_await expression: GCC 12 mishandles
  // the lifetime of non-trivially destructible temporaries there.
  auto job = [store = store_, request = std::move(request)]() {
    return store->handle(request, system_now());
  };
  ApiResponse response = co_await async_run_on(worker_->pool.get_executor(), std::move(job),
                                               boost::asio::use_awaitable);
  co_return CallResult(std::move(response));
}

}  // namespace sproxy::upstream
