#!/usr/bin/env bash
# Soak: secrets-proxy under 30 minutes of mixed load, with reloads, connection churn and
# a faulty upstream; samples its RSS and open descriptors, plots them, and checks at the
# end that nothing an acknowledged write did was lost.
#
#   bench/soak.sh [--minutes N] [--out DIR] [--build-dir DIR] [--no-build] [--keep-tmp]
#
# What runs (everything on 127.0.0.1, bounded in time; everything started is stopped on
# exit):
#   - a stand-in upstream: secrets-proxy serving the embedded store with the cache off,
#     emulation.latency_ms 5 and emulation.error_rate 0.02 (one call in 50 answers 500);
#   - the proxy under test: secrets-proxy with the cache on (TTLs of 2 s, so entries
#     expire and refill all the time), two io threads, upstream http to the stand-in;
#   - bench/soak/driver.py: readers, a writer, connection churn (one connection per
#     request, requests cut off half-way, malformed requests, idle connections), SIGHUP
#     to the proxy every 15 s and the stand-in stopped (SIGSTOP) for 3 s every minute.
#     Every 5 s it samples the proxy's VmRSS and open descriptors.
# Results: DIR/soak.md (summary and verdict), DIR/soak.tsv (samples), DIR/soak.png (plot)
# (DIR: bench/results). "Flat" compares the median of the second and of the last fifth of
# the samples (the first fifth is warm-up: the cache and the allocator's arenas fill).
# Exits non-zero when a write was lost, the proxy died, or RSS or descriptors grew.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
minutes=30
out="$repo_root/bench/results"
build_dir="$repo_root/build/bench-load"
build=1
keep_tmp=0
while (($#)); do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --keep-tmp) keep_tmp=1; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

need=()
for p in jq gnuplot-nox python3 curl; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || need+=("$p")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
if ((build)); then
  "$repo_root/deploy/install-deps.sh" >/dev/null
  cmake -S "$repo_root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DSPROXY_BUILD_TESTS=OFF -DSPROXY_BUILD_BENCH=ON >/dev/null
  cmake --build "$build_dir" -j"$(nproc)" --target secrets-proxy >/dev/null
fi
build_dir="$(cd "$build_dir" && pwd)"
sproxy="$build_dir/proxy/secrets-proxy"
[[ -x "$sproxy" ]] || die "no binary at $sproxy"

work="$(mktemp -d /tmp/sproxy-soak.XXXXXX)"
pids=()
cleanup() {
  local status=$? pid i
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if ((keep_tmp)); then log "kept $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
sha256() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

# wait_port FILE PID: the port from the "listening on http://ADDR:PORT" line.
wait_port() {
  local i line
  for ((i = 0; i < 300; i++)); do
    line="$(grep -oE 'listening on http://[0-9.]+:[0-9]+' "$1" 2>/dev/null | head -1 || true)"
    [[ -n "$line" ]] && { echo "${line##*:}"; return 0; }
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

upstream_token="soak-upstream-$(rand_hex 16)"
admin_token="soak-admin-$(rand_hex 16)"
writer_token="soak-writer-$(rand_hex 16)"
reader_tokens=()
for i in 0 1 2; do reader_tokens+=("soak-reader$i-$(rand_hex 16)"); done
printf '%s\n' "$upstream_token" >"$work/upstream.token"
clients="$(jq -n --arg up "$(sha256 "$upstream_token")" --arg ad "$(sha256 "$admin_token")" \
  --arg wr "$(sha256 "$writer_token")" --arg r0 "$(sha256 "${reader_tokens[0]}")" \
  --arg r1 "$(sha256 "${reader_tokens[1]}")" --arg r2 "$(sha256 "${reader_tokens[2]}")" '
  ["access","ai_gateway","containers","dex","websearch","workers"] as $all | [
  {name: "soak-upstream", token_sha256: $up, services: $all, accounts: ["*"], permissions: ["read","write","admin"]},
  {name: "soak-admin", token_sha256: $ad, services: $all, accounts: ["*"], permissions: ["read","write","admin"]},
  {name: "soak-writer", token_sha256: $wr, services: $all, accounts: ["*"], permissions: ["read","write"]},
  {name: "soak-reader0", token_sha256: $r0, services: ["workers"], accounts: ["*"], permissions: ["read"]},
  {name: "soak-reader1", token_sha256: $r1, services: ["dex","access"], accounts: ["*"], permissions: ["read"]},
  {name: "soak-reader2", token_sha256: $r2, services: $all, accounts: ["*"], permissions: ["read"]}]')"

mkdir -p "$work/standin" "$work/proxy"
jq -n --argjson clients "$clients" --arg dir "$work/standin" '{
  listen: {address: "127.0.0.1", port: 0, threads: 1},
  clients: $clients,
  store: {data_path: ($dir + "/store.db"), key_file: ($dir + "/store.key"), key_env: "SPROXY_SOAK_STANDIN_KEY",
          max_stores_per_account: 10, max_secrets_per_account: 100000},
  upstream: {kind: "embedded"},
  cache: {enabled: false},
  log: {access: false, file: ($dir + "/standin.log")},
  emulation: {latency_ms: 5, error_rate: 0.02}}' >"$work/standin.json"
(cd "$work" && exec "$sproxy" --config "$work/standin.json") >"$work/standin.out" 2>"$work/standin.err" &
standin_pid=$!
pids+=("$standin_pid")
standin_port="$(wait_port "$work/standin.out" "$standin_pid")" || die "stand-in did not start: $(tail -3 "$work/standin.err")"

jq -n --argjson clients "$clients" --arg dir "$work/proxy" \
  --arg base "http://127.0.0.1:$standin_port/client/v4" --arg token "$work/upstream.token" '{
  listen: {address: "127.0.0.1", port: 0, threads: 2},
  clients: ($clients | map(select(.name != "soak-upstream"))),
  store: {data_path: ($dir + "/unused.db"), key_file: ($dir + "/unused.key"), key_env: "SPROXY_SOAK_PROXY_KEY"},
  upstream: {kind: "http", base_url: $base, token_file: $token,
             rate_limit_requests: 100000, rate_limit_window_s: 1, rate_limit_per_second: 0},
  cache: {enabled: true, stale_if_error_ms: 60000,
          ttl: {stores_ms: 2000, store_ms: 2000, secrets_ms: 2000, quota_ms: 2000, negative_ms: 1000}},
  log: {access: false, file: ($dir + "/proxy.log")},
  audit: {path: ($dir + "/audit.log")}}' >"$work/proxy.json"
"$sproxy" --check-config --config "$work/proxy.json" >/dev/null 2>"$work/proxy.check" ||
  die "proxy config refused: $(cat "$work/proxy.check")"
(cd "$work" && exec "$sproxy" --config "$work/proxy.json") >"$work/proxy.out" 2>"$work/proxy.err" &
proxy_pid=$!
pids+=("$proxy_pid")
proxy_port="$(wait_port "$work/proxy.out" "$proxy_pid")" || die "proxy did not start: $(tail -3 "$work/proxy.err")"
log "stand-in :$standin_port (pid $standin_pid), proxy :$proxy_port (pid $proxy_pid)"

# Seeding, straight into the stand-in: 4 accounts, one store each, 100 secrets a store.
seed_base="http://127.0.0.1:$standin_port/client/v4"
: >"$work/stores.txt"
for a in 1 2 3 4; do
  account="$(printf '50a4%028x' "$a")"
  store="$(curl -sS -H "Authorization: Bearer $upstream_token" -H 'Content-Type: application/json' \
    -d "{\"name\":\"soak_store_$a\"}" "$seed_base/accounts/$account/secrets_store/stores" |
    jq -r 'if .success then .result.id else error("store create failed") end')"
  for batch in 0 1 2 3; do
    jq -n --argjson b "$batch" --argjson a "$a" '[range(25) as $i | {
      name: "seed_\($a)_\($b)_\($i)", value: "seed-value-\($b)-\($i)",
      scopes: (["workers","dex","access","ai_gateway"] | [.[($i % 4)], .[(($i + 1) % 4)]]),
      comment: (if $i % 5 == 0 then null else "seed note \($i)" end)}]' >"$work/batch.json"
    # The stand-in fails 2% of its calls on purpose: retry a seed batch a few times.
    for try in 1 2 3 4 5; do
      ok="$(curl -sS -H "Authorization: Bearer $upstream_token" -H 'Content-Type: application/json' \
        --data-binary "@$work/batch.json" \
        "$seed_base/accounts/$account/secrets_store/stores/$store/secrets" | jq -r .success)"
      [[ "$ok" == "true" ]] && break
      ((try < 5)) || die "seeding failed"
    done
  done
  echo "$account $store" >>"$work/stores.txt"
