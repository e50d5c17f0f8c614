// secrets-proxy configuration: plain structs with their defaults written in the class,
// and a loader from one JSON file.
//
// Contract: `parse_config` / `load_config_file` reject unknown keys and wrong types and
// report EVERY problem found, each with its JSON path (e.g. `$.clients[2].token_sha256:
// expected 64 lowercase hex characters`), by throwing ConfigError. They never read
// secrets from the JSON itself beyond SHA-256 hashes of client tokens.
// Start-up code only; not used on the request path. Thread safety: the structs are
// plain values; share them as `shared_ptr<const Config>`.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sproxy::config {

// Whether the TLS listener asks for client certificates, and refuses a handshake without one.
enum class ClientAuth { off, optional, required };
// The upstream the proxy serves from: its own SQLite store, or a Cloudflare-compatible API.
enum class UpstreamKind { embedded, http };
// Process log lines: one JSON object each, or `key=value` text.
enum class LogFormat { json, text };

// Each value's name as the config file writes it ("optional", "http", "text").
std::string_view to_string(ClientAuth mode);
std::string_view to_string(UpstreamKind kind);
std::string_view to_string(LogFormat format);

// TLS on the TCP listener. Off while cert_file is empty.
struct TlsListenConfig {
  std::string cert_file;                     // PEM: the server certificate, then its chain
  std::string key_file;                      // PEM private key of the certificate
  std::string client_ca_file;                // PEM CAs that client certificates must chain to
  ClientAuth client_auth = ClientAuth::off;  // client certificates
};

// A Unix domain socket listener (plain HTTP, for sidecars). Off while path is empty.
struct UnixSocketListenConfig {
  std::string path;
  unsigned mode = 0660;  // file mode of the socket; written as an octal string ("0660")
};

struct ListenConfig {
  std::string address = "127.0.0.1";
  std::uint16_t port = 8787;
  int threads = 1;                           // io_context threads, each with its own acceptor
  std::size_t max_header_bytes = 16 * 1024;  // larger: 431
  std::size_t max_body_bytes = 1024 * 1024;  // larger: 413
  // Request bodies being read or held, all connections together; beyond it: 503.
  std::size_t max_body_bytes_in_flight = 64 * 1024 * 1024;
  int read_timeout_ms = 10'000;  // whole request must arrive within this
  int idle_timeout_ms = 60'000;  // keep-alive idle limit
  int write_timeout_ms = 10'000;
  int shutdown_grace_ms = 10'000;  // in-flight requests get this long on SIGTERM
  std::size_t max_connections = 10'000;
  TlsListenConfig tls;
  UnixSocketListenConfig unix_socket;
};

// A client of the proxy. Only the SHA-256 of its credential is configured.
struct ClientConfig {
  std::string name;
  std::string token_sha256;  // hex SHA-256 of the bearer token; may be empty if email is set
  std::string email;         // X-Auth-Email (with key_sha256) alternative
  std::string key_sha256;    // hex SHA-256 of the X-Auth-Key
  std::vector<std::string> services;     // scopes the client acts as
  std::vector<std::string> accounts;     // "*" = any account
  std::vector<std::string> stores;       // empty = any store of its accounts
  std::vector<std::string> permissions;  // read | write | admin
  // Verified TLS client certificates that identify this client: "CN=<common name>",
  // "DNS:<subject alt name>" or "URI:<subject alt name>".
  std::vector<std::string> cert_subjects;
};

struct EmbeddedStoreConfig {
  std::string data_path = "data/secrets-proxy.db";
  // AES-256-GCM key: from this environment variable (64 hex chars) if set, else from
  // key_file (created with mode 0600 and a random key on first run).
  std::string key_env = "SECRETS_PROXY_STORE_KEY";
  std::string key_file = "data/store.key";
  long max_stores_per_account = 1;
  long max_secrets_per_account = 100;
  std::size_t max_value_bytes = 65536;
  std::int64_t activation_delay_ms = 0;
};

