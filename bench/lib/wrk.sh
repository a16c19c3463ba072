# shellcheck shell=bash
# wrk's figures, sourced by bench/run: what it measured, and what went wrong on the way.

# wrk_figures < WRK_OUTPUT -> "req/s p99_ms non2xx connect read write timeout": the errors
# are those wrk counts (answers that are not 2xx or 3xx; sockets it could not connect, read,
# write, or that timed out). req/s and p99 are "-" when wrk printed none: it could not connect
# at all ("unable to connect to ..."), or it did not end.
wrk_figures() {
  awk '
    # "1.23ms" / "850.00us" / "1.02s" / "1.50m" -> ms
    function ms(v,    n) {
      n = v + 0
      if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
      return sprintf("%.2f", n)
    }
    /^Requests\/sec:/ { rps = $2 }
    $1 == "99%" { p99 = ms($2) }
    /^ *Non-2xx or 3xx responses:/ { bad = $NF }
    /^ *Socket errors:/ { gsub(/,/, ""); c = $4; r = $6; w = $8; t = $10 }
    END {
      if (rps == "") rps = "-"
      if (p99 == "") p99 = "-"
      printf "%s %s %d %d %d %d %d\n", rps, p99, bad, c, r, w, t
    }'
}

# wrk_errors_text "non2xx connect read write timeout" -> "0", or the non-zero counts in words
# ("750 non-2xx, 750 read").
wrk_errors_text() {
  awk '{
    split("non-2xx connect read write timeout", name, " ")
    for (i = 1; i <= 5; i++) if ($i > 0) { s = s sep $i " " name[i]; sep = ", " }
    print (s == "" ? "0" : s) }' <<<"$1"
}

# wrk_errors_add "a b c d e" "f g h i j" -> their sum, field by field
wrk_errors_add() {
  awk -v a="${1:-0 0 0 0 0}" -v b="$2" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    for (i = 1; i <= 5; i++) printf "%d%s", x[i] + y[i], (i < 5 ? " " : "\n") }'
}
