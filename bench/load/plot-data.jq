# Data files for plots.gp from the records of bench/load/run.sh (jq -s); $what selects:
#   throughput: "scenario secrets-proxy nginx-cache nginx-static" (median req/s, - if none)
#   latency:    "scenario server offered_rps p50_ms p99_ms p999_ms" (medians over runs)
#   memory:     "cached_secrets rss_mib"
def median: sort | if length == 0 then null
  elif length % 2 == 1 then .[length / 2 | floor]
  else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def cell: if . == null then "-" else tostring end;

. as $recs
| if $what == "throughput" then
    ([$recs[] | select(.mode == "throughput") | .scenario] | unique)[] as $s
    | [$s] + (["secrets-proxy", "nginx-cache", "nginx-static"]
        | map(. as $v | [$recs[] | select(.scenario == $s and .server == $v and .mode == "throughput") | .rps] | median | cell))
    | join(" ")
  elif $what == "latency" then
    [$recs[] | select(.mode == "latency")]
    | group_by([.scenario, .server, .fraction])[]
    | [.[0].scenario, .[0].server, (map(.offered_rps) | median | round),
       (map(.latency_us.p50 / 1000) | median), (map(.latency_us.p99 / 1000) | median),
       (map(.latency_us.p999 / 1000) | median)]
    | map(tostring) | join(" ")
  elif $what == "memory" then
    $recs[] | select(.scenario == "memory" and .mode == "rss")
    | "\(.cached_secrets) \(.vm_rss_kb / 1024)"
  else error("unknown $what") end
