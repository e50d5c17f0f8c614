#include "proxy/answer.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/beast/http/status.hpp>
#include <cstdint>
#include <boost/beast/http/field.hpp>
#include <string>

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
    res.insert(http::field::age, std::to_string(std::max<upstream::Micros>(answer.age, 0) / 1'000'000));
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

void append_field(std::string& out, std::string_view name, std::string_view value) {
  out.append(name);
  out.append(": ", 2);
  out.append(value);
  out.append("\r\n", 2);
}

// Decimal digits of `n`, without allocating.
std::string_view decimal(std::uint64_t n, std::array<char, 20>& buf) {
  std::size_t i = buf.size();
  do {
    buf[--i] = static_cast<char>('0' + n % 10);
    n /= 10;
  } while (n != 0);
  return {buf.data() + i, buf.size() - i};
}

}  // namespace

void serialize_answer_head(const DirectAnswer& direct, bool keep_alive, std::string& out) {
  const cache::Answer& answer = direct.answer;
  const unsigned code = answer.status;
  const unsigned version = direct.version;
  const char start[13] = {'H', 'T', 'T', 'P', '/', static_cast<char>('0' + version / 10), '.',
                          static_cast<char>('0' + version % 10), ' ',
                          static_cast<char>('0' + code / 100),
                          static_cast<char>('0' + (code / 10) % 10),
                          static_cast<char>('0' + code % 10), ' '};
  std::array<char, 20> digits;
  out.clear();
  out.append(start, sizeof start);
  out.append(http::obsolete_reason(static_cast<http::status>(code)));
  out.append("\r\n", 2);
  // The order answer_response, the handler and the server give them.
  append_field(out, "Server", kServerName);
  append_field(out, "Content-Type", "application/json");
  append_field(out, "X-Cache", cache::to_string(answer.outcome));
  append_field(out, "Age",
               decimal(static_cast<std::uint64_t>(std::max<upstream::Micros>(answer.age, 0) /
                                                  1'000'000),
                       digits));
  if (answer.retry_after) append_field(out, "Retry-After", *answer.retry_after);
  if (answer.ratelimit) append_field(out, "Ratelimit", *answer.ratelimit);
  if (answer.ratelimit_policy) append_field(out, "Ratelimit-Policy", *answer.ratelimit_policy);
  if (!direct.request_id.empty()) append_field(out, "X-Request-Id", direct.request_id);
  if (version == 11 && !keep_alive) append_field(out, "Connection", "close");
  if (version == 10 && keep_alive) append_field(out, "Connection", "keep-alive");
  append_field(out, "Content-Length", decimal(answer.body->size(), digits));
  out.append("\r\n", 2);
}

HttpResponse direct_answer_response(const DirectAnswer& direct) {
  HttpResponse response = answer_response(direct.answer, direct.version, /*is_read=*/true);
  if (!direct.request_id.empty()) response.set("X-Request-Id", direct.request_id);
  return response;
}

}  // namespace sproxy::proxy
