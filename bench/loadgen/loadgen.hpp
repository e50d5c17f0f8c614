// The load generator's private header (bench/loadgen/): the options, the results of a
// load run, and the pieces its files share. What the tool does and its command line are
// described at the top of main.cpp.
//   options.cpp   the command line and the pre-serialized requests
//   stampede.cpp  Asio connections, recording an answer, the --stampede round
//   load.cpp      the paced and closed-loop load (epoll) and its JSON report
//   relay.cpp     relay mode
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace loadgen {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::nanoseconds;

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);
constexpr std::uint64_t kBodyLimit = 64ull * 1024 * 1024;
constexpr std::uint32_t kHeaderLimit = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Command line

struct Options {
  bool relay = false;
  // load mode
  std::string host = "127.0.0.1";
  std::string port = "80";
  std::string host_header;
  std::vector<std::string> targets;  // "METHOD PATH [BODY]"
  std::vector<std::pair<std::string, std::string>> headers;
  std::size_t connections = 64;
  double rate = 1000.0;
  double duration_s = 10.0;
  std::uint64_t max_requests = std::numeric_limits<std::uint64_t>::max();
  int timeout_ms = 10'000;
  std::string label;
  std::string warm_path;
  bool stampede = false;
  bool busy_poll = false;
  // relay mode
  std::string listen = "127.0.0.1:0";
  std::string upstream;
};

// ---------------------------------------------------------------------------------------
// Load mode

struct Results {
  std::vector<std::uint64_t> latency_ns;  // from the scheduled send time
  std::vector<std::uint64_t> service_ns;  // from the actual send time
  std::vector<std::uint64_t> lag_ns;      // actual send - scheduled send
  std::map<unsigned, std::uint64_t> status;
  std::map<std::string, std::uint64_t> x_cache;
  std::map<std::string, std::uint64_t> errors;
  std::uint64_t issued = 0;
  std::uint64_t header_bytes = 0;
  std::uint64_t body_bytes = 0;
  std::uint64_t connects = 0;
  std::uint64_t warmed = 0;
  Clock::time_point last_done{};
  Clock::time_point first_send = Clock::time_point::max();
  Clock::time_point last_send = Clock::time_point::min();
  // --stampede only, CLOCK_REALTIME ns (comparable with the relay's stats).
  std::int64_t first_send_rt = 0;
  std::int64_t first_answer_rt = 0;
  std::int64_t last_answer_rt = 0;
};

struct LoadRun {
  const Options& opt;
  std::vector<std::string> requests;
  std::string warm_request;
  tcp::resolver::results_type endpoints;
  Results results;
  Clock::time_point t0{};
  Clock::time_point t_end{};
  std::size_t ready = 0;  // connections that finished their first connect attempt
  std::size_t finished = 0;
  std::optional<asio::steady_timer> start_gate;
  std::optional<asio::steady_timer> watchdog;

  explicit LoadRun(const Options& o) : opt(o) {}

  // Paced runs only: when request i is due.
  Clock::time_point scheduled(std::uint64_t i) const {
    return t0 + nanoseconds(static_cast<std::int64_t>(static_cast<double>(i) * 1e9 / opt.rate));
  }

  void error(const std::string& what) { ++results.errors[what]; }
};

// ---------------------------------------------------------------------------------------
// Shared between the files

// options.cpp
std::pair<std::string, std::string> split_host_port(const std::string& s);
Options parse_options(int argc, char** argv);
// Pre-serializes every target once; the hot loop only writes these bytes.
std::vector<std::string> build_requests(const Options& o);

// stampede.cpp
void close(beast::tcp_stream& stream);
std::int64_t realtime_ns();
// Files one answer in the results. Its latency is measured from the scheduled send time
// unless given (a --stampede request's, from its kernel receive timestamp).
void record_answer(Results& r, Clock::time_point sched, Clock::time_point sent,
                   Clock::time_point done, const http::response<http::string_body>& res,
                   std::uint64_t wire_bytes, std::optional<std::uint64_t> latency_ns = {});
// Runs the --stampede round on one Asio thread, bounded by `hard_limit`.
void run_stampede(LoadRun& run, asio::io_context& io, Clock::time_point hard_limit);

// load.cpp
int run_load(const Options& opt);

// relay.cpp
int run_relay(const Options& opt);

}  // namespace loadgen
