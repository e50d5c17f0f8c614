#include "proxy/identity.hpp"

#include <openssl/crypto.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string_view>

#include "upstream/crypto.hpp"

namespace sproxy::proxy {
namespace {

namespace http = boost::beast::http;
namespace errors = upstream::errors;
using upstream::RouteKind;

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool is_token_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u > 0x20 && u != 0x7f;
}

Result<BearerToken> parse_bearer(std::string_view value) {
  constexpr std::string_view kScheme = "Bearer ";
  if (value.size() <= kScheme.size() || !iequals(value.substr(0, kScheme.size()), kScheme)) {
    return errors::malformed_authorization();
  }
  const std::string_view token = value.substr(kScheme.size());
  if (!std::all_of(token.begin(), token.end(), is_token_char)) {
    return errors::malformed_authorization();
  }
  return BearerToken{std::string(token)};
}

// The permission a route needs; any of the returned bits suffices.
unsigned required_permissions(RouteKind kind) {
  constexpr auto read = static_cast<unsigned>(Permission::read);
  constexpr auto write = static_cast<unsigned>(Permission::write);
  constexpr auto admin = static_cast<unsigned>(Permission::admin);
  switch (kind) {
    case RouteKind::list_stores:
    case RouteKind::get_store:
    case RouteKind::list_secrets:
    case RouteKind::get_secret:
    case RouteKind::get_quota:
      return read | write | admin;
    case RouteKind::create_store:
    case RouteKind::delete_store:
      return admin;
    case RouteKind::create_secrets:
    case RouteKind::bulk_delete:
    case RouteKind::patch_secret:
    case RouteKind::delete_secret:
    case RouteKind::duplicate:
      return write | admin;
  }
  return admin;
}

}  // namespace

Result<Credentials> extract_credentials(const http::fields& headers) {
  if (raw_credential(headers).ambiguous) return errors::invalid_request_headers();
  if (auto it = headers.find(http::field::authorization); it != headers.end()) {
    auto bearer = parse_bearer(it->value());
    if (!bearer) return bearer.error();
    return Credentials{std::move(bearer).value()};
  }
  const auto email = headers["X-Auth-Email"];
  const auto key = headers["X-Auth-Key"];
  if (email.empty() || key.empty()) return errors::missing_credentials();
  return Credentials{ApiKeyPair{std::string(email), std::string(key)}};
}

RawCredential raw_credential(const http::fields& headers) {
  // One pass in arrival order, counting each credential header as it goes.
  RawCredential raw;
  unsigned authorizations = 0;
  unsigned emails = 0;
  unsigned keys = 0;
  for (const auto& field : headers) {
    if (field.name() == http::field::authorization) {
      if (authorizations++ == 0) raw.authorization = field.value();
    } else if (field.name() == http::field::unknown) {
      const std::string_view name = field.name_string();
      if (iequals(name, "X-Auth-Email")) {
        if (emails++ == 0) raw.email = field.value();
      } else if (iequals(name, "X-Auth-Key")) {
        if (keys++ == 0) raw.key = field.value();
      }
    }
  }
  raw.has_authorization = authorizations != 0;
  raw.ambiguous =
      authorizations > 1 || emails > 1 || keys > 1 || (authorizations != 0 && emails + keys != 0);
  return raw;
}

namespace {

// Equal bytes, compared without an early exit (the lengths are the client's own).
bool same_bytes(const std::string& kept, std::string_view presented) {
  if (kept.size() != presented.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < kept.size(); ++i) {
    diff |= static_cast<unsigned char>(kept[i] ^ presented[i]);
  }
  return diff == 0;
}

void assign_wiped(std::string& kept, std::string_view presented) {
  OPENSSL_cleanse(kept.data(), kept.size());
  kept.assign(presented);
}

}  // namespace

std::shared_ptr<const ResolvedClient> CredentialMemo::find(const RawCredential& presented,
                                                           std::uint64_t generation) const {
  if (!client_ || generation != generation_) return nullptr;
  // Every field is compared, whatever the first gives.
  const bool same = same_bytes(authorization_, presented.authorization) &
                    same_bytes(email_, presented.email) & same_bytes(key_, presented.key) &
                    (has_authorization_ == presented.has_authorization);
  return same ? client_ : nullptr;
}

void CredentialMemo::remember(const RawCredential& presented, std::uint64_t generation,
                              std::shared_ptr<const ResolvedClient> client) {
  assign_wiped(authorization_, presented.authorization);
  assign_wiped(email_, presented.email);
  assign_wiped(key_, presented.key);
  has_authorization_ = presented.has_authorization;
  generation_ = generation;
  client_ = std::move(client);
}

