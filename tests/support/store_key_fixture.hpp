// StoreKeyFixture: the set-up of tests about the embedded store's key: settings for a
// store in a fresh temporary directory (data/store.db) whose key comes from
// keys/store.key, or from a per-process environment variable once a test sets it (unset
// before and after every test).
// Header-only; link sproxy_upstream.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>
#include <string>

#include "config/config.hpp"
#include "tests/support/temp_dir.hpp"
#include "upstream/embedded_store.hpp"

namespace sproxy::test {

class StoreKeyFixture : public testing::Test {
 protected:
  void SetUp() override {
    env_ = "SPROXY_TEST_STORE_KEY_" + std::to_string(::getpid());
    ::unsetenv(env_.c_str());
    cfg_.data_path = (dir_.path() / "data" / "store.db").string();
    cfg_.key_file = (dir_.path() / "keys" / "store.key").string();
    cfg_.key_env = env_;
  }
  void TearDown() override { ::unsetenv(env_.c_str()); }

  std::filesystem::path key_path() const { return cfg_.key_file; }

  // The error of reading the store's options from the settings (key resolution); empty
  // when they were read.
  std::string options_error() const {
    try {
      (void)upstream::embedded_store_options(cfg_);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "";
  }

  TempDir dir_;
  std::string env_;
  config::EmbeddedStoreConfig cfg_;
};

}  // namespace sproxy::test
