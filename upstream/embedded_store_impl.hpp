// The embedded store's internals, shared by its source files and by no one else:
// embedded_store_open.cpp opens the database (schema, migration, loading the mirror,
// binding the key) and re-seals it under a new key; embedded_store.cpp holds the
// operations; embedded_upstream.cpp the request handling.
//
// Ownership: EmbeddedStore owns one Impl, which owns the options (the key is wiped when
// it is destroyed), the connection and its prepared statements, and the in-memory mirror
// of all metadata (never values).
//
// Thread safety: writers are serialised by write_mu for the whole operation (validation
// against the mirror, transaction, apply); it also guards the connection and its
// statements. Readers only take mirror_mu shared, which a writer takes exclusively just
// to apply an already committed change, so reads never wait for a disk sync. A writer
// reads the mirror without mirror_mu: only writers change it, and they are serialised.
//
// Errors: start-up members throw std::runtime_error; write helpers return SQLite codes.
#pragma once

#include <cstddef>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "upstream/embedded_store.hpp"
#include "upstream/key_file.hpp"
#include "upstream/model.hpp"
#include "upstream/sqlite_db.hpp"

namespace sproxy::upstream {

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

struct EmbeddedStore::Impl {
  EmbeddedStoreOptions opt;
  SqliteDb db;
  StmtPtr insert_store, delete_store, insert_secret, update_secret, delete_secret,
      delete_store_secrets, select_value, put_meta;

  // See the thread safety note above.
  std::mutex write_mu;
  mutable std::shared_mutex mirror_mu;
  Mirror mirror;
  // Opening installed the staged key of an interrupted rotation (opt.finish_key_rotation).
  bool finished_rotation = false;

  explicit Impl(EmbeddedStoreOptions o)
      : opt(std::move(o)), db("embedded store " + opt.data_path.string()) {}
  ~Impl() { wipe(opt.key); }

  // ----- start-up (embedded_store_open.cpp)

  void open();
  void migrate();
  void load_mirror();
  void bind_key();
  std::optional<std::string> read_key_check();
  int put_key_check(std::string_view key);
  std::size_t secret_count() const;
  bool key_opens_newest_value();
  bool finish_interrupted_rotation(const std::string& check);

  // ----- rotation (caller holds write_mu; embedded_store_open.cpp)

  std::size_t reseal_all(std::string& new_key);

  // ----- lookups (caller holds write_mu or mirror_mu)

  const StoreRecord* find_store(const std::string& account_id, const std::string& store_id) const;
  StoreRecord* find_store(const std::string& account_id, const std::string& store_id);
  long account_secret_count(const std::string& account_id) const;
  long account_store_count(const std::string& account_id) const;
  Secret view(const SecretRecord& rec, Micros now) const;

  // ----- writes (caller holds write_mu)

  std::optional<ApiError> refuse_if_broken() const;
  ApiError storage_error(int rc) const;
  int insert_secret_row(const SecretRecord& rec, const std::string& sealed);
  // Reads and decrypts a stored value; the caller wipes the result.
  std::optional<std::string> open_value(const std::string& secret_id);
  void add_to_mirror(StoreRecord& store, SecretRecord rec);
  void erase_from_mirror(StoreRecord& store, const std::string& secret_id);
};

}  // namespace sproxy::upstream
