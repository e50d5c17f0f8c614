#include "cache/policy.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <nlohmann/json.hpp>

#include "cache/snapshot.hpp"
#include "upstream/resilience.hpp"

namespace sproxy::cache::policy {

namespace {

using upstream::RouteKind;

void append_number(std::string& out, std::uint64_t n) {
  std::array<char, 24> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), n);
  (void)ec;  // 24 chars always hold a 64-bit number
  out.append(buf.data(), end);
}

void append_signed(std::string& out, long n) {
  std::array<char, 24> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), n);
  (void)ec;
  out.append(buf.data(), end);
}

bool is_unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

void append_percent_encoded(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : s) {
    if (is_unreserved(c)) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0x0F]);
    }
  }
}

// Bit per known scope: a scope filter is a set, so order and duplicates do not matter.
unsigned scope_mask(const std::vector<std::string>& scopes) {
  unsigned mask = 0;
  for (const auto& s : scopes) {
    for (std::size_t i = 0; i < std::size(upstream::kScopeNames); ++i) {
      if (upstream::kScopeNames[i] == s) mask |= 1u << i;
    }
  }
  return mask;
}

bool has_error_token(const nlohmann::json& envelope, std::string_view token) {
  if (!envelope.is_object()) return false;
  auto it = envelope.find("errors");
  if (it == envelope.end() || !it->is_array()) return false;
  for (const auto& e : *it) {
    if (!e.is_object()) continue;
    auto m = e.find("message");
    if (m == e.end() || !m->is_string()) continue;
    const auto& text = m->get_ref<const std::string&>();
    if (text == token ||
        (text.size() > token.size() && text.starts_with(token) && text[token.size()] == ':')) {
      return true;
    }
  }
  return false;
}

bool is_error_list(const nlohmann::json& envelope) {
  auto it = envelope.find("errors");
  if (it == envelope.end() || !it->is_array() || it->empty()) return false;
  return std::all_of(it->begin(), it->end(), [](const nlohmann::json& e) {
    if (!e.is_object()) return false;
    auto code = e.find("code");
    auto message = e.find("message");
    return code != e.end() && code->is_number_integer() && message != e.end() &&
           message->is_string();
  });
}

template <class Parse>
bool is_array_of(const nlohmann::json& result, Parse parse) {
  return result.is_array() && std::all_of(result.begin(), result.end(),
                                          [&](const auto& item) { return parse(item).ok(); });
}

bool has_result_shape(RouteKind kind, const nlohmann::json& result) {
  switch (kind) {
    case RouteKind::list_stores:
      return is_array_of(result, upstream::store_from_json);
    case RouteKind::get_store:
    case RouteKind::create_store:
      return upstream::store_from_json(result).ok();
    case RouteKind::list_secrets:
    case RouteKind::create_secrets:
      return is_array_of(result, upstream::secret_from_json);
    case RouteKind::get_secret:
    case RouteKind::patch_secret:
    case RouteKind::duplicate:
      return upstream::secret_from_json(result).ok();
    case RouteKind::get_quota:
      return upstream::quota_from_json(result).ok();
    default:
      // Deletes answer `result: null`; nothing in it is used.
      return true;
  }
}

}  // namespace

bool is_api_answer(RouteKind kind, const upstream::ApiResponse& response,
                   bool result_checked_elsewhere) {
  const bool ok = response.status >= 200 && response.status < 300;
  if (ok && result_checked_elsewhere) return true;
  const auto j = nlohmann::json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return false;
  auto success = j.find("success");
  if (success == j.end() || !success->is_boolean()) return false;
  if (!ok) return !success->get<bool>() && is_error_list(j);
  if (!success->get<bool>()) return false;
  auto result = j.find("result");
  return result != j.end() && has_result_shape(kind, *result);
}

