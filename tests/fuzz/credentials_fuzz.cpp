// Credential headers (proxy/identity.*): Authorization / X-Auth-Email / X-Auth-Key as a
// request carries them. The input is two requests' header lines separated by an empty
// line; each is read by Beast's request parser (as the listener does) and identified as
// the handler does. Properties:
// - raw_credential holds the first of each credential header, extract_credentials and
//   extract_bearer_token agree with each other and return only the contract's errors;
// - the connection's memo is sound: when the second request's raw credential finds what
//   the first one resolved to, resolving the second afresh gives that same client.
#include <boost/asio/buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>

#include "proxy/http_message.hpp"
#include "proxy/identity.hpp"
#include "tests/fuzz/fuzz_check.hpp"
#include "upstream/crypto.hpp"

namespace {

using namespace sproxy;
namespace http = boost::beast::http;

// The request the header lines make, as Beast's parser reads it; nullopt if it refuses.
std::optional<proxy::HttpRequest> request_of(std::string_view lines) {
  std::string wire = "GET /client/v4/accounts/a/secrets_store/stores HTTP/1.1\r\n";
  while (!lines.empty()) {
    const std::size_t eol = lines.find('\n');
    wire.append(lines.substr(0, eol));
    wire.append("\r\n");
    lines = eol == std::string_view::npos ? std::string_view{} : lines.substr(eol + 1);
  }
  wire.append("\r\n");
  http::request_parser<http::string_body> parser;
  parser.eager(true);
  boost::beast::error_code ec;
  parser.put(boost::asio::buffer(wire), ec);
  if (ec || !parser.is_done()) return std::nullopt;
  return parser.release();
}

const proxy::ConfigIdentityResolver& resolver() {
  static const proxy::ConfigIdentityResolver r = [] {
    config::ClientConfig reader;
    reader.name = "reader";
    reader.token_sha256 = upstream::sha256_hex("t-reader");
    reader.accounts = {"*"};
    reader.permissions = {"read"};
    config::ClientConfig keyed;
    keyed.name = "keyed";
    keyed.email = "a@example.com";
    keyed.key_sha256 = upstream::sha256_hex("k-1");
    keyed.accounts = {"*"};
    keyed.permissions = {"read", "write"};
    return proxy::ConfigIdentityResolver({reader, keyed}, upstream::sha256_hex("admin-t"));
  }();
  return r;
}

// Who a request is, resolved afresh: "client <name>" or "error <status> <code>".
std::string resolve_afresh(const http::fields& headers) {
  const auto credentials = proxy::extract_credentials(headers);
  if (!credentials) {
    const auto& e = credentials.error();
    fuzz::check(e == upstream::errors::missing_credentials() ||
                    e == upstream::errors::malformed_authorization() ||
                    e == upstream::errors::invalid_request_headers(),
                "a credential error outside the contract");
    return "error " + std::to_string(e.status) + " " + std::to_string(e.errors.front().code);
  }
  const auto identity = resolver().resolve(*credentials);
  if (!identity) return "error 403";
  return "client " + identity->name;
}

std::string_view first_value(const http::fields& headers, std::string_view name) {
  for (const auto& f : headers) {
    if (boost::beast::iequals(f.name_string(), name)) return f.value();
  }
  return {};
}

void check_extraction(const http::fields& headers) {
  const proxy::RawCredential raw = proxy::raw_credential(headers);
  fuzz::check(raw.authorization == first_value(headers, "Authorization"), "raw authorization");
  fuzz::check(raw.email == first_value(headers, "X-Auth-Email"), "raw email");
  fuzz::check(raw.key == first_value(headers, "X-Auth-Key"), "raw key");

  const auto credentials = proxy::extract_credentials(headers);
  const auto bearer = proxy::extract_bearer_token(headers);
  if (headers.find(http::field::authorization) != headers.end()) {
    fuzz::check(credentials.ok() == bearer.ok(), "bearer and credentials disagree");
    if (bearer) {
      const auto* token = std::get_if<proxy::BearerToken>(&*credentials);
      fuzz::check(token != nullptr && token->token == bearer->token, "another bearer token");
      fuzz::check(!bearer->token.empty() && bearer->token.find(' ') == std::string::npos,
                  "a bearer token that is empty or has a space");
      fuzz::check(raw.authorization.ends_with(bearer->token), "a token not from the header");
    }
  } else {
    fuzz::check(!bearer.ok(), "a bearer token without Authorization");
    if (credentials) {
      const auto* pair = std::get_if<proxy::ApiKeyPair>(&*credentials);
      fuzz::check(pair != nullptr && pair->email == raw.email && pair->key == raw.key,
                  "a key pair that is not the headers'");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = fuzz::as_text(data, size);
  const std::size_t split = input.find("\n\n");
  const auto first = request_of(input.substr(0, split));
  const auto second = split == std::string_view::npos ? first : request_of(input.substr(split + 2));
  if (!first || !second) return 0;
  check_extraction(first->base());
  check_extraction(second->base());

  // The handler's memo: the first request resolves and is remembered, the second is
  // looked up by its raw credential.
  const std::string who = resolve_afresh(first->base());
  if (!who.starts_with("client ")) return 0;
  proxy::CredentialMemo memo;
  auto identity = resolver().resolve(*proxy::extract_credentials(first->base()));
  memo.remember(proxy::raw_credential(first->base()), 1,
                std::make_shared<const proxy::ResolvedClient>(std::move(identity).value()));
  // The handler refuses an ambiguous credential before it looks at the memo.
  const proxy::RawCredential presented = proxy::raw_credential(second->base());
  if (presented.ambiguous) return 0;
  const auto found = memo.find(presented, 1);
  if (found) {
    const std::string again = resolve_afresh(second->base());
    fuzz::check(again == "client " + found->identity.name,
                "the memo answers a request that resolves otherwise", again);
  }
  fuzz::check(memo.find(proxy::raw_credential(second->base()), 2) == nullptr,
              "the memo answers under another generation");
  return 0;
}
