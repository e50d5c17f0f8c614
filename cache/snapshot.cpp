#include "cache/snapshot.hpp"

#include <algorithm>
#include <limits>
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

namespace {

// Reads a page of secrets straight from the parser's events into `Secret`s, without a
// JSON tree (a miss of a 100-secret store spent most of its time building and freeing
// one). It accepts only what the tree parse accepts with certainty: a success envelope
// whose result is an array of complete, well-typed secrets, each member at most once.
// Anything else (a wrong type, a missing field, a repeated member) stops it, and the
// tree parse gives the answer, so both always agree.
class SecretsPageReader {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  ListPage<upstream::Secret>& page() { return page_; }
  bool complete() const {
    return at_ == At::end && success_ &&
           (top_seen_ & (1U << static_cast<unsigned>(TopKey::result))) != 0;
  }

  bool null() { return scalar(Kind::null); }
  bool boolean(bool v) {
    if (skip_ == 0 && at_ == At::top_value && top_key_ == TopKey::success) {
      success_ = v;
      at_ = At::top;
      return true;
    }
    return scalar(Kind::other);
  }
  bool number_integer(number_integer_t v) { return integer(static_cast<long>(v), true); }
  bool number_unsigned(number_unsigned_t v) {
    const bool fits = v <= static_cast<number_unsigned_t>(std::numeric_limits<long>::max());
    return integer(fits ? static_cast<long>(v) : 0, fits);
  }
  bool number_float(number_float_t, const string_t&) { return scalar(Kind::other); }
  bool binary(binary_t&) { return false; }
  // Strings are copied, not moved out of the parser's token buffer: a moved string would
  // keep that buffer's capacity (grown by the longest token so far) for as long as the
  // snapshot lives.
  bool string(string_t& v) {
    if (skip_ > 0) return true;
    switch (at_) {
      case At::secret_value:
        return secret_string(v);
      case At::scopes:
        secret_.scopes.push_back(v);
        return true;
      default:
        return scalar(Kind::other);
    }
  }

  bool start_object(std::size_t) {
    if (skip_ > 0) return ++skip_, true;
    switch (at_) {
      case At::start:
        at_ = At::top;
        return true;
      case At::top_value:
        if (top_key_ == TopKey::result_info) {
          at_ = At::info;
          return true;
        }
        if (top_key_ != TopKey::other) return false;
        return skip_value();
      case At::result:
        secret_ = upstream::Secret{};
        seen_ = 0;
        at_ = At::secret;
        return true;
      case At::info_value:
        return skip_value();  // a total_pages that is not an integer is ignored
      case At::secret_value:
        if (field_ != Field::other) return false;
        return skip_value();
      default:
        return false;
    }
  }
  bool key(string_t& k) {
    if (skip_ > 0) return true;
    switch (at_) {
      case At::top:
        top_key_ = k == "success"       ? TopKey::success
                   : k == "result"      ? TopKey::result
                   : k == "result_info" ? TopKey::result_info
                                        : TopKey::other;
        if (top_key_ != TopKey::other && !first_time(top_seen_, static_cast<unsigned>(top_key_))) {
          return false;
        }
        at_ = At::top_value;
        return true;
      case At::info:
        field_ = k == "total_pages" ? Field::total_pages : Field::other;
        if (field_ == Field::total_pages && !first_time(info_seen_, 0)) return false;
        at_ = At::info_value;
        return true;
      case At::secret:
        field_ = secret_field(k);
        if (field_ != Field::other && !first_time(seen_, static_cast<unsigned>(field_))) {
          return false;
        }
        at_ = At::secret_value;
        return true;
      default:
        return false;
    }
  }
  bool end_object() {
    if (skip_ > 0) return end_skipped();
    switch (at_) {
      case At::top:
        at_ = At::end;
        return true;
      case At::info:
        at_ = At::top;
        return true;
      case At::secret:
        if (!finish_secret()) return false;
        at_ = At::result;
        return true;
      default:
        return false;
    }
  }
  bool start_array(std::size_t) {
    if (skip_ > 0) return ++skip_, true;
    switch (at_) {
      case At::top_value:
        if (top_key_ == TopKey::result) {
          at_ = At::result;
          return true;
        }
        if (top_key_ == TopKey::success) return false;
        return skip_value();
      case At::info_value:
        return skip_value();
      case At::secret_value:
        if (field_ == Field::scopes) {
          at_ = At::scopes;
          return true;
        }
        if (field_ != Field::other) return false;
        return skip_value();
      default:
        return false;
    }
  }
  bool end_array() {
    if (skip_ > 0) return end_skipped();
    switch (at_) {
      case At::result:
        at_ = At::top;
        return true;
      case At::scopes:
        at_ = At::secret;
        return true;
      default:
        return false;
    }
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) {
    return false;
  }

