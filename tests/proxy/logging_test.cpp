// JSON log lines (escaping, formatter), access lines and request ids.
#include "proxy/logging.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>

#include "proxy/access_log.hpp"

namespace sproxy::proxy {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

// A logger on an ostream, formatted like the proxy's sink.
struct CapturedLogger {
  explicit CapturedLogger(LogFormat format, std::string name = "secrets-proxy") {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
    sink->set_formatter(std::make_unique<LogLineFormatter>(format));
    logger = std::make_shared<spdlog::logger>(std::move(name), sink);
    logger->set_level(spdlog::level::trace);
  }
  std::vector<std::string> lines() const {
    std::vector<std::string> result;
    std::istringstream in(out.str());
    for (std::string line; std::getline(in, line);) result.push_back(line);
    return result;
  }
  std::ostringstream out;
  std::shared_ptr<spdlog::logger> logger;
};

std::string escaped(std::string_view s) {
  std::string out;
  append_json_escaped(out, s);
  return out;
}

TEST(JsonEscape, WritesQuotesBackslashesAndControlCharactersAsEscapes) {
  EXPECT_EQ(escaped("plain text"), "plain text");
  EXPECT_EQ(escaped("a\"b\\c"), R"(a\"b\\c)");
  EXPECT_EQ(escaped("l1\nl2\r\t"), R"(l1\nl2\r\t)");
  EXPECT_EQ(escaped(std::string("nul\0x\x01\x1f", 7)), R"(nul\u0000x\u0001\u001f)");
  EXPECT_EQ(escaped("\x7f"), "\x7f");  // DEL is valid in a JSON string
}

TEST(JsonEscape, KeepsValidUtf8AndReplacesEveryInvalidByte) {
  EXPECT_EQ(escaped("h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x94\x91"),
            "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x94\x91");
  EXPECT_EQ(escaped("\xFF"), R"(\ufffd)");
  EXPECT_EQ(escaped("\xC3"), R"(\ufffd)");                                // truncated
  EXPECT_EQ(escaped("\xC0\xAF"), R"(\ufffd\ufffd)");                      // overlong
  EXPECT_EQ(escaped("\xED\xA0\x80"), R"(\ufffd\ufffd\ufffd)");            // surrogate
  EXPECT_EQ(escaped("\xF4\x90\x80\x80"), R"(\ufffd\ufffd\ufffd\ufffd)");  // > U+10FFFF
  EXPECT_EQ(escaped("a\x80z"), R"(a\ufffdz)");
}

// Whatever the bytes, the escaped text is a JSON string that parses, and valid UTF-8
// input comes back unchanged.
TEST(JsonEscape, AlwaysYieldsAJsonStringThatParses) {
  std::mt19937 rng(12345);
  for (int round = 0; round < 2000; ++round) {
    std::string s(rng() % 40, '\0');
    for (auto& c : s) c = static_cast<char>(rng() % 256);
    const std::string text = "\"" + escaped(s) + "\"";
    json parsed;
    ASSERT_NO_THROW(parsed = json::parse(text)) << text;
    ASSERT_TRUE(parsed.is_string());
  }
  const std::string utf8 = "ok \"q\" \\ \n \xE6\x97\xA5\xE6\x9C\xAC";
  EXPECT_EQ(json::parse("\"" + escaped(utf8) + "\"").get<std::string>(), utf8);
}

TEST(LogLineFormatter, WritesEveryLineAsOneJsonObject) {
  CapturedLogger log(LogFormat::json);
  log.logger->info("started: {}", "port 8787");
  log.logger->warn("odd input \"{}\"\nsecond line", "x\\y\x01");
  log.logger->error("bytes \xFF\xFE");
  const auto lines = log.lines();
  ASSERT_EQ(lines.size(), 3u);
  const json first = json::parse(lines[0]);
  EXPECT_EQ(first["level"], "info");
  EXPECT_EQ(first["msg"], "started: port 8787");
  EXPECT_THAT(
      first["time"].get<std::string>(),
      MatchesRegex(R"(20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)"));
  const json second = json::parse(lines[1]);
  EXPECT_EQ(second["level"], "warn");
  EXPECT_EQ(second["msg"], "odd input \"x\\y\x01\"\nsecond line");
  EXPECT_EQ(json::parse(lines[2])["level"], "error");
  EXPECT_EQ(json::parse(lines[2])["msg"], "bytes \xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(LogLineFormatter, WritesTextLinesWithControlCharactersEscaped) {
  CapturedLogger log(LogFormat::text);
  log.logger->info("one\ntwo");
  const auto lines = log.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], MatchesRegex(R"([-0-9T:.]+Z info one\\x0atwo)"));
}

