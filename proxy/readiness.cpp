#include "proxy/readiness.hpp"

#include <limits>
#include <stdexcept>
#include <utility>

namespace sproxy::proxy {

struct UpstreamReachability::State {
  std::shared_ptr<upstream::Upstream> inner;
  std::shared_ptr<const upstream::GuardedUpstream::Clock> clock;
  // steady_clock ticks of the last HTTP answer; kNever before the first.
  std::atomic<upstream::SteadyDuration::rep> last{kNever};
  static constexpr upstream::SteadyDuration::rep kNever =
      std::numeric_limits<upstream::SteadyDuration::rep>::min();
};

UpstreamReachability::UpstreamReachability(
    std::shared_ptr<upstream::Upstream> inner,
    std::shared_ptr<const upstream::GuardedUpstream::Clock> clock)
    : state_(std::make_shared<State>()) {
  if (!inner) throw std::invalid_argument("UpstreamReachability: inner upstream is null");
  state_->inner = std::move(inner);
  state_->clock = clock ? std::move(clock) : upstream::GuardedUpstream::system_clock();
}

boost::asio::awaitable<upstream::CallResult> UpstreamReachability::call(
    upstream::ApiRequest request) {
  const std::shared_ptr<State> state = state_;  // the decorator may go while this runs
  upstream::CallResult result = co_await state->inner->call(std::move(request));
  if (result) {
    state->last.store(state->clock->now().time_since_epoch().count(), std::memory_order_relaxed);
  }
  co_return result;
}

boost::asio::awaitable<std::size_t> UpstreamReachability::preconnect(std::size_t connections) {
  const std::shared_ptr<State> state = state_;
  const std::size_t open = co_await state->inner->preconnect(connections);
  co_return open;
}

std::string UpstreamReachability::describe() const { return state_->inner->describe(); }
std::optional<std::int64_t> UpstreamReachability::activation_delay() const {
  return state_->inner->activation_delay();
}

std::optional<upstream::SteadyTime> UpstreamReachability::last_answer() const {
  const auto ticks = state_->last.load(std::memory_order_relaxed);
  if (ticks == State::kNever) return std::nullopt;
  return upstream::SteadyTime{upstream::SteadyDuration{ticks}};
}

bool is_ready(const ReadinessOptions& options, std::uint64_t cache_entries,
              upstream::SteadyTime now) {
  if (options.embedded_upstream || cache_entries > 0) return true;
  if (!options.reachability) return false;
  const auto last = options.reachability->last_answer();
  return last && now - *last <= kReadyUpstreamWindow;
}

}  // namespace sproxy::proxy