struct UpstreamConfig {
  UpstreamKind kind = UpstreamKind::embedded;
  std::string base_url;  // for http: e.g. http://127.0.0.1:9000/client/v4
  // The proxy's own upstream credential, never in the JSON itself: EITHER an API token
  // (sent as "Authorization: Bearer <token>") from token_env, else token_file; OR
  // Cloudflare's legacy email + global API key (sent as X-Auth-Email / X-Auth-Key), each
  // from its *_env, else its *_file. The loader refuses both kinds, or half a pair.
  std::string token_env;     // env var holding the upstream API token
  std::string token_file;    // file holding the upstream API token
  std::string email_env;     // env var holding the account email (X-Auth-Email)
  std::string email_file;    // file holding the account email
  std::string api_key_env;   // env var holding the global API key (X-Auth-Key)
  std::string api_key_file;  // file holding the global API key
  int connect_timeout_ms = 2'000;
  int request_timeout_ms = 10'000;
  std::size_t max_connections = 32;
  // Connections each io thread opens to an http upstream at start (at most
  // max_connections), so the first misses do not wait for TCP and TLS setup.
  std::size_t preconnect = 1;
  // How long the upstream keeps a created or value-changed secret `pending` (unset:
  // unknown); lets write-through list such a secret as the upstream would.
  std::optional<std::int64_t> activation_delay_ms;
  // PEM CA bundle trusted for an https base_url in addition to the system store.
  std::string tls_ca_file;
  // The guard in front of an http upstream (GuardedUpstream; the embedded store is not
  // guarded). Defaults: Cloudflare's 1,200 requests per 5 minutes, 10% of it unused.
  long rate_limit_requests = 1200;
  int rate_limit_window_s = 300;
  double rate_limit_margin = 0.1;    // fraction of the limit left unused, in [0, 1)
  long rate_limit_per_second = 200;  // Cloudflare's per-IP limit per second; 0 turns it off
  // Each client's share of both limits above (after the margin), in (0, 1]; 1 turns it off.
  double client_share = 0.25;
  int max_retries = 2;               // retries after the first attempt (reads; see the guard)
  int breaker_failures = 5;          // consecutive failures that open the circuit breaker
  int breaker_open_ms = 30'000;      // how long it stays open before a probe
  int write_budget_wait_ms = 2'000;  // how long a write waits for a rate-budget token
};

struct CacheTtlConfig {
  std::int64_t stores_ms = 30'000;
  std::int64_t store_ms = 30'000;
  std::int64_t secrets_ms = 30'000;  // whole-store snapshot (lists and gets)
  std::int64_t quota_ms = 10'000;
  std::int64_t negative_ms = 5'000;
};

// Warm start: the cache's entries (metadata only) saved to one sealed file on shutdown
// and every interval_s, and loaded at start (see cache/persist.hpp).
struct CachePersistConfig {
  std::string path;     // "" = off
  int interval_s = 60;  // periodic save; 0 = only on shutdown
  // AES-256-GCM key of the file: from this environment variable (64 hex chars) if set,
  // else from key_file (created 0600 with a random key if absent). Both empty: the
  // store's key settings (store.key_env / store.key_file).
  std::string key_env;
  std::string key_file;
};

struct CacheConfig {
  bool enabled = true;
  CacheTtlConfig ttl;
  std::int64_t stale_if_error_ms = 300'000;
  // Refresh ahead: a read this long (or less) before an entry expires starts one
  // background refresh and is still answered from the entry (0 = off).
  std::int64_t refresh_ahead_ms = 2'000;
  // Stale-while-revalidate: an entry expired by less than this is still served (STALE)
  // while one background refresh runs (0 = off).
  std::int64_t stale_while_revalidate_ms = 5'000;
  std::size_t max_bytes = 256 * 1024 * 1024;
  std::size_t max_entry_bytes = 4 * 1024 * 1024;
  int shards = 16;
  std::size_t max_waiters = 10'000;
  int max_wait_ms = 15'000;
  CachePersistConfig persist;
};

struct AdminConfig {
  std::string token_sha256;  // admin endpoint token (cache purge); empty = no such token
  // Environment variable holding the admin token in clear; when it is set (non-empty) the
  // proxy uses that token (it keeps only its SHA-256) instead of token_sha256.
  std::string token_env = "SPROXY_ADMIN_TOKEN";
};

// The audit log: one JSON line per write, per denial and (optionally) per read. Lines
// name the client, route and ids; never a secret value, a credential or a body.
struct AuditConfig {
  bool enabled = true;
  std::string path;    // "" = stderr, "-" = stdout, otherwise a file (appended to)
  bool reads = false;  // also log every allowed read
};

// Stand-in Cloudflare behaviour, for tests and benchmarks that use one secrets-proxy
// (serving the embedded store) as the upstream of another. Everything is off by default.
struct EmulationConfig {
  int latency_ms = 0;       // added to every upstream call, like a remote API
  double error_rate = 0.0;  // fraction (0..1) of calls answered 500 instead
  bool rate_limit = false;  // Cloudflare-style limit: 429 + block window once exceeded
  long rate_limit_requests = 1200;
  int rate_limit_window_s = 300;
  int rate_limit_block_s = 300;
};

