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
// Thread safety: all methods are safe to call from any thread (one internal mutex; a
// write holds it for the length of its transaction). Errors: the contract's ApiError;
// start-up problems (unopenable or corrupt database, bad key) throw std::runtime_error.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "upstream/list_query.hpp"
#include "upstream/model.hpp"
#include "upstream/upstream.hpp"

namespace sproxy::upstream {

struct EmbeddedStoreOptions {
  std::filesystem::path data_path;  // SQLite file; parent directory is created
  std::string key;                  // 32 raw bytes of AES-256 key
  long max_stores_per_account = 1;
  long max_secrets_per_account = 100;
  std::size_t max_value_bytes = kDefaultMaxValueBytes;
  Micros activation_delay = 0;
};

// Builds options from config: resolves the key from the environment variable or the
// key file (creating the file, mode 0600, with a fresh random key if absent).
EmbeddedStoreOptions embedded_store_options(const config::EmbeddedStoreConfig& cfg);

// The 32-byte AES-256 key those settings name (cfg.key_env, then cfg.key_file, created
// as above). Also seals the cache's warm-start file. Throws std::runtime_error.
std::string resolve_store_key(const config::EmbeddedStoreConfig& cfg);

class EmbeddedStore {
 public:
  explicit EmbeddedStore(EmbeddedStoreOptions options);
  ~EmbeddedStore();
  EmbeddedStore(const EmbeddedStore&) = delete;
  EmbeddedStore& operator=(const EmbeddedStore&) = delete;

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

  // Full request handling: routing, body parsing, dispatch, envelope. Never throws for
  // bad input; every failure is an envelope with the contract's status.
  ApiResponse handle(const ApiRequest& request, Micros now);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Upstream adapter: runs the store's work off the caller's io thread (a dedicated
// worker thread, so SQLite fsyncs never stall a network thread) and resumes the caller
// on its own executor. The clock is read here, once per call.
class EmbeddedUpstream final : public Upstream {
 public:
  explicit EmbeddedUpstream(std::shared_ptr<EmbeddedStore> store);
  ~EmbeddedUpstream() override;
  boost::asio::awaitable<CallResult> call(ApiRequest request) override;
  std::string describe() const override { return "embedded"; }
  EmbeddedStore& store() { return *store_; }

 private:
  struct Worker;
  std::shared_ptr<EmbeddedStore> store_;
  std::unique_ptr<Worker> worker_;
};

}  // namespace sproxy::upstream
