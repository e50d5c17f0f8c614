// Client identity: who is calling, and what they may do.
//
// Contract:
// - `extract_credentials` reads the credential a request presents (`Authorization:
//   Bearer <token>`, or the pair `X-Auth-Email` + `X-Auth-Key`) and returns the
//   contract's errors for missing (400 9106) or malformed (400 6003 + 6111) ones.
// - An `IdentityResolver` turns credentials into an `Identity` or 403 10000. The
//   config-backed resolver only knows SHA-256 hashes: it hashes the presented secret and
//   compares it in constant time against every configured client, without stopping at
//   the first match, so timing does not reveal which client (if any) matched.
// - `authorize` applies the identity's account, store and permission limits to a route
//   (403 10000 on denial); `viewer_for` is the identity's secret visibility for the cache.
//
// Credentials hold client secrets: never log, copy into errors or keep them past the
// request. Everything here is pure and thread-safe; resolvers are immutable after
// construction and shared by all io threads.
#pragma once

#include <boost/beast/http/fields.hpp>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "cache/read_through.hpp"
#include "config/config.hpp"
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

// The request's credential, or 400 9106 (none, or half of the key pair) / 400 6003 (an
// Authorization header that is not `Bearer <token>` with a non-empty token without
// spaces). Authorization wins when both kinds are present.
Result<Credentials> extract_credentials(const boost::beast::http::fields& headers);

// Only the bearer form (the admin endpoint accepts nothing else).
Result<BearerToken> extract_bearer_token(const boost::beast::http::fields& headers);

enum class Permission : unsigned { read = 1u, write = 2u, admin = 4u };

struct Identity {
  std::string name;
  std::vector<std::string> services;  // sorted, unique
  std::vector<std::string> accounts;  // "*" = any account
  std::vector<std::string> stores;    // empty = any store of its accounts
  unsigned permissions = 0;           // bits of Permission

  bool has(Permission p) const { return (permissions & static_cast<unsigned>(p)) != 0; }
};

Identity identity_from_config(const config::ClientConfig& client);

class IdentityResolver {
 public:
  virtual ~IdentityResolver() = default;
  // The caller's identity, or 403 10000 for credentials no client has.
  virtual Result<Identity> resolve(const Credentials& credentials) const = 0;
};

// Resolves against the configured clients' SHA-256 hashes.
class ConfigIdentityResolver final : public IdentityResolver {
 public:
  explicit ConfigIdentityResolver(const std::vector<config::ClientConfig>& clients);
  Result<Identity> resolve(const Credentials& credentials) const override;

 private:
  struct Entry {
    std::string token_sha256;
    std::string email;
    std::string key_sha256;
    Identity identity;
  };
  std::vector<Entry> entries_;
};

// Whether `identity` may call `route`: the account must be one of its accounts (or it
// has "*"), a route naming a store must name one of its stores (when it lists any),
// reads need read|write|admin, secret writes write|admin, store create/delete admin.
// Denial: 403 10000.
Status authorize(const Identity& identity, const upstream::Route& route);

// Secret visibility for the cache: admins see everything, others the secrets sharing at
// least one scope with their services.
cache::Viewer viewer_for(const Identity& identity);

// Constant-time check of a presented admin token against the configured SHA-256.
bool admin_token_matches(const std::string& token, const std::string& expected_sha256);

}  // namespace sproxy::proxy
