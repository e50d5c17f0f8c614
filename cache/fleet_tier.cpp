#include "cache/fleet_tier.hpp"

#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <stdexcept>
#include <vector>

#include "cache/cache_core.hpp"
#include "cache/fleet_sync.hpp"
#include "cache/persist.hpp"
#include "cache/snapshot.hpp"
#include "upstream/crypto.hpp"
#include "upstream/fleet_channel.hpp"

namespace sproxy::cache {

namespace asio = boost::asio;
using upstream::RedisReply;

namespace {

// KEYS: entry, generation, lock. ARGV: lock token, lock ttl (ms), least fresh_until.
// Returns {generation, entry or "", 1 when the lock was taken here else 0}.
constexpr std::string_view kClaimScript = R"lua(
local g = redis.call('GET', KEYS[2]) or '0'
local e = redis.call('GET', KEYS[1])
if e then
  local a = string.find(e, ':', 1, true)
  local b = a and string.find(e, ':', a + 1, true)
  if b and string.sub(e, 1, a - 1) == g and
     (tonumber(string.sub(e, a + 1, b - 1)) or 0) > tonumber(ARGV[3]) then
    return {g, e, 0}
  end
end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return {g, '', 1} end
return {g, '', 0}
)lua";

// KEYS: entry, generation, lock. ARGV: generation read by the claim, entry ('' for
// none), its ttl (ms), lock token ('' for none). Stores the entry only while the
// generation is unchanged; releases the lock only if the token still holds it.
constexpr std::string_view kShareScript = R"lua(
local stored = 0
if ARGV[2] ~= '' and (redis.call('GET', KEYS[2]) or '0') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  stored = 1
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
return stored
)lua";

std::string account_slot(std::string_view prefix, std::string_view account) {
  std::string out;
  out.append("{").append(prefix).append(":acct:").append(account).append("}");
  return out;
}

