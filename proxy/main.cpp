// secrets-proxy: a caching proxy for the Cloudflare Secrets Store API.
//
// Start-up: parse flags, load and validate the config, build upstream -> cache ->
// handler -> server, print one "listening" line on stdout, then serve until SIGINT or
// SIGTERM and stop gracefully (exit 0). SIGHUP reloads the clients, the admin token, the
// cache's TTLs and the log level and access switch from the same config file without
// touching connections (reload.hpp; a file that does not load is rejected with a log line
// and everything stays as it was). The config file is read with the environment
// overrides (config::load_effective_config), for --check-config too. Any start-up problem
// is one line on stderr and a non-zero exit. Logs (JSON lines by default, access lines
// among them) go where the config's `log` section says (logging.hpp); audit lines go
// where its `audit` section says. With cache.persist.path set, the cache is loaded from
// that file before serving and saved to it periodically and on a graceful stop
// (cache/persist.hpp). With TLS on, SIGHUP also reloads the listener's certificate, key
// and client CA files for new connections (files that do not load: an error line, and
// the current ones stay).
// `secrets-proxy token new ...` prints a new client token and exits.
// `secrets-proxy store rotate-key` re-seals the embedded store of the config under a new
// key (upstream/store_key.hpp), prints what it did and exits.
// Signals: SIGHUP, SIGINT and SIGTERM are blocked from the first instruction until their
// handlers are installed, so one sent during start-up waits and is acted on once the
// process is ready. SIGPIPE is ignored right after (a log reader that goes away costs
// log lines, counted in secrets_proxy_log_write_failures_total, not the process).
// At start the soft RLIMIT_NOFILE is raised to the hard limit; a limit still too low
// for listen.max_connections is one warning line.
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cache/persist.hpp"
#include "cache/read_through.hpp"
#include "config/config.hpp"
#include "proxy/audit.hpp"
#include "proxy/cli.hpp"
#include "proxy/fleet_cache_service.hpp"
#include "proxy/fleet_sync_service.hpp"
#include "proxy/identity.hpp"
#include "proxy/logging.hpp"
#include "proxy/metrics.hpp"
#include "proxy/readiness.hpp"
#include "proxy/reload.hpp"
#include "proxy/request_handler.hpp"
#include "proxy/server.hpp"
#include "upstream/factory.hpp"
#include "upstream/store_key.hpp"

#ifndef SPROXY_VERSION
#error "SPROXY_VERSION must be defined by the build"
#endif

namespace {

namespace asio = boost::asio;
using namespace sproxy;

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

std::string join(const std::vector<std::string>& items, const char* separator) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

// Opens `connections` upstream connections in the calling io thread's pool.
asio::awaitable<void> preconnect_upstream(std::shared_ptr<upstream::Upstream> upstream,
                                          std::size_t connections) {
  const std::size_t open = co_await upstream->preconnect(connections);
  if (open < connections) {
    spdlog::warn("upstream: {} of {} connections opened ahead of requests; calls connect as needed",
                 open, connections);
  }
}

// Fleet mode's Redis connection runs on a thread of its own (commands from the io threads
// hop there and back); stopped and joined on destruction.
class FleetThread {
 public:
  FleetThread() : work_(asio::make_work_guard(context_)) {}
  ~FleetThread() {
    work_.reset();
    context_.stop();
    if (thread_.joinable()) thread_.join();
  }
  FleetThread(const FleetThread&) = delete;
  FleetThread& operator=(const FleetThread&) = delete;

  // Wiring for upstream::make_upstream (starts the thread); mode changes are logged once
  // each.
  upstream::FleetWiring wiring(const config::Config& cfg) {
    if (!thread_.joinable()) thread_ = std::thread([this] { context_.run(); });
    return upstream::FleetWiring{
        context_.get_executor(),
        [share = cfg.fleet.fallback_share](bool shared, const std::string& why) {
          if (shared) {
            spdlog::info("fleet: redis answers; the upstream rate budget is shared by the fleet");
          } else {
            spdlog::warn(
                "fleet: redis cannot be asked ({}); keeping to the local fallback share {} of "
                "the upstream rate budget until it answers",
                why, share);
          }
        }};
  }

