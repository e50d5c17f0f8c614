#!/usr/bin/env bash
# check-dashboard.sh [DASHBOARD_JSON [METRICS_CPP]]
#
# Checks that the Grafana dashboard only queries what secrets-proxy exports:
#   1. the dashboard is valid JSON with panels, unique panel ids, and a non-empty
#      PromQL `expr` in every target of every panel;
#   2. every secrets_proxy_* name used in any query (panels and template variables) is a
#      metric that proxy/metrics.cpp registers, or the _bucket/_sum/_count series of a
#      histogram it registers;
#   3. every label used in a selector or in by()/without() is one that metrics.cpp
#      attaches (plus `le`, and the target labels job, instance and service);
#   4. when promtool is installed, every query parses as PromQL (checked as recording
#      rules, with Grafana's variables replaced by literals).
# Metric names are read from the "secrets_proxy_..." string literals of metrics.cpp and
# histograms from `BuildHistogram().Name(kName)`; labels from its `{"label", <expression>}`
# pairs (a pair whose value is a string literal is data, not a label).
# Needs bash, jq and perl. Exits 0 when every check passes, 1 with one line per
# problem otherwise, 2 on a usage or tool problem.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dashboard="${1:-$repo_root/deploy/grafana/secrets-proxy-dashboard.json}"
metrics_cpp="${2:-$repo_root/proxy/metrics.cpp}"

for tool in jq perl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "check-dashboard: $tool is required" >&2; exit 2; }
done
for f in "$dashboard" "$metrics_cpp"; do
  [[ -r $f ]] || { echo "check-dashboard: cannot read $f" >&2; exit 2; }
done

problems=()
problem() { problems+=("$1"); }

# ---- 1. JSON structure -------------------------------------------------------------------
if ! jq -e 'type == "object"' "$dashboard" >/dev/null 2>&1; then
  echo "check-dashboard: $dashboard is not a JSON object" >&2
  exit 1
fi
# Panels, including those nested in collapsed rows.
panels_filter='[.panels[]? | ., (.panels[]? // empty)] | map(select(.type != "row"))'
panel_count="$(jq "$panels_filter | length" "$dashboard")"
((panel_count > 0)) || problem "no panels"
while IFS= read -r dup; do
  problem "panel id $dup is used more than once"
done < <(jq -r "$panels_filter | group_by(.id)[] | select(length > 1) | .[0].id" "$dashboard")
while IFS= read -r title; do
  problem "panel \"$title\" has a target without a PromQL expr"
done < <(jq -r "$panels_filter | .[] | select((.targets // []) | length == 0 or any(.[]; (.expr // \"\") == \"\")) | .title" "$dashboard")

# Every query: panel targets and query template variables.
mapfile -t queries < <(jq -r '
  ([.panels[]? | ., (.panels[]? // empty)] | .[].targets[]?.expr // empty),
  (.templating.list[]? | select(.type == "query") | (.query.query? // .query // empty))
  | select(type == "string" and length > 0)' "$dashboard")
((${#queries[@]} > 0)) || problem "no queries found"

# ---- 2. metric names ----------------------------------------------------------------------
mapfile -t registered < <(perl -ne 'print "$1\n" while /"(secrets_proxy_[a-z0-9_]+)"/g' "$metrics_cpp" | sort -u)
mapfile -t histograms < <(perl -0777 -ne '
  my %name; $name{$1} = $2 while /constexpr\s+const\s+char\s*\*\s*(k\w+)\s*=\s*"(secrets_proxy_[a-z0-9_]+)"/g;
  while (/BuildHistogram\(\)\s*\.Name\((k\w+)\)/g) { print "$name{$1}\n" if exists $name{$1} }' "$metrics_cpp" | sort -u)
((${#registered[@]} > 0)) || { echo "check-dashboard: no metric names found in $metrics_cpp" >&2; exit 2; }

is_in() {
  local needle="$1"; shift
  local x
  for x in "$@"; do [[ $x == "$needle" ]] && return 0; done
  return 1
}

mapfile -t used < <(printf '%s\n' "${queries[@]}" | grep -oE 'secrets_proxy_[A-Za-z0-9_:]+' | sort -u || true)
((${#used[@]} > 0)) || problem "no secrets_proxy_* metric is queried"
for name in "${used[@]}"; do
  is_in "$name" "${registered[@]}" && continue
  if [[ $name =~ ^(.+)_(bucket|sum|count)$ ]] && is_in "${BASH_REMATCH[1]}" "${histograms[@]}"; then
    continue
  fi
  problem "metric $name is not registered by $(basename "$metrics_cpp")"
done

# ---- 3. label names ----------------------------------------------------------------------
mapfile -t labels < <({
  perl -0777 -ne 'print "$1\n" while /\{"([a-z_]+)",\s*+(?!")/g' "$metrics_cpp"
  printf '%s\n' le job instance service
} | sort -u)
mapfile -t used_labels < <(printf '%s\n' "${queries[@]}" | perl -ne '
  # by (...) / without (...)
  while (/\b(?:by|without)\s*\(([^)]*)\)/g) { print "$_\n" for grep { length } map { s/^\s+|\s+$//gr } split /,/, $1 }
  # selectors: {a="x", b=~"y"}
  while (/\{([^{}]*)\}/g) { my $s = $1; print "$1\n" while $s =~ /([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"/g }
' | sort -u)
for label in "${used_labels[@]}"; do
  is_in "$label" "${labels[@]}" || problem "label \"$label\" is not attached by $(basename "$metrics_cpp")"
done

# ---- 4. PromQL syntax (promtool) ----------------------------------------------------------
if command -v promtool >/dev/null 2>&1; then
  rules="$(mktemp)"
  trap 'rm -f "$rules"' EXIT
  {
    echo "groups:"
    echo "  - name: dashboard"
    echo "    rules:"
    i=0
    for q in "${queries[@]}"; do
      q="${q//\$__rate_interval/5m}"
      q="${q//\$__interval/1m}"
      q="${q//\$__range/1h}"
      q="$(printf '%s' "$q" | perl -pe 's/\$\{?(\w+)(?::\w+)?\}?/.*/g')"
      # label_values() is Grafana's, not PromQL: check the selector inside it.
      if [[ $q =~ ^label_values\((.*),[[:space:]]*[a-zA-Z_]+\)$ ]]; then q="${BASH_REMATCH[1]}"; fi
      i=$((i + 1))
      printf '      - record: dashboard:query_%d\n        expr: %s\n' "$i" "$(jq -Rn --arg q "$q" '$q')"
    done
  } >"$rules"
  if ! out="$(promtool check rules "$rules" 2>&1)"; then
    problem "promtool rejects a query: $(printf '%s' "$out" | grep -v '^Checking' | head -5 | tr '\n' ' ')"
  fi
else
  echo "check-dashboard: promtool not installed; PromQL syntax not checked" >&2
fi

if ((${#problems[@]} > 0)); then
  printf 'check-dashboard: %s\n' "${problems[@]}" >&2
  echo "check-dashboard: FAILED (${#problems[@]} problem(s)) for $dashboard" >&2
  exit 1
fi
echo "check-dashboard: OK: $panel_count panels, ${#queries[@]} queries, ${#used[@]} metric names, ${#used_labels[@]} labels, all exported by $(basename "$metrics_cpp")"
