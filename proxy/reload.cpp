#include "proxy/reload.hpp"

#include <exception>
#include <string>

#include "proxy/logging.hpp"

namespace sproxy::proxy {

ReloadResult reload_config(const std::filesystem::path& config_path, const ReloadTargets& targets) {
  config::Config cfg;
  try {
    cfg = config::load_effective_config(config_path);
  } catch (const config::ConfigError& e) {
    std::string problems;
    for (const auto& p : e.problems()) problems += (problems.empty() ? "" : "; ") + p;
    return {false, "reload rejected, keeping the current configuration: " + problems};
  } catch (const std::exception& e) {
    return {false, std::string("reload failed, keeping the current configuration: ") + e.what()};
  }

  std::string message =
      "reloaded identities, cache TTLs and log settings from " + config_path.string() + ":";
  if (targets.identities != nullptr) {
    auto next = make_config_resolver(cfg);
    // Appended piece by piece: GCC 12 warns (-Wrestrict, a false positive) on
    // `"literal" + std::string&&` in a Release build.
    message += ' ';
    message += std::to_string(next->client_count());
    message += " client(s)";
    if (!admin_token_sha256(cfg.admin).empty()) message += " and the admin token";
    message += ';';
    targets.identities->replace(std::move(next));
  }
  if (targets.cache != nullptr) {
    targets.cache->reconfigure(cfg.cache);
    message += " cache " + std::string(cfg.cache.enabled ? "on" : "off") + ", ttl secrets " +
               std::to_string(cfg.cache.ttl.secrets_ms) + " ms;";
  }
  if (targets.logger != nullptr) {
    // The loader accepted only known names.
    targets.logger->set_level(parse_log_level(cfg.log.level).value_or(spdlog::level::info));
    message += " log level " + cfg.log.level + ";";
  }
  if (targets.access_log != nullptr) {
    targets.access_log->set_enabled(cfg.log.access);
    message += std::string(" access log ") + (cfg.log.access ? "on" : "off") + ";";
  }
  message += " (other settings apply on restart)";
  return {true, std::move(message)};
}

}  // namespace sproxy::proxy
