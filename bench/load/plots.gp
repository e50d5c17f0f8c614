# PNG plots of a bench/load/run.sh run. Call: gnuplot -e "datadir='D'; outdir='O'" plots.gp
# Data files (from plot-data.jq): throughput.dat, latency.dat, memory.dat.
set terminal pngcairo size 1000,600 font "sans,10"
set datafile missing '-'
set grid ytics
servers = "secrets-proxy nginx-cache nginx-static"
label(v) = v eq "nginx-cache" ? "nginx proxy\\_cache" : (v eq "nginx-static" ? "nginx return 200 (ceiling)" : v)
# A plot is drawn only when its data file has lines (run.sh --only may leave some empty).
has_data(f) = system(sprintf("test -s '%s/%s' && echo 1 || echo 0", datadir, f)) eq "1"

# Throughput per scenario.
if (has_data('throughput.dat')) {
set output outdir.'/throughput.png'
set title 'Throughput per scenario: median of wrk -t1 -c64 runs, one core per server'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel 'requests/s'
set yrange [0:*]
set key top right
plot datadir.'/throughput.dat' using 2:xtic(1) title label('secrets-proxy'), \
     '' using 3 title label('nginx-cache'), \
     '' using 4 title label('nginx-static')
}
unset style
set style data linespoints

# Latency at fixed rates, one plot per scenario.
scenarios = system("awk '{ print $1 }' ".datadir."/latency.dat | sort -u | tr '\\n' ' '")
set logscale y
set ylabel 'latency, ms (log scale)'
set xlabel 'offered requests/s (open loop, from scheduled send time)'
set yrange [*:*]
set xrange [0:*]
set key top left
do for [s in scenarios] {
  set output sprintf('%s/latency-%s.png', outdir, s)
  set title sprintf('%s: latency percentiles at fixed rates (medians over runs)', s)
  plot for [i = 1:words(servers)] datadir.'/latency.dat' \
         using ((strcol(1) eq s && strcol(2) eq word(servers, i)) ? $3 : NaN):5 \
         with linespoints lt i pt 7 dt 1 title label(word(servers, i)).' p99', \
       for [i = 1:words(servers)] datadir.'/latency.dat' \
         using ((strcol(1) eq s && strcol(2) eq word(servers, i)) ? $3 : NaN):6 \
         with linespoints lt i pt 9 dt 2 title label(word(servers, i)).' p99.9', \
       for [i = 1:words(servers)] datadir.'/latency.dat' \
         using ((strcol(1) eq s && strcol(2) eq word(servers, i)) ? $3 : NaN):4 \
         with linespoints lt i pt 5 dt 3 title label(word(servers, i)).' p50'
}
unset logscale y

# Memory of secrets-proxy against cached secrets.
if (has_data('memory.dat')) {
set output outdir.'/memory.png'
set title 'secrets-proxy RSS against cached secrets'
set xlabel 'cached secrets'
set ylabel 'RSS, MiB'
set yrange [0:*]
set xrange [0:*]
set key off
plot datadir.'/memory.dat' using 1:2 with linespoints lt 1 pt 7 lw 2
}
