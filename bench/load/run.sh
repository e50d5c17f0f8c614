#!/usr/bin/env bash
# Load benchmark: secrets-proxy against nginx proxy_cache (the peer) and nginx
# `return 200` with the same bytes (the ceiling), side by side in one run.
#
#   bench/load/run.sh [--quick] [--only s1,s4,...] [--runs N] [--duration S]
#                     [--latency-runs N] [--latency-duration S] [--no-rt] [--out DIR]
#                     [--build-dir DIR] [--no-build] [--keep-tmp]
#
# What it does, in order:
#   1. installs what is missing from Debian (apt-get, only when something is missing),
#      builds secrets-proxy and sproxy_loadgen (Release);
#   2. starts a stand-in upstream: secrets-proxy serving the embedded store over HTTP
#      with the cache off, its own temp data dir, raised store limits; seeds it through
#      the API (first without latency), then restarts it with emulation.latency_ms = 20;
#      in front of it a counting relay (sproxy_loadgen --relay) that tells how many
#      requests reached the upstream;
#   3. per scenario starts the servers under test (secrets-proxy with the cache on, one
#      thread, upstream http -> relay -> stand-in; nginx proxy_cache with one worker in
#      front of the same relay, with open_file_cache, upstream keep-alive and no access
#      log; nginx return 200), each pinned to core 1 (and under
#      SCHED_FIFO for fixed-rate runs, see --no-rt); load generators, relay and
#      stand-in on core 0;
#   4. primes and warms every server, then interleaves runs (A B A B ...): throughput
#      with wrk -t1 -c64 --latency (closed loop), then latency with sproxy_loadgen at
#      fixed rates (25/50/75% of the slowest server's median maximum; open loop,
#      paced by the clock without a kernel timer per request, measured from the
#      scheduled send time), recording upstream requests (relay),
#      server CPU (utime+stime from /proc/PID/stat) and peak RSS (VmHWM);
#   5. measures secrets-proxy's RSS with 0, 10k and 100k cached secrets (the 0 point after
#      the same 64-connection load against /healthz, which caches nothing);
#   6. writes bench/results/results.md, results.jsonl and PNG plots (gnuplot), and
#      prints the secrets-proxy / nginx ratios.
#
# Scenarios: s1 hot key; s2 10,000-secret working set; s3 list queries; s4 cold-miss
# stampede; s5 expiry under load (short TTL); s6 95% reads / 5% writes; s7 one process
# against three in fleet mode (bench/fleet/s7.py: upstream requests, invalidation lag,
# hit throughput with fleet mode on and off; needs redis-server). nginx proxy_cache runs
# s1, s2, s4, s5; the ceiling runs s1.
#
# Full run (default): per scenario and server, 3 runs of 10 s (wrk) and 5 x 3 fixed-rate
#   runs of 8 s: 22 minutes of load, about 25 in all (seeding, priming, s4, memory) once
#   built; build first (or pass --no-build) when the time matters.
# --quick: 3 s runs, 1 s warm-up, one run, one rate (50%): a smoke run (about 3 minutes).
# --only LIST: run only these scenarios (comma-separated: s1 ... s7, mem for the memory
#   table); only the data they need is seeded.
# --latency-runs N: fixed-rate runs per rate and server (default 5; --runs sets the
#   throughput runs). A p99 is decided by the few requests that meet a stall of the
#   machine (see --no-rt); more runs make its median steadier.
# --no-rt: fixed-rate runs with the servers under test as ordinary processes. By default
#   each runs them under SCHED_FIFO priority 1 (chrt; root only, else ordinary with a
#   warning), the same for every server, so that other work on its core (a VM's agents
#   at raised priority, whose bursts of a few ms arrive about once a second) waits for
#   it instead of stalling it. Kernel threads that do not yield (kdamond) still stall
#   every server alike. Throughput runs always use the ordinary policy.
# --no-build: use the binaries already in --build-dir (default build/bench-load).
# --keep-tmp: keep the temp dir (configs, logs, targets) for a look afterwards.
# Everything binds to 127.0.0.1; every load is bounded in time and count; everything
# started here is stopped on exit. Benchmarks are never run in CI.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
load_dir="$repo_root/bench/load"

# ---------------------------------------------------------------------------------------
# Options

quick=0
only=""
runs=""
duration=""
latency_runs=""
latency_duration=""
realtime=1
out_dir="$repo_root/bench/results"
build_dir="${SPROXY_BENCH_BUILD_DIR:-$repo_root/build/bench-load}"
keep_tmp=0
do_build=1
server_core="${SPROXY_BENCH_SERVER_CORE:-1}"
load_core="${SPROXY_BENCH_LOAD_CORE:-0}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while (($# > 0)); do
  case "$1" in
    --quick) quick=1 ;;
    --only) only="$2"; shift ;;
    --runs) runs="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --latency-runs) latency_runs="$2"; shift ;;
    --latency-duration) latency_duration="$2"; shift ;;
    --no-rt) realtime=0 ;;
    --out) out_dir="$2"; shift ;;
    --build-dir) build_dir="$2"; shift ;;
    --keep-tmp) keep_tmp=1 ;;
    --no-build) do_build=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if ((quick)); then
  runs="${runs:-1}"
  latency_runs="${latency_runs:-1}"
  duration="${duration:-3}"
  latency_duration="${latency_duration:-$duration}"
  warmup=1
  fractions=(0.50)
else
  runs="${runs:-3}"
  latency_runs="${latency_runs:-5}"
  duration="${duration:-10}"
  # 5 x 3 fixed-rate runs per server dominate the run time; 8 s still gives tens of
  # thousands of samples per run at 25% of the maximum.
  latency_duration="${latency_duration:-8}"
  warmup=3
  fractions=(0.25 0.50 0.75)
fi
[[ "$runs" =~ ^[1-9][0-9]*$ && "$latency_runs" =~ ^[1-9][0-9]*$ ]] ||
  { echo "run.sh: --runs and --latency-runs must be positive integers" >&2; exit 2; }
[[ "$duration" =~ ^[1-9][0-9]*$ && "$latency_duration" =~ ^[1-9][0-9]*$ ]] ||
  { echo "run.sh: --duration and --latency-duration must be whole seconds" >&2; exit 2; }
