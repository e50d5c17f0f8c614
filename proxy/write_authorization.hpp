// What is checked before a write is forwarded to the upstream.
//
// Every write body, admins' too, must pass the model's parser (otherwise the parser's
// error, after the store and target checks the upstream would make first); such a write
// is never forwarded and invalidates nothing. For a client without `admin`, the target
// secret of a patch, delete or duplicate, and every id of a bulk delete, must also be
// visible to it (looked up through the cache; otherwise the lookup's answer, e.g. 404
// secret_not_found, is the answer), and scopes set by a create, patch or duplicate must be
// among its services (otherwise 403 10000). In fleet mode that lookup is preceded by one
// Redis read of the store's generation (cache::FleetSync::refresh_store), so a change made
// through another process is seen. Then ReadThroughCache::write forwards it.
// Every 404 about a secret, read or write, cached or not, hidden or missing, is the one
// body the cache writes for a hidden secret (cache::secret_not_found_body). Parsed bodies
// (which hold values) live only inside check_write_body. Pure; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/identity.hpp"
#include "upstream/model.hpp"

namespace sproxy::proxy {

// What the parser and the scope rule say about a write body, without keeping any value.
struct WriteBodyCheck {
  std::optional<upstream::ApiError> invalid;  // the parser's error
  bool scopes_allowed = true;                 // every scope set is within the identity's
  std::vector<std::string> names;  // create: the names in the body; duplicate: the new name
  std::vector<std::string> ids;    // bulk delete: the ids (unique)
};
// For create_store, create_secrets, patch_secret, duplicate and bulk_delete (other kinds:
// no check).
WriteBodyCheck check_write_body(upstream::RouteKind kind, std::string_view body,
                                const Identity& identity, std::size_t max_value_bytes);

}  // namespace sproxy::proxy
