#include "upstream/redis_script.hpp"

namespace sproxy::upstream {

namespace {

bool is_noscript(const RedisReply& r) { return r.is_error() && r.text.rfind("NOSCRIPT", 0) == 0; }

}  // namespace

boost::asio::awaitable<boost::system::result<RedisReply>> RedisScript::run(
    RedisConnection& redis, std::vector<std::string> keys, std::vector<std::string> args) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::string sha;
    {
      std::lock_guard lock(mu_);
      sha = sha_;
    }
    if (sha.empty()) {
      // A named local, not a braced list inside co_await (GCC 12 cannot compile that).
      std::vector<std::string> load = {"SCRIPT", "LOAD", text_};
      auto loaded = co_await redis.command(std::move(load));
      if (!loaded) co_return loaded.error();
      if (loaded->type != RedisReply::Type::string) co_return *loaded;
      sha = loaded->text;
      std::lock_guard lock(mu_);
      sha_ = sha;
    }
    std::vector<std::string> command = {"EVALSHA", sha, std::to_string(keys.size())};
    command.insert(command.end(), keys.begin(), keys.end());
    command.insert(command.end(), args.begin(), args.end());
    auto reply = co_await redis.command(std::move(command));
    if (!reply || !is_noscript(*reply)) co_return reply;
    // The server lost its scripts (restarted or flushed): load again, once.
    std::lock_guard lock(mu_);
    sha_.clear();
  }
  co_return make_error_code(RedisErrc::protocol_error);
}

}  // namespace sproxy::upstream
