// RedisServer: a real `redis-server` child process for one test, configured entirely by a
// config file in its own temp dir (nothing from /etc): no persistence, the default user
// disabled and one ACL user with a random password, listening on
// - a free loopback TCP port (127.0.0.1; a fresh port is picked again when the one
//   chosen was taken meanwhile), plain or TLS (RedisServerOptions::tls: a throwaway CA
//   and a server certificate for 127.0.0.1 / localhost, generated at test time), and
// - always a Unix socket in the temp dir, which the fixture's own admin connection uses
//   (also under TLS) and which tests may point a client at.
// Start-up waits until the server answers PING; stop() sends SIGTERM and reaps it;
// start() brings it back on the same port and socket (an outage in a test).
// `command` runs one command on a fresh blocking hiredis connection (as the ACL user), for
// setting up and inspecting state independently of the code under test.
//
// Every wait is bounded (kRedisDeadline). Not thread-safe; header-only; link
// sproxy_test_redis (hiredis, OpenSSL).
#pragma once

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <openssl/rand.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/temp_dir.hpp"
#include "tests/support/test_certs.hpp"

extern char** environ;

namespace sproxy::test {

inline constexpr auto kRedisDeadline = std::chrono::seconds(20);

struct RedisServerOptions {
  bool tls = false;  // the TCP port speaks TLS only
  // The only name in the server certificate (DNS SAN and CN); empty: localhost,
  // 127.0.0.1 and ::1.
  std::string tls_name;
  std::string user = "sproxy";
};

// A reply of the fixture's admin connection, flattened to text for assertions.
struct RedisAdminReply {
  int type = 0;  // REDIS_REPLY_*
  std::string text;
  long long integer = 0;
  std::vector<std::string> elements;  // of an array: each element's text
};

class RedisServer {
 public:
  explicit RedisServer(RedisServerOptions options = {}) : options_(std::move(options)) {
    password_ = random_hex(16);
    socket_path_ = dir_.path() / "redis.sock";
    if (options_.tls) write_certificates();
    for (int attempt = 0; attempt < kPortAttempts; ++attempt) {
      port_ = free_loopback_port();
      if (launch()) return;
    }
    throw std::runtime_error("redis-server did not start: " + log());
  }
  ~RedisServer() { stop(); }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  std::uint16_t port() const { return port_; }
  const std::filesystem::path& socket_path() const { return socket_path_; }
  const std::filesystem::path& dir() const { return dir_.path(); }
  const std::string& user() const { return options_.user; }
  const std::string& password() const { return password_; }
  // PEM file of the CA that issued the TLS certificate (TLS only).
  std::filesystem::path ca_file() const { return dir_.path() / "ca.pem"; }
  // redis://127.0.0.1:<port>, rediss://... under TLS.
  std::string tcp_url() const {
    return std::string(options_.tls ? "rediss" : "redis") + "://127.0.0.1:" + std::to_string(port_);
  }
  std::string unix_url() const { return "unix://" + socket_path_.string(); }
  bool running() const { return pid_ > 0; }

