#include "upstream/embedded_store.hpp"

#include <algorithm>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "upstream/crypto.hpp"
#include "upstream/embedded_store_impl.hpp"
#include "upstream/key_file.hpp"

namespace sproxy::upstream {

namespace {

// Secret scopes are stored as one comma-joined column of sorted, known scope names.
std::string join_scopes(const std::vector<std::string>& scopes) {
  std::string out;
  for (const auto& s : scopes) {
    if (!out.empty()) out += ',';
    out += s;
  }
  return out;
}

// Typed callers may bypass the body parsers; the store re-checks the rules it relies on.
// `empty_token`: the error for an empty list (secret_scopes_empty on create and duplicate).
Result<std::vector<std::string>> normalize_scopes(std::vector<std::string> scopes,
                                                  std::string_view empty_token) {
  if (scopes.empty()) return errors::validation(empty_token);
  for (const auto& s : scopes) {
    if (!is_known_scope(s)) return errors::validation("secret_scope_invalid");
  }
  sort_unique(scopes);
  return scopes;
}

Status check_comment(const std::optional<std::string>& comment) {
  if (comment && comment->size() > kMaxCommentBytes) {
    return errors::validation("secret_comment_too_long");
  }
  return Ok{};
}

bool by_created_then_id(const auto& a, const auto& b) {
  return a.created != b.created ? a.created < b.created : a.id < b.id;
}

}  // namespace

EmbeddedStoreOptions embedded_store_options(const config::EmbeddedStoreConfig& cfg) {
  EmbeddedStoreOptions o;
  o.data_path = cfg.data_path;
  if (std::optional<std::string> key = key_from_env(cfg)) {
    o.key = std::move(*key);
    o.key_source = "store key environment variable " + cfg.key_env;
  } else {
    require_key_file_setting(cfg);
    o.key_file = cfg.key_file;
    o.key_source = "store key file " + cfg.key_file;
    o.key = open_key_file(o.key_file).value_or(std::string());
  }
  o.max_stores_per_account = cfg.max_stores_per_account;
  o.max_secrets_per_account = cfg.max_secrets_per_account;
  o.max_value_bytes = cfg.max_value_bytes;
  o.activation_delay = cfg.activation_delay_ms * 1000;
  return o;
}

// ---------------------------------------------------------------------------------------
// EmbeddedStore::Impl: lookups and write helpers

const StoreRecord* EmbeddedStore::Impl::find_store(const std::string& account_id,
                                                   const std::string& store_id) const {
  auto it = mirror.stores.find(store_id);
  if (it == mirror.stores.end() || it->second.store.account_id != account_id) return nullptr;
  return &it->second;
}
StoreRecord* EmbeddedStore::Impl::find_store(const std::string& account_id,
                                             const std::string& store_id) {
  return const_cast<StoreRecord*>(std::as_const(*this).find_store(account_id, store_id));
}

long EmbeddedStore::Impl::account_secret_count(const std::string& account_id) const {
  long n = 0;
  if (auto it = mirror.store_ids_by_account.find(account_id);
      it != mirror.store_ids_by_account.end()) {
    for (const auto& id : it->second) n += static_cast<long>(mirror.stores.at(id).secrets.size());
  }
  return n;
}

long EmbeddedStore::Impl::account_store_count(const std::string& account_id) const {
  auto it = mirror.store_ids_by_account.find(account_id);
  return it == mirror.store_ids_by_account.end() ? 0 : static_cast<long>(it->second.size());
}

Secret EmbeddedStore::Impl::view(const SecretRecord& rec, Micros now) const {
  Secret s = rec.meta;
  s.status = now >= rec.value_changed_at + opt.activation_delay ? SecretStatus::active
                                                                : SecretStatus::pending;
  return s;
}

std::optional<ApiError> EmbeddedStore::Impl::refuse_if_broken() const {
  if (db.broken()) return errors::service_unavailable(*db.broken());
  return std::nullopt;
}

ApiError EmbeddedStore::Impl::storage_error(int rc) const {
  return errors::service_unavailable(std::string("storage: ") + sqlite3_errstr(rc));
}

int EmbeddedStore::Impl::insert_secret_row(const SecretRecord& rec, const std::string& sealed) {
  return StmtUse(insert_secret.get())
      .text(rec.meta.id)
      .text(rec.meta.store_id)
      .text(rec.meta.name)
      .text_or_null(rec.meta.comment)
      .text(join_scopes(rec.meta.scopes))
      .integer(rec.meta.created)
      .integer(rec.meta.modified)
      .integer(rec.value_changed_at)
      .blob(sealed)
      .run();
}

std::optional<std::string> EmbeddedStore::Impl::open_value(const std::string& secret_id) {
  StmtUse use(select_value.get());
  use.text(secret_id);
  if (use.step() != SQLITE_ROW) return std::nullopt;
  return aes_gcm_open(opt.key, use.column_blob(0), secret_id);
}

void EmbeddedStore::Impl::add_to_mirror(StoreRecord& store, SecretRecord rec) {
  store.ids_by_name[rec.meta.name] = rec.meta.id;
  std::string id = rec.meta.id;
  store.secrets.insert_or_assign(std::move(id), std::move(rec));
}

void EmbeddedStore::Impl::erase_from_mirror(StoreRecord& store, const std::string& secret_id) {
  auto it = store.secrets.find(secret_id);
  if (it == store.secrets.end()) return;
  store.ids_by_name.erase(it->second.meta.name);
  store.secrets.erase(it);
}

// =======================================================================================
// EmbeddedStore

EmbeddedStore::EmbeddedStore(EmbeddedStoreOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {
  wipe(options.key);  // moved-from, but a short-string buffer may still hold bytes
  impl_->open();
}

EmbeddedStore::~EmbeddedStore() = default;

Result<std::vector<Store>> EmbeddedStore::list_stores(const std::string& account_id) const {
  std::shared_lock lock(impl_->mirror_mu);
  std::vector<Store> out;
  if (auto it = impl_->mirror.store_ids_by_account.find(account_id);
      it != impl_->mirror.store_ids_by_account.end()) {
    for (const auto& id : it->second) out.push_back(impl_->mirror.stores.at(id).store);
  }
  std::sort(out.begin(), out.end(),
            [](const Store& a, const Store& b) { return by_created_then_id(a, b); });
  return out;
}

// Store names need not be unique within an account (decision): the contract gives no
// uniqueness rule or error for stores, Cloudflare identifies stores by id only, and the
// default limit of one store per account makes a clash moot in practice.
Result<Store> EmbeddedStore::create_store(const std::string& account_id, const StoreCreate& in,
                                          Micros now) {
  if (auto v = validate_name(in.name); !v) return v.error();
  std::lock_guard write(impl_->write_mu);
  if (auto e = impl_->refuse_if_broken()) return *e;
  if (impl_->account_store_count(account_id) >= impl_->opt.max_stores_per_account) {
    return errors::maximum_stores_exceeded();
  }
  Store st{new_id(), account_id, in.name, now, now};
  const int rc = impl_->db.transact([&] {
    return StmtUse(impl_->insert_store.get())
        .text(st.id)
        .text(st.account_id)
        .text(st.name)
        .integer(st.created)
        .integer(st.modified)
        .run();
  });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  std::unique_lock apply(impl_->mirror_mu);
  impl_->mirror.store_ids_by_account[account_id].push_back(st.id);
  impl_->mirror.stores[st.id].store = st;
  return st;
}

Result<Store> EmbeddedStore::get_store(const std::string& account_id,
                                       const std::string& store_id) const {
  std::shared_lock lock(impl_->mirror_mu);
  const StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  return store->store;
}

Status EmbeddedStore::delete_store(const std::string& account_id, const std::string& store_id,
                                   bool force) {
  std::lock_guard write(impl_->write_mu);
  const StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  if (!store->secrets.empty() && !force) return errors::store_not_empty();
  if (auto e = impl_->refuse_if_broken()) return *e;
  const int rc = impl_->db.transact([&] {
    if (int r = StmtUse(impl_->delete_store_secrets.get()).text(store_id).run(); r != SQLITE_OK) {
      return r;
    }
    return StmtUse(impl_->delete_store.get()).text(store_id).run();
  });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  std::unique_lock apply(impl_->mirror_mu);
  auto& ids = impl_->mirror.store_ids_by_account[account_id];
  ids.erase(std::remove(ids.begin(), ids.end(), store_id), ids.end());
  if (ids.empty()) impl_->mirror.store_ids_by_account.erase(account_id);
  impl_->mirror.stores.erase(store_id);
  return Ok{};
}

Result<std::vector<Secret>> EmbeddedStore::list_secrets(const std::string& account_id,
                                                        const std::string& store_id,
                                                        Micros now) const {
  std::shared_lock lock(impl_->mirror_mu);
  const StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  std::vector<Secret> out;
  out.reserve(store->secrets.size());
  for (const auto& [id, rec] : store->secrets) out.push_back(impl_->view(rec, now));
  std::sort(out.begin(), out.end(),
            [](const Secret& a, const Secret& b) { return by_created_then_id(a, b); });
  return out;
}

Result<std::vector<Secret>> EmbeddedStore::create_secrets(const std::string& account_id,
                                                          const std::string& store_id,
                                                          std::vector<SecretCreate> in,
                                                          Micros now) {
  // Plaintext values are wiped however this function returns.
  struct WipeAll {
    std::vector<SecretCreate>& items;
    ~WipeAll() {
      for (auto& item : items) wipe(item.value);
    }
  } wipe_all{in};

  std::lock_guard write(impl_->write_mu);
  StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  if (in.empty()) return errors::invalid_json_body();

  // Validate the whole batch before touching anything: all-or-nothing.
  std::unordered_set<std::string_view> batch_names;
  for (auto& item : in) {
    if (auto v = validate_name(item.name); !v) return v.error();
    if (auto v = validate_value(item.value, impl_->opt.max_value_bytes); !v) return v.error();
    auto scopes = normalize_scopes(std::move(item.scopes), "secret_scopes_empty");
    if (!scopes) return scopes.error();
    item.scopes = std::move(*scopes);
    if (auto v = check_comment(item.comment); !v) return v.error();
    if (store->ids_by_name.contains(item.name) || !batch_names.insert(item.name).second) {
      return errors::name_taken(item.name);
    }
  }
  const long max = impl_->opt.max_secrets_per_account;
  if (impl_->account_secret_count(account_id) + static_cast<long>(in.size()) > max) {
    return errors::maximum_secrets_exceeded(max);
  }
  if (auto e = impl_->refuse_if_broken()) return *e;

  std::vector<SecretRecord> records;
  std::vector<std::string> sealed;
  records.reserve(in.size());
  sealed.reserve(in.size());
  for (auto& item : in) {
    SecretRecord rec;
    // Ids are 122 random bits; a collision would fail the PRIMARY KEY and the whole batch.
    rec.meta.id = new_id();
    rec.meta.store_id = store_id;
    rec.meta.name = item.name;
    rec.meta.comment = item.comment;
    rec.meta.scopes = item.scopes;
    rec.meta.status = SecretStatus::pending;
    rec.meta.created = rec.meta.modified = rec.value_changed_at = now;
    sealed.push_back(aes_gcm_seal(impl_->opt.key, item.value, rec.meta.id));
    wipe(item.value);
    records.push_back(std::move(rec));
  }

  const int rc = impl_->db.transact([&] {
    for (std::size_t i = 0; i < records.size(); ++i) {
      if (int r = impl_->insert_secret_row(records[i], sealed[i]); r != SQLITE_OK) return r;
    }
    return SQLITE_OK;
  });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  // A create always answers `pending` (decision), whatever the activation delay.
  std::vector<Secret> out;
  out.reserve(records.size());
  for (const auto& rec : records) out.push_back(rec.meta);
  std::unique_lock apply(impl_->mirror_mu);
  for (auto& rec : records) impl_->add_to_mirror(*store, std::move(rec));
  return out;
}

Result<Secret> EmbeddedStore::get_secret(const std::string& account_id, const std::string& store_id,
                                         const std::string& secret_id, Micros now) const {
  std::shared_lock lock(impl_->mirror_mu);
  const StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  auto it = store->secrets.find(secret_id);
  if (it == store->secrets.end()) return errors::secret_not_found();
  return impl_->view(it->second, now);
}

Result<Secret> EmbeddedStore::patch_secret(const std::string& account_id,
                                           const std::string& store_id,
                                           const std::string& secret_id, SecretPatch in,
                                           Micros now) {
  std::string no_value;
  std::string& plaintext = in.value ? *in.value : no_value;
  WipeOnExit wipe_plaintext(plaintext);

  std::lock_guard write(impl_->write_mu);
  StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  auto it = store->secrets.find(secret_id);
  if (it == store->secrets.end()) return errors::secret_not_found();
  // An empty PATCH changes nothing, not even `modified` (decision).
  if (in.empty()) return impl_->view(it->second, now);

  SecretRecord rec = it->second;
  std::optional<std::string> sealed;
  if (in.value) {
    if (auto v = validate_value(plaintext, impl_->opt.max_value_bytes); !v) return v.error();
  }
  if (in.scopes) {
    auto scopes = normalize_scopes(std::move(*in.scopes), "secret_scope_invalid");
    if (!scopes) return scopes.error();
    rec.meta.scopes = std::move(*scopes);
  }
  if (in.comment) {
    if (auto v = check_comment(*in.comment); !v) return v.error();
    rec.meta.comment = *in.comment;
  }
  if (auto e = impl_->refuse_if_broken()) return *e;
  rec.meta.modified = now;
  if (in.value) {
    rec.value_changed_at = now;
    sealed = aes_gcm_seal(impl_->opt.key, plaintext, secret_id);
    wipe(plaintext);
  }

  const int rc = impl_->db.transact([&] {
    return StmtUse(impl_->update_secret.get())
        .text_or_null(rec.meta.comment)
        .text(join_scopes(rec.meta.scopes))
        .integer(rec.meta.modified)
        .integer(rec.value_changed_at)
        .blob_or_null(sealed)
        .text(secret_id)
        .run();
  });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  Secret out = impl_->view(rec, now);
  if (in.value) out.status = SecretStatus::pending;  // a new value always answers pending
  std::unique_lock apply(impl_->mirror_mu);
  it->second = std::move(rec);
  return out;
}

Status EmbeddedStore::delete_secret(const std::string& account_id, const std::string& store_id,
                                    const std::string& secret_id) {
  std::lock_guard write(impl_->write_mu);
  StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  if (!store->secrets.contains(secret_id)) return errors::secret_not_found();
  if (auto e = impl_->refuse_if_broken()) return *e;
  const int rc =
      impl_->db.transact([&] { return StmtUse(impl_->delete_secret.get()).text(secret_id).run(); });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  std::unique_lock apply(impl_->mirror_mu);
  impl_->erase_from_mirror(*store, secret_id);
  return Ok{};
}

Status EmbeddedStore::bulk_delete(const std::string& account_id, const std::string& store_id,
                                  const BulkDelete& in) {
  std::lock_guard write(impl_->write_mu);
  StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  if (in.ids.empty()) return errors::invalid_json_body();
  // All ids must exist in this store, or nothing is deleted (decision). Repeats are one.
  std::vector<std::string> ids = in.ids;
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (const auto& id : ids) {
    if (!store->secrets.contains(id)) return errors::secret_not_found();
  }
  if (auto e = impl_->refuse_if_broken()) return *e;
  const int rc = impl_->db.transact([&] {
    for (const auto& id : ids) {
      if (int r = StmtUse(impl_->delete_secret.get()).text(id).run(); r != SQLITE_OK) return r;
    }
    return SQLITE_OK;
  });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  std::unique_lock apply(impl_->mirror_mu);
  for (const auto& id : ids) impl_->erase_from_mirror(*store, id);
  return Ok{};
}

Result<Secret> EmbeddedStore::duplicate_secret(const std::string& account_id,
                                               const std::string& store_id,
                                               const std::string& secret_id,
                                               const SecretDuplicate& in, Micros now) {
  std::lock_guard write(impl_->write_mu);
  StoreRecord* store = impl_->find_store(account_id, store_id);
  if (store == nullptr) return errors::store_not_found();
  if (!store->secrets.contains(secret_id)) return errors::secret_not_found();
  if (auto v = validate_name(in.name); !v) return v.error();
  auto scopes = normalize_scopes(in.scopes, "secret_scopes_empty");
  if (!scopes) return scopes.error();
  if (auto v = check_comment(in.comment); !v) return v.error();
  if (store->ids_by_name.contains(in.name)) return errors::name_taken(in.name);
  const long max = impl_->opt.max_secrets_per_account;
  if (impl_->account_secret_count(account_id) + 1 > max) {
    return errors::maximum_secrets_exceeded(max);
  }
  if (auto e = impl_->refuse_if_broken()) return *e;

  SecretRecord rec;
  rec.meta.id = new_id();
  rec.meta.store_id = store_id;
  rec.meta.name = in.name;
  rec.meta.comment = in.comment;
  rec.meta.scopes = std::move(*scopes);
  rec.meta.status = SecretStatus::pending;
  rec.meta.created = rec.meta.modified = rec.value_changed_at = now;

  // The value is copied server-side: opened under the source id, sealed again under the
  // new id with a fresh nonce, and the plaintext wiped.
  std::optional<std::string> plaintext = impl_->open_value(secret_id);
  if (!plaintext) return errors::internal_error();  // stored value fails authentication
  std::string sealed;
  {
    WipeOnExit wipe_plaintext(*plaintext);
    sealed = aes_gcm_seal(impl_->opt.key, *plaintext, rec.meta.id);
  }

  const int rc = impl_->db.transact([&] { return impl_->insert_secret_row(rec, sealed); });
  if (rc != SQLITE_OK) return impl_->storage_error(rc);

  Secret out = rec.meta;
  std::unique_lock apply(impl_->mirror_mu);
  impl_->add_to_mirror(*store, std::move(rec));
  return out;
}

std::size_t EmbeddedStore::reseal_all(std::string new_key) {
  WipeOnExit wipe_key(new_key);
  if (new_key.size() != kAesKeyBytes) throw std::invalid_argument("reseal_all needs a 32-byte key");
  std::lock_guard write(impl_->write_mu);
  return impl_->reseal_all(new_key);
}

bool EmbeddedStore::finished_key_rotation() const { return impl_->finished_rotation; }

Result<Quota> EmbeddedStore::quota(const std::string& account_id) const {
  std::shared_lock lock(impl_->mirror_mu);
  return Quota{impl_->opt.max_secrets_per_account, impl_->account_secret_count(account_id)};
}

Result<std::string> EmbeddedStore::reveal_value_for_test(const std::string& store_id,
                                                         const std::string& secret_id) const {
  std::lock_guard write(impl_->write_mu);
  auto store = impl_->mirror.stores.find(store_id);
  if (store == impl_->mirror.stores.end()) return errors::store_not_found();
  if (!store->second.secrets.contains(secret_id)) return errors::secret_not_found();
  std::optional<std::string> value = impl_->open_value(secret_id);
  if (!value) return errors::internal_error();
  return std::move(*value);
}

Micros EmbeddedStore::activation_delay() const noexcept { return impl_->opt.activation_delay; }

}  // namespace sproxy::upstream