// Process logs (see proxy/logging.hpp). level, access apply on SIGHUP; format and file
// on restart.
struct LogConfig {
  std::string level = "info";  // trace | debug | info | warn | error | critical | off
  LogFormat format = LogFormat::json;
  std::string file;    // "" = stdout, otherwise a file (appended to)
  bool access = true;  // one access line per request
};

// The fleet's Redis server (fleet mode; see config/README.md).
struct FleetRedisConfig {
  // redis://<host>:<port>, rediss://<host>:<port> (TLS, verified) or unix:///<path>
  // (config/redis_url.hpp). Required when the fleet section is present.
  std::string url;
  std::string ca_file;  // PEM CAs trusted for rediss:// in addition to the system store
  // The ACL user and its password, never in the JSON itself: each from its environment
  // variable when that is set and non-empty, else from its file. No password: no AUTH;
  // no user: AUTH as the default user.
  std::string user_env;
  std::string user_file;
  std::string password_env;
  std::string password_file;
  int connect_timeout_ms = 1'000;  // connect, TLS handshake and AUTH together
  int command_timeout_ms = 250;    // every command, from its call to its reply
  // After a failed connect no new one is tried for reconnect_min_ms, doubling with each
  // further failure up to reconnect_max_ms; commands meanwhile fail at once.
  int reconnect_min_ms = 100;
  int reconnect_max_ms = 5'000;
};

// Fleet mode's second-level cache: what one process fetched, every process reads from
// Redis (sealed; see cache/fleet_tier.hpp).
struct FleetCacheConfig {
  // Off without a fleet.cache section; on (unless "enabled": false) with one.
  bool enabled = false;
  // AES-256-GCM key of the shared entries, the same for every process: from this
  // environment variable (64 hex chars) if set, else from key_file (mode 0600, never
  // created: every process must be given the same key). One is required when enabled.
  std::string key_env;
  std::string key_file;
  // How long a fill's lock lasts, and how long a process waits for another's fill of the
  // same entry before calling the upstream itself.
  int lock_ms = 5'000;
  int wait_ms = 5'000;
};

// Fleet mode: state shared by every secrets-proxy process through one Redis server.
// Off (no Redis anywhere) unless the config file has a "fleet" section.
struct FleetConfig {
  bool enabled = false;  // set by the loader when the section is present
  FleetRedisConfig redis;
  // Starts every key (see "Key layout" in config/README.md); no '{', '}' or spaces.
  std::string key_prefix = "sproxy";
  // While Redis cannot be asked, each process keeps to this share of the upstream rate
  // limits on its own (e.g. 0.5 for two processes), in (0, 1].
  double fallback_share = 0.5;
  // While this process is not subscribed to the fleet's invalidations, it serves cached
  // entries for at most this long after the loss; then every read goes upstream.
  int max_unsynced_ms = 1'000;
  FleetCacheConfig cache;
};

struct Config {
  ListenConfig listen;
  std::vector<ClientConfig> clients;
  EmbeddedStoreConfig store;
  UpstreamConfig upstream;
  CacheConfig cache;
  AdminConfig admin;
  AuditConfig audit;
  EmulationConfig emulation;
  LogConfig log;
  FleetConfig fleet;
};

class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

Config parse_config(const nlohmann::json& j);
// Reads and parses a file; a missing file or invalid JSON is a ConfigError too.
Config load_config_file(const std::filesystem::path& path);

// Environment overrides (documented in config/README.md): SPROXY_<SECTION>_<KEY> replaces
// that key of the file for the keys listed in kEnvOverrides, validated like the file
// (a problem names the variable, e.g. `env SPROXY_LISTEN_PORT: must be between 0 and
// 65535`). Secrets never come from these: they are read from the variables the `*_env`
// keys name (admin.token_env, store.key_env, upstream.token_env), which this checks only
// for the admin token (a set variable must hold a token without spaces or control
// characters). `getenv` is the lookup (tests pass their own); null answers "unset".
// Throws ConfigError with every problem.
using EnvLookup = std::function<const char*(const char*)>;
inline constexpr std::array<const char*, 7> kEnvOverrides = {
    "SPROXY_LISTEN_ADDRESS", "SPROXY_LISTEN_PORT", "SPROXY_ADMIN_TOKEN_SHA256", "SPROXY_LOG_LEVEL",
    "SPROXY_LOG_FORMAT",     "SPROXY_LOG_FILE",    "SPROXY_LOG_ACCESS"};
void apply_env_overrides(Config& config, const EnvLookup& getenv);
// load_config_file, then apply_env_overrides with the process environment: what the
// proxy, --check-config and a SIGHUP reload all use.
Config load_effective_config(const std::filesystem::path& path);

}  // namespace sproxy::config
