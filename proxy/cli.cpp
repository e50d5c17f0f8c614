#include "proxy/cli.hpp"

#include <stdexcept>

namespace sproxy::proxy {

CommandLine parse_command_line(const std::vector<std::string>& args) {
  CommandLine out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      out.help = true;
    } else if (arg == "--version") {
      out.version = true;
    } else if (arg == "--check-config") {
      out.check_config = true;
    } else if (arg == "--config" || arg.rfind("--config=", 0) == 0) {
      std::string value;
      if (arg == "--config") {
        if (i + 1 >= args.size()) throw std::invalid_argument("--config needs a path");
        value = args[++i];
      } else {
        value = arg.substr(std::string_view("--config=").size());
      }
      if (value.empty()) throw std::invalid_argument("--config needs a path");
      if (out.config_path) throw std::invalid_argument("--config given more than once");
      out.config_path = std::move(value);
    } else {
      throw std::invalid_argument("unknown argument \"" + arg + "\" (see --help)");
    }
  }
  return out;
}

std::string usage_text() {
  return "Usage: secrets-proxy [--config PATH] [--check-config]\n"
         "       secrets-proxy --help | --version\n"
         "\n"
         "A caching proxy for the Cloudflare Secrets Store API.\n"
         "\n"
         "Options:\n"
         "  --config PATH    configuration file (JSON); default: " +
         std::string(kDefaultConfigPath) +
         " when it exists\n"
         "  --check-config   validate the configuration, print \"config OK\" or every\n"
         "                   problem (one per line), exit 0 or 1\n"
         "  --help           show this help\n"
         "  --version        show the version\n"
         "\n"
         "Environment:\n"
         "  SPROXY_LOG_LEVEL trace|debug|info|warn|error|critical|off (default info)\n";
}

std::string listening_line(const boost::asio::ip::tcp::endpoint& endpoint,
                           std::string_view upstream, int threads) {
  const auto address = endpoint.address();
  const std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  return "secrets-proxy listening on http://" + host + ":" + std::to_string(endpoint.port()) +
         " (upstream: " + std::string(upstream) + ", threads: " + std::to_string(threads) + ")";
}

}  // namespace sproxy::proxy
