// End-to-end tests of the built `secrets-proxy` binary: flags, start-up errors, and a
// real run (listening line, requests, SIGTERM, exit code).
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/http_test_client.hpp"
#include "tests/support/proxy_process.hpp"
#include "tests/support/server_harness.hpp"
#include "tests/support/stream_test_client.hpp"
#include "tests/support/test_certs.hpp"
#include "upstream/crypto.hpp"

#ifndef SPROXY_BINARY
#error "SPROXY_BINARY must point at the secrets-proxy executable"
#endif
#ifndef SPROXY_EXPECTED_VERSION
#error "SPROXY_EXPECTED_VERSION must be the project version"
#endif

namespace sproxy::test {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kToken = "e2e-client-token";
const std::string kAccount = "0123456789abcdef0123456789abcdef";

struct RunResult {
  std::optional<int> exit_code;
  std::string out;
  std::string err;
};

// Runs the binary to completion (bounded by kProcessDeadline).
RunResult run_binary(const std::vector<std::string>& args, const std::filesystem::path& dir) {
  const auto err_path = dir / "stderr.txt";
  Spawned child = spawn_process(SPROXY_BINARY, args, err_path, dir);
  RunResult result;
  char buf[4096];
  for (;;) {
    pollfd p{child.stdout_fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kProcessDeadline).count())) <= 0) {
      break;
    }
    const ssize_t n = ::read(child.stdout_fd, buf, sizeof buf);
    if (n <= 0) break;
    result.out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(child.stdout_fd);
  result.exit_code = wait_for_exit(child.pid);
  result.err = read_text_file(err_path);
  return result;
}

class SecretsProxyBinary : public ::testing::Test {
 protected:
  json valid_config(unsigned short port = 0) const {
    return {{"listen", {{"address", "127.0.0.1"}, {"port", port}, {"threads", 2}}},
            {"clients",
             {{{"name", "e2e"},
               {"token_sha256", upstream::sha256_hex(kToken)},
               {"services", {"workers"}},
               {"accounts", {"*"}},
               {"permissions", {"read", "write", "admin"}}}}},
            {"store",
             {{"data_path", (dir_.path() / "data" / "store.db").string()},
              {"key_file", (dir_.path() / "data" / "store.key").string()},
              {"key_env", "SPROXY_E2E_TEST_KEY_THAT_IS_NEVER_SET"}}},
            {"log", {{"file", log_path().string()}, {"level", "debug"}}}};
  }
  // Where the process log goes (stdout carries only the listening line).
  std::filesystem::path log_path() const { return dir_.path() / "proxy.log"; }

  std::filesystem::path write_config(const json& j, const std::string& name = "config.json") {
    return write_json_file(dir_.path(), name, j);
  }

  TempDir dir_;
};

TEST_F(SecretsProxyBinary, PrintsItsVersion) {
  const auto r = run_binary({"--version"}, dir_.path());
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, std::string("secrets-proxy ") + SPROXY_EXPECTED_VERSION + "\n");
}

TEST_F(SecretsProxyBinary, PrintsUsageForHelp) {
  const auto r = run_binary({"--help"}, dir_.path());
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("--check-config"));
}

TEST_F(SecretsProxyBinary, RejectsUnknownFlagsWithOneLine) {
  const auto r = run_binary({"--bogus"}, dir_.path());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, StartsWith("secrets-proxy: unknown argument \"--bogus\""));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
}

TEST_F(SecretsProxyBinary, NeedsAConfigWhenTheExampleIsNotThere) {
  const auto r = run_binary({}, dir_.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("no --config given"));
}

