// Child processes for end-to-end tests: spawn_process / read_stdout_line / wait_for_exit
// start a binary, read its first stdout line and reap it, each bounded.
// write_json_file / write_secret_file write the config and credential files they read.
// ProxyProcess: the built `secrets-proxy` binary run as a child process: started with a
// config file, on the port its config names (0: an ephemeral one, read from its
// "listening on http(s)://127.0.0.1:<port>" line), its stderr in a file, and
// stopped with SIGTERM (exit code returned) on `stop()` or destruction.
//
// Every wait is bounded by kProcessDeadline: start-up (the listening line), and exit
// after SIGTERM (then SIGKILL). The child inherits the test's environment, so a test
// sets credentials for it with setenv before starting it. Not thread-safe; header-only.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/http_test_client.hpp"

extern char** environ;

namespace sproxy::test {

inline constexpr auto kProcessDeadline = std::chrono::seconds(20);

inline std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Writes `j` to the file `name` in `dir` (a config file); its path.
inline std::filesystem::path write_json_file(const std::filesystem::path& dir,
                                             const std::string& name, const nlohmann::json& j) {
  const auto path = dir / name;
  std::ofstream(path) << j.dump(2);
  return path;
}

// Writes `value` and a newline to the file `name` in `dir` (a credential file); its path.
inline std::string write_secret_file(const std::filesystem::path& dir, const std::string& name,
                                     const std::string& value) {
  const auto path = dir / name;
  std::ofstream(path) << value << "\n";
  return path.string();
}

// A started child process.
struct Spawned {
  pid_t pid = -1;
  int stdout_fd = -1;  // read end of the child's stdout
};

// Starts `binary` with `args` in `cwd`, stdout on a pipe, stderr into `stderr_path`.
// Throws std::runtime_error when it cannot be started.
inline Spawned spawn_process(const std::string& binary, const std::vector<std::string>& args,
                             const std::filesystem::path& stderr_path,
                             const std::filesystem::path& cwd) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  posix_spawn_file_actions_addclose(&actions, fds[1]);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
  std::vector<std::string> argv_storage = {binary};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    throw std::runtime_error("posix_spawn " + binary + " failed");
  }
  return Spawned{pid, fds[0]};
}

// The child's stdout up to the first newline, within kProcessDeadline; nullopt on
// timeout or when it closed its stdout (ended) without one.
inline std::optional<std::string> read_stdout_line(int fd) {
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + kProcessDeadline;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, 100);
    if (ready < 0) return std::nullopt;
    if (ready == 0) continue;
    char c = 0;
    if (::read(fd, &c, 1) <= 0) return std::nullopt;  // exited without the line
    if (c == '\n') return line;
    line.push_back(c);
  }
  return std::nullopt;
}

// Waits (bounded by kProcessDeadline) for `pid` to exit; its exit code, or nullopt if it
// was still running (it is then killed) or died by a signal.
inline std::optional<int> wait_for_exit(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + kProcessDeadline;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) return std::nullopt;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return std::nullopt;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!WIFEXITED(status)) return std::nullopt;
  return WEXITSTATUS(status);
}

class ProxyProcess {
 public:
  // Starts `binary --config <config>` in `dir`, stderr into dir/<name>-stderr.txt.
  // Throws std::runtime_error (with the child's stderr) when it does not come up.
  ProxyProcess(const std::string& binary, const std::filesystem::path& config,
               const std::filesystem::path& dir, const std::string& name)
      : err_path_(dir / (name + "-stderr.txt")) {
    child_ = spawn_process(binary, {"--config", config.string()}, err_path_, dir);
    const auto line = read_stdout_line(child_.stdout_fd);
    if (!line) {
      (void)stop();
      throw std::runtime_error(name + ": no listening line: " + read_text_file(err_path_));
    }
    std::smatch m;
    if (!std::regex_search(*line, m, std::regex(R"(https?://127\.0\.0\.1:(\d+))"))) {
      (void)stop();
      throw std::runtime_error(name + ": unexpected listening line: " + *line);
    }
    port_ = static_cast<unsigned short>(std::stoi(m[1].str()));
  }
  ~ProxyProcess() {
    if (child_.pid > 0) (void)stop();
  }
  ProxyProcess(const ProxyProcess&) = delete;
  ProxyProcess& operator=(const ProxyProcess&) = delete;

  unsigned short port() const { return port_; }
  boost::asio::ip::tcp::endpoint endpoint() const {
    return {boost::asio::ip::make_address("127.0.0.1"), port_};
  }
  std::string base_url() const {
    return "http://127.0.0.1:" + std::to_string(port_) + "/client/v4";
  }
  std::unique_ptr<HttpTestClient> connect() const {
    return std::make_unique<HttpTestClient>(endpoint());
  }
  void signal(int sig) const { ::kill(child_.pid, sig); }
  // Everything the process wrote to stderr so far (its log).
  std::string log() const { return read_text_file(err_path_); }

  // SIGTERM, then the exit code (nullopt: killed after the deadline, or died by a signal).
  std::optional<int> stop() {
    if (child_.pid <= 0) return std::nullopt;
    ::kill(child_.pid, SIGTERM);
    const auto code = wait_for_exit(child_.pid);
    ::close(child_.stdout_fd);
    child_.pid = -1;
    return code;
  }

 private:
  std::filesystem::path err_path_;
  Spawned child_;
  unsigned short port_ = 0;
};

}  // namespace sproxy::test
