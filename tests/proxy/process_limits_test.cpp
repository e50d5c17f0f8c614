// End-to-end tests of the built binary under process-level pressure: a log reader that
// goes away, signals during start-up, and the open file limit.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
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
#include "tests/support/temp_dir.hpp"
#include "upstream/crypto.hpp"

#ifndef SPROXY_BINARY
#error "SPROXY_BINARY must point at the secrets-proxy executable"
#endif

namespace sproxy::test {
namespace {

namespace asio = boost::asio;
using nlohmann::json;
using ::testing::HasSubstr;

const std::string kToken = "limits-client-token";

// The port of a "listening on http://127.0.0.1:<port>" line.
unsigned short port_of(const std::string& line) {
  std::smatch m;
  if (!std::regex_search(line, m, std::regex(R"(http://127\.0\.0\.1:(\d+))"))) return 0;
  return static_cast<unsigned short>(std::stoi(m[1].str()));
}

asio::ip::tcp::endpoint loopback(unsigned short port) {
  return {asio::ip::make_address("127.0.0.1"), port};
}

// The value of an unlabelled sample in a Prometheus exposition; -1 when absent.
double sample(const std::string& exposition, const std::string& name) {
  std::istringstream lines(exposition);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

// True when `path` has a line containing `needle` within kProcessDeadline.
bool file_gets(const std::filesystem::path& path, const std::string& needle) {
  const auto deadline = std::chrono::steady_clock::now() + kProcessDeadline;
  while (std::chrono::steady_clock::now() < deadline) {
    if (read_text_file(path).find(needle) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// True once the process has ignored SIGPIPE, within kProcessDeadline. Its main does that
// right after blocking SIGHUP, SIGINT and SIGTERM, so from then on those wait for it.
bool reached_main(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + kProcessDeadline;
  while (std::chrono::steady_clock::now() < deadline) {
    std::istringstream status(read_text_file("/proc/" + std::to_string(pid) + "/status"));
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("SigIgn:", 0) != 0) continue;
      const unsigned long long ignored = std::stoull(line.substr(7), nullptr, 16);
      if (ignored & (1ull << (SIGPIPE - 1))) return true;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return false;
}

class SecretsProxyLimits : public ::testing::Test {
 protected:
  json config(bool log_to_file = true) const {
    json c = {{"listen", {{"address", "127.0.0.1"}, {"port", 0}, {"threads", 1}}},
              {"clients",
               {{{"name", "client"},
                 {"token_sha256", upstream::sha256_hex(kToken)},
                 {"accounts", {"*"}},
                 {"permissions", {"read"}}}}},
              {"store",
               {{"data_path", (dir_.path() / "data" / "store.db").string()},
                {"key_file", (dir_.path() / "data" / "store.key").string()},
                {"key_env", "SPROXY_LIMITS_TEST_KEY_THAT_IS_NEVER_SET"}}}};
    if (log_to_file) c["log"] = {{"file", log_path().string()}, {"level", "debug"}};
    return c;
  }
  std::filesystem::path log_path() const { return dir_.path() / "proxy.log"; }
  std::filesystem::path write_config(const json& j) const {
    const auto path = dir_.path() / "config.json";
    std::ofstream(path) << j.dump();
    return path;
  }
  Spawned spawn(const std::filesystem::path& config_path) const {
    return spawn_process(SPROXY_BINARY, {"--config", config_path.string()},
                         dir_.path() / "stderr.txt", dir_.path());
  }
  std::string stderr_text() const { return read_text_file(dir_.path() / "stderr.txt"); }

  TempDir dir_;
};

TEST_F(SecretsProxyLimits, KeepsServingAndCountsLostLogLinesWhenItsStdoutReaderGoesAway) {
  // Logs (access lines included) go to stdout, a pipe whose reader then goes away.
  Spawned child = spawn(write_config(config(/*log_to_file=*/false)));
  const auto line = read_stdout_line(child.stdout_fd);
  ASSERT_TRUE(line.has_value()) << stderr_text();
  const unsigned short port = port_of(*line);
  ASSERT_NE(port, 0);
  ::close(child.stdout_fd);

  {
    HttpTestClient client(loopback(port));
    for (int i = 0; i < 5; ++i) EXPECT_EQ(client.get("/healthz").result_int(), 200);
    const auto metrics = client.get("/metrics");
    EXPECT_GE(sample(metrics.body(), "secrets_proxy_log_write_failures_total"), 5.0)
        << metrics.body();
  }
  EXPECT_EQ(::kill(child.pid, SIGTERM), 0);
  EXPECT_EQ(wait_for_exit(child.pid), 0) << stderr_text();
}

TEST_F(SecretsProxyLimits, SurvivesASighupSentWhileItStartsAndReloadsOnceReady) {
  // Many clients make start-up (config loading) take a while: the window for the signal.
  json c = config();
  for (int i = 0; i < 20'000; ++i) {
    c["clients"].push_back({{"name", "filler-" + std::to_string(i)},
                            {"token_sha256", upstream::sha256_hex("filler-" + std::to_string(i))},
                            {"accounts", {"*"}},
                            {"permissions", {"read"}}});
  }
  const auto path = write_config(c);
  for (int round = 0; round < 3; ++round) {
    std::filesystem::remove(log_path());
    Spawned child = spawn(path);
    // Sent once main runs (signals before main belong to the loader, not to the program).
    ASSERT_TRUE(reached_main(child.pid)) << "round " << round << ": " << stderr_text();
    for (int i = 0; i < 3; ++i) {
      ::kill(child.pid, SIGHUP);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    const auto line = read_stdout_line(child.stdout_fd);
    ASSERT_TRUE(line.has_value()) << "round " << round << ": " << stderr_text();
    {
      HttpTestClient client(loopback(port_of(*line)));
      EXPECT_EQ(client.get("/healthz").result_int(), 200);
    }
    // The signal that came early is acted on once the process is ready.
    EXPECT_TRUE(file_gets(log_path(), "reloaded identities")) << read_text_file(log_path());
    EXPECT_EQ(::kill(child.pid, SIGTERM), 0);
    EXPECT_EQ(wait_for_exit(child.pid), 0) << stderr_text();
    ::close(child.stdout_fd);
  }
}

// The soft and hard "Max open files" of a process.
std::pair<std::string, std::string> open_file_limits(pid_t pid) {
  std::istringstream limits(read_text_file("/proc/" + std::to_string(pid) + "/limits"));
  for (std::string line; std::getline(limits, line);) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream fields(line.substr(std::string("Max open files").size()));
    std::string soft, hard;
    fields >> soft >> hard;
    return {soft, hard};
  }
  return {};
}

TEST_F(SecretsProxyLimits, RaisesItsOpenFileLimitAndWarnsWhenItIsStillTooLow) {
  rlimit own{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &own), 0);
  if (own.rlim_max <= 256 || own.rlim_max == RLIM_INFINITY) {
    GTEST_SKIP() << "needs a finite hard open file limit above 256";
  }
  json c = config();
  c["listen"]["max_connections"] = own.rlim_max + 1;
  const auto path = write_config(c);

  // Started with a soft limit of 256 (inherited), below its hard limit.
  rlimit lowered = own;
  lowered.rlim_cur = 256;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lowered), 0);
  Spawned child = spawn(path);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &own), 0);
  const auto line = read_stdout_line(child.stdout_fd);
  ASSERT_TRUE(line.has_value()) << stderr_text();

