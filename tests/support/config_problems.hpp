// problems_of: the problems the strict config loader reports for a JSON config, for
// tests of config validation. Header-only; link sproxy_config.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace sproxy::test {

// The problems parse_config reports for `j`; empty when it accepts it.
inline std::vector<std::string> problems_of(const nlohmann::json& j) {
  try {
    config::parse_config(j);
  } catch (const config::ConfigError& e) {
    return e.problems();
  }
  return {};
}

}  // namespace sproxy::test