CredentialMemo& CredentialMemo::operator=(CredentialMemo&& other) noexcept {
  if (this == &other) return *this;
  wipe();
  authorization_ = std::move(other.authorization_);
  email_ = std::move(other.email_);
  key_ = std::move(other.key_);
  has_authorization_ = other.has_authorization_;
  generation_ = other.generation_;
  client_ = std::move(other.client_);
  return *this;
}

void CredentialMemo::wipe() {
  OPENSSL_cleanse(authorization_.data(), authorization_.size());
  OPENSSL_cleanse(email_.data(), email_.size());
  OPENSSL_cleanse(key_.data(), key_.size());
}

Result<BearerToken> extract_bearer_token(const http::fields& headers) {
  if (raw_credential(headers).ambiguous) return errors::invalid_request_headers();
  auto it = headers.find(http::field::authorization);
  if (it == headers.end()) return errors::missing_credentials();
  return parse_bearer(it->value());
}

Identity identity_from_config(const config::ClientConfig& client) {
  Identity id;
  id.name = client.name;
  id.services = client.services;
  std::sort(id.services.begin(), id.services.end());
  id.services.erase(std::unique(id.services.begin(), id.services.end()), id.services.end());
  id.accounts = client.accounts;
  id.stores = client.stores;
  for (const auto& p : client.permissions) {
    if (p == "read") id.permissions |= static_cast<unsigned>(Permission::read);
    if (p == "write") id.permissions |= static_cast<unsigned>(Permission::write);
    if (p == "admin") id.permissions |= static_cast<unsigned>(Permission::admin);
  }
  return id;
}

bool Identity::has_account(std::string_view account_id) const {
  return std::any_of(accounts.begin(), accounts.end(),
                     [&](const std::string& a) { return a == "*" || a == account_id; });
}

bool Identity::has_store(std::string_view store_id) const {
  return stores.empty() || std::find(stores.begin(), stores.end(), store_id) != stores.end();
}

ConfigIdentityResolver::ConfigIdentityResolver(const std::vector<config::ClientConfig>& clients,
                                               const std::string& admin_token_sha256)
    : client_count_(clients.size()) {
  // Hashes are compared as raw digests: the presented secret's digest is never turned
  // into hex.
  const auto hash = [](const std::string& hex) {
    Hash h;
    const bool lower_hex =
        hex.size() == 2 * h.digest.size() && std::all_of(hex.begin(), hex.end(), [](char c) {
          return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        });
    if (!lower_hex) return h;
    const auto bytes = upstream::from_hex(hex);
    if (!bytes || bytes->size() != h.digest.size()) return h;
    std::copy(bytes->begin(), bytes->end(), h.digest.begin());
    h.set = true;
    return h;
  };
  entries_.reserve(clients.size() + 1);
  for (const auto& c : clients) {
    entries_.push_back(Entry{hash(c.token_sha256), c.email, hash(c.key_sha256),
                             identity_from_config(c), c.cert_subjects});
  }
  if (!admin_token_sha256.empty()) {
    Identity purger;
    purger.name = std::string(kAdminTokenIdentityName);
    purger.accounts = {"*"};
    purger.permissions = static_cast<unsigned>(Permission::purge);
    entries_.push_back(Entry{hash(admin_token_sha256), {}, {}, std::move(purger)});
  }
}

std::string admin_token_sha256(const config::AdminConfig& admin) {
  if (!admin.token_env.empty()) {
    const char* token = std::getenv(admin.token_env.c_str());
    if (token != nullptr && *token != '\0') return upstream::sha256_hex(token);
  }
  return admin.token_sha256;
}

std::shared_ptr<const ConfigIdentityResolver> make_config_resolver(const config::Config& cfg) {
  return std::make_shared<const ConfigIdentityResolver>(cfg.clients, admin_token_sha256(cfg.admin));
}

ReloadableIdentityResolver::ReloadableIdentityResolver(
    std::shared_ptr<const IdentityResolver> initial)
    : current_(std::move(initial)) {}

Result<Identity> ReloadableIdentityResolver::resolve(const Credentials& credentials) const {
  // The table is pinned for the whole lookup; a concurrent replace cannot free it.
  const std::shared_ptr<const IdentityResolver> table = current_.load();
  if (!table) return errors::authentication_error();
  return table->resolve(credentials);
}

Result<Identity> ReloadableIdentityResolver::resolve_certificate(
    const PeerCertificate& certificate) const {
  const std::shared_ptr<const IdentityResolver> table = current_.load();
  if (!table) return errors::authentication_error();
  return table->resolve_certificate(certificate);
}

void ReloadableIdentityResolver::replace(std::shared_ptr<const IdentityResolver> next) {
  current_.store(std::move(next));
  generation_.fetch_add(1, std::memory_order_seq_cst);
}

std::uint64_t ReloadableIdentityResolver::generation() const {
  return generation_.load(std::memory_order_seq_cst);
}

