#include "cache/write_effect.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <unordered_set>

#include "cache/snapshot.hpp"

namespace sproxy::cache::policy {

namespace {

using nlohmann::json;
using upstream::RouteKind;

// The `result` of a success envelope; nullopt when `body` is not one.
std::optional<json> result_of(std::string_view body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  auto success = j.find("success");
  if (success == j.end() || !success->is_boolean() || !success->get<bool>()) return std::nullopt;
  auto result = j.find("result");
  if (result == j.end()) return std::nullopt;
  return std::move(*result);
}

std::optional<std::vector<upstream::Secret>> secrets_of(const json& result) {
  std::vector<upstream::Secret> out;
  if (result.is_array()) {
    out.reserve(result.size());
    for (const auto& item : result) {
      auto secret = upstream::secret_from_json(item);
      if (!secret) return std::nullopt;
      out.push_back(std::move(*secret));
    }
    return out;
  }
  auto secret = upstream::secret_from_json(result);
  if (!secret) return std::nullopt;
  out.push_back(std::move(*secret));
  return out;
}

// The ids a bulk delete names, in order; nullopt for a body that is not
// {"ids": [string, ...]} (the upstream accepted it, so this cache does not understand it).
// `repeated`: an id appears more than once.
std::optional<std::vector<std::string>> bulk_ids(std::string_view body, bool& repeated) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  auto ids = j.find("ids");
  if (ids == j.end() || !ids->is_array() || ids->empty()) return std::nullopt;
  std::vector<std::string> out;
  std::unordered_set<std::string> seen;
  for (const auto& id : *ids) {
    if (!id.is_string()) return std::nullopt;
    if (seen.insert(id.get<std::string>()).second) {
      out.push_back(id.get<std::string>());
    } else {
      repeated = true;
    }
  }
  return out;
}

// How a resource from a write's answer relates to the cached one with the same id.
template <class T>
Merge compare(const T& cached, const T& answered) {
  if (answered.modified > cached.modified) return Merge::changed;
  if (answered.modified < cached.modified) return Merge::unchanged;  // cached is newer
  return answered == cached ? Merge::unchanged : Merge::doubt;
}

}  // namespace

std::optional<WriteEffect> effect_of_write(const upstream::Route& route,
                                           std::string_view request_body,
                                           const upstream::ApiResponse& response) {
  if (response.status < 200 || response.status >= 300) return std::nullopt;
  auto result = result_of(response.body);
  if (!result) return std::nullopt;
  WriteEffect e;
  switch (route.kind) {
    case RouteKind::create_secrets:
    case RouteKind::duplicate:
    case RouteKind::patch_secret: {
      // create answers an array, duplicate and patch one secret.
      if (result->is_array() != (route.kind == RouteKind::create_secrets)) return std::nullopt;
      auto secrets = secrets_of(*result);
      if (!secrets) return std::nullopt;
      e.secrets = std::move(*secrets);
      if (route.kind == RouteKind::patch_secret &&
          (e.secrets.size() != 1 || e.secrets[0].id != route.secret_id)) {
        return std::nullopt;
      }
      e.usage_delta =
          route.kind == RouteKind::patch_secret ? 0 : static_cast<long>(e.secrets.size());
      return e;
    }
    case RouteKind::delete_secret:
      e.deleted_ids.push_back(route.secret_id);
      e.usage_delta = -1;
      return e;
    case RouteKind::bulk_delete: {
      bool repeated = false;
      auto ids = bulk_ids(request_body, repeated);
      if (!ids) return std::nullopt;
      e.deleted_ids = std::move(*ids);
      // How a repeated id counts is the upstream's business: the cache does not guess.
      e.usage_delta =
          repeated ? std::nullopt : std::optional<long>(-static_cast<long>(e.deleted_ids.size()));
      return e;
    }
    case RouteKind::create_store: {
      auto store = upstream::store_from_json(*result);
      if (!store || store->account_id != route.account_id) return std::nullopt;
      e.store = std::move(*store);
      return e;
    }
    case RouteKind::delete_store:
      // Without force only an empty store is deleted; with it, its secrets go too.
      if (route.query.find("force") != nullptr) e.usage_delta = std::nullopt;
      return e;
    default:
      return std::nullopt;
  }
}

