// The Secrets Store API model shared by every part of secrets-proxy.
//
// Contract: resources (Store, Secret, Quota), the response envelope, the catalogue of
// API errors, validation of names/scopes/comments/values, identifiers and timestamps,
// exactly as ../shared/api/secrets-store.md specifies. Everything here is a pure value
// type or a pure function: no I/O, no clocks (callers pass `now`), no global state,
// safe to call from any thread.
//
// Errors: functions that can fail return `Result<T>`, an expected-like type holding
// either the value or an `ApiError` (HTTP status + envelope errors). Nothing here throws
// on bad input; the only exceptions are std::bad_alloc.
//
// Secret values never appear in any type of this header except the write inputs
// (`SecretCreate::value`, `SecretPatch::value`), which callers must drop right after the
// write.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace sproxy::upstream {

// ---------------------------------------------------------------------------------------
// Errors

// One entry of the envelope's `errors` / `messages` arrays.
struct ApiMessage {
  int code = 0;
  std::string message;
  // Nested `error_chain` entries (used by the 6003 malformed-Authorization error).
  std::vector<ApiMessage> error_chain;
  bool operator==(const ApiMessage&) const = default;
};

// A failed API call: the HTTP status and the envelope's errors (never empty).
struct ApiError {
  unsigned status = 400;
  std::vector<ApiMessage> errors;
  // Seconds for a `Retry-After` header (rate limiting only).
  std::optional<long> retry_after_seconds;
  bool operator==(const ApiError&) const = default;
};

// The contract's error catalogue. Each returns the exact status, code and message.
namespace errors {
ApiError invalid_json_body();                 // 400 {1001 invalid_json_body}
ApiError validation(std::string_view token);  // 400 {1001 <token>}
ApiError name_taken(std::string_view name);   // 400 {1003 secret_name_already_exists: NAME}
ApiError store_not_found();                   // 404 {1001 store_not_found}
ApiError secret_not_found();                  // 404 {1001 secret_not_found}
ApiError store_not_empty();                   // 409 {1003 store_not_empty}
ApiError maximum_stores_exceeded();           // 400 {1003 maximum_stores_exceeded}
ApiError maximum_secrets_exceeded(long max);  // 400 {1003 maximum_secrets_exceeded: max N}
ApiError secret_value_too_long();             // 400 {1001 secret_value_too_long}
ApiError secret_name_immutable();             // 400 {1001 secret_name_immutable}
ApiError no_route();                          // 404 {7000 No route for that URI}
ApiError invalid_account_route(std::string_view path);  // 400 {7003 Could not route ...},{7000 ...}
ApiError method_not_allowed();                    // 405 {7001 Method not allowed for this route}
ApiError missing_credentials();                   // 400 {9106 Missing X-Auth-Key, ...}
ApiError invalid_request_headers();               // 400 {6003 Invalid request headers}
ApiError malformed_authorization();               // 400 {6003 ...} chain {6111 ...}
ApiError authentication_error();                  // 403 {10000 Authentication error}
ApiError rate_limited(long retry_after_seconds);  // 429 {971 Please wait ...} + Retry-After
ApiError payload_too_large();                     // 413 {1001 request_body_too_large}
ApiError headers_too_large();                     // 431 {1001 request_headers_too_large}
ApiError service_unavailable(std::string_view detail);  // 503 {1002 service_unavailable: detail}
ApiError upstream_failure(std::string_view detail);     // 502 {1002 upstream_unavailable: detail}
ApiError gateway_timeout();                             // 504 {1002 upstream_timeout}
ApiError internal_error();                              // 500 {1002 internal_error}
}  // namespace errors