[[ -z "$only" || ",$only," =~ ^(,(s[1-7]|mem))+,$ ]] ||
  { echo "run.sh: --only expects a comma-separated list of s1 ... s7 and mem" >&2; exit 2; }
# want NAME: is scenario NAME (s1 ... s7, mem) part of this run?
want() { [[ -z "$only" || ",$only," == *",$1,"* ]]; }

# The data set and the knobs of each scenario.
connections=64                 # wrk -c and sproxy_loadgen --connections
upstream_latency_ms=20         # the stand-in's emulation.latency_ms
long_ttl_ms=3600000            # s1-s4, s6: nothing expires during the run
expiry_ttl_s=2                 # s5: TTL of both caches
expiry_keys=10                 # s5: keys (stores for secrets-proxy, URIs for nginx)
stampede_clients=1000          # s4
ws_accounts=10                 # working set: 10 accounts x 10 stores x 100 secrets
ws_stores_per_account=10
secrets_per_store=100
bulk_accounts=9                # memory: 9 more accounts x 100 stores x 100 secrets
bulk_stores_per_account=100
stampede_runs=$((runs > 5 ? runs : 5))  # s4: stampedes per server (each takes a second)
stampede_stores=$((2 * stampede_runs + 2))   # a store per stampede, one first miss per server

# The relay stands for the network to a remote API: on the load core it runs ahead of
# the load generator, whose send bursts would otherwise delay forwarding (by 1-5 ms, seen
# in the first stampede). It does little per request, so the open-loop generator, which
# counts its own delays against the server, is barely held back.
relay_niceness="nice -n -10"

# Fixed-rate runs: the servers under test under SCHED_FIFO priority 1, all alike (see
# --no-rt in the header).
server_sched=""
if ((realtime)); then
  if chrt -f 1 true 2>/dev/null; then
    server_sched="chrt -f 1"
  else
    printf 'run.sh: warning: cannot use SCHED_FIFO (not root?); servers run as ordinary processes\n' >&2
  fi
fi

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------
# Dependencies and build

install_packages() {
  "$repo_root/deploy/install-deps.sh" >&2
  local wanted=(nginx-light wrk gnuplot-nox jq curl procps util-linux coreutils) missing=()
  local p
  for p in "${wanted[@]}"; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] ||
      missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  ((EUID == 0)) || die "missing packages (${missing[*]}) and not running as root"
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

build() {
  log "building secrets-proxy and sproxy_loadgen (Release) in $build_dir"
  cmake -S "$repo_root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2
  cmake --build "$build_dir" -j"$(nproc)" --target secrets-proxy sproxy_loadgen >&2
}

install_packages
if ((do_build)); then build; fi
sproxy="$build_dir/proxy/secrets-proxy"
loadgen="$build_dir/bench/sproxy_loadgen"
[[ -x "$sproxy" && -x "$loadgen" ]] || die "build did not produce $sproxy and $loadgen"
(($(nproc) >= 2)) || log "warning: fewer than 2 cores; server and load share one"

# s7 (fleet mode) brings its own Redis, stand-in and processes (bench/fleet/s7.py) and
# writes its own report (fleet-s7.md, .json, .png); it runs first, before anything here
# is started.
if want s7; then
  log "s7: one process against three in fleet mode (bench/fleet/s7.py)"
  python3 "$repo_root/bench/fleet/s7.py" --binary "$sproxy" --out "$out_dir" >&2
  [[ "$only" == s7 ]] && { log "results: $out_dir/fleet-s7.md"; exit 0; }
fi

# 1,000 stampede clients plus their upstream connections.
if (($(ulimit -n) < 16384)); then ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; fi

# ---------------------------------------------------------------------------------------
# Processes: everything started here is listed in `pids` and stopped on exit.

work="$(mktemp -d /tmp/sproxy-bench.XXXXXX)"  # mode 0700: tokens and configs live here
pids=()

stop_pid() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local kept=() p
  for p in "${pids[@]}"; do [[ "$p" == "$pid" ]] || kept+=("$p"); done
  pids=("${kept[@]}")
}

cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if ((keep_tmp)); then
    log "kept $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Is something listening on 127.0.0.1:PORT (or [::]:PORT)?
