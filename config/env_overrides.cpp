// The environment overrides of a loaded config (apply_env_overrides, config.hpp): each
// variable is read as the key it overrides would be, with the same checks.
#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>

#include "config/config.hpp"
#include "config/loader.hpp"

namespace sproxy::config {
namespace {

using detail::Loader;
using nlohmann::json;

// An environment value as the JSON the file would hold: integers and booleans by their
// spelling, anything else a string (whose type the key's reader then judges).
json env_value(std::string_view text) {
  if (text == "true") return true;
  if (text == "false") return false;
  long long number = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ec == std::errc() && end == text.data() + text.size() && !text.empty()) return number;
  return std::string(text);
}

// A bearer token as a client would send it: printable ASCII without spaces.
bool is_token_text(std::string_view s) {
  return !s.empty() && s.size() <= 4096 &&
         std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7F; });
}

}  // namespace

void apply_env_overrides(Config& config, const EnvLookup& getenv) {
  Loader loader;
  const auto each = [&](const char* name, auto&& apply) {
    const char* raw = getenv(name);
    if (raw == nullptr) return;
    const std::string path = std::string("env ") + name;
    apply(std::string_view(raw), path);
  };
  each("SPROXY_LISTEN_ADDRESS", [&](std::string_view v, const std::string& p) {
    loader.read_ip_address(json(std::string(v)), p, config.listen.address);
  });
  each("SPROXY_LISTEN_PORT", [&](std::string_view v, const std::string& p) {
    loader.read_integer(env_value(v), p, config.listen.port, 0, 65535);
  });
  each("SPROXY_ADMIN_TOKEN_SHA256", [&](std::string_view v, const std::string& p) {
    loader.read_sha256(json(std::string(v)), p, config.admin.token_sha256);
  });
  each("SPROXY_LOG_LEVEL", [&](std::string_view v, const std::string& p) {
    loader.read_log_key("level", json(std::string(v)), p, config.log);
  });
  each("SPROXY_LOG_FORMAT", [&](std::string_view v, const std::string& p) {
    loader.read_log_key("format", json(std::string(v)), p, config.log);
  });
  each("SPROXY_LOG_FILE", [&](std::string_view v, const std::string& p) {
    loader.read_log_key("file", json(std::string(v)), p, config.log);
  });
  each("SPROXY_LOG_ACCESS", [&](std::string_view v, const std::string& p) {
    loader.read_log_key("access", env_value(v), p, config.log);
  });
  // The admin token itself: checked, never copied into the config (the proxy hashes it).
  if (!config.admin.token_env.empty()) {
    const char* token = getenv(config.admin.token_env.c_str());
    if (token != nullptr && *token != '\0' && !is_token_text(token)) {
      loader.problem("env " + config.admin.token_env,
                     "expected a token of printable characters without spaces");
    }
  }
  auto problems = loader.take_problems();
  if (!problems.empty()) throw ConfigError(std::move(problems));
}

Config load_effective_config(const std::filesystem::path& path) {
  Config config = load_config_file(path);
  apply_env_overrides(config, [](const char* name) { return std::getenv(name); });
  return config;
}

}  // namespace sproxy::config