 private:
  asio::io_context context_{1};
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread thread_;
};

// The signals whose handlers serve() installs: blocked until then.
sigset_t startup_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// Raises the soft limit on open files to the hard limit; warns when it still leaves no
// room for max_connections clients plus the upstream pools and the process's own files.
void raise_open_file_limit(const config::Config& cfg) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  constexpr std::size_t kOwnFiles = 64;  // listeners, log, audit, store, spare descriptor
  const std::size_t needed =
      cfg.listen.max_connections +
      static_cast<std::size_t>(std::max(1, cfg.listen.threads)) * cfg.upstream.max_connections +
      kOwnFiles;
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < needed) {
    spdlog::warn(
        "open file limit {} is below the {} that listen.max_connections {} needs; clients "
        "beyond it get 503 (raise the hard limit, e.g. LimitNOFILE=)",
        static_cast<unsigned long long>(limit.rlim_cur), needed, cfg.listen.max_connections);
  }
}

// The request path built from the config: upstream -> cache -> handler, and what the
// start-up steps after it need of it. `guard` is null when the upstream is not guarded.
struct RequestPath {
  std::shared_ptr<upstream::GuardedUpstream> guard;
  std::shared_ptr<proxy::MeteredUpstream> upstream;
  std::shared_ptr<cache::ReadThroughCache> cache;
  std::shared_ptr<proxy::ReloadableIdentityResolver> identities;
  std::shared_ptr<proxy::AccessLog> access_log;
  std::shared_ptr<const proxy::RequestHandler> handler;
};

// The fleet's services, kept by the caller (the handler refers to them).
struct FleetServices {
  std::optional<proxy::FleetSyncService> sync;
  std::optional<proxy::FleetCacheService> cache;
};

// In fleet mode `fleet` is set up too.
RequestPath build_request_path(const config::Config& cfg, FleetThread& fleet_thread,
                               const std::shared_ptr<proxy::Metrics>& metrics,
                               std::shared_ptr<spdlog::logger> access_logger,
                               FleetServices& services) {
  std::optional<upstream::FleetWiring> fleet;
  if (cfg.fleet.enabled) fleet = fleet_thread.wiring(cfg);
  const std::shared_ptr<upstream::Upstream> configured = upstream::make_upstream(cfg, fleet);
  const auto guard = std::dynamic_pointer_cast<upstream::GuardedUpstream>(configured);
  // Watched for HTTP answers by the readiness probe, then metered around the guard: it
  // counts what the cache saw, synthesized 429s included.
  const auto reachability = std::make_shared<proxy::UpstreamReachability>(configured);
  auto upstream = std::make_shared<proxy::MeteredUpstream>(reachability, metrics);
  auto cache = std::make_shared<cache::ReadThroughCache>(cfg.cache, upstream);
  auto identities =
      std::make_shared<proxy::ReloadableIdentityResolver>(proxy::make_config_resolver(cfg));
  proxy::HandlerOptions options;
  // Write bodies are checked with the limit of the store that will hold them; a remote
  // upstream is held to the contract's.
  options.max_value_bytes = cfg.upstream.kind == config::UpstreamKind::embedded
                                ? cfg.store.max_value_bytes
                                : upstream::kDefaultMaxValueBytes;
  options.audit = proxy::open_audit_log(cfg.audit);
  options.metrics = metrics;
  options.readiness.embedded_upstream = cfg.upstream.kind == config::UpstreamKind::embedded;
  options.readiness.reachability = reachability;
  options.guard = guard;
  auto access_log =
      std::make_shared<proxy::AccessLog>(std::move(access_logger), cfg.log.format, cfg.log.access);
  options.access_log = access_log;
  // Fleet mode: invalidations across processes (subscribed on the fleet's thread).
  // The second-level cache shared by the fleet (on the same thread, its own connection).
  if (fleet) {
    services.sync.emplace(cfg, fleet->executor, cache, metrics);
    if (cfg.fleet.cache.enabled) services.cache.emplace(cfg, fleet->executor, cache, metrics);
    options.fleet_status = [&services] {
      nlohmann::json status = services.sync->status();
      status["cache"] = services.cache ? services.cache->status() : nlohmann::json(nullptr);
      return status;
    };
    options.fleet_sync = services.sync->sync();
  }
  auto handler = std::make_shared<const proxy::RequestHandler>(cache, identities, options);
  return RequestPath{guard, upstream, cache, identities, access_log, handler};
}

void add_collect_hooks(proxy::Metrics& metrics, const RequestPath& path, proxy::Server& server) {
  // Scrapes arrive only through the server, whose threads have exited before anything
  // these hooks read goes away.
  // Weak: the cache owns the metered upstream, which owns the metrics and so this hook.
  metrics.add_collect_hook([weak = std::weak_ptr(path.cache)](proxy::Metrics& m) {
    if (auto live = weak.lock()) m.refresh(live->stats());
  });
  metrics.add_collect_hook([&server](proxy::Metrics& m) {
    m.refresh_server(server.connection_count(), server.escaped_exceptions(),
                     server.tls_handshake_failures(), server.connections_rejected());
  });
  metrics.add_collect_hook(
      [](proxy::Metrics& m) { m.refresh_log_write_failures(proxy::log_write_failures()); });
  if (path.guard) {
    metrics.add_collect_hook([guard = path.guard](proxy::Metrics& m) {
      m.refresh(guard->stats(), guard->breaker_snapshot(), guard->budget_snapshot());
    });
  }
}

