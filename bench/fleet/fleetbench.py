"""Shared parts of the fleet benchmarks (invalidation_lag.py, s7.py): a redis-server, a
secrets-proxy stand-in upstream (embedded store, cache off, every API request counted in
its /metrics) and secrets-proxy fleet members, all on 127.0.0.1, all stopped by
Cluster.stop(). Every wait here is bounded."""
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time

UPSTREAM_TOKEN = "bench-upstream-token-7d1c"
CLIENT_TOKEN = "bench-client-token-2f9e"
CACHE_KEY_ENV = "SPROXY_BENCH_FLEET_CACHE_KEY"


def sha256_hex(text):
    return hashlib.sha256(text.encode()).hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, target, body=None, token=CLIENT_TOKEN):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, target, body=body, headers={"Authorization": "Bearer " + token,
                                                  "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return text


def api_requests_seen(port):
    """API requests a stand-in answered (any status), from its /metrics."""
    total = 0
    for line in metrics(port).splitlines():
        if line.startswith("secrets_proxy_requests_total{") and 'route="/' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


class Cluster:
    def __init__(self, binary, workdir):
        self.binary = os.path.abspath(binary)
        self.dir = workdir
        self.procs = []
        self.redis_port = None

    def start_redis(self):
        self.redis_port = free_port()
        self.procs.append(subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL))
        for _ in range(200):  # bounded: 2 s
            try:
                socket.create_connection(("127.0.0.1", self.redis_port), 0.1).close()
                return
            except OSError:
                time.sleep(0.01)
        sys.exit("redis-server did not start")

    def start_proxy(self, name, cfg, core=None):
        # Logs into a file: stdout is a pipe read for the listening line only.
        cfg["log"] = {"file": os.path.join(self.dir, name + ".log")}
        path = os.path.join(self.dir, name + ".json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        err = open(os.path.join(self.dir, name + ".err"), "w")
        argv = [self.binary, "--config", path]
        if core is not None:
            argv = ["taskset", "-c", str(core)] + argv
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=self.dir, text=True)
        line = p.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            p.kill()
            err.close()
            with open(os.path.join(self.dir, name + ".err")) as f:
                sys.exit(f"{name} did not start: {line!r} {f.read()}")
        self.procs.append(p)
        return p, int(m.group(1))

    def start_standin(self, latency_ms=0):
        _, port = self.start_proxy("standin", {
            "listen": {"address": "127.0.0.1", "port": 0, "threads": 1},
            "clients": [{"name": "proxy", "token_sha256": sha256_hex(UPSTREAM_TOKEN),
                         "accounts": ["*"], "permissions": ["read", "write", "admin"]}],
            "store": {"data_path": os.path.join(self.dir, "standin.db"),
                      "key_file": os.path.join(self.dir, "standin.key"),
                      "key_env": "SPROXY_BENCH_KEY_NEVER_SET"},
            "emulation": {"latency_ms": latency_ms},
            "cache": {"enabled": False}, "audit": {"enabled": False}})
        with open(os.path.join(self.dir, "token"), "w") as f:
            f.write(UPSTREAM_TOKEN)
        return port

    def member_config(self, standin_port, fleet, shared_cache=True, cache=None, threads=2):
        cfg = {
            "listen": {"address": "127.0.0.1", "port": 0, "threads": threads},
            "clients": [{"name": "writer", "token_sha256": sha256_hex(CLIENT_TOKEN),
                         "accounts": ["*"], "services": ["workers"],
                         "permissions": ["read", "write"]}],
            "upstream": {"kind": "http",
                         "base_url": f"http://127.0.0.1:{standin_port}/client/v4",
                         "token_file": os.path.join(self.dir, "token"),
                         "rate_limit_requests": 100000, "rate_limit_per_second": 0},
            "cache": cache or {"ttl": {"secrets_ms": 600000}},
            "audit": {"enabled": False}}
        if fleet:
            cfg["fleet"] = {"redis": {"url": f"redis://127.0.0.1:{self.redis_port}"}}
            if shared_cache:
                os.environ[CACHE_KEY_ENV] = "b" * 64
                cfg["fleet"]["cache"] = {"key_env": CACHE_KEY_ENV}
        return cfg

    @staticmethod
    def wait_synced(port):
        for _ in range(1000):  # bounded: 10 s
            if "secrets_proxy_fleet_synced 1" in metrics(port):
                return
            time.sleep(0.01)
        sys.exit("a member did not subscribe within 10 s")

    def stop(self, procs=None):
        for p in reversed(procs if procs is not None else self.procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if procs is not None:
            self.procs = [p for p in self.procs if p not in procs]


def create_secret(standin_port, account, name="S"):
    """One store in `account` (one store per account, the API's limit) with one secret;
    the secret's path."""
    base = f"/client/v4/accounts/{account}/secrets_store/stores"
    _, store = request(standin_port, "POST", base, '{"name":"bench"}', UPSTREAM_TOKEN)
    secrets = f"{base}/{store['result']['id']}/secrets"
    _, created = request(standin_port, "POST", secrets,
                         json.dumps([{"name": name, "value": "v", "scopes": ["workers"]}]),
                         UPSTREAM_TOKEN)
    return f"{secrets}/{created['result'][0]['id']}"


def write_lags(writer, reader, secret, writes):
    """PATCH `secret`'s comment through `writer`; once answered, GET it through `reader`
    until it shows the new comment (each wait bounded by 2 s). Sorted lags in seconds."""
    lags = []
    for i in range(writes):
        comment = f"c{i}-{time.monotonic_ns()}"
        status, _ = request(writer, "PATCH", secret, json.dumps({"comment": comment}))
        if status != 200:
            sys.exit(f"write {i} failed: {status}")
        answered = time.perf_counter()
        deadline = answered + 2
        while True:
            _, got = request(reader, "GET", secret)
            now = time.perf_counter()
            if got and got["result"]["comment"] == comment:
                lags.append(now - answered)
                break
            if now > deadline:
                sys.exit(f"write {i}: the reader did not serve it within 2 s")
    lags.sort()
    return lags


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]
