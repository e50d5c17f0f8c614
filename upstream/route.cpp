#include "upstream/route.hpp"

#include <algorithm>
#include <array>

namespace sproxy::upstream {

Method method_from_string(std::string_view m) {
  // HTTP methods are case-sensitive (RFC 9110 9.1).
  if (m == "GET") return Method::get;
  if (m == "POST") return Method::post;
  if (m == "PATCH") return Method::patch;
  if (m == "PUT") return Method::put;
  if (m == "DELETE") return Method::del;
  if (m == "HEAD") return Method::head;
  return Method::other;
}

std::string_view to_string(Method m) {
  switch (m) {
    case Method::get:
      return "GET";
    case Method::post:
      return "POST";
    case Method::patch:
      return "PATCH";
    case Method::put:
      return "PUT";
    case Method::del:
      return "DELETE";
    case Method::head:
      return "HEAD";
    case Method::other:
      return "OTHER";
  }
  return "OTHER";
}

std::string_view route_template(RouteKind k) {
  switch (k) {
    case RouteKind::list_stores:
    case RouteKind::create_store:
      return "/stores";
    case RouteKind::get_store:
    case RouteKind::delete_store:
      return "/stores/{store_id}";
    case RouteKind::list_secrets:
    case RouteKind::create_secrets:
    case RouteKind::bulk_delete:
      return "/stores/{store_id}/secrets";
    case RouteKind::get_secret:
    case RouteKind::patch_secret:
    case RouteKind::delete_secret:
      return "/stores/{store_id}/secrets/{secret_id}";
    case RouteKind::duplicate:
      return "/stores/{store_id}/secrets/{secret_id}/duplicate";
    case RouteKind::get_quota:
      return "/quota";
  }
  return "";
}

bool is_write(RouteKind k) {
  switch (k) {
    case RouteKind::create_store:
    case RouteKind::delete_store:
    case RouteKind::create_secrets:
    case RouteKind::bulk_delete:
    case RouteKind::patch_secret:
    case RouteKind::delete_secret:
    case RouteKind::duplicate:
      return true;
    case RouteKind::list_stores:
    case RouteKind::get_store:
    case RouteKind::list_secrets:
    case RouteKind::get_secret:
    case RouteKind::get_quota:
      return false;
  }
  return false;
}

// ---------------------------------------------------------------------------------------
// Query strings

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decoding; a '%' not followed by two hex digits is kept literally.
std::string percent_decode(std::string_view in, bool plus_is_space) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    if (c == '%' && i + 2 < in.size()) {
      const int hi = hex_value(in[i + 1]);
      const int lo = hex_value(in[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += (plus_is_space && c == '+') ? ' ' : c;
  }
  return out;
}

}  // namespace

const std::string* QueryParams::find(std::string_view key) const {
  for (const auto& [k, v] : items) {
    if (k == key) return &v;
  }
  return nullptr;
}

std::vector<std::string> QueryParams::all(std::string_view key) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : items) {
    if (k == key) out.push_back(v);
  }
  return out;
}

QueryParams parse_query(std::string_view query) {
  QueryParams q;
  parse_query_into(query, q);
  return q;
}