// The first SIGINT/SIGTERM stops gracefully; a second one exits at once.
void stop_on_signals(asio::signal_set& signals, proxy::Server& server, int grace_ms) {
  signals.async_wait(
      [&signals, &server, grace_ms](const boost::system::error_code& ec, int signal_number) {
        if (ec) return;
        spdlog::info("stopping on {} (grace {} ms)", signal_number == SIGINT ? "SIGINT" : "SIGTERM",
                     grace_ms);
        server.stop();
        signals.async_wait([](const boost::system::error_code& again_ec, int) {
          if (again_ec) return;
          spdlog::warn("second signal: exiting without waiting for requests in flight");
          spdlog::shutdown();
          std::_Exit(kExitFailure);
        });
      });
}

// Every handler is in place: signals that came during start-up are delivered now.
void unblock_startup_signals() {
  const sigset_t handled_signals = startup_signals();
  ::pthread_sigmask(SIG_UNBLOCK, &handled_signals, nullptr);
}

// SIGHUP: swap in the identities, cache TTLs and log settings of the config file as it
// is now, and the TLS files. Runs on the signal thread; requests keep using the old ones
// until each swap.
void reload_on_sighup(asio::signal_set& reload_signals, const std::string& config_path,
                      proxy::ReloadTargets targets, proxy::Server& server) {
  reload_signals.async_wait(
      [&reload_signals, &config_path, targets, &server](const boost::system::error_code& ec, int) {
        if (ec) return;
        const proxy::ReloadResult result = proxy::reload_config(config_path, targets);
        if (result.ok) {
          spdlog::info("{}", result.message);
        } else {
          spdlog::error("{}", result.message);
        }
        if (server.tls_enabled()) {
          try {
            server.reload_tls();
            spdlog::info("reloaded the TLS certificate for new connections");
          } catch (const std::exception& e) {
            spdlog::error("TLS reload failed, keeping the current certificate: {}", e.what());
          }
        }
        reload_on_sighup(reload_signals, config_path, targets, server);
        unblock_startup_signals();
      });
}

// Warm start (cache.persist): load the saved cache before serving, save it every
// interval on the persister's thread, and once more after the server has stopped.
void start_persister(std::optional<cache::CachePersister>& persister, const config::Config& cfg,
                     std::shared_ptr<cache::ReadThroughCache> cache) {
  if (cfg.cache.persist.path.empty()) return;
  persister.emplace(
      std::move(cache),
      cache::CachePersister::Options{cfg.cache.persist.path, cache::resolve_persist_key(cfg),
                                     std::chrono::seconds(cfg.cache.persist.interval_s),
                                     cfg.cache.max_bytes + cache::kPersistFileAllowance},
      upstream::wall_clock_micros, [](bool error, const std::string& text) {
        if (error) {
          spdlog::warn("{}", text);
        } else {
          spdlog::info("{}", text);
        }
      });
  persister->load();
  persister->start();
}

// The "listening" line on stdout (the first line there), and what else the process
// serves with in the log.
void announce_start(const config::Config& cfg, const proxy::Server& server,
                    const upstream::Upstream& upstream) {
  const std::string line = proxy::listening_line(server.endpoint(), upstream.describe(),
                                                 cfg.listen.threads, server.tls_enabled());
  std::fputs((line + "\n").c_str(), stdout);
  std::fflush(stdout);
  spdlog::info("started: {}", line);
  if (cfg.fleet.enabled) {
    // After the listening line, which stays the first line on stdout.
    spdlog::info("fleet mode: redis {}, key prefix \"{}\", shared cache {}", cfg.fleet.redis.url,
                 cfg.fleet.key_prefix, cfg.fleet.cache.enabled ? "on" : "off (no fleet.cache key)");
    if (cfg.upstream.kind != config::UpstreamKind::http) {
      spdlog::warn("fleet: upstream.kind \"embedded\" has no rate budget to share");
    }
  }
  if (!cfg.listen.unix_socket.path.empty()) {
    spdlog::info("also listening on unix:{} (mode {:04o})", cfg.listen.unix_socket.path,
                 cfg.listen.unix_socket.mode);
  }
}