port_listening() {
  local hex
  hex="$(printf '%04X' "$1")"
  awk -v hex=":$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == hex { found = 1 }
       END { exit found ? 0 : 1 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# Is PORT the local port of any TCP socket (listening or connected)?
port_used() {
  local hex
  hex="$(printf '%04X' "$1")"
  awk -v hex=":$hex" 'FNR > 1 && substr($2, length($2) - 4) == hex { found = 1 }
       END { exit found ? 0 : 1 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# A port for nginx, below the ephemeral range so that no outgoing connection takes it.
free_port() {
  local low high port i
  read -r low high </proc/sys/net/ipv4/ip_local_port_range
  for ((i = 0; i < 200; i++)); do
    if ((low > 12000)); then
      port=$((10000 + RANDOM % (low - 10000)))
    else
      port=$((high + 1 + RANDOM % (65535 - high)))
    fi
    port_used "$port" || { echo "$port"; return 0; }
  done
  die "no free port found"
}

# wait_line FILE REGEX PID: the first match of REGEX in FILE (20 s at most).
wait_line() {
  local file="$1" regex="$2" pid="$3" i line
  for ((i = 0; i < 200; i++)); do
    line="$(grep -m1 -oE "$regex" "$file" 2>/dev/null || true)"
    [[ -n "$line" ]] && { echo "$line"; return 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

# start_sproxy NAME CONFIG CORE: sets started_pid and started_port. (Not in a subshell:
# the process must stay a child of this shell, in `pids`.)
start_sproxy() {
  local name="$1" config="$2" core="$3" pid line
  "$sproxy" --check-config --config "$config" >/dev/null 2>"$work/$name.check" ||
    die "$name: config refused: $(cat "$work/$name.check")"
  (cd "$work" && exec taskset -c "$core" "$sproxy" --config "$config") \
    >"$work/$name.out" 2>"$work/$name.err" &
  pid=$!
  pids+=("$pid")
  line="$(wait_line "$work/$name.out" 'listening on http://[0-9.]+:[0-9]+' "$pid")" ||
    die "$name did not start: $(tail -5 "$work/$name.err")"
  started_pid="$pid"
  started_port="${line##*:}"
}

# start_relay UPSTREAM_PORT: sets started_pid and started_port.
start_relay() {
  local pid line
  $relay_niceness taskset -c "$load_core" "$loadgen" --relay --listen 127.0.0.1:0 \
    --upstream "127.0.0.1:$1" >"$work/relay.out" 2>"$work/relay.err" &
  pid=$!
  pids+=("$pid")
  line="$(wait_line "$work/relay.out" 'listening on http://[0-9.]+:[0-9]+' "$pid")" ||
    die "relay did not start: $(cat "$work/relay.err")"
  started_pid="$pid"
  started_port="${line##*:}"
}

# render TEMPLATE OUT NAME=VALUE...: replaces @NAME@ literally (values may hold anything).
render() {
  local tpl="$1" out="$2" kv names=() envs=()
  shift 2
  for kv in "$@"; do
    names+=("${kv%%=*}")
    envs+=("RENDER_${kv%%=*}=${kv#*=}")
  done
  env "${envs[@]}" awk -v names="${names[*]}" '
    BEGIN { n = split(names, keys, " ") }
    {
      line = $0
      for (i = 1; i <= n; i++) {
        key = "@" keys[i] "@"; value = ENVIRON["RENDER_" keys[i]]; done = ""
        while ((p = index(line, key)) > 0) {
          done = done substr(line, 1, p - 1) value
          line = substr(line, p + length(key))
        }
        line = done line
      }
      print line
    }' "$tpl" >"$out"
}

# start_nginx NAME TEMPLATE NAME=VALUE...: sets started_pid (the master), started_worker
# and started_port.
start_nginx() {
  local name="$1" tpl="$2" dir="$work/$1" port pid worker i attempt
  shift 2
  mkdir -p "$dir"/{body,proxy,fastcgi,uwsgi,scgi,cache}
  for attempt in 1 2 3; do
    port="$(free_port)"
    render "$tpl" "$dir/nginx.conf" DIR="$dir" PORT="$port" "$@"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>"$dir/check.log" ||
      die "$name: nginx -t failed: $(cat "$dir/check.log")"
    : >"$dir/error.log"
    taskset -c "$server_core" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
      >"$dir/stdout.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    for ((i = 0; i < 100; i++)); do
      port_listening "$port" && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    port_listening "$port" && break
    stop_pid "$pid"
    # Someone took the port between the check and the bind: try another one.
    grep -q 'Address already in use' "$dir/error.log" && ((attempt < 3)) && continue
    die "$name did not start: $(tail -5 "$dir/error.log")"
  done
  worker=""
  for ((i = 0; i < 50 && ${#worker} == 0; i++)); do
    worker="$(ps -o pid=,args= --ppid "$pid" | awk '/worker process/ && !found { print $1; found = 1 }')"
    [[ -n "$worker" ]] || sleep 0.1
  done
  [[ -n "$worker" ]] || die "$name: no worker process"
  started_pid="$pid"
  started_worker="$worker"
  started_port="$port"
}

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
# Busy ticks of one core, whoever ran on it (user nice system irq softirq steal).
core_ticks() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
clk_tck="$(getconf CLK_TCK)"
now_s() { date +%s.%N; }

# ---------------------------------------------------------------------------------------
# Identities and configs

rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
sha256() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

upstream_token="bench-upstream-$(rand_hex 16)"
reader_token="bench-reader-$(rand_hex 16)"
writer_token="bench-writer-$(rand_hex 16)"
printf '%s\n' "$upstream_token" >"$work/upstream.token"
all_scopes='["access","ai_gateway","containers","dex","websearch","workers"]'

clients_json="$(jq -n \
  --arg up "$(sha256 "$upstream_token")" --arg rd "$(sha256 "$reader_token")" \
  --arg wr "$(sha256 "$writer_token")" --argjson all "$all_scopes" '[
    {name: "bench-upstream", token_sha256: $up, services: $all, accounts: ["*"],
     permissions: ["read", "write", "admin"]},
    {name: "bench-reader", token_sha256: $rd, services: ["workers"], accounts: ["*"],
     permissions: ["read"]},
    {name: "bench-writer", token_sha256: $wr, services: ["workers"], accounts: ["*"],
     permissions: ["read", "write"]}]')"

# standin_config LATENCY_MS OUT
standin_config() {
  jq -n --argjson clients "$clients_json" --arg dir "$work/standin" \
    --argjson latency "$1" '{
    listen: {address: "127.0.0.1", port: 0, threads: 1, max_connections: 20000,
             idle_timeout_ms: 600000},
    clients: $clients,
    store: {data_path: ($dir + "/store.db"), key_file: ($dir + "/store.key"),
            key_env: "SPROXY_BENCH_STANDIN_KEY", max_stores_per_account: 1000,
            max_secrets_per_account: 1000000},
    upstream: {kind: "embedded"},
    cache: {enabled: false},
    log: {access: false, file: ($dir + "/standin.log")},
    emulation: {latency_ms: $latency}}' >"$2"
}

# proxy_config TTL_MS OUT: the secrets-proxy under test (cache on, one thread).
proxy_config() {
  jq -n --argjson clients "$clients_json" --arg dir "$work/proxy" \
    --arg base "http://127.0.0.1:$relay_port/client/v4" --arg token "$work/upstream.token" \
    --argjson ttl "$1" '{
    listen: {address: "127.0.0.1", port: 0, threads: 1, max_connections: 20000,
             idle_timeout_ms: 600000},
    clients: ($clients | map(select(.name != "bench-upstream"))),
    store: {data_path: ($dir + "/unused.db"), key_file: ($dir + "/unused.key"),
            key_env: "SPROXY_BENCH_PROXY_KEY"},
    # The stand-in has no account rate limit: lift the budget of the guard (and the
    # share of each client) so that miss-heavy scenarios measure the cache, not the budget.
    upstream: {kind: "http", base_url: $base, token_file: $token, max_connections: 64,
               rate_limit_requests: 100000, rate_limit_window_s: 1, rate_limit_per_second: 0,
               client_share: 1},
    cache: {enabled: true, max_bytes: 2147483648,
            ttl: {stores_ms: $ttl, store_ms: $ttl, secrets_ms: $ttl, quota_ms: $ttl,
                  negative_ms: 5000}},
    # As with nginx (access_log off): no line per request; other log lines go to a file.
    log: {access: false, file: ($dir + "/proxy.log")}}' >"$2"
}
mkdir -p "$work/standin" "$work/proxy" "$work/targets" "$work/bodies"
unset SPROXY_BENCH_STANDIN_KEY SPROXY_BENCH_PROXY_KEY SPROXY_LOG_LEVEL

# ---------------------------------------------------------------------------------------
# Seeding through the API (stand-in without latency, then restarted with it)

# account_id KIND INDEX: 32 hex characters.
account_id() { printf '%s%024x' "$1" "$2"; }
ws_kind=0000a001
stampede_kind=0000b001
bulk_kind=0000c001

# create_stores ACCOUNT COUNT PREFIX: prints the new store ids, one a line.
create_stores() {
  local acc="$1" n="$2" prefix="$3" cfg="$work/curl-stores.cfg" i
  : >"$cfg"
  for ((i = 0; i < n; i++)); do
    ((i == 0)) || echo next >>"$cfg"
    printf 'url = "%s/accounts/%s/secrets_store/stores"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "{\\"name\\":\\"%s_%03d\\"}"\n' \
      "$seed_base" "$acc" "$upstream_token" "$prefix" "$i" >>"$cfg"
  done
  curl -sS -K "$cfg" |
    jq -r 'if .success then .result.id else error("store create failed: \(.errors)") end'
}

# create_secrets ACCOUNT STORE_IDS_FILE: 100 secrets (scope workers) per store in one
# request each; prints "account store secret" lines.
create_secrets() {
  local acc="$1" ids="$2" cfg="$work/curl-secrets.cfg" store body i
  local kinds=(api db mail pay auth)
  : >"$cfg"
  while read -r store; do
    [[ -s "$cfg" ]] && echo next >>"$cfg"
    body="$work/bodies/$store.json"
    {
      printf '['
      for ((i = 0; i < secrets_per_store; i++)); do
        ((i > 0)) && printf ','
        if ((i % 3 == 0)); then
          printf '{"name":"%s_key_%03d","value":"value-%s-%03d-%s","scopes":["workers"],"comment":"%s credential, rotated quarterly"}' \
            "${kinds[i % 5]}" "$i" "${store:0:8}" "$i" "$RANDOM$RANDOM" "${kinds[i % 5]}"
        else
          printf '{"name":"%s_key_%03d","value":"value-%s-%03d-%s","scopes":["workers"]}' \
            "${kinds[i % 5]}" "$i" "${store:0:8}" "$i" "$RANDOM$RANDOM"
        fi
      done
      printf ']'
    } >"$body"
    printf 'url = "%s/accounts/%s/secrets_store/stores/%s/secrets"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata-binary = "@%s"\n' \
      "$seed_base" "$acc" "$store" "$upstream_token" "$body" >>"$cfg"
  done <"$ids"
  curl -sS -K "$cfg" | jq -r --arg acc "$acc" \
    'if .success then .result[] | "\($acc) \(.store_id) \(.id)"
     else error("secret create failed: \(.errors)") end'
}

# seed_accounts KIND ACCOUNTS STORES_PER_ACCOUNT OUT
seed_accounts() {
  local kind="$1" accounts="$2" stores="$3" out="$4" a acc
  : >"$out"
  for ((a = 0; a < accounts; a++)); do
    acc="$(account_id "$kind" "$a")"
    create_stores "$acc" "$stores" "store" >"$work/store-ids.txt"
    (($(wc -l <"$work/store-ids.txt") == stores)) || die "seeding: stores missing in $acc"
    create_secrets "$acc" "$work/store-ids.txt" >>"$out"
  done
}

log "seeding the stand-in (no latency) in $work"
standin_config 0 "$work/standin-seed.json"
start_sproxy standin-seed "$work/standin-seed.json" "$load_core"
seed_pid="$started_pid"
seed_base="http://127.0.0.1:$started_port/client/v4"
seed_started="$(now_s)"
seed_accounts "$ws_kind" "$ws_accounts" "$ws_stores_per_account" "$work/ws.txt"
: >"$work/stampede.txt"
: >"$work/bulk.txt"
if want s4; then seed_accounts "$stampede_kind" 1 "$stampede_stores" "$work/stampede.txt"; fi
if want mem; then seed_accounts "$bulk_kind" "$bulk_accounts" "$bulk_stores_per_account" "$work/bulk.txt"; fi
ws_count="$(wc -l <"$work/ws.txt")"
bulk_count="$(wc -l <"$work/bulk.txt")"
((ws_count == ws_accounts * ws_stores_per_account * secrets_per_store)) ||
  die "seeding: working set has $ws_count secrets"
log "seeded $ws_count + $bulk_count + $(wc -l <"$work/stampede.txt") secrets in $(awk -v a="$seed_started" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }') s"

# Size of one secret's JSON as the API returns it (a full list page).
first_ws_store="$(awk 'NR == 1 { print $1 "/secrets_store/stores/" $2 }' "$work/ws.txt")"
secret_json_bytes="$(curl -sS -H "Authorization: Bearer $upstream_token" \
  "$seed_base/accounts/$first_ws_store/secrets?per_page=100" |
  jq '[.result[] | tojson | utf8bytelength] | add / length | floor')"
stop_pid "$seed_pid"
rm -rf "$work/bodies"

standin_config "$upstream_latency_ms" "$work/standin.json"
start_sproxy standin "$work/standin.json" "$load_core"
standin_port="$started_port"
start_relay "$standin_port"
relay_port="$started_port"
relay_url="http://127.0.0.1:$relay_port"
relay_stats() { curl -sS "$relay_url/__relay/stats"; }
relay_reset() { curl -sS -X POST "$relay_url/__relay/reset" >/dev/null; }

# The stand-in must really be slow: that is what makes a miss expensive.
probe_target="$(awk 'NR == 1 { print "/client/v4/accounts/" $1 "/secrets_store/stores/" $2 "/secrets/" $3 }' "$work/ws.txt")"
standin_probe_ms="$(curl -sS -o /dev/null -w '%{time_total}' \
  -H "Authorization: Bearer $upstream_token" "$relay_url$probe_target" |
  awk '{ printf "%.1f", $1 * 1000 }')"
log "stand-in upstream on :$standin_port via relay :$relay_port; one uncached get took ${standin_probe_ms} ms"
awk -v t="$standin_probe_ms" -v l="$upstream_latency_ms" 'BEGIN { exit t + 0.5 >= l ? 0 : 1 }' ||
  log "warning: emulation.latency_ms=$upstream_latency_ms does not seem to be in effect"

# ---------------------------------------------------------------------------------------
# Targets (one request a line; used by sproxy_loadgen and by targets.lua for wrk)

secret_path() { printf '/client/v4/accounts/%s/secrets_store/stores/%s/secrets/%s' "$1" "$2" "$3"; }
t="$work/targets"
# s1: one hot secret.
read -r a s k <"$work/ws.txt"
echo "GET $(secret_path "$a" "$s" "$k")" >"$t/s1.txt"
# s2: every secret of the working set, interleaved so that neighbours are in other stores.
awk -v per="$secrets_per_store" '{ printf "%06d %06d GET /client/v4/accounts/%s/secrets_store/stores/%s/secrets/%s\n", (NR - 1) % per, int((NR - 1) / per), $1, $2, $3 }' \
  "$work/ws.txt" | sort | cut -d' ' -f3- >"$t/s2.txt"
# s3: list queries with varied paging, ordering and search over the working set's stores.
awk '!seen[$2]++ { print $1, $2 }' "$work/ws.txt" | awk '{
  base = "GET /client/v4/accounts/" $1 "/secrets_store/stores/" $2 "/secrets"
  print base
  print base "?page=2&per_page=20"
  print base "?per_page=50&order=name&direction=desc"
  print base "?search=pay&per_page=10"
  print base "?search=ROTATED&page=2&per_page=5&order=modified"
  print base "?scopes=workers&page=4&per_page=25&order=created&direction=desc"
}' | awk 'BEGIN { srand(42) } { printf "%.8f %s\n", rand(), $0 }' | sort | cut -d' ' -f2- >"$t/s3.txt"
# s5: the first secret of each of the first stores (one key per store).
awk -v n="$expiry_keys" '!seen[$2]++ && ++count <= n { printf "GET /client/v4/accounts/%s/secrets_store/stores/%s/secrets/%s\n", $1, $2, $3 }' \
  "$work/ws.txt" >"$t/s5.txt"
# s6: 95% gets over the working set, 5% value rotations (PATCH) of secrets in it.
awk 'BEGIN { srand(7) } { printf "%.8f %s %s %s\n", rand(), $1, $2, $3 }' "$work/ws.txt" |
  sort | awk 'NR <= 2000 {
    path = "/client/v4/accounts/" $2 "/secrets_store/stores/" $3 "/secrets/" $4
    if (NR % 20 == 0) printf "PATCH %s {\"value\":\"rotated-%d\"}\n", path, NR
    else print "GET " path
  }' >"$t/s6.txt"
# memory: one get per store warms its whole snapshot.
awk '!seen[$2]++ { printf "GET /client/v4/accounts/%s/secrets_store/stores/%s/secrets/%s\n", $1, $2, $3 }' \
  "$work/ws.txt" >"$t/mem-10k.txt"
awk '!seen[$2]++ { printf "GET /client/v4/accounts/%s/secrets_store/stores/%s/secrets/%s\n", $1, $2, $3 }' \
  "$work/bulk.txt" >"$t/mem-100k.txt"
# memory: as many requests that cache nothing (the 0-secret point sees the same load).
awk '{ print "GET /healthz" }' "$t/mem-10k.txt" >"$t/mem-0.txt"

# ---------------------------------------------------------------------------------------
# Measuring

records="$work/results.jsonl"
: >"$records"
declare -A url cpu_pid main_pid

# wrk_json OUTPUT_FILE: the numbers of a wrk --latency report as JSON.
wrk_json() {
  awk '
    function us(v) {
      if (v ~ /us$/) return v + 0
      if (v ~ /ms$/) return v * 1000
      if (v ~ /s$/) return v * 1000000
      return v + 0
    }
    /Requests\/sec:/ { rps = $2 }
    /requests in/ { requests = $1 }
    $1 == "50%" { p50 = us($2) } $1 == "75%" { p75 = us($2) }
    $1 == "90%" { p90 = us($2) } $1 == "99%" { p99 = us($2) }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(/,/, ""); errors = $4 + $6 + $8 + $10 }
    END {
      printf "{\"rps\":%s,\"requests\":%d,\"latency_us\":{\"p50\":%s,\"p90\":%s,\"p99\":%s},\"non2xx\":%d,\"errors\":%d}\n",
        rps + 0, requests, p50 + 0, p90 + 0, p99 + 0, non2xx, errors
    }' "$1"
}

# measure SCENARIO SERVER MODE RUN EXTRA_JSON -- COMMAND...: runs COMMAND (which prints
# one JSON object), and records it with the upstream requests (relay), the server's CPU,
# the load generator's CPU, and what else ran on the server's core meanwhile (other
# work on a shared machine).
measure() {
  local scenario="$1" server="$2" mode="$3" run="$4" extra="$5" out="$work/last.json"
  shift 6
  local pid="${cpu_pid[$server]}" c0 c1 k0 k1 l0 l1 t0 t1 up gen
  relay_reset
  c0="$(cpu_ticks "$pid")"
  k0="$(core_ticks "$server_core")"
  l0="$(core_ticks "$load_core")"
  t0="$(now_s)"
  { TIMEFORMAT='%3U %3S'; time "$@" >"$out" 2>"$work/cmd.err"; } 2>"$work/time.txt"
  t1="$(now_s)"
  l1="$(core_ticks "$load_core")"
  k1="$(core_ticks "$server_core")"
  c1="$(cpu_ticks "$pid")"
  up="$(relay_stats)"
  gen="$(awk 'END { printf "%.3f", $1 + $2 }' "$work/time.txt")"
  jq -c --arg scenario "$scenario" --arg server "$server" --arg mode "$mode" \
    --argjson run "$run" --argjson extra "$extra" --argjson up "$up" \
    --argjson cpu "$(awk -v a="$c0" -v b="$c1" -v h="$clk_tck" 'BEGIN { printf "%.3f", (b - a) / h }')" \
    --argjson core "$(awk -v a="$k0" -v b="$k1" -v h="$clk_tck" 'BEGIN { printf "%.3f", (b - a) / h }')" \
    --argjson load "$(awk -v a="$l0" -v b="$l1" -v h="$clk_tck" 'BEGIN { printf "%.3f", (b - a) / h }')" \
    --argjson gen "$gen" \
    --argjson wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" \
    'def pct(x): if $wall > 0 then (x / $wall * 1000 | round) / 10 else 0 end;
     {scenario: $scenario, server: $server, mode: $mode, run: $run, upstream: $up,
      cpu_s: $cpu, wall_s: $wall, cpu_pct: pct($cpu), generator_cpu_pct: pct($gen),
      core_other_pct: pct([$core - $cpu, 0] | max),
      load_core_other_pct: pct([$load - $gen, 0] | max)}
     + $extra + .' "$out" >>"$records"
  tail -1 "$records"
}

# wrk_cmd SERVER TARGETS_FILE SECONDS TOKEN
wrk_cmd() {
  local server="$1" targets="$2" seconds="$3" token="$4" raw="$work/wrk.txt"
  if (($(wc -l <"$targets") == 1)); then
    taskset -c "$load_core" wrk -t1 -c"$connections" -d"${seconds}s" --latency \
      -H "Authorization: Bearer $token" "${url[$server]}$(awk '{ print $2 }' "$targets")" >"$raw"
  else
    taskset -c "$load_core" wrk -t1 -c"$connections" -d"${seconds}s" --latency \
      -H "Authorization: Bearer $token" -s "$load_dir/targets.lua" "${url[$server]}" \
      -- "$targets" >"$raw"
  fi
  wrk_json "$raw"
}

# loadgen_cmd SERVER TARGETS_FILE TOKEN ARGS...
loadgen_cmd() {
  local server="$1" targets="$2" token="$3"
  shift 3
  taskset -c "$load_core" "$loadgen" --url "${url[$server]}" --targets "$targets" \
    -H "Authorization: Bearer $token" "$@"
}

# prime SERVER TARGETS TOKEN: one pass over every target (fills every cache entry).
prime() {
  loadgen_cmd "$1" "$2" "$3" --connections "$connections" --rate 0 --duration 120 \
    --max-requests "$(wc -l <"$2")" --timeout-ms 30000 >"$work/prime.json"
}

median_rps() { # SCENARIO SERVER
  jq -s --arg s "$1" --arg v "$2" '[.[] | select(.scenario == $s and .server == $v and .mode == "throughput") | .rps] | sort
    | if length == 0 then 0 elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end' "$records"
}

# Peak memory of each server at the end of a scenario.
record_memory() { # SCENARIO SERVER
  local pid="${cpu_pid[$2]}"
  jq -nc --arg scenario "$1" --arg server "$2" --argjson hwm "$(status_kb "$pid" VmHWM)" \
    --argjson rss "$(status_kb "$pid" VmRSS)" \
    '{scenario: $scenario, server: $server, mode: "memory", vm_hwm_kb: $hwm, vm_rss_kb: $rss}' >>"$records"
}

start_server() { # KIND SCENARIO TTL_MS [BODY_FILE]
  local kind="$1" scenario="$2" ttl_ms="$3"
  case "$kind" in
    secrets-proxy)
      proxy_config "$ttl_ms" "$work/proxy-$scenario.json"
      start_sproxy "proxy-$scenario" "$work/proxy-$scenario.json" "$server_core"
      started_worker="$started_pid" ;;
    nginx-cache)
      start_nginx "nginx-cache-$scenario" "$load_dir/nginx-cache.conf.in" \
        UPSTREAM_PORT="$relay_port" TTL_S="$((ttl_ms / 1000))" ;;
    nginx-static)
      start_nginx "nginx-static-$scenario" "$load_dir/nginx-static.conf.in" BODY="$(cat "$4")" ;;
  esac
  url[$kind]="http://127.0.0.1:$started_port"
  main_pid[$kind]="$started_pid"
  cpu_pid[$kind]="$started_worker"
}

