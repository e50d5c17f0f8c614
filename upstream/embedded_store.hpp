// The embedded Secrets Store: a complete, durable local implementation of the API.
//
// Contract: every endpoint, rule, limit, error and list behaviour of
// ../shared/api/secrets-store.md. State lives in a SQLite database (WAL mode,
// synchronous=FULL, one transaction per API write), so an acknowledged write survives
// kill -9 and a crash mid-write never corrupts the file. Metadata is mirrored in
// memory so reads never touch the disk. Secret values are encrypted at rest with
// AES-256-GCM (fresh 96-bit nonce per write, the secret id bound as associated data);
// a value is never returned, logged or kept in plaintext past the write.
//
// Time: every method takes `now` (microseconds since the epoch); the store never reads
// a clock. A secret's status is `pending` until `activation_delay` after its last value
// change, then `active`.
//
// Key: the database keeps a key check (store_key.hpp) and the store refuses to start
// under a key that does not open it, naming where the key came from. A key file is
// created only for a new, empty database (no secrets, no key check); a database from
// before key checks is bound to the key only when that key opens its newest value.
// Where the key comes from (environment or key file) is key_file.hpp's; the Upstream
// adapter that serves the store to the proxy is embedded_upstream.hpp's.
//
// Thread safety: all methods are safe to call from any thread (one internal mutex; a
// write holds it for the length of its transaction). Errors: the contract's ApiError;
// start-up problems (unopenable or corrupt database, bad or mismatched key) throw
// std::runtime_error.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "upstream/model.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {

struct EmbeddedStoreOptions {
  std::filesystem::path data_path;  // SQLite file; parent directory is created
  std::string key;                  // 32 raw bytes of AES-256 key; empty: `key_file` is absent
  // Where `key` comes from, as start-up errors name it ("store key file data/store.key").
  std::string key_source = "the store key";
  // The key file `key` was read from, when it came from one. Absent (`key` empty), it is
  // created (mode 0600, a fresh random key) for a new, empty database only.
  std::filesystem::path key_file;
  // When the database opens under the staged key of an interrupted rotation
  // (store_key.hpp) rather than `key`: install it instead of refusing to start.
  bool finish_key_rotation = false;
  long max_stores_per_account = 1;
  long max_secrets_per_account = 100;
  std::size_t max_value_bytes = kDefaultMaxValueBytes;
  Micros activation_delay = 0;
};

// Builds options from config: reads the key from the environment variable or the key
// file (left empty when the file does not exist: the store decides whether to create it).
// Where the key comes from is key_file.hpp's.
EmbeddedStoreOptions embedded_store_options(const config::EmbeddedStoreConfig& cfg);

class EmbeddedStore {
 public:
  explicit EmbeddedStore(EmbeddedStoreOptions options);
  ~EmbeddedStore();
  EmbeddedStore(const EmbeddedStore&) = delete;
  EmbeddedStore& operator=(const EmbeddedStore&) = delete;

  // Microseconds a created or value-changed secret stays `pending`.
  Micros activation_delay() const noexcept;

  // Typed API (account ids are assumed valid: routing checked them).
  Result<std::vector<Store>> list_stores(const std::string& account_id) const;
  Result<Store> create_store(const std::string& account_id, const StoreCreate& in, Micros now);
  Result<Store> get_store(const std::string& account_id, const std::string& store_id) const;
  Status delete_store(const std::string& account_id, const std::string& store_id, bool force);

  Result<std::vector<Secret>> list_secrets(const std::string& account_id,
                                           const std::string& store_id, Micros now) const;
  Result<std::vector<Secret>> create_secrets(const std::string& account_id,
                                             const std::string& store_id,
                                             std::vector<SecretCreate> in, Micros now);
  Result<Secret> get_secret(const std::string& account_id, const std::string& store_id,
                            const std::string& secret_id, Micros now) const;
  Result<Secret> patch_secret(const std::string& account_id, const std::string& store_id,
                              const std::string& secret_id, SecretPatch in, Micros now);
  Status delete_secret(const std::string& account_id, const std::string& store_id,
                       const std::string& secret_id);
  Status bulk_delete(const std::string& account_id, const std::string& store_id,
                     const BulkDelete& in);
  Result<Secret> duplicate_secret(const std::string& account_id, const std::string& store_id,
                                  const std::string& secret_id, const SecretDuplicate& in,
                                  Micros now);
  Result<Quota> quota(const std::string& account_id) const;

  // Decrypts a stored value. For tests of encryption at rest and for nothing on any
  // request path: no API route returns a value.
  Result<std::string> reveal_value_for_test(const std::string& store_id,
                                            const std::string& secret_id) const;

  // Seals every value and the key check again under `new_key` (32 bytes) in one
  // transaction, and uses `new_key` from then on; returns the number of values. Throws
  // std::runtime_error, having changed nothing, when a value does not open or the commit
  // fails (an unknown commit outcome says so; the next start tells which key is current).
  // For `store rotate-key` (store_key.hpp), which owns the key file.
  std::size_t reseal_all(std::string new_key);
  // True when opening installed the staged key of an interrupted rotation.
  bool finished_key_rotation() const;

  // Full request handling: routing, body parsing, dispatch, envelope. Never throws for
  // bad input; every failure is an envelope with the contract's status. Defined with the
  // Upstream adapter (embedded_upstream.cpp).
  ApiResponse handle(const ApiRequest& request, Micros now);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sproxy::upstream