  // SIGTERM, then reap (SIGKILL after the deadline). No-op when stopped.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + kRedisDeadline;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
  }
  // Starts it again on the same port and socket; throws if it does not come up.
  void start() {
    if (pid_ > 0) return;
    const auto deadline = std::chrono::steady_clock::now() + kRedisDeadline;
    // The old listening socket may linger briefly; retry the same port for a bounded time.
    while (!launch()) {
      if (std::chrono::steady_clock::now() > deadline) {
        throw std::runtime_error("redis-server did not restart: " + log());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // The server's log file (start-up problems, e.g. a port already in use).
  std::string log() const {
    std::ifstream in(dir_.path() / "redis.log");
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  }

  // One command on a fresh admin connection over the Unix socket. Throws when the server
  // cannot be reached.
  RedisAdminReply command(const std::vector<std::string>& args) const {
    auto ctx = admin_connect();
    if (!ctx) throw std::runtime_error("redis admin connection failed");
    return run(ctx.get(), args);
  }

 private:
  static constexpr int kPortAttempts = 10;

  struct ContextFree {
    void operator()(redisContext* c) const { redisFree(c); }
  };
  using Context = std::unique_ptr<redisContext, ContextFree>;

  static std::string random_hex(std::size_t bytes) {
    std::vector<unsigned char> raw(bytes);
    if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) {
      throw std::runtime_error("RAND_bytes failed");
    }
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned char b : raw) {
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 15]);
    }
    return out;
  }

  // A port the kernel just handed out on 127.0.0.1; someone may take it before redis
  // binds it, which launch() detects (the caller then picks another).
  static std::uint16_t free_loopback_port() {
    boost::asio::io_context ioc;
    boost::asio::ip::tcp::acceptor acceptor(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0},
                                            /*reuse_addr=*/false);
    return acceptor.local_endpoint().port();
  }

  void write_certificates() {
    TestCa ca("sproxy redis test CA");
    CertOptions names = loopback_server();
    if (!options_.tls_name.empty()) {
      names = CertOptions{};
      names.common_name = options_.tls_name;
      names.dns_names = {options_.tls_name};
    }
    const IssuedCert server = ca.issue(names);
    write_file(ca_file(), ca.cert_pem());
    write_file(dir_.path() / "server.pem", server.cert_pem);
    write_file(dir_.path() / "server-key.pem", server.key_pem);
  }

  void write_config() const {
    const std::string d = dir_.path().string();
    std::string conf;
    conf += "bind 127.0.0.1\n";
    conf += "protected-mode no\n";
    if (options_.tls) {
      conf += "port 0\n";
      conf += "tls-port " + std::to_string(port_) + "\n";
      conf += "tls-cert-file " + d + "/server.pem\n";
      conf += "tls-key-file " + d + "/server-key.pem\n";
      conf += "tls-ca-cert-file " + d + "/ca.pem\n";
      conf += "tls-auth-clients no\n";
    } else {
      conf += "port " + std::to_string(port_) + "\n";
    }
    conf += "unixsocket " + socket_path_.string() + "\n";
    conf += "unixsocketperm 700\n";
    conf += "dir " + d + "\n";
    conf += "logfile " + d + "/redis.log\n";
    conf += "save \"\"\n";
    conf += "appendonly no\n";
    conf += "daemonize no\n";
    conf += "enable-debug-command local\n";
    conf += "user default off\n";
    conf += "user " + options_.user + " on >" + password_ + " ~* &* +@all\n";
    write_file(dir_.path() / "redis.conf", conf);
  }

  // Starts the process and waits for PING; false (process reaped) when it exited first,
  // e.g. because the port was taken.
  bool launch() {
    write_config();
    pid_ = spawn_server();
    const auto deadline = std::chrono::steady_clock::now() + kRedisDeadline;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      if (answers_ping()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    stop();
    throw std::runtime_error("redis-server did not answer PING: " + log());
  }

  // redis-server <dir>/redis.conf, its stdout and stderr into <dir>/redis-stdout.txt.
  pid_t spawn_server() const {
    const std::string out = (dir_.path() / "redis-stdout.txt").string();
    std::string binary = "/usr/bin/redis-server";
    std::string conf = (dir_.path() / "redis.conf").string();
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    char* argv[] = {binary.data(), conf.data(), nullptr};
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error("cannot start " + binary);
    return pid;
  }

  Context admin_connect() const {
    timeval tv{2, 0};
    Context ctx(redisConnectUnixWithTimeout(socket_path_.c_str(), tv));
    if (!ctx || ctx->err != 0) return nullptr;
    const RedisAdminReply auth = run(ctx.get(), {"AUTH", options_.user, password_});
    if (auth.type != REDIS_REPLY_STATUS) return nullptr;
    return ctx;
  }

  bool answers_ping() const {
    auto ctx = admin_connect();
    return ctx && run(ctx.get(), {"PING"}).text == "PONG";
  }

  static RedisAdminReply run(redisContext* ctx, const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* reply = static_cast<redisReply*>(
        redisCommandArgv(ctx, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (reply == nullptr) throw std::runtime_error("redis admin command failed");
    RedisAdminReply out;
    out.type = reply->type;
    out.integer = reply->integer;
    if (reply->str != nullptr) out.text.assign(reply->str, reply->len);
    for (std::size_t i = 0; i < reply->elements; ++i) {
      const redisReply* e = reply->element[i];
      out.elements.push_back(e->str != nullptr ? std::string(e->str, e->len)
                                               : std::to_string(e->integer));
    }
    freeReplyObject(reply);
    return out;
  }

  RedisServerOptions options_;
  TempDir dir_;
  std::string password_;
  std::filesystem::path socket_path_;
  std::uint16_t port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace sproxy::test
