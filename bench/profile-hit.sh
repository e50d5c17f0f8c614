#!/usr/bin/env bash
# Instruction profile of the cache-hit request path (load scenario s1: one hot secret,
# read with a scoped client's bearer token over keep-alive connections).
#
#   bench/profile-hit.sh [--build-dir DIR] [--requests N] [--connections C] [--out DIR]
#                        [--strace] [--wrk SECONDS [--runs R]] [--no-callgrind]
#
# Starts the Release secrets-proxy (one io thread, embedded store, cache on) with its
# own temp data dir, seeds one store with 100 secrets through the API, then restarts it
# under valgrind --tool=callgrind with collection off, warms the cache, collects exactly
# N keep-alive GETs of one secret (sproxy_loadgen, closed loop) and prints instructions
# per request and the top inclusive and self costs (callgrind_annotate). With --strace
# it also counts the server's syscalls per request (strace -c -f) over another N GETs.
# Nothing here is timed, so a busy machine does not change the numbers.
# With --wrk it also runs a quick wall-clock comparison, interleaved R times (default 3):
# wrk -t1 -c64 for SECONDS against secrets-proxy and against nginx proxy_cache
# (bench/load/nginx-cache.conf.in, caching the same answer), each server on core 1 and
# wrk on core 0, and prints requests/s and the ratio. On a shared machine only the ratio
# of side-by-side runs means anything; bench/load/run.sh is the full benchmark.
# Needs: valgrind, curl, jq (strace for --strace; wrk and nginx for --wrk); binds
# 127.0.0.1 only.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="$repo_root/build/rel"
requests=20000
connections=8
out_dir=""
do_strace=0
wrk_seconds=0
wrk_runs=3
do_callgrind=1
while (($# > 0)); do
  case "$1" in
    --build-dir) build_dir="$2"; shift ;;
    --requests) requests="$2"; shift ;;
    --connections) connections="$2"; shift ;;
    --out) out_dir="$2"; shift ;;
    --strace) do_strace=1 ;;
    --wrk) wrk_seconds="$2"; shift ;;
    --runs) wrk_runs="$2"; shift ;;
    --no-callgrind) do_callgrind=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "profile-hit.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ "$requests" =~ ^[1-9][0-9]*$ ]] || { echo "--requests must be a positive integer" >&2; exit 2; }

build_dir="$(cd "$build_dir" 2>/dev/null && pwd || echo "$build_dir")"
sproxy="$build_dir/proxy/secrets-proxy"
loadgen="$build_dir/bench/sproxy_loadgen"
[[ -x "$sproxy" && -x "$loadgen" ]] || { echo "build $sproxy and $loadgen first" >&2; exit 1; }

work="$(mktemp -d /tmp/sproxy-profile.XXXXXX)"
out_dir="${out_dir:-$work}"
mkdir -p "$out_dir"
server_pid=""
nginx_pid=""
cleanup() {
  local pid
  for pid in "$server_pid" "$nginx_pid"; do
    [[ -n "$pid" ]] || continue
    kill -TERM $(pgrep -P "$pid" -x secrets-proxy) "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ "$out_dir" == "$work" ]] || rm -rf "$work"
}
trap cleanup EXIT

rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
sha256() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
admin_token="profile-admin-$(rand_hex 16)"
reader_token="profile-reader-$(rand_hex 16)"
export SPROXY_PROFILE_KEY="$(rand_hex 32)"
export SPROXY_LOG_LEVEL=warn

jq -n --arg ad "$(sha256 "$admin_token")" --arg rd "$(sha256 "$reader_token")" \
  --arg dir "$work" '{
  listen: {address: "127.0.0.1", port: 0, threads: 1, idle_timeout_ms: 600000,
           read_timeout_ms: 600000, write_timeout_ms: 600000},
  clients: [
    {name: "profile-admin", token_sha256: $ad, services: ["workers"], accounts: ["*"],
     permissions: ["read", "write", "admin"]},
    {name: "profile-reader", token_sha256: $rd, services: ["workers"], accounts: ["*"],
     permissions: ["read"]}],
  store: {data_path: ($dir + "/store.db"), key_file: ($dir + "/store.key"),
          key_env: "SPROXY_PROFILE_KEY"},
  upstream: {kind: "embedded"},
  cache: {enabled: true, ttl: {secrets_ms: 3600000}},
  log: {access: false, file: ($dir + "/server.log")}}' >"$work/config.json"

