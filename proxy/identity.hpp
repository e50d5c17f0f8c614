// Client identity: who is calling, and what they may do.
//
// Contract:
// - `extract_credentials` reads the credential a request presents (`Authorization:
//   Bearer <token>`, or the pair `X-Auth-Email` + `X-Auth-Key`) and returns the
//   contract's errors for missing (400 9106), malformed (400 6003 + 6111) or ambiguous
//   (400 6003: a credential header twice, or Authorization with X-Auth-Email/X-Auth-Key)
//   ones. No credential is ever picked out of an ambiguous request.
// - An `IdentityResolver` turns credentials into an `Identity` or 403 10000. It is the
//   one seam through which every request is identified; `resolve_certificate` maps the
//   names of a TLS client certificate the listener verified (see PeerCertificate) to the
//   client whose `cert_subjects` lists one of them. The config-backed resolver only knows SHA-256
//   hashes: it hashes the presented secret and compares it in constant time against every
//   configured client, without stopping at the first match, so timing does not reveal
//   which client (if any) matched. The admin endpoint token resolves to an identity that
//   may purge the cache and do nothing else.
// - `ReloadableIdentityResolver` holds the current resolver and swaps it atomically
//   (SIGHUP): a request is resolved against one whole table, old or new, never a mix, and
//   a credential removed from the config stops resolving at the swap.
// - `check_access` applies the identity's account, store and permission limits to a
//   route and says why it refuses (403 10000 on the wire, whatever the reason);
//   `viewer_for` is the identity's secret visibility for the cache; `scopes_within` is
//   the rule for scopes a non-admin writer may set.
//
// - `CredentialMemo` remembers, for one connection, the credential headers that last
//   resolved and whom they resolved to. A keep-alive client repeats the same token on
//   every request; while the resolver's generation is unchanged (no reload), the same
//   bytes resolve to the same client, so the hash and the table search run once per
//   connection instead of once per request.
//
// Credentials hold client secrets: never log or copy them into errors; the only copy
// kept past a request is the connection's memo, wiped when it is replaced or destroyed. Everything
// here is pure and thread-safe; resolvers are immutable after construction (the reloadable one
// swaps whole immutable resolvers) and shared by all io threads.
#pragma once

#include <atomic>
#include <boost/beast/http/fields.hpp>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "cache/viewer.hpp"
#include "config/config.hpp"
#include "proxy/shared_slot.hpp"
#include "upstream/crypto.hpp"
#include "upstream/model.hpp"
#include "upstream/route.hpp"

namespace sproxy::proxy {

using upstream::Result;
using upstream::Status;

struct BearerToken {
  std::string token;
};

struct ApiKeyPair {
  std::string email;
  std::string key;
};

using Credentials = std::variant<BearerToken, ApiKeyPair>;

// The names of a client certificate the TLS handshake verified against the configured
// client CA: "CN=<subject common name>", then "DNS:<name>" and "URI:<uri>" for each
// subject alternative name (printable ASCII only; others are left out). Not secret.
struct PeerCertificate {
  std::vector<std::string> names;
};

// The request's credential, or 400 9106 (none, or half of the key pair) / 400 6003 (an
// ambiguous credential, see RawCredential; or an Authorization header that is not
// `Bearer <token>` with a non-empty token without spaces, with the 6111 chain entry).
Result<Credentials> extract_credentials(const boost::beast::http::fields& headers);

// Only the bearer form (the admin endpoint accepts nothing else); ambiguous credentials
// are 400 6003 here too.
Result<BearerToken> extract_bearer_token(const boost::beast::http::fields& headers);

// The credential headers exactly as a request sent them (views into its fields; empty
// when absent). An Authorization header decides the credential even when its value is
// empty (then malformed), so whether one was sent is kept too. No parsing and no
// allocation.
struct RawCredential {
  std::string_view authorization;
  std::string_view email;
  std::string_view key;
  bool has_authorization = false;
  // A credential header came twice, or Authorization came with X-Auth-Email or
  // X-Auth-Key (whatever their values): the request names no single credential and is
  // refused (400 6003, errors::invalid_request_headers) before any of it is looked at or
  // remembered.
  bool ambiguous = false;
};
RawCredential raw_credential(const boost::beast::http::fields& headers);

// `purge` is the admin endpoint token's only right (clients with `admin` may purge too).
enum class Permission : unsigned { read = 1u, write = 2u, admin = 4u, purge = 8u };

struct Identity {
  std::string name;
  std::vector<std::string> services;  // sorted, unique
  std::vector<std::string> accounts;  // "*" = any account
  std::vector<std::string> stores;    // empty = any store of its accounts
  unsigned permissions = 0;           // bits of Permission

  bool has(Permission p) const { return (permissions & static_cast<unsigned>(p)) != 0; }
  bool has_account(std::string_view account_id) const;
  // True when the identity lists no stores (any store) or lists this one.
  bool has_store(std::string_view store_id) const;
};

Identity identity_from_config(const config::ClientConfig& client);

cache::Viewer viewer_for(const Identity& identity);

// Whom a request's credentials resolved to, with the cache view that goes with it.
struct ResolvedClient {
  explicit ResolvedClient(Identity who) : identity(std::move(who)), viewer(viewer_for(identity)) {}
  Identity identity;
  cache::Viewer viewer;
};

// One connection's last resolved credential (see the contract above). Not thread-safe:
// a connection's requests run one at a time.
class CredentialMemo {
 public:
  CredentialMemo() = default;
  CredentialMemo(const CredentialMemo&) = delete;
  CredentialMemo& operator=(const CredentialMemo&) = delete;
  CredentialMemo(CredentialMemo&&) noexcept = default;
  CredentialMemo& operator=(CredentialMemo&& other) noexcept;
  ~CredentialMemo() { wipe(); }

