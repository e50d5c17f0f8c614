// Shared helpers of the metrics tests (metrics_test.cpp, metered_upstream_test.cpp): a small
// parser of the text exposition format (version 0.0.4), strict enough that a malformed
// line fails the test, and a scrape of a Metrics object through it.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "proxy/metrics.hpp"
#include "tests/support/run_awaitable.hpp"
#include "tests/support/scripted_upstream.hpp"

namespace sproxy::proxy::metrics_testing {

using namespace std::chrono_literals;
using upstream::ApiRequest;
using upstream::ApiResponse;
using upstream::CallResult;
using upstream::Method;
using upstream::RouteKind;
using upstream::UpstreamErrc;

// ---------------------------------------------------------------------------------------
// A small parser of the text exposition format (version 0.0.4), strict enough that a
// malformed line fails the test.

using Labels = std::map<std::string, std::string>;

struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> help;
  std::map<std::string, std::string> type;
  std::vector<Sample> samples;

  // The value of the one sample with this name whose labels include `match`.
  std::optional<double> value(const std::string& name, const Labels& match = {}) const {
    std::optional<double> found;
    for (const auto& s : samples) {
      if (s.name != name) continue;
      bool all = true;
      for (const auto& [k, v] : match) {
        auto it = s.labels.find(k);
        if (it == s.labels.end() || it->second != v) all = false;
      }
      if (!all) continue;
      if (found) throw std::runtime_error("more than one sample matches " + name);
      found = s.value;
    }
    return found;
  }
  std::size_t count(const std::string& name) const {
    std::size_t n = 0;
    for (const auto& s : samples) n += s.name == name ? 1 : 0;
    return n;
  }
};

inline double parse_value(const std::string& text) {
  if (text == "+Inf") return std::numeric_limits<double>::infinity();
  if (text == "-Inf") return -std::numeric_limits<double>::infinity();
  std::size_t used = 0;
  const double v = std::stod(text, &used);
  if (used != text.size()) throw std::runtime_error("bad sample value: " + text);
  return v;
}

inline Exposition parse_exposition(const std::string& text) {
  static const std::regex kName("[a-zA-Z_:][a-zA-Z0-9_:]*");
  static const std::regex kLabelName("[a-zA-Z_][a-zA-Z0-9_]*");
  Exposition out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      const auto space = rest.find(' ');
      if (space == std::string::npos) throw std::runtime_error("bad comment: " + line);
      const std::string name = rest.substr(0, space);
      if (!std::regex_match(name, kName)) throw std::runtime_error("bad name: " + line);
      (line[2] == 'H' ? out.help : out.type)[name] = rest.substr(space + 1);
      continue;
    }
    if (line[0] == '#') continue;
    Sample s;
    std::size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    if (!std::regex_match(s.name, kName)) throw std::runtime_error("bad sample name: " + line);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const auto eq = line.find('=', i);
        if (eq == std::string::npos) throw std::runtime_error("bad labels: " + line);
        const std::string key = line.substr(i, eq - i);
        if (!std::regex_match(key, kLabelName)) throw std::runtime_error("bad label: " + line);
        i = eq + 1;
        if (i >= line.size() || line[i] != '"') throw std::runtime_error("unquoted: " + line);
        ++i;
        std::string value;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\' && i + 1 < line.size()) {
            const char e = line[i + 1];
            value += e == 'n' ? '\n' : e;
            i += 2;
          } else {
            value += line[i++];
          }
        }
        if (i >= line.size()) throw std::runtime_error("unterminated label: " + line);
        ++i;  // closing quote
        if (!s.labels.emplace(key, value).second) throw std::runtime_error("dup label: " + line);
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) throw std::runtime_error("unterminated label set: " + line);
      ++i;  // '}'
    }
    if (i >= line.size() || line[i] != ' ') throw std::runtime_error("no value: " + line);
    std::string rest = line.substr(i + 1);
    // An optional timestamp follows the value.
    const auto space = rest.find(' ');
    s.value = parse_value(rest.substr(0, space));
    out.samples.push_back(std::move(s));
  }
  return out;
}

// The family a sample belongs to (histogram series carry suffixes).
inline std::string family_of(const Exposition& e, const std::string& sample_name) {
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string sfx = suffix;
    if (sample_name.size() > sfx.size() &&
        sample_name.compare(sample_name.size() - sfx.size(), sfx.size(), sfx) == 0) {
      std::string base = sample_name.substr(0, sample_name.size() - sfx.size());
      auto it = e.type.find(base);
      if (it != e.type.end() && it->second == "histogram") return base;
    }
  }
  return sample_name;
}

inline Exposition scrape(Metrics& m) { return parse_exposition(m.serialize()); }

}  // namespace sproxy::proxy::metrics_testing
