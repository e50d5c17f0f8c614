#include "proxy/http_message.hpp"

#include <boost/beast/http/field.hpp>

namespace sproxy::proxy {

namespace http = boost::beast::http;

HttpResponse make_json_response(unsigned status, cache::SharedBytes body, unsigned version) {
  HttpResponse res{static_cast<http::status>(status), version};
  // A new message has no fields yet: insert, without the lookup `set` makes first.
  res.insert(http::field::server, kServerName);
  res.insert(http::field::content_type, "application/json");
  res.body() = std::move(body);
  return res;
}

HttpResponse make_error_response(const upstream::ApiError& error, unsigned version) {
  HttpResponse res = make_json_response(
      error.status, cache::SharedBytes(upstream::envelope_error(error)), version);
  if (error.retry_after_seconds) {
    res.set(http::field::retry_after, std::to_string(*error.retry_after_seconds));
  }
  return res;
}

}  // namespace sproxy::proxy