  // The client `presented` resolved to when it was remembered under `generation`; null
  // when it differs in any byte or was remembered under another generation.
  std::shared_ptr<const ResolvedClient> find(const RawCredential& presented,
                                             std::uint64_t generation) const;
  void remember(const RawCredential& presented, std::uint64_t generation,
                std::shared_ptr<const ResolvedClient> client);

 private:
  void wipe();
  std::string authorization_;
  std::string email_;
  std::string key_;
  bool has_authorization_ = false;
  std::uint64_t generation_ = 0;
  std::shared_ptr<const ResolvedClient> client_;
};

// The name the admin endpoint token's identity carries in logs.
inline constexpr std::string_view kAdminTokenIdentityName = "admin-token";

class IdentityResolver {
 public:
  virtual ~IdentityResolver() = default;
  // The caller's identity, or 403 10000 for credentials no client has.
  virtual Result<Identity> resolve(const Credentials& credentials) const = 0;
  // The identity of the client whose `cert_subjects` holds one of `certificate.names`
  // (the first client in config order), or 403 10000. The base class knows none.
  virtual Result<Identity> resolve_certificate(const PeerCertificate& certificate) const;
  // Changes whenever the set of credentials and identities may have changed (a reload);
  // what resolved under one generation resolves the same while it lasts.
  virtual std::uint64_t generation() const { return 0; }
};

// Resolves against the configured clients' SHA-256 hashes and, when one is given, the
// admin endpoint token's (an identity named kAdminTokenIdentityName with only `purge`).
class ConfigIdentityResolver final : public IdentityResolver {
 public:
  explicit ConfigIdentityResolver(const std::vector<config::ClientConfig>& clients,
                                  const std::string& admin_token_sha256 = {});
  Result<Identity> resolve(const Credentials& credentials) const override;
  Result<Identity> resolve_certificate(const PeerCertificate& certificate) const override;
  std::size_t client_count() const { return client_count_; }

 private:
  // A configured hash as raw digest bytes; `set` is false when there is none (or it is
  // not 64 lowercase hex characters, which no SHA-256 hex string could equal).
  struct Hash {
    upstream::Sha256Digest digest{};
    bool set = false;
  };
  struct Entry {
    Hash token;
    std::string email;
    Hash key;
    Identity identity;
    std::vector<std::string> cert_subjects;
  };
  std::vector<Entry> entries_;
  std::size_t client_count_ = 0;
};

// The admin token's SHA-256: of the token in the variable `admin.token_env` names when that
// is set and non-empty, else `admin.token_sha256` (empty: no admin token).
std::string admin_token_sha256(const config::AdminConfig& admin);

// The resolver of the config sections that a reload may change (clients, admin token).
std::shared_ptr<const ConfigIdentityResolver> make_config_resolver(const config::Config& cfg);

// Delegates to the resolver installed last. `replace` may run on any thread while
// requests resolve on others; each `resolve` sees either the old or the new table.
class ReloadableIdentityResolver final : public IdentityResolver {
 public:
  explicit ReloadableIdentityResolver(std::shared_ptr<const IdentityResolver> initial);
  Result<Identity> resolve(const Credentials& credentials) const override;
  Result<Identity> resolve_certificate(const PeerCertificate& certificate) const override;
  // The new table first, then the generation: a request that reads the new generation
  // resolves against the new table.
  void replace(std::shared_ptr<const IdentityResolver> next);
  std::shared_ptr<const IdentityResolver> current() const;
  std::uint64_t generation() const override;

 private:
  SharedSlot<const IdentityResolver> current_;
  std::atomic<std::uint64_t> generation_{1};
};

// Why a request is refused. On the wire every denial is the same 403 10000; the reason
// is for the audit log only.
enum class DenyReason {
  missing_credentials,    // no (or half a) credential: answered 400 9106
  malformed_credentials,  // Authorization that is not a bearer token: answered 400 6003
  ambiguous_credentials,  // two credentials (RawCredential::ambiguous): answered 400 6003
  unknown_credentials,    // no client has this credential
  credential_mismatch,    // the credential names another client than the verified certificate
  account_not_allowed,    // the route's account is not one of the identity's
  store_not_allowed,      // the route's store is not one of the identity's stores (or a
                          // store create by an identity limited to some stores)
  permission_missing,     // the route needs a permission the identity lacks
  scope_not_allowed,      // a write would set a scope outside the identity's services
  secret_not_visible,     // the target secret exists but is outside the identity's services
};
std::string_view to_string(DenyReason reason);

// Whether `identity` may call `route`: the account must be one of its accounts (or it
// has "*"), a route naming a store must name one of its stores (when it lists any), an
// identity that lists stores may not create one (store_not_allowed, admins too),
// reads need read|write|admin, secret writes write|admin, store create/delete admin.
// nullopt when allowed; otherwise the first reason in that order.
std::optional<DenyReason> check_access(const Identity& identity, const upstream::Route& route);
// The same as a Status: 403 10000 on denial.
Status authorize(const Identity& identity, const upstream::Route& route);

// Visibility for the cache: admins see every secret, others the secrets sharing at least
// one scope with their services; a stores list shows only the identity's stores (when it
// lists any, admins included). A store outside them is never shown: listing omits it and
// every route naming it is refused by check_access with the same 403 whether it exists
// or not, so a client cannot tell another client's store from a missing one.
cache::Viewer viewer_for(const Identity& identity);

// True when a write by `identity` may set `scopes` (sorted, unique): admins any, others
// only scopes among their services.
bool scopes_within(const Identity& identity, const std::vector<std::string>& scopes);

}  // namespace sproxy::proxy
