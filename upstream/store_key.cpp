#include "upstream/store_key.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <utility>

#include "upstream/crypto.hpp"
#include "upstream/embedded_store.hpp"
#include "upstream/file_io.hpp"
#include "upstream/key_file.hpp"

namespace sproxy::upstream {

namespace {

// Sealed as the key check; the associated data keeps it apart from any secret's value.
constexpr std::string_view kKeyCheckLabel = "secrets-proxy embedded store key check v1";
constexpr std::string_view kKeyCheckAad = "key_check";

}  // namespace

std::string seal_key_check(std::string_view key) {
  return aes_gcm_seal(key, kKeyCheckLabel, kKeyCheckAad);
}

bool key_check_opens(std::string_view key, std::string_view check) {
  std::optional<std::string> label = aes_gcm_open(key, check, kKeyCheckAad);
  return label && *label == kKeyCheckLabel;
}

std::filesystem::path staged_key_path(const std::filesystem::path& key_file) {
  std::filesystem::path out = key_file;
  out += ".new";
  return out;
}

void write_staged_key(const std::filesystem::path& path, std::string_view key) {
  const std::string where = "staged store key file " + path.string();
  // A stale file from a rotation that did not commit may be there; it opens nothing.
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    const int err = errno;
    throw std::runtime_error("cannot replace " + where + ": " + errno_text(err));
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    const int err = errno;
    throw std::runtime_error("cannot create " + where + ": " + errno_text(err));
  }
  std::string hex = to_hex(key) + "\n";
  int err = write_fully(fd, hex);
  wipe(hex);
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  ::close(fd);
  if (err == 0) err = fsync_directory(path.parent_path());
  if (err != 0) {
    ::unlink(path.c_str());
    throw std::runtime_error("cannot write " + where + ": " + errno_text(err));
  }
}

void install_staged_key(const std::filesystem::path& staged,
                        const std::filesystem::path& key_file) {
  if (::rename(staged.c_str(), key_file.c_str()) != 0) {
    const int err = errno;
    throw std::runtime_error("cannot rename " + staged.string() + " to " + key_file.string() +
                             ": " + errno_text(err) +
                             "; the database opens under the former: run `secrets-proxy store "
                             "rotate-key` again to install it");
  }
  // Best effort: should the rename not survive a crash, the staged file is still there and
  // the next start or rotation recognises it.
  (void)fsync_directory(key_file.parent_path());
}

KeyRotation rotate_store_key(const config::EmbeddedStoreConfig& cfg) {
  if (!cfg.key_env.empty() && std::getenv(cfg.key_env.c_str()) != nullptr) {
    throw std::runtime_error(
        "store rotate-key replaces the key file, but the store key comes from environment "
        "variable " +
        cfg.key_env + ": write its value to store.key_file (mode 0600) and unset " + cfg.key_env +
        " first");
  }
  if (cfg.key_file.empty()) {
    throw std::runtime_error("store rotate-key needs store.key_file in the configuration");
  }
  const std::filesystem::path key_file(cfg.key_file);
  const std::filesystem::path data_path(cfg.data_path);
  std::error_code ec;
  if (!std::filesystem::exists(data_path, ec)) {
    throw std::runtime_error("embedded store " + data_path.string() +
                             " does not exist: no key to rotate");
  }
  if (!std::filesystem::exists(key_file, ec)) {
    throw std::runtime_error("store key file " + key_file.string() +
                             " does not exist: no key to rotate (restore the key file that "
                             "belongs to embedded store " +
                             data_path.string() + ")");
  }

  EmbeddedStoreOptions options = embedded_store_options(cfg);
  options.finish_key_rotation = true;
  // Refuses a key that does not match the database, as a start would.
  EmbeddedStore store(std::move(options));
  KeyRotation out;
  out.key_file = key_file;
  if (store.finished_key_rotation()) {
    out.finished_interrupted = true;
    return out;
  }
  const std::filesystem::path staged = staged_key_path(key_file);
  std::string next = random_bytes(kAesKeyBytes);
  try {
    write_staged_key(staged, next);
  } catch (...) {
    wipe(next);
    throw;
  }
  out.resealed = store.reseal_all(std::move(next));
  install_staged_key(staged, key_file);
  return out;
}

}  // namespace sproxy::upstream
