#include "proxy/audit.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>

namespace sproxy::proxy {
namespace {

using ordered_json = nlohmann::ordered_json;

ordered_json string_or_null(const std::string& s) {
  if (s.empty()) return nullptr;
  return s;
}

ordered_json optional_or_null(const std::optional<std::string>& s) {
  if (!s) return nullptr;
  return *s;
}

}  // namespace

std::string audit_line(const AuditRecord& r) {
  // Fixed key order, so lines read the same way every time.
  ordered_json j;
  j["time"] = upstream::format_timestamp(r.time);
  j["client"] = optional_or_null(r.client);
  j["method"] = r.method;
  j["route"] = r.route;
  j["account"] = string_or_null(r.account);
  j["store"] = string_or_null(r.store);
  j["secret_id"] = string_or_null(r.secret_id);
  j["secret_name"] = optional_or_null(r.secret_name);
  if (!r.secrets.empty()) {
    ordered_json secrets = ordered_json::array();
    for (const auto& s : r.secrets) {
      secrets.push_back(
          ordered_json{{"id", string_or_null(s.id)}, {"name", optional_or_null(s.name)}});
    }
    j["secrets"] = std::move(secrets);
  }
  j["decision"] = r.decision == AuditDecision::allow ? "allow" : "deny";
  j["status"] = r.status;
  if (r.decision == AuditDecision::deny) j["reason"] = r.reason;
  // Ids come from request paths: replace bytes that are not UTF-8 instead of throwing.
  return j.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
}

AuditLog::AuditLog(spdlog::sink_ptr sink, bool reads)
    : logger_(std::make_shared<spdlog::logger>("audit", std::move(sink))), reads_(reads) {
  // Not registered globally: several instances (tests) may exist at once.
  logger_->set_pattern("%v");
  logger_->set_level(spdlog::level::info);
  logger_->flush_on(spdlog::level::info);
}

void AuditLog::write(const AuditRecord& record) const {
  const std::string line = audit_line(record);
  // The string_view overload writes the line as it is (no format-string expansion).
  logger_->log(spdlog::source_loc{}, spdlog::level::info, spdlog::string_view_t(line));
}

std::shared_ptr<const AuditLog> open_audit_log(const config::AuditConfig& cfg) {
  if (!cfg.enabled) return nullptr;
  spdlog::sink_ptr sink;
  if (cfg.path.empty()) {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  } else if (cfg.path == "-") {
    sink = std::make_shared<spdlog::sinks::stdout_sink_mt>();
  } else {
    try {
      sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(cfg.path, /*truncate=*/false);
    } catch (const spdlog::spdlog_ex& e) {
      throw std::runtime_error("cannot open audit log " + cfg.path + ": " + e.what());
    }
  }
  return std::make_shared<const AuditLog>(std::move(sink), cfg.reads);
}

}  // namespace sproxy::proxy
