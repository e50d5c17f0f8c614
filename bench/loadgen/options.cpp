// sproxy_loadgen's command line (see main.cpp) and the requests it pre-serializes.
#include "loadgen.hpp"

namespace loadgen {

[[noreturn]] void usage_error(const std::string& message) {
  throw std::invalid_argument(message + " (see the header of bench/loadgen/main.cpp)");
}

std::pair<std::string, std::string> split_host_port(const std::string& s) {
  const auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) {
    usage_error("expected HOST:PORT, got \"" + s + "\"");
  }
  std::string host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return {host, s.substr(colon + 1)};
}

void parse_url(const std::string& url, Options& o) {
  constexpr std::string_view kScheme = "http://";
  if (url.rfind(kScheme, 0) != 0) usage_error("--url must start with http://");
  std::string rest = url.substr(kScheme.size());
  const auto slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  o.host_header = authority;
  if (authority.find(':') == std::string::npos || authority.back() == ']') {
    o.host = authority;
    o.port = "80";
  } else {
    std::tie(o.host, o.port) = split_host_port(authority);
  }
  // A path in --url is the default target when no other is given.
  if (slash != std::string::npos && rest.size() > slash + 1) {
    o.targets.push_back("GET " + rest.substr(slash));
  }
}

void read_targets_file(const std::string& path, Options& o) {
  std::ifstream in(path);
  if (!in) usage_error("cannot read targets file " + path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.front() == '#') continue;
    o.targets.push_back(line);
  }
}

double parse_number(const std::string& flag, const std::string& value) {
  try {
    std::size_t used = 0;
    const double v = std::stod(value, &used);
    if (used != value.size() || !std::isfinite(v) || v < 0) throw std::invalid_argument(flag);
    return v;
  } catch (const std::exception&) {
    usage_error(flag + " expects a non-negative number, got \"" + value + "\"");
  }
}

Options parse_options(int argc, char** argv) {
  Options o;
  std::vector<std::string> url_targets;
  bool have_url = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--relay") {
      o.relay = true;
    } else if (arg == "--listen") {
      o.listen = value();
    } else if (arg == "--upstream") {
      o.upstream = value();
    } else if (arg == "--url") {
      Options parsed;
      parse_url(value(), parsed);
      o.host = parsed.host;
      o.port = parsed.port;
      o.host_header = parsed.host_header;
      url_targets = parsed.targets;
      have_url = true;
    } else if (arg == "--target") {
      o.targets.push_back("GET " + value());
    } else if (arg == "--targets") {
      read_targets_file(value(), o);
    } else if (arg == "-H" || arg == "--header") {
      const std::string h = value();
      const auto colon = h.find(':');
      if (colon == std::string::npos || colon == 0) usage_error("-H expects 'Name: value'");
      std::string v = h.substr(colon + 1);
      v.erase(0, v.find_first_not_of(' '));
      o.headers.emplace_back(h.substr(0, colon), v);
    } else if (arg == "--connections" || arg == "-c") {
      o.connections = static_cast<std::size_t>(parse_number(arg, value()));
    } else if (arg == "--rate" || arg == "-R") {
      o.rate = parse_number(arg, value());
    } else if (arg == "--duration" || arg == "-d") {
      o.duration_s = parse_number(arg, value());
    } else if (arg == "--max-requests" || arg == "-n") {
      o.max_requests = static_cast<std::uint64_t>(parse_number(arg, value()));
    } else if (arg == "--timeout-ms") {
      o.timeout_ms = static_cast<int>(parse_number(arg, value()));
    } else if (arg == "--label") {
      o.label = value();
    } else if (arg == "--warm") {
      o.warm_path = value();
      if (o.warm_path.empty() || o.warm_path.front() != '/') usage_error("--warm expects /PATH");
    } else if (arg == "--stampede") {
      o.stampede = true;
    } else if (arg == "--busy-poll") {
      o.busy_poll = true;
    } else if (arg == "--help" || arg == "-h") {
      std::cout << "usage: sproxy_loadgen --url http://HOST:PORT[/PATH] [--target PATH]... "
                   "[--targets FILE] [-H 'K: V']... [--connections N] [--rate R] "
                   "[--duration S] [--max-requests M] [--timeout-ms T] [--label TEXT] "
                   "[--warm PATH] [--stampede] [--busy-poll]\n"
                   "       sproxy_loadgen --relay --listen HOST:PORT --upstream HOST:PORT\n";
      std::exit(0);
    } else {
      usage_error("unknown argument \"" + arg + "\"");
    }
  }
  if (o.relay) {
    if (o.upstream.empty()) usage_error("--relay needs --upstream HOST:PORT");
    return o;
  }
  if (!have_url) usage_error("--url is required");
  if (o.targets.empty()) o.targets = url_targets;
  if (o.targets.empty()) o.targets.push_back("GET /");
  if (o.connections == 0) usage_error("--connections must be at least 1");
  if (o.timeout_ms <= 0) usage_error("--timeout-ms must be positive");
  if (o.stampede) {
    // One request per connection, all at once (closed loop, one round).
    o.rate = 0;
    o.max_requests = o.connections;
    o.duration_s = std::max(o.duration_s, o.timeout_ms / 1000.0 + 1.0);
  }
  return o;
}

// Pre-serializes every target once; the hot loop only writes these bytes.
std::vector<std::string> build_requests(const Options& o) {
  std::vector<std::string> out;
  out.reserve(o.targets.size());
  for (const auto& line : o.targets) {
    std::istringstream in(line);
    std::string method, path;
    in >> method >> path;
    if (method.empty() || path.empty() || path.front() != '/') {
      usage_error("bad target line \"" + line + "\" (expected METHOD /PATH [BODY])");
    }
    std::string body;
    std::getline(in, body);
    body.erase(0, body.find_first_not_of(" \t"));
    http::request<http::string_body> req;
    req.method_string(method);
    req.target(path);
    req.version(11);
    req.set(http::field::host, o.host_header);
    req.set(http::field::user_agent, "sproxy_loadgen");
    for (const auto& [name, value] : o.headers) req.set(name, value);
    if (!body.empty()) {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
    }
    req.keep_alive(true);
    req.prepare_payload();
    std::ostringstream wire;
    wire << req;
    out.push_back(wire.str());
  }
  return out;
}

}  // namespace loadgen
