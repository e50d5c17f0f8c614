// FleetBudget: the upstream guard's rate budget held in Redis, so that every process of a
// fleet (the same Redis server and key prefix, the same upstream credential) together
// stays under one budget, and an upstream 429's Retry-After stops all of them.
//
// Contract: try_acquire() runs one Lua script (EVALSHA; loaded with SCRIPT LOAD on first
// use and again after NOSCRIPT, e.g. when Redis restarted) that, atomically on the
// server's clock, refuses while a shared block is in force, else admits when both
// sliding windows allow (at most capacity admissions in any interval of the window's
// length; capacity = max(1, floor(limit * (1 - safety_margin))), as RateBudget), and
// records the admission in both. block_for() extends the shared block (never shortens
// it). Both say `reached = false` when Redis could not be asked (unreachable, deadline,
// an unexpected reply): the caller then decides alone (the guard's fallback share).
// Keys (all under one hash tag, so a Redis Cluster keeps them in one slot):
//   {<prefix>:budget:<credential id>}:window   sorted set, admissions in the long window
//   {<prefix>:budget:<credential id>}:burst    sorted set, admissions in the short window
//   {<prefix>:budget:<credential id>}:blocked  the shared block's end (server ms)
//   {<prefix>:budget:<credential id>}:seq      admission counter (unique set members)
// The credential id is a SHA-256 of the upstream credential (budget_credential_id),
// never the credential. Thread safety: any thread; the connection serializes commands.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "config/upstream_credential.hpp"
#include "upstream/redis_connection.hpp"
#include "upstream/redis_script.hpp"
#include "upstream/resilience.hpp"

namespace sproxy::upstream {

struct FleetBudgetDecision {
  bool reached = false;  // Redis answered; otherwise nothing else here holds
  bool granted = false;
  BudgetRefusal reason = BudgetRefusal::none;  // exhausted or blocked
  SteadyDuration wait{0};                      // when refused: until a token is due
};

// 32 hex characters of a SHA-256 over the credential (its kind and values), naming the
// budget in keys: processes with the same credential share a budget, and no key reveals it.
std::string budget_credential_id(const config::UpstreamCredential& credential);

// "{<prefix>:budget:<credential id>}": the hash tag every budget key starts with.
std::string budget_key_tag(std::string_view prefix, std::string_view credential_id);

class FleetBudget {
 public:
  // Throws std::invalid_argument when `redis` is null or the options are refused by
  // RateBudget's rules.
  FleetBudget(std::shared_ptr<RedisConnection> redis, RateBudgetOptions options,
              std::string key_tag);

  boost::asio::awaitable<FleetBudgetDecision> try_acquire();
  // Every process refuses upstream calls for `delay` from now (on the server's clock).
  // True when Redis recorded it.
  boost::asio::awaitable<bool> block_for(std::chrono::milliseconds delay);

  const RateBudgetOptions& options() const { return options_; }
  const std::string& key_tag() const { return key_tag_; }

 private:
  const std::shared_ptr<RedisConnection> redis_;
  const RateBudgetOptions options_;
  const std::string key_tag_;
  long capacity_ = 0;
  long burst_capacity_ = 0;
  RedisScript acquire_;
  RedisScript block_;
};

}  // namespace sproxy::upstream
