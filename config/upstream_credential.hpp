// The proxy's own credential for an http upstream, read at start-up from where the
// config names it (upstream.token_env / token_file, or email_* with api_key_*); and the
// fleet's Redis ACL credential, read the same way.
//
// Contract: exactly one kind, an API token, or an account email with a global API key.
// Each value comes from its environment variable when that is set and non-empty, else
// from its file (at most 64 KiB), trimmed of surrounding whitespace.
// Errors: start-up only; throws std::runtime_error naming the config keys, variables and
// files involved (both kinds, half a pair, nothing usable), never a credential itself.
// Thread safety: reads the environment and files; no state of its own.
#pragma once

#include <string>

#include "config/config.hpp"

namespace sproxy::config {

struct UpstreamCredential {
  std::string token;    // sent as "Authorization: Bearer <token>"
  std::string email;    // sent as X-Auth-Email, with api_key
  std::string api_key;  // sent as X-Auth-Key
};

UpstreamCredential read_upstream_credential(const UpstreamConfig& cfg);

// The fleet's Redis ACL credential (fleet.redis.user_* / password_*), read by the same
// rules: each value from its environment variable when set and non-empty, else its file.
// Nothing configured: both empty (no AUTH). A user without a password is refused.
struct RedisCredential {
  std::string user;      // empty: the default user
  std::string password;  // empty: no AUTH
};
RedisCredential read_redis_credential(const FleetRedisConfig& cfg);

}  // namespace sproxy::config
