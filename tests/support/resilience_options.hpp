// Settings shared by the tests of the rate-limit policies (upstream/resilience.hpp) and
// of GuardedUpstream: the start of their explicit time, a budget of one window and a
// breaker. Header-only; link sproxy_upstream.
#pragma once

#include <chrono>

#include "upstream/resilience.hpp"

namespace sproxy::test {

using namespace std::chrono_literals;

// The steady and wall-clock times the tests start at.
inline const upstream::SteadyTime kT0 = upstream::SteadyTime{} + 1000h;
inline const std::chrono::system_clock::time_point kWallT0 =
    std::chrono::sys_days{std::chrono::year{2026} / std::chrono::March / 1} + 12h;

// `limit` requests per `window`, no burst limit, `margin` of it left unused.
inline upstream::RateBudgetOptions budget_options(long limit, std::chrono::milliseconds window,
                                                  double margin = 0.0) {
  upstream::RateBudgetOptions o;
  o.limit = limit;
  o.window = window;
  o.burst_limit = 0;
  o.safety_margin = margin;
  return o;
}

inline upstream::CircuitBreakerOptions breaker_options(int threshold,
                                                       std::chrono::milliseconds open_for) {
  upstream::CircuitBreakerOptions o;
  o.failure_threshold = threshold;
  o.open_duration = open_for;
  return o;
}

}  // namespace sproxy::test
