#include "upstream/fleet_channel.hpp"

#include <charconv>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>

namespace sproxy::upstream {

namespace {

namespace asio = boost::asio;
using nlohmann::json;

// KEYS: the generations to bump. ARGV: channel, origin, publish time (microseconds, as a
// string: Lua numbers would round it), account, tags (a JSON array), then one label per
// key ("" for the account's own generation, else the store id).
// INCRs every key, PUBLISHes the message, returns {generations, message}.
constexpr std::string_view kPublishScript = R"lua(
local gens = {}
local out = {}
for i, key in ipairs(KEYS) do
  local g = redis.call('INCR', key)
  gens[ARGV[5 + i]] = g
  out[i] = g
end
local msg = cjson.encode({o = ARGV[2], t = ARGV[3], a = ARGV[4], g = gens,
                          tags = cjson.decode(ARGV[5])})
redis.call('PUBLISH', ARGV[1], msg)
return {out, msg}
)lua";

std::optional<std::int64_t> to_int64(std::string_view text) {
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

}  // namespace

std::string encode_invalidation(const FleetInvalidation& m) {
  json g = json::object();
  for (const auto& [label, gen] : m.generations) g[label] = gen;
  return json{{"o", m.origin},
              {"t", std::to_string(m.published_us)},
              {"a", m.account},
              {"tags", m.tags},
              {"g", g}}
      .dump();
}

std::optional<FleetInvalidation> decode_invalidation(std::string_view payload) {
  const json j = json::parse(payload, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  const auto o = j.find("o");
  const auto t = j.find("t");
  const auto a = j.find("a");
  const auto tags = j.find("tags");
  const auto g = j.find("g");
  if (o == j.end() || !o->is_string() || t == j.end() || !t->is_string() || a == j.end() ||
      !a->is_string() || tags == j.end() || g == j.end() || !g->is_object()) {
    return std::nullopt;
  }
  FleetInvalidation m;
  m.origin = o->get<std::string>();
  m.account = a->get<std::string>();
  const auto at = to_int64(t->get_ref<const std::string&>());
  if (!at) return std::nullopt;
  m.published_us = *at;
  // Lua's cjson writes an empty list as {}.
  if (tags->is_array()) {
    for (const auto& tag : *tags) {
      if (!tag.is_string()) return std::nullopt;
      m.tags.push_back(tag.get<std::string>());
    }
  } else if (!tags->is_object() || !tags->empty()) {
    return std::nullopt;
  }
  for (const auto& [label, gen] : g->items()) {
    if (!gen.is_number_integer()) return std::nullopt;
    m.generations[label] = gen.get<std::int64_t>();
  }
  return m;
}

std::string invalidation_channel(std::string_view prefix) {
  std::string out(prefix);
  out.append(":inval");
  return out;
}

std::string generation_key(std::string_view prefix, const GenerationKey& key) {
  // Built by appending (see budget_key_tag).
  std::string out;
  out.reserve(prefix.size() + key.account.size() + key.store.size() + 16);
  out.append("{").append(prefix).append(":acct:").append(key.account).append("}:gen");
  if (!key.store.empty()) out.append(":").append(key.store);
  return out;
}

std::string purge_generation_key(std::string_view prefix) {
  std::string out;
  out.append("{").append(prefix).append(":purge}:gen");
  return out;
}

FleetChannel::FleetChannel(std::shared_ptr<RedisConnection> redis, std::string prefix,
                           std::string origin)
    : redis_(std::move(redis)),
      prefix_(std::move(prefix)),
      origin_(std::move(origin)),
      channel_(invalidation_channel(prefix_)),
      publish_(kPublishScript) {
  if (!redis_) throw std::invalid_argument("fleet channel: no redis connection");
}

asio::awaitable<boost::system::result<FleetInvalidation>> FleetChannel::publish(
    std::string account, std::vector<std::string> stores, bool account_wide,
    std::vector<std::string> tags, std::int64_t published_us) {
  std::vector<std::string> keys;
  std::vector<std::string> labels;
  if (!account.empty()) {
    if (account_wide) {
      keys.push_back(generation_key(prefix_, {account, {}}));
      labels.emplace_back();
    }
    for (auto& store : stores) {
      keys.push_back(generation_key(prefix_, {account, store}));
      labels.push_back(std::move(store));
    }
  } else {
    keys.push_back(purge_generation_key(prefix_));
    labels.emplace_back();
  }
  std::vector<std::string> args = {channel_, origin_, std::to_string(published_us), account,
                                   json(tags).dump()};
  args.insert(args.end(), labels.begin(), labels.end());
  auto reply = co_await publish_.run(*redis_, std::move(keys), std::move(args));
  if (!reply) co_return reply.error();
  if (reply->type != RedisReply::Type::array || reply->elements.size() != 2) {
    co_return make_error_code(RedisErrc::protocol_error);
  }
  auto published = decode_invalidation(reply->elements[1].text);
  if (!published) co_return make_error_code(RedisErrc::protocol_error);
  co_return std::move(*published);
}

asio::awaitable<boost::system::result<std::vector<std::int64_t>>> FleetChannel::generations(
    std::vector<GenerationKey> keys) {
  std::vector<std::int64_t> out;
  out.reserve(keys.size());
  for (std::size_t first = 0; first < keys.size(); first += kGenerationBatch) {
    const std::size_t last = std::min(keys.size(), first + kGenerationBatch);
    std::vector<std::string> command = {"MGET"};
    for (std::size_t i = first; i < last; ++i) command.push_back(generation_key(prefix_, keys[i]));
    auto reply = co_await redis_->command(std::move(command));
    if (!reply) co_return reply.error();
    if (reply->type != RedisReply::Type::array || reply->elements.size() != last - first) {
      co_return make_error_code(RedisErrc::protocol_error);
    }
    for (const auto& e : reply->elements) {
      if (e.type == RedisReply::Type::nil) {
        out.push_back(0);
        continue;
      }
      const auto gen = to_int64(e.text);
      if (!gen) co_return make_error_code(RedisErrc::protocol_error);
      out.push_back(*gen);
    }
  }
  co_return out;
}

asio::awaitable<boost::system::result<std::int64_t>> FleetChannel::purge_generation() {
  std::vector<std::string> command = {"GET", purge_generation_key(prefix_)};
  auto reply = co_await redis_->command(std::move(command));
  if (!reply) co_return reply.error();
  if (reply->type == RedisReply::Type::nil) co_return std::int64_t{0};
  const auto gen = reply->type == RedisReply::Type::string ? to_int64(reply->text) : std::nullopt;
  if (!gen) co_return make_error_code(RedisErrc::protocol_error);
  co_return *gen;
}

}  // namespace sproxy::upstream
