#include "upstream/upstream.hpp"

#include <string>

namespace sproxy::upstream {

boost::asio::awaitable<std::size_t> Upstream::preconnect(std::size_t connections) {
  (void)connections;
  co_return 0;
}

namespace {

class UpstreamCategory final : public boost::system::error_category {
 public:
  // A fixed id keeps equality working across shared-library boundaries.
  UpstreamCategory() noexcept : boost::system::error_category(0x5e3c'7a11'0b5f'2d01ULL) {}

  const char* name() const noexcept override { return "sproxy.upstream"; }

  std::string message(int ev) const override {
    switch (static_cast<UpstreamErrc>(ev)) {
      case UpstreamErrc::ok:
        return "success";
      case UpstreamErrc::timeout:
        return "upstream request timed out";
      case UpstreamErrc::unreachable:
        return "upstream unreachable";
      case UpstreamErrc::connection_reset:
        return "upstream connection reset";
      case UpstreamErrc::bad_response:
        return "malformed response from upstream";
      case UpstreamErrc::tls_error:
        return "upstream TLS handshake or certificate verification failed";
      case UpstreamErrc::overloaded:
        return "upstream client overloaded: local limits exhausted";
      case UpstreamErrc::circuit_open:
        return "upstream circuit breaker is open";
      case UpstreamErrc::rate_limited:
        return "upstream rate budget exhausted";
      case UpstreamErrc::shutting_down:
        return "shutting down";
    }
    return "unknown upstream error";
  }
};

}  // namespace

const boost::system::error_category& upstream_category() {
  static const UpstreamCategory category;
  return category;
}

boost::system::error_code make_error_code(UpstreamErrc e) {
  return {static_cast<int>(e), upstream_category()};
}

}  // namespace sproxy::upstream