upstream::CallResult replace_non_api_answer(upstream::ApiResponse response, Micros wall_now) {
  if (response.status != 429) return upstream::UpstreamErrc::bad_response;
  long seconds = kDefaultRetryAfterSeconds;
  if (response.retry_after) {
    const std::chrono::system_clock::time_point at{std::chrono::microseconds(wall_now)};
    if (auto d = upstream::parse_retry_after(*response.retry_after, at)) {
      seconds = std::max<long>(1, static_cast<long>(d->count()));
    }
  }
  response.body = upstream::envelope_error(upstream::errors::rate_limited(seconds));
  response.retry_after = std::to_string(seconds);
  return response;
}

std::optional<View> view_of(RouteKind kind) {
  switch (kind) {
    case RouteKind::list_stores:
      return View::stores;
    case RouteKind::get_store:
      return View::store;
    case RouteKind::list_secrets:
    case RouteKind::get_secret:
      return View::secrets;
    case RouteKind::get_quota:
      return View::quota;
    default:
      return std::nullopt;
  }
}

std::string_view to_string(View v) {
  switch (v) {
    case View::stores:
      return "stores";
    case View::store:
      return "store";
    case View::secrets:
      return "secrets";
    case View::quota:
      return "quota";
  }
  return "unknown";
}

Micros ttl_of(View v, const config::CacheTtlConfig& ttl) {
  std::int64_t ms = 0;
  switch (v) {
    case View::stores:
      ms = ttl.stores_ms;
      break;
    case View::store:
      ms = ttl.store_ms;
      break;
    case View::secrets:
      ms = ttl.secrets_ms;
      break;
    case View::quota:
      ms = ttl.quota_ms;
      break;
  }
  return ms > 0 ? ms * kMicrosPerMilli : 0;
}

std::string account_prefix(std::string_view account_id) {
  std::string out;
  out.reserve(account_id.size() + 1);
  out.append(account_id).push_back('/');
  return out;
}

std::string store_tag(std::string_view account_id, std::string_view store_id) {
  return tag_of(View::store, account_id, store_id);
}

void tag_of(std::string& out, View v, std::string_view account_id, std::string_view store_id) {
  out.clear();
  out.append(account_id);
  switch (v) {
    case View::stores:
      out.append("/stores");
      break;
    case View::quota:
      out.append("/quota");
      break;
    case View::store:
    case View::secrets:
      out.append("/store/").append(store_id).push_back('/');
      break;
  }
}

std::string tag_of(View v, std::string_view account_id, std::string_view store_id) {
  std::string out;
  tag_of(out, v, account_id, store_id);
  return out;
}

// A view's key is its tag with, for the views under a store, what the entry holds.
void entry_key(std::string& out, View v, std::string_view account_id, std::string_view store_id) {
  tag_of(out, v, account_id, store_id);
  if (v == View::store) out.append("get");
  if (v == View::secrets) out.append("secrets");
}

std::string entry_key(View v, std::string_view account_id, std::string_view store_id) {
  std::string out;
  entry_key(out, v, account_id, store_id);
  return out;
}

std::optional<View> view_of_entry_key(std::string_view key) {
  const auto slash = key.find('/');
  if (slash == 0 || slash == std::string_view::npos || is_memo_key(key)) return std::nullopt;
  const std::string_view rest = key.substr(slash);
  if (rest == "/stores") return View::stores;
  if (rest == "/quota") return View::quota;
  if (!rest.starts_with("/store/")) return std::nullopt;
  const std::string_view in_store = rest.substr(7);
  const auto end = in_store.find('/');
  if (end == 0 || end == std::string_view::npos) return std::nullopt;
  const std::string_view what = in_store.substr(end + 1);
  if (what == "get") return View::store;
  if (what == "secrets") return View::secrets;
  return std::nullopt;
}

std::string memo_tag(View v, std::string_view account_id, std::string_view store_id) {
  return v == View::secrets ? store_tag(account_id, store_id) + "memo"
                            : tag_of(v, account_id, store_id) + "/memo";
}

