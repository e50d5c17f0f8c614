// Small POSIX file helpers shared by the embedded store (its database and key files) and
// the cache's snapshot file, and the one way their start-up code fails. Header-only; no
// allocation except errno_text's and fail_startup's strings.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

namespace sproxy::upstream {

// The text of an errno value ("No space left on device").
inline std::string errno_text(int err) { return std::generic_category().message(err); }

// Writes all of `bytes` to `fd`, retrying short writes and EINTR. Returns 0, or the
// errno of the failed write (EIO when write made no progress without an error).
inline int write_fully(int fd, std::string_view bytes) {
  std::size_t put = 0;
  while (put < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + put, bytes.size() - put);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    put += static_cast<std::size_t>(n);
  }
  return 0;
}

// Syncs directory `dir` (the current directory when empty), so that a file created, linked
// or renamed in it survives a crash. Returns 0, or the errno of the failed open or fsync:
// callers for which the entry must be durable report it; the others ignore it (the file
// itself is already synced, and a lost entry is recognised on the next start).
inline int fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  const int err = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return err;
}

// Start-up failure: throws std::runtime_error with `what`, a one-line message naming the
// file or setting (main prints it and exits non-zero).
[[noreturn]] inline void fail_startup(const std::string& what) { throw std::runtime_error(what); }

}  // namespace sproxy::upstream
