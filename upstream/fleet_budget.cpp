#include "upstream/fleet_budget.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <utility>

#include "upstream/crypto.hpp"

namespace sproxy::upstream {

namespace {

namespace asio = boost::asio;

// KEYS: window log, burst log, blocked-until, sequence.
// ARGV: capacity, window ms, burst capacity (0: none), burst window ms.
// Returns {1, 0, 0} when admitted, {0, wait ms, 1} when a window is full, {0, wait ms,
// 2} inside a block. Time is the server's, so the processes' clocks do not matter.
constexpr std::string_view kAcquireScript = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = tonumber(redis.call('GET', KEYS[3]) or '0')
if blocked > now then return {0, blocked - now, 2} end
local limits = {{KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])},
                {KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4])}}
local wait = 0
for _, l in ipairs(limits) do
  if l[2] > 0 then
    redis.call('ZREMRANGEBYSCORE', l[1], '-inf', now - l[3])
    if redis.call('ZCARD', l[1]) >= l[2] then
      local oldest = redis.call('ZRANGE', l[1], 0, 0, 'WITHSCORES')
      wait = math.max(wait, tonumber(oldest[2]) + l[3] - now, 1)
    end
  end
end
if wait > 0 then return {0, wait, 1} end
local seq = redis.call('INCR', KEYS[4])
for _, l in ipairs(limits) do
  if l[2] > 0 then
    redis.call('ZADD', l[1], now, now .. ':' .. seq)
    redis.call('PEXPIRE', l[1], l[3])
  end
end
return {1, 0, 0}
)lua";

// KEYS: blocked-until. ARGV: delay ms. Extends the block to now + delay; returns the
// block's remaining ms.
constexpr std::string_view kBlockScript = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local delay = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + delay > current then
  redis.call('SET', KEYS[1], now + delay, 'PX', delay)
  return delay
end
return current - now
)lua";

long capacity_of(long limit, double margin) {
  if (limit <= 0) return 0;
  return std::max(1L, static_cast<long>(std::floor(static_cast<double>(limit) * (1.0 - margin))));
}

}  // namespace

std::string budget_credential_id(const config::UpstreamCredential& c) {
  // Kind and values, separated so that no two credentials give the same input.
  const std::string input = c.token.empty() ? "sproxy-budget\nemail\n" + c.email + "\n" + c.api_key
                                            : "sproxy-budget\ntoken\n" + c.token;
  return sha256_hex(input).substr(0, 32);
}

std::string budget_key_tag(std::string_view prefix, std::string_view credential_id) {
  // Built by appending: GCC 12's Release build warns (-Wrestrict) on "{" + std::string.
  std::string tag;
  tag.reserve(prefix.size() + credential_id.size() + 10);
  tag.append("{").append(prefix).append(":budget:").append(credential_id).append("}");
  return tag;
}

FleetBudget::FleetBudget(std::shared_ptr<RedisConnection> redis, RateBudgetOptions options,
                         std::string key_tag)
    : redis_(std::move(redis)),
      options_(options),
      key_tag_(std::move(key_tag)),
      acquire_(kAcquireScript),
      block_(kBlockScript) {
  if (!redis_) throw std::invalid_argument("fleet budget: no redis connection");
  (void)RateBudget(options_);  // the same rules as the local budget
  capacity_ = capacity_of(options_.limit, options_.safety_margin);
  burst_capacity_ = capacity_of(options_.burst_limit, options_.safety_margin);
}

asio::awaitable<FleetBudgetDecision> FleetBudget::try_acquire() {
  using std::chrono::milliseconds;
  const auto window_ms = std::chrono::duration_cast<milliseconds>(options_.window).count();
  const auto burst_ms = std::chrono::duration_cast<milliseconds>(options_.burst_window).count();
  std::vector<std::string> keys = {key_tag_ + ":window", key_tag_ + ":burst", key_tag_ + ":blocked",
                                   key_tag_ + ":seq"};
  std::vector<std::string> args = {std::to_string(capacity_), std::to_string(window_ms),
                                   std::to_string(burst_capacity_), std::to_string(burst_ms)};
  auto reply = co_await acquire_.run(*redis_, std::move(keys), std::move(args));
  FleetBudgetDecision d;
  if (!reply || reply->type != RedisReply::Type::array || reply->elements.size() != 3) co_return d;
  const auto& e = reply->elements;
  d.reached = true;
  d.granted = e[0].integer == 1;
  if (!d.granted) {
    d.reason = e[2].integer == 2 ? BudgetRefusal::blocked : BudgetRefusal::exhausted;
    d.wait = milliseconds(std::max(1LL, e[1].integer));
  }
  co_return d;
}

asio::awaitable<bool> FleetBudget::block_for(std::chrono::milliseconds delay) {
  const long long ms = std::max<long long>(1, delay.count());
  std::vector<std::string> keys = {key_tag_ + ":blocked"};
  std::vector<std::string> args = {std::to_string(ms)};
  auto reply = co_await block_.run(*redis_, std::move(keys), std::move(args));
  co_return reply && reply->type == RedisReply::Type::integer;
}

}  // namespace sproxy::upstream
