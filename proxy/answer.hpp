// The HTTP response of a cache answer: what the request handler sends for every read and
// write that went through the cache, and what a cache hit costs to turn into wire bytes
// (see bench/proxy_bench.cpp).
//
// A JSON envelope (`make_json_response`: Server, Content-Type) sharing the answer's body
// bytes without a copy; reads add `X-Cache` (the outcome) and `Age` (whole seconds, never
// negative); `Retry-After` when the answer carries one; the upstream's `Ratelimit` /
// `Ratelimit-Policy` verbatim when the answer came from an upstream call. An answer
// without a body (never produced by the cache) becomes a 500 internal_error envelope and
// an error log line. Pure; thread-safe.
#pragma once

#include "cache/read_through.hpp"
#include "proxy/http_message.hpp"

namespace sproxy::proxy {

HttpResponse answer_response(const cache::Answer& answer, unsigned version, bool is_read);

}  // namespace sproxy::proxy
