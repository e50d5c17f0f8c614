// The command line of the `secrets-proxy` binary and the lines it prints.
//
//   secrets-proxy [--config PATH] [--check-config]
//   secrets-proxy --help | --version
//
// Without --config the example config (config/secrets-proxy.example.json, relative to
// the working directory) is used when it exists; otherwise --config is required.
// Start-up code only: parse_command_line throws std::invalid_argument with a message fit
// for one line on stderr.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sproxy::proxy {

inline constexpr std::string_view kDefaultConfigPath = "config/secrets-proxy.example.json";

struct CommandLine {
  std::optional<std::string> config_path;  // as given with --config
  bool check_config = false;
  bool help = false;
  bool version = false;
};

// `args` excludes the program name.
CommandLine parse_command_line(const std::vector<std::string>& args);

std::string usage_text();

// `secrets-proxy listening on http://127.0.0.1:8787 (upstream: embedded, threads: 2)`
std::string listening_line(const boost::asio::ip::tcp::endpoint& endpoint,
                           std::string_view upstream, int threads);

}  // namespace sproxy::proxy
