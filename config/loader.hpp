// The strict JSON loader behind parse_config and apply_env_overrides (config.hpp),
// shared by the files that implement them: loader.cpp reads values of one type,
// sections.cpp the config's sections, env_overrides.cpp the environment overrides. Not
// part of the config's interface.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.hpp"

namespace sproxy::config::detail {

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

inline bool is_lower_hex(std::string_view s, std::size_t length) {
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

  // Values of one type (loader.cpp).
  void read_string(const json& j, const std::string& path, std::string& out);
  void read_non_empty_string(const json& j, const std::string& path, std::string& out);
  void read_ip_address(const json& j, const std::string& path, std::string& out);
  void read_bool(const json& j, const std::string& path, bool& out);
  void read_sha256(const json& j, const std::string& path, std::string& out);
  void read_file_mode(const json& j, const std::string& path, unsigned& out);
  void read_margin(const json& j, const std::string& path, double& out);
  void read_share(const json& j, const std::string& path, double& out);
  void read_fraction(const json& j, const std::string& path, double& out);

  // The config's sections (sections.cpp).
  void read_listen(const json& j, const std::string& path, ListenConfig& c);
  void read_listen_tls(const json& j, const std::string& path, TlsListenConfig& c);
  void read_unix_socket(const json& j, const std::string& path, UnixSocketListenConfig& c);
  void read_client(const json& j, const std::string& path, ClientConfig& c);
  void read_clients(const json& j, const std::string& path, std::vector<ClientConfig>& out);
  void read_store(const json& j, const std::string& path, EmbeddedStoreConfig& c);
  void read_upstream(const json& j, const std::string& path, UpstreamConfig& c);
  void check_upstream_credential(const std::string& path, const UpstreamConfig& c);
  void read_ttl(const json& j, const std::string& path, CacheTtlConfig& c);
  void read_cache(const json& j, const std::string& path, CacheConfig& c);
  void read_cache_persist(const json& j, const std::string& path, CachePersistConfig& c);
  void read_admin(const json& j, const std::string& path, AdminConfig& c);
  void read_log_key(std::string_view key, const json& v, const std::string& p, LogConfig& c);
  void read_log(const json& j, const std::string& path, LogConfig& c);
  void read_audit(const json& j, const std::string& path, AuditConfig& c);
  void read_emulation(const json& j, const std::string& path, EmulationConfig& c);
  void read_fleet_redis(const json& j, const std::string& path, FleetRedisConfig& c);
  void read_redis_url(const json& j, const std::string& path, std::string& out);
  void read_key_prefix(const json& j, const std::string& path, std::string& out);
  void read_fleet(const json& j, const std::string& path, FleetConfig& c);
  void read_fleet_cache(const json& j, const std::string& path, FleetCacheConfig& c);
  void read_root(const json& j, Config& c);

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

}  // namespace sproxy::config::detail
