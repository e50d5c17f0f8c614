#include "upstream/list_query.hpp"

#include <algorithm>
#include <cstdint>
#include <optional>

namespace sproxy::upstream {

namespace {

// page is capped so that (page - 1) * per_page can never overflow.
constexpr long kMaxPage = 1'000'000'000;

// A plain decimal integer in [min, max]: digits only, no sign, no spaces.
std::optional<long> parse_bounded(const std::string& s, long min, long max) {
  if (s.empty() || s.size() > 10) return std::nullopt;
  std::int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  if (v < min || v > max) return std::nullopt;
  return static_cast<long>(v);
}

struct Paging {
  long page = 1;
  long per_page = 20;
  SortDirection direction = SortDirection::asc;
  std::string order = "created";
};

Result<Paging> parse_paging(const QueryParams& q, std::initializer_list<std::string_view> orders) {
  Paging p;
  if (const std::string* v = q.find("page")) {
    auto page = parse_bounded(*v, 1, kMaxPage);
    if (!page) return errors::validation("invalid_page_parameter");
    p.page = *page;
  }
  if (const std::string* v = q.find("per_page")) {
    auto per_page = parse_bounded(*v, 1, kMaxPerPage);
    if (!per_page) return errors::validation("invalid_per_page_parameter");
    p.per_page = *per_page;
  }
  if (const std::string* v = q.find("order")) {
    if (std::find(orders.begin(), orders.end(), *v) == orders.end()) {
      return errors::validation("invalid_order_parameter");
    }
    p.order = *v;
  }
  if (const std::string* v = q.find("direction")) {
    if (*v == "asc") {
      p.direction = SortDirection::asc;
    } else if (*v == "desc") {
      p.direction = SortDirection::desc;
    } else {
      return errors::validation("invalid_direction_parameter");
    }
  }
  return p;
}

int compare_bytes(std::string_view a, std::string_view b) {
  // std::string_view::compare uses char_traits<char>, which compares as unsigned char.
  const int c = a.compare(b);
  return c < 0 ? -1 : (c > 0 ? 1 : 0);
}

int compare_times(Micros a, Micros b) { return a < b ? -1 : (a > b ? 1 : 0); }

// Primary key comparisons; 0 on a tie. The order name is resolved once per query, not
// once per comparison.
using StoreKeyCompare = int (*)(const Store&, const Store&);
using SecretKeyCompare = int (*)(const Secret&, const Secret&);

template <class T>
int by_name(const T& a, const T& b) {
  return compare_bytes(a.name, b.name);
}
template <class T>
int by_created(const T& a, const T& b) {
  return compare_times(a.created, b.created);
}
template <class T>
int by_modified(const T& a, const T& b) {
  return compare_times(a.modified, b.modified);
}
int by_comment(const Secret& a, const Secret& b) {
  return compare_bytes(a.comment ? std::string_view(*a.comment) : std::string_view{},
                       b.comment ? std::string_view(*b.comment) : std::string_view{});
}
int by_status(const Secret& a, const Secret& b) {
  return compare_bytes(to_string(a.status), to_string(b.status));
}

// An unknown order (only possible in a hand-built query) falls back to the default.
StoreKeyCompare store_key(std::string_view order) {
  if (order == "name") return by_name<Store>;
  if (order == "modified") return by_modified<Store>;
  return by_created<Store>;
}

SecretKeyCompare secret_key(std::string_view order) {
  if (order == "name") return by_name<Secret>;
  if (order == "comment") return by_comment;
  if (order == "status") return by_status;
  if (order == "modified") return by_modified<Secret>;
  return by_created<Secret>;
}

// Sorts by (key, id) ascending; `desc` is exactly that order reversed.
template <class T, class KeyCompare>
void sort_items(std::vector<const T*>& items, SortDirection direction, KeyCompare key) {
  const auto asc_less = [&](const T* a, const T* b) {
    const int c = key(*a, *b);
    if (c != 0) return c < 0;
    return compare_bytes(a->id, b->id) < 0;
  };
  if (direction == SortDirection::asc) {
    std::stable_sort(items.begin(), items.end(), asc_less);
  } else {
    std::stable_sort(items.begin(), items.end(),
                     [&](const T* a, const T* b) { return asc_less(b, a); });
  }
}

// Out-of-range values from a hand-built query are clamped to the contract's ranges.
template <class T>
Page<T> paginate(std::vector<const T*> sorted, long page, long per_page) {
  page = std::clamp(page, 1L, kMaxPage);
  per_page = std::clamp(per_page, 1L, kMaxPerPage);
  Page<T> out;
  const auto total = static_cast<std::int64_t>(sorted.size());
  const std::int64_t offset = static_cast<std::int64_t>(page - 1) * per_page;
  if (offset < total) {
    const std::int64_t end = std::min<std::int64_t>(total, offset + per_page);
    out.items.assign(sorted.begin() + offset, sorted.begin() + end);
  }
  out.info.page = page;
  out.info.per_page = per_page;
  out.info.count = static_cast<long>(out.items.size());
  out.info.total_count = static_cast<long>(total);
  out.info.total_pages = static_cast<long>((total + per_page - 1) / per_page);
  return out;
}

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string ascii_lowered(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

// `needle_lower` is already lowercased.
bool contains_ascii_ci(std::string_view haystack, std::string_view needle_lower) {
  if (needle_lower.size() > haystack.size()) return false;
  const auto it =
      std::search(haystack.begin(), haystack.end(), needle_lower.begin(), needle_lower.end(),
                  [](char h, char n) { return ascii_lower(h) == n; });
  return it != haystack.end();
}

}  // namespace

Result<StoreListQuery> parse_store_list_query(const QueryParams& q) {
  auto p = parse_paging(q, {"name", "created", "modified"});
  if (!p) return p.error();
  StoreListQuery out;
  out.page = p->page;
  out.per_page = p->per_page;
  out.order = std::move(p->order);
  out.direction = p->direction;
  return out;
}

Result<SecretListQuery> parse_secret_list_query(const QueryParams& q) {
  auto p = parse_paging(q, {"name", "comment", "created", "modified", "status"});
  if (!p) return p.error();
  SecretListQuery out;
  out.page = p->page;
  out.per_page = p->per_page;
  out.order = std::move(p->order);
  out.direction = p->direction;
  if (const std::string* search = q.find("search")) out.search = *search;
  out.scopes = q.all("scopes");
  for (const auto& s : out.scopes) {
    if (!is_known_scope(s)) return errors::validation("secret_scope_invalid");
  }
  sort_unique(out.scopes);
  return out;
}

Page<Store> query_stores(std::span<const Store> stores, const StoreListQuery& q) {
  std::vector<const Store*> items;
  items.reserve(stores.size());
  for (const Store& s : stores) items.push_back(&s);
  sort_items(items, q.direction, store_key(q.order));
  return paginate(std::move(items), q.page, q.per_page);
}

Page<Secret> query_secrets(std::span<const Secret> secrets, const SecretListQuery& q,
                           const SecretFilter& visible) {
  const std::string needle = ascii_lowered(q.search);
  std::vector<const Secret*> items;
  items.reserve(secrets.size());
  for (const Secret& s : secrets) {
    if (!needle.empty() && !contains_ascii_ci(s.name, needle) &&
        !(s.comment && contains_ascii_ci(*s.comment, needle))) {
      continue;
    }
    const bool has_all_scopes = std::all_of(q.scopes.begin(), q.scopes.end(), [&](const auto& sc) {
      return std::find(s.scopes.begin(), s.scopes.end(), sc) != s.scopes.end();
    });
    if (!has_all_scopes) continue;
    if (visible && !visible(s)) continue;
    items.push_back(&s);
  }
  sort_items(items, q.direction, secret_key(q.order));
  return paginate(std::move(items), q.page, q.per_page);
}

std::string list_envelope(const Page<Store>& page) {
  nlohmann::json items = nlohmann::json::array();
  for (const Store* s : page.items) items.push_back(to_json(*s));
  return envelope_success(items, page.info);
}

std::string list_envelope(const Page<Secret>& page) {
  nlohmann::json items = nlohmann::json::array();
  for (const Secret* s : page.items) items.push_back(to_json(*s));
  return envelope_success(items, page.info);
}

}  // namespace sproxy::upstream
