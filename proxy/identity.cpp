#include "proxy/identity.hpp"

#include <algorithm>
#include <cctype>
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

Result<BearerToken> extract_bearer_token(const http::fields& headers) {
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

ConfigIdentityResolver::ConfigIdentityResolver(const std::vector<config::ClientConfig>& clients) {
  entries_.reserve(clients.size());
  for (const auto& c : clients) {
    entries_.push_back(Entry{c.token_sha256, c.email, c.key_sha256, identity_from_config(c)});
  }
}

Result<Identity> ConfigIdentityResolver::resolve(const Credentials& credentials) const {
  // Every entry is compared, whatever matched before, and the comparisons are combined
  // with non-short-circuit operators: the work done does not depend on which client the
  // credential belongs to.
  const Entry* match = nullptr;
  if (const auto* bearer = std::get_if<BearerToken>(&credentials)) {
    const std::string hash = upstream::sha256_hex(bearer->token);
    for (const auto& e : entries_) {
      const unsigned equal =
          static_cast<unsigned>(!e.token_sha256.empty()) &
          static_cast<unsigned>(upstream::constant_time_equal(hash, e.token_sha256));
      if (equal != 0 && match == nullptr) match = &e;
    }
  } else {
    const auto& pair = std::get<ApiKeyPair>(credentials);
    const std::string hash = upstream::sha256_hex(pair.key);
    for (const auto& e : entries_) {
      const unsigned equal =
          static_cast<unsigned>(!e.key_sha256.empty()) & static_cast<unsigned>(!e.email.empty()) &
          static_cast<unsigned>(upstream::constant_time_equal(pair.email, e.email)) &
          static_cast<unsigned>(upstream::constant_time_equal(hash, e.key_sha256));
      if (equal != 0 && match == nullptr) match = &e;
    }
  }
  if (match == nullptr) return errors::authentication_error();
  return match->identity;
}

Status authorize(const Identity& identity, const upstream::Route& route) {
  const bool account_allowed =
      std::any_of(identity.accounts.begin(), identity.accounts.end(),
                  [&](const std::string& a) { return a == "*" || a == route.account_id; });
  const bool store_allowed = identity.stores.empty() || route.store_id.empty() ||
                             std::find(identity.stores.begin(), identity.stores.end(),
                                       route.store_id) != identity.stores.end();
  const bool permitted = (identity.permissions & required_permissions(route.kind)) != 0;
  if (!account_allowed || !store_allowed || !permitted) return errors::authentication_error();
  return upstream::Ok{};
}

cache::Viewer viewer_for(const Identity& identity) {
  if (identity.has(Permission::admin)) return cache::Viewer{true, {}};
  return cache::Viewer{false, identity.services};
}

bool admin_token_matches(const std::string& token, const std::string& expected_sha256) {
  if (expected_sha256.empty()) return false;
  return upstream::constant_time_equal(upstream::sha256_hex(token), expected_sha256);
}

}  // namespace sproxy::proxy