# start [WRAPPER...]: starts the server, sets server_pid and base.
start() {
  : >"$work/server.out"
  (cd "$work" && exec "$@" "$sproxy" --config "$work/config.json") \
    >"$work/server.out" 2>"$work/server.err" &
  server_pid=$!
  local i line=""
  for ((i = 0; i < 600; i++)); do
    line="$(grep -m1 -oE 'listening on http://[0-9.]+:[0-9]+' "$work/server.out" || true)"
    [[ -n "$line" ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n "$line" ]] || { echo "server did not start: $(tail -5 "$work/server.err")" >&2; exit 1; }
  base="http://${line##*http://}"
}
stop() {
  # Under strace the server is strace's child: stop it, and strace ends with it.
  local child
  child="$(pgrep -P "$server_pid" -x secrets-proxy || true)"
  kill -TERM "${child:-$server_pid}" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

start
account="0000d001$(printf '%024x' 1)"
api="$base/client/v4/accounts/$account/secrets_store"
store="$(curl -sS -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
  -d '{"name":"profile_store"}' "$api/stores" | jq -er '.result.id')"
body="$(jq -nc '[range(100) | {name: "api_key_\(.)", value: "value-\(.)",
  scopes: ["workers"], comment: "credential, rotated quarterly"}]')"
secret="$(curl -sS -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
  -d "$body" "$api/stores/$store/secrets" | jq -er '.result[0].id')"
stop
target="/client/v4/accounts/$account/secrets_store/stores/$store/secrets/$secret"

load() {  # load N [HITS]: N closed-loop keep-alive GETs of the hot secret, HITS of them hits
  "$loadgen" --url "$base" --target "$target" -H "Authorization: Bearer $reader_token" \
    --connections "$connections" --rate 0 --duration 600 --max-requests "$1" \
    --timeout-ms 600000 >"$work/load.json"
  jq -e --argjson n "$1" --argjson hits "${2:-0}" \
    '.completed == $n and .failed == 0 and (.x_cache.HIT // 0) >= $hits' \
    "$work/load.json" >/dev/null || { echo "load run failed: $(cat "$work/load.json")" >&2; exit 1; }
}

if ((do_callgrind)); then
start valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out_dir/callgrind.out"
curl -sS -o "$work/answer.txt" -D "$work/answer.head" -H "Authorization: Bearer $reader_token" \
  "$base$target"
load 500  # warm-up: cache filled, connections' buffers grown, metric children made
callgrind_control -i on "$server_pid" >/dev/null
load "$requests" "$requests"
callgrind_control -d "$server_pid" >/dev/null  # writes callgrind.out.1
callgrind_control -i off "$server_pid" >/dev/null
stop

profile="$out_dir/callgrind.out.1"
total="$(callgrind_annotate "$profile" | awk '/PROGRAM TOTALS/ && !t { gsub(/,/, "", $1); t = $1 } END { print t }')"
# Function names cut to 150 characters: Beast's buffer types run to thousands.
annotate() { callgrind_annotate --threshold=99 "$@" "$profile" | sed -n '/^Ir  *file:function/,$p' | sed -n '3,42p' | cut -c1-150; }
{
  echo "answer bytes: $(wc -c <"$work/answer.txt") body + $(wc -c <"$work/answer.head") head"
  echo "requests: $requests over $connections connections"
  echo "instructions: $total total, $((total / requests)) per request"
  echo
  echo "== inclusive"
  annotate --inclusive=yes
  echo
  echo "== self"
  annotate
} | tee "$out_dir/summary.txt"
fi

if ((do_strace)); then
  start strace -c -f -o "$out_dir/strace.txt"
  load 500
  load "$requests" "$requests"
  stop
  echo
  echo "== syscalls ($((requests + 500)) requests + start-up)"
  head -25 "$out_dir/strace.txt"
fi
((do_callgrind)) && echo "profile: $profile"

