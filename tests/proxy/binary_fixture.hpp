// Shared set-up of the end-to-end tests of the built `secrets-proxy` binary
// (binary_*test.cpp): running it to completion, the SecretsProxyBinary fixture with its
// temporary directory and configs, and a running binary stopped with SIGTERM at the end.
#pragma once

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

namespace sproxy::test::binary_testing {

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
inline RunResult run_binary(const std::vector<std::string>& args,
                            const std::filesystem::path& dir) {
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

// ---------------------------------------------------------------------------------------
// token new, SIGHUP reload and the audit log, with the real binary

// Waits (bounded) until `path` holds `needle` at least `times` times; false on timeout.
inline bool file_gets(const std::filesystem::path& path, const std::string& needle, int times = 1) {
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

inline json client_entry(const std::string& name, const std::string& token,
                         std::vector<std::string> permissions) {
  return {{"name", name},
          {"token_sha256", upstream::sha256_hex(token)},
          {"services", {"workers"}},
          {"accounts", {"*"}},
          {"permissions", std::move(permissions)}};
}

}  // namespace sproxy::test::binary_testing