done
log "seeded 4 stores of 100 secrets; soak of $minutes minutes starts"

mkdir -p "$out"
status=0
python3 "$repo_root/bench/soak/driver.py" --port "$proxy_port" --pid "$proxy_pid" \
  --standin-port "$standin_port" --standin-pid "$standin_pid" --standin-token "$upstream_token" \
  --admin-token "$admin_token" --writer-token "$writer_token" \
  --reader-tokens "$(IFS=,; echo "${reader_tokens[*]}")" --stores "$work/stores.txt" \
  --duration "$((minutes * 60))" --samples "$out/soak.tsv" >"$work/summary.json" || status=$?
[[ -s "$work/summary.json" ]] || die "the driver wrote no summary"

# Flatness: medians of the second and the last fifth of the samples.
read -r rss_a rss_b fds_a fds_b rss_max fds_max n <<<"$(awk -F'\t' 'NR > 1 { r[++n] = $2; f[n] = $3 }
  function med(a, lo, hi,   k, m, t, i, j) { m = 0; for (i = lo; i <= hi; i++) t[++m] = a[i]
    for (i = 2; i <= m; i++) { k = t[i]; for (j = i - 1; j >= 1 && t[j] > k; j--) t[j + 1] = t[j]; t[j + 1] = k }
    return t[int((m + 1) / 2)] }
  END { q = int(n / 5); if (q < 1) q = 1
    rm = 0; fm = 0; for (i = 1; i <= n; i++) { if (r[i] > rm) rm = r[i]; if (f[i] > fm) fm = f[i] }
    print med(r, q + 1, 2 * q), med(r, n - q + 1, n), med(f, q + 1, 2 * q), med(f, n - q + 1, n), rm, fm, n }' "$out/soak.tsv")"
