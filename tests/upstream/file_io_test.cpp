#include "upstream/file_io.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <fstream>
#include <stdexcept>
#include <string>

#include "tests/support/temp_dir.hpp"
#include "upstream/key_file.hpp"

namespace sproxy::upstream {
namespace {

TEST(FsyncDirectory, ReturnsZeroForADirectoryItCanSync) {
  test::TempDir dir;
  EXPECT_EQ(fsync_directory(dir.path()), 0);
}

TEST(FsyncDirectory, ReturnsTheErrnoOfAMissingDirectory) {
  test::TempDir dir;
  EXPECT_EQ(fsync_directory(dir.path() / "missing"), ENOENT);
}

TEST(FsyncDirectory, ReturnsTheErrnoOfAPathThatIsNotADirectory) {
  test::TempDir dir;
  const auto file = dir.path() / "file";
  std::ofstream(file) << "x";
  EXPECT_EQ(fsync_directory(file), ENOTDIR);
}

TEST(FailStartup, ThrowsARuntimeErrorWithTheMessage) {
  try {
    fail_startup("store key file k: not a regular file");
    FAIL() << "fail_startup returned";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "store key file k: not a regular file");
  }
}

TEST(Wipe, OverwritesEveryByteAndKeepsTheSize) {
  std::string key(64, 'k');
  wipe(key);
  EXPECT_EQ(key, std::string(64, '\0'));
}

TEST(Wipe, LeavesAnEmptyStringEmpty) {
  std::string empty;
  wipe(empty);
  EXPECT_TRUE(empty.empty());
}

}  // namespace
}  // namespace sproxy::upstream
