// The command line of the `secrets-proxy` binary and the lines it prints.
//
//   secrets-proxy [--config PATH] [--check-config]
//   secrets-proxy token new --name NAME [--services a,b] [--accounts a,b] [--stores a,b]
//                           [--permissions a,b]
//   secrets-proxy store rotate-key [--config PATH]
//   secrets-proxy --help | --version
//
// Without --config the example config (config/secrets-proxy.example.json, relative to
// the working directory) is used when it exists; otherwise --config is required.
// `token new` prints a fresh client token once, its SHA-256 and a ready client entry for
// the config; the token itself is never stored or logged anywhere.
// `store rotate-key` re-seals the embedded store of the config under a new key and
// replaces its key file (upstream/store_key.hpp); it prints a count, never a key or value.
// Start-up code only: parse_command_line throws std::invalid_argument with a message fit
// for one line on stderr.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upstream/store_key.hpp"

namespace sproxy::proxy {

inline constexpr std::string_view kDefaultConfigPath = "config/secrets-proxy.example.json";

// `token new`: the client entry to print with the new token. Values are checked against
// the config's rules, so the printed entry loads as it is.
struct NewTokenCommand {
  std::string name;
  std::vector<std::string> services;
  std::vector<std::string> accounts = {"*"};
  std::vector<std::string> stores;
  std::vector<std::string> permissions = {"read"};
};

struct CommandLine {
  std::optional<std::string> config_path;  // as given with --config
  bool check_config = false;
  bool help = false;
  bool version = false;
  std::optional<NewTokenCommand> new_token;  // `token new ...`
  bool rotate_store_key = false;             // `store rotate-key`
};

// `args` excludes the program name.
CommandLine parse_command_line(const std::vector<std::string>& args);

std::string usage_text();

// Client tokens: this prefix, then 32 bytes from a CSPRNG in unpadded base64url (43
// characters), so a leaked token is easy to recognize and search for.
inline constexpr std::string_view kClientTokenPrefix = "sproxy_";
std::string generate_client_token();

// What `token new` prints for `token`: the token, its SHA-256 and the client entry.
std::string new_token_text(const NewTokenCommand& command, const std::string& token);

// What `store rotate-key` prints for what it did. `persist_uses_store_key`: the cache's
// warm-start file is sealed with the store key, so the next start ignores the saved one.
std::string key_rotation_text(const upstream::KeyRotation& rotation, bool persist_uses_store_key);

// `secrets-proxy listening on http://127.0.0.1:8787 (upstream: embedded, threads: 2)`
// (`https://` when the listener speaks TLS).
std::string listening_line(const boost::asio::ip::tcp::endpoint& endpoint,
                           std::string_view upstream, int threads, bool tls = false);

}  // namespace sproxy::proxy