namespace {

// The part of a memo key both list kinds share: entry, snapshot, paging and ordering.
template <class Query>
void memo_key_paging(std::string& out, std::string_view entry_key, std::uint64_t snapshot_seq,
                     const Query& q) {
  out.clear();
  out.append(entry_key).append("#");
  append_number(out, snapshot_seq);
  out.append("|p");
  append_signed(out, q.page);
  out.append("|n");
  append_signed(out, q.per_page);
  out.append("|o").append(q.order);
  out.append(q.direction == upstream::SortDirection::asc ? "|a" : "|d");
}

// The viewer part of a memo key: "*" for a viewer limited by nothing, else its names,
// each length-prefixed (a name could hold a separator).
void append_viewer(std::string& out, bool unlimited, const std::vector<std::string>& names) {
  out.append("|v");
  if (unlimited) {
    out.push_back('*');
    return;
  }
  for (const auto& s : names) {
    append_number(out, s.size());
    out.push_back(':');
    out.append(s);
  }
}

}  // namespace

// Main entry keys are built from validated (hex) ids and never hold the '#' that
// separates a memo key's entry part from its snapshot sequence.
bool is_memo_key(std::string_view key) noexcept { return key.find('#') != std::string_view::npos; }

void memo_key(std::string& out, std::string_view entry_key, std::uint64_t snapshot_seq,
              const upstream::StoreListQuery& q, const std::vector<std::string>& viewer_stores) {
  memo_key_paging(out, entry_key, snapshot_seq, q);
  append_viewer(out, viewer_stores.empty(), viewer_stores);
}

void memo_key(std::string& out, std::string_view entry_key, std::uint64_t snapshot_seq,
              const upstream::SecretListQuery& q, bool viewer_all,
              const std::vector<std::string>& viewer_services) {
  memo_key_paging(out, entry_key, snapshot_seq, q);
  out.append("|c");
  append_number(out, scope_mask(q.scopes));
  // Length-prefixed: a search text can hold any byte, including our separators.
  out.append("|s");
  append_number(out, q.search.size());
  out.push_back(':');
  out.append(q.search);
  append_viewer(out, viewer_all, viewer_services);
}

Verdict classify(const upstream::ApiResponse& response) {
  const unsigned s = response.status;
  if (s >= 200 && s < 300) return Verdict::store;
  if (s == 429 || s >= 500) return Verdict::failure;
  if (s == 404) {
    auto j = nlohmann::json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    if (has_error_token(j, "store_not_found") || has_error_token(j, "secret_not_found")) {
      return Verdict::negative;
    }
  }
  return Verdict::refuse;
}

Lifetime lifetime(Micros now, Micros ttl, Micros stale_if_error, bool negative) {
  Lifetime l;
  l.fresh_until = now + ttl;
  l.keep_until = negative ? l.fresh_until : l.fresh_until + std::max<Micros>(stale_if_error, 0);
  return l;
}

bool is_fresh(Micros fresh_until, Micros now) { return now < fresh_until; }

bool servable_as_stale(Micros fresh_until, Micros now, Micros stale_if_error) {
  return now - fresh_until < stale_if_error;
}

bool is_positive(const CachedValue& value) noexcept {
  if (value.type() != CachedValue::Type::answer) return true;
  const unsigned status = static_cast<const StoredAnswer&>(value).status();
  return status >= 200 && status < 300;
}

ReadDecision decide_read(const EntryMeta& entry, bool positive, Micros now,
                         const RefreshWindows& windows) {
  if (is_fresh(entry.fresh_until, now)) {
    const Micros window =
        std::min(windows.refresh_ahead, (entry.fresh_until - entry.stored_at) / kRefreshAheadShare);
    const bool ahead = positive && window > 0 && entry.fresh_until - now <= window;
    return {Serve::hit, ahead};
  }
  if (positive && windows.stale_while_revalidate > 0 &&
      now - entry.fresh_until < windows.stale_while_revalidate) {
    return {Serve::stale, true};
  }
  return {Serve::miss, false};
}

