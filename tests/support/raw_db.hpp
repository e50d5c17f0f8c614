// RawDb: direct SQLite access to an embedded store's database file, for tests that look
// at (and set up or tamper with) what the store keeps on disk, beside the store's own
// code. Every call throws std::runtime_error on a statement that fails, except the
// readers, which answer "" when there is no row. Header-only; link SQLite::SQLite3.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace sproxy::test {

class RawDb {
 public:
  explicit RawDb(const std::filesystem::path& p) {
    if (sqlite3_open(p.c_str(), &db_) != SQLITE_OK) throw std::runtime_error("open");
  }
  ~RawDb() { sqlite3_close(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;

  void exec(const std::string& sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err != nullptr ? err : "?";
      sqlite3_free(err);
      throw std::runtime_error(msg);
    }
  }
  // The first column of the first row as text; empty when there is no row.
  std::string text(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr);
    std::string out;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != nullptr) {
      out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    return out;
  }
  // The first column of the first row as bytes; empty when there is no row.
  std::string blob(const std::string& sql, const std::string& param = "") {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) return "";
    if (!param.empty()) sqlite3_bind_text(st, 1, param.c_str(), -1, SQLITE_TRANSIENT);
    std::string out;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_blob(st, 0) != nullptr) {
      out.assign(static_cast<const char*>(sqlite3_column_blob(st, 0)),
                 static_cast<std::size_t>(sqlite3_column_bytes(st, 0)));
    }
    sqlite3_finalize(st);
    return out;
  }
  std::string key_check() { return blob("SELECT value FROM meta WHERE name = 'key_check'"); }
  // The sealed value of secret `id`.
  std::string value_of(const std::string& id) {
    return blob("SELECT value FROM secrets WHERE id = ?", id);
  }
  void set_value(const std::string& id, const std::string& sealed) {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db_, "UPDATE secrets SET value = ? WHERE id = ?", -1, &st, nullptr);
    sqlite3_bind_blob(st, 1, sealed.data(), static_cast<int>(sealed.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, id.c_str(), -1, SQLITE_TRANSIENT);
    const int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE || sqlite3_changes(db_) != 1) throw std::runtime_error("set_value");
  }
  // A secret row with scope "workers", created and changed at `changed`.
  void insert_secret(const std::string& id, const std::string& store_id, const std::string& name,
                     std::int64_t changed, const std::string& sealed) {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db_,
                       "INSERT INTO secrets (id, store_id, name, scopes, created, modified, "
                       "value_changed_at, value) VALUES (?, ?, ?, 'workers', ?, ?, ?, ?)",
                       -1, &st, nullptr);
    sqlite3_bind_text(st, 1, id.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, store_id.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, name.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, changed);
    sqlite3_bind_int64(st, 5, changed);
    sqlite3_bind_int64(st, 6, changed);
    sqlite3_bind_blob(st, 7, sealed.data(), static_cast<int>(sealed.size()), SQLITE_TRANSIENT);
    const int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) throw std::runtime_error("insert secret failed");
  }

 private:
  sqlite3* db_ = nullptr;
};

}  // namespace sproxy::test
