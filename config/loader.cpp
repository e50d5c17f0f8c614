// Loader's readers of one value: a string, a number in a range, an address, a hash,
// a file mode, a share (loader.hpp).
#include "config/loader.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <string>

namespace sproxy::config::detail {

void Loader::read_string(const json& j, const std::string& path, std::string& out) {
  if (!j.is_string()) {
    problem(path, "expected a string");
    return;
  }
  out = j.get<std::string>();
}

void Loader::read_non_empty_string(const json& j, const std::string& path, std::string& out) {
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
void Loader::read_ip_address(const json& j, const std::string& path, std::string& out) {
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

void Loader::read_bool(const json& j, const std::string& path, bool& out) {
  if (!j.is_boolean()) {
    problem(path, "expected a boolean");
    return;
  }
  out = j.get<bool>();
}

void Loader::read_sha256(const json& j, const std::string& path, std::string& out) {
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

// An octal file mode written as a string: "0660", "660", "0600".
void Loader::read_file_mode(const json& j, const std::string& path, unsigned& out) {
  if (!j.is_string()) {
    problem(path, "expected an octal string such as \"0660\"");
    return;
  }
  const auto& s = j.get_ref<const std::string&>();
  const bool octal = s.size() >= 3 && s.size() <= 4 && std::all_of(s.begin(), s.end(), [](char ch) {
                       return ch >= '0' && ch <= '7';
                     });
  if (!octal || (s.size() == 4 && s[0] != '0')) {
    problem(path, "expected an octal file mode from \"000\" to \"0777\"");
    return;
  }
  out = static_cast<unsigned>(std::stoul(s, nullptr, 8));
}

// A number (integer or not) within [0, 1): a share of a limit left unused.
void Loader::read_margin(const json& j, const std::string& path, double& out) {
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

void Loader::read_share(const json& j, const std::string& path, double& out) {
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

// A number (integer or not) within [0, 1].
void Loader::read_fraction(const json& j, const std::string& path, double& out) {
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

}  // namespace sproxy::config::detail
