#include "proxy/request_handler.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/beast/http/field.hpp>
#include <cctype>
#include <chrono>
#include <nlohmann/json.hpp>
#include <utility>

namespace sproxy::proxy {
namespace {

namespace http = boost::beast::http;
namespace errors = upstream::errors;
using upstream::Micros;

Micros now_micros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const std::shared_ptr<const std::string>& health_body() {
  static const auto body = std::make_shared<const std::string>(R"({"status":"ok"})");
  return body;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// True when a Cache-Control header lists the `no-cache` directive.
bool wants_revalidation(const http::fields& headers) {
  for (auto it = headers.find(http::field::cache_control);
       it != headers.end() && it->name() == http::field::cache_control; ++it) {
    std::string_view rest = it->value();
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      const std::string_view directive = trim(rest.substr(0, comma));
      if (iequals(directive.substr(0, directive.find('=')), "no-cache")) return true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}

HttpResponse answer_response(const cache::Answer& answer, unsigned version, bool is_read) {
  auto body = answer.body;
  unsigned status = answer.status;
  if (!body) {
    // The cache always fills the body; never send an empty 200 if it did not.
    spdlog::error("cache answer without a body (status {})", status);
    return make_error_response(errors::internal_error(), version);
  }
  HttpResponse res = make_json_response(status, std::move(body), version);
  if (is_read) {
    res.set("X-Cache", cache::to_string(answer.outcome));
    res.set(http::field::age, std::to_string(std::max<Micros>(answer.age, 0) / 1'000'000));
  }
  if (answer.retry_after) res.set(http::field::retry_after, *answer.retry_after);
  return res;
}

}  // namespace

std::string_view PurgeRequest::scope() const {
  if (account_id.empty()) return "all";
  if (store_id.empty()) return "account";
  return "store";
}

Result<PurgeRequest> parse_purge_request(std::string_view body) {
  if (trim(body).empty()) return PurgeRequest{};
  const auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return errors::invalid_json_body();
  PurgeRequest out;
  for (const auto& [key, value] : j.items()) {
    // Unknown keys are refused: a misspelt "acount_id" must not purge everything.
    if (key != "account_id" && key != "store_id") return errors::invalid_json_body();
    if (!value.is_string() || !upstream::is_valid_id(value.get_ref<const std::string&>())) {
      return errors::invalid_json_body();
    }
    (key == "account_id" ? out.account_id : out.store_id) = value.get<std::string>();
  }
  if (!out.store_id.empty() && out.account_id.empty()) return errors::invalid_json_body();
  return out;
}

RequestHandler::RequestHandler(std::shared_ptr<cache::ReadThroughCache> cache,
                               std::shared_ptr<const IdentityResolver> identities,
                               std::string admin_token_sha256)
    : cache_(std::move(cache)),
      identities_(std::move(identities)),
      admin_token_sha256_(std::move(admin_token_sha256)) {}

HttpResponse RequestHandler::handle_admin(const HttpRequest& request, std::string_view path) const {
  const unsigned version = request.version();
  if (admin_token_sha256_.empty() || path != kAdminPurgePath) {
    return make_error_response(errors::no_route(), version);
  }
  if (request.method() != http::verb::post) {
    return make_error_response(errors::method_not_allowed(), version);
  }
  auto token = extract_bearer_token(request.base());
  if (!token) return make_error_response(token.error(), version);
  if (!admin_token_matches(token->token, admin_token_sha256_)) {
    return make_error_response(errors::authentication_error(), version);
  }
  auto purge = parse_purge_request(request.body());
  if (!purge) return make_error_response(purge.error(), version);

  if (purge->account_id.empty()) {
    cache_->purge_all();
  } else if (purge->store_id.empty()) {
    cache_->purge_account(purge->account_id);
  } else {
    cache_->purge_store(purge->account_id, purge->store_id);
  }
  spdlog::info("admin: cache purged ({})", purge->scope());
  return make_json_response(200,
                            std::make_shared<const std::string>(upstream::envelope_success(
                                {{"purged", std::string(purge->scope())}})),
                            version);
}

boost::asio::awaitable<HttpResponse> RequestHandler::handle(HttpRequest request) const {
  const unsigned version = request.version();
  const std::string_view target = request.target();
  const std::string_view path = target.substr(0, target.find('?'));

  if (path == kHealthPath) {
    if (request.method() != http::verb::get) {
      co_return make_error_response(errors::method_not_allowed(), version);
    }
    co_return make_json_response(200, health_body(), version);
  }
  if (path == "/admin" || path.substr(0, 7) == "/admin/") co_return handle_admin(request, path);

  const auto method = upstream::method_from_string(request.method_string());
  auto route = upstream::parse_route(method, target);
  if (!route) co_return make_error_response(route.error(), version);

  auto credentials = extract_credentials(request.base());
  if (!credentials) co_return make_error_response(credentials.error(), version);
  auto identity = identities_->resolve(*credentials);
  if (!identity) co_return make_error_response(identity.error(), version);
  if (auto allowed = authorize(*identity, *route); !allowed) {
    spdlog::debug("denied {} {} to client {}", upstream::to_string(method),
                  upstream::route_template(route->kind), identity->name);
    co_return make_error_response(allowed.error(), version);
  }

  const Micros now = now_micros();
  const auto kind = route->kind;
  if (upstream::is_write(kind)) {
    upstream::ApiRequest api{method, std::string(target), std::move(request.body())};
    const cache::Answer answer =
        co_await cache_->write(std::move(route).value(), std::move(api), now);
    spdlog::debug("{} {} client={} -> {}", upstream::to_string(method),
                  upstream::route_template(kind), identity->name, answer.status);
    co_return answer_response(answer, version, /*is_read=*/false);
  }

  cache::ReadOptions options;
  options.revalidate = wants_revalidation(request.base());
  options.viewer = viewer_for(*identity);
  const cache::Answer answer =
      co_await cache_->read(std::move(route).value(), std::move(options), now);
  spdlog::debug("{} {} client={} -> {} {}", upstream::to_string(method),
                upstream::route_template(kind), identity->name, answer.status,
                cache::to_string(answer.outcome));
  co_return answer_response(answer, version, /*is_read=*/true);
}

}  // namespace sproxy::proxy