AccessRecord sample_record() {
  AccessRecord r;
  r.request_id = "req-1";
  r.client = "billing \"svc\"";
  r.method = upstream::Method::get;
  r.route = RouteLabel::secret;
  r.status = 200;
  r.cache = cache::Outcome::miss;
  r.upstream = std::chrono::microseconds(1500);
  r.total = std::chrono::microseconds(2250);
  return r;
}

TEST(AccessLog, WritesOneJsonLineWithEveryField) {
  CapturedLogger log(LogFormat::json, std::string(kAccessLoggerName));
  AccessLog access(log.logger, LogFormat::json, true);
  access.write(sample_record());
  AccessRecord anonymous;
  anonymous.request_id = "r2";
  anonymous.status = 404;
  access.write(anonymous);
  const auto lines = log.lines();
  ASSERT_EQ(lines.size(), 2u);
  const json j = json::parse(lines[0]);
  EXPECT_EQ(j["msg"], "access");
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["request_id"], "req-1");
  EXPECT_EQ(j["client"], "billing \"svc\"");
  EXPECT_EQ(j["method"], "GET");
  EXPECT_EQ(j["route"], "/stores/{store_id}/secrets/{secret_id}");
  EXPECT_EQ(j["status"], 200);
  EXPECT_EQ(j["cache"], "MISS");
  EXPECT_DOUBLE_EQ(j["upstream_ms"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(j["duration_ms"].get<double>(), 2.25);
  const json k = json::parse(lines[1]);
  EXPECT_TRUE(k["client"].is_null());
  EXPECT_TRUE(k["cache"].is_null());
  EXPECT_TRUE(k["upstream_ms"].is_null());
  EXPECT_EQ(k["route"], "unmatched");
}

TEST(AccessLog, WritesKeyValueTextLines) {
  EXPECT_EQ(access_fields(sample_record(), LogFormat::text),
            "request_id=req-1 client=\"billing \\\"svc\\\"\" method=GET "
            "route=/stores/{store_id}/secrets/{secret_id} status=200 cache=MISS "
            "upstream_ms=1.500 duration_ms=2.250");
}

TEST(AccessLog, SwitchesOnAndOff) {
  CapturedLogger log(LogFormat::json, std::string(kAccessLoggerName));
  AccessLog access(log.logger, LogFormat::json, false);
  EXPECT_FALSE(access.enabled());
  access.set_enabled(true);
  EXPECT_TRUE(access.enabled());
}

TEST(RequestId, AcceptsBoundedSafeIdsOnly) {
  EXPECT_TRUE(is_acceptable_request_id("8c1a2b3c4d5e6f70-SJC"));
  EXPECT_TRUE(is_acceptable_request_id("a.b_c:d-e"));
  EXPECT_TRUE(is_acceptable_request_id(std::string(kMaxRequestIdLength, 'a')));
  EXPECT_FALSE(is_acceptable_request_id(""));
  EXPECT_FALSE(is_acceptable_request_id(std::string(kMaxRequestIdLength + 1, 'a')));
  EXPECT_FALSE(is_acceptable_request_id("has space"));
  EXPECT_FALSE(is_acceptable_request_id("quote\""));
  EXPECT_FALSE(is_acceptable_request_id("new\nline"));
  EXPECT_FALSE(is_acceptable_request_id("caf\xC3\xA9"));
}

TEST(RequestId, TakesTheClientsIdThenCfRayElseMakesOne) {
  boost::beast::http::fields h;
  h.set("cf-ray", "ray-1");
  EXPECT_EQ(request_id_for(h), "ray-1");
  h.set("X-Request-Id", "client-id");
  EXPECT_EQ(request_id_for(h), "client-id");
  h.set("X-Request-Id", "bad id");
  EXPECT_EQ(request_id_for(h), "ray-1");
  h.erase("cf-ray");
  const std::string made = request_id_for(h);
  EXPECT_THAT(made, MatchesRegex("[0-9a-f]{32}"));
  EXPECT_NE(new_request_id(), new_request_id());
}

TEST(LogLevels, ParseTheConfigsNames) {
  EXPECT_EQ(parse_log_level("debug"), spdlog::level::debug);
  EXPECT_EQ(parse_log_level("error"), spdlog::level::err);
  EXPECT_EQ(parse_log_level("off"), spdlog::level::off);
  EXPECT_FALSE(parse_log_level("loud"));
}

}  // namespace
}  // namespace sproxy::proxy
