// Durability under kill -9: a child process (sproxy_crash_writer) streams writes into an
// embedded store and reports each one after the store call returned; this test SIGKILLs
// it mid-stream, reopens the same file and checks that every acknowledged write is there,
// that no batch is half-applied, and that SQLite finds the file intact. Several runs with
// different kill points share one database, so each run also recovers the previous crash.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "tests/support/temp_dir.hpp"
#include "upstream/embedded_store.hpp"

#ifndef SPROXY_CRASH_WRITER
#error "SPROXY_CRASH_WRITER must name the crash writer executable"
#endif

namespace sproxy::upstream {
namespace {

namespace fs = std::filesystem;

const std::string kAccount = "0123456789abcdef0123456789abcdef";

// The writer process with its stdout on a pipe. Killed and reaped on destruction if the
// test bails out early.
class Writer {
 public:
  Writer(const fs::path& data, const fs::path& key_file, const std::string& tag) {
    const std::vector<std::string> args = {SPROXY_CRASH_WRITER, data.string(), key_file.string(),
                                           tag, "20000"};
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      // Never outlive the test, even if it dies without reaping us.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(3);
      ::dup2(fds[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    fd_ = fds[0];
  }
  ~Writer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Next complete line, or nullopt at EOF. Throws if nothing arrives for `timeout_ms`.
  std::optional<std::string> next_line(int timeout_ms = 60'000) {
    for (;;) {
      if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      if (eof_) return std::nullopt;  // a torn last line (none expected) is not an ack
      pollfd p{fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, timeout_ms);
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) throw std::runtime_error("crash writer produced no output in time");
      char chunk[4096];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        eof_ = true;
        continue;
      }
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  // SIGKILL and reap; returns the wait status.
  int kill_now() {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string buffer_;
  bool eof_ = false;
};

// Everything the writers acknowledged, across runs.
struct Acknowledged {
  std::map<std::string, std::string> created;  // id -> name
  std::map<std::string, long> patched;         // id -> highest acknowledged sequence
  std::set<std::string> deleted;
  // Scratch secrets whose delete was in flight at the kill: it may or may not have
  // committed, so either outcome is correct.
  std::set<std::string> delete_in_flight;
  long lines = 0;

  // After a run: at most one scratch secret may be created but not yet reported deleted.
  void end_run() {
    int in_flight = 0;
    for (const auto& [id, name] : created) {
      if (name.starts_with("x_") && !deleted.contains(id) && !delete_in_flight.contains(id)) {
        delete_in_flight.insert(id);
        ++in_flight;
      }
    }
    if (in_flight > 1) throw std::runtime_error("writer skipped a scratch delete");
  }

  void record(const std::string& line) {
    std::istringstream in(line);
    std::string kind, id;
    in >> kind >> id;
    if (kind == "C") {
      std::string name;
      in >> name;
      created[id] = name;
    } else if (kind == "P") {
      long seq = 0;
      in >> seq;
      patched[id] = std::max(patched[id], seq);
    } else if (kind == "D") {
      deleted.insert(id);
    } else {
      throw std::runtime_error("unexpected writer output: " + line);
    }
    ++lines;
  }
};

std::string sqlite_text(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = nullptr;
  std::string out = "<no row>";
  if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    const auto* t = sqlite3_column_text(st, 0);
    out = t != nullptr ? reinterpret_cast<const char*>(t) : "<null>";
  }
  sqlite3_finalize(st);
  return out;
}

void verify_after_crash(const config::EmbeddedStoreConfig& cfg, const Acknowledged& acks) {
  {
    EmbeddedStore store(embedded_store_options(cfg));
    auto stores = store.list_stores(kAccount);
    ASSERT_TRUE(stores.ok());
    ASSERT_EQ(stores->size(), 1u);
    const std::string store_id = stores->front().id;
    auto secrets = store.list_secrets(kAccount, store_id, 0);
    ASSERT_TRUE(secrets.ok());

    std::map<std::string, const Secret*> by_id;
    std::map<std::string, int> batch_sizes;
    for (const auto& s : *secrets) {
      by_id[s.id] = &s;
      // Every stored value decrypts to what the writer wrote: nothing torn.
      auto value = store.reveal_value_for_test(store_id, s.id);
      ASSERT_TRUE(value.ok()) << s.name;
      EXPECT_EQ(*value, "value-" + s.name);
      if (s.name.starts_with("b_")) ++batch_sizes[s.name.substr(0, s.name.rfind('_'))];
    }
    for (const auto& [id, name] : acks.created) {
      if (acks.deleted.contains(id) || acks.delete_in_flight.contains(id)) continue;
      auto it = by_id.find(id);
      ASSERT_NE(it, by_id.end()) << "acknowledged create lost: " << name;
      EXPECT_EQ(it->second->name, name);
    }
    for (const auto& id : acks.deleted) {
      EXPECT_FALSE(by_id.contains(id)) << "acknowledged delete undone: " << id;
    }
    for (const auto& [id, seq] : acks.patched) {
      auto it = by_id.find(id);
      ASSERT_NE(it, by_id.end());
      ASSERT_TRUE(it->second->comment.has_value()) << "acknowledged patch lost: " << id;
      const long stored = std::stol(it->second->comment->substr(1));
      EXPECT_GE(stored, seq) << "acknowledged patch lost: " << id;
    }
    for (const auto& [batch, size] : batch_sizes) {
      EXPECT_EQ(size, 3) << "half-applied batch " << batch;
    }
    EXPECT_EQ(store.quota(kAccount)->usage, static_cast<long>(secrets->size()));
  }
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(cfg.data_path.c_str(), &raw), SQLITE_OK);
  EXPECT_EQ(sqlite_text(raw, "PRAGMA integrity_check"), "ok");
  EXPECT_EQ(sqlite_text(raw, "PRAGMA foreign_key_check"), "<no row>");
  sqlite3_close(raw);
}

TEST(EmbeddedStoreCrash, EveryAcknowledgedWriteSurvivesKillNineAtAnyPoint) {
  test::TempDir dir;
  config::EmbeddedStoreConfig cfg;
  cfg.data_path = (dir.path() / "data" / "store.db").string();
  cfg.key_file = (dir.path() / "data" / "store.key").string();
  cfg.key_env.clear();

  Acknowledged acks;
  // Kill points in acknowledged lines; the first run also creates the key file and schema.
  const int kill_after[] = {1, 6, 23, 57, 110};
  for (std::size_t run = 0; run < std::size(kill_after); ++run) {
    SCOPED_TRACE("run " + std::to_string(run));
    Writer writer(cfg.data_path, cfg.key_file, "r" + std::to_string(run));
    for (int i = 0; i < kill_after[run]; ++i) {
      auto line = writer.next_line();
      ASSERT_TRUE(line.has_value()) << "writer exited early";
      acks.record(*line);
    }
    const int status = writer.kill_now();
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "writer was not killed mid-stream (status " << status << ")";
    // Lines already in the pipe were acknowledged before the kill too.
    while (auto line = writer.next_line()) acks.record(*line);
    acks.end_run();

    verify_after_crash(cfg, acks);
    if (HasFatalFailure()) return;
  }
  EXPECT_GE(acks.created.size(), 100u);
}

}  // namespace
}  // namespace sproxy::upstream
