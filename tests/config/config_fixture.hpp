// Shared helpers of the config loader tests (config_test.cpp, config_rules_test.cpp):
// hashes, ids and a client entry as a config file writes them.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "tests/support/config_problems.hpp"
#include "upstream/model.hpp"
#include "upstream/resilience.hpp"

namespace sproxy::config::config_testing {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

const std::string kHashA(64, 'a');
const std::string kHashB(64, 'b');
const std::string kAccount(32, 'c');
const std::string kStore(32, 'd');

using test::problems_of;

inline json token_client(std::string name, std::string token_sha256) {
  return {{"name", std::move(name)},
          {"token_sha256", std::move(token_sha256)},
          {"accounts", {"*"}},
          {"permissions", {"read"}}};
}

}  // namespace sproxy::config::config_testing
