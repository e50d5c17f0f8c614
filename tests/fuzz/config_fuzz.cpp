// The config loader (config/config.*) as the proxy runs it: bytes as the JSON file
// (load_config_file reads them from a file), then the environment overrides. The input
// is the file, optionally followed by a NUL byte and one line per variable: the values
// of kEnvOverrides in order, then the admin token variable (an empty line leaves a
// variable unset). Properties:
// - the only failure is a ConfigError listing at least one problem, each non-empty and
//   naming where it is (a JSON path "$...", the file, or "env ...");
// - no problem message depends on the admin token's value (a secret) beyond whether it
//   is a valid token: another token of the same validity gives the same problems;
// - an override that loads is what the config holds (address, port, log level, format).
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "tests/fuzz/fuzz_check.hpp"

namespace {

using namespace sproxy;

// One file per process, on a memory file system when there is one.
const std::filesystem::path& config_path() {
  static const std::filesystem::path path = [] {
    const std::filesystem::path shm = "/dev/shm";
    const auto dir =
        std::filesystem::is_directory(shm) ? shm : std::filesystem::temp_directory_path();
    return dir / ("sproxy-config-fuzz-" + std::to_string(::getpid()) + ".json");
  }();
  return path;
}

struct RemoveAtExit {
  ~RemoveAtExit() {
    std::error_code ec;
    std::filesystem::remove(config_path(), ec);
  }
} remove_at_exit;

struct Environment {
  std::vector<std::optional<std::string>> overrides;  // parallel to kEnvOverrides
  std::optional<std::string> admin_token;
};

Environment split_environment(std::string_view lines) {
  Environment env;
  env.overrides.resize(config::kEnvOverrides.size());
  for (std::size_t i = 0; i <= config::kEnvOverrides.size() && !lines.empty(); ++i) {
    const std::size_t eol = lines.find('\n');
    const std::string_view line = lines.substr(0, eol);
    lines = eol == std::string_view::npos ? std::string_view{} : lines.substr(eol + 1);
    if (line.empty()) continue;
    // A value as getenv gives it: up to its first NUL.
    std::string value(line.substr(0, line.find('\0')));
    if (i < config::kEnvOverrides.size()) {
      env.overrides[i] = std::move(value);
    } else {
      env.admin_token = std::move(value);
    }
  }
  return env;
}

bool names_a_place(const std::string& problem) {
  return problem.starts_with("$") || problem.starts_with("env ") ||
         problem.starts_with(config_path().string());
}

void check_problems(const config::ConfigError& e) {
  fuzz::check(!e.problems().empty(), "a ConfigError without problems");
  for (const auto& p : e.problems()) {
    fuzz::check(!p.empty(), "an empty problem");
    fuzz::check(names_a_place(p), "a problem that names no place", p);
  }
}

// A token of the same validity as `token` (see config.hpp) but other bytes: unset and
// empty stay as they are.
std::optional<std::string> stand_in_token(const std::optional<std::string>& token) {
  if (!token || token->empty()) return token;
  const bool valid = token->size() <= 4096 && std::all_of(token->begin(), token->end(), [](char c) {
                       return c > 0x20 && c < 0x7f;
                     });
  return valid ? std::string(token->size(), token->front() == 'x' ? 'y' : 'x') : std::string(" ");
}

// The overrides' problems ("" when none), with `admin_token` as the token variable.
std::vector<std::string> override_problems(config::Config& config, const Environment& env,
                                           const std::optional<std::string>& admin_token) {
  const config::EnvLookup lookup = [&](const char* name) -> const char* {
    for (std::size_t i = 0; i < config::kEnvOverrides.size(); ++i) {
      if (std::string_view(name) == config::kEnvOverrides[i]) {
        return env.overrides[i] ? env.overrides[i]->c_str() : nullptr;
      }
    }
    if (std::string_view(name) == config.admin.token_env && admin_token) {
      return admin_token->c_str();
    }
    return nullptr;
  };
  try {
    config::apply_env_overrides(config, lookup);
  } catch (const config::ConfigError& e) {
    check_problems(e);
    return e.problems();
  }
  return {};
}

const std::optional<std::string>& override_of(const Environment& env, std::string_view name) {
  for (std::size_t i = 0; i < config::kEnvOverrides.size(); ++i) {
    if (name == config::kEnvOverrides[i]) return env.overrides[i];
  }
  static const std::optional<std::string> none;
  return none;
}

void check_overrides(const config::Config& c, const Environment& env) {
  if (const auto& v = override_of(env, "SPROXY_LISTEN_PORT")) {
    long long port = -1;
    std::from_chars(v->data(), v->data() + v->size(), port);
    fuzz::check(c.listen.port == port, "the port is not the override", *v);
  }
  if (const auto& v = override_of(env, "SPROXY_LOG_LEVEL")) {
    fuzz::check(c.log.level == *v, "the log level is not the override", *v);
  }
  if (const auto& v = override_of(env, "SPROXY_LOG_FORMAT")) {
    fuzz::check(config::to_string(c.log.format) == *v, "the log format is not the override", *v);
  }
  if (const auto& v = override_of(env, "SPROXY_ADMIN_TOKEN_SHA256")) {
    fuzz::check(c.admin.token_sha256 == *v, "the admin token hash is not the override", *v);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = fuzz::as_text(data, size);
  const std::size_t nul = input.find('\0');
  const std::string_view file = input.substr(0, nul);
  const Environment env =
      split_environment(nul == std::string_view::npos ? std::string_view{} : input.substr(nul + 1));
  {
    std::ofstream out(config_path(), std::ios::binary | std::ios::trunc);
    out.write(file.data(), static_cast<std::streamsize>(file.size()));
  }
  config::Config config;
  try {
    config = config::load_config_file(config_path());
  } catch (const config::ConfigError& e) {
    check_problems(e);
    return 0;
  }
  config::Config other = config;
  const auto problems = override_problems(config, env, env.admin_token);
  if (env.admin_token) {
    fuzz::check(override_problems(other, env, stand_in_token(env.admin_token)) == problems,
                "a problem depends on the admin token's value");
  }
  if (problems.empty()) check_overrides(config, env);
  return 0;
}