// `s` with the glob characters of MATCH escaped.
std::string glob_escaped(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// What the entry's clear part and the sealed part are bound to.
std::string aad_of(const std::string& redis_key, std::string_view generation,
                   std::string_view fresh_until) {
  std::string out = redis_key;
  out.append("|").append(generation).append("|").append(fresh_until);
  return out;
}

std::optional<Micros> parse_micros(std::string_view s) {
  Micros v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

FleetTier::FleetTier(std::shared_ptr<upstream::RedisConnection> redis, FleetTierOptions options)
    : redis_(std::move(redis)),
      options_(std::move(options)),
      claim_script_(kClaimScript),
      share_script_(kShareScript) {
  if (!redis_ || options_.seal_key.size() != upstream::kAesKeyBytes || !options_.wall_clock) {
    throw std::invalid_argument("fleet cache: needs a connection, a 32-byte key and a clock");
  }
}

bool FleetTier::open_entry(Claim& c, const std::string& blob, const std::string& key,
                           const std::function<std::uint64_t()>& next_seq) {
  const auto a = blob.find(':');
  const auto b = a == std::string::npos ? a : blob.find(':', a + 1);
  if (b == std::string::npos) return false;
  const std::string_view generation(blob.data(), a);
  const std::string_view fresh(blob.data() + a + 1, b - a - 1);
  const auto plain = upstream::aes_gcm_open(options_.seal_key, std::string_view(blob).substr(b + 1),
                                            aad_of(c.entry_key, generation, fresh));
  if (!plain) return false;
  auto decoded = decode_records(*plain, next_seq());
  if (!decoded || decoded->records.size() != 1 || decoded->records[0].key != key) return false;
  const CacheRecord& r = decoded->records[0];
  if (parse_micros(fresh) != r.meta.fresh_until) return false;
  c.value = r.value;
  if (r.value->type() == CachedValue::Type::answer) {
    // Numbered as arriving now, like a snapshot: when another process fetched it, relative
    // to this process's writes, is unknown (a write in flight then doubts it).
    const auto& a = static_cast<const StoredAnswer&>(*r.value);
    c.value = std::make_shared<const StoredAnswer>(a.status(), a.body(), next_seq());
  }
  c.meta = r.meta;
  return true;
}

asio::awaitable<FleetTier::Claim> FleetTier::claim(std::string key, std::string tag,
                                                   Micros min_fresh_until,
                                                   std::function<std::uint64_t()> next_seq) {
  Claim c;
  const auto gen = generation_of_tag(tag);
  if (!gen) co_return c;
  const std::string slot = account_slot(options_.key_prefix, gen->account);
  c.entry_key = slot + ":l2:" + key;
  c.lock_key = slot + ":fill:" + key;
  c.generation_key = upstream::generation_key(options_.key_prefix, *gen);
  const std::string token =
      options_.origin + ":" + std::to_string(next_token_.fetch_add(1, std::memory_order_relaxed));

  const auto deadline = std::chrono::steady_clock::now() + options_.max_wait;
  auto delay = options_.poll_min;
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (bool waited = false;; waited = true) {
    // Named locals, not braced lists inside co_await (GCC 12 cannot compile those).
    std::vector<std::string> keys = {c.entry_key, c.generation_key, c.lock_key};
    std::vector<std::string> args = {token, std::to_string(options_.lock_ttl.count()),
                                     std::to_string(min_fresh_until)};
    auto reply = co_await claim_script_.run(*redis_, std::move(keys), std::move(args));
    if (!reply || reply->type != RedisReply::Type::array || reply->elements.size() != 3) {
      counters_.errors.fetch_add(1, std::memory_order_relaxed);
      c.generation.clear();
      co_return c;
    }
    c.generation = reply->elements[0].text;
    const std::string& blob = reply->elements[1].text;
    if (!blob.empty()) {
      if (open_entry(c, blob, key, next_seq)) {
        c.kind = Claim::Kind::found;
        (waited ? counters_.hits_waited : counters_.hits).fetch_add(1, std::memory_order_relaxed);
        co_return c;
      }
      // Not ours to read: fetch, and let share() overwrite it.
      counters_.undecodable.fetch_add(1, std::memory_order_relaxed);
      co_return c;
    }
    if (reply->elements[2].integer == 1) {
      c.kind = Claim::Kind::lead;
      c.lock_token = token;
      counters_.misses.fetch_add(1, std::memory_order_relaxed);
      co_return c;
    }
    // Another process is filling: wait for its entry, within max_wait.
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      counters_.waited_out.fetch_add(1, std::memory_order_relaxed);
      co_return c;
    }
    timer.expires_after(std::min<std::chrono::steady_clock::duration>(delay, deadline - now));
    co_await timer.async_wait(asio::use_awaitable);
    delay = std::min(delay * 2, options_.poll_max);
  }
}

asio::awaitable<void> FleetTier::share(Claim claim, std::shared_ptr<const CachedValue> value,
                                       EntryMeta meta, std::string key, std::string tag) {
  if (claim.entry_key.empty() || claim.generation.empty()) co_return;
  std::string entry;
  std::string ttl_ms = "0";
  const Micros remaining = value ? meta.fresh_until - options_.wall_clock() : 0;
  if (value && remaining >= 1000) {
    ttl_ms = std::to_string(remaining / 1000);
    const std::string fresh = std::to_string(meta.fresh_until);
    std::vector<CacheRecord> records;
    records.push_back(CacheRecord{std::move(key), std::move(tag), meta, std::move(value)});
    const std::string plain = encode_records(records, options_.wall_clock());
    entry = claim.generation + ":" + fresh + ":" +
            upstream::aes_gcm_seal(options_.seal_key, plain,
                                   aad_of(claim.entry_key, claim.generation, fresh));
  }
  if (entry.empty() && claim.lock_token.empty()) co_return;
  std::vector<std::string> keys = {claim.entry_key, claim.generation_key, claim.lock_key};
  std::vector<std::string> args = {claim.generation, std::move(entry), std::move(ttl_ms),
                                   claim.lock_token};
  auto reply = co_await share_script_.run(*redis_, std::move(keys), std::move(args));
  if (!reply || reply->is_error()) {
    counters_.store_errors.fetch_add(1, std::memory_order_relaxed);
  } else if (reply->integer == 1) {
    counters_.stored.fetch_add(1, std::memory_order_relaxed);
  }
}

asio::awaitable<bool> FleetTier::purge_matching(std::string pattern) {
  // Bounded: a keyspace of a billion keys takes at most this many rounds of 1,000.
  constexpr int kMaxRounds = 1'000'000;
  std::string cursor = "0";
  for (int round = 0; round < kMaxRounds; ++round) {
    std::vector<std::string> scan = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"};
    auto reply = co_await redis_->command(std::move(scan));
    if (!reply || reply->type != RedisReply::Type::array || reply->elements.size() != 2) {
      co_return false;
    }
    cursor = reply->elements[0].text;
    std::vector<std::string> unlink = {"UNLINK"};
    for (const auto& k : reply->elements[1].elements) unlink.push_back(k.text);
    if (unlink.size() > 1) {
      auto done = co_await redis_->command(std::move(unlink));
      if (!done || done->is_error()) co_return false;
    }
    if (cursor == "0") co_return true;
  }
  co_return false;
}

asio::awaitable<bool> FleetTier::purge(std::string account, std::string store) {
  counters_.purges.fetch_add(1, std::memory_order_relaxed);
  const std::string prefix = glob_escaped(options_.key_prefix);
  const std::string slot = account_slot(options_.key_prefix, account);
  if (account.empty() || store.empty()) {
    std::string pattern =
        account.empty() ? "{" + prefix + ":acct:*}:l2:*" : glob_escaped(slot) + ":l2:*";
    co_return co_await purge_matching(std::move(pattern));
  }
  std::vector<std::string> del = {"UNLINK"};
  for (const auto view : {policy::View::store, policy::View::secrets}) {
    del.push_back(slot + ":l2:" + policy::entry_key(view, account, store));
  }
  auto reply = co_await redis_->command(std::move(del));
  co_return reply && !reply->is_error();
}

void ReadThroughCache::share_fills(std::shared_ptr<FleetTier> tier) {
  impl_->tier = std::move(tier);
}

asio::awaitable<bool> ReadThroughCache::purge_shared(std::string account_id, std::string store_id) {
  const std::shared_ptr<FleetTier> tier = impl_->tier;
  if (!tier) co_return true;
  co_return co_await tier->purge(std::move(account_id), std::move(store_id));
}

FleetTierStats FleetTier::stats() const {
  FleetTierStats s;
  s.hits_waited = counters_.hits_waited.load(std::memory_order_relaxed);
  s.hits = counters_.hits.load(std::memory_order_relaxed) + s.hits_waited;
  s.misses = counters_.misses.load(std::memory_order_relaxed);
  s.waited_out = counters_.waited_out.load(std::memory_order_relaxed);
  s.errors = counters_.errors.load(std::memory_order_relaxed);
  s.undecodable = counters_.undecodable.load(std::memory_order_relaxed);
  s.stored = counters_.stored.load(std::memory_order_relaxed);
  s.store_errors = counters_.store_errors.load(std::memory_order_relaxed);
  s.purges = counters_.purges.load(std::memory_order_relaxed);
  return s;
}

}  // namespace sproxy::cache