 private:
  // Where the next event belongs: *_value states expect the value of the key just read.
  enum class At { start, top, top_value, result, secret, secret_value, scopes, info, info_value, end };
  enum class TopKey : unsigned { success, result, result_info, other };
  enum class Field : unsigned {
    id, store_id, name, status, created, modified, comment, scopes, total_pages, other
  };
  enum class Kind { null, other };

  static Field secret_field(std::string_view k) {
    if (k == "id") return Field::id;
    if (k == "store_id") return Field::store_id;
    if (k == "name") return Field::name;
    if (k == "status") return Field::status;
    if (k == "created") return Field::created;
    if (k == "modified") return Field::modified;
    if (k == "comment") return Field::comment;
    if (k == "scopes") return Field::scopes;
    return Field::other;
  }
  static bool first_time(unsigned& seen, unsigned bit) {
    const unsigned mask = 1U << bit;
    if ((seen & mask) != 0) return false;
    seen |= mask;
    return true;
  }

  // A null, boolean, float or a string where no string is read.
  bool scalar(Kind kind) {
    if (skip_ > 0) return true;
    switch (at_) {
      case At::top_value:
        // success must be a boolean and result an array; anything may stand elsewhere.
        if (top_key_ == TopKey::success || top_key_ == TopKey::result) return false;
        at_ = At::top;
        return true;
      case At::info_value:
        at_ = At::info;  // a total_pages that is not an integer is ignored
        return true;
      case At::secret_value:
        // Only a comment may be null; unknown members may be anything.
        if (field_ != Field::other && !(field_ == Field::comment && kind == Kind::null)) {
          return false;
        }
        at_ = At::secret;
        return true;
      default:
        return false;
    }
  }
  bool integer(long v, bool fits) {
    if (skip_ > 0) return true;
    if (at_ == At::info_value && field_ == Field::total_pages) {
      if (!fits) return false;  // the tree parse's conversion decides such a page
      page_.total_pages = v;
      at_ = At::info;
      return true;
    }
    return scalar(Kind::other);
  }
  bool secret_string(const string_t& v) {
    at_ = At::secret;
    switch (field_) {
      case Field::id:
        secret_.id = v;
        return true;
      case Field::store_id:
        secret_.store_id = v;
        return true;
      case Field::name:
        secret_.name = v;
        return true;
      case Field::comment:
        secret_.comment = v;
        return true;
      case Field::status: {
        const auto status = upstream::secret_status_from(v);
        if (!status) return false;
        secret_.status = *status;
        return true;
      }
      case Field::created:
      case Field::modified: {
        const auto t = upstream::parse_timestamp(v);
        if (!t) return false;
        (field_ == Field::created ? secret_.created : secret_.modified) = *t;
        return true;
      }
      case Field::other:
        return true;
      default:
        return false;  // scopes
    }
  }
  bool finish_secret() {
    constexpr unsigned kRequired =
        (1U << static_cast<unsigned>(Field::id)) | (1U << static_cast<unsigned>(Field::store_id)) |
        (1U << static_cast<unsigned>(Field::name)) | (1U << static_cast<unsigned>(Field::status)) |
        (1U << static_cast<unsigned>(Field::created)) |
        (1U << static_cast<unsigned>(Field::modified)) |
        (1U << static_cast<unsigned>(Field::scopes));
    if ((seen_ & kRequired) != kRequired || secret_.id.empty()) return false;
    upstream::sort_unique(secret_.scopes);
    page_.items.push_back(std::move(secret_));
    return true;
  }
  // The value just opened is not read: count its depth until it closes.
  bool skip_value() {
    skip_ = 1;
    return true;
  }
  bool end_skipped() {
    if (--skip_ > 0) return true;
    at_ = at_ == At::top_value    ? At::top
          : at_ == At::info_value ? At::info
                                  : At::secret;
    return true;
  }

  ListPage<upstream::Secret> page_;
  upstream::Secret secret_;
  At at_ = At::start;
  TopKey top_key_ = TopKey::other;
  Field field_ = Field::other;
  unsigned top_seen_ = 0;
  unsigned info_seen_ = 0;
  unsigned seen_ = 0;
  std::size_t skip_ = 0;
  bool success_ = false;
};

}  // namespace

std::optional<ListPage<upstream::Secret>> parse_secrets_page(std::string_view body) {
  if (auto page = stream_secrets_page(body)) return page;
  return parse_secrets_page_tree(body);
}

std::optional<ListPage<upstream::Secret>> stream_secrets_page(std::string_view body) {
  SecretsPageReader reader;
  if (json::sax_parse(body, &reader) && reader.complete()) return std::move(reader.page());
  return std::nullopt;
}

std::optional<ListPage<upstream::Secret>> parse_secrets_page_tree(std::string_view body) {
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
