# Draws bench/results/throughput.png from a report's main table, sourced by bench/run.
# chart REPORT PNG
chart() {
  local report=$1 png=$2 data
  command -v gnuplot >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends gnuplot-nox >&2
  }
  data=$(mktemp)
  # "label" close-conn/s keep-alive-req/s, from rows like "| P preforkd + node (2) | 16420 | ... |"
  awk -F'|' '/^\| [A-Z][0-9]? / && $3 ~ /[0-9]/ {
      gsub(/^ +| +$/, "", $2); gsub(/^ +| +$/, "", $3); gsub(/^ +| +$/, "", $5)
      printf "\"%s\" %s %s\n", $2, $3, $5 }' "$report" >"$data"
  gnuplot <<GP
set terminal pngcairo size 1100,520 font "sans,10"
set output "$png"
set title "One request per connection (Connection: close), wrk -t2 -c64, same machine, same run"
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.8
set ylabel "connections per second (median)"
set xtics rotate by -30 left
set grid ytics
set key off
set yrange [0:*]
plot "$data" using 2:xtic(1) lc rgb "#3b73b9"
GP
  rm -f "$data"
}
