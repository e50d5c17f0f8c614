#include "cache/persist.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <system_error>

#include "cache/snapshot.hpp"
#include "upstream/crypto.hpp"
#include "upstream/file_io.hpp"
#include "upstream/key_file.hpp"

namespace sproxy::cache {

namespace {

using upstream::errno_text;

using nlohmann::json;

constexpr std::size_t kHeaderBytes = kPersistMagic.size() + 4;

enum class Kind : std::uint8_t { answer = 0, secrets = 1, stores = 2 };

// ---------------------------------------------------------------------------------------
// Encoding

void put_u8(std::string& out, std::uint8_t v) { out.push_back(static_cast<char>(v)); }

void put_u16(std::string& out, std::uint16_t v) {
  for (int i = 0; i < 2; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_i64(std::string& out, std::int64_t v) {
  const auto u = static_cast<std::uint64_t>(v);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
}

void put_str(std::string& out, std::string_view s) {
  put_u32(out, static_cast<std::uint32_t>(s.size()));
  out.append(s);
}

std::string header() {
  std::string h(kPersistMagic);
  put_u32(h, kPersistVersion);
  return h;
}

template <class T>
std::string json_array(std::span<const T> items) {
  json arr = json::array();
  for (const auto& item : items) arr.push_back(upstream::to_json(item));
  return arr.dump();
}

// ---------------------------------------------------------------------------------------
// Decoding: every read checks the bytes left; any shortfall makes the reader fail.

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool ok() const { return ok_; }
  bool at_end() const { return in_.empty(); }
  std::size_t left() const { return in_.size(); }

  std::uint64_t uint(std::size_t bytes) {
    if (!take(bytes)) return 0;
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < bytes; ++i) {
      v |= static_cast<std::uint64_t>(static_cast<unsigned char>(last_[i])) << (8 * i);
    }
    return v;
  }
  std::int64_t i64() { return static_cast<std::int64_t>(uint(8)); }
  std::string_view str() {
    const auto n = static_cast<std::size_t>(uint(4));
    if (!ok_ || !take(n)) return {};
    return last_;
  }
  void fail() { ok_ = false; }

 private:
  bool take(std::size_t n) {
    if (!ok_ || n > in_.size()) {
      ok_ = false;
      return false;
    }
    last_ = in_.substr(0, n);
    in_.remove_prefix(n);
    return true;
  }
  std::string_view in_;
  std::string_view last_;
  bool ok_ = true;
};

template <class T, class Parse>
std::optional<std::vector<T>> parse_array(std::string_view text, Parse parse) {
  const json arr = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!arr.is_array()) return std::nullopt;
  std::vector<T> items;
  items.reserve(arr.size());
  for (const auto& item : arr) {
    auto parsed = parse(item);
    if (!parsed) return std::nullopt;
    items.push_back(std::move(parsed).value());
  }
  return items;
}

// ---------------------------------------------------------------------------------------
// Files

std::filesystem::path temp_path_of(const std::filesystem::path& path) {
  return std::filesystem::path(path.string() + ".tmp");
}

// Writes `bytes` to `path` atomically with mode 0600; an error message or "".
std::string write_atomically(const std::filesystem::path& path, std::string_view bytes) {
  const std::filesystem::path tmp = temp_path_of(path);
  if (path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec) return "cannot create directory " + path.parent_path().string() + ": " + ec.message();
  }
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return "cannot create " + tmp.string() + ": " + errno_text(errno);
  int err = 0;
  // A temp file left by an older run may have had a wider mode.
  if (::fchmod(fd, 0600) != 0) err = errno;
  if (err == 0) err = upstream::write_fully(fd, bytes);
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    return "cannot write " + path.string() + ": " + errno_text(err);
  }
  // Best effort: the file itself is synced; a lost rename leaves the previous snapshot.
  (void)upstream::fsync_directory(path.parent_path());
  return {};
}

LoadResult load_failure(LoadStatus status, const std::filesystem::path& path,
                        const std::string& why) {
  LoadResult r;
  r.status = status;
  r.message =
      "cache snapshot " + path.string() + " rejected (" + why + "); starting with an empty cache";
  return r;
}

}  // namespace

// =======================================================================================

