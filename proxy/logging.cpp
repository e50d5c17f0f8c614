#include "proxy/logging.hpp"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <mutex>

namespace sproxy::proxy {
namespace {

constexpr char kHex[] = "0123456789abcdef";

std::atomic<std::uint64_t> g_log_write_failures{0};

void count_log_write_failure() { g_log_write_failures.fetch_add(1, std::memory_order_relaxed); }

// Lines to standard output, each written at once (no stdio buffer to lose or to block a
// later line). A line the descriptor refuses is counted and dropped: spdlog's stdout sink
// ignores a failed write, and a closed pipe must not end the process.
class StdoutLineSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    formatter_->format(msg, line);
    const char* data = line.data();
    std::size_t left = line.size();
    while (left > 0) {
      const ssize_t n = ::write(STDOUT_FILENO, data, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        count_log_write_failure();
        return;
      }
      data += n;
      left -= static_cast<std::size_t>(n);
    }
  }
  void flush_() override {}
};

// Length of the well-formed UTF-8 sequence at the start of `s`, or 0 when it is not one
// (stray continuation bytes, overlong forms, surrogates, code points above U+10FFFF,
// truncated sequences).
std::size_t utf8_sequence_length(std::string_view s) {
  const auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto cont = [&](std::size_t i) { return i < s.size() && (b(i) & 0xC0) == 0x80; };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && b(1) < 0xA0) return 0;   // overlong
    if (c == 0xED && b(1) >= 0xA0) return 0;  // surrogates
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && b(1) < 0x90) return 0;   // overlong
    if (c == 0xF4 && b(1) >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

// Out is std::string or spdlog::memory_buf_t: both take push_back and append(first, last).
template <class Out>
void append_chars(Out& out, const char* text, std::size_t n) {
  out.append(text, text + n);
}

template <class Out>
void escape_into(Out& out, std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    // Runs of plain printable ASCII are copied at once.
    std::size_t run = i;
    while (run < s.size()) {
      const auto c = static_cast<unsigned char>(s[run]);
      if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\') break;
      ++run;
    }
    if (run > i) {
      append_chars(out, s.data() + i, run - i);
      i = run;
      continue;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const std::size_t n = utf8_sequence_length(s.substr(i));
      if (n == 0) {
        append_chars(out, "\\ufffd", 6);
        ++i;
      } else {
        append_chars(out, s.data() + i, n);
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"':
        append_chars(out, "\\\"", 2);
        break;
      case '\\':
        append_chars(out, "\\\\", 2);
        break;
      case '\n':
        append_chars(out, "\\n", 2);
        break;
      case '\r':
        append_chars(out, "\\r", 2);
        break;
      case '\t':
        append_chars(out, "\\t", 2);
        break;
      default: {
        const char u[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xF]};
        append_chars(out, u, sizeof u);
      }
    }
    ++i;
  }
}

// Text lines keep one event per line: control characters are written as \xNN.
void append_text_safe(spdlog::memory_buf_t& out, std::string_view s) {
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7F) {
      const char x[4] = {'\\', 'x', kHex[c >> 4], kHex[c & 0xF]};
      out.append(x, x + sizeof x);
    } else {
      out.push_back(ch);
    }
  }
}

std::string_view level_name(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return "trace";
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    case spdlog::level::err:
      return "error";
    case spdlog::level::critical:
      return "critical";
    default:
      return "off";
  }
}

}  // namespace

void append_json_escaped(std::string& out, std::string_view s) { escape_into(out, s); }
void append_json_escaped(spdlog::memory_buf_t& out, std::string_view s) { escape_into(out, s); }

std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name) {
  for (auto level :
       {spdlog::level::trace, spdlog::level::debug, spdlog::level::info, spdlog::level::warn,
        spdlog::level::err, spdlog::level::critical, spdlog::level::off}) {
    if (name == level_name(level)) return level;
  }
  return std::nullopt;
}

void LogLineFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  const auto since_epoch = msg.time.time_since_epoch();
  const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(since_epoch).count();
  long long second = micros / 1'000'000;
  long long fraction = micros % 1'000'000;
  if (fraction < 0) {
    fraction += 1'000'000;
    --second;
  }
  if (second != cached_second_) {
    const std::time_t t = static_cast<std::time_t>(second);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    std::strftime(cached_time_, sizeof cached_time_, "%Y-%m-%dT%H:%M:%S", &tm);
    cached_second_ = second;
  }
  char time_buf[40];
  const int time_len =
      std::snprintf(time_buf, sizeof time_buf, "%s.%06lldZ", cached_time_, fraction);
  const std::string_view time(time_buf, time_len > 0 ? static_cast<std::size_t>(time_len) : 0);
  const std::string_view level = level_name(msg.level);
  const std::string_view payload(msg.payload.data(), msg.payload.size());
  const bool access =
      std::string_view(msg.logger_name.data(), msg.logger_name.size()) == kAccessLoggerName;

  const auto put = [&](std::string_view s) { dest.append(s.data(), s.data() + s.size()); };
  if (format_ == LogFormat::json) {
    put(R"({"time":")");
    put(time);
    put(R"(","level":")");
    put(level);
    if (access) {
      // The access log formats (and escapes) its own fields.
      put(R"(","msg":"access",)");
      put(payload);
      put("}\n");
    } else {
      put(R"(","msg":")");
      escape_into(dest, payload);
      put("\"}\n");
    }
    return;
  }
  put(time);
  dest.push_back(' ');
  put(level);
  dest.push_back(' ');
  if (access) {
    put("access ");
    put(payload);
  } else {
    append_text_safe(dest, payload);
  }
  dest.push_back('\n');
}

std::unique_ptr<spdlog::formatter> LogLineFormatter::clone() const {
  return std::make_unique<LogLineFormatter>(format_);
}

std::shared_ptr<spdlog::logger> open_logging(const config::LogConfig& cfg) {
  const LogFormat format = cfg.format;
  spdlog::sink_ptr sink;
  if (cfg.file.empty()) {
    sink = std::make_shared<StdoutLineSink>();
  } else {
    try {
      sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(cfg.file, /*truncate=*/false);
    } catch (const spdlog::spdlog_ex& e) {
      throw std::runtime_error("cannot open log file " + cfg.file + ": " + e.what());
    }
  }
  sink->set_formatter(std::make_unique<LogLineFormatter>(format));

  auto logger = std::make_shared<spdlog::logger>("secrets-proxy", sink);
  logger->set_level(parse_log_level(cfg.level).value_or(spdlog::level::info));
  // Warnings and errors reach the file at once; lower levels are flushed by the sink's
  // buffer or every second.
  logger->flush_on(spdlog::level::warn);
  // A file sink throws when a write fails; the logger hands that here instead of
  // printing a complaint to stderr.
  logger->set_error_handler([](const std::string&) { count_log_write_failure(); });
  spdlog::set_default_logger(logger);
  spdlog::flush_every(std::chrono::seconds(1));

  auto access = std::make_shared<spdlog::logger>(std::string(kAccessLoggerName), sink);
  access->set_level(spdlog::level::info);
  access->set_error_handler([](const std::string&) { count_log_write_failure(); });
  return access;
}

std::uint64_t log_write_failures() { return g_log_write_failures.load(std::memory_order_relaxed); }

}  // namespace sproxy::proxy
