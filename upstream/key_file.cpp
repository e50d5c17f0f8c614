#include "upstream/key_file.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <utility>

#include "upstream/crypto.hpp"
#include "upstream/file_io.hpp"

namespace sproxy::upstream {

void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
}

namespace {

std::string key_from_hex(std::string_view hex, const std::string& origin) {
  if (hex.size() != 2 * kAesKeyBytes) {
    fail_startup(origin + " must hold exactly 64 hex characters (a 256-bit key), found " +
                 std::to_string(hex.size()) + " characters");
  }
  auto key = from_hex(hex);
  if (!key) fail_startup(origin + " must hold exactly 64 hex characters (a 256-bit key)");
  return std::move(*key);
}

std::string read_key_file(int fd, const std::filesystem::path& path) {
  const std::string origin = "store key file " + path.string();
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    fail_startup("cannot stat " + origin + ": " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) fail_startup(origin + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    fail_startup(origin + " is readable or writable by group or others (mode " + mode +
                 "); restrict it with: chmod 600 " + path.string());
  }
  // 64 hex characters plus an optional newline; read one byte more to detect excess.
  std::string content(2 * kAesKeyBytes + 2, '\0');
  std::size_t got = 0;
  while (got < content.size()) {
    const ssize_t n = ::read(fd, content.data() + got, content.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      wipe(content);
      fail_startup("cannot read " + origin + ": " + errno_text(err));
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  std::string_view text(content.data(), got);
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  std::string key;
  try {
    key = key_from_hex(text, origin);
  } catch (...) {
    wipe(content);
    throw;
  }
  wipe(content);
  return key;
}

// Written whole to a temp file first and then linked into place, so that a crash never
// leaves a short or empty key file behind, and a concurrent first start never replaces a
// key another process already uses (link fails with EEXIST instead).
std::string create_key_file(const std::filesystem::path& path) {
  std::string key = random_bytes(kAesKeyBytes);
  std::string hex = to_hex(key) + "\n";
  const std::filesystem::path temp =
      path.string() + ".tmp." + std::to_string(::getpid()) + "." + to_hex(random_bytes(4));
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    const int err = errno;
    wipe(key);
    wipe(hex);
    fail_startup("cannot create store key file " + temp.string() + ": " + errno_text(err));
  }
  int err = write_fully(fd, hex);
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  ::close(fd);
  wipe(hex);
  if (err == 0 && ::link(temp.c_str(), path.c_str()) != 0) err = errno;
  ::unlink(temp.c_str());
  if (err != 0) {
    wipe(key);
    if (err == EEXIST) return {};  // created concurrently: the caller reads it
    fail_startup("cannot write store key file " + path.string() + ": " + errno_text(err));
  }
  // Best effort: the file itself is synced, and a lost link only means a fresh key for a
  // database that is still empty.
  (void)fsync_directory(path.parent_path());
  return key;
}

}  // namespace

std::optional<std::string> open_key_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return std::nullopt;
    fail_startup("cannot open store key file " + path.string() + ": " + errno_text(err));
  }
  try {
    std::string key = read_key_file(fd, path);
    ::close(fd);
    return key;
  } catch (...) {
    ::close(fd);
    throw;
  }
}

std::string open_or_create_key_file(const std::filesystem::path& path) {
  // Two attempts: a concurrent first start may create the file between open and create.
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (std::optional<std::string> key = open_key_file(path)) return std::move(*key);
    if (path.has_parent_path()) {
      std::error_code ec;
      std::filesystem::create_directories(path.parent_path(), ec);
      if (ec) {
        fail_startup("cannot create directory " + path.parent_path().string() + ": " +
                     ec.message());
      }
    }
    if (std::string key = create_key_file(path); !key.empty()) return key;
  }
  fail_startup("cannot open store key file " + path.string());
}

std::optional<std::string> key_from_env(const config::EmbeddedStoreConfig& cfg) {
  if (cfg.key_env.empty()) return std::nullopt;
  const char* env = std::getenv(cfg.key_env.c_str());
  if (env == nullptr) return std::nullopt;
  return key_from_hex(env, "store key environment variable " + cfg.key_env);
}

void require_key_file_setting(const config::EmbeddedStoreConfig& cfg) {
  if (cfg.key_file.empty()) {
    fail_startup("no store key: set environment variable " +
                 (cfg.key_env.empty() ? std::string("(none configured)") : cfg.key_env) +
                 " or configure store.key_file");
  }
}

std::string resolve_store_key(const config::EmbeddedStoreConfig& cfg) {
  if (std::optional<std::string> key = key_from_env(cfg)) return std::move(*key);
  require_key_file_setting(cfg);
  return open_or_create_key_file(cfg.key_file);
}

std::optional<std::string> read_staged_key(const std::filesystem::path& path) {
  try {
    return open_key_file(path);
  } catch (const std::runtime_error&) {
    return std::nullopt;
  }
}

}  // namespace sproxy::upstream
