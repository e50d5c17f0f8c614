// Request targets as a client sends them: routing (upstream::parse_route), query strings
// (parse_query) and list queries (parse_*_list_query) answered by the list engine.
// Properties checked for every input:
// - parse_route_into with a scratch route that held another route gives what
//   parse_route gives (the same route, or the same error);
// - an accepted route rebuilt with route_path and parsed again is the same route (ids
//   with '/', '?', '%' or dots never turn into another route);
// - errors are the routing errors (400, 404, 405) with a non-empty envelope;
// - an accepted list query has bounded paging and known, sorted scopes, and answering it
//   over a small store pages consistently (count, total_count, total_pages).
// Input: first byte the method, the rest the request target.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_check.hpp"
#include "upstream/list_query.hpp"
#include "upstream/route.hpp"

namespace {

using namespace sproxy;
using upstream::Method;
using upstream::Route;
using upstream::RouteKind;

bool same_route(const Route& a, const Route& b) {
  return a.kind == b.kind && a.account_id == b.account_id && a.store_id == b.store_id &&
         a.secret_id == b.secret_id && a.query.items == b.query.items;
}

std::vector<upstream::Secret> sample_secrets() {
  std::vector<upstream::Secret> out;
  const char* names[] = {"api_key", "DB_PASSWORD", "token-2", "Zeta", "alpha"};
  for (int i = 0; i < 5; ++i) {
    upstream::Secret s;
    s.id = std::string(31, 'a') + static_cast<char>('0' + i);
    s.store_id = std::string(32, 'b');
    s.name = names[i];
    if (i % 2 == 0) s.comment = "rotated by " + std::string(names[4 - i]);
    s.scopes = i % 3 == 0 ? std::vector<std::string>{"access", "workers"}
                          : std::vector<std::string>{"workers"};
    s.status = i % 2 == 0 ? upstream::SecretStatus::active : upstream::SecretStatus::pending;
    s.created = 1'700'000'000'000'000 + i * 7;
    s.modified = s.created + (5 - i);
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<upstream::Store> sample_stores() {
  std::vector<upstream::Store> out;
  for (int i = 0; i < 4; ++i) {
    upstream::Store s;
    s.id = std::string(31, 'c') + static_cast<char>('0' + i);
    s.account_id = std::string(32, 'd');
    s.name = "store_" + std::to_string(3 - i);
    s.created = 1'700'000'000'000'000 + (i % 2);
    s.modified = s.created;
    out.push_back(std::move(s));
  }
  return out;
}

template <class Query>
void check_paging(const Query& q) {
  fuzz::check(q.page >= 1 && q.page <= 1'000'000'000, "page out of bounds");
  fuzz::check(q.per_page >= 1 && q.per_page <= upstream::kMaxPerPage, "per_page out of bounds");
}

template <class T>
void check_page(const upstream::Page<T>& page, long per_page, std::size_t total) {
  const upstream::ResultInfo& info = page.info;
  fuzz::check(info.count == static_cast<long>(page.items.size()), "count is not the items");
  fuzz::check(info.count <= per_page, "more items than per_page");
  fuzz::check(info.total_count <= static_cast<long>(total), "total_count beyond the data");
  fuzz::check(info.total_pages == (info.total_count + per_page - 1) / per_page,
              "total_pages does not match total_count");
  const auto envelope = upstream::list_envelope(page);
  fuzz::check(nlohmann::json::accept(envelope), "list envelope is not JSON");
}

void check_list_query(const Route& route) {
  if (route.kind == RouteKind::list_stores) {
    auto q = upstream::parse_store_list_query(route.query);
    if (!q) return;
    check_paging(*q);
    static const auto stores = sample_stores();
    check_page(upstream::query_stores(stores, *q), q->per_page, stores.size());
  } else if (route.kind == RouteKind::list_secrets) {
    auto q = upstream::parse_secret_list_query(route.query);
    if (!q) return;
    check_paging(*q);
    for (std::size_t i = 0; i < q->scopes.size(); ++i) {
      fuzz::check(upstream::is_known_scope(q->scopes[i]), "an unknown scope was accepted");
      fuzz::check(i == 0 || q->scopes[i - 1] < q->scopes[i], "scopes not sorted and unique");
    }
    static const auto secrets = sample_secrets();
    check_page(upstream::query_secrets(secrets, *q), q->per_page, secrets.size());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  static constexpr Method kMethods[] = {Method::get, Method::post, Method::patch, Method::put,
                                        Method::del, Method::head, Method::other};
  const Method method = kMethods[data[0] % std::size(kMethods)];
  const std::string_view target = fuzz::as_text(data + 1, size - 1);

  const auto parsed = upstream::parse_route(method, target);
  // A scratch route that held another route, as the proxy's per-thread one does.
  static Route scratch;
  const auto reused = upstream::parse_route_into(method, target, scratch);
  fuzz::check(parsed.ok() == reused.ok(), "parse_route_into disagrees with parse_route");
  if (!parsed) {
    const unsigned status = parsed.error().status;
    fuzz::check(status == 400 || status == 404 || status == 405, "not a routing error");
    fuzz::check(!parsed.error().errors.empty(), "an error without messages");
    fuzz::check(parsed.error() == reused.error(), "parse_route_into gives another error");
    return 0;
  }
  const Route& route = *parsed;
  fuzz::check(same_route(route, scratch), "parse_route_into reads another route");
  fuzz::check(upstream::is_valid_id(route.account_id), "account id not validated");

  const std::string path =
      upstream::route_path(route.kind, route.account_id, route.store_id, route.secret_id);
  const auto again = upstream::parse_route(method, path);
  fuzz::check(again.ok(), "route_path of an accepted route does not route", path);
  fuzz::check(again->kind == route.kind && again->account_id == route.account_id &&
                  again->store_id == route.store_id && again->secret_id == route.secret_id,
              "route_path names another route", path);

  const std::size_t qmark = target.find('?');
  const std::string_view query =
      qmark == std::string_view::npos ? std::string_view{} : target.substr(qmark + 1);
  fuzz::check(upstream::parse_query(query).items == route.query.items,
              "the route's query is not parse_query's");
  check_list_query(route);
  return 0;
}
