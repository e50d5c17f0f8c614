// Process logs: one line per event, as a JSON object (default) or as plain text, to
// stdout or a file, through spdlog.
//
// Contract:
// - `LogLineFormatter` is the spdlog formatter of every log sink. JSON lines are
//   `{"time":"<RFC 3339 UTC, microseconds>","level":"info","msg":"..."}`; the message is
//   escaped exactly (quote, backslash, every control character; bytes that are not UTF-8
//   become U+FFFD), so any message is one valid JSON line. Text lines are
//   `<time> <level> <message>` with control characters written as `\xNN`.
//   Lines of the logger named kAccessLoggerName carry pre-formatted fields instead of a
//   message (see access_log.hpp): JSON lines become `{"time":...,"level":"info",
//   "msg":"access",<fields>}`, text lines `<time> info access <fields>`.
// - `open_logging` builds the sink the config names (`log.file`: "" = stdout, else a file
//   appended to), installs the default logger on it at `log.level`, and returns the
//   access logger (same sink, always at info, not registered with spdlog so that
//   spdlog::set_level does not silence it; `log.access` is the switch, see AccessLog).
// - Levels: `parse_log_level` accepts trace, debug, info, warn, error, critical, off.
// - A line the destination refuses (stdout's reader went away, a full disk) is dropped
//   and counted in `log_write_failures()` (exported as
//   secrets_proxy_log_write_failures_total); it never stops the process (main ignores
//   SIGPIPE, so a closed pipe is an EPIPE here, not a signal).
//
// Thread safety: the sink's mutex serializes lines; formatters run under it. Errors:
// `open_logging` throws std::runtime_error when the file cannot be opened.
#pragma once

#include <spdlog/formatter.h>
#include <spdlog/logger.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "config/config.hpp"

namespace sproxy::proxy {

using config::LogFormat;

inline constexpr std::string_view kAccessLoggerName = "access";

// Appends `s` as the contents of a JSON string (no quotes) to `out`.
void append_json_escaped(std::string& out, std::string_view s);
void append_json_escaped(spdlog::memory_buf_t& out, std::string_view s);

// A level name (see the file comment); nullopt for anything else.
std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name);

class LogLineFormatter final : public spdlog::formatter {
 public:
  explicit LogLineFormatter(LogFormat format) : format_(format) {}
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;

 private:
  LogFormat format_;
  // The formatted second of the last line, reused while lines share it.
  long long cached_second_ = -1;
  char cached_time_[24] = {};
};

// Installs the default logger described by `cfg` and returns the access logger.
std::shared_ptr<spdlog::logger> open_logging(const config::LogConfig& cfg);

// Log lines (process and access lines) that could not be written since start.
std::uint64_t log_write_failures();

}  // namespace sproxy::proxy
