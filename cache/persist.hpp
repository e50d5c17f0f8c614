// Warm start: the read-through cache's main entries saved to one sealed file and loaded
// back at start, so a restarted proxy can answer (fresh until the entries' original
// expiry, then stale-if-error) while its upstream is unreachable.
//
// What is saved: metadata only. The cache never holds a secret value (the upstream lists
// secrets without values and write bodies are never cached), so neither does the file:
// per entry its key, invalidation tag, store time, freshness and keep times, and its
// value (a stored answer's status and envelope bytes, or a snapshot's resources as JSON).
// Memoized list pages are not saved; they are rebuilt on demand.
//
// File format, version 1 (integers little-endian):
//   "SPXCACHE" (8 bytes) | version u32 | nonce (12) | ciphertext | GCM tag (16)
// AES-256-GCM with the persist key, a fresh random nonce per save, and the 12 header
// bytes as associated data (a file cannot be relabelled with another version).
// Plaintext: saved_at i64 | count u32 | count entries, each
//   kind u8 (0 answer, 1 secrets snapshot, 2 stores snapshot) | key str | tag str |
//   stored_at i64 | fresh_until i64 | keep_until i64 | payload
// where str is a u32 length then the bytes; an answer's payload is status u16 then the
// body str; a snapshot's payload is a str holding a JSON array of resources.
//
// Saving writes `<path>.tmp` in the same directory (mode 0600), fsyncs it, renames it
// over `path` and fsyncs the directory: a crash leaves the old file or the new one.
// Loading is all or nothing: a missing file is a cold start; a file that is too large,
// truncated, tampered with, sealed with another key, of another version or malformed is
// rejected whole with one message, and the cache stays empty. The file is bounded by the
// cache's byte budget (plus a small allowance) and the restore by its storage budget.
//
// Thread safety: save_cache may run while the cache serves (it copies entries shard by
// shard); load_cache is meant for before serving. CachePersister runs periodic saves on
// its own thread, never on an io thread. Errors: I/O and format problems are returned as
// results (never thrown); only key resolution (start-up) throws std::runtime_error.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cache/read_through.hpp"
#include "config/config.hpp"

namespace sproxy::cache {

inline constexpr std::string_view kPersistMagic = "SPXCACHE";
inline constexpr std::uint32_t kPersistVersion = 1;
// Bytes a snapshot file may hold beyond the cache's max_bytes (header, framing).
inline constexpr std::size_t kPersistFileAllowance = 1024 * 1024;

// The plaintext of a snapshot file holding `records`.
std::string encode_records(const std::vector<CacheRecord>& records, Micros saved_at);

struct DecodedRecords {
  Micros saved_at = 0;
  std::vector<CacheRecord> records;  // snapshots numbered first_seq, first_seq + 1, ...
};
// nullopt when `plain` is not exactly one well-formed plaintext. Snapshots are numbered
// from `first_seq` on, in order.
std::optional<DecodedRecords> decode_records(std::string_view plain, std::uint64_t first_seq = 1);

// The whole file: header, then `plaintext` sealed with `key` (32 bytes).
std::string seal_snapshot_file(std::string_view key, std::string_view plaintext);

enum class LoadStatus {
  loaded,
  missing,          // no file: a cold start, not an error
  unreadable,       // open/read failed
  too_large,        // larger than the cache's budget allows
  not_a_snapshot,   // shorter than the header or wrong magic
  wrong_version,    // a version this build does not read
  unauthenticated,  // truncated, tampered with, or sealed with another key
  malformed,        // authenticated but not a valid plaintext (a bug or an old writer)
};

struct LoadResult {
  LoadStatus status = LoadStatus::missing;
  std::string message;       // one line for the log
  std::size_t entries = 0;   // records in the file
  std::size_t restored = 0;  // records the cache took
  Micros saved_at = 0;
};

struct SaveResult {
  bool ok = false;
  std::string message;  // one line for the log
  std::size_t entries = 0;
  std::size_t bytes = 0;  // file size
};

// Exports `cache` at `now` and writes it atomically to `path` (see the file comment).
SaveResult save_cache(const ReadThroughCache& cache, const std::filesystem::path& path,
                      std::string_view key, Micros now);
// Reads `path` and restores it into `cache` at `now`; files over `max_file_bytes` are
// refused unread. Removes a temp file left behind by a crashed save.
LoadResult load_cache(ReadThroughCache& cache, const std::filesystem::path& path,
                      std::string_view key, std::size_t max_file_bytes, Micros now);

// The key that seals the file: cache.persist.key_env / key_file when either is set,
// otherwise the store's key settings (as the embedded store resolves them). Throws
// std::runtime_error with a clear message when no key can be had.
std::string resolve_persist_key(const config::Config& cfg);

// Owns the warm-start cycle: load once, save every interval on its own thread, save once
// more on stop. The log callback receives one line per load, per failed save and per
// final save (`error` true for failures).
class CachePersister {
 public:
  using Clock = std::function<Micros()>;
  using Log = std::function<void(bool error, const std::string& line)>;

  struct Options {
    std::filesystem::path path;
    std::string key;                    // 32 bytes
    std::chrono::seconds interval{60};  // 0: only on stop
    std::size_t max_file_bytes = 0;
  };

  CachePersister(std::shared_ptr<ReadThroughCache> cache, Options options, Clock clock, Log log);
  ~CachePersister();  // ends periodic saving without a last save
  CachePersister(const CachePersister&) = delete;
  CachePersister& operator=(const CachePersister&) = delete;

  LoadResult load();
  SaveResult save_now();
  void start();  // begins periodic saving (no-op when the interval is 0)
  void stop();   // ends periodic saving and saves once more; idempotent

 private:
  void run();
  bool halt();  // ends the thread; false when already halted

  std::shared_ptr<ReadThroughCache> cache_;
  Options options_;
  Clock clock_;
  Log log_;
  std::mutex save_mu_;  // one save at a time
  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace sproxy::cache
