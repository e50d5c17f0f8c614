// Loader's readers of the config's sections: each section's keys, and the rules over a
// whole section or entry (loader.hpp).
#include <algorithm>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "config/loader.hpp"
#include "config/redis_url.hpp"

namespace sproxy::config::detail {
namespace {

// "CN=<name>", "DNS:<name>" or "URI:<uri>" with a non-empty printable ASCII name.
bool is_cert_subject(std::string_view s) {
  std::string_view name;
  if (s.rfind("CN=", 0) == 0) {
    name = s.substr(3);
  } else if (s.rfind("DNS:", 0) == 0 || s.rfind("URI:", 0) == 0) {
    name = s.substr(4);
  } else {
    return false;
  }
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
}

}  // namespace

void Loader::read_listen(const json& j, const std::string& path, ListenConfig& c) {
  for_each_member(
      j, path,
      {"address", "port", "threads", "max_header_bytes", "max_body_bytes",
       "max_body_bytes_in_flight", "read_timeout_ms", "idle_timeout_ms", "write_timeout_ms",
       "shutdown_grace_ms", "max_connections", "tls", "unix_socket"},
      [&](std::string_view key, const json& v, const std::string& p) {
        if (key == "address") read_ip_address(v, p, c.address);
        if (key == "port") read_integer(v, p, c.port, 0, 65535);
        if (key == "threads") read_integer(v, p, c.threads, 1, kMaxThreads);
        if (key == "max_header_bytes") read_positive(v, p, c.max_header_bytes);
        if (key == "max_body_bytes") read_positive(v, p, c.max_body_bytes);
        if (key == "max_body_bytes_in_flight") read_positive(v, p, c.max_body_bytes_in_flight);
        if (key == "read_timeout_ms") read_positive(v, p, c.read_timeout_ms);
        if (key == "idle_timeout_ms") read_positive(v, p, c.idle_timeout_ms);
        if (key == "write_timeout_ms") read_positive(v, p, c.write_timeout_ms);
        if (key == "shutdown_grace_ms") read_positive(v, p, c.shutdown_grace_ms);
        if (key == "max_connections") read_positive(v, p, c.max_connections);
        if (key == "tls") read_listen_tls(v, p, c.tls);
        if (key == "unix_socket") read_unix_socket(v, p, c.unix_socket);
      });
}

void Loader::read_listen_tls(const json& j, const std::string& path, TlsListenConfig& c) {
  const bool is_object =
      for_each_member(j, path, {"cert_file", "key_file", "client_ca_file", "client_auth"},
                      [&](std::string_view key, const json& v, const std::string& p) {
                        if (key == "cert_file") read_string(v, p, c.cert_file);
                        if (key == "key_file") read_string(v, p, c.key_file);
                        if (key == "client_ca_file") read_string(v, p, c.client_ca_file);
                        if (key == "client_auth")
                          read_enum(v, p, c.client_auth, kClientAuthModes, "mode");
                      });
  if (!is_object) return;
  if (c.cert_file.empty() != c.key_file.empty()) {
    problem(path, "cert_file and key_file go together");
  }
  const bool client_certs = c.client_auth != ClientAuth::off;
  if (c.cert_file.empty() && (client_certs || !c.client_ca_file.empty())) {
    problem(path, "client certificates need TLS: set cert_file and key_file");
  }
  if (client_certs && c.client_ca_file.empty()) {
    problem(path + ".client_ca_file",
            "required when client_auth is \"" + std::string(to_string(c.client_auth)) + "\"");
  }
  if (!client_certs && !c.client_ca_file.empty()) {
    problem(path + ".client_auth", "must be \"optional\" or \"required\" with client_ca_file");
  }
}

void Loader::read_unix_socket(const json& j, const std::string& path, UnixSocketListenConfig& c) {
  for_each_member(j, path, {"path", "mode"},
                  [&](std::string_view key, const json& v, const std::string& p) {
                    if (key == "path") {
                      read_non_empty_string(v, p, c.path);
                      if (c.path.size() > kMaxUnixPathBytes) {
                        problem(p, "longer than " + std::to_string(kMaxUnixPathBytes) + " bytes");
                      }
                    }
                    if (key == "mode") read_file_mode(v, p, c.mode);
                  });
}

void Loader::read_client(const json& j, const std::string& path, ClientConfig& c) {
  bool credential_problem = false;
  const bool is_object = for_each_member(
      j, path,
      {"name", "token_sha256", "email", "key_sha256", "services", "accounts", "stores",
       "permissions", "cert_subjects"},
      [&](std::string_view key, const json& v, const std::string& p) {
        const std::size_t problems_before = problems_.size();
        if (key == "name") read_non_empty_string(v, p, c.name);
        if (key == "token_sha256") read_sha256(v, p, c.token_sha256);
        if (key == "email") read_string(v, p, c.email);
        if (key == "key_sha256") read_sha256(v, p, c.key_sha256);
        if (key == "token_sha256" || key == "email" || key == "key_sha256") {
          credential_problem = credential_problem || problems_.size() != problems_before;
        }
        if (key == "services") {
          read_string_array(v, p, c.services, [&](const std::string& s, const std::string& ip) {
            if (one_of(s, kServices)) return true;
            problem(ip, "unknown service \"" + s + "\" (expected " + list_of(kServices) + ")");
            return false;
          });
        }
        if (key == "accounts") {
          read_string_array(v, p, c.accounts, [&](const std::string& s, const std::string& ip) {
            if (s == "*" || is_lower_hex(s, 32)) return true;
            problem(ip, "expected \"*\" or an account id of 32 lowercase hex characters");
            return false;
          });
        }
        if (key == "stores") {
          read_string_array(v, p, c.stores, [&](const std::string& s, const std::string& ip) {
            if (is_lower_hex(s, 32)) return true;
            problem(ip, "expected a store id of 32 lowercase hex characters");
            return false;
          });
        }
        if (key == "permissions") {
          read_string_array(v, p, c.permissions, [&](const std::string& s, const std::string& ip) {
            if (one_of(s, kPermissions)) return true;
            problem(ip,
                    "unknown permission \"" + s + "\" (expected " + list_of(kPermissions) + ")");
            return false;
          });
        }
        if (key == "cert_subjects") {
          read_string_array(v, p, c.cert_subjects,
                            [&](const std::string& s, const std::string& ip) {
                              if (is_cert_subject(s)) return true;
                              problem(ip,
                                      "expected \"CN=<name>\", \"DNS:<name>\" or "
                                      "\"URI:<uri>\" (printable ASCII)");
                              return false;
                            });
        }
      });
  if (!is_object) return;

  // Rules over the whole entry. A key that was present but malformed already has a
  // problem of its own; these report what is missing.
  if (!j.contains("name")) problem(path + ".name", "required");
  if (!credential_problem) {
    const bool has_token = !c.token_sha256.empty();
    const bool has_email = !c.email.empty();
    const bool has_key = !c.key_sha256.empty();
    if (has_email && !has_key) {
      problem(path, "email needs key_sha256");
    } else if (has_key && !has_email) {
      problem(path, "key_sha256 needs email");
    } else if (!has_token && !has_email && c.cert_subjects.empty()) {
      problem(path, "needs token_sha256, email and key_sha256, or cert_subjects");
    }
  }
  if (!j.contains("accounts") || (j["accounts"].is_array() && j["accounts"].empty())) {
    problem(path + ".accounts", "must list at least one account id, or \"*\" for any");
  }
  if (!j.contains("permissions") || (j["permissions"].is_array() && j["permissions"].empty())) {
    problem(path + ".permissions", "must list at least one of " + list_of(kPermissions));
  }
}

void Loader::read_clients(const json& j, const std::string& path, std::vector<ClientConfig>& out) {
  if (!j.is_array()) {
    problem(path, "expected an array");
    return;
  }
  out.clear();
  out.resize(j.size());
  std::set<std::string> names;
  std::set<std::string> tokens;
  std::set<std::string> emails;
  std::set<std::string> subjects;
  for (std::size_t i = 0; i < j.size(); ++i) {
    const std::string item = path + "[" + std::to_string(i) + "]";
    read_client(j[i], item, out[i]);
    const ClientConfig& c = out[i];
    if (!c.name.empty() && !names.insert(c.name).second) {
      problem(item + ".name", "duplicate client name \"" + c.name + "\"");
    }
    if (!c.token_sha256.empty() && !tokens.insert(c.token_sha256).second) {
      problem(item + ".token_sha256", "duplicate token hash (another client has it)");
    }
    if (!c.email.empty() && !emails.insert(c.email).second) {
      problem(item + ".email", "duplicate email (another client has it)");
    }
    for (std::size_t k = 0; k < c.cert_subjects.size(); ++k) {
      if (!subjects.insert(c.cert_subjects[k]).second) {
        problem(item + ".cert_subjects[" + std::to_string(k) + "]",
                "duplicate certificate subject \"" + c.cert_subjects[k] + "\"");
      }
    }
  }
}

void Loader::read_store(const json& j, const std::string& path, EmbeddedStoreConfig& c) {
  for_each_member(j, path,
                  {"data_path", "key_env", "key_file", "max_stores_per_account",
                   "max_secrets_per_account", "max_value_bytes", "activation_delay_ms"},
                  [&](std::string_view key, const json& v, const std::string& p) {
                    if (key == "data_path") read_non_empty_string(v, p, c.data_path);
                    if (key == "key_env") read_string(v, p, c.key_env);
                    if (key == "key_file") read_non_empty_string(v, p, c.key_file);
                    if (key == "max_stores_per_account")
                      read_positive(v, p, c.max_stores_per_account);
                    if (key == "max_secrets_per_account")
                      read_positive(v, p, c.max_secrets_per_account);
                    if (key == "max_value_bytes") read_positive(v, p, c.max_value_bytes);
                    if (key == "activation_delay_ms")
                      read_non_negative(v, p, c.activation_delay_ms);
                  });
}

void Loader::read_upstream(const json& j, const std::string& path, UpstreamConfig& c) {
  bool credential_problem = false;  // a malformed credential key has its own problem
  const bool is_object = for_each_member(
      j, path,
      {"kind",
       "base_url",
       "token_env",
       "token_file",
       "email_env",
       "email_file",
       "api_key_env",
       "api_key_file",
       "connect_timeout_ms",
       "request_timeout_ms",
       "max_connections",
       "preconnect",
       "activation_delay_ms",
       "tls_ca_file",
       "rate_limit_requests",
       "rate_limit_window_s",
       "rate_limit_margin",
       "rate_limit_per_second",
       "max_retries",
       "breaker_failures",
       "breaker_open_ms",
       "write_budget_wait_ms",
       "client_share"},
      [&](std::string_view key, const json& v, const std::string& p) {
        if (key == "kind") read_enum(v, p, c.kind, kUpstreamKinds, "upstream kind");
        if (key == "base_url") {
          read_string(v, p, c.base_url);
          if (!c.base_url.empty() && c.base_url.rfind("http://", 0) != 0 &&
              c.base_url.rfind("https://", 0) != 0) {
            problem(p, "expected an http:// or https:// URL");
          }
        }
        const std::size_t problems_before = problems_.size();
        if (key == "token_env") read_string(v, p, c.token_env);
        if (key == "token_file") read_string(v, p, c.token_file);
        if (key == "email_env") read_string(v, p, c.email_env);
        if (key == "email_file") read_string(v, p, c.email_file);
        if (key == "api_key_env") read_string(v, p, c.api_key_env);
        if (key == "api_key_file") read_string(v, p, c.api_key_file);
        credential_problem = credential_problem || problems_.size() != problems_before;
        if (key == "connect_timeout_ms") read_positive(v, p, c.connect_timeout_ms);
        if (key == "request_timeout_ms") read_positive(v, p, c.request_timeout_ms);
        if (key == "max_connections") read_positive(v, p, c.max_connections);
        if (key == "preconnect") read_non_negative(v, p, c.preconnect);
        if (key == "activation_delay_ms") {
          std::int64_t ms = 0;
          read_non_negative(v, p, ms);
          c.activation_delay_ms = ms;
        }
        if (key == "tls_ca_file") read_string(v, p, c.tls_ca_file);
        if (key == "rate_limit_requests")
          read_integer(v, p, c.rate_limit_requests, 1, kMaxRateLimitRequests);
        if (key == "rate_limit_window_s")
          read_integer(v, p, c.rate_limit_window_s, 1, kMaxRateLimitWindowS);
        if (key == "rate_limit_margin") read_margin(v, p, c.rate_limit_margin);
        if (key == "rate_limit_per_second")
          read_integer(v, p, c.rate_limit_per_second, 0, kMaxRateLimitRequests);
        if (key == "max_retries") read_integer(v, p, c.max_retries, 0, kMaxUpstreamRetries);
        if (key == "breaker_failures") read_positive(v, p, c.breaker_failures);
        if (key == "breaker_open_ms") read_positive(v, p, c.breaker_open_ms);
        if (key == "write_budget_wait_ms") read_non_negative(v, p, c.write_budget_wait_ms);
        if (key == "client_share") read_share(v, p, c.client_share);
      });
  if (is_object && c.kind == UpstreamKind::http && c.base_url.empty() &&
      !(j.contains("base_url") && !j["base_url"].is_string())) {
    problem(path + ".base_url", "required when kind is \"http\"");
  }
  if (is_object && !credential_problem) check_upstream_credential(path, c);
  if (is_object && c.preconnect > c.max_connections) {
    problem(path + ".preconnect",
            "must not exceed max_connections (" + std::to_string(c.max_connections) + ")");
  }
}

// One credential kind, and a whole email + key pair. That one is configured at all is
// checked at start-up (upstream::http_upstream_options), where the environment is.
void Loader::check_upstream_credential(const std::string& path, const UpstreamConfig& c) {
  const bool token = !c.token_env.empty() || !c.token_file.empty();
  const bool email = !c.email_env.empty() || !c.email_file.empty();
  const bool key = !c.api_key_env.empty() || !c.api_key_file.empty();
  if (token && (email || key)) {
    problem(path,
            "configure one upstream credential: an API token (token_env / token_file) or an "
            "email and global API key (email_env / email_file with api_key_env / "
            "api_key_file), not both");
  } else if (email && !key) {
    problem(path, "email_env / email_file needs api_key_env or api_key_file");
  } else if (key && !email) {
    problem(path, "api_key_env / api_key_file needs email_env or email_file");
  }
}

void Loader::read_ttl(const json& j, const std::string& path, CacheTtlConfig& c) {
  for_each_member(j, path, {"stores_ms", "store_ms", "secrets_ms", "quota_ms", "negative_ms"},
                  [&](std::string_view key, const json& v, const std::string& p) {
                    if (key == "stores_ms") read_non_negative(v, p, c.stores_ms);
                    if (key == "store_ms") read_non_negative(v, p, c.store_ms);
                    if (key == "secrets_ms") read_non_negative(v, p, c.secrets_ms);
                    if (key == "quota_ms") read_non_negative(v, p, c.quota_ms);
                    if (key == "negative_ms") read_non_negative(v, p, c.negative_ms);
                  });
}

void Loader::read_cache(const json& j, const std::string& path, CacheConfig& c) {
  for_each_member(
      j, path,
      {"enabled", "ttl", "stale_if_error_ms", "refresh_ahead_ms", "stale_while_revalidate_ms",
       "max_bytes", "max_entry_bytes", "shards", "max_waiters", "max_wait_ms", "persist"},
      [&](std::string_view key, const json& v, const std::string& p) {
        if (key == "enabled") read_bool(v, p, c.enabled);
        if (key == "ttl") read_ttl(v, p, c.ttl);
        if (key == "stale_if_error_ms") read_non_negative(v, p, c.stale_if_error_ms);
        if (key == "refresh_ahead_ms") read_non_negative(v, p, c.refresh_ahead_ms);
        if (key == "stale_while_revalidate_ms") {
          read_non_negative(v, p, c.stale_while_revalidate_ms);
        }
        if (key == "max_bytes") read_positive(v, p, c.max_bytes);
        if (key == "max_entry_bytes") read_positive(v, p, c.max_entry_bytes);
        if (key == "shards") read_integer(v, p, c.shards, 1, kMaxShards);
        if (key == "max_waiters") read_positive(v, p, c.max_waiters);
        if (key == "max_wait_ms") read_positive(v, p, c.max_wait_ms);
        if (key == "persist") read_cache_persist(v, p, c.persist);
      });
}

void Loader::read_cache_persist(const json& j, const std::string& path, CachePersistConfig& c) {
  for_each_member(j, path, {"path", "interval_s", "key_env", "key_file"},
                  [&](std::string_view key, const json& v, const std::string& p) {
                    if (key == "path") read_string(v, p, c.path);
                    if (key == "interval_s")
                      read_integer(v, p, c.interval_s, 0, kMaxPersistIntervalS);
                    if (key == "key_env") read_string(v, p, c.key_env);
                    if (key == "key_file") read_string(v, p, c.key_file);
                  });
}

void Loader::read_admin(const json& j, const std::string& path, AdminConfig& c) {
  for_each_member(j, path, {"token_sha256", "token_env"},
                  [&](std::string_view key, const json& v, const std::string& p) {
                    if (key == "token_sha256") read_sha256(v, p, c.token_sha256);
                    if (key == "token_env") read_string(v, p, c.token_env);
                  });
}

void Loader::read_log_key(std::string_view key, const json& v, const std::string& p, LogConfig& c) {
  if (key == "level") read_one_of(v, p, c.level, kLogLevels);
  if (key == "format") read_enum(v, p, c.format, kLogFormats, "value");
  if (key == "file") read_string(v, p, c.file);
  if (key == "access") read_bool(v, p, c.access);
}

void Loader::read_log(const json& j, const std::string& path, LogConfig& c) {
  for_each_member(j, path, {"level", "format", "file", "access"},
                  [&](std::string_view key, const json& v, const std::string& p) {
                    read_log_key(key, v, p, c);
                  });
}

void Loader::read_audit(const json& j, const std::string& path, AuditConfig& c) {
  for_each_member(j, path, {"enabled", "path", "reads"},
                  [&](std::string_view key, const json& v, const std::string& p) {
                    if (key == "enabled") read_bool(v, p, c.enabled);
                    if (key == "path") read_string(v, p, c.path);
                    if (key == "reads") read_bool(v, p, c.reads);
                  });
}

void Loader::read_emulation(const json& j, const std::string& path, EmulationConfig& c) {
  for_each_member(j, path,
                  {"latency_ms", "error_rate", "rate_limit", "rate_limit_requests",
                   "rate_limit_window_s", "rate_limit_block_s"},
                  [&](std::string_view key, const json& v, const std::string& p) {
                    if (key == "latency_ms") read_integer(v, p, c.latency_ms, 0, kMaxLatencyMs);
                    if (key == "error_rate") read_fraction(v, p, c.error_rate);
                    if (key == "rate_limit") read_bool(v, p, c.rate_limit);
                    if (key == "rate_limit_requests") read_positive(v, p, c.rate_limit_requests);
                    if (key == "rate_limit_window_s") read_positive(v, p, c.rate_limit_window_s);
                    if (key == "rate_limit_block_s") read_positive(v, p, c.rate_limit_block_s);
                  });
}

void Loader::read_fleet_redis(const json& j, const std::string& path, FleetRedisConfig& c) {
  const bool is_object = for_each_member(
      j, path,
      {"url", "ca_file", "user_env", "user_file", "password_env", "password_file",
       "connect_timeout_ms", "command_timeout_ms", "reconnect_min_ms", "reconnect_max_ms"},
      [&](std::string_view key, const json& v, const std::string& p) {
        if (key == "url") read_redis_url(v, p, c.url);
        if (key == "ca_file") read_string(v, p, c.ca_file);
        if (key == "user_env") read_string(v, p, c.user_env);
        if (key == "user_file") read_string(v, p, c.user_file);
        if (key == "password_env") read_string(v, p, c.password_env);
        if (key == "password_file") read_string(v, p, c.password_file);
        if (key == "connect_timeout_ms")
          read_integer(v, p, c.connect_timeout_ms, 1, kMaxRedisTimeoutMs);
        if (key == "command_timeout_ms")
          read_integer(v, p, c.command_timeout_ms, 1, kMaxRedisTimeoutMs);
        if (key == "reconnect_min_ms")
          read_integer(v, p, c.reconnect_min_ms, 0, kMaxRedisTimeoutMs);
        if (key == "reconnect_max_ms")
          read_integer(v, p, c.reconnect_max_ms, 0, kMaxRedisTimeoutMs);
      });
  if (!is_object) return;
  if (!j.contains("url")) problem(path + ".url", "required in fleet mode");
  if (c.reconnect_max_ms < c.reconnect_min_ms) {
    problem(path + ".reconnect_max_ms", "must not be less than reconnect_min_ms");
  }
  const bool user = !c.user_env.empty() || !c.user_file.empty();
  const bool password = !c.password_env.empty() || !c.password_file.empty();
  if (user && !password) {
    problem(path, "user_env / user_file needs password_env or password_file");
  }
}

void Loader::read_redis_url(const json& j, const std::string& path, std::string& out) {
  if (!j.is_string()) {
    problem(path, "expected a string");
    return;
  }
  std::string why;
  if (!parse_redis_url(j.get_ref<const std::string&>(), why)) {
    problem(path, why);
    return;
  }
  out = j.get<std::string>();
}

void Loader::read_key_prefix(const json& j, const std::string& path, std::string& out) {
  std::string prefix;
  read_non_empty_string(j, path, prefix);
  if (prefix.empty()) return;
  for (char c : prefix) {
    if (c == '{' || c == '}' || static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      problem(path, "must not contain '{', '}', spaces or control characters");
      return;
    }
  }
  out = prefix;
}

void Loader::read_fleet_cache(const json& j, const std::string& path, FleetCacheConfig& c) {
  c.enabled = true;
  const bool is_object =
      for_each_member(j, path, {"enabled", "key_env", "key_file", "lock_ms", "wait_ms"},
                      [&](std::string_view key, const json& v, const std::string& p) {
                        if (key == "enabled") read_bool(v, p, c.enabled);
                        if (key == "key_env") read_string(v, p, c.key_env);
                        if (key == "key_file") read_string(v, p, c.key_file);
                        if (key == "lock_ms") read_integer(v, p, c.lock_ms, 1, kMaxRedisTimeoutMs);
                        if (key == "wait_ms") read_integer(v, p, c.wait_ms, 0, kMaxRedisTimeoutMs);
                      });
  if (is_object && c.enabled && c.key_env.empty() && c.key_file.empty()) {
    problem(path, "the shared cache needs key_env or key_file (or \"enabled\": false)");
  }
}

void Loader::read_fleet(const json& j, const std::string& path, FleetConfig& c) {
  c.enabled = true;
  const bool is_object = for_each_member(
      j, path, {"redis", "key_prefix", "fallback_share", "max_unsynced_ms", "cache"},
      [&](std::string_view key, const json& v, const std::string& p) {
        if (key == "redis") read_fleet_redis(v, p, c.redis);
        if (key == "key_prefix") read_key_prefix(v, p, c.key_prefix);
        if (key == "fallback_share") read_share(v, p, c.fallback_share);
        if (key == "max_unsynced_ms") read_integer(v, p, c.max_unsynced_ms, 0, kMaxRedisTimeoutMs);
        if (key == "cache") read_fleet_cache(v, p, c.cache);
      });
  if (is_object && !j.contains("redis")) problem(path + ".redis", "required in fleet mode");
}

void Loader::read_root(const json& j, Config& c) {
  for_each_member(j, "$",
                  {"listen", "clients", "store", "upstream", "cache", "admin", "audit", "emulation",
                   "log", "fleet"},
                  [&](std::string_view key, const json& v, const std::string& p) {
                    if (key == "listen") read_listen(v, p, c.listen);
                    if (key == "clients") read_clients(v, p, c.clients);
                    if (key == "store") read_store(v, p, c.store);
                    if (key == "upstream") read_upstream(v, p, c.upstream);
                    if (key == "cache") read_cache(v, p, c.cache);
                    if (key == "admin") read_admin(v, p, c.admin);
                    if (key == "audit") read_audit(v, p, c.audit);
                    if (key == "emulation") read_emulation(v, p, c.emulation);
                    if (key == "log") read_log(v, p, c.log);
                    if (key == "fleet") read_fleet(v, p, c.fleet);
                  });
}

}  // namespace sproxy::config::detail
