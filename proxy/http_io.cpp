#include "proxy/http_io.hpp"

#include <array>
#include <boost/beast/core/string.hpp>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace sproxy::proxy {

namespace {

namespace http = boost::beast::http;

// Byte classes of the plain request syntax, one table lookup per byte.
enum : unsigned char { kTchar = 1, kTargetChar = 2, kValueChar = 4 };

constexpr std::array<unsigned char, 256> make_classes() {
  std::array<unsigned char, 256> t{};
  for (int c = 0x21; c <= 0x7e; ++c) t[c] |= kTargetChar | kValueChar;
  t[' '] |= kValueChar;
  t['\t'] |= kValueChar;
  for (int c = '0'; c <= '9'; ++c) t[c] |= kTchar;
  for (int c = 'a'; c <= 'z'; ++c) t[c] |= kTchar;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] |= kTchar;
  for (const char c : std::string_view("!#$%&'*+-.^_`|~")) {
    t[static_cast<unsigned char>(c)] |= kTchar;
  }
  return t;
}
constexpr std::array<unsigned char, 256> kClasses = make_classes();

bool all_of_class(std::string_view s, unsigned char cls) {
  for (const char c : s) {
    if ((kClasses[static_cast<unsigned char>(c)] & cls) == 0) return false;
  }
  return true;
}

// True when every byte of `s` is in [low, 0x7e] (low <= 0x7e), eight bytes at a time:
// a byte is below `low` when subtracting `low` borrows into its top bit, and above 0x7e
// when it has the top bit set or adding 1 sets it.
bool all_printable_from(std::string_view s, unsigned char low) {
  constexpr std::uint64_t kOnes = 0x0101010101010101ull;
  constexpr std::uint64_t kHigh = 0x8080808080808080ull;
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    const std::uint64_t below = (w - kOnes * low) & ~w;
    const std::uint64_t above = (w + kOnes) | w;
    if (((below | above) & kHigh) != 0) return false;
  }
  for (; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < low || c > 0x7e) return false;
  }
  return true;
}

bool is_ows(char c) { return c == ' ' || c == '\t'; }

// A comma-separated list whose elements are empty or one token each (OWS around them).
bool is_token_list(std::string_view value) {
  while (true) {
    const std::size_t comma = value.find(',');
    std::string_view element = value.substr(0, comma);
    while (!element.empty() && is_ows(element.front())) element.remove_prefix(1);
    while (!element.empty() && is_ows(element.back())) element.remove_suffix(1);
    if (!all_of_class(element, kTchar)) return false;
    if (comma == std::string_view::npos) return true;
    value.remove_prefix(comma + 1);
  }
}

// What a field means to this parser: Beast interprets the message framing fields and
// Upgrade (left to it), and checks Connection lists (checked here the same way).
enum class FieldRole { plain, framing, connection };

FieldRole role_of(std::string_view name) {
  switch (name.size()) {
    case 7:
      return boost::beast::iequals(name, "upgrade") ? FieldRole::framing : FieldRole::plain;
    case 10:
      return boost::beast::iequals(name, "connection") ? FieldRole::connection : FieldRole::plain;
    case 14:
      return boost::beast::iequals(name, "content-length") ? FieldRole::framing : FieldRole::plain;
    case 16:
      return boost::beast::iequals(name, "proxy-connection") ? FieldRole::connection
                                                             : FieldRole::plain;
    case 17:
      return boost::beast::iequals(name, "transfer-encoding") ? FieldRole::framing
                                                              : FieldRole::plain;
    default:
      return FieldRole::plain;
  }
}

}  // namespace

bool parse_simple_get(boost::beast::flat_buffer& buffer, std::size_t header_limit,
                      HttpRequest& out) {
  const auto data = buffer.data();
  const std::string_view all(static_cast<const char*>(data.data()), data.size());
  if (!all.starts_with("GET /")) return false;
  const std::size_t end = all.find("\r\n\r\n");
  if (end == std::string_view::npos || end + 4 > header_limit) return false;
  std::string_view head = all.substr(4, end - 2);  // every line with its CRLF, after "GET "

  // Request line: "GET <target> HTTP/1.x".
  const std::size_t line_end = head.find("\r\n");
  const std::string_view line = head.substr(0, line_end);
  head.remove_prefix(line_end + 2);
  if (line.size() < 10) return false;
  const std::string_view target = line.substr(0, line.size() - 9);
  const std::string_view version = line.substr(line.size() - 9);
  unsigned v = 0;
  if (version == " HTTP/1.1") {
    v = 11;
  } else if (version == " HTTP/1.0") {
    v = 10;
  } else {
    return false;
  }
  if (!all_printable_from(target, 0x21)) return false;

  // Fields: "Name: value" lines, checked in full before the message is touched.
  struct Field {
    std::string_view name;
    std::string_view value;
  };
  std::array<Field, 32> fields;
  std::size_t count = 0;
  while (!head.empty()) {
    const std::size_t eol = head.find('\r');  // never npos: every line ends in CRLF
    if (head[eol + 1] != '\n' || count == fields.size()) return false;
    const std::string_view field = head.substr(0, eol);
    head.remove_prefix(eol + 2);
    std::size_t colon = 0;
    while (colon < field.size() &&
           (kClasses[static_cast<unsigned char>(field[colon])] & kTchar) != 0) {
      ++colon;
    }
    if (colon == 0 || colon == field.size() || field[colon] != ':') return false;
    const std::string_view name = field.substr(0, colon);
    std::string_view value = field.substr(colon + 1);
    if (!all_printable_from(value, 0x20) && !all_of_class(value, kValueChar)) return false;
    while (!value.empty() && is_ows(value.front())) value.remove_prefix(1);
    while (!value.empty() && is_ows(value.back())) value.remove_suffix(1);
    switch (role_of(name)) {
      case FieldRole::framing:
        return false;
      case FieldRole::connection:
        if (!is_token_list(value)) return false;
        break;
      case FieldRole::plain:
        break;
    }
    fields[count++] = Field{name, value};
  }

  HttpRequest request;
  request.method(http::verb::get);
  request.target(target);
  request.version(v);
  for (std::size_t i = 0; i < count; ++i) request.insert(fields[i].name, fields[i].value);
  out = std::move(request);
  buffer.consume(end + 4);
  return true;
}

void serialize_response_head(const HttpResponse& response, std::string& out) {
  // Mirrors basic_fields<>::writer (boost/beast/http/impl/fields.hpp): the stored reason
  // when there is one, otherwise the status code's standard reason.
  const auto start = status_line_start(response.version(), response.result_int());
  const auto reason = response.reason();
  out.clear();
  out.append(start.data(), start.size());
  out.append(reason.data(), reason.size());
  out.append("\r\n", 2);
  for (const auto& field : response.base()) {
    const auto name = field.name_string();
    const auto value = field.value();
    out.append(name.data(), name.size());
    out.append(": ", 2);
    out.append(value.data(), value.size());
    out.append("\r\n", 2);
  }
  out.append("\r\n", 2);
}

}  // namespace sproxy::proxy
