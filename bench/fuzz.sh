#!/usr/bin/env bash
# Long libFuzzer campaigns over the fuzz targets of tests/fuzz.
#
#   bench/fuzz.sh [--runs N | --seconds S] [--only TARGET]... [--jobs 1|2]
#                 [--build-dir DIR] [--work-dir DIR] [--results FILE] [--no-build]
#
# Builds the targets (Clang 14, -DSPROXY_FUZZ=ON, in build/fuzz unless told otherwise),
# then runs each target once, niced, for N executions (--runs, default 10,000,000) or S
# seconds (--seconds), one target at a time (--jobs 2: two at a time). Each target starts
# from its seed corpus (tests/fuzz/corpus/<target>, read only) and grows a work corpus of
# its own under the work dir (default build/fuzz/campaign/<target>), where crash, leak,
# timeout and OOM inputs land too; the repository is never written to.
# Prints and writes to bench/results/fuzz.md (--results) one row per target: executions,
# executions per second, libFuzzer's final coverage (cov: edges, ft: features), corpus
# size, peak RSS and crashes; targets not run keep their previous row, and a "## Notes"
# section at the end of the file is kept. Exits non-zero when a target crashed.
# A campaign resumes: a later run with the same work dir starts from the corpus it grew,
# and the row's campaign total sums the executions of all its runs
# (<work dir>/<target>/history.tsv: finished, executions, seconds, failing inputs).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="$repo_root/build/fuzz"
work_dir=""
results="$repo_root/bench/results/fuzz.md"
runs=10000000
seconds=0
jobs=1
build=1
only=()
all_targets=(simple_get_fuzz route_query_fuzz request_body_fuzz config_fuzz page_reader_fuzz
             persist_fuzz credentials_fuzz)

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
  case "$1" in
    --runs) runs="$2"; seconds=0; shift 2 ;;
    --seconds) seconds="$2"; runs=0; shift 2 ;;
    --only) only+=("$2"); shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --work-dir) work_dir="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[[ "$jobs" == 1 || "$jobs" == 2 ]] || { echo "fuzz.sh: --jobs is 1 or 2" >&2; exit 2; }
work_dir="${work_dir:-$build_dir/campaign}"
targets=("${only[@]:-${all_targets[@]}}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
done

if ((build)); then
  export CCACHE_BASEDIR="$repo_root" CCACHE_NOHASHDIR=1
  if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
    CC=clang-14 CXX=clang++-14 cmake -S "$repo_root" -B "$build_dir" -G Ninja \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPROXY_FUZZ=ON \
      -DSPROXY_BUILD_TESTS=OFF -DSPROXY_BUILD_BENCH=OFF >/dev/null
  fi
  cmake --build "$build_dir" -j2 --target "${targets[@]}"
fi

# Runs one target; its log is <work>/<target>/fuzz.log.
run_target() {
  local t="$1" dir="$work_dir/$1"
  mkdir -p "$dir/corpus"
  rm -f "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* "$dir"/oom-*
  local budget=(-runs="$runs")
  ((seconds > 0)) && budget=(-max_total_time="$seconds")
  local start end
  start=$(date +%s)
  nice -n 10 "$build_dir/tests/fuzz/$t" "${budget[@]}" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="$dir/" "$dir/corpus" \
    "$repo_root/tests/fuzz/corpus/$t" >"$dir/fuzz.log" 2>&1 || true
  end=$(date +%s)
  echo $((end - start)) >"$dir/seconds"
  # The campaign's history: one line per run (finished, executions, seconds, crashes).
  local execs crashes
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/fuzz.log" | tail -1)
  crashes=$(failing_inputs "$t")
  printf '%s\t%s\t%s\t%s\n' "$(date -u '+%Y-%m-%d %H:%M')" "${execs:-0}" $((end - start)) \
    "$crashes" >>"$dir/history.tsv"
}

# How many failing inputs (crash, leak, timeout, OOM) the last run of a target left.
failing_inputs() {
  find "$work_dir/$1" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
    -o -name 'oom-*' \) | wc -l
}

# Executions over every run of a target's campaign (its work dir), and how many runs.
campaign_total() {
  awk -F'\t' '{ n += $2; runs++ } END { printf "%d in %d run(s)", n, runs }' \
    "$work_dir/$1/history.tsv" 2>/dev/null || echo "?"
}

# One markdown row from a target's log.
report_row() {
  local t="$1" dir="$work_dir/$1" log="$work_dir/$1/fuzz.log"
  local execs rate cov ft corp rss crashes
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2)
  crashes=$(failing_inputs "$t")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s MB | %s |\n' "$t" "$budget_text" \
    "$(date -u '+%Y-%m-%d %H:%M')" "${execs:-?}" "$(campaign_total "$t")" "${rate:-?}" \
    "$(cat "$dir/seconds" 2>/dev/null || echo '?')" "${cov:-?}" "${ft:-?}" "${corp:-?}" \
    "${rss:-?}" "$crashes"
}

pending=("${targets[@]}")
while ((${#pending[@]})); do
  batch=("${pending[@]:0:$jobs}")
  pending=("${pending[@]:$jobs}")
  for t in "${batch[@]}"; do
    echo "fuzz.sh: $t ($( ((seconds > 0)) && echo "$seconds s" || echo "$runs runs"))" >&2
    run_target "$t" &
  done
  wait
done

budget_text="$( ((seconds > 0)) && echo "${seconds} s" || echo "$runs runs")"
rows="$work_dir/rows.md"
: >"$rows"
for t in "${targets[@]}"; do report_row "$t" >>"$rows"; done
# Rows of the targets run now replace theirs; the other targets keep their last row.
{
  echo "# Fuzzing campaigns"
  echo
  echo "Written by bench/fuzz.sh ($(clang++-14 --version | head -1); libFuzzer with ASan +"
  echo "UBSan; each target starts from its seed corpus, tests/fuzz/corpus/<target>). Last run:"
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$repo_root" rev-parse --short HEAD),"
  echo "$jobs target(s) at a time, niced, on $(nproc) shared cores"
  echo "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))."
  echo
  echo "| target | budget | finished (UTC) | executions | campaign total | execs/s | seconds | cov (edges) | ft (features) | corpus | peak RSS | crashes |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for t in "${all_targets[@]}"; do
    if grep -q "^| $t |" "$rows"; then
      grep "^| $t |" "$rows"
    elif [[ -f "$results" ]] && grep -q "^| $t |" "$results"; then
      grep "^| $t |" "$results"
    fi
  done
  if [[ -f "$results" ]] && grep -q '^## Notes' "$results"; then
    echo
    sed -n '/^## Notes/,$p' "$results"
  fi
} >"$results.new"
mv "$results.new" "$results"
cat "$results"

total_crashes=0
for t in "${targets[@]}"; do
  n=$(failing_inputs "$t")
  if ((n)); then
    echo "fuzz.sh: $t: $n failing input(s) in $work_dir/$t (log: $work_dir/$t/fuzz.log)" >&2
    total_crashes=$((total_crashes + n))
  fi
done
((total_crashes == 0))
