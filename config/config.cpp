#include "config/config.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string_view>
#include <utility>

#include "config/loader.hpp"

namespace sproxy::config {
namespace {

using detail::kClientAuthModes;
using detail::kLogFormats;
using detail::kUpstreamKinds;
using detail::Loader;
using nlohmann::json;

std::string join_problems(const std::vector<std::string>& problems) {
  std::string out = "invalid configuration";
  if (problems.empty()) return out;
  out += ": ";
  for (std::size_t i = 0; i < problems.size(); ++i) {
    if (i > 0) out += "; ";
    out += problems[i];
  }
  return out;
}

}  // namespace

ConfigError::ConfigError(std::vector<std::string> problems)
    : std::runtime_error(join_problems(problems)), problems_(std::move(problems)) {}

Config parse_config(const nlohmann::json& j) {
  Config config;
  Loader loader;
  loader.read_root(j, config);
  auto problems = loader.take_problems();
  if (!problems.empty()) throw ConfigError(std::move(problems));
  return config;
}

Config load_config_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    throw ConfigError({path.string() + ": cannot open: " + std::strerror(err)});
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError({path.string() + ": cannot read"});
  json j;
  try {
    j = json::parse(text.str());
  } catch (const json::exception& e) {
    throw ConfigError({path.string() + ": invalid JSON: " + e.what()});
  }
  return parse_config(j);
}

std::string_view to_string(ClientAuth mode) {
  return kClientAuthModes[static_cast<std::size_t>(mode)];
}
std::string_view to_string(UpstreamKind kind) {
  return kUpstreamKinds[static_cast<std::size_t>(kind)];
}
std::string_view to_string(LogFormat format) {
  return kLogFormats[static_cast<std::size_t>(format)];
}

}  // namespace sproxy::config
