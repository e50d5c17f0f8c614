// The audit log: one JSON object per line for every write, every denial and (when
// configured) every read.
//
// Contract: a line holds the time (RFC 3339 UTC), the client's name (null when the
// credential matched no client), method, route template, account, store, secret id and
// name when known, the secrets a batch route touched (ids and names), the decision
// (allow/deny), the HTTP status answered and, for denials, the reason. It never holds a
// secret value, a credential (or its hash) or a request body: the record type has no
// field for them, and the handler fills names only from parsed bodies and answers.
// Lines are built with nlohmann::json (escaping is exact; bytes that are not UTF-8 are
// replaced) and written through a dedicated spdlog logger with the pattern "%v" and a
// flush per line, so a line is complete on disk before the response is sent.
//
// Thread safety: `write` may be called from every io thread at once (the sink's mutex
// serializes lines; nothing awaits while it is held). Errors: `open_audit_log` throws at
// start-up when the file cannot be opened; a failed write later is reported by spdlog's
// error handler and never reaches the request.
#pragma once

#include <spdlog/logger.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "upstream/model.hpp"

namespace sproxy::proxy {

enum class AuditDecision { allow, deny };

struct AuditSecret {
  std::string id;  // empty -> null (e.g. a create that was refused)
  std::optional<std::string> name;
};

struct AuditRecord {
  upstream::Micros time = 0;
  std::optional<std::string> client;  // nullopt: no client matched (or none was presented)
  std::string method;                 // GET, POST, ...
  std::string route;                  // template: /stores/{store_id}/secrets, /admin/purge
  std::string account;                // empty -> null
  std::string store;                  // empty -> null
  std::string secret_id;              // empty -> null
  std::optional<std::string> secret_name;
  // Batch routes (create, bulk delete) and a duplicate's new secret.
  std::vector<AuditSecret> secrets;
  AuditDecision decision = AuditDecision::allow;
  unsigned status = 0;
  std::string reason;  // denials only
};

// The line for `record` (no trailing newline).
std::string audit_line(const AuditRecord& record);

class AuditLog {
 public:
  // `sink` receives one formatted line per record; `reads` turns on read records.
  AuditLog(spdlog::sink_ptr sink, bool reads);

  bool reads() const { return reads_; }
  void write(const AuditRecord& record) const;

 private:
  std::shared_ptr<spdlog::logger> logger_;
  bool reads_;
};

// The audit log the config asks for: nullptr when disabled; stderr for path "", stdout
// for "-", otherwise the file (created if missing, appended to). Throws
// std::runtime_error when the file cannot be opened.
std::shared_ptr<const AuditLog> open_audit_log(const config::AuditConfig& cfg);

}  // namespace sproxy::proxy
