#include "proxy/answer.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/status.hpp>
#include <cstdint>
#include <cstring>
#include <string>

#include "proxy/http_io.hpp"

namespace sproxy::proxy {

namespace http = boost::beast::http;

HttpResponse answer_response(const cache::Answer& answer, unsigned version, bool is_read) {
  auto body = answer.body;
  unsigned status = answer.status;
  if (!body) {
    // The cache always fills the body; never send an empty 200 if it did not.
    spdlog::error("cache answer without a body (status {})", status);
    return make_error_response(upstream::errors::internal_error(), version);
  }
  HttpResponse res = make_json_response(status, std::move(body), version);
  // Fields the message cannot hold yet are inserted, not set: no lookup first.
  if (is_read) {
    res.insert("X-Cache", cache::to_string(answer.outcome));
    res.insert(http::field::age,
               std::to_string(std::max<upstream::Micros>(answer.age, 0) / 1'000'000));
  }
  if (answer.retry_after) res.insert(http::field::retry_after, *answer.retry_after);
  // The upstream's budget, passed on so clients can pace themselves like the API asks.
  if (answer.ratelimit) res.insert("Ratelimit", *answer.ratelimit);
  if (answer.ratelimit_policy) res.insert("Ratelimit-Policy", *answer.ratelimit_policy);
  return res;
}

bool can_serialize_directly(const cache::Answer& answer, unsigned version) {
  const unsigned s = answer.status;
  return answer.body && (version == 10 || version == 11) && s >= 200 && s <= 999 && s != 204 &&
         s != 304;
}

namespace {

// Decimal digits of `n`, without allocating.
std::string_view decimal(std::uint64_t n, std::array<char, 20>& buf) {
  std::size_t i = buf.size();
  do {
    buf[--i] = static_cast<char>('0' + n % 10);
    n /= 10;
  } while (n != 0);
  return {buf.data() + i, buf.size() - i};
}

// Appends pieces to a string sized once: the head is measured, then copied in.
class HeadWriter {
 public:
  void field(std::string_view name, std::string_view value) {
    put(name);
    put(": ");
    put(value);
    put("\r\n");
  }
  void put(std::string_view piece) {
    if (out_ != nullptr) std::memcpy(out_ + size_, piece.data(), piece.size());
    size_ += piece.size();
  }
  std::size_t size() const { return size_; }
  void write_into(char* out) {
    out_ = out;
    size_ = 0;
  }

 private:
  char* out_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace

void serialize_answer_head(const cache::Answer& answer, unsigned version,
                           std::string_view request_id, bool keep_alive, std::string& out) {
  const unsigned code = answer.status;
  const auto start = status_line_start(version, code);
  std::array<char, 20> age_digits;
  std::array<char, 20> length_digits;
  const std::string_view age =
      decimal(static_cast<std::uint64_t>(std::max<upstream::Micros>(answer.age, 0) / 1'000'000),
              age_digits);
  const std::string_view length = decimal(answer.body.size(), length_digits);
  const auto write = [&](HeadWriter& w) {
    w.put(std::string_view(start.data(), start.size()));
    w.put(http::obsolete_reason(static_cast<http::status>(code)));
    w.put("\r\n");
    // The order answer_response, the handler and the server give them.
    w.field("Server", kServerName);
    w.field("Content-Type", "application/json");
    w.field("X-Cache", cache::to_string(answer.outcome));
    w.field("Age", age);
    if (answer.retry_after) w.field("Retry-After", *answer.retry_after);
    if (answer.ratelimit) w.field("Ratelimit", *answer.ratelimit);
    if (answer.ratelimit_policy) w.field("Ratelimit-Policy", *answer.ratelimit_policy);
    if (!request_id.empty()) w.field("X-Request-Id", request_id);
    if (version == 11 && !keep_alive) w.field("Connection", "close");
    if (version == 10 && keep_alive) w.field("Connection", "keep-alive");
    w.field("Content-Length", length);
    w.put("\r\n");
  };
  HeadWriter writer;
  write(writer);
  out.resize(writer.size());
  writer.write_into(out.data());
  write(writer);
}

}  // namespace sproxy::proxy
