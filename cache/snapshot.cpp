#include "cache/snapshot.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <unordered_set>

namespace sproxy::cache {

namespace {

using nlohmann::json;

// Bytes of a shared_ptr control block with its object in one allocation (make_shared),
// plus allocator bookkeeping.
constexpr std::size_t kAllocOverhead = 16;

template <class T, class Parse>
std::optional<ListPage<T>> parse_page(std::string_view body, Parse parse) {
  auto j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  auto success = j.find("success");
  if (success == j.end() || !success->is_boolean() || !success->get<bool>()) return std::nullopt;
  auto result = j.find("result");
  if (result == j.end() || !result->is_array()) return std::nullopt;
  ListPage<T> page;
  page.items.reserve(result->size());
  for (const auto& item : *result) {
    auto parsed = parse(item);
    if (!parsed) return std::nullopt;
    page.items.push_back(std::move(parsed).value());
  }
  auto info = j.find("result_info");
  if (info != j.end() && info->is_object()) {
    auto tp = info->find("total_pages");
    if (tp != info->end() && tp->is_number_integer()) page.total_pages = tp->get<long>();
  }
  return page;
}

// A resource listed twice (pages shifting under concurrent writes) is kept once, in its
// last copy: a later page reflects a later read.
template <class T>
void keep_last_of_each_id(std::vector<T>& items) {
  std::unordered_set<std::string_view> seen;
  seen.reserve(items.size());
  std::vector<bool> keep(items.size(), false);
  bool duplicates = false;
  for (std::size_t i = items.size(); i-- > 0;) {
    if (seen.insert(items[i].id).second) {
      keep[i] = true;
    } else {
      duplicates = true;
    }
  }
  if (!duplicates) return;
  std::vector<T> unique;
  unique.reserve(seen.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (keep[i]) unique.push_back(std::move(items[i]));
  }
  items = std::move(unique);
}

// "[a,b,...]" of the JSON texts json_of(0) ... json_of(n - 1), in one allocation.
template <class JsonOf>
std::string json_array_of(std::size_t n, JsonOf json_of) {
  std::size_t bytes = 2 + n;
  for (std::size_t i = 0; i < n; ++i) bytes += json_of(i).size();
  std::string out;
  out.reserve(bytes);
  out += '[';
  for (std::size_t i = 0; i < n; ++i) {
    if (i > 0) out += ',';
    out += json_of(i);
  }
  out += ']';
  return out;
}

}  // namespace

std::size_t heap_bytes(const std::string& s) noexcept {
  // libstdc++ keeps up to 15 chars inside the object.
  return s.capacity() > 15 ? s.capacity() + 1 + kAllocOverhead : 0;
}

std::size_t heap_bytes(const upstream::Secret& s) noexcept {
  std::size_t n = heap_bytes(s.id) + heap_bytes(s.store_id) + heap_bytes(s.name);
  if (s.comment) n += heap_bytes(*s.comment);
  n += s.scopes.capacity() * sizeof(std::string) + (s.scopes.empty() ? 0 : kAllocOverhead);
  for (const auto& sc : s.scopes) n += heap_bytes(sc);
  return n;
}

std::size_t heap_bytes(const upstream::Store& s) noexcept {
  return heap_bytes(s.id) + heap_bytes(s.account_id) + heap_bytes(s.name);
}

bool is_visible(const Viewer& viewer, const upstream::Secret& secret) noexcept {
  if (viewer.all) return true;
  for (const auto& scope : secret.scopes) {
    for (const auto& service : viewer.services) {
      if (scope == service) return true;
    }
  }
  return false;
}

bool is_visible_store(const Viewer& viewer, std::string_view store_id) noexcept {
  return viewer.stores.empty() ||
         std::binary_search(viewer.stores.begin(), viewer.stores.end(), store_id,
                            [](std::string_view a, std::string_view b) { return a < b; });
}

// ---------------------------------------------------------------------------------------

std::size_t StoredAnswer::byte_size() const noexcept {
  return sizeof(StoredAnswer) + kAllocOverhead + heap_bytes(body_);
}

SharedBytes StoredAnswer::share_body(const std::shared_ptr<const StoredAnswer>& self) {
  return SharedBytes(self, self->body_);
}

// ---------------------------------------------------------------------------------------

SecretsSnapshot::SecretsSnapshot(std::uint64_t seq, std::vector<upstream::Secret> secrets)
    : CachedValue(Type::secrets), seq_(seq), secrets_(std::move(secrets)) {
  keep_last_of_each_id(secrets_);
  secrets_.shrink_to_fit();
  // The shared store id, unless a secret comes without one (then an empty store id could
  // not tell "the shared one" from "none", so every secret keeps its own).
  const bool all_have_store_ids = std::none_of(secrets_.begin(), secrets_.end(),
                                               [](const auto& s) { return s.store_id.empty(); });
  if (all_have_store_ids && !secrets_.empty()) store_id_ = secrets_.front().store_id;

  envelope_ends_.reserve(secrets_.size());
  by_id_.reserve(secrets_.size());
  std::string item;
  for (std::size_t i = 0; i < secrets_.size(); ++i) {
    upstream::Secret& s = secrets_[i];
    item.clear();
    upstream::append_json(item, s);
    upstream::append_envelope_success_raw(envelopes_, item, std::nullopt);
    envelope_ends_.push_back(envelopes_.size());
    by_id_.push_back(static_cast<std::uint32_t>(i));
    if (!store_id_.empty() && s.store_id == store_id_) {
      s.store_id.clear();
      s.store_id.shrink_to_fit();  // back inside the object: its heap block is freed
    }
  }
  envelopes_.shrink_to_fit();
  std::sort(by_id_.begin(), by_id_.end(),
            [this](std::uint32_t a, std::uint32_t b) { return secrets_[a].id < secrets_[b].id; });

  bytes_ = sizeof(SecretsSnapshot) + kAllocOverhead + heap_bytes(store_id_);
  bytes_ += secrets_.capacity() * sizeof(upstream::Secret) + kAllocOverhead;
  bytes_ += heap_bytes(envelopes_);
  bytes_ += envelope_ends_.capacity() * sizeof(std::size_t) + kAllocOverhead;
  bytes_ += by_id_.capacity() * sizeof(std::uint32_t) + kAllocOverhead;
  for (const auto& s : secrets_) bytes_ += heap_bytes(s);
}

std::optional<std::size_t> SecretsSnapshot::find(std::string_view id) const noexcept {
  auto it = std::lower_bound(by_id_.begin(), by_id_.end(), id,
                             [this](std::uint32_t i, std::string_view key) {
                               return std::string_view(secrets_[i].id) < key;
                             });
  if (it == by_id_.end() || secrets_[*it].id != id) return std::nullopt;
  return *it;
}

upstream::Secret SecretsSnapshot::secret(std::size_t index) const {
  upstream::Secret s = secrets_[index];
  if (s.store_id.empty()) s.store_id = store_id_;
  return s;
}

bool SecretsSnapshot::visible_to(const Viewer& viewer, std::size_t index) const noexcept {
  return is_visible(viewer, secrets_[index]);
}

std::string_view SecretsSnapshot::envelope(std::size_t index) const noexcept {
  const std::size_t begin = index == 0 ? 0 : envelope_ends_[index - 1];
  return std::string_view(envelopes_).substr(begin, envelope_ends_[index] - begin);
}

std::string_view SecretsSnapshot::secret_json(std::size_t index) const noexcept {
  // A success envelope without result_info: the head, the result, then '}'.
  const std::string_view e = envelope(index);
  const std::size_t head = upstream::kEnvelopeSuccessHead.size();
  return e.substr(head, e.size() - head - 1);
}

std::string SecretsSnapshot::json_array() const {
  return json_array_of(secrets_.size(), [this](std::size_t i) { return secret_json(i); });
}

SharedBytes SecretsSnapshot::share_envelope(const std::shared_ptr<const SecretsSnapshot>& self,
                                            std::size_t index) {
  return SharedBytes(self, self->envelope(index));
}

std::string SecretsSnapshot::list(const upstream::SecretListQuery& q, const Viewer& viewer) const {
  upstream::Page<upstream::Secret> page;
  if (viewer.all) {
    page = upstream::query_secrets(secrets_, q);
  } else {
    const Viewer* v = &viewer;
    page = upstream::query_secrets(secrets_, q,
                                   [v](const upstream::Secret& s) { return is_visible(*v, s); });
  }
  // The page's items are this snapshot's secrets: their JSON is already in the envelopes
  // (store ids included), byte for byte what serializing them again would give.
  const std::string items = json_array_of(page.items.size(), [&](std::size_t i) {
    return secret_json(static_cast<std::size_t>(page.items[i] - secrets_.data()));
  });
  return upstream::envelope_success_raw(items, page.info);
}

bool SecretsSnapshot::claim_memo_slot() const noexcept {
  return memos_.fetch_add(1, std::memory_order_relaxed) < kMaxMemosPerSnapshot;
}

// ---------------------------------------------------------------------------------------

StoresSnapshot::StoresSnapshot(std::uint64_t seq, std::vector<upstream::Store> stores)
    : CachedValue(Type::stores), seq_(seq), stores_(std::move(stores)) {
  keep_last_of_each_id(stores_);
  stores_.shrink_to_fit();
  bytes_ = sizeof(StoresSnapshot) + kAllocOverhead;
  bytes_ += stores_.capacity() * sizeof(upstream::Store) + kAllocOverhead;
  for (const auto& s : stores_) bytes_ += heap_bytes(s);
}

std::string StoresSnapshot::list(const upstream::StoreListQuery& q, const Viewer& viewer) const {
  if (viewer.stores.empty()) return upstream::list_envelope(upstream::query_stores(stores_, q));
  // A store-limited viewer lists a handful of stores: page over a copy of just those.
  std::vector<upstream::Store> visible;
  for (const auto& s : stores_) {
    if (is_visible_store(viewer, s.id)) visible.push_back(s);
  }
  return upstream::list_envelope(upstream::query_stores(visible, q));
}

bool StoresSnapshot::claim_memo_slot() const noexcept {
  return memos_.fetch_add(1, std::memory_order_relaxed) < kMaxMemosPerSnapshot;
}

// ---------------------------------------------------------------------------------------

std::optional<ListPage<upstream::Secret>> parse_secrets_page(std::string_view body) {
  return parse_page<upstream::Secret>(body,
                                      [](const json& j) { return upstream::secret_from_json(j); });
}

std::optional<ListPage<upstream::Store>> parse_stores_page(std::string_view body) {
  return parse_page<upstream::Store>(body,
                                     [](const json& j) { return upstream::store_from_json(j); });
}

const SharedBytes& secret_not_found_body() {
  static const SharedBytes body(upstream::envelope_error(upstream::errors::secret_not_found()));
  return body;
}

}  // namespace sproxy::cache