if ((wrk_seconds > 0)); then
  start taskset -c 1
  proxy_url="$base"
  nginx_dir="$work/nginx"
  mkdir -p "$nginx_dir"/{body,proxy,fastcgi,uwsgi,scgi,cache}
  nginx_port=$((20000 + RANDOM % 20000))
  upstream_port="${base##*:}"
  sed -e "s|@DIR@|$nginx_dir|g" -e "s|@PORT@|$nginx_port|g" \
    -e "s|@UPSTREAM_PORT@|$upstream_port|g" -e "s|@TTL_S@|3600|g" \
    "$repo_root/bench/load/nginx-cache.conf.in" >"$nginx_dir/nginx.conf"
  taskset -c 1 nginx -p "$nginx_dir" -c "$nginx_dir/nginx.conf" -e "$nginx_dir/error.log" \
    >"$nginx_dir/stdout.log" 2>&1 &
  nginx_pid=$!
  for ((i = 0; i < 100; i++)); do
    curl -s -o /dev/null "http://127.0.0.1:$nginx_port/" && break
    sleep 0.1
  done
  nginx_url="http://127.0.0.1:$nginx_port"
  for u in "$proxy_url" "$nginx_url"; do  # prime both caches, then warm up
    curl -sS -o /dev/null -H "Authorization: Bearer $reader_token" "$u$target"
    taskset -c 0 wrk -t1 -c64 -d1s -H "Authorization: Bearer $reader_token" "$u$target" >/dev/null
  done
  hit="$(curl -sS -D - -o /dev/null -H "Authorization: Bearer $reader_token" "$nginx_url$target" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache" { print $2 }')"
  [[ "$hit" == "HIT" ]] || echo "warning: nginx answers X-Cache: $hit" >&2
  nginx_worker="$(pgrep -P "$nginx_pid" | head -1)"
  cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
  # run URL PID: "req/s requests-per-server-CPU-second". The second number does not
  # depend on how much of its core the server got, which on a shared machine varies.
  run() {
    local c0 c1 out
    c0="$(cpu_ticks "$2")"
    out="$(taskset -c 0 wrk -t1 -c64 -d"${wrk_seconds}s" -H "Authorization: Bearer $reader_token" \
      "$1$target")"
    c1="$(cpu_ticks "$2")"
    awk -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" '
      /requests in/ { n = $1 } /Requests\/sec:/ { rps = $2 }
      END { printf "%.0f %.0f\n", rps, (c > 0 ? n / (c / hz) : 0) }' <<<"$out"
  }
  proxy_runs=() nginx_runs=() proxy_cpu=() nginx_cpu=()
  for ((r = 0; r < wrk_runs; r++)); do
    read -r a b <<<"$(run "$proxy_url" "$server_pid")"
    proxy_runs+=("$a") proxy_cpu+=("$b")
    read -r a b <<<"$(run "$nginx_url" "$nginx_worker")"
    nginx_runs+=("$a") nginx_cpu+=("$b")
  done
  median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  echo
  echo "== wrk -t1 -c64 -d${wrk_seconds}s, server on core 1 (median of $wrk_runs, interleaved)"
  echo "                     req/s    requests per server CPU-second"
  printf 'secrets-proxy:       %-8s %-8s (runs: %s / %s)\n' "$(median "${proxy_runs[@]}")" \
    "$(median "${proxy_cpu[@]}")" "${proxy_runs[*]}" "${proxy_cpu[*]}"
  printf 'nginx proxy_cache:   %-8s %-8s (runs: %s / %s)\n' "$(median "${nginx_runs[@]}")" \
    "$(median "${nginx_cpu[@]}")" "${nginx_runs[*]}" "${nginx_cpu[*]}"
  awk -v p="$(median "${proxy_runs[@]}")" -v n="$(median "${nginx_runs[@]}")" \
    -v pc="$(median "${proxy_cpu[@]}")" -v nc="$(median "${nginx_cpu[@]}")" \
    'BEGIN { printf "ratio secrets-proxy / nginx proxy_cache: %.2f (req/s), %.2f (per CPU-second)\n", p / n, pc / nc }'
fi