stop_servers() { # SCENARIO SERVERS...
  local scenario="$1" s
  shift
  for s in "$@"; do
    record_memory "$scenario" "$s"
    stop_pid "${main_pid[$s]}"
    # nginx's cache files (10,000 in s2): gone now rather than all at once at the end.
    rm -rf "$work/$s-$scenario/cache"
  done
}

# reprime SCENARIO SERVER TARGETS TOKEN: before each measured s5 run, one unmeasured pass
# over its keys. With a TTL of 2 s, a cache left idle while the other server runs would
# otherwise start every run with expired entries (a cold start, not expiry under load).
reprime() {
  [[ "$1" == s5 && "$2" != nginx-static ]] || return 0
  prime "$2" "$3" "$4"
}

# set_sched fifo|other SERVERS...: every thread of each server's processes (nginx: the
# master and its children) under SCHED_FIFO priority 1 or back to the ordinary policy.
# Only fixed-rate runs use SCHED_FIFO: a server saturated by a closed loop would meet the
# kernel's real-time throttling (a pause of 50 ms a second).
set_sched() {
  local policy="$1" s p
  shift
  [[ -n "$server_sched" ]] || return 0
  for s in "$@"; do
    for p in "${main_pid[$s]}" $(pgrep -P "${main_pid[$s]}" || true); do
      if [[ "$policy" == fifo ]]; then
        chrt -a -f -p 1 "$p" >/dev/null 2>&1
      else
        chrt -a -o -p 0 "$p" >/dev/null 2>&1
      fi || ! kill -0 "$p" 2>/dev/null || die "$s: cannot set the $policy policy of pid $p"
      # (A process that has just ended, such as nginx's cache loader, is no error.)
    done
  done
}

