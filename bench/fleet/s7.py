#!/usr/bin/env python3
"""Load scenario s7: one secrets-proxy against three in fleet mode, on the same workload.

Starts its own redis-server, a stand-in upstream (secrets-proxy, embedded store, cache
off, 20 ms per call, every API request counted in its /metrics) seeded with --keys
secrets (one store per account, the API's limit), and measures:

1. Upstream requests. --readers client threads read the keys for --duration seconds,
   each GET on the next key and the next process in turn, with secrets cached for
   --ttl-ms (refresh ahead 1 s, so every key is refetched once per TTL while it is read);
   every reader goes over every key on every process.
   Four set-ups, each with fresh processes and an empty Redis: one process; three
   processes without fleet mode; three in fleet mode without the shared cache; three in
   fleet mode with it. Goal: three in fleet mode cost what one costs.
2. Invalidation lag on the three-process fleet: --writes PATCHes through A, each read back
   through B until B serves it (fleetbench.write_lags); p50, p99, max.
3. Hit throughput with fleet mode on and off: one process (one io thread, core 1) serving
   one hot secret to wrk -t1 -c64 (core 0) for --hit-seconds, --hit-runs times each,
   interleaved (off, on, off, on, ...); medians. Goal: equal within noise.

Writes <out>/fleet-s7.md, <out>/fleet-s7.json and <out>/fleet-s7.png (gnuplot).
Everything binds to 127.0.0.1; every loop is bounded in time and count.

Usage: s7.py --binary build/bench-load/proxy/secrets-proxy [--out bench/results]
             [--duration 20] [--keys 20] [--ttl-ms 5000] [--readers 6] [--writes 200]
             [--hit-runs 3] [--hit-seconds 5]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleetbench as fb  # noqa: E402


def account(i):
    return f"{0x57000000 + i:032x}"


def redis_flush(port):
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "FLUSHALL"], check=True,
                   stdout=subprocess.DEVNULL)


def read_load(ports, secrets, readers, duration):
    """Reads for `duration` s; (requests, non-200 answers)."""
    counts = [0] * readers
    failures = [0] * readers
    stop_at = time.monotonic() + duration

    def reader(r):
        # Every reader goes over every key on every process: key i, then the next process.
        i = r
        while time.monotonic() < stop_at:
            key, port = i % len(secrets), (i // len(secrets)) % len(ports)
            status, _ = fb.request(ports[port], "GET", secrets[key])
            counts[r] += 1
            failures[r] += status != 200
            i += 1

    threads = [threading.Thread(target=reader, args=(r,)) for r in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), sum(failures)


SETUPS = [
    ("1 process", 1, False, False),
    ("3 processes, no fleet mode", 3, False, False),
    ("3 processes, fleet mode, no shared cache", 3, True, False),
    ("3 processes, fleet mode", 3, True, True),
]


def measure_upstream(cluster, standin, secrets, args):
    rows = []
    cache = {"ttl": {"secrets_ms": args.ttl_ms}, "refresh_ahead_ms": 1000,
             "stale_while_revalidate_ms": 0}
    for label, n, fleet, shared in SETUPS:
        redis_flush(cluster.redis_port)
        procs, ports = [], []
        for k in range(n):
            cfg = cluster.member_config(standin, fleet=fleet, shared_cache=shared, cache=cache)
            p, port = cluster.start_proxy(f"s7-{len(rows)}-{k}", cfg)
            procs.append(p)
            ports.append(port)
        if fleet:
            for port in ports:
                cluster.wait_synced(port)
        before = fb.api_requests_seen(standin)
        requests, failures = read_load(ports, secrets, args.readers, args.duration)
        upstream = fb.api_requests_seen(standin) - before
        cluster.stop(procs)
        rows.append({"setup": label, "processes": n, "reads": requests, "failed": failures,
                     "upstream_requests": upstream})
        print(f"  {label}: {requests} reads ({failures} not 200), {upstream} upstream requests",
              file=sys.stderr)
    return rows


def measure_lag(cluster, standin, secret, args):
    redis_flush(cluster.redis_port)
    procs, ports = [], []
    for name in ("lag-a", "lag-b", "lag-c"):
        p, port = cluster.start_proxy(name, cluster.member_config(standin, fleet=True))
        procs.append(p)
        ports.append(port)
    for port in ports:
        cluster.wait_synced(port)
    lags = fb.write_lags(ports[0], ports[1], secret, args.writes)
    cluster.stop(procs)
    return {"writes": len(lags), "p50_ms": fb.percentile(lags, 0.5) * 1000,
            "p99_ms": fb.percentile(lags, 0.99) * 1000, "max_ms": lags[-1] * 1000}


def wrk(port, target, seconds):
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", "-c64", f"-d{seconds}s", "-H",
         "Authorization: Bearer " + fb.CLIENT_TOKEN, f"http://127.0.0.1:{port}{target}"],
        check=True, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or "Non-2xx" in out:
        sys.exit(f"wrk: unexpected output\n{out}")
    return float(m.group(1))


def measure_hits(cluster, standin, secret, args):
    results = {"off": [], "on": []}
    for run in range(args.hit_runs):
        for mode in ("off", "on"):
            redis_flush(cluster.redis_port)
            cfg = cluster.member_config(standin, fleet=mode == "on", threads=1)
            p, port = cluster.start_proxy(f"hit-{mode}-{run}", cfg, core=1)
            if mode == "on":
                cluster.wait_synced(port)
            for _ in range(3):  # warm: the entry cached, the connections' buffers grown
                fb.request(port, "GET", secret)
            wrk(port, secret, 1)
            results[mode].append(wrk(port, secret, args.hit_seconds))
            cluster.stop([p])
            print(f"  hit run {run + 1} fleet {mode}: {results[mode][-1]:.0f} req/s",
                  file=sys.stderr)
    return {mode: {"runs": v, "median": statistics.median(v)} for mode, v in results.items()}


def write_report(out, args, rows, lag, hits):
    data = {"date": time.strftime("%Y-%m-%d"), "args": vars(args), "upstream": rows,
            "lag": lag, "hits": hits}
    with open(os.path.join(out, "fleet-s7.json"), "w") as f:
        json.dump(data, f, indent=2)
    one = rows[0]["upstream_requests"]
    lines = [
        "# s7: one process against three in fleet mode", "",
        f"Run {data['date']} with `bench/fleet/s7.py` on this machine (2 cores, loopback): "
        f"{args.keys} secrets, {args.readers} reader threads for {args.duration} s, secrets "
        f"cached {args.ttl_ms} ms (refresh ahead 1 s), stand-in upstream at 20 ms per call.",
        "", "| set-up | reads | upstream requests | vs 1 process |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['setup']} | {r['reads']} | {r['upstream_requests']} | "
                     f"{r['upstream_requests'] / one:.2f}x |")
    lines += ["", f"Invalidation lag on the three-process fleet (A's answer to B serving the "
              f"new data, B's refetch through the 20 ms upstream included, {lag['writes']} "
              f"writes): p50 {lag['p50_ms']:.2f} ms, p99 "
              f"{lag['p99_ms']:.2f} ms, max {lag['max_ms']:.2f} ms.", "",
              f"Hit throughput, one process, one io thread, wrk -t1 -c64, {args.hit_seconds} s "
              f"x {args.hit_runs} runs interleaved (median): fleet mode off "
              f"{hits['off']['median']:.0f} req/s, on {hits['on']['median']:.0f} req/s "
              f"({hits['on']['median'] / hits['off']['median']:.3f}x).", "",
              "![s7](fleet-s7.png)", ""]
    with open(os.path.join(out, "fleet-s7.md"), "w") as f:
        f.write("\n".join(lines))
    plot(out, rows, hits)


def plot(out, rows, hits):
    dat = os.path.join(out, ".fleet-s7.dat")
    with open(dat, "w") as f:
        for i, r in enumerate(rows):
            label = r["setup"].replace(", ", "\\n")
            f.write(f"{i} \"{label}\" {r['upstream_requests']}\n")
        f.write("\n\n")
        f.write(f"0 \"fleet mode off\" {hits['off']['median']:.0f}\n")
        f.write(f"1 \"fleet mode on\" {hits['on']['median']:.0f}\n")
    script = f"""
