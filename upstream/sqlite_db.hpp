// A thin SQLite wrapper for the embedded store: owning handles for a connection and its
// prepared statements, one-use statement binding (StmtUse), a transaction helper, and the
// start-up error messages that name the database.
//
// Ownership: SqliteDb owns its connection and the BEGIN/COMMIT/ROLLBACK statements it
// prepares; StmtPtr owns a statement prepared from it (finalize statements before the
// connection closes: declare them after the SqliteDb, or reset them first). StmtUse borrows
// a statement for one use and always resets it and clears its bindings afterwards.
//
// Thread safety: none. The connection is opened with SQLITE_OPEN_NOMUTEX: the owner
// serialises every use of it and of its statements (the store's write mutex).
//
// Errors: start-up helpers (open, exec_startup, pragma_text, prepare, startup_error) throw
// std::runtime_error with a one-line message naming the database ("embedded store
// data/store.db: ..."). Per-request helpers (StmtUse, transact) return SQLite result codes.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "upstream/file_io.hpp"

namespace sproxy::upstream {

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// One use of a prepared statement: bind in order, step, and always reset afterwards so
// the statement holds no lock and no bound data once the use is over.
class StmtUse {
 public:
  explicit StmtUse(sqlite3_stmt* s) : s_(s) {}
  ~StmtUse() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  StmtUse(const StmtUse&) = delete;
  StmtUse& operator=(const StmtUse&) = delete;

  StmtUse& text(std::string_view v) {
    // A null data pointer would bind SQL NULL; an empty string must stay a string.
    const char* p = v.data() != nullptr ? v.data() : "";
    return track(sqlite3_bind_text64(s_, ++index_, p, v.size(), SQLITE_TRANSIENT, SQLITE_UTF8));
  }
  StmtUse& text_or_null(const std::optional<std::string>& v) {
    return v ? text(*v) : track(sqlite3_bind_null(s_, ++index_));
  }
  StmtUse& blob(std::string_view v) {
    const char* p = v.data() != nullptr ? v.data() : "";
    return track(sqlite3_bind_blob64(s_, ++index_, p, v.size(), SQLITE_TRANSIENT));
  }
  StmtUse& blob_or_null(const std::optional<std::string>& v) {
    return v ? blob(*v) : track(sqlite3_bind_null(s_, ++index_));
  }
  StmtUse& integer(std::int64_t v) { return track(sqlite3_bind_int64(s_, ++index_, v)); }

  // SQLITE_ROW, SQLITE_DONE or an error code.
  int step() { return bind_rc_ != SQLITE_OK ? bind_rc_ : sqlite3_step(s_); }
  // Runs a statement that returns no rows: SQLITE_OK or an error code.
  int run() {
    const int rc = step();
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  }

  std::string column_text(int col) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, col));
    return p != nullptr ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s_, col)))
                        : std::string();
  }
  bool column_is_null(int col) const { return sqlite3_column_type(s_, col) == SQLITE_NULL; }
  std::int64_t column_int(int col) const { return sqlite3_column_int64(s_, col); }
  std::string column_blob(int col) const {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(s_, col));
    return p != nullptr ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s_, col)))
                        : std::string();
  }

 private:
  StmtUse& track(int rc) {
    if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
    return *this;
  }
  sqlite3_stmt* s_;
  int index_ = 0;
  int bind_rc_ = SQLITE_OK;
};

// After a failed COMMIT: true when the transaction may be durable all the same. In WAL mode
// the commit frame is written last and then synced, so a lock conflict, a full disk or a
// failed frame write leaves the transaction uncommitted (a torn commit frame fails its
// checksum on recovery); a failed sync, or anything unexpected, leaves it unknown.
bool commit_outcome_unknown(int rc);

// A connection with the helpers the store's start-up and writes use.
class SqliteDb {
 public:
  // `label` names the database in start-up errors ("embedded store data/store.db").
  explicit SqliteDb(std::string label) : label_(std::move(label)) {}
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;

  // Opens the existing file `path` read-write (extended result codes, no SQLite mutex).
  void open(const std::filesystem::path& path);
  sqlite3* get() const { return db_.get(); }

  void exec_startup(const char* sql);
  // The first column of the first row `sql` returns, as text.
  std::string pragma_text(const char* sql);
  [[noreturn]] void startup_error(int rc, std::string_view what);
  StmtPtr prepare(const char* sql);

  // Prepares the statements transact() uses; call once the schema is in place.
  void prepare_transactions();

  // Runs `body` (returning SQLITE_OK or an error code) inside BEGIN IMMEDIATE ... COMMIT,
  // rolling back on any failure. Returns SQLITE_OK only when the commit succeeded.
  template <class Body>
  int transact(Body&& body) {
    if (const int rc = StmtUse(begin_.get()).run(); rc != SQLITE_OK) return rc;
    int rc = body();
    if (rc == SQLITE_OK) {
      rc = StmtUse(commit_.get()).run();
      if (rc == SQLITE_OK) return rc;
      if (commit_outcome_unknown(rc)) {
        broken_ =
            std::string("storage: commit failed (") + sqlite3_errstr(rc) + "); restart required";
      }
    }
    if (sqlite3_get_autocommit(db_.get()) == 0 && StmtUse(rollback_.get()).run() != SQLITE_OK) {
      broken_ = "storage: rollback failed; restart required";
    }
    return rc;
  }

  // Set when a COMMIT failed in a way that leaves durability unknown (fsync errors), or a
  // ROLLBACK failed: what is in memory could disagree with what a restart would find.
  const std::optional<std::string>& broken() const { return broken_; }

 private:
  std::string label_;
  DbPtr db_;
  StmtPtr begin_, commit_, rollback_;
  std::optional<std::string> broken_;
};

}  // namespace sproxy::upstream
