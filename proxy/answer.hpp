// The HTTP response of a cache answer: what the request handler sends for every read and
// write that went through the cache, and what a cache hit costs to turn into wire bytes
// (see bench/proxy_bench.cpp).
//
// A JSON envelope (`make_json_response`: Server, Content-Type) sharing the answer's body
// bytes without a copy; reads add `X-Cache` (the outcome) and `Age` (whole seconds, never
// negative); `Retry-After` when the answer carries one; the upstream's `Ratelimit` /
// `Ratelimit-Policy` verbatim when the answer came from an upstream call. An answer
// without a body (never produced by the cache) becomes a 500 internal_error envelope and
// an error log line.
//
// A read answered straight from the cache skips the message object: `serialize_answer_head`
// writes the same head bytes that answer_response, an `X-Request-Id` set last, keep_alive
// and prepare_payload, then serialize_response_head would (tests compare the two), for
// any answer `can_serialize_directly` accepts (see reply.hpp). Pure; thread-safe.
#pragma once

#include "cache/read_through.hpp"
#include "proxy/http_message.hpp"

namespace sproxy::proxy {

HttpResponse answer_response(const cache::Answer& answer, unsigned version, bool is_read);

// True when `answer` (of a read) has a head serialize_answer_head writes: a body, and a
// status that carries one (not 1xx, 204 or 304) under HTTP/1.0 or 1.1.
bool can_serialize_directly(const cache::Answer& answer, unsigned version);
// Replaces `out` with the head of a read's `answer` sent with this keep-alive choice, and
// with `request_id` as X-Request-Id when it is not empty.
void serialize_answer_head(const cache::Answer& answer, unsigned version,
                           std::string_view request_id, bool keep_alive, std::string& out);

}  // namespace sproxy::proxy
