#include "proxy/reply.hpp"

#include "proxy/answer.hpp"
#include "proxy/http_io.hpp"

namespace sproxy::proxy {

Reply Reply::of(HttpResponse response, RouteLabel route) {
  Reply reply;
  reply.response = std::move(response);
  reply.route = route;
  return reply;
}

unsigned Reply::status() const { return cached ? cached->status : response.result_int(); }

HttpResponse Reply::take_response() {
  if (!cached) return std::move(response);
  HttpResponse message = answer_response(*cached, version, /*is_read=*/true);
  if (!request_id.empty()) message.set("X-Request-Id", request_id);
  return message;
}

boost::asio::const_buffer Reply::serialize(bool keep_alive, std::string& head) {
  if (cached) {
    serialize_answer_head(*cached, version, request_id, keep_alive, head);
    return boost::asio::buffer(cached->body.data(), cached->body.size());
  }
  response.keep_alive(keep_alive);
  response.prepare_payload();
  serialize_response_head(response, head);
  return response_body_buffer(response);
}

}  // namespace sproxy::proxy