set terminal pngcairo size 1100,420 font ',10'
set output '{os.path.join(out, "fleet-s7.png")}'
set multiplot layout 1,2
set style fill solid 0.6
set boxwidth 0.6
set grid ytics
set yrange [0:*]
set offsets 0.5, 0.5, graph 0.12, 0
set bmargin 5
set title 'Upstream requests, same workload'
plot '{dat}' index 0 using 1:3:xtic(2) with boxes notitle, '' index 0 using 1:3:3 with labels offset 0,0.7 notitle
set title 'Cache-hit throughput (req/s, median)'
plot '{dat}' index 1 using 1:3:xtic(2) with boxes notitle, '' index 1 using 1:3:3 with labels offset 0,0.7 notitle
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    os.unlink(dat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--ttl-ms", type=int, default=5000)
    ap.add_argument("--readers", type=int, default=6)
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--hit-runs", type=int, default=3)
    ap.add_argument("--hit-seconds", type=int, default=5)
    args = ap.parse_args()
    if not (1 <= args.duration <= 300 and 1 <= args.keys <= 1000 and 1 <= args.readers <= 64
            and 1 <= args.writes <= 10000 and 1 <= args.hit_runs <= 20
            and 1 <= args.hit_seconds <= 60):
        sys.exit("s7.py: an argument is out of its bounds")
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        cluster = fb.Cluster(args.binary, d)
        try:
            cluster.start_redis()
            seed = cluster.start_standin()
            secrets = [fb.create_secret(seed, account(i)) for i in range(args.keys)]
            cluster.stop()  # the seeding stand-in; the measured one answers in 20 ms
            cluster.procs = []
            cluster.start_redis()
            standin = cluster.start_standin(latency_ms=20)
            print("s7: upstream requests", file=sys.stderr)
            rows = measure_upstream(cluster, standin, secrets, args)
            print("s7: invalidation lag", file=sys.stderr)
            lag = measure_lag(cluster, standin, secrets[0], args)
            print("s7: hit throughput", file=sys.stderr)
            hits = measure_hits(cluster, standin, secrets[0], args)
        finally:
            cluster.stop()
    write_report(args.out, args, rows, lag, hits)
    print(open(os.path.join(args.out, "fleet-s7.md")).read())


if __name__ == "__main__":
    main()