# run_standard SCENARIO TOKEN TARGETS SERVERS...: warm-up, interleaved throughput runs,
# then interleaved fixed-rate runs at fractions of the slowest server's maximum.
run_standard() {
  local scenario="$1" token="$2" targets="$3" s r f rate slowest=""
  shift 3
  local servers=("$@")
  for s in "${servers[@]}"; do
    [[ "$s" == nginx-static ]] || prime "$s" "$targets" "$token"
    wrk_cmd "$s" "$targets" "$warmup" "$token" >/dev/null
  done
  for ((r = 1; r <= runs; r++)); do
    for s in "${servers[@]}"; do
      reprime "$scenario" "$s" "$targets" "$token"
      measure "$scenario" "$s" throughput "$r" '{}' -- wrk_cmd "$s" "$targets" "$duration" "$token" |
        jq -r '"  \(.scenario) \(.server) wrk: \(.rps) req/s, p99 \(.latency_us.p99) us, upstream \(.upstream.requests), cpu \(.cpu_pct)% (wrk \(.generator_cpu_pct)%; other work on the server core \(.core_other_pct)%, on the load core \(.load_core_other_pct)%)"' >&2
    done
  done
  for s in "${servers[@]}"; do
    [[ "$s" == nginx-static ]] && continue
    rate="$(median_rps "$scenario" "$s")"
    if [[ -z "$slowest" ]] || awk -v a="$rate" -v b="$slowest" 'BEGIN { exit a < b ? 0 : 1 }'; then
      slowest="$rate"
    fi
  done
  set_sched fifo "${servers[@]}"
  for ((r = 1; r <= latency_runs; r++)); do
    for f in "${fractions[@]}"; do
      rate="$(awk -v m="$slowest" -v f="$f" 'BEGIN { printf "%d", m * f }')"
      ((rate > 0)) || continue
      for s in "${servers[@]}"; do
        reprime "$scenario" "$s" "$targets" "$token"
        measure "$scenario" "$s" latency "$r" "{\"fraction\":$f}" -- \
          loadgen_cmd "$s" "$targets" "$token" --connections "$connections" --rate "$rate" \
          --duration "$latency_duration" --max-requests "$((rate * latency_duration + 1))" |
          jq -r '"  \(.scenario) \(.server) at \(.offered_rps) req/s: p50 \(.latency_us.p50) p99 \(.latency_us.p99) p99.9 \(.latency_us.p999) us, upstream \(.upstream.requests), x-cache \(.x_cache | tojson)"' >&2
      done
    done
  done
  set_sched other "${servers[@]}"
}

