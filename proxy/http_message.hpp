// The HTTP message types of the proxy's listener and the helpers that build responses.
//
// Responses carry their body as `cache::SharedBytes` (SharedBytesBody), so a cached
// answer's pre-serialized envelope is written straight from the cache entry without a
// copy. Every response the proxy writes is JSON and names the server.
// Pure value types and functions; thread-safe.
#pragma once

#include <boost/asio/buffer.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/optional.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "cache/shared_bytes.hpp"
#include "upstream/model.hpp"

namespace sproxy::proxy {

// A Beast Body (writer side only) over immutable shared bytes.
struct SharedBytesBody {
  using value_type = cache::SharedBytes;

  static std::uint64_t size(const value_type& body) { return body.size(); }

  class writer {
   public:
    using const_buffers_type = boost::asio::const_buffer;

    template <bool isRequest, class Fields>
    writer(const boost::beast::http::header<isRequest, Fields>&, const value_type& body)
        : body_(body) {}

    void init(boost::beast::error_code& ec) { ec = {}; }

    boost::optional<std::pair<const_buffers_type, bool>> get(boost::beast::error_code& ec) {
      ec = {};
      if (body_.empty()) return boost::none;
      return std::make_pair(const_buffers_type(body_.data(), body_.size()), false);
    }

   private:
    const value_type& body_;
  };
};

using HttpRequest = boost::beast::http::request<boost::beast::http::string_body>;
using HttpResponse = boost::beast::http::response<SharedBytesBody>;

inline constexpr std::string_view kServerName = "secrets-proxy";

// A JSON response with `Server` and `Content-Type: application/json` set.
HttpResponse make_json_response(unsigned status, cache::SharedBytes body, unsigned version);
// The API envelope of `error`, with `Retry-After` when the error carries one.
HttpResponse make_error_response(const upstream::ApiError& error, unsigned version);

}  // namespace sproxy::proxy
