// The list query engine: parses list query parameters and answers a list query over
// an in-memory set of resources with exactly the contract's semantics (filter by
// search and scopes, sort by order/direction with ties broken by id, page, and
// compute result_info). The embedded store and the cache's whole-store snapshots both
// answer lists through this one engine, so their answers cannot drift apart.
//
// Pure functions over caller-owned data; thread-safe. Errors are the contract's
// 400 {1001 invalid_*_parameter} / secret_scope_invalid.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "upstream/model.hpp"
#include "upstream/route.hpp"

namespace sproxy::upstream {

enum class SortDirection { asc, desc };

struct StoreListQuery {
  long page = 1;
  long per_page = 20;
  std::string order = "created";  // name | created | modified
  SortDirection direction = SortDirection::asc;
};

struct SecretListQuery {
  long page = 1;
  long per_page = 20;
  std::string order = "created";  // name | comment | created | modified | status
  SortDirection direction = SortDirection::asc;
  std::string search;               // case-insensitive substring of name or comment
  std::vector<std::string> scopes;  // a secret must have every one of them
};

inline constexpr long kMaxPerPage = 100;

Result<StoreListQuery> parse_store_list_query(const QueryParams& q);
Result<SecretListQuery> parse_secret_list_query(const QueryParams& q);

template <class T>
struct Page {
  std::vector<const T*> items;  // point into the caller's data
  ResultInfo info;
};

// Extra filter applied before paging (e.g. a client's scope visibility); may be empty.
using SecretFilter = std::function<bool(const Secret&)>;

Page<Store> query_stores(std::span<const Store> stores, const StoreListQuery& q);
Page<Secret> query_secrets(std::span<const Secret> secrets, const SecretListQuery& q,
                           const SecretFilter& visible = {});

// The envelope of a list answer.
std::string list_envelope(const Page<Store>& page);
std::string list_envelope(const Page<Secret>& page);

}  // namespace sproxy::upstream
