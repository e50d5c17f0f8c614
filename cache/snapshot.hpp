// The values the read-through cache stores, all immutable once built:
// - StoredAnswer: one pre-serialized answer (status + envelope bytes), e.g. a store's
//   GET answer, the quota, a negative 404, or a memoized list page.
// - SecretsSnapshot: every secret of one store as the upstream listed them, each one's
//   GET envelope pre-serialized at build time, an id index, and the list engine to
//   answer any list query for any viewer. Kept compact, as it is most of what a cache
//   holds: the envelopes lie back to back in one buffer, and the store id the secrets
//   share is kept once (a secret's own copy is dropped, and restored wherever a secret
//   is handed out or serialized; a secret listed with another store id keeps its own).
// - StoresSnapshot: every store of one account, answering any stores list query for
//   any viewer (only the viewer's stores, paged and counted as the viewer sees them).
// Plus the parsers of one upstream list page used to build the snapshots.
//
// Answers hand out their bytes as SharedBytes owned by the cached value, so a served
// answer keeps its snapshot alive and costs no copy.
// Thread safety: immutable after build (the memo counter is atomic); share freely.
// Secret values: the upstream never lists them and nothing here could hold one.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cache/read_through.hpp"
#include "cache/shared_bytes.hpp"
#include "cache/storage.hpp"
#include "upstream/list_query.hpp"
#include "upstream/model.hpp"

namespace sproxy::cache {

// Estimated heap bytes of a string beyond the object itself (0 inside the SSO buffer).
std::size_t heap_bytes(const std::string& s) noexcept;
std::size_t heap_bytes(const upstream::Secret& s) noexcept;
std::size_t heap_bytes(const upstream::Store& s) noexcept;

// Everything the read-through cache stores derives from this, so a looked-up value can
// be told apart without RTTI.
class CachedValue : public CacheObject {
 public:
  enum class Type { answer, secrets, stores };
  explicit CachedValue(Type t) : type_(t) {}
  Type type() const noexcept { return type_; }

 private:
  Type type_;
};

class StoredAnswer final : public CachedValue {
 public:
  // `seq`: when the answer arrived, on the cache's snapshot sequence (0: before this
  // process started, e.g. restored from the warm-start file).
  StoredAnswer(unsigned status, std::string body, std::uint64_t seq = 0)
      : CachedValue(Type::answer), status_(status), body_(std::move(body)), seq_(seq) {}
  unsigned status() const noexcept { return status_; }
  std::uint64_t seq() const noexcept { return seq_; }
  const std::string& body() const noexcept { return body_; }
  std::size_t byte_size() const noexcept override;

  // The body, keeping `self` alive.
  static SharedBytes share_body(const std::shared_ptr<const StoredAnswer>& self);

 private:
  unsigned status_;
  std::string body_;
  std::uint64_t seq_;
};

// At most this many list answers are memoized per snapshot; later queries are computed
// on each request (still correct, just not remembered).
inline constexpr std::size_t kMaxMemosPerSnapshot = 256;

class SecretsSnapshot final : public CachedValue {
 public:
  // `secrets` may come in any order; a secret listed twice (pages shifting under
  // concurrent writes) is kept once.
  SecretsSnapshot(std::uint64_t seq, std::vector<upstream::Secret> secrets);

  std::uint64_t seq() const noexcept { return seq_; }
  std::size_t size() const noexcept { return secrets_.size(); }
  std::size_t byte_size() const noexcept override { return bytes_; }
  // The store id the secrets share (the first listed one's; empty for an empty store).
  const std::string& store_id() const noexcept { return store_id_; }

  // Index of the secret with this id, or nullopt. No allocation.
  std::optional<std::size_t> find(std::string_view id) const noexcept;
  // Secret `index` as the upstream listed it (a copy, its store id restored).
  upstream::Secret secret(std::size_t index) const;
  // Whether `viewer` may see secret `index`. No allocation.
  bool visible_to(const Viewer& viewer, std::size_t index) const noexcept;
  // Secret `index` as JSON: the result of its GET envelope (a view into this snapshot).
  std::string_view secret_json(std::size_t index) const noexcept;
  // Every secret as one JSON array, in listing order.
  std::string json_array() const;

  // The secret's pre-serialized GET envelope, keeping `self` alive.
  static SharedBytes share_envelope(const std::shared_ptr<const SecretsSnapshot>& self,
                                    std::size_t index);

  // The list answer (envelope) for a query as seen by `viewer`.
  std::string list(const upstream::SecretListQuery& q, const Viewer& viewer) const;

  // Claims one memo slot; false once kMaxMemosPerSnapshot are claimed.
  bool claim_memo_slot() const noexcept;

 private:
  std::string_view envelope(std::size_t index) const noexcept;

  std::uint64_t seq_;
  std::string store_id_;
  // As listed, minus each store_id equal to store_id_ (left empty: no heap block).
  std::vector<upstream::Secret> secrets_;
  std::string envelopes_;                   // every GET envelope, back to back
  std::vector<std::size_t> envelope_ends_;  // parallel to secrets_: offset past each one
  std::vector<std::uint32_t> by_id_;        // indexes into secrets_, sorted by id
  std::size_t bytes_ = 0;
  mutable std::atomic<std::size_t> memos_{0};
};

class StoresSnapshot final : public CachedValue {
 public:
  StoresSnapshot(std::uint64_t seq, std::vector<upstream::Store> stores);
  std::uint64_t seq() const noexcept { return seq_; }
  std::span<const upstream::Store> stores() const noexcept { return stores_; }
  std::size_t byte_size() const noexcept override { return bytes_; }
  // The list answer (envelope) for a query as seen by `viewer` (its stores only).
  std::string list(const upstream::StoreListQuery& q, const Viewer& viewer) const;
  bool claim_memo_slot() const noexcept;

 private:
  std::uint64_t seq_;
  std::vector<upstream::Store> stores_;
  std::size_t bytes_ = 0;
  mutable std::atomic<std::size_t> memos_{0};
};

// One page of an upstream list answer (a 2xx envelope).
template <class T>
struct ListPage {
  std::vector<T> items;
  long total_pages = 0;  // 0 when the upstream gave no result_info
};

// nullopt when the body is not a success envelope holding an array of valid resources.
std::optional<ListPage<upstream::Secret>> parse_secrets_page(std::string_view body);
std::optional<ListPage<upstream::Store>> parse_stores_page(std::string_view body);

// The shared 404 secret_not_found envelope (built once per process).
const SharedBytes& secret_not_found_body();

}  // namespace sproxy::cache