template <class T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(ApiError error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const ApiError& error() const { return std::get<1>(v_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, ApiError> v_;
};

struct Ok {};
using Status = Result<Ok>;

// ---------------------------------------------------------------------------------------
// Identifiers and time

// Microseconds since the Unix epoch, UTC.
using Micros = std::int64_t;

// The wall clock, in Micros.
inline Micros wall_clock_micros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// True for exactly 32 lowercase hex characters.
bool is_valid_id(std::string_view id);
// A new id: 16 bytes from a CSPRNG (OpenSSL RAND_bytes), version-4 UUID bits, no dashes.
std::string new_id();
// RFC 3339 UTC with microseconds: 2026-03-01T12:00:00.123456Z.
std::string format_timestamp(Micros t);
// The same, appended to `out`.
void append_timestamp(std::string& out, Micros t);
// Parses what format_timestamp writes (and any RFC 3339 UTC 'Z' time with 0..9 fraction
// digits); nullopt when malformed.
std::optional<Micros> parse_timestamp(std::string_view text);

// ---------------------------------------------------------------------------------------
// Resources

inline constexpr std::string_view kScopeNames[] = {"access", "ai_gateway", "containers",
                                                   "dex",    "websearch",  "workers"};

struct Store {
  std::string id;
  std::string account_id;
  std::string name;
  Micros created = 0;
  Micros modified = 0;
  bool operator==(const Store&) const = default;
};

enum class SecretStatus { pending, active };

struct Secret {
  std::string id;
  std::string store_id;
  std::string name;
  std::optional<std::string> comment;
  std::vector<std::string> scopes;  // sorted, unique, each in kScopeNames
  SecretStatus status = SecretStatus::pending;
  Micros created = 0;
  Micros modified = 0;
  bool operator==(const Secret&) const = default;
};

struct Quota {
  long quota = 0;
  long usage = 0;
  bool operator==(const Quota&) const = default;
};

std::string_view to_string(SecretStatus s);
// The inverse of to_string; nullopt for any other name.
std::optional<SecretStatus> secret_status_from(std::string_view name);
// A scope list in the model's form: sorted, each name once.
void sort_unique(std::vector<std::string>& scopes);

nlohmann::json to_json(const Store& s);
nlohmann::json to_json(const Secret& s);
// Appends exactly the bytes of to_json(s) dumped compactly, without building a JSON value
// (whole-store snapshots serialize every secret this way).
void append_json(std::string& out, const Secret& s);
nlohmann::json to_json(const Quota& q);
// Parse resources as an upstream returns them (used by the cache to build snapshots).
Result<Store> store_from_json(const nlohmann::json& j);
Result<Secret> secret_from_json(const nlohmann::json& j);
Result<Quota> quota_from_json(const nlohmann::json& j);

// ---------------------------------------------------------------------------------------
// Validation of write inputs

// Name rule shared by secrets and stores: ^[A-Za-z0-9_-]{1,255}$.
// Empty: secret_name_empty; otherwise invalid: secret_name_invalid.
Status validate_name(std::string_view name);
// Non-empty array of known scopes; returns them sorted and de-duplicated.
// Wrong shape, empty or unknown: secret_scope_invalid (create and duplicate bodies answer
// an empty array with secret_scopes_empty before this check).
Result<std::vector<std::string>> validate_scopes(const nlohmann::json& scopes);
bool is_known_scope(std::string_view scope);
// At most 4096 bytes: otherwise secret_comment_too_long. JSON null means "unset".
Result<std::optional<std::string>> validate_comment(const nlohmann::json& comment);
// 1..max_bytes of valid UTF-8: empty -> secret_value_empty, too long -> secret_value_too_long,
// not UTF-8 -> secret_value_invalid.
Status validate_value(std::string_view value, std::size_t max_bytes);

inline constexpr std::size_t kMaxCommentBytes = 4096;
inline constexpr std::size_t kDefaultMaxValueBytes = 65536;

// Parsed, validated write bodies.
struct StoreCreate {
  std::string name;
};
struct SecretCreate {
  std::string name;
  std::string value;  // plaintext: drop right after the write
  std::vector<std::string> scopes;
  std::optional<std::string> comment;
};
struct SecretPatch {
  std::optional<std::string> value;  // plaintext: drop right after the write
  std::optional<std::vector<std::string>> scopes;
  // Outer optional: present in the body; inner: JSON null clears the comment.
  std::optional<std::optional<std::string>> comment;
  bool empty() const { return !value && !scopes && !comment; }
};
struct SecretDuplicate {
  std::string name;
  std::vector<std::string> scopes;
  std::optional<std::string> comment;
};
struct BulkDelete {
  std::vector<std::string> ids;
};

// Body parsers: malformed JSON or wrong shape -> invalid_json_body; rule violations ->
// the contract's token. Unknown keys are ignored (the real API tolerates them).
Result<StoreCreate> parse_store_create(std::string_view body);
Result<std::vector<SecretCreate>> parse_secret_create(std::string_view body,
                                                      std::size_t max_value_bytes);
Result<SecretPatch> parse_secret_patch(std::string_view body, std::size_t max_value_bytes);
Result<SecretDuplicate> parse_secret_duplicate(std::string_view body);
Result<BulkDelete> parse_bulk_delete(std::string_view body);

// ---------------------------------------------------------------------------------------
// Envelope

struct ResultInfo {
  long page = 1;
  long per_page = 20;
  long count = 0;
  long total_count = 0;
  long total_pages = 0;
  bool operator==(const ResultInfo&) const = default;
};

// {"success":true,"errors":[],"messages":[],"result":<result>[,"result_info":{...}]}
std::string envelope_success(const nlohmann::json& result,
                             const std::optional<ResultInfo>& info = std::nullopt);
// The same around `result_json`, already serialized (compact, as `envelope_success`
// writes it). Without `info` the envelope is exactly kEnvelopeSuccessHead, the result,
// then '}'.
inline constexpr std::string_view kEnvelopeSuccessHead =
    R"({"success":true,"errors":[],"messages":[],"result":)";
std::string envelope_success_raw(std::string_view result_json,
                                 const std::optional<ResultInfo>& info = std::nullopt);
// The same, appended to `out`.
void append_envelope_success_raw(std::string& out, std::string_view result_json,
                                 const std::optional<ResultInfo>& info);
// {"success":false,"errors":[...],"messages":[],"result":null}
std::string envelope_error(const ApiError& error);
nlohmann::json to_json(const ResultInfo& info);

}  // namespace sproxy::upstream