# ---------------------------------------------------------------------------------------
# Scenarios

scenario_titles='{
  "s1": "hot key: one secret get, scoped reader (services [workers], read)",
  "s2": "working set: 10,000 secrets in 100 stores of 10 accounts, all warm",
  "s3": "list queries: paging, ordering and search over 100 warm stores",
  "s4": "cold-miss stampede: clients ask at once for one uncached secret",
  "s5": "expiry under load: short TTL, 10 keys",
  "s6": "mixed: 95% secret gets, 5% value rotations (PATCH)"
}'

if want s1; then
  log "s1: hot key"
  start_server secrets-proxy s1 "$long_ttl_ms"
  start_server nginx-cache s1 "$long_ttl_ms"
  prime secrets-proxy "$t/s1.txt" "$reader_token"
  # The ceiling answers with the bytes of a real answer.
  curl -sS -H "Authorization: Bearer $reader_token" "${url[secrets-proxy]}$(awk '{ print $2 }' "$t/s1.txt")" \
    >"$work/s1-body.json"
  jq -e '.success == true' "$work/s1-body.json" >/dev/null || die "s1: unexpected answer: $(head -c 300 "$work/s1-body.json")"
  grep -q "[\\\\'\$]" "$work/s1-body.json" && die "s1: the captured body cannot go into nginx return verbatim"
  start_server nginx-static s1 0 "$work/s1-body.json"
  run_standard s1 "$reader_token" "$t/s1.txt" secrets-proxy nginx-cache nginx-static
  stop_servers s1 secrets-proxy nginx-cache nginx-static
