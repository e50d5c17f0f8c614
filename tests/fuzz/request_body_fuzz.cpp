// Every JSON request body a client can send: store create, secret create, patch,
// duplicate, bulk delete (upstream/model.*), the admin purge (proxy::parse_purge_request)
// and the handler's write-body check (proxy::check_write_body). Properties:
// - a refusal is a 400 whose error envelope is valid JSON;
// - what a parser accepts obeys the model's rules (names, scopes sorted, unique and
//   known, comments bounded, values UTF-8 within the limit, ids unique), and written
//   back as JSON it parses again to the same thing;
// - the write-body check agrees with the parser it wraps.
// Input: first byte picks the parser (and a small or the default value limit), the rest
// is the body.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "proxy/identity.hpp"
#include "proxy/request_handler.hpp"
#include "tests/fuzz/fuzz_check.hpp"
#include "upstream/model.hpp"

namespace {

using namespace sproxy;
using nlohmann::json;
using upstream::ApiError;

template <class T>
bool refused(const upstream::Result<T>& r) {
  if (r) return false;
  const ApiError& e = r.error();
  fuzz::check(e.status == 400, "a body refused with a status other than 400");
  fuzz::check(!e.errors.empty(), "a refusal without messages");
  fuzz::check(json::accept(upstream::envelope_error(e)), "an error envelope is not JSON");
  return true;
}

void check_name(const std::string& name) {
  fuzz::check(upstream::validate_name(name).ok(), "an invalid name was accepted", name);
}

void check_scopes(const std::vector<std::string>& scopes) {
  fuzz::check(!scopes.empty(), "empty scopes were accepted");
  for (std::size_t i = 0; i < scopes.size(); ++i) {
    fuzz::check(upstream::is_known_scope(scopes[i]), "an unknown scope was accepted");
    fuzz::check(i == 0 || scopes[i - 1] < scopes[i], "scopes not sorted and unique");
  }
}

void check_comment(const std::optional<std::string>& comment) {
  fuzz::check(!comment || comment->size() <= upstream::kMaxCommentBytes, "a comment too long");
}

json comment_json(const std::optional<std::string>& comment) {
  return comment ? json(*comment) : json(nullptr);
}

void store_create(std::string_view body) {
  const auto r = upstream::parse_store_create(body);
  if (refused(r)) return;
  check_name(r->name);
  const auto again = upstream::parse_store_create(json{{"name", r->name}}.dump());
  fuzz::check(again.ok() && again->name == r->name, "a store create does not round-trip");
}

void secret_create(std::string_view body, std::size_t max_value) {
  const auto r = upstream::parse_secret_create(body, max_value);
  if (refused(r)) return;
  json items = json::array();
  for (std::size_t i = 0; i < r->size(); ++i) {
    const auto& c = (*r)[i];
    check_name(c.name);
    fuzz::check(upstream::validate_value(c.value, max_value).ok(), "an invalid value accepted");
    check_scopes(c.scopes);
    check_comment(c.comment);
    for (std::size_t k = 0; k < i; ++k) fuzz::check((*r)[k].name != c.name, "a name twice");
    json item = {{"name", c.name}, {"value", c.value}, {"scopes", c.scopes}};
    if (c.comment) item["comment"] = *c.comment;
    items.push_back(std::move(item));
  }
  const auto again = upstream::parse_secret_create(items.dump(), max_value);
  fuzz::check(again.ok() && again->size() == r->size(), "a secret create does not round-trip");
  for (std::size_t i = 0; i < r->size(); ++i) {
    const auto &a = (*r)[i], &b = (*again)[i];
    fuzz::check(
        a.name == b.name && a.value == b.value && a.scopes == b.scopes && a.comment == b.comment,
        "a secret create reads back differently");
  }
}

void secret_patch(std::string_view body, std::size_t max_value) {
  const auto r = upstream::parse_secret_patch(body, max_value);
  if (refused(r)) return;
  json again_body = json::object();
  if (r->value) {
    fuzz::check(upstream::validate_value(*r->value, max_value).ok(), "an invalid value accepted");
    again_body["value"] = *r->value;
  }
  if (r->scopes) {
    check_scopes(*r->scopes);
    again_body["scopes"] = *r->scopes;
  }
  if (r->comment) {
    check_comment(*r->comment);
    again_body["comment"] = comment_json(*r->comment);
  }
  const auto again = upstream::parse_secret_patch(again_body.dump(), max_value);
  fuzz::check(again.ok() && again->value == r->value && again->scopes == r->scopes &&
                  again->comment == r->comment,
              "a patch does not round-trip");
}

void secret_duplicate(std::string_view body) {
  const auto r = upstream::parse_secret_duplicate(body);
  if (refused(r)) return;
  check_name(r->name);
  check_scopes(r->scopes);
  check_comment(r->comment);
  json again_body = {{"name", r->name}, {"scopes", r->scopes}};
  if (r->comment) again_body["comment"] = *r->comment;
  const auto again = upstream::parse_secret_duplicate(again_body.dump());
  fuzz::check(again.ok() && again->name == r->name && again->scopes == r->scopes &&
                  again->comment == r->comment,
              "a duplicate does not round-trip");
}

void bulk_delete(std::string_view body) {
  const auto r = upstream::parse_bulk_delete(body);
  if (refused(r)) return;
  fuzz::check(!r->ids.empty(), "a bulk delete without ids");
  for (std::size_t i = 0; i < r->ids.size(); ++i) {
    for (std::size_t k = 0; k < i; ++k) fuzz::check(r->ids[k] != r->ids[i], "an id twice");
  }
  const auto again = upstream::parse_bulk_delete(json{{"ids", r->ids}}.dump());
  fuzz::check(again.ok() && again->ids == r->ids, "a bulk delete does not round-trip");
}

void purge(std::string_view body) {
  const auto r = proxy::parse_purge_request(body);
  if (refused(r)) return;
  fuzz::check(r->account_id.empty() || upstream::is_valid_id(r->account_id), "bad account id");
  fuzz::check(r->store_id.empty() || upstream::is_valid_id(r->store_id), "bad store id");
  fuzz::check(r->store_id.empty() || !r->account_id.empty(), "a store without its account");
  const auto scope = r->scope();
  fuzz::check(scope == (r->account_id.empty() ? "all"
                        : r->store_id.empty() ? "account"
                                              : "store"),
              "purge scope does not match the ids");
}

// The handler's check agrees with the parser it wraps (same verdict, same names/ids).
void write_body_check(std::string_view body, std::size_t max_value, unsigned which) {
  static const proxy::Identity writer = [] {
    proxy::Identity id;
    id.name = "writer";
    id.services = {"workers"};
    id.accounts = {"*"};
    id.permissions = static_cast<unsigned>(proxy::Permission::write);
    return id;
  }();
  using upstream::RouteKind;
  static constexpr RouteKind kKinds[] = {RouteKind::create_secrets, RouteKind::patch_secret,
                                         RouteKind::duplicate, RouteKind::bulk_delete};
  const RouteKind kind = kKinds[which % 4];
  const proxy::WriteBodyCheck c = proxy::check_write_body(kind, body, writer, max_value);
  bool parser_ok = false;
  switch (kind) {
    case RouteKind::create_secrets:
      parser_ok = upstream::parse_secret_create(body, max_value).ok();
      break;
    case RouteKind::patch_secret:
      parser_ok = upstream::parse_secret_patch(body, max_value).ok();
      break;
    case RouteKind::duplicate:
      parser_ok = upstream::parse_secret_duplicate(body).ok();
      break;
    default:
      parser_ok = upstream::parse_bulk_delete(body).ok();
      break;
  }
  fuzz::check(parser_ok == !c.invalid.has_value(), "check_write_body disagrees with its parser");
  for (const auto& name : c.names) check_name(name);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned which = data[0] & 0x0f;
  const std::size_t max_value = (data[0] & 0x10) ? 16 : upstream::kDefaultMaxValueBytes;
  const std::string_view body = fuzz::as_text(data + 1, size - 1);
  switch (which % 7) {
    case 0:
      store_create(body);
      break;
    case 1:
      secret_create(body, max_value);
      break;
    case 2:
      secret_patch(body, max_value);
      break;
    case 3:
      secret_duplicate(body);
      break;
    case 4:
      bulk_delete(body);
      break;
    case 5:
      purge(body);
      break;
    default:
      write_body_check(body, max_value, data[0] >> 5);
      break;
  }
  return 0;
}