std::string encode_records(const std::vector<CacheRecord>& records, Micros saved_at) {
  std::string out;
  put_i64(out, saved_at);
  put_u32(out, static_cast<std::uint32_t>(records.size()));
  for (const auto& r : records) {
    const CachedValue& v = *r.value;
    switch (v.type()) {
      case CachedValue::Type::answer:
        put_u8(out, static_cast<std::uint8_t>(Kind::answer));
        break;
      case CachedValue::Type::secrets:
        put_u8(out, static_cast<std::uint8_t>(Kind::secrets));
        break;
      case CachedValue::Type::stores:
        put_u8(out, static_cast<std::uint8_t>(Kind::stores));
        break;
    }
    put_str(out, r.key);
    put_str(out, r.tag);
    put_i64(out, r.meta.stored_at);
    put_i64(out, r.meta.fresh_until);
    put_i64(out, r.meta.keep_until);
    switch (v.type()) {
      case CachedValue::Type::answer: {
        const auto& a = static_cast<const StoredAnswer&>(v);
        put_u16(out, static_cast<std::uint16_t>(a.status()));
        put_str(out, a.body());
        break;
      }
      case CachedValue::Type::secrets:
        put_str(out, static_cast<const SecretsSnapshot&>(v).json_array());
        break;
      case CachedValue::Type::stores:
        put_str(out, json_array(static_cast<const StoresSnapshot&>(v).stores()));
        break;
    }
  }
  return out;
}

std::optional<DecodedRecords> decode_records(std::string_view plain, std::uint64_t first_seq) {
  Reader in(plain);
  DecodedRecords out;
  out.saved_at = in.i64();
  const auto count = static_cast<std::size_t>(in.uint(4));
  // Every entry takes at least 1 + 4 + 4 + 24 + 4 bytes: a count larger than the bytes
  // could hold is garbage, and must not size an allocation.
  constexpr std::size_t kMinEntryBytes = 37;
  if (!in.ok() || count > in.left() / kMinEntryBytes) return std::nullopt;
  out.records.reserve(count);
  std::uint64_t seq = first_seq - 1;
  for (std::size_t i = 0; i < count; ++i) {
    const auto kind = static_cast<std::uint8_t>(in.uint(1));
    CacheRecord r;
    r.key = std::string(in.str());
    r.tag = std::string(in.str());
    r.meta.stored_at = in.i64();
    r.meta.fresh_until = in.i64();
    r.meta.keep_until = in.i64();
    if (!in.ok() || r.key.empty() || r.tag.empty()) return std::nullopt;
    switch (static_cast<Kind>(kind)) {
      case Kind::answer: {
        const auto status = static_cast<unsigned>(in.uint(2));
        const std::string_view body = in.str();
        if (!in.ok() || status < 100 || status > 599) return std::nullopt;
        r.value = std::make_shared<const StoredAnswer>(status, std::string(body));
        break;
      }
      case Kind::secrets: {
        auto items = parse_array<upstream::Secret>(
            in.str(), [](const json& j) { return upstream::secret_from_json(j); });
        if (!in.ok() || !items) return std::nullopt;
        r.value = std::make_shared<const SecretsSnapshot>(++seq, std::move(*items));
        break;
      }
      case Kind::stores: {
        auto items = parse_array<upstream::Store>(
            in.str(), [](const json& j) { return upstream::store_from_json(j); });
        if (!in.ok() || !items) return std::nullopt;
        r.value = std::make_shared<const StoresSnapshot>(++seq, std::move(*items));
        break;
      }
      default:
        return std::nullopt;
    }
    out.records.push_back(std::move(r));
  }
  if (!in.ok() || !in.at_end()) return std::nullopt;
  return out;
}

std::string seal_snapshot_file(std::string_view key, std::string_view plaintext) {
  const std::string head = header();
  return head + upstream::aes_gcm_seal(key, plaintext, head);
}

SaveResult save_cache(const ReadThroughCache& cache, const std::filesystem::path& path,
                      std::string_view key, Micros now) {
  SaveResult r;
  try {
    const std::vector<CacheRecord> records = cache.export_records(now);
    const std::string file = seal_snapshot_file(key, encode_records(records, now));
    if (std::string error = write_atomically(path, file); !error.empty()) {
      r.message = "cache snapshot not saved: " + error;
      return r;
    }
    r.ok = true;
    r.entries = records.size();
    r.bytes = file.size();
    r.message = "cache snapshot saved to " + path.string() + " (" + std::to_string(r.entries) +
                " entries, " + std::to_string(r.bytes) + " bytes)";
  } catch (const std::exception& e) {
    r.message = std::string("cache snapshot not saved: ") + e.what();
  }
  return r;
}

