#!/usr/bin/env python3
"""Fleet mode's invalidation lag: from a write's answer on process A to process B serving
the new data, over a bounded number of writes on loopback.

Starts its own redis-server (a free loopback port, no persistence), a secrets-proxy as
the stand-in upstream (embedded store, cache off), and two fleet members A and B (http
upstream to the stand-in, caching secrets for 10 minutes, fleet mode on that Redis with
the shared cache). For each write: PATCH a secret's comment through A; once A has
answered, GET the secret through B in a loop until B answers the new comment (each wait
bounded by 2 s); the time from A's answer to that GET's answer is one sample. Prints
p50, p99 and max.

Usage: invalidation_lag.py --binary build/test/proxy/secrets-proxy [--writes 300]
Results: bench/results/fleet-invalidation-lag.md.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleetbench as fb  # noqa: E402

ACCOUNT = "f1ee7000000000000000000000000bb1"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--writes", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cluster = fb.Cluster(args.binary, d)
        try:
            cluster.start_redis()
            standin = cluster.start_standin()
            secret = fb.create_secret(standin, ACCOUNT)
            members = [cluster.start_proxy(name, cluster.member_config(standin, fleet=True))[1]
                       for name in ("a", "b")]
            for port in members:
                cluster.wait_synced(port)
            lags = fb.write_lags(members[0], members[1], secret, args.writes)
            print(f"writes {len(lags)}: p50 {fb.percentile(lags, 0.5) * 1000:.2f} ms, "
                  f"p99 {fb.percentile(lags, 0.99) * 1000:.2f} ms, max {lags[-1] * 1000:.2f} ms")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