Merge merge_secrets(std::vector<upstream::Secret>& secrets, RouteKind kind,
                    std::string_view store_id, const WriteEffect& effect) {
  std::unordered_map<std::string_view, std::size_t> index;
  index.reserve(secrets.size());
  for (std::size_t i = 0; i < secrets.size(); ++i) index.emplace(secrets[i].id, i);
  bool changed = false;
  std::vector<upstream::Secret> added;
  for (const auto& s : effect.secrets) {
    if (s.store_id != store_id) return Merge::doubt;
    auto it = index.find(s.id);
    if (it == index.end()) {
      // A patched secret the list does not hold: deleted since, or the list predates it.
      if (kind == RouteKind::patch_secret) return Merge::doubt;
      added.push_back(s);
      continue;
    }
    switch (compare(secrets[it->second], s)) {
      case Merge::changed:
        secrets[it->second] = s;
        changed = true;
        break;
      case Merge::unchanged:
        break;
      case Merge::doubt:
        return Merge::doubt;
    }
  }
  if (!effect.deleted_ids.empty()) {
    const std::unordered_set<std::string_view> gone(effect.deleted_ids.begin(),
                                                    effect.deleted_ids.end());
    const auto before = secrets.size();
    std::erase_if(secrets, [&](const upstream::Secret& s) { return gone.contains(s.id); });
    changed = changed || secrets.size() != before;
  }
  for (auto& s : added) secrets.push_back(std::move(s));
  changed = changed || !added.empty();
  return changed ? Merge::changed : Merge::unchanged;
}

Merge merge_secrets(const SecretsSnapshot& snap, RouteKind kind, std::string_view store_id,
                    const WriteEffect& effect, std::vector<upstream::Secret>& out) {
  out.clear();
  out.reserve(snap.size() + effect.secrets.size());
  for (std::size_t i = 0; i < snap.size(); ++i) out.push_back(snap.secret(i));
  return merge_secrets(out, kind, store_id, effect);
}

Merge merge_stores(std::vector<upstream::Store>& stores, RouteKind kind,
                   std::string_view deleted_store_id, const WriteEffect& effect) {
  if (kind == RouteKind::delete_store) {
    const auto before = stores.size();
    std::erase_if(stores, [&](const upstream::Store& s) { return s.id == deleted_store_id; });
    return stores.size() != before ? Merge::changed : Merge::unchanged;
  }
  if (kind != RouteKind::create_store || !effect.store) return Merge::doubt;
  auto it = std::find_if(stores.begin(), stores.end(),
                         [&](const upstream::Store& s) { return s.id == effect.store->id; });
  if (it == stores.end()) {
    stores.push_back(*effect.store);
    return Merge::changed;
  }
  const Merge m = compare(*it, *effect.store);
  if (m == Merge::changed) *it = *effect.store;
  return m;
}

std::optional<upstream::Micros> settle_pending(std::vector<upstream::Secret>& secrets,
                                               std::optional<upstream::Micros> activation_delay,
                                               upstream::Micros now) {
  if (!activation_delay) return std::nullopt;
  std::optional<upstream::Micros> first_turn;
  for (auto& s : secrets) {
    if (s.status != upstream::SecretStatus::pending) continue;
    const upstream::Micros turns = s.modified + *activation_delay;
    if (*activation_delay <= 0 || turns <= now) {
      s.status = upstream::SecretStatus::active;
    } else if (!first_turn || turns < *first_turn) {
      first_turn = turns;
    }
  }
  return first_turn;
}

std::optional<std::string> quota_with_usage(std::string_view body, long delta) {
  auto result = result_of(body);
  if (!result) return std::nullopt;
  auto quota = upstream::quota_from_json(*result);
  if (!quota) return std::nullopt;
  quota->usage += delta;
  if (quota->usage < 0) return std::nullopt;
  return upstream::envelope_success(upstream::to_json(*quota));
}

}  // namespace sproxy::cache::policy
