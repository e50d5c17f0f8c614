// sproxy_loadgen: a constant-rate (open-loop) HTTP/1.1 load generator, and a counting
// HTTP relay, for the load benchmark (bench/load/run.sh).
//
// Load mode:
//   sproxy_loadgen --url http://127.0.0.1:8787 [--target PATH]... [--targets FILE]
//                  [-H 'Name: value']... [--connections N] [--rate R] [--duration S]
//                  [--max-requests M] [--timeout-ms T] [--label TEXT] [--warm PATH]
//                  [--stampede]
//
//   Request i (0-based) is scheduled at t0 + i / R and is sent on connection i mod N, so
//   the R requests per second are spread evenly over the N keep-alive connections. Its
//   latency is measured from that scheduled time, not from when it was actually written:
//   a request that had to wait for a slow answer on its connection carries the wait (no
//   coordinated omission). Targets are used in order, cycling. --rate 0 sends each
//   connection's next request as soon as its previous answer is in (closed loop).
//   Scheduling stops at --duration seconds or --max-requests, whichever comes first; the
//   run is cut --timeout-ms after the last scheduled send at the latest.
//   Prints one JSON object: achieved requests/s, latency percentiles (p50, p90, p99,
//   p99.9, max) from the scheduled time, service time from the actual send, how late
//   sends were, counts per status and per X-Cache value, errors, bytes per response.
//
//   --warm PATH: every connection first sends one GET PATH (with the -H headers) and
//   reads its answer before the first measured request is scheduled, so that the server
//   has accepted every connection and is serving it (not counted in the results).
//
//   --stampede: every connection sends exactly one request, all at once as soon as every
//   connection is open (and warm). Each request is timed on its own: from just before
//   its write to the kernel's receive timestamp (SO_TIMESTAMPNS) of the first byte of its
//   answer, so neither the time this one thread takes to write the other requests nor
//   the time it takes to read the other answers is counted. `service_us` then holds the
//   same span ending when this process got to the answer, and `send_spread_us` how long
//   writing all requests took. --rate, --duration and --max-requests are ignored.
//
//   Pacing reads the clock; no kernel timer is armed per request. While the next send is
//   due within 500 us the generator polls its sockets without sleeping, so at the rates
//   of the load benchmark it keeps its core busy and an answer never has to wake it up;
//   further ahead it sleeps until shortly before the send. Each request costs it one
//   send and usually one recv: it sustains over 200k req/s on one core against nginx
//   `return 200`, so that its own queue does not set the latencies it reports.
//
//   --busy-poll: the generator never sleeps, also in the closed loop and --stampede (one
//   core at 100%); for separating a server's own cost from the cost of waking an idle
//   client on the other core.
//
//   A targets file holds one request a line: `METHOD PATH [BODY]` (BODY is the rest of
//   the line, sent as application/json); empty lines and lines starting with # are
//   skipped. The same file drives bench/load/targets.lua for wrk.
//
// Relay mode:
//   sproxy_loadgen --relay --listen 127.0.0.1:0 --upstream 127.0.0.1:9000
//
//   Forwards HTTP/1.1 requests one by one to the upstream (one upstream keep-alive
//   connection per client connection) and counts them, in total, per method and per
//   target, and times them (first request, last answer, longest upstream round trip, for
//   lining up with a --stampede run). It answers `GET /__relay/stats` itself with those
//   counts as JSON and
//   `POST /__relay/reset` by zeroing them. It prints `relay listening on http://ADDR:PORT`
//   once listening and runs until SIGINT or SIGTERM.
//
// Both modes are single-threaded; pin them with taskset. Loopback use only. Load mode
// runs on plain non-blocking sockets and one epoll set (--stampede and the relay on Asio).
#include <exception>
#include <iostream>
#include <stdexcept>

#include "loadgen.hpp"

using loadgen::Options;
using loadgen::parse_options;
using loadgen::run_load;
using loadgen::run_relay;

int main(int argc, char** argv) {
  try {
    const Options opt = parse_options(argc, argv);
    return opt.relay ? run_relay(opt) : run_load(opt);
  } catch (const std::invalid_argument& e) {
    std::cerr << "sproxy_loadgen: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sproxy_loadgen: " << e.what() << "\n";
    return 1;
  }
}
