// Reply: the request handler's one answer type, and its wire bytes.
//
// A reply is ready or not. Ready, it holds the response message, or for a read the cache
// answered, the cache's answer itself (`cached`), written straight from its shared bytes
// without building a message (answer.hpp has the head; tests compare the two forms). Not
// ready, `rest` is the coroutine that finishes it (a cache miss, a revalidation, a write,
// an audited read); awaiting it yields the ready reply. A cache hit is ready at once, so it
// costs no coroutine frame.
// Next to the answer a reply carries what the metrics and the access log record about
// how it came to be. Value type; move-only; not thread-safe.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <chrono>
#include <optional>
#include <string>

#include "cache/read_through.hpp"
#include "proxy/http_message.hpp"
#include "proxy/metrics.hpp"

namespace sproxy::proxy {

struct Reply {
  // The answer, unless `cached` holds it.
  HttpResponse response;
  // A read's answer from the cache, sent as it is (with X-Cache and Age).
  std::optional<cache::Answer> cached;
  unsigned version = 11;   // of a `cached` answer
  std::string request_id;  // of a `cached` answer: sent as X-Request-Id when not empty
  // Valid while the reply still has to be awaited.
  boost::asio::awaitable<Reply> rest;

  // How the answer came to be, for the metrics and the access log.
  RouteLabel route = RouteLabel::unmatched;
  std::optional<cache::Outcome> cache;
  std::optional<std::chrono::nanoseconds> upstream_time;  // cache::Answer::upstream_time
  std::string client;  // the identity's name, filled only while the access log is on

  static Reply of(HttpResponse response, RouteLabel route = RouteLabel::unmatched);

  bool ready() const { return !rest.valid(); }
  unsigned status() const;
  // The ready answer as a message (a `cached` one is built into one).
  HttpResponse take_response();
  // Replaces `head` with the wire bytes of the ready answer's head, sent with this
  // keep-alive choice, and returns its body's bytes (owned by the reply: keep both until
  // they are written).
  boost::asio::const_buffer serialize(bool keep_alive, std::string& head);
};

}  // namespace sproxy::proxy