int serve(const config::Config& cfg, const std::string& config_path,
          std::shared_ptr<spdlog::logger> access_logger) {
  auto metrics = std::make_shared<proxy::Metrics>(SPROXY_VERSION);
  // Declared before the upstream: the guard's Redis connection lives on this thread.
  FleetThread fleet_thread;
  FleetServices fleet;
  const RequestPath path =
      build_request_path(cfg, fleet_thread, metrics, std::move(access_logger), fleet);
  proxy::Server server(cfg.listen, path.handler);
  add_collect_hooks(*metrics, path, server);

  // Registered before the io threads start, so a signal that arrives early is not lost.
  asio::io_context signal_context{1};
  asio::signal_set signals(signal_context, SIGINT, SIGTERM);
  stop_on_signals(signals, server, cfg.listen.shutdown_grace_ms);
  asio::signal_set reload_signals(signal_context, SIGHUP);
  reload_on_sighup(reload_signals, config_path,
                   proxy::ReloadTargets{path.identities.get(), path.cache.get(),
                                        path.access_log.get(), spdlog::default_logger_raw()},
                   server);
  unblock_startup_signals();

  std::optional<cache::CachePersister> persister;
  start_persister(persister, cfg, path.cache);

  server.start();
  if (cfg.upstream.kind == config::UpstreamKind::http && cfg.upstream.preconnect > 0) {
    server.run_on_each_thread([upstream = path.upstream, n = cfg.upstream.preconnect] {
      return preconnect_upstream(upstream, n);
    });
  }
  announce_start(cfg, server, *path.upstream);
  // Subscribed after the listening line, which stays the first line on stdout.
  if (fleet.sync) fleet.sync->start();

  std::thread signal_thread([&] { signal_context.run(); });
  server.wait();  // returns once a signal has stopped the server and its work is done
  signal_context.stop();
  signal_thread.join();
  if (persister) persister->stop();
  spdlog::info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const sigset_t early_signals = startup_signals();
  ::pthread_sigmask(SIG_BLOCK, &early_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  proxy::CommandLine command;
  try {
    command = proxy::parse_command_line(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::invalid_argument& e) {
    std::cerr << "secrets-proxy: " << e.what() << "\n";
    return kExitUsage;
  }
  if (command.help) {
    std::cout << proxy::usage_text();
    return 0;
  }
  if (command.version) {
    std::cout << "secrets-proxy " << SPROXY_VERSION << "\n";
    return 0;
  }
  if (command.new_token) {
    try {
      std::cout << proxy::new_token_text(*command.new_token, proxy::generate_client_token());
    } catch (const std::exception& e) {
      std::cerr << "secrets-proxy: " << e.what() << "\n";
      return kExitFailure;
    }
    return 0;
  }

  std::string config_path;
  if (command.config_path) {
    config_path = *command.config_path;
  } else if (std::error_code ec; std::filesystem::exists(proxy::kDefaultConfigPath, ec)) {
    config_path = std::string(proxy::kDefaultConfigPath);
  } else {
    std::cerr << "secrets-proxy: no --config given and " << proxy::kDefaultConfigPath
              << " does not exist (see --help)\n";
    return kExitUsage;
  }

  config::Config cfg;
  try {
    cfg = config::load_effective_config(config_path);
  } catch (const config::ConfigError& e) {
    if (command.check_config) {
      for (const auto& problem : e.problems()) std::cerr << problem << "\n";
    } else {
      std::cerr << "secrets-proxy: invalid configuration " << config_path << ": "
                << join(e.problems(), "; ") << "\n";
    }
    return kExitFailure;
  }
  if (command.check_config) {
    std::cout << "config OK" << std::endl;
    return 0;
  }
  if (command.rotate_store_key) {
    try {
      const upstream::KeyRotation rotation = upstream::rotate_store_key(cfg.store);
      const auto& persist = cfg.cache.persist;
      std::cout << proxy::key_rotation_text(
          rotation, !persist.path.empty() && persist.key_env.empty() && persist.key_file.empty());
      return 0;
    } catch (const std::exception& e) {
      std::cerr << "secrets-proxy: " << e.what() << "\n";
      return kExitFailure;
    }
  }

  try {
    auto access_logger = proxy::open_logging(cfg.log);
    raise_open_file_limit(cfg);
    const int code = serve(cfg, config_path, std::move(access_logger));
    spdlog::shutdown();  // flushes a log file's last lines
    return code;
  } catch (const std::exception& e) {
    std::cerr << "secrets-proxy: " << e.what() << "\n";
    return kExitFailure;
  }
}
