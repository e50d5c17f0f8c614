// Write-through: what a write's answer says it changed, and the same change applied to
// cached values, so a write costs one upstream call even when its effects are read back.
//
// Every function here is pure (values in, values out, no clocks, no I/O). A merge that
// cannot be sure of its result says so (Merge::doubt) and the cache then invalidates, as
// it would without write-through: an extra upstream call is acceptable, a wrong answer is
// not. Ordering rules (a write's answer may arrive after a later write's):
// - a secret or store from an answer replaces the cached one only when its `modified` is
//   newer; an equal `modified` with different content is a doubt;
// - a patch of a secret the cached list does not hold is a doubt (it may have been
//   deleted since, or the list may predate it);
// - deletes are applied whatever the order (ids are never reused).
// Secret values: none of these answers holds one; a bulk delete's request body holds ids.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "upstream/model.hpp"
#include "upstream/route.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::cache {
class SecretsSnapshot;  // cache/snapshot.hpp
}

namespace sproxy::cache::policy {

// What one successful write changed.
struct WriteEffect {
  std::vector<upstream::Secret> secrets;  // created, duplicated or patched, as answered
  std::vector<std::string> deleted_ids;   // deleted secrets (delete, bulk delete)
  std::optional<upstream::Store> store;   // the created store
  // The change of the account's quota usage; nullopt when the write does not say it
  // (a forced store delete: the cache counts the store's secrets itself).
  std::optional<long> usage_delta = 0;
};

// The effect of a write of `route` that was answered `response` (a 2xx API answer).
// `request_body` is read only for a bulk delete (its ids). nullopt when the answer does
// not say exactly what changed (the caller invalidates).
std::optional<WriteEffect> effect_of_write(const upstream::Route& route,
                                           std::string_view request_body,
                                           const upstream::ApiResponse& response);

enum class Merge { changed, unchanged, doubt };

// Applies a secret write (create, duplicate, patch, delete, bulk delete) to every secret
// of store `store_id`, in place.
Merge merge_secrets(std::vector<upstream::Secret>& secrets, upstream::RouteKind kind,
                    std::string_view store_id, const WriteEffect& effect);

// The same over a cached store's snapshot: its secrets, merged, into `out`.
Merge merge_secrets(const SecretsSnapshot& snap, upstream::RouteKind kind,
                    std::string_view store_id, const WriteEffect& effect,
                    std::vector<upstream::Secret>& out);

// Applies a store create (`effect.store`) or the delete of `deleted_store_id` to every
// store of an account, in place.
Merge merge_stores(std::vector<upstream::Store>& stores, upstream::RouteKind kind,
                   std::string_view deleted_store_id, const WriteEffect& effect);

// Statuses as the upstream gives them at `now`: a `pending` secret whose `modified` is
// at least `activation_delay` ago is `active` (with no delay, every one is). Returns
// when the first still-pending one turns (nullopt: none pending, or the delay is unknown
// and they stay as answered).
std::optional<upstream::Micros> settle_pending(std::vector<upstream::Secret>& secrets,
                                               std::optional<upstream::Micros> activation_delay,
                                               upstream::Micros now);

// A quota answer's body with its usage changed by `delta`; nullopt when `body` is not a
// quota success envelope or the usage would fall below zero.
std::optional<std::string> quota_with_usage(std::string_view body, long delta);

}  // namespace sproxy::cache::policy