fi

if want s2; then
  log "s2: working set of $ws_count secrets"
  start_server secrets-proxy s2 "$long_ttl_ms"
  start_server nginx-cache s2 "$long_ttl_ms"
  run_standard s2 "$reader_token" "$t/s2.txt" secrets-proxy nginx-cache
  stop_servers s2 secrets-proxy nginx-cache
fi

if want s3; then
  log "s3: list queries"
  start_server secrets-proxy s3 "$long_ttl_ms"
  run_standard s3 "$reader_token" "$t/s3.txt" secrets-proxy
  stop_servers s3 secrets-proxy
fi

if want s4; then
  log "s4: cold-miss stampede of $stampede_clients clients"
  start_server secrets-proxy s4 "$long_ttl_ms"
  start_server nginx-cache s4 "$long_ttl_ms"
  # stampede_target N OUT: the first secret of the N-th stampede store, which nothing
  # has read yet.
  stampede_target() {
    awk '!seen[$2]++' "$work/stampede.txt" | sed -n "${1}p" |
      awk '{ printf "GET /client/v4/accounts/%s/secrets_store/stores/%s/secrets/%s\n", $1, $2, $3 }' \
        >"$2"
    [[ -s "$2" ]] || die "s4: no unread stampede store left"
  }
  # Unmeasured: each server first answers one miss of a store of its own, so that the
  # first stampede measures a server that has been to the upstream before, not also the
  # process's first upstream call (code paged in, heap grown).
  spare_index=$((2 * stampede_runs))
  for s in secrets-proxy nginx-cache; do
    spare_index=$((spare_index + 1))
    stampede_target "$spare_index" "$t/s4-first-miss-$s.txt"
    prime "$s" "$t/s4-first-miss-$s.txt" "$reader_token"
  done
  stampede_index=0
  for ((r = 1; r <= stampede_runs; r++)); do
    for s in secrets-proxy nginx-cache; do
      stampede_index=$((stampede_index + 1))
      stampede_target "$stampede_index" "$t/s4-$stampede_index.txt"
      # Every connection is open and has been answered once (GET /healthz) before the
      # stampede; each request is timed on its own (see bench/loadgen/main.cpp, --stampede).
      measure s4 "$s" stampede "$r" "{\"clients\":$stampede_clients}" -- \
        loadgen_cmd "$s" "$t/s4-$stampede_index.txt" "$reader_token" \
        --connections "$stampede_clients" --warm /healthz --stampede --timeout-ms 30000 |
        jq -r 'def ms: if . == null then "-" else (. / 1e4 | round) / 100 | tostring end;
          def us: if . == null then null else . * 1000 end;
          "  s4 \(.server): \(.completed) answers, status \(.status | tojson), upstream \(.upstream.requests), p50 \(.latency_us.p50 | us | ms) p99 \(.latency_us.p99 | us | ms) max \(.latency_us.max | us | ms) ms (read by the generator: p99 \(.service_us.p99 | us | ms) ms); timeline ms: sends spread \(.send_spread_us | us | ms), first send to upstream request \(.upstream.first_request_ns - .first_send_ns | ms), upstream \(.upstream.max_upstream_us | us | ms), upstream answer to first answer \(.first_answer_ns - .upstream.last_answer_ns | ms), first to last answer \(.last_answer_ns - .first_answer_ns | ms); server cpu \(.cpu_s) s"' >&2
    done
  done
  stop_servers s4 secrets-proxy nginx-cache