TEST_F(SecretsProxyBinary, ChecksAValidConfig) {
  const auto path = write_config(valid_config());
  const auto r = run_binary({"--check-config", "--config", path.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "config OK\n");
}

TEST_F(SecretsProxyBinary, ListsEveryProblemOfAnInvalidConfigOnePerLine) {
  json j = valid_config();
  j["listen"]["port"] = 70000;
  j["cache"] = {{"shards", 0}};
  const auto path = write_config(j);
  const auto r = run_binary({"--check-config", "--config", path.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  // Keys are visited in sorted order (nlohmann::json objects are ordered maps).
  EXPECT_EQ(r.err,
            "$.cache.shards: must be between 1 and 65536\n"
            "$.listen.port: must be between 0 and 65535\n");
}

TEST_F(SecretsProxyBinary, RefusesToStartWithAnInvalidConfigInOneLine) {
  json j = valid_config();
  j["listen"]["threads"] = 0;
  const auto path = write_config(j);
  const auto r = run_binary({"--config", path.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("$.listen.threads: must be between 1 and 1024"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
}

TEST_F(SecretsProxyBinary, RefusesToStartOnAPortThatIsTakenInOneLine) {
  boost::asio::io_context ioc;
  boost::asio::ip::tcp::acceptor blocker(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
  const auto path = write_config(valid_config(blocker.local_endpoint().port()));
  const auto r = run_binary({"--config", path.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("secrets-proxy: cannot listen on 127.0.0.1:"));
  EXPECT_TRUE(r.out.empty());
}

TEST_F(SecretsProxyBinary, ServesRequestsAndExitsCleanlyOnSigterm) {
  const auto path = write_config(valid_config());
  const auto err_path = dir_.path() / "server-stderr.txt";
  Spawned child = spawn_process(SPROXY_BINARY, {"--config", path.string()}, err_path, dir_.path());

  const auto line = read_stdout_line(child.stdout_fd);
  ASSERT_TRUE(line.has_value()) << read_text_file(err_path);
  std::smatch m;
  ASSERT_TRUE(std::regex_match(*line, m,
                               std::regex(R"(secrets-proxy listening on http://127\.0\.0\.1:(\d+) )"
                                          R"(\(upstream: embedded, threads: 2\))")))
      << *line;
  const auto port = static_cast<unsigned short>(std::stoi(m[1].str()));
  ASSERT_NE(port, 0);

  {
    HttpTestClient client({boost::asio::ip::make_address("127.0.0.1"), port});
    EXPECT_EQ(client.get("/healthz").result_int(), 200);
    auto created = client.post(api_base(kAccount) + "/stores", R"({"name":"e2e"})", bearer(kToken));
    EXPECT_EQ(created.result_int(), 200) << created.body();
    auto listed = client.get(api_base(kAccount) + "/stores", bearer(kToken));
    EXPECT_EQ(listed.result_int(), 200);
    EXPECT_EQ(body_json(listed)["result"].size(), 1u);
    EXPECT_EQ(client.get(api_base(kAccount) + "/stores", bearer("wrong")).result_int(), 403);
  }

  ASSERT_EQ(::kill(child.pid, SIGTERM), 0);
  const auto code = wait_for_exit(child.pid);
  ::close(child.stdout_fd);
  const std::string log = read_text_file(log_path());
  EXPECT_EQ(code, 0) << log << read_text_file(err_path);
  EXPECT_THAT(log, HasSubstr("stopped"));
  // Logs never carry credentials.
  EXPECT_THAT(log, ::testing::Not(HasSubstr(kToken)));
  EXPECT_THAT(read_text_file(err_path), ::testing::Not(HasSubstr(kToken)));
  // Every line is one JSON object; each request has an access line.
  std::istringstream lines(log);
  int access = 0;
  for (std::string line; std::getline(lines, line);) {
    json j;
    ASSERT_NO_THROW(j = json::parse(line)) << line;
    EXPECT_TRUE(j.contains("time") && j.contains("level") && j.contains("msg")) << line;
    if (j["msg"] == "access") ++access;
  }
  EXPECT_EQ(access, 4);
}

TEST_F(SecretsProxyBinary, CheckConfigAppliesTheEnvironmentOverrides) {
  const auto path = write_config(valid_config());
  ::setenv("SPROXY_LISTEN_PORT", "70000", 1);
  ::setenv("SPROXY_LOG_FORMAT", "yaml", 1);
  const auto r = run_binary({"--check-config", "--config", path.string()}, dir_.path());
  ::unsetenv("SPROXY_LISTEN_PORT");
  ::unsetenv("SPROXY_LOG_FORMAT");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "env SPROXY_LISTEN_PORT: must be between 0 and 65535\n"
            "env SPROXY_LOG_FORMAT: unknown value \"yaml\" (expected json or text)\n");
}

TEST_F(SecretsProxyBinary, ListensWhereTheEnvironmentSays) {
  boost::asio::io_context ioc;
  boost::asio::ip::tcp::acceptor probe(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
  const auto port = probe.local_endpoint().port();
  probe.close();
  const auto path = write_config(valid_config());
  ::setenv("SPROXY_LISTEN_PORT", std::to_string(port).c_str(), 1);
  Spawned child = spawn_process(SPROXY_BINARY, {"--config", path.string()}, dir_.path() / "err.txt",
                                dir_.path());
  ::unsetenv("SPROXY_LISTEN_PORT");
  const auto line = read_stdout_line(child.stdout_fd);
  ::kill(child.pid, SIGTERM);
  EXPECT_EQ(wait_for_exit(child.pid), 0);
  ::close(child.stdout_fd);
  ASSERT_TRUE(line.has_value()) << read_text_file(dir_.path() / "err.txt");
  EXPECT_THAT(*line, HasSubstr("127.0.0.1:" + std::to_string(port) + " "));
}

// ---------------------------------------------------------------------------------------
// token new, SIGHUP reload and the audit log, with the real binary

// Waits (bounded) until `path` holds `needle` at least `times` times; false on timeout.
bool file_gets(const std::filesystem::path& path, const std::string& needle, int times = 1) {
  const auto deadline = std::chrono::steady_clock::now() + kProcessDeadline;
  for (;;) {
    const std::string text = read_text_file(path);
    int found = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
      ++found;
    }
    if (found >= times) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// A running binary: started on an ephemeral port, stopped with SIGTERM at the end.
class RunningProxy : public ProxyProcess {
 public:
  RunningProxy(const std::filesystem::path& config, const std::filesystem::path& dir)
      : ProxyProcess(SPROXY_BINARY, config, dir, "server"), log_path_(dir / "proxy.log") {}
  // The process log (valid_config's log.file when the config is written for `dir`).
  const std::filesystem::path& log_path() const { return log_path_; }

 private:
  std::filesystem::path log_path_;
};

json client_entry(const std::string& name, const std::string& token,
                  std::vector<std::string> permissions) {
  return {{"name", name},
          {"token_sha256", upstream::sha256_hex(token)},
          {"services", {"workers"}},
          {"accounts", {"*"}},
          {"permissions", std::move(permissions)}};
}

TEST_F(SecretsProxyBinary, PrintsANewTokenItsHashAndAClientEntryThatWorksInAConfig) {
  const auto r = run_binary({"token", "new", "--name", "billing", "--services", "workers,dex",
                             "--permissions", "read,write"},
                            dir_.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(token: (sproxy_[A-Za-z0-9_-]{43})\n)")))
      << r.out;
  const std::string token = m[1].str();
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(token_sha256: ([0-9a-f]{64})\n)")));
  EXPECT_EQ(m[1].str(), upstream::sha256_hex(token));
  const json entry = json::parse(r.out.substr(r.out.find('{')));
  EXPECT_EQ(entry["name"], "billing");
  EXPECT_EQ(entry["token_sha256"], upstream::sha256_hex(token));
  EXPECT_EQ(entry["services"], json({"workers", "dex"}));
  EXPECT_EQ(entry["permissions"], json({"read", "write"}));
  EXPECT_TRUE(r.err.empty()) << r.err;

  // A second run gives another token.
  const auto again = run_binary({"token", "new", "--name", "billing"}, dir_.path());
  ASSERT_EQ(again.exit_code, 0);
  EXPECT_THAT(again.out, ::testing::Not(HasSubstr(token)));

  // The printed entry is a valid client: the token works against the proxy.
  json config = valid_config();
  config["clients"].push_back(entry);
  RunningProxy proxy(write_config(config), dir_.path());
  auto client = proxy.connect();
  EXPECT_EQ(client->get(api_base(kAccount) + "/stores", bearer(token)).result_int(), 200);
  // read+write without admin: creating a store is refused.
  EXPECT_EQ(
      client->post(api_base(kAccount) + "/stores", R"({"name":"x"})", bearer(token)).result_int(),
      403);
  EXPECT_EQ(proxy.stop(), 0);
  EXPECT_THAT(read_text_file(proxy.log_path()), ::testing::Not(HasSubstr(token)));
}

TEST_F(SecretsProxyBinary, RefusesATokenRequestWithAnUnknownServiceInOneLine) {
  const auto r = run_binary({"token", "new", "--name", "x", "--services", "mail"}, dir_.path());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--services: \"mail\" is not a service"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1);
  EXPECT_TRUE(r.out.empty());
}

// ---------------------------------------------------------------------------------------
// The store key: checked at start, rotated by `store rotate-key`

struct SeededSecret {
  std::string store_id;
  std::string secret_id;
};

// Runs the proxy on `config` once to create a store holding one secret, then stops it.
SeededSecret seed_one_secret(const std::filesystem::path& config,
                             const std::filesystem::path& dir) {
  RunningProxy proxy(config, dir);
  auto c = proxy.connect();
  SeededSecret out;
  auto store = c->post(api_base(kAccount) + "/stores", R"({"name":"keyed"})", bearer(kToken));
  EXPECT_EQ(store.result_int(), 200) << store.body();
  out.store_id = body_json(store)["result"]["id"];
  auto secret = c->post(api_base(kAccount) + "/stores/" + out.store_id + "/secrets",
                        R"([{"name":"db_url","value":"postgres://sealed","scopes":["workers"]}])",
                        bearer(kToken));
  EXPECT_EQ(secret.result_int(), 200) << secret.body();
  out.secret_id = body_json(secret)["result"][0]["id"];
  EXPECT_EQ(proxy.stop(), 0);
  return out;
}

std::string one_line(const std::string& text) {
  return std::count(text.begin(), text.end(), '\n') == 1 ? text : "not one line: " + text;
}

TEST_F(SecretsProxyBinary, RefusesToStartInOneLineWhenTheStoreKeyFileIsMissingOrAnother) {
  const auto config = write_config(valid_config());
  seed_one_secret(config, dir_.path());
  const auto key_file = dir_.path() / "data" / "store.key";
  const std::string key = read_text_file(key_file);

  std::filesystem::remove(key_file);
  auto r = run_binary({"--config", config.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(one_line(r.err),
              StartsWith("secrets-proxy: store key file " + key_file.string() + " is missing"));
  EXPECT_TRUE(r.out.empty());
  EXPECT_FALSE(std::filesystem::exists(key_file));

  std::ofstream(key_file) << upstream::to_hex(upstream::random_bytes(32)) << "\n";
  ::chmod(key_file.c_str(), 0600);
  r = run_binary({"--config", config.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(one_line(r.err), StartsWith("secrets-proxy: store key file " + key_file.string() +
                                          " does not match embedded store"));

  // rotate-key refuses the same key, and changes nothing.
  const std::string other = read_text_file(key_file);
  r = run_binary({"store", "rotate-key", "--config", config.string()}, dir_.path());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(one_line(r.err), HasSubstr("does not match"));
  EXPECT_EQ(read_text_file(key_file), other);

  std::ofstream(key_file, std::ios::trunc) << key;
  RunningProxy proxy(config, dir_.path());
  EXPECT_EQ(proxy.stop(), 0);
}

TEST_F(SecretsProxyBinary, RotatesTheStoreKeyAndStillServesTheOldSecrets) {
  const auto config = write_config(valid_config());
  const SeededSecret seeded = seed_one_secret(config, dir_.path());
  const auto key_file = dir_.path() / "data" / "store.key";
  const std::string old_key = read_text_file(key_file);

  const auto r = run_binary({"store", "rotate-key", "--config", config.string()}, dir_.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "re-sealed 1 value under a new key; " + key_file.string() +
                       " now holds it (a backup taken before opens only with the key file backed "
                       "up with it)\n");
  EXPECT_TRUE(r.err.empty()) << r.err;
  const std::string new_key = read_text_file(key_file);
  EXPECT_NE(new_key, old_key);
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr(new_key.substr(0, 16))));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr(old_key.substr(0, 16))));
  struct stat st {};
  ASSERT_EQ(::stat(key_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // The value sealed before the rotation is still there: a server-side copy of it works.
  RunningProxy proxy(config, dir_.path());
  auto c = proxy.connect();
  auto copy = c->post(api_base(kAccount) + "/stores/" + seeded.store_id + "/secrets/" +
                          seeded.secret_id + "/duplicate",
                      R"({"name":"db_url_copy","scopes":["workers"]})", bearer(kToken));
  EXPECT_EQ(copy.result_int(), 200) << copy.body();
  EXPECT_EQ(proxy.stop(), 0);
}

TEST_F(SecretsProxyBinary, ReloadsIdentitiesOnSighupWithoutDroppingConnections) {
  const std::string removed = "reload-removed-token";
  const std::string kept = "reload-kept-token";
  const std::string added = "reload-added-token";
  json config = valid_config();
  config["clients"] = {client_entry("removed", removed, {"read"}),
                       client_entry("kept", kept, {"read"})};
  const auto path = write_config(config);
  RunningProxy proxy(path, dir_.path());
  const std::string stores = api_base(kAccount) + "/stores";

  auto removed_conn = proxy.connect();
  auto kept_conn = proxy.connect();
  ASSERT_EQ(removed_conn->get(stores, bearer(removed)).result_int(), 200);
  ASSERT_EQ(kept_conn->get(stores, bearer(kept)).result_int(), 200);
  const auto kept_port = kept_conn->local_port();

  config["clients"] = {client_entry("kept", kept, {"read"}),
                       client_entry("added", added, {"read"})};
  write_config(config);
  proxy.signal(SIGHUP);
  ASSERT_TRUE(file_gets(proxy.log_path(), "reloaded identities"))
      << read_text_file(proxy.log_path());

  // The removed token stops at once, on its open connection and on new ones.
  EXPECT_EQ(removed_conn->get(stores, bearer(removed)).result_int(), 403);
  EXPECT_EQ(proxy.connect()->get(stores, bearer(removed)).result_int(), 403);
  // The other client's keep-alive connection carries on (the same connection).
  auto kept_res = kept_conn->get(stores, bearer(kept));
  EXPECT_EQ(kept_res.result_int(), 200);
  EXPECT_TRUE(kept_res.keep_alive());
  EXPECT_EQ(kept_conn->local_port(), kept_port);
  EXPECT_EQ(proxy.connect()->get(stores, bearer(added)).result_int(), 200);

  // A broken config is rejected and the current identities stay.
  std::ofstream(path) << R"({"clients": [ {"name": "broken")";
  proxy.signal(SIGHUP);
  ASSERT_TRUE(file_gets(proxy.log_path(), "reload rejected")) << read_text_file(proxy.log_path());
  EXPECT_EQ(kept_conn->get(stores, bearer(kept)).result_int(), 200);
  EXPECT_EQ(proxy.connect()->get(stores, bearer(added)).result_int(), 200);
  EXPECT_EQ(proxy.connect()->get(stores, bearer(removed)).result_int(), 403);

  // So is a config that parses but breaks a rule.
  config["clients"] = {client_entry("only", "only-token", {"read"})};
  config["clients"][0]["permissions"] = {"superuser"};
  write_config(config);
  proxy.signal(SIGHUP);
  ASSERT_TRUE(file_gets(proxy.log_path(), "reload rejected", 2));
  EXPECT_EQ(kept_conn->get(stores, bearer(kept)).result_int(), 200);

  EXPECT_EQ(proxy.stop(), 0);
  const std::string log = read_text_file(proxy.log_path());
  EXPECT_THAT(log, HasSubstr("unknown permission"));
  for (const auto& token : {removed, kept, added})
    EXPECT_THAT(log, ::testing::Not(HasSubstr(token)));
}

TEST_F(SecretsProxyBinary, ServesTlsAndAUnixSocketAndReloadsTheCertificateOnSighup) {
  const TestCa first_ca("first CA");
  const TestCa second_ca("second CA");
  const auto cert = dir_.path() / "server.pem";
  const auto key = dir_.path() / "server.key";
  const IssuedCert first = first_ca.issue(loopback_server());
  write_file(cert, first.cert_pem);
  write_file(key, first.key_pem);
  const auto socket_path = dir_.path() / "proxy.sock";
  json config = valid_config();
  config["listen"]["tls"] = {{"cert_file", cert.string()}, {"key_file", key.string()}};
  config["listen"]["unix_socket"] = {{"path", socket_path.string()}, {"mode", "0600"}};
  RunningProxy proxy(write_config(config), dir_.path());
  const std::string stores = api_base(kAccount) + "/stores";

  TlsTestClient before(tls_client_context(first_ca.cert_pem()));
  ASSERT_FALSE(before.connect(proxy.endpoint()));
  EXPECT_EQ(before.get(stores, bearer(kToken)).result_int(), 200);
  UnixTestClient local;
  ASSERT_FALSE(local.connect(boost::asio::local::stream_protocol::endpoint(socket_path.string())));
  EXPECT_EQ(local.get(stores, bearer(kToken)).result_int(), 200);

  // A key that does not load: an error line, and the current certificate stays.
  write_file(key, "not a key\n");
  proxy.signal(SIGHUP);
  ASSERT_TRUE(file_gets(proxy.log_path(), "TLS reload failed")) << read_text_file(proxy.log_path());
  TlsTestClient still_first(tls_client_context(first_ca.cert_pem()));
  EXPECT_FALSE(still_first.connect(proxy.endpoint()));

  const IssuedCert second = second_ca.issue(loopback_server());
  write_file(cert, second.cert_pem);
  write_file(key, second.key_pem);
  proxy.signal(SIGHUP);
  ASSERT_TRUE(file_gets(proxy.log_path(), "reloaded the TLS certificate"))
      << read_text_file(proxy.log_path());
  TlsTestClient after(tls_client_context(second_ca.cert_pem()));
  ASSERT_FALSE(after.connect(proxy.endpoint()));
  EXPECT_EQ(after.get(stores, bearer(kToken)).result_int(), 200);
  TlsTestClient stale(tls_client_context(first_ca.cert_pem()));
  EXPECT_TRUE(stale.connect(proxy.endpoint()));
  // Connections open before the reload carry on.
  EXPECT_EQ(before.get(stores, bearer(kToken)).result_int(), 200);
  EXPECT_EQ(local.get(stores, bearer(kToken)).result_int(), 200);

  EXPECT_EQ(proxy.stop(), 0);
  EXPECT_FALSE(std::filesystem::exists(socket_path));
}

TEST_F(SecretsProxyBinary, WritesAnAuditLineForEveryWriteAndDenialWithoutValuesOrTokens) {
  const std::string canary_value = "CANARY-VALUE-in-binary-test";
  const std::string unknown_token = "CANARY-UNKNOWN-TOKEN";
  const auto audit_path = dir_.path() / "audit.jsonl";
  json config = valid_config();
  config["audit"] = {{"path", audit_path.string()}};
  RunningProxy proxy(write_config(config), dir_.path());
  auto client = proxy.connect();
  auto store = client->post(api_base(kAccount) + "/stores", R"({"name":"a"})", bearer(kToken));
  ASSERT_EQ(store.result_int(), 200) << store.body();
  const std::string secrets = api_base(kAccount) + "/stores/" +
                              body_json(store)["result"]["id"].get<std::string>() + "/secrets";
  const json item = {{"name", "AUDITED"}, {"value", canary_value}, {"scopes", {"workers"}}};
  ASSERT_EQ(client->post(secrets, json::array({item}).dump(), bearer(kToken)).result_int(), 200);
  EXPECT_EQ(client->get(secrets, bearer(unknown_token)).result_int(), 403);
  EXPECT_EQ(client->get(secrets, bearer(kToken)).result_int(), 200);  // reads: not audited
  EXPECT_EQ(proxy.stop(), 0);

  const std::string audit = read_text_file(audit_path);
  std::vector<json> lines;
  std::istringstream in(audit);
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 3u) << audit;
  EXPECT_EQ(lines[0]["route"], "/stores");
  EXPECT_EQ(lines[1]["route"], "/stores/{store_id}/secrets");
  EXPECT_EQ(lines[1]["client"], "e2e");
  EXPECT_EQ(lines[1]["decision"], "allow");
  EXPECT_EQ(lines[1]["secrets"][0]["name"], "AUDITED");
  EXPECT_EQ(lines[2]["decision"], "deny");
  EXPECT_EQ(lines[2]["reason"], "unknown_credentials");
  for (const std::string& needle : {canary_value, unknown_token, kToken}) {
    EXPECT_THAT(audit, ::testing::Not(HasSubstr(needle)));
    EXPECT_THAT(read_text_file(proxy.log_path()), ::testing::Not(HasSubstr(needle)));
  }
}

// ---------------------------------------------------------------------------------------
// Warm start (cache.persist): a restarted proxy serves its saved cache with the upstream
// gone. The upstream is a second binary serving the embedded store.

TEST_F(SecretsProxyBinary, ServesItsSavedCacheAfterARestartWhileTheUpstreamIsDown) {
  const auto upstream_dir = dir_.path() / "upstream";
  const auto edge_dir = dir_.path() / "edge";
  std::filesystem::create_directories(upstream_dir);
  std::filesystem::create_directories(edge_dir);
  json origin_config = valid_config();
  origin_config["log"]["file"] = (upstream_dir / "proxy.log").string();
  auto origin =
      std::make_unique<RunningProxy>(write_config(origin_config, "upstream.json"), upstream_dir);
  std::string store_id;
  std::string secret_id;
  {
    auto c = origin->connect();
    auto store = c->post(api_base(kAccount) + "/stores", R"({"name":"warm"})", bearer(kToken));
    ASSERT_EQ(store.result_int(), 200) << store.body();
    store_id = body_json(store)["result"]["id"];
    auto secret = c->post(api_base(kAccount) + "/stores/" + store_id + "/secrets",
                          R"([{"name":"db_url","value":"postgres://hidden","scopes":["workers"]}])",
                          bearer(kToken));
    ASSERT_EQ(secret.result_int(), 200) << secret.body();
    secret_id = body_json(secret)["result"][0]["id"];
  }
  const std::string secret_target =
      api_base(kAccount) + "/stores/" + store_id + "/secrets/" + secret_id;

  std::ofstream(edge_dir / "upstream.token") << kToken;
  const auto snapshot = edge_dir / "state" / "cache.snap";
  const unsigned short origin_port = origin->port();
  auto edge_config = [&](long secrets_ttl_ms) {
    json j = valid_config();
    j.erase("store");
    j["log"]["file"] = (edge_dir / "proxy.log").string();
    j["upstream"] = {{"kind", "http"},
                     {"base_url", "http://127.0.0.1:" + std::to_string(origin_port) + "/client/v4"},
                     {"token_file", (edge_dir / "upstream.token").string()},
                     {"max_retries", 0}};
    j["cache"] = {{"ttl", {{"secrets_ms", secrets_ttl_ms}}},
                  {"stale_while_revalidate_ms", 0},
                  {"persist",
                   {{"path", snapshot.string()}, {"key_file", (edge_dir / "cache.key").string()}}}};
    return write_config(j, "edge.json");
  };

  // First run: the read goes to the upstream; SIGTERM saves the cache.
  {
    RunningProxy edge(edge_config(600'000), edge_dir);
    auto c = edge.connect();
    auto miss = c->get(secret_target, bearer(kToken));
    ASSERT_EQ(miss.result_int(), 200) << miss.body();
    EXPECT_EQ(miss["X-Cache"], "MISS");
    EXPECT_EQ(edge.stop(), 0);
    const std::string log = read_text_file(edge.log_path());
    EXPECT_THAT(log, HasSubstr("no cache snapshot at"));
    EXPECT_THAT(log, HasSubstr("cache snapshot saved to"));
  }
  struct stat st {};
  ASSERT_EQ(::stat(snapshot.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(std::filesystem::exists(snapshot.string() + ".tmp"));
  EXPECT_THAT(read_text_file(snapshot), ::testing::Not(HasSubstr("db_url")));
  EXPECT_THAT(read_text_file(snapshot), ::testing::Not(HasSubstr("postgres://hidden")));

  // The upstream goes away for good.
  EXPECT_EQ(origin->stop(), 0);
  origin.reset();

  // Second run: loaded before serving; still fresh, so a HIT without any upstream.
  {
    RunningProxy edge(edge_config(600'000), edge_dir);
    auto c = edge.connect();
    auto hit = c->get(secret_target, bearer(kToken));
    EXPECT_EQ(hit.result_int(), 200) << hit.body();
    EXPECT_EQ(hit["X-Cache"], "HIT");
    EXPECT_EQ(body_json(hit)["result"]["name"], "db_url");
    EXPECT_EQ(edge.stop(), 0);
    EXPECT_THAT(read_text_file(edge.log_path()), HasSubstr("1 of 1 entries restored"));
  }

  // Third run with a 1 ms TTL: the entry (stored by the first run) has expired, so it is
  // never a HIT; with the upstream unreachable it is served as STALE.
  {
    RunningProxy edge(edge_config(1), edge_dir);
    auto c = edge.connect();
    auto stale = c->get(secret_target, bearer(kToken));
    EXPECT_EQ(stale.result_int(), 200) << stale.body();
    EXPECT_EQ(stale["X-Cache"], "STALE");
    EXPECT_EQ(body_json(stale)["result"]["id"], secret_id);
    EXPECT_EQ(edge.stop(), 0);
  }

  // A damaged file: one log line, an empty cache, and the proxy still serves.
  {
    std::string bytes = read_text_file(snapshot);
    ASSERT_GT(bytes.size(), 40u);
    bytes[40] = static_cast<char>(bytes[40] ^ 0x01);
    std::ofstream(snapshot, std::ios::binary | std::ios::trunc) << bytes;
    RunningProxy edge(edge_config(600'000), edge_dir);
    auto c = edge.connect();
    auto gone = c->get(secret_target, bearer(kToken));
    EXPECT_GE(gone.result_int(), 500);
    EXPECT_EQ(gone["X-Cache"], "MISS");
    EXPECT_EQ(edge.stop(), 0);
    const std::string log = read_text_file(edge.log_path());
    EXPECT_THAT(log, HasSubstr("rejected (does not authenticate"));
  }
}

}  // namespace
}  // namespace sproxy::test