verdict="flat"
# Allowed drift: 10% of RSS (allocator noise), 8 descriptors (connections in flight).
awk -v a="$rss_a" -v b="$rss_b" 'BEGIN { exit (b <= a * 1.10) ? 0 : 1 }' || verdict="RSS grew"
((fds_b <= fds_a + 8)) || verdict="descriptors grew"
[[ "$verdict" == "flat" ]] || status=1

gnuplot <<EOF
set terminal pngcairo size 1000,500 noenhanced
set output "$out/soak.png"
set title "secrets-proxy soak: RSS and open descriptors ($minutes min)"
set xlabel "minutes"
set ylabel "RSS (MiB)"
set y2label "open descriptors"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set key top left
plot "$out/soak.tsv" using (\$1/60):(\$2/1024) skip 1 with lines title "RSS (MiB)", \
     "$out/soak.tsv" using (\$1/60):3 skip 1 axes x1y2 with lines title "open descriptors"
EOF

commit="$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
{
  echo "# Soak ($(date -u +%F), commit $commit)"
  echo
  echo "$minutes minutes of mixed load on 127.0.0.1: readers, a writer, connection churn,"
  echo "SIGHUP every 15 s, the stand-in upstream stopped for 3 s every minute and failing"
  echo "2% of its calls. Verdict: **$verdict**, exit status $status."
  echo
  echo "| | second fifth (median) | last fifth (median) | max |"
  echo "| --- | ---: | ---: | ---: |"
  echo "| RSS (KiB) | $rss_a | $rss_b | $rss_max |"
  echo "| open descriptors | $fds_a | $fds_b | $fds_max |"
  echo
  echo "$n samples, one every 5 s; plot: soak.png; samples: soak.tsv."
  echo
  echo '```json'
  cat "$work/summary.json"
  echo '```'
} >"$out/soak.md"
log "verdict: $verdict; RSS $rss_a -> $rss_b KiB, descriptors $fds_a -> $fds_b; $out/soak.md"
exit "$status"
