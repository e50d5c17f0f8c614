#include "config/config.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string_view>
#include <utility>

#include "config/redis_url.hpp"

namespace sproxy::config {
namespace {

using nlohmann::json;

// The contract's secret scopes (the services a client acts as). config sits below
// upstream in the dependency order, so it keeps its own copy of the list; a test checks
// that it matches upstream::kScopeNames.
constexpr std::array<std::string_view, 6> kServices = {"access", "ai_gateway", "containers",
                                                       "dex",    "websearch",  "workers"};
constexpr std::array<std::string_view, 3> kPermissions = {"read", "write", "admin"};
// The names of an enum's values, in the enum's order (the value is the index).
constexpr std::array<std::string_view, 2> kUpstreamKinds = {"embedded", "http"};
// proxy/logging.cpp parses the same names.
constexpr std::array<std::string_view, 7> kLogLevels = {"trace", "debug",    "info", "warn",
                                                        "error", "critical", "off"};
constexpr std::array<std::string_view, 2> kLogFormats = {"json", "text"};
constexpr std::array<std::string_view, 3> kClientAuthModes = {"off", "optional", "required"};
static_assert(static_cast<std::size_t>(UpstreamKind::http) + 1 == kUpstreamKinds.size());
static_assert(static_cast<std::size_t>(LogFormat::text) + 1 == kLogFormats.size());
static_assert(static_cast<std::size_t>(ClientAuth::required) + 1 == kClientAuthModes.size());
// sockaddr_un::sun_path holds 108 bytes, the terminating NUL included.
constexpr std::size_t kMaxUnixPathBytes = 107;

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

bool is_lower_hex(std::string_view s, std::size_t length) {
  return s.size() == length && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

template <std::size_t N>
bool one_of(std::string_view value, const std::array<std::string_view, N>& allowed) {
  return std::find(allowed.begin(), allowed.end(), value) != allowed.end();
}

template <std::size_t N>
std::string list_of(const std::array<std::string_view, N>& allowed) {
  std::string out;
  for (std::size_t i = 0; i < N; ++i) {
    if (i > 0) out += i + 1 == N ? " or " : ", ";
    out += allowed[i];
  }
  return out;
}

// Walks the JSON document, writing values into the config structs and collecting every
// problem with its path instead of stopping at the first one.
class Loader {
 public:
  std::vector<std::string> take_problems() { return std::move(problems_); }

  void problem(const std::string& path, std::string_view message) {
    problems_.push_back(path + ": " + std::string(message));
  }

  // Calls `on_key(key, value, path)` for each member of the object at `path`; reports
  // every key not in `known` and a non-object value. Returns false for a non-object.
  template <class OnKey>
  bool for_each_member(const json& j, const std::string& path,
                       std::initializer_list<std::string_view> known, OnKey&& on_key) {
    if (!j.is_object()) {
      problem(path, "expected an object");
      return false;
    }
    for (const auto& [key, value] : j.items()) {
      const std::string child = path + "." + key;
      if (std::find(known.begin(), known.end(), std::string_view(key)) == known.end()) {
        problem(child, "unknown key");
        continue;
      }
      on_key(std::string_view(key), value, child);
    }
    return true;
  }

  void read_string(const json& j, const std::string& path, std::string& out) {
    if (!j.is_string()) {
      problem(path, "expected a string");
      return;
    }
    out = j.get<std::string>();
  }

  void read_non_empty_string(const json& j, const std::string& path, std::string& out) {
    if (!j.is_string()) {
      problem(path, "expected a string");
      return;
    }
    if (j.get_ref<const std::string&>().empty()) {
      problem(path, "must not be empty");
      return;
    }
    out = j.get<std::string>();
  }

  // A numeric IPv4 or IPv6 address (what the listener can bind; no host names).
  void read_ip_address(const json& j, const std::string& path, std::string& out) {
    if (!j.is_string()) {
      problem(path, "expected a string");
      return;
    }
    const auto& s = j.get_ref<const std::string&>();
    unsigned char buf[sizeof(in6_addr)];
    if (::inet_pton(AF_INET, s.c_str(), buf) != 1 && ::inet_pton(AF_INET6, s.c_str(), buf) != 1) {
      problem(path, "expected an IPv4 or IPv6 address");
      return;
    }
    out = s;
  }

  void read_bool(const json& j, const std::string& path, bool& out) {
    if (!j.is_boolean()) {
      problem(path, "expected a boolean");
      return;
    }
    out = j.get<bool>();
  }

  // Integers within [min, max]; `T` is the destination type.
  template <class T>
  void read_integer(const json& j, const std::string& path, T& out, long long min,
                    unsigned long long max) {
    if (!j.is_number_integer()) {
      problem(path, "expected an integer");
      return;
    }
    bool too_small = false;
    bool too_large = false;
    if (j.is_number_unsigned()) {
      const auto v = j.get<unsigned long long>();
      too_small = min > 0 && v < static_cast<unsigned long long>(min);
      too_large = v > max;
    } else {
      const auto v = j.get<long long>();
      too_small = v < min;
      too_large = v >= 0 && static_cast<unsigned long long>(v) > max;
    }
    if (too_small || too_large) {
      problem(path, range_message(min, max, too_large));
      return;
    }
    out = j.is_number_unsigned() ? static_cast<T>(j.get<unsigned long long>())
                                 : static_cast<T>(j.get<long long>());
  }

  template <class T>
  void read_positive(const json& j, const std::string& path, T& out) {
    read_integer(j, path, out, 1, static_cast<unsigned long long>(std::numeric_limits<T>::max()));
  }

  template <class T>
  void read_non_negative(const json& j, const std::string& path, T& out) {
    read_integer(j, path, out, 0, static_cast<unsigned long long>(std::numeric_limits<T>::max()));
  }

  void read_sha256(const json& j, const std::string& path, std::string& out) {
    if (!j.is_string()) {
      problem(path, "expected a string");
      return;
    }
    const auto& s = j.get_ref<const std::string&>();
    if (!s.empty() && !is_lower_hex(s, 64)) {
      problem(path, "expected 64 lowercase hex characters (a SHA-256)");
      return;
    }
    out = s;
  }

  // An array of strings, each checked by `check` (which reports its own problem and
  // returns false to drop the item).
  template <class Check>
  void read_string_array(const json& j, const std::string& path, std::vector<std::string>& out,
                         Check&& check) {
    if (!j.is_array()) {
      problem(path, "expected an array of strings");
      return;
    }
    out.clear();
    for (std::size_t i = 0; i < j.size(); ++i) {
      const std::string item_path = path + "[" + std::to_string(i) + "]";
      if (!j[i].is_string()) {
        problem(item_path, "expected a string");
        continue;
      }
      const auto& s = j[i].get_ref<const std::string&>();
      if (check(s, item_path)) out.push_back(s);
    }
  }

  void read_listen(const json& j, const std::string& path, ListenConfig& c) {
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

  void read_listen_tls(const json& j, const std::string& path, TlsListenConfig& c) {
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

  void read_unix_socket(const json& j, const std::string& path, UnixSocketListenConfig& c) {
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

  // An octal file mode written as a string: "0660", "660", "0600".
  void read_file_mode(const json& j, const std::string& path, unsigned& out) {
    if (!j.is_string()) {
      problem(path, "expected an octal string such as \"0660\"");
      return;
    }
    const auto& s = j.get_ref<const std::string&>();
    const bool octal =
        s.size() >= 3 && s.size() <= 4 &&
        std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '7'; });
    if (!octal || (s.size() == 4 && s[0] != '0')) {
      problem(path, "expected an octal file mode from \"000\" to \"0777\"");
      return;
    }
    out = static_cast<unsigned>(std::stoul(s, nullptr, 8));
  }

  void read_client(const json& j, const std::string& path, ClientConfig& c) {
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
            read_string_array(v, p, c.permissions,
                              [&](const std::string& s, const std::string& ip) {
                                if (one_of(s, kPermissions)) return true;
                                problem(ip, "unknown permission \"" + s + "\" (expected " +
                                                list_of(kPermissions) + ")");
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

  void read_clients(const json& j, const std::string& path, std::vector<ClientConfig>& out) {
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

  void read_store(const json& j, const std::string& path, EmbeddedStoreConfig& c) {
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

  void read_upstream(const json& j, const std::string& path, UpstreamConfig& c) {
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
  void check_upstream_credential(const std::string& path, const UpstreamConfig& c) {
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

  // A number (integer or not) within [0, 1): a share of a limit left unused.
  void read_margin(const json& j, const std::string& path, double& out) {
    if (!j.is_number()) {
      problem(path, "expected a number");
      return;
    }
    const double v = j.get<double>();
    if (!(v >= 0.0 && v < 1.0)) {
      problem(path, "must be at least 0 and less than 1");
      return;
    }
    out = v;
  }

  void read_share(const json& j, const std::string& path, double& out) {
    if (!j.is_number()) {
      problem(path, "expected a number");
      return;
    }
    const double v = j.get<double>();
    if (!(v > 0.0 && v <= 1.0)) {
      problem(path, "must be more than 0 and at most 1");
      return;
    }
    out = v;
  }

  void read_ttl(const json& j, const std::string& path, CacheTtlConfig& c) {
    for_each_member(j, path, {"stores_ms", "store_ms", "secrets_ms", "quota_ms", "negative_ms"},
                    [&](std::string_view key, const json& v, const std::string& p) {
                      if (key == "stores_ms") read_non_negative(v, p, c.stores_ms);
                      if (key == "store_ms") read_non_negative(v, p, c.store_ms);
                      if (key == "secrets_ms") read_non_negative(v, p, c.secrets_ms);
                      if (key == "quota_ms") read_non_negative(v, p, c.quota_ms);
                      if (key == "negative_ms") read_non_negative(v, p, c.negative_ms);
                    });
  }

  void read_cache(const json& j, const std::string& path, CacheConfig& c) {
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

  void read_cache_persist(const json& j, const std::string& path, CachePersistConfig& c) {
    for_each_member(j, path, {"path", "interval_s", "key_env", "key_file"},
                    [&](std::string_view key, const json& v, const std::string& p) {
                      if (key == "path") read_string(v, p, c.path);
                      if (key == "interval_s")
                        read_integer(v, p, c.interval_s, 0, kMaxPersistIntervalS);
                      if (key == "key_env") read_string(v, p, c.key_env);
                      if (key == "key_file") read_string(v, p, c.key_file);
                    });
  }

  void read_admin(const json& j, const std::string& path, AdminConfig& c) {
    for_each_member(j, path, {"token_sha256", "token_env"},
                    [&](std::string_view key, const json& v, const std::string& p) {
                      if (key == "token_sha256") read_sha256(v, p, c.token_sha256);
                      if (key == "token_env") read_string(v, p, c.token_env);
                    });
  }

  template <std::size_t N>
  void read_one_of(const json& j, const std::string& path, std::string& out,
                   const std::array<std::string_view, N>& allowed) {
    if (!j.is_string()) {
      problem(path, "expected a string");
    } else if (!one_of(j.get_ref<const std::string&>(), allowed)) {
      problem(path,
              "unknown value \"" + j.get<std::string>() + "\" (expected " + list_of(allowed) + ")");
    } else {
      out = j.get<std::string>();
    }
  }

  // Reads one of `names` into `out` as the enum value at the same position; `what` names
  // the value in the problem (`unknown upstream kind "grpc" (expected embedded or http)`).
  template <class Enum, std::size_t N>
  void read_enum(const json& j, const std::string& path, Enum& out,
                 const std::array<std::string_view, N>& names, std::string_view what) {
    if (!j.is_string()) {
      problem(path, "expected a string");
      return;
    }
    const auto& s = j.get_ref<const std::string&>();
    const auto it = std::find(names.begin(), names.end(), s);
    if (it == names.end()) {
      problem(path,
              "unknown " + std::string(what) + " \"" + s + "\" (expected " + list_of(names) + ")");
      return;
    }
    out = static_cast<Enum>(it - names.begin());
  }

  void read_log_key(std::string_view key, const json& v, const std::string& p, LogConfig& c) {
    if (key == "level") read_one_of(v, p, c.level, kLogLevels);
    if (key == "format") read_enum(v, p, c.format, kLogFormats, "value");
    if (key == "file") read_string(v, p, c.file);
    if (key == "access") read_bool(v, p, c.access);
  }

  void read_log(const json& j, const std::string& path, LogConfig& c) {
    for_each_member(j, path, {"level", "format", "file", "access"},
                    [&](std::string_view key, const json& v, const std::string& p) {
                      read_log_key(key, v, p, c);
                    });
  }

  void read_audit(const json& j, const std::string& path, AuditConfig& c) {
    for_each_member(j, path, {"enabled", "path", "reads"},
                    [&](std::string_view key, const json& v, const std::string& p) {
                      if (key == "enabled") read_bool(v, p, c.enabled);
                      if (key == "path") read_string(v, p, c.path);
                      if (key == "reads") read_bool(v, p, c.reads);
                    });
  }

  // A number (integer or not) within [0, 1].
  void read_fraction(const json& j, const std::string& path, double& out) {
    if (!j.is_number()) {
      problem(path, "expected a number");
      return;
    }
    const double v = j.get<double>();
    if (!(v >= 0.0 && v <= 1.0)) {
      problem(path, "must be between 0 and 1");
      return;
    }
    out = v;
  }

  void read_emulation(const json& j, const std::string& path, EmulationConfig& c) {
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

  void read_fleet_redis(const json& j, const std::string& path, FleetRedisConfig& c) {
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

  void read_redis_url(const json& j, const std::string& path, std::string& out) {
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

  void read_key_prefix(const json& j, const std::string& path, std::string& out) {
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

  void read_fleet(const json& j, const std::string& path, FleetConfig& c) {
    c.enabled = true;
    const bool is_object =
        for_each_member(j, path, {"redis", "key_prefix", "fallback_share", "max_unsynced_ms"},
                        [&](std::string_view key, const json& v, const std::string& p) {
                          if (key == "redis") read_fleet_redis(v, p, c.redis);
                          if (key == "key_prefix") read_key_prefix(v, p, c.key_prefix);
                          if (key == "fallback_share") read_share(v, p, c.fallback_share);
                          if (key == "max_unsynced_ms")
                            read_integer(v, p, c.max_unsynced_ms, 0, kMaxRedisTimeoutMs);
                        });
    if (is_object && !j.contains("redis")) problem(path + ".redis", "required in fleet mode");
  }

  void read_root(const json& j, Config& c) {
    for_each_member(j, "$",
                    {"listen", "clients", "store", "upstream", "cache", "admin", "audit",
                     "emulation", "log", "fleet"},
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

 private:
  static constexpr unsigned long long kMaxThreads = 1024;
  static constexpr unsigned long long kMaxShards = 65536;
  // Longer than any client would wait: a stand-in that slow is a misconfiguration.
  static constexpr unsigned long long kMaxLatencyMs = 60'000;
  // The guard's bounds: upstream::kMaxRateCapacity (config keeps its own copy, as for
  // the scopes), a window of at most one day, and a handful of retries.
  static constexpr unsigned long long kMaxRateLimitRequests = 100'000;
  static constexpr unsigned long long kMaxRateLimitWindowS = 86'400;
  static constexpr unsigned long long kMaxUpstreamRetries = 10;
  static constexpr unsigned long long kMaxPersistIntervalS = 86'400;
  static constexpr unsigned long long kMaxRedisTimeoutMs = 600'000;

  static std::string range_message(long long min, unsigned long long max, bool too_large) {
    // Small ranges are stated whole; for wide ones only the bound that was crossed.
    if (max < static_cast<unsigned long long>(std::numeric_limits<int>::max())) {
      return "must be between " + std::to_string(min) + " and " + std::to_string(max);
    }
    if (too_large) return "must be at most " + std::to_string(max);
    return min == 0 ? "must be 0 or greater" : "must be at least " + std::to_string(min);
  }

  std::vector<std::string> problems_;
};

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

namespace {

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

std::string_view to_string(ClientAuth mode) {
  return kClientAuthModes[static_cast<std::size_t>(mode)];
}
std::string_view to_string(UpstreamKind kind) {
  return kUpstreamKinds[static_cast<std::size_t>(kind)];
}
std::string_view to_string(LogFormat format) {
  return kLogFormats[static_cast<std::size_t>(format)];
}

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
