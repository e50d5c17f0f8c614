// Readiness: what `GET /readyz` decides from, kept without calling the upstream.
//
// UpstreamReachability is an Upstream decorator that remembers when the upstream last
// gave an HTTP answer (any status, 429 and 5xx included: the upstream is reachable);
// transport failures leave the time unchanged. The probe compares that time with its
// own steady `now`.
// Time: the injected clock (default: the process's steady_clock) is read after each call.
// Thread safety: every member may be called concurrently (one atomic).
// Ownership: holds the inner upstream and the clock; calls keep the shared state alive.
#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "upstream/guarded_upstream.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::proxy {

inline constexpr std::string_view kReadyPath = "/readyz";
// How recent an upstream answer must be for the probe to count the upstream reachable.
inline constexpr std::chrono::seconds kReadyUpstreamWindow{30};

class UpstreamReachability final : public upstream::Upstream {
 public:
  // Throws std::invalid_argument when `inner` is null. A null clock uses
  // upstream::GuardedUpstream::system_clock().
  explicit UpstreamReachability(
      std::shared_ptr<upstream::Upstream> inner,
      std::shared_ptr<const upstream::GuardedUpstream::Clock> clock = nullptr);

  boost::asio::awaitable<upstream::CallResult> call(upstream::ApiRequest request) override;
  boost::asio::awaitable<std::size_t> preconnect(std::size_t connections) override;
  std::string describe() const override;
  std::optional<std::int64_t> activation_delay() const override;

  // When the upstream last answered over HTTP; nullopt before its first answer.
  std::optional<upstream::SteadyTime> last_answer() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// The probe's inputs, in HandlerOptions. The server is listening whenever the probe is
// answered at all.
struct ReadinessOptions {
  // The embedded store is always ready.
  bool embedded_upstream = false;
  // For a remote upstream: ready when it answered within kReadyUpstreamWindow of now.
  std::shared_ptr<const UpstreamReachability> reachability;
};

// Ready when the upstream is embedded, or answered within the window before `now`, or
// the cache holds entries (`cache_entries` > 0) to serve.
bool is_ready(const ReadinessOptions& options, std::uint64_t cache_entries,
              upstream::SteadyTime now);

}  // namespace sproxy::proxy
