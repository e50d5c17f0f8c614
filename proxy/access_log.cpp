#include "proxy/access_log.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <random>

namespace sproxy::proxy {
namespace {

constexpr char kHex[] = "0123456789abcdef";

template <class Out>
void put(Out& out, std::string_view s) {
  out.append(s.data(), s.data() + s.size());
}

template <class Out>
void put_millis(Out& out, std::chrono::nanoseconds d) {
  const double ms = d.count() <= 0 ? 0.0 : static_cast<double>(d.count()) / 1e6;
  fmt::format_to(std::back_inserter(out), "{:.3f}", ms);
}

template <class Out>
void format_fields(Out& out, const AccessRecord& r, LogFormat format) {
  const std::string_view method = upstream::to_string(r.method);
  const std::string_view route = to_string(r.route);
  if (format == LogFormat::json) {
    put(out, R"("request_id":")");
    append_json_escaped(out, r.request_id);
    if (r.client.empty()) {
      put(out, R"(","client":null,"method":")");
    } else {
      put(out, R"(","client":")");
      append_json_escaped(out, r.client);
      put(out, R"(","method":")");
    }
    put(out, method);
    put(out, R"(","route":")");
    put(out, route);
    fmt::format_to(std::back_inserter(out), R"(","status":{},"cache":)", r.status);
    if (r.cache) {
      out.push_back('"');
      put(out, cache::to_string(*r.cache));
      out.push_back('"');
    } else {
      put(out, "null");
    }
    put(out, R"(,"upstream_ms":)");
    if (r.upstream) {
      put_millis(out, *r.upstream);
    } else {
      put(out, "null");
    }
    put(out, R"(,"duration_ms":)");
    put_millis(out, r.total);
    return;
  }
  put(out, "request_id=");
  put(out, r.request_id);
  put(out, " client=");
  if (r.client.empty()) {
    put(out, "-");
  } else {
    // Quoted and escaped: a configured name may hold anything.
    out.push_back('"');
    append_json_escaped(out, r.client);
    out.push_back('"');
  }
  put(out, " method=");
  put(out, method);
  put(out, " route=");
  put(out, route);
  fmt::format_to(std::back_inserter(out), " status={} cache=", r.status);
  put(out, r.cache ? cache::to_string(*r.cache) : std::string_view("-"));
  put(out, " upstream_ms=");
  if (r.upstream) {
    put_millis(out, *r.upstream);
  } else {
    out.push_back('-');
  }
  put(out, " duration_ms=");
  put_millis(out, r.total);
}

bool is_id_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == ':';
}

}  // namespace

std::string access_fields(const AccessRecord& record, LogFormat format) {
  std::string out;
  format_fields(out, record, format);
  return out;
}

AccessLog::AccessLog(std::shared_ptr<spdlog::logger> logger, LogFormat format, bool enabled)
    : logger_(std::move(logger)), format_(format), enabled_(enabled) {}

void AccessLog::write(const AccessRecord& record) const {
  spdlog::memory_buf_t line;
  format_fields(line, record, format_);
  logger_->log(spdlog::level::info, spdlog::string_view_t(line.data(), line.size()));
}

bool is_acceptable_request_id(std::string_view id) noexcept {
  return !id.empty() && id.size() <= kMaxRequestIdLength &&
         std::all_of(id.begin(), id.end(), is_id_char);
}

std::string new_request_id() {
  thread_local std::mt19937_64 engine{[] {
    std::random_device device;
    return (static_cast<std::uint64_t>(device()) << 32) ^ device();
  }()};
  std::string id(32, '0');
  for (int half = 0; half < 2; ++half) {
    std::uint64_t bits = engine();
    for (int i = 0; i < 16; ++i) {
      id[half * 16 + i] = kHex[bits & 0xF];
      bits >>= 4;
    }
  }
  return id;
}

std::string request_id_for(const boost::beast::http::fields& headers) {
  for (const char* name : {"X-Request-Id", "cf-ray"}) {
    const auto it = headers.find(name);
    if (it == headers.end()) continue;
    const std::string_view value(it->value().data(), it->value().size());
    if (is_acceptable_request_id(value)) return std::string(value);
  }
  return new_request_id();
}

}  // namespace sproxy::proxy