  const auto [soft, hard] = open_file_limits(child.pid);
  EXPECT_EQ(soft, std::to_string(own.rlim_max));
  EXPECT_EQ(hard, std::to_string(own.rlim_max));
  EXPECT_TRUE(file_gets(log_path(), "open file limit")) << read_text_file(log_path());
  EXPECT_EQ(::kill(child.pid, SIGTERM), 0);
  EXPECT_EQ(wait_for_exit(child.pid), 0) << stderr_text();
  ::close(child.stdout_fd);
}

// Connects and waits up to `within` for the server to say something; what it said
// (empty: nothing, the connection is held open in `held`).
std::string first_words(asio::io_context& ioc, unsigned short port,
                        std::vector<asio::ip::tcp::socket>& held,
                        std::chrono::milliseconds within) {
  asio::ip::tcp::socket socket(ioc);
  socket.connect(loopback(port));
  std::string said;
  std::array<char, 4096> bytes;
  std::function<void(boost::system::error_code, std::size_t)> on_read =
      [&](boost::system::error_code ec, std::size_t n) {
        said.append(bytes.data(), n);
        if (!ec) socket.async_read_some(asio::buffer(bytes), on_read);
      };
  socket.async_read_some(asio::buffer(bytes), on_read);
  ioc.restart();
  ioc.run_for(within);
  if (said.empty()) {
    socket.cancel();
    ioc.restart();
    ioc.run();
    held.push_back(std::move(socket));
  }
  return said;
}

TEST_F(SecretsProxyLimits, AnswersClientsWith503WhenItRunsOutOfFileDescriptors) {
  Spawned child = spawn(write_config(config()));
  const auto line = read_stdout_line(child.stdout_fd);
  ASSERT_TRUE(line.has_value()) << stderr_text();
  const unsigned short port = port_of(*line);
  {
    HttpTestClient warm(loopback(port));
    ASSERT_EQ(warm.get("/healthz").result_int(), 200);
  }
  // Room for a few more descriptors than the process holds now.
  std::size_t open = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(child.pid) + "/fd")) {
    (void)entry;
    ++open;
  }
  const rlimit tight{open + 3, open + 3};
  ASSERT_EQ(::prlimit(child.pid, RLIMIT_NOFILE, &tight, nullptr), 0);

  // Clients connect until one is refused: the ones before it are accepted and held.
  asio::io_context ioc{1};
  std::vector<asio::ip::tcp::socket> held;
  std::string refusal;
  for (int i = 0; i < 30 && refusal.empty(); ++i) {
    refusal = first_words(ioc, port, held, std::chrono::milliseconds(300));
  }
  EXPECT_THAT(refusal, ::testing::StartsWith("HTTP/1.1 503 "));
  EXPECT_THAT(refusal, HasSubstr("service_unavailable: too_many_connections"));
  EXPECT_THAT(refusal, HasSubstr("Connection: close"));

  // Descriptors freed, the process serves again and has counted the refusal. Until it has
  // seen the held connections close, a new client may still get the refusal.
  for (auto& socket : held) socket.close();
  std::optional<TestResponse> metrics;
  for (int i = 0; i < 50 && !metrics; ++i) {
    try {
      HttpTestClient client(loopback(port), std::chrono::seconds(2));
      metrics = client.get("/metrics");
      if (metrics->result_int() != 200) metrics.reset();
    } catch (const std::runtime_error&) {
    }
    if (!metrics) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(metrics.has_value());
  EXPECT_GE(sample(metrics->body(), "secrets_proxy_connections_rejected_total"), 1.0);
  EXPECT_EQ(::kill(child.pid, SIGTERM), 0);
  EXPECT_EQ(wait_for_exit(child.pid), 0) << stderr_text();
  ::close(child.stdout_fd);
}

}  // namespace
}  // namespace sproxy::test
