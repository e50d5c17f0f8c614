#include "upstream/sqlite_db.hpp"

#include <stdexcept>
#include <utility>

namespace sproxy::upstream {

// After a failed COMMIT: true when the transaction may be durable all the same. In WAL mode
// the commit frame is written last and then synced, so a lock conflict, a full disk or a
// failed frame write leaves the transaction uncommitted (a torn commit frame fails its
// checksum on recovery); a failed sync, or anything unexpected, leaves it unknown.
bool commit_outcome_unknown(int rc) {
  if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_FULL) return false;
  return rc != SQLITE_IOERR_WRITE;
}

void SqliteDb::open(const std::filesystem::path& path) {
  sqlite3* raw = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE, nullptr);
  db_.reset(raw);
  if (rc != SQLITE_OK) {
    fail_startup("cannot open " + label_ + ": " +
                 (raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)));
  }
}

void SqliteDb::exec_startup(const char* sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    std::string text = msg != nullptr ? msg : sqlite3_errmsg(db_.get());
    sqlite3_free(msg);
    fail_startup(label_ + ": " + text);
  }
}

std::string SqliteDb::pragma_text(const char* sql) {
  StmtPtr s = prepare(sql);
  StmtUse use(s.get());
  const int rc = use.step();
  if (rc != SQLITE_ROW) startup_error(rc, sql);
  return use.column_text(0);
}

[[noreturn]] void SqliteDb::startup_error(int rc, std::string_view what) {
  std::string msg = label_ + ": " + std::string(what) + ": " + sqlite3_errmsg(db_.get());
  if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) {
    msg += " (is another secrets-proxy using this database?)";
  }
  fail_startup(msg);
}

StmtPtr SqliteDb::prepare(const char* sql) {
  sqlite3_stmt* raw = nullptr;
  const int rc = sqlite3_prepare_v3(db_.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
  if (rc != SQLITE_OK) startup_error(rc, std::string("preparing ") + sql);
  return StmtPtr(raw);
}

void SqliteDb::prepare_transactions() {
  begin_ = prepare("BEGIN IMMEDIATE");
  commit_ = prepare("COMMIT");
  rollback_ = prepare("ROLLBACK");
}

}  // namespace sproxy::upstream
