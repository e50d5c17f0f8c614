#include "proxy/cli.hpp"

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "upstream/crypto.hpp"
#include "upstream/model.hpp"

namespace sproxy::proxy {
namespace {

constexpr std::size_t kClientTokenBytes = 32;
constexpr std::array<std::string_view, 3> kPermissionNames = {"read", "write", "admin"};

std::string base64url(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const unsigned v = static_cast<unsigned char>(bytes[i]) << 16 |
                       static_cast<unsigned char>(bytes[i + 1]) << 8 |
                       static_cast<unsigned char>(bytes[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  const std::size_t rest = bytes.size() - i;
  if (rest > 0) {
    unsigned v = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    if (rest == 2) out += kAlphabet[(v >> 6) & 63];
  }
  return out;
}

// "a,b,c" -> {"a","b","c"}; every item must pass `valid`. An empty value is an empty list.
template <class Valid>
std::vector<std::string> split_list(const std::string& flag, const std::string& value,
                                    Valid&& valid, const std::string& expected) {
  std::vector<std::string> out;
  if (value.empty()) return out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = value.find(',', start);
    std::string item = value.substr(start, comma == std::string::npos ? comma : comma - start);
    if (!valid(item)) {
      throw std::invalid_argument(flag + ": \"" + item + "\" is not " + expected);
    }
    if (std::find(out.begin(), out.end(), item) == out.end()) out.push_back(std::move(item));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// `token new` and its flags (args[0] == "token").
NewTokenCommand parse_token_command(const std::vector<std::string>& args) {
  if (args.size() < 2 || args[1] != "new") {
    throw std::invalid_argument("usage: secrets-proxy token new --name NAME (see --help)");
  }
  NewTokenCommand out;
  bool named = false;
  for (std::size_t i = 2; i < args.size(); ++i) {
    const std::string& arg = args[i];
    const auto equals = arg.find('=');
    const std::string flag = arg.substr(0, equals);
    std::string value;
    if (equals != std::string::npos) {
      value = arg.substr(equals + 1);
    } else {
      if (i + 1 >= args.size()) throw std::invalid_argument(flag + " needs a value");
      value = args[++i];
    }
    if (flag == "--name") {
      if (value.empty()) throw std::invalid_argument("--name must not be empty");
      out.name = value;
      named = true;
    } else if (flag == "--services") {
      out.services = split_list(
          flag, value, [](const std::string& s) { return upstream::is_known_scope(s); },
          "a service (access, ai_gateway, containers, dex, websearch, workers)");
    } else if (flag == "--accounts") {
      out.accounts = split_list(
          flag, value, [](const std::string& s) { return s == "*" || upstream::is_valid_id(s); },
          "\"*\" or an account id of 32 lowercase hex characters");
      if (out.accounts.empty()) throw std::invalid_argument("--accounts needs at least one");
    } else if (flag == "--stores") {
      out.stores = split_list(
          flag, value, [](const std::string& s) { return upstream::is_valid_id(s); },
          "a store id of 32 lowercase hex characters");
    } else if (flag == "--permissions") {
      out.permissions = split_list(
          flag, value,
          [](const std::string& s) {
            return std::find(kPermissionNames.begin(), kPermissionNames.end(), s) !=
                   kPermissionNames.end();
          },
          "a permission (read, write, admin)");
      if (out.permissions.empty()) throw std::invalid_argument("--permissions needs at least one");
    } else {
      throw std::invalid_argument("unknown argument \"" + arg + "\" for token new (see --help)");
    }
  }
  if (!named) throw std::invalid_argument("token new needs --name NAME");
  return out;
}

// Takes `--config PATH` or `--config=PATH` at args[i] into `out` (advancing i past a
// separate path); false when args[i] is another argument.
bool take_config_flag(const std::vector<std::string>& args, std::size_t& i, CommandLine& out) {
  const std::string& arg = args[i];
  if (arg != "--config" && arg.rfind("--config=", 0) != 0) return false;
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
  return true;
}

// `store rotate-key [--config PATH]` (args[0] == "store").
CommandLine parse_store_command(const std::vector<std::string>& args) {
  if (args.size() < 2 || args[1] != "rotate-key") {
    throw std::invalid_argument(
        "usage: secrets-proxy store rotate-key [--config PATH] (see --help)");
  }
  CommandLine out;
  out.rotate_store_key = true;
  for (std::size_t i = 2; i < args.size(); ++i) {
    if (!take_config_flag(args, i, out)) {
      throw std::invalid_argument("unknown argument \"" + args[i] +
                                  "\" for store rotate-key (see --help)");
    }
  }
  return out;
}

}  // namespace

CommandLine parse_command_line(const std::vector<std::string>& args) {
  CommandLine out;
  if (!args.empty() && args[0] == "token") {
    out.new_token = parse_token_command(args);
    return out;
  }
  if (!args.empty() && args[0] == "store") return parse_store_command(args);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      out.help = true;
    } else if (arg == "--version") {
      out.version = true;
    } else if (arg == "--check-config") {
      out.check_config = true;
    } else if (take_config_flag(args, i, out)) {
      continue;
    } else {
      throw std::invalid_argument("unknown argument \"" + arg + "\" (see --help)");
    }
  }
  return out;
}

std::string usage_text() {
  return "Usage: secrets-proxy [--config PATH] [--check-config]\n"
         "       secrets-proxy token new --name NAME [--services LIST] [--accounts LIST]\n"
         "                               [--stores LIST] [--permissions LIST]\n"
         "       secrets-proxy store rotate-key [--config PATH]\n"
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
         "token new prints a new client token (once), its SHA-256 and a client entry for\n"
         "the config's \"clients\" array. LIST is comma-separated; defaults: no services,\n"
         "--accounts '*', --permissions read. SIGHUP reloads the clients from --config.\n"
         "\n"
         "store rotate-key seals every value of the embedded store again under a new key\n"
         "and replaces store.key_file (stop the proxy first; back up the database and the\n"
         "key file together afterwards).\n"
         "\n"
         "Environment:\n"
         "  SPROXY_LOG_LEVEL trace|debug|info|warn|error|critical|off (default info)\n";
}

std::string listening_line(const boost::asio::ip::tcp::endpoint& endpoint,
                           std::string_view upstream, int threads, bool tls) {
  const auto address = endpoint.address();
  // Built by appending: GCC 12 reports a false -Wrestrict on chains of string operator+.
  std::string line =
      tls ? "secrets-proxy listening on https://" : "secrets-proxy listening on http://";
  if (address.is_v6()) {
    line.append("[").append(address.to_string()).append("]");
  } else {
    line.append(address.to_string());
  }
  line.append(":").append(std::to_string(endpoint.port()));
  line.append(" (upstream: ").append(upstream).append(", threads: ");
  line.append(std::to_string(threads)).append(")");
  return line;
}

std::string key_rotation_text(const upstream::KeyRotation& rotation, bool persist_uses_store_key) {
  std::string text;
  if (rotation.finished_interrupted) {
    text = "finished an interrupted key rotation: " + rotation.key_file.string() +
           " now holds the key the database was re-sealed with\n";
  } else {
    text = "re-sealed " + std::to_string(rotation.resealed) +
           (rotation.resealed == 1 ? " value" : " values") + " under a new key; " +
           rotation.key_file.string() +
           " now holds it (a backup taken before opens only with the key file backed up "
           "with it)\n";
  }
  if (persist_uses_store_key) {
    text +=
        "the cache's saved warm-start file was sealed with the former key: the next start "
        "ignores it and begins with an empty cache\n";
  }
  return text;
}

std::string generate_client_token() {
  return std::string(kClientTokenPrefix) + base64url(upstream::random_bytes(kClientTokenBytes));
}

std::string new_token_text(const NewTokenCommand& command, const std::string& token) {
  const std::string hash = upstream::sha256_hex(token);
  nlohmann::ordered_json entry;
  entry["name"] = command.name;
  entry["token_sha256"] = hash;
  entry["services"] = command.services;
  entry["accounts"] = command.accounts;
  if (!command.stores.empty()) entry["stores"] = command.stores;
  entry["permissions"] = command.permissions;
  return "token: " + token +
         "\n"
         "  (shown only now: give it to the client; the proxy keeps only its hash)\n"
         "token_sha256: " +
         hash +
         "\n"
         "client entry for the \"clients\" array of the config:\n" +
         entry.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

}  // namespace sproxy::proxy
