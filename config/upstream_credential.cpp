#include "config/upstream_credential.hpp"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string_view>

namespace sproxy::config {

namespace {

constexpr std::size_t kMaxCredentialFileBytes = 64 * 1024;

std::string_view trim(std::string_view s) {
  const auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// One configured credential value, e.g. the API token: <section>.<key>_env names an
// environment variable, <section>.<key>_file a file. Errors name those, never a value.
struct CredentialSource {
  std::string_view key;  // "token", "email" or "api_key"
  const std::string& env;
  const std::string& file;
  std::string_view section = "upstream";          // where the keys are in the config
  std::string_view what = "upstream credential";  // how errors name it
  bool configured() const { return !env.empty() || !file.empty(); }
};

std::string read_credential_file(const CredentialSource& src, const std::string& env_note) {
  const std::string key_name = std::string(src.section) + "." + std::string(src.key) + "_file";
  const std::string what(src.what);
  std::ifstream in(src.file, std::ios::binary);
  if (!in) {
    throw std::runtime_error(what + " missing: cannot read " + key_name + " " + src.file +
                             env_note);
  }
  std::string text(kMaxCredentialFileBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > kMaxCredentialFileBytes) {
    throw std::runtime_error(key_name + " " + src.file + " is larger than 64 KiB");
  }
  std::string value(trim(text));
  if (value.empty()) {
    throw std::runtime_error(what + " missing: " + key_name + " " + src.file + " is empty" +
                             env_note);
  }
  return value;
}

// The environment variable (if set and non-empty) wins over the file; trimmed.
std::string read_credential(const CredentialSource& src) {
  const std::string prefix = std::string(src.section) + "." + std::string(src.key);
  const std::string env_key = prefix + "_env";
  std::string env_note;
  if (!src.env.empty()) {
    const char* value = std::getenv(src.env.c_str());
    std::string text(value ? trim(value) : std::string_view{});
    if (!text.empty()) return text;
    env_note =
        " (and environment variable " + src.env + " from " + env_key + " is not set or empty)";
    if (src.file.empty()) {
      throw std::runtime_error(std::string(src.what) + " missing: environment variable " + src.env +
                               " (" + env_key + ") is not set or empty, and no " + prefix +
                               "_file is configured");
    }
  }
  return read_credential_file(src, env_note);
}

}  // namespace

// Exactly one credential kind: the loader refuses the rest too, but a Config may be
// built in code.
UpstreamCredential read_upstream_credential(const UpstreamConfig& cfg) {
  UpstreamCredential out;
  const CredentialSource token{"token", cfg.token_env, cfg.token_file};
  const CredentialSource email{"email", cfg.email_env, cfg.email_file};
  const CredentialSource api_key{"api_key", cfg.api_key_env, cfg.api_key_file};
  if (token.configured() && (email.configured() || api_key.configured())) {
    throw std::runtime_error(
        "upstream credential: configure an API token (upstream.token_env / upstream.token_file) "
        "or an email and global API key (upstream.email_env / upstream.email_file with "
        "upstream.api_key_env / upstream.api_key_file), not both");
  }
  if (token.configured()) {
    out.token = read_credential(token);
    return out;
  }
  if (email.configured() != api_key.configured()) {
    throw std::runtime_error(email.configured()
                                 ? "upstream credential missing: upstream.email_env / "
                                   "upstream.email_file needs upstream.api_key_env or "
                                   "upstream.api_key_file"
                                 : "upstream credential missing: upstream.api_key_env / "
                                   "upstream.api_key_file needs upstream.email_env or "
                                   "upstream.email_file");
  }
  if (email.configured()) {
    out.email = read_credential(email);
    out.api_key = read_credential(api_key);
    return out;
  }
  throw std::runtime_error(
      "upstream credential missing: upstream.kind \"http\" needs upstream.token_env (the name "
      "of an environment variable holding the API token) or upstream.token_file, or an email "
      "and global API key (upstream.email_env / upstream.email_file with upstream.api_key_env "
      "/ upstream.api_key_file)");
}

RedisCredential read_redis_credential(const FleetRedisConfig& cfg) {
  RedisCredential out;
  const CredentialSource user{"user", cfg.user_env, cfg.user_file, "fleet.redis",
                              "redis credential"};
  const CredentialSource password{"password", cfg.password_env, cfg.password_file, "fleet.redis",
                                  "redis credential"};
  if (user.configured() && !password.configured()) {
    throw std::runtime_error(
        "redis credential missing: fleet.redis.user_env / fleet.redis.user_file needs "
        "fleet.redis.password_env or fleet.redis.password_file");
  }
  if (user.configured()) out.user = read_credential(user);
  if (password.configured()) out.password = read_credential(password);
  return out;
}

}  // namespace sproxy::config
