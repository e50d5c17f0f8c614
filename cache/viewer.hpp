// Viewer: what one caller may see of the cached data, and the two visibility rules.
//
// Secrets: a viewer with `all` sees every secret; otherwise a secret is visible when its
// scopes include at least one of `services` (sorted, unique). Stores: a stores list shows
// only the stores in `stores` (sorted, unique), or every store when it is empty
// (independent of `all`: a store limit binds admins too).
//
// Plain values; the functions are pure, allocate nothing and are safe on any thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "upstream/model.hpp"

namespace sproxy::cache {

struct Viewer {
  bool all = true;
  std::vector<std::string> services;
  std::vector<std::string> stores;
};

// True when `viewer` may see `secret` (the rule above).
bool is_visible(const Viewer& viewer, const upstream::Secret& secret) noexcept;
// True when `viewer` may see the store with this id in a stores list.
bool is_visible_store(const Viewer& viewer, std::string_view store_id) noexcept;

}  // namespace sproxy::cache