LoadResult load_cache(ReadThroughCache& cache, const std::filesystem::path& path,
                      std::string_view key, std::size_t max_file_bytes, Micros now) {
  ::unlink(temp_path_of(path).c_str());  // a save that crashed midway; never loaded

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      LoadResult r;
      r.status = LoadStatus::missing;
      r.message = "no cache snapshot at " + path.string() + "; starting with an empty cache";
      return r;
    }
    return load_failure(LoadStatus::unreadable, path, "cannot open: " + errno_text(err));
  }
  std::string file;
  {
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return load_failure(LoadStatus::unreadable, path, "not a regular file");
    }
    if (static_cast<std::uint64_t>(st.st_size) > max_file_bytes) {
      ::close(fd);
      return load_failure(LoadStatus::too_large, path,
                          std::to_string(st.st_size) +
                              " bytes, more than the cache's budget allows (" +
                              std::to_string(max_file_bytes) + ")");
    }
    // Read one byte past the size seen, so a file that grew is noticed, not cut.
    file.resize(static_cast<std::size_t>(st.st_size) + 1);
    std::size_t got = 0;
    int err = 0;
    while (got < file.size()) {
      const ssize_t n = ::read(fd, file.data() + got, file.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        err = errno;
        break;
      }
      if (n == 0) break;
      got += static_cast<std::size_t>(n);
    }
    ::close(fd);
    if (err != 0)
      return load_failure(LoadStatus::unreadable, path, "cannot read: " + errno_text(err));
    if (got > max_file_bytes) {
      return load_failure(LoadStatus::too_large, path, "more than the cache's budget allows");
    }
    file.resize(got);
  }

  const std::string head = header();
  if (file.size() < kHeaderBytes ||
      std::string_view(file).substr(0, kPersistMagic.size()) != kPersistMagic) {
    return load_failure(LoadStatus::not_a_snapshot, path, "not a cache snapshot file");
  }
  if (std::string_view(file).substr(0, kHeaderBytes) != head) {
    Reader version(std::string_view(file).substr(kPersistMagic.size(), 4));
    return load_failure(LoadStatus::wrong_version, path,
                        "format version " + std::to_string(version.uint(4)) +
                            ", this build reads version " + std::to_string(kPersistVersion));
  }
  std::optional<std::string> plain;
  try {
    plain = upstream::aes_gcm_open(key, std::string_view(file).substr(kHeaderBytes), head);
  } catch (const std::exception& e) {
    return load_failure(LoadStatus::unauthenticated, path, e.what());
  }
  if (!plain) {
    return load_failure(LoadStatus::unauthenticated, path,
                        "does not authenticate: truncated, modified, or sealed with another key");
  }
  std::optional<DecodedRecords> decoded = decode_records(*plain);
  if (!decoded) return load_failure(LoadStatus::malformed, path, "malformed contents");

  LoadResult r;
  r.status = LoadStatus::loaded;
  r.entries = decoded->records.size();
  r.saved_at = decoded->saved_at;
  r.restored = cache.restore(std::move(decoded->records), now);
  const Micros age_s = (now - r.saved_at) / 1'000'000;
  r.message = "cache snapshot loaded from " + path.string() + ": " + std::to_string(r.restored) +
              " of " + std::to_string(r.entries) + " entries restored (saved " +
              std::to_string(age_s < 0 ? 0 : age_s) + " s ago)";
  return r;
}

std::string resolve_persist_key(const config::Config& cfg) {
  const config::CachePersistConfig& p = cfg.cache.persist;
  if (p.key_env.empty() && p.key_file.empty()) return upstream::resolve_store_key(cfg.store);
  if (p.key_file.empty() && std::getenv(p.key_env.c_str()) == nullptr) {
    throw std::runtime_error("no cache persist key: set environment variable " + p.key_env +
                             " or configure cache.persist.key_file");
  }
  config::EmbeddedStoreConfig source;
  source.key_env = p.key_env;
  source.key_file = p.key_file;
  return upstream::resolve_store_key(source);
}

// =======================================================================================

CachePersister::CachePersister(std::shared_ptr<ReadThroughCache> cache, Options options,
                               Clock clock, Log log)
    : cache_(std::move(cache)),
      options_(std::move(options)),
      clock_(std::move(clock)),
      log_(std::move(log)) {}

CachePersister::~CachePersister() { halt(); }

LoadResult CachePersister::load() {
  LoadResult r =
      load_cache(*cache_, options_.path, options_.key, options_.max_file_bytes, clock_());
  log_(r.status != LoadStatus::loaded && r.status != LoadStatus::missing, r.message);
  return r;
}

SaveResult CachePersister::save_now() {
  std::lock_guard lock(save_mu_);
  return save_cache(*cache_, options_.path, options_.key, clock_());
}

void CachePersister::start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable() || stopping_ || options_.interval.count() <= 0) return;
  thread_ = std::thread([this] { run(); });
}

void CachePersister::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    if (wake_.wait_for(lock, options_.interval, [this] { return stopping_; })) return;
    lock.unlock();
    const SaveResult r = save_now();
    if (!r.ok) log_(true, r.message);
    lock.lock();
  }
}

bool CachePersister::halt() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return false;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  return true;
}

void CachePersister::stop() {
  if (!halt()) return;
  const SaveResult r = save_now();
  log_(!r.ok, r.message);
}

}  // namespace sproxy::cache
