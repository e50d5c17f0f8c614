#!/usr/bin/env python3
"""Fleet mode's invalidation lag: from a write's answer on process A to process B serving
the new data, over a bounded number of writes on loopback.

Starts its own redis-server (a free loopback port, no persistence), a secrets-proxy as
the stand-in upstream (embedded store, cache off), and two fleet members A and B (http
upstream to the stand-in, caching secrets for 10 minutes, fleet mode on that Redis).
For each write: PATCH a secret's comment through A; once A has answered, GET the secret
through B in a loop until B answers the new comment (each wait bounded by 2 s); the time
from A's answer to that GET's answer is one sample. Prints p50, p99 and max.

Usage: invalidation_lag.py --binary build/test/proxy/secrets-proxy [--writes 300]
Results: bench/results/fleet-invalidation-lag.md.
"""
import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ACCOUNT = "f1ee7000000000000000000000000bb1"
UPSTREAM_TOKEN = "bench-upstream-token-7d1c"
CLIENT_TOKEN = "bench-client-token-2f9e"


def sha256_hex(text):
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(binary, workdir, name, cfg):
    # Logs into a file: stdout is a pipe read for the listening line only.
    cfg["log"] = {"file": os.path.join(workdir, name + ".log")}
    path = os.path.join(workdir, name + ".json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    err = open(os.path.join(workdir, name + ".err"), "w")
    p = subprocess.Popen([binary, "--config", path], stdout=subprocess.PIPE, stderr=err,
                         cwd=workdir, text=True)
    line = p.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not m:
        p.kill()
        err.close()
        with open(os.path.join(workdir, name + ".err")) as f:
            sys.exit(f"{name} did not start: {line!r} {f.read()}")
    return p, int(m.group(1))


def request(port, method, target, body=None, token=CLIENT_TOKEN):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, target, body=body, headers={"Authorization": "Bearer " + token,
                                                  "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--writes", type=int, default=300)
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    procs = []
    with tempfile.TemporaryDirectory() as d:
        try:
            redis_port = free_port()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL))
            for _ in range(200):  # bounded: 2 s
                try:
                    socket.create_connection(("127.0.0.1", redis_port), 0.1).close()
                    break
                except OSError:
                    time.sleep(0.01)
            standin, standin_port = start_proxy(binary, d, "standin", {
                "listen": {"address": "127.0.0.1", "port": 0, "threads": 1},
                "clients": [{"name": "proxy", "token_sha256": sha256_hex(UPSTREAM_TOKEN),
                             "accounts": ["*"], "permissions": ["read", "write", "admin"]}],
                "store": {"data_path": os.path.join(d, "standin.db"),
                          "key_file": os.path.join(d, "standin.key"),
                          "key_env": "SPROXY_BENCH_KEY_NEVER_SET"},
                "cache": {"enabled": False}, "audit": {"enabled": False}})
            procs.append(standin)
            base = f"/client/v4/accounts/{ACCOUNT}/secrets_store/stores"
            _, store = request(standin_port, "POST", base, '{"name":"lag"}', UPSTREAM_TOKEN)
            secrets = f"{base}/{store['result']['id']}/secrets"
            _, created = request(standin_port, "POST", secrets,
                                 '[{"name":"S","value":"v","scopes":["workers"]}]',
                                 UPSTREAM_TOKEN)
            secret = f"{secrets}/{created['result'][0]['id']}"
            with open(os.path.join(d, "token"), "w") as f:
                f.write(UPSTREAM_TOKEN)
            members = []
            for name in ("a", "b"):
                p, port = start_proxy(binary, d, name, {
                    "listen": {"address": "127.0.0.1", "port": 0, "threads": 2},
                    "clients": [{"name": "writer", "token_sha256": sha256_hex(CLIENT_TOKEN),
                                 "accounts": ["*"], "services": ["workers"],
                                 "permissions": ["read", "write"]}],
                    "upstream": {"kind": "http", "base_url": f"http://127.0.0.1:{standin_port}/client/v4",
                                 "token_file": os.path.join(d, "token"),
                                 "rate_limit_requests": 100000, "rate_limit_per_second": 0},
                    "cache": {"ttl": {"secrets_ms": 600000}}, "audit": {"enabled": False},
                    "fleet": {"redis": {"url": f"redis://127.0.0.1:{redis_port}"}}})
                procs.append(p)
                members.append(port)
            a, b = members
            for port in members:  # both subscribed and in sync (bounded: 10 s)
                for _ in range(1000):
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    c.request("GET", "/metrics")
                    if "secrets_proxy_fleet_synced 1" in c.getresponse().read().decode():
                        break
                    time.sleep(0.01)
                else:
                    sys.exit("a member did not subscribe within 10 s")
            lags = []
            for i in range(args.writes):
                comment = f"c{i}"
                status, _ = request(a, "PATCH", secret, json.dumps({"comment": comment}))
                if status != 200:
                    sys.exit(f"write {i} failed: {status}")
                answered = time.perf_counter()
                deadline = answered + 2
                while True:
                    _, got = request(b, "GET", secret)
                    now = time.perf_counter()
                    if got and got["result"]["comment"] == comment:
                        lags.append(now - answered)
                        break
                    if now > deadline:
                        sys.exit(f"write {i}: B did not serve it within 2 s")
            lags.sort()
            p50 = lags[len(lags) // 2] * 1000
            p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000
            worst = lags[-1] * 1000
            line = f"writes {len(lags)}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.2f} ms"
            print(line)
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
