// Small POSIX file helpers shared by the embedded store's key file and the cache's
// snapshot file. Header-only; no allocation except errno_text's string.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>
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

}  // namespace sproxy::upstream