fi

if want s5; then
  log "s5: expiry under load (TTL ${expiry_ttl_s} s, $expiry_keys keys)"
  start_server secrets-proxy s5 "$((expiry_ttl_s * 1000))"
  start_server nginx-cache s5 "$((expiry_ttl_s * 1000))"
  run_standard s5 "$reader_token" "$t/s5.txt" secrets-proxy nginx-cache
  stop_servers s5 secrets-proxy nginx-cache
fi

if want s6; then
  log "s6: 95% reads / 5% writes"
  start_server secrets-proxy s6 "$long_ttl_ms"
  run_standard s6 "$writer_token" "$t/s6.txt" secrets-proxy
  stop_servers s6 secrets-proxy
  # Each client PATCH is one upstream PATCH; every other upstream request is a refill.
  jq -s -r '[.[] | select(.scenario == "s6" and (.mode == "throughput" or .mode == "latency"))]
    | "  s6: \(map(.upstream.requests) | add) upstream requests for \([.[] | .upstream.by_method.PATCH // 0] | add) writes"' \
    "$records" >&2
fi

if want mem; then
  log "memory: secrets-proxy RSS with 0, 10k and 100k cached secrets"
  start_server secrets-proxy mem "$long_ttl_ms"
  memory_point() { # CACHED_SECRETS UPSTREAM_REQUESTS
    sleep 0.5
    jq -nc --argjson cached "$1" --argjson up "$2" --argjson rss "$(status_kb "${cpu_pid[secrets-proxy]}" VmRSS)" \
      --argjson hwm "$(status_kb "${cpu_pid[secrets-proxy]}" VmHWM)" --argjson json "$secret_json_bytes" \
      '{scenario: "memory", server: "secrets-proxy", mode: "rss", cached_secrets: $cached,
        upstream_requests: $up, vm_rss_kb: $rss, vm_hwm_kb: $hwm, secret_json_bytes: $json}' >>"$records"
    tail -1 "$records" | jq -r '"  \(.cached_secrets) cached secrets: RSS \(.vm_rss_kb) kB"' >&2
  }
  # The 0 point has served the same 64 connections (buffers, coroutine frames, malloc
  # arenas), so the differences count cached data only.
  prime secrets-proxy "$t/mem-0.txt" "$reader_token"
  memory_point 0 0
  relay_reset
  prime secrets-proxy "$t/mem-10k.txt" "$reader_token"
  memory_point "$ws_count" "$(relay_stats | jq .requests)"
  relay_reset
  prime secrets-proxy "$t/mem-100k.txt" "$reader_token"
  memory_point "$((ws_count + bulk_count))" "$(relay_stats | jq .requests)"
  stop_pid "${main_pid[secrets-proxy]}"
fi

# ---------------------------------------------------------------------------------------
# Report

mkdir -p "$out_dir"
cp "$records" "$out_dir/results.jsonl"
meta="$(jq -nc --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --argjson quick "$quick" \
  --argjson runs "$runs" --argjson duration "$duration" --argjson warmup "$warmup" \
  --argjson latency_runs "$latency_runs" --arg sched "${server_sched:-none}" \
  --argjson latency_duration "$latency_duration" \
  --argjson fractions "$(printf '%s\n' "${fractions[@]}" | jq -s .)" \
  --argjson connections "$connections" --argjson latency "$upstream_latency_ms" \
  --argjson probe "$standin_probe_ms" --argjson ttl "$expiry_ttl_s" \
  --argjson keys "$expiry_keys" --argjson clients "$stampede_clients" \
  --arg nginx "$(nginx -v 2>&1 | sed 's/.*nginx\///')" --arg wrk "$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')" \
  --arg cpu "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
  --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --argjson titles "$scenario_titles" \
  --arg commit "$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  '{date: $date, quick: ($quick == 1), runs: $runs, duration_s: $duration, latency_runs: $latency_runs, latency_duration_s: $latency_duration, warmup_s: $warmup, server_sched: $sched,
    fractions: $fractions, connections: $connections, upstream_latency_ms: $latency,
    upstream_probe_ms: $probe, expiry_ttl_s: $ttl, expiry_keys: $keys,
    stampede_clients: $clients, nginx: $nginx, wrk: $wrk, cpu: $cpu, loadavg: $load,
    titles: $titles, commit: $commit}')"

jq -s -r --argjson meta "$meta" -f "$load_dir/report.jq" "$records" >"$out_dir/results.md"
jq -s -r -f "$load_dir/plot-data.jq" --arg what throughput "$records" >"$work/throughput.dat"
jq -s -r -f "$load_dir/plot-data.jq" --arg what latency "$records" >"$work/latency.dat"
jq -s -r -f "$load_dir/plot-data.jq" --arg what memory "$records" >"$work/memory.dat"
rm -f "$out_dir"/*.png
gnuplot -e "datadir='$work'; outdir='$out_dir'" "$load_dir/plots.gp" 2>"$work/gnuplot.err" ||
  log "warning: gnuplot failed: $(head -5 "$work/gnuplot.err")"

echo
sed -n '/^## Ratios/,/^## /p' "$out_dir/results.md" | sed '$d'
log "results: $out_dir/results.md ($(ls "$out_dir"/*.png 2>/dev/null | wc -l) plots)"
