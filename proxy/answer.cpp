#include "proxy/answer.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
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

}  // namespace sproxy::proxy
