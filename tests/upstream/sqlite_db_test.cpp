// The SQLite wrapper under the embedded store: one-use statement binding, the transaction
// helper and its commit-outcome rule, and start-up errors that name the database.
#include "upstream/sqlite_db.hpp"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "tests/support/temp_dir.hpp"

namespace sproxy::upstream {
namespace {

// A fresh database file with one table, opened through SqliteDb.
class SqliteDbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(path_).flush();  // SqliteDb opens existing files only
    db_.open(path_);
    db_.exec_startup("CREATE TABLE t (v ANY)");
    db_.prepare_transactions();
  }

  std::string value_type(const char* where) {
    StmtPtr s = db_.prepare((std::string("SELECT typeof(v) FROM t WHERE ") + where).c_str());
    StmtUse use(s.get());
    return use.step() == SQLITE_ROW ? use.column_text(0) : "(no row)";
  }
  long row_count() { return std::stol(db_.pragma_text("SELECT count(*) FROM t")); }

  test::TempDir dir_;
  std::filesystem::path path_ = dir_.path() / "test.db";
  SqliteDb db_{"test db " + path_.string()};
};

TEST_F(SqliteDbTest, AnEmptyStringBindsAsTextNotNull) {
  StmtPtr insert = db_.prepare("INSERT INTO t (v) VALUES (?)");
  // A default string_view has a null data pointer, which SQLite would bind as NULL.
  ASSERT_EQ(StmtUse(insert.get()).text(std::string_view()).run(), SQLITE_OK);
  ASSERT_EQ(StmtUse(insert.get()).blob(std::string_view()).run(), SQLITE_OK);
  ASSERT_EQ(StmtUse(insert.get()).text_or_null(std::nullopt).run(), SQLITE_OK);
  EXPECT_EQ(value_type("rowid = 1"), "text");
  EXPECT_EQ(value_type("rowid = 2"), "blob");
  EXPECT_EQ(value_type("rowid = 3"), "null");
}

TEST_F(SqliteDbTest, AUseEndsWithTheStatementResetAndItsBindingsCleared) {
  StmtPtr insert = db_.prepare("INSERT INTO t (v) VALUES (?)");
  StmtPtr select = db_.prepare("SELECT v FROM t WHERE v = ?");
  ASSERT_EQ(StmtUse(insert.get()).integer(7).run(), SQLITE_OK);
  {
    StmtUse use(select.get());
    ASSERT_EQ(use.integer(7).step(), SQLITE_ROW);
    EXPECT_TRUE(sqlite3_stmt_busy(select.get()));
  }
  EXPECT_FALSE(sqlite3_stmt_busy(select.get()));
  // The binding is gone: `v = NULL` matches no row.
  EXPECT_EQ(StmtUse(select.get()).step(), SQLITE_DONE);
}

TEST_F(SqliteDbTest, AFailedBindIsReportedByStepWhichThenRunsNothing) {
  StmtPtr insert = db_.prepare("INSERT INTO t (v) VALUES (?)");
  EXPECT_EQ(StmtUse(insert.get()).integer(1).integer(2).run(), SQLITE_RANGE);
  EXPECT_EQ(row_count(), 0);
}

TEST_F(SqliteDbTest, ATransactionCommitsWhenItsBodySucceeds) {
  StmtPtr insert = db_.prepare("INSERT INTO t (v) VALUES (?)");
  EXPECT_EQ(db_.transact([&] { return StmtUse(insert.get()).integer(1).run(); }), SQLITE_OK);
  EXPECT_EQ(row_count(), 1);
  EXPECT_NE(sqlite3_get_autocommit(db_.get()), 0);
  EXPECT_FALSE(db_.broken());
}

TEST_F(SqliteDbTest, ATransactionRollsBackWhenItsBodyFailsAndReturnsTheBodysCode) {
  StmtPtr insert = db_.prepare("INSERT INTO t (v) VALUES (?)");
  const int rc = db_.transact([&] {
    if (int r = StmtUse(insert.get()).integer(1).run(); r != SQLITE_OK) return r;
    return SQLITE_ABORT;
  });
  EXPECT_EQ(rc, SQLITE_ABORT);
  EXPECT_EQ(row_count(), 0);
  EXPECT_NE(sqlite3_get_autocommit(db_.get()), 0);
  EXPECT_FALSE(db_.broken());
}

TEST(SqliteCommitOutcome, OnlyAFailedSyncOrAnUnexpectedErrorLeavesACommitUnknown) {
  EXPECT_FALSE(commit_outcome_unknown(SQLITE_BUSY));
  EXPECT_FALSE(commit_outcome_unknown(SQLITE_BUSY_SNAPSHOT));
  EXPECT_FALSE(commit_outcome_unknown(SQLITE_FULL));
  EXPECT_FALSE(commit_outcome_unknown(SQLITE_IOERR_WRITE));
  EXPECT_TRUE(commit_outcome_unknown(SQLITE_IOERR_FSYNC));
  EXPECT_TRUE(commit_outcome_unknown(SQLITE_IOERR));
  EXPECT_TRUE(commit_outcome_unknown(SQLITE_CORRUPT));
}

TEST_F(SqliteDbTest, StartUpErrorsNameTheDatabaseAndWhatFailed) {
  try {
    db_.prepare("SELEC nonsense");
    FAIL() << "prepare accepted bad SQL";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("test db " + path_.string() + ": preparing SELEC", 0), 0u)
        << e.what();
  }
  EXPECT_THROW(db_.exec_startup("CREATE TABLE t (v ANY)"), std::runtime_error);
}

TEST_F(SqliteDbTest, ALockedDatabaseAsksWhetherAnotherProxyUsesIt) {
  db_.exec_startup("PRAGMA locking_mode=EXCLUSIVE");
  db_.exec_startup("INSERT INTO t (v) VALUES (1)");  // takes and keeps the exclusive lock
  SqliteDb other("other db");
  other.open(path_);
  try {
    other.pragma_text("SELECT count(*) FROM t");
    FAIL() << "read through another connection's exclusive lock";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("(is another secrets-proxy using this database?)"),
              std::string::npos)
        << e.what();
  }
}

TEST(SqliteDbOpen, AMissingFileIsNotCreatedAndTheErrorNamesIt) {
  test::TempDir dir;
  const std::filesystem::path path = dir.path() / "absent.db";
  SqliteDb db("test db " + path.string());
  try {
    db.open(path);
    FAIL() << "opened a file that does not exist";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("cannot open test db " + path.string() + ": ", 0), 0u)
        << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace sproxy::upstream
