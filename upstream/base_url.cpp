#include "upstream/base_url.hpp"

#include <algorithm>
#include <boost/asio/ip/address_v6.hpp>
#include <cctype>
#include <stdexcept>
#include <string>

#include "upstream/route.hpp"

namespace sproxy::upstream {

namespace {

[[noreturn]] void bad_url(std::string_view url, std::string_view why, bool echo_url = true) {
  std::string message = "upstream.base_url";
  if (echo_url) {
    message += " \"";
    message += url;
    message += '"';
  }
  message += ": ";
  message += why;
  throw std::runtime_error(message);
}

}  // namespace

// Both append piece by piece: GCC 12 warns (-Wrestrict, a false positive) on
// `"literal" + std::string&&` in a Release build.
std::string BaseUrl::host_header() const {
  const bool ipv6 = host.find(':') != std::string::npos;
  std::string out;
  if (ipv6) out += '[';
  out += host;
  if (ipv6) out += ']';
  const std::uint16_t default_port = scheme == Scheme::https ? 443 : 80;
  if (port != default_port) {
    out += ':';
    out += std::to_string(port);
  }
  return out;
}

std::string BaseUrl::to_string() const {
  std::string out = scheme == Scheme::https ? "https://" : "http://";
  out += host_header();
  out += path;
  return out;
}

BaseUrl parse_base_url(std::string_view url) {
  BaseUrl out;
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) bad_url(url, "expected http://host[:port]/client/v4");
  std::string scheme(url.substr(0, scheme_end));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (scheme == "http") {
    out.scheme = BaseUrl::Scheme::http;
    out.port = 80;
  } else if (scheme == "https") {
    out.scheme = BaseUrl::Scheme::https;
    out.port = 443;
  } else {
    bad_url(url, "scheme must be http or https");
  }
  std::string_view rest = url.substr(scheme_end + 3);
  const auto authority_end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, authority_end);
  std::string_view path =
      authority_end == std::string_view::npos ? std::string_view{} : rest.substr(authority_end);
  if (authority.find('@') != std::string_view::npos) {
    bad_url(url,
            "must not contain user information (configure the credential with "
            "upstream.token_env / upstream.token_file, or upstream.email_* with "
            "upstream.api_key_*)",
            /*echo_url=*/false);
  }

  std::string_view host;
  std::string_view port_text;
  if (authority.starts_with('[')) {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) bad_url(url, "unterminated IPv6 address");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') bad_url(url, "unexpected characters after the IPv6 address");
      port_text = after.substr(1);
      if (port_text.empty()) bad_url(url, "empty port");
    }
    boost::system::error_code ec;
    boost::asio::ip::make_address_v6(std::string(host), ec);
    if (ec) bad_url(url, "invalid IPv6 address");
  } else {
    const auto colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty()) bad_url(url, "empty port");
    }
    const bool host_chars_ok = std::all_of(host.begin(), host.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '.' || c == '_';
    });
    if (!host_chars_ok) bad_url(url, "invalid host name");
  }
  if (host.empty()) bad_url(url, "missing host");
  out.host.assign(host);
  std::transform(out.host.begin(), out.host.end(), out.host.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });

  if (!port_text.empty()) {
    unsigned long port = 0;
    if (port_text.size() > 5 || !std::all_of(port_text.begin(), port_text.end(),
                                             [](char c) { return c >= '0' && c <= '9'; })) {
      bad_url(url, "port must be a number from 1 to 65535");
    }
    port = std::stoul(std::string(port_text));
    if (port == 0 || port > 65535) bad_url(url, "port must be a number from 1 to 65535");
    out.port = static_cast<std::uint16_t>(port);
  }

  if (path.find_first_of("?#") != std::string_view::npos) {
    bad_url(url, "must not have a query or fragment");
  }
  for (char c : path) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) bad_url(url, "path contains characters that need encoding");
  }
  if (path.ends_with('/')) path.remove_suffix(1);
  if (!path.ends_with(kApiPrefix)) {
    bad_url(url, "path must end with /client/v4 (e.g. http://127.0.0.1:9000/client/v4)");
  }
  out.path.assign(path);
  return out;
}

}  // namespace sproxy::upstream