std::vector<std::string> invalidated_tags(const upstream::Route& r,
                                          const upstream::ApiResponse* response) {
  std::vector<std::string> tags;
  switch (r.kind) {
    case RouteKind::create_store: {
      tags.push_back(tag_of(View::stores, r.account_id, {}));
      tags.push_back(tag_of(View::quota, r.account_id, {}));
      // The new store cannot have entries unless a client guessed its id; drop them anyway.
      if (response && response->status >= 200 && response->status < 300) {
        auto j = nlohmann::json::parse(response->body, nullptr, false);
        if (j.is_object()) {
          auto res = j.find("result");
          if (res != j.end() && res->is_object()) {
            auto id = res->find("id");
            if (id != res->end() && id->is_string()) {
              tags.push_back(store_tag(r.account_id, id->get_ref<const std::string&>()));
            }
          }
        }
      }
      break;
    }
    case RouteKind::delete_store:
      tags.push_back(tag_of(View::stores, r.account_id, {}));
      tags.push_back(store_tag(r.account_id, r.store_id));
      tags.push_back(tag_of(View::quota, r.account_id, {}));
      break;
    case RouteKind::create_secrets:
    case RouteKind::bulk_delete:
    case RouteKind::patch_secret:
    case RouteKind::delete_secret:
    case RouteKind::duplicate:
      tags.push_back(store_tag(r.account_id, r.store_id));
      tags.push_back(tag_of(View::quota, r.account_id, {}));
      break;
    default:
      break;
  }
  return tags;
}

std::string upstream_target(const upstream::Route& route) {
  std::string target =
      upstream::route_path(route.kind, route.account_id, route.store_id, route.secret_id);
  char sep = '?';
  for (const auto& [k, v] : route.query.items) {
    target.push_back(sep);
    sep = '&';
    append_percent_encoded(target, k);
    target.push_back('=');
    append_percent_encoded(target, v);
  }
  return target;
}

std::string page_target(View v, std::string_view account_id, std::string_view store_id, long page) {
  const auto kind =
      v == View::stores ? upstream::RouteKind::list_stores : upstream::RouteKind::list_secrets;
  std::string target = upstream::route_path(kind, account_id, store_id, {});
  target.append("?per_page=");
  append_signed(target, kFetchPerPage);
  target.append("&page=");
  append_signed(target, page);
  return target;
}

upstream::ApiError transport_error(boost::system::error_code ec) {
  using upstream::UpstreamErrc;
  if (ec.category() == upstream::upstream_category()) {
    switch (static_cast<UpstreamErrc>(ec.value())) {
      case UpstreamErrc::timeout:
        return upstream::errors::gateway_timeout();
      case UpstreamErrc::overloaded:
        return upstream::errors::service_unavailable("upstream_overloaded");
      case UpstreamErrc::circuit_open:
        return upstream::errors::service_unavailable("upstream_circuit_open");
      case UpstreamErrc::shutting_down:
        return upstream::errors::service_unavailable("shutting_down");
      case UpstreamErrc::rate_limited:
        return upstream::errors::rate_limited(1);
      case UpstreamErrc::unreachable:
        return upstream::errors::upstream_failure("unreachable");
      case UpstreamErrc::connection_reset:
        return upstream::errors::upstream_failure("connection_reset");
      case UpstreamErrc::bad_response:
        return upstream::errors::upstream_failure("bad_response");
      case UpstreamErrc::tls_error:
        return upstream::errors::upstream_failure("tls_error");
      case UpstreamErrc::ok:
        break;
    }
  }
  if (ec == boost::system::errc::timed_out) return upstream::errors::gateway_timeout();
  return upstream::errors::upstream_failure("transport_error");
}

}  // namespace sproxy::cache::policy
