// RedisScript: a Lua script run with EVALSHA on a RedisConnection. The script is loaded
// (SCRIPT LOAD) on first use and again after a NOSCRIPT reply (Redis restarted or was
// flushed), so a caller never sends the script text with every call.
// run() returns the script's reply (an error reply is a reply) or the connection's
// failure; each of its commands has the connection's deadline.
// Thread safety: any thread; the loaded SHA is guarded by a mutex.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/system/result.hpp>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "upstream/redis_connection.hpp"

namespace sproxy::upstream {

class RedisScript {
 public:
  explicit RedisScript(std::string_view text) : text_(text) {}
  RedisScript(const RedisScript&) = delete;
  RedisScript& operator=(const RedisScript&) = delete;

  boost::asio::awaitable<boost::system::result<RedisReply>> run(RedisConnection& redis,
                                                                std::vector<std::string> keys,
                                                                std::vector<std::string> args);

 private:
  const std::string text_;
  std::mutex mu_;
  std::string sha_;  // empty until loaded
};

}  // namespace sproxy::upstream
