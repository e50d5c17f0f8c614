// FleetChannel: how the fleet's processes tell each other what a write changed, through
// Redis: per-account and per-store generation counters, and one pub/sub channel.
//
// Contract: publish() runs one Lua script (EVALSHA, RedisScript) that INCRs the
// generation of every store named and, for account-wide changes, the account's own
// generation, then PUBLISHes one message on the channel holding the tags to invalidate,
// the new generations, the publishing process's id (`origin`) and the publish time;
// it returns that message (with the generations Redis gave) or the connection's failure
// (RedisErrc; each command has the connection's deadline). An invalidation without an
// account (a purge of everything) bumps the fleet's purge generation instead (its label
// in the message is ""). generations() reads the current generations of many keys (MGET,
// in batches of kGenerationBatch); purge_generation() reads the purge generation (a
// command of its own: its key lives in another Redis Cluster slot than any account's);
// a key Redis does not hold reads as 0 (never bumped, or Redis lost its data).
// Keys and channel (a Redis Cluster keeps one account's keys in one slot):
//   {<prefix>:acct:<account>}:gen           account-wide generation (stores list, quota,
//                                           store create and delete)
//   {<prefix>:acct:<account>}:gen:<store>   the store's generation (its secrets, its GET)
//   {<prefix>:purge}:gen                    purges of everything
//   <prefix>:inval                          the channel
// Message (JSON): {"o": origin, "t": "<publish time, epoch microseconds>", "a": account,
//   "tags": [cache tags], "g": {"": account generation, "<store id>": generation}}
// Thread safety: any thread; the connection serializes commands.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/system/result.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upstream/redis_connection.hpp"
#include "upstream/redis_script.hpp"

namespace sproxy::upstream {

// One invalidation as it travels on the channel.
struct FleetInvalidation {
  std::string origin;             // the publishing process's id
  std::int64_t published_us = 0;  // its wall clock at publish, epoch microseconds
  std::string account;            // empty: every account
  std::vector<std::string> tags;  // cache tags to invalidate
  // New generations: "" is the account's own, any other key a store id.
  std::map<std::string, std::int64_t> generations;
};

std::string encode_invalidation(const FleetInvalidation& m);
// nullopt for anything that is not a message of this shape.
std::optional<FleetInvalidation> decode_invalidation(std::string_view payload);

// A generation counter: the account's own (store empty) or one store's.
struct GenerationKey {
  std::string account;
  std::string store;
  auto operator<=>(const GenerationKey&) const = default;
};

std::string invalidation_channel(std::string_view prefix);
std::string generation_key(std::string_view prefix, const GenerationKey& key);
std::string purge_generation_key(std::string_view prefix);

inline constexpr std::size_t kGenerationBatch = 100;

class FleetChannel {
 public:
  // Throws std::invalid_argument when `redis` is null.
  FleetChannel(std::shared_ptr<RedisConnection> redis, std::string prefix, std::string origin);

  // `stores`: the stores whose generation the change bumps; `account_wide`: the account's
  // own generation too. `published_us`: the caller's wall clock.
  boost::asio::awaitable<boost::system::result<FleetInvalidation>> publish(
      std::string account, std::vector<std::string> stores, bool account_wide,
      std::vector<std::string> tags, std::int64_t published_us);
  // The generations of `keys`, in order.
  boost::asio::awaitable<boost::system::result<std::vector<std::int64_t>>> generations(
      std::vector<GenerationKey> keys);
  // The generation of purges of everything.
  boost::asio::awaitable<boost::system::result<std::int64_t>> purge_generation();

  const std::string& channel() const { return channel_; }
  const std::string& origin() const { return origin_; }
  const std::string& prefix() const { return prefix_; }
  RedisConnection& connection() const { return *redis_; }

 private:
  const std::shared_ptr<RedisConnection> redis_;
  const std::string prefix_;
  const std::string origin_;
  const std::string channel_;
  RedisScript publish_;
};

}  // namespace sproxy::upstream
