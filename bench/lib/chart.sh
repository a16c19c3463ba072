# shellcheck shell=bash
# Draws the report's charts, sourced by bench/run: throughput, latency and supervisor memory,
# from the report's main table.
# charts REPORT DIR SUFFIX -> DIR/{throughput,latency,memory}SUFFIX.png; prints the names drawn
charts() {
  local report=$1 dir=$2 suffix=$3 data
  command -v gnuplot >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends gnuplot-nox >&2
  }
  data=$(mktemp)
  # "label" close-conn/s close-p99 keep-alive-req/s keep-alive-p99 rss-idle rss-after, from rows
  # like "| P preforkd + node (2) | 16420 | 12.3 | 68606 | 3.76 | ... | 2.8 / 2.8 | ... |"; "-" is
  # gnuplot's missing value.
  awk -F'|' '/^\| setup \| close conn\/s/ { main = 1; next } main && !/^\|/ { main = 0 }
    main && /^\| [A-Z][0-9]? / {
      for (i = 2; i <= 11; i++) gsub(/^ +| +$/, "", $i)
      split($10, rss, " / ")
      printf "\"%s\" %s %s %s %s %s %s\n", $2, $3, $4, $5, $6, rss[1], rss[2] }' "$report" >"$data"
  gnuplot <<GP || { rm -f "$data"; return 1; }
set terminal pngcairo size 1100,520 font "sans,10"
set datafile missing "-"
set style data histograms
set style fill solid 0.8 border -1
set xtics rotate by -30 left
set grid ytics
set yrange [0:*]

set output "$dir/throughput$suffix.png"
set title "One request per connection (Connection: close), wrk -t2 -c64, same machine, same run"
set ylabel "connections per second (median)"
set key off
set boxwidth 0.8
plot "$data" using 2:xtic(1) lc rgb "#3b73b9"

set output "$dir/latency$suffix.png"
set title "p99 latency, wrk -t2 -c64 (lower is better)"
set ylabel "ms (median of the runs' p99)"
set key top left
set style histogram clustered gap 1
set boxwidth 0.9
plot "$data" using 3:xtic(1) title "Connection: close" lc rgb "#3b73b9", \
     "" using 5 title "keep-alive" lc rgb "#8cb2e0"

set output "$dir/memory$suffix.png"
set title "RSS of the supervising process (preforkd, cluster primary, PM2 daemon, gunicorn arbiter)"
set ylabel "MiB"
set key top right
plot "$data" using 6:xtic(1) title "idle" lc rgb "#3b73b9", \
     "" using 7 title "after the load rounds" lc rgb "#e0863b"
GP
  rm -f "$data"
  printf '%s\n' "throughput$suffix.png" "latency$suffix.png" "memory$suffix.png"
}
