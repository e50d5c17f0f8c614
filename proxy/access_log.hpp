// The access log: one line per answered request, written through the access logger of
// logging.hpp (so in the process log's format and destination).
//
// Contract: a line holds the request id, the client's name (null when the request was not
// authenticated as a client, and on the proxy's own endpoints: /healthz, /readyz,
// /metrics, /admin/*), the method, the route template (the metrics `route` label,
// e.g. `/stores/{store_id}/secrets/{secret_id}`; never the raw target, so no ids, names or
// query strings), the status answered, the cache outcome (null when the cache did not
// answer), the time spent in upstream calls made for the answer (null when none was
// made) and the total time, both in milliseconds. It never holds a token, a secret value,
// a request or response body or a header other than the request id.
// Request ids: a client's `X-Request-Id`, else its `cf-ray`, is used when it is 1..128
// characters of [A-Za-z0-9._:-]; otherwise a new random id (32 hex characters) is made.
// The handler returns the id in the response's `X-Request-Id` header.
//
// Cost: `enabled()` is one relaxed atomic load; `write` formats one line into a stack
// buffer (no JSON DOM) and hands it to the sink. Thread safety: every member may be
// called from any thread; `set_enabled` is the SIGHUP switch.
#pragma once

#include <spdlog/logger.h>

#include <atomic>
#include <boost/beast/http/fields.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "cache/read_through.hpp"
#include "proxy/logging.hpp"
#include "proxy/metrics.hpp"
#include "upstream/route.hpp"

namespace sproxy::proxy {

struct AccessRecord {
  std::string_view request_id;
  std::string_view client;  // empty: not authenticated as a client
  upstream::Method method = upstream::Method::other;
  RouteLabel route = RouteLabel::unmatched;
  unsigned status = 0;
  std::optional<cache::Outcome> cache;
  std::optional<std::chrono::nanoseconds> upstream;
  std::chrono::nanoseconds total{0};
};

// The fields of a line (without the time and level the formatter adds): JSON members
// for LogFormat::json, `key=value` pairs for LogFormat::text.
std::string access_fields(const AccessRecord& record, LogFormat format);

class AccessLog {
 public:
  // `logger` is open_logging's access logger (tests pass one on their own sink).
  AccessLog(std::shared_ptr<spdlog::logger> logger, LogFormat format, bool enabled);

  bool enabled() const noexcept { return enabled_.load(std::memory_order_relaxed); }
  void set_enabled(bool on) noexcept { enabled_.store(on, std::memory_order_relaxed); }
  void write(const AccessRecord& record) const;

 private:
  std::shared_ptr<spdlog::logger> logger_;
  LogFormat format_;
  std::atomic<bool> enabled_;
};

inline constexpr std::size_t kMaxRequestIdLength = 128;
bool is_acceptable_request_id(std::string_view id) noexcept;
// 32 random lowercase hex characters.
std::string new_request_id();
// The request's own id (X-Request-Id, then cf-ray) when acceptable, else a new one.
std::string request_id_for(const boost::beast::http::fields& headers);

}  // namespace sproxy::proxy