void parse_query_into(std::string_view query, QueryParams& q) {
  q.items.clear();
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (part.empty()) continue;  // "a=1&&b=2", a trailing '&'
    const std::size_t eq = part.find('=');
    if (eq == std::string_view::npos) {
      q.items.emplace_back(percent_decode(part, true), std::string{});
    } else {
      q.items.emplace_back(percent_decode(part.substr(0, eq), true),
                           percent_decode(part.substr(eq + 1), true));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Routes

namespace {

constexpr std::string_view kAccountsPrefix = "/client/v4/accounts/";

// At most this many path segments after the accounts prefix name a route: account,
// "secrets_store", "stores", store, "secrets", secret, "duplicate".
constexpr std::size_t kMaxRouteSegments = 7;

// The path's segments after the accounts prefix, percent-decoded. Decoding copies only
// segments that hold a '%'; the others are views into the target. Routing needs no
// more than kMaxRouteSegments of them: past that, only the count and the first (the
// account) matter.
struct PathSegments {
  std::array<std::string_view, kMaxRouteSegments> view;
  std::array<std::string, kMaxRouteSegments> decoded;
  std::size_t count = 0;  // every segment, also those past the array
  bool any_empty_or_dot = false;

  const std::string_view& operator[](std::size_t i) const { return view[i]; }
};

bool is_empty_or_dot(std::string_view s) { return s.empty() || s == "." || s == ".."; }

Status allow(Method method, Method allowed, RouteKind kind, Route& route) {
  if (method != allowed) return errors::method_not_allowed();
  route.kind = kind;
  return Ok{};
}

// Characters that may appear unencoded in a path segment built by route_path.
bool is_unreserved(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '~';
}

// Ids are taken verbatim from clients, so they are encoded when a path is rebuilt: a
// '/', '?', '.' or '..' in an id must never turn into a different upstream route.
void append_segment(std::string& out, std::string_view segment) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (char c : segment) {
    if (is_unreserved(c)) {
      out += c;
    } else {
      const auto b = static_cast<unsigned char>(c);
      out += '%';
      out += kHex[b >> 4];
      out += kHex[b & 0x0f];
    }
  }
}

}  // namespace

Status parse_route_into(Method method, std::string_view target, Route& route) {
  const std::size_t qmark = target.find('?');
  const std::string_view path = target.substr(0, qmark);
  const std::string_view query =
      qmark == std::string_view::npos ? std::string_view{} : target.substr(qmark + 1);

  if (!path.starts_with(kAccountsPrefix)) return errors::no_route();
  std::string_view rest = path.substr(kAccountsPrefix.size());
  // raw[0] is the account; something must follow it ("/accounts/{x}/..."). One trailing
  // slash is tolerated when at least two segments precede it.
  std::size_t raw_count = static_cast<std::size_t>(std::count(rest.begin(), rest.end(), '/')) + 1;
  if (raw_count >= 3 && rest.ends_with('/')) {
    rest.remove_suffix(1);
    --raw_count;
  }
  PathSegments seg;
  seg.count = raw_count;
  for (std::size_t i = 0, start = 0; i < raw_count; ++i) {
    const std::size_t slash = rest.find('/', start);
    const std::string_view raw = rest.substr(start, slash - start);
    start = slash + 1;
    if (i < 2 && raw.empty()) return errors::no_route();
    std::string_view decoded = raw;
    if (raw.find('%') != std::string_view::npos) {
      if (i >= kMaxRouteSegments) {
        seg.any_empty_or_dot = seg.any_empty_or_dot || is_empty_or_dot(percent_decode(raw, false));
        continue;
      }
      seg.decoded[i] = percent_decode(raw, false);
      decoded = seg.decoded[i];
    }
    seg.any_empty_or_dot = seg.any_empty_or_dot || is_empty_or_dot(decoded);
    if (i < kMaxRouteSegments) seg.view[i] = decoded;
  }
  if (raw_count < 2) return errors::no_route();
  if (!is_valid_id(seg[0])) return errors::invalid_account_route(path);
  // Empty and dot segments name nothing; rejecting them here means no path normalisation
  // anywhere downstream can turn one route into another.
  if (seg.any_empty_or_dot) return errors::no_route();
  if (seg[1] != "secrets_store") return errors::no_route();

  const std::size_t n = seg.count - 2;  // segments after "secrets_store"
  if (n > 5) return errors::no_route();
  const auto at = [&](std::size_t i) -> std::string_view { return seg[i + 2]; };

  route.account_id.assign(seg[0]);
  route.store_id.clear();
  route.secret_id.clear();

  if (n == 1 && at(0) == "quota") {
    parse_query_into(query, route.query);
    return allow(method, Method::get, RouteKind::get_quota, route);
  }
  if (n == 0 || at(0) != "stores" || n > 5) return errors::no_route();
  if (n >= 2) route.store_id.assign(at(1));
  if (n >= 3 && at(2) != "secrets") return errors::no_route();
  if (n >= 4) route.secret_id.assign(at(3));
  if (n == 5 && at(4) != "duplicate") return errors::no_route();
  parse_query_into(query, route.query);

  switch (n) {
    case 1:
      if (method == Method::get) return allow(method, method, RouteKind::list_stores, route);
      return allow(method, Method::post, RouteKind::create_store, route);
    case 2:
      if (method == Method::get) return allow(method, method, RouteKind::get_store, route);
      return allow(method, Method::del, RouteKind::delete_store, route);
    case 3:
      if (method == Method::get) {
        return allow(method, method, RouteKind::list_secrets, route);
      }
      if (method == Method::post) {
        return allow(method, method, RouteKind::create_secrets, route);
      }
      return allow(method, Method::del, RouteKind::bulk_delete, route);
    case 4:
      if (method == Method::get) return allow(method, method, RouteKind::get_secret, route);
      if (method == Method::patch) {
        return allow(method, method, RouteKind::patch_secret, route);
      }
      return allow(method, Method::del, RouteKind::delete_secret, route);
    default:
      return allow(method, Method::post, RouteKind::duplicate, route);
  }
}

Result<Route> parse_route(Method method, std::string_view target) {
  Route route;
  if (auto parsed = parse_route_into(method, target, route); !parsed) return parsed.error();
  return route;
}

std::string route_path(RouteKind kind, std::string_view account_id, std::string_view store_id,
                       std::string_view secret_id) {
  std::string out(kAccountsPrefix);
  append_segment(out, account_id);
  out += "/secrets_store";
  if (kind == RouteKind::get_quota) {
    out += "/quota";
    return out;
  }
  out += "/stores";
  if (kind == RouteKind::list_stores || kind == RouteKind::create_store) return out;
  out += '/';
  append_segment(out, store_id);
  if (kind == RouteKind::get_store || kind == RouteKind::delete_store) return out;
  out += "/secrets";
  if (kind == RouteKind::list_secrets || kind == RouteKind::create_secrets ||
      kind == RouteKind::bulk_delete) {
    return out;
  }
  out += '/';
  append_segment(out, secret_id);
  if (kind == RouteKind::duplicate) out += "/duplicate";
  return out;
}

}  // namespace sproxy::upstream
