// SIGHUP reload: what of a changed config file takes effect without a restart.
//
// Contract: `reload_config` loads the file as start-up does (config::load_effective_config:
// strict loader plus environment overrides) and, only when it is wholly valid, applies
// - `clients` and the admin token to the identity resolver (atomic swap; see identity.hpp),
// - the cache's TTLs, stale windows, refresh-ahead, waiter limits and byte budget
//   (ReadThroughCache::reconfigure: existing entries keep the expiry they were stored
//   with, new fills use the new TTLs),
// - `log.level` (the default logger) and `log.access` (the access log's switch).
// A file that does not load changes nothing. Every other setting (listen, upstream,
// store, audit, cache shards, log format and file) takes effect on restart.
// Never throws; `message` is one log line saying what happened (on failure every
// problem, which never holds a credential: the config holds only hashes).
// Thread safety: may run on any thread while requests are served (each target swaps
// atomically); not concurrently with itself.
#pragma once

#include <spdlog/logger.h>

#include <filesystem>
#include <string>

#include "cache/read_through.hpp"
#include "proxy/access_log.hpp"
#include "proxy/identity.hpp"

namespace sproxy::proxy {

struct ReloadResult {
  bool ok = false;
  std::string message;
};

// What a reload changes; a null target is left alone.
struct ReloadTargets {
  ReloadableIdentityResolver* identities = nullptr;
  cache::ReadThroughCache* cache = nullptr;
  AccessLog* access_log = nullptr;
  spdlog::logger* logger = nullptr;  // gets log.level
};

ReloadResult reload_config(const std::filesystem::path& config_path, const ReloadTargets& targets);

}  // namespace sproxy::proxy