std::shared_ptr<const IdentityResolver> ReloadableIdentityResolver::current() const {
  return current_.load();
}

Result<Identity> ConfigIdentityResolver::resolve(const Credentials& credentials) const {
  // Every entry is compared, whatever matched before, and the comparisons are combined
  // with non-short-circuit operators: the work done does not depend on which client the
  // credential belongs to.
  // Constant time: every byte is looked at, whatever differs first.
  const auto digest_equal = [](const upstream::Sha256Digest& a, const upstream::Sha256Digest& b) {
    unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    return diff == 0;
  };
  const Entry* match = nullptr;
  if (const auto* bearer = std::get_if<BearerToken>(&credentials)) {
    const upstream::Sha256Digest hash = upstream::sha256(bearer->token);
    for (const auto& e : entries_) {
      const unsigned equal = static_cast<unsigned>(e.token.set) &
                             static_cast<unsigned>(digest_equal(hash, e.token.digest));
      if (equal != 0 && match == nullptr) match = &e;
    }
  } else {
    const auto& pair = std::get<ApiKeyPair>(credentials);
    const upstream::Sha256Digest hash = upstream::sha256(pair.key);
    for (const auto& e : entries_) {
      const unsigned equal =
          static_cast<unsigned>(e.key.set) & static_cast<unsigned>(!e.email.empty()) &
          static_cast<unsigned>(upstream::constant_time_equal(pair.email, e.email)) &
          static_cast<unsigned>(digest_equal(hash, e.key.digest));
      if (equal != 0 && match == nullptr) match = &e;
    }
  }
  if (match == nullptr) return errors::authentication_error();
  return match->identity;
}

Result<Identity> IdentityResolver::resolve_certificate(const PeerCertificate&) const {
  return errors::authentication_error();
}

Result<Identity> ConfigIdentityResolver::resolve_certificate(
    const PeerCertificate& certificate) const {
  // Certificate names are not secrets: a plain search is fine.
  for (const auto& e : entries_) {
    for (const auto& subject : e.cert_subjects) {
      if (std::find(certificate.names.begin(), certificate.names.end(), subject) !=
          certificate.names.end()) {
        return e.identity;
      }
    }
  }
  return errors::authentication_error();
}

std::string_view to_string(DenyReason reason) {
  switch (reason) {
    case DenyReason::missing_credentials:
      return "missing_credentials";
    case DenyReason::malformed_credentials:
      return "malformed_credentials";
    case DenyReason::ambiguous_credentials:
      return "ambiguous_credentials";
    case DenyReason::unknown_credentials:
      return "unknown_credentials";
    case DenyReason::credential_mismatch:
      return "credential_mismatch";
    case DenyReason::account_not_allowed:
      return "account_not_allowed";
    case DenyReason::store_not_allowed:
      return "store_not_allowed";
    case DenyReason::permission_missing:
      return "permission_missing";
    case DenyReason::scope_not_allowed:
      return "scope_not_allowed";
    case DenyReason::secret_not_visible:
      return "secret_not_visible";
  }
  return "denied";
}

std::optional<DenyReason> check_access(const Identity& identity, const upstream::Route& route) {
  if (!identity.has_account(route.account_id)) return DenyReason::account_not_allowed;
  if (!route.store_id.empty() && !identity.has_store(route.store_id)) {
    return DenyReason::store_not_allowed;
  }
  // A new store would be outside a store list whatever its id: its creator could neither
  // see nor delete it, and it would use up the account's store quota.
  if (route.kind == RouteKind::create_store && !identity.stores.empty()) {
    return DenyReason::store_not_allowed;
  }
  if ((identity.permissions & required_permissions(route.kind)) == 0) {
    return DenyReason::permission_missing;
  }
  return std::nullopt;
}

Status authorize(const Identity& identity, const upstream::Route& route) {
  if (check_access(identity, route)) return errors::authentication_error();
  return upstream::Ok{};
}

cache::Viewer viewer_for(const Identity& identity) {
  cache::Viewer viewer;
  if (!identity.has(Permission::admin)) {
    viewer.all = false;
    viewer.services = identity.services;
  }
  // check_access binds every identity (admins too) to its stores; the list shows them only.
  viewer.stores = identity.stores;
  std::sort(viewer.stores.begin(), viewer.stores.end());
  viewer.stores.erase(std::unique(viewer.stores.begin(), viewer.stores.end()), viewer.stores.end());
  return viewer;
}

bool scopes_within(const Identity& identity, const std::vector<std::string>& scopes) {
  if (identity.has(Permission::admin)) return true;
  // Both sides are sorted and unique (validate_scopes and identity_from_config).
  return std::includes(identity.services.begin(), identity.services.end(), scopes.begin(),
                       scopes.end());
}

}  // namespace sproxy::proxy
