// The proxy's own credential for an http upstream, read at start-up from where the
// config names it (upstream.token_env / token_file, or email_* with api_key_*).
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

}  // namespace sproxy::config
