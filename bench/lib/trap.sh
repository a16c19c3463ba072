# shellcheck shell=bash
# Sourced first by the bench/ scripts, which run under `set -Eeuo pipefail`: a command that
# fails ends the script with a report on stderr of where it was and what failed; so does a
# stop by SIGINT, SIGTERM or SIGHUP, which then exits with 128 + the signal's number.
#
#   step TEXT    names the step now running and logs it with the time; a failure's report
#                names it (set BENCH_STEP=TEXT to name a finer step without logging it)
#   bench_exit   removes this library's scratch file: a script that sets an EXIT trap of its
#                own calls it there
#
# The report gives the step, the file and line, the exit status, the function chain, and the
# source text of the line (of the whole pipeline when its lines end in | or \). For a pipeline
# it also gives each command's exit status and which command failed: bash's $BASH_COMMAND
# names a pipeline's last command even when an earlier one failed.
#
# Inside a `$(...)`, where bash clears -e and goes on after a failure, a failure is only noted
# in a scratch file: many are expected (a process that ended between a glob and its read).
# When the script then stops, the report shows the notes of the same step: for
# `n=$(cat a | wc -l)` bash's own status says only that the assignment failed. In a `set +e`
# stretch of the script itself (a cleanup) nothing is reported.

# The script's own path, for reading its lines after it changes directory.
bench_script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
BENCH_STEP=${BENCH_STEP:-starting}
bench_notes=$(mktemp "${TMPDIR:-/tmp}/bench-trap.XXXXXX")
bench_exit() { rm -f "$bench_notes"; }
trap bench_exit EXIT

bench_log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
step() {
  BENCH_STEP=$*
  : >"$bench_notes"
  bench_log "$*"
}

# bench_source_text FILE LINE -> the text of that line, joined with the lines before it that it
# continues (ending in |, || or \) and, while a single quote is left open, the lines after it;
# leading blanks trimmed; nothing when FILE cannot be read.
bench_source_text() {
  local file=$1
  [ "$file" = "$0" ] && file=$bench_script
  [ -r "$file" ] || return 0
  awk -v n="$2" 'NR <= n + 8 { l[NR] = $0 } END {
    s = n
    while (s > 1 && n - s < 8 && l[s - 1] ~ /(\||\\)[ \t]*$/) s--
    for (i = s; i <= n || (gsub(/\047/, "&", t) % 2 && i <= n + 8 && i in l); i++) {
      x = l[i]; sub(/^[ \t]+/, "", x); sub(/[ \t]*\\$/, "", x)
      t = t (i > s ? " " : "") x
    }
    print t }' "$file"
}

# bench_failed_commands TEXT STATUSES -> "command K of N (TEXT) exited with S" for each
# command of the one pipeline in TEXT that has as many commands as STATUSES has numbers and
# whose status is not 0; nothing when no pipeline or more than one fits. A small shell lexer:
# quotes, backslashes, $( ), ( ), { } groups, comments; pipelines end at ; && || and groups.
bench_failed_commands() {
  awk -v text="$1" -v statuses="$2" '
    function close_pipeline(end,    k, m, parts, from, i, c) {
      k = split(bars[d], parts, " ")
      if (k + 1 == n) {
        fits++
        out = ""; from = pstart[d]
        for (i = 1; i <= k + 1; i++) {
          to = (i <= k) ? parts[i] : end
          c = substr(text, from, to - from); gsub(/^[ \t]+|[ \t]+$/, "", c)
          if (st[i] != 0) out = out sprintf("command %d of %d (%s) exited with %s; ", i, n, c, st[i])
          from = to + 1
        }
      }
      bars[d] = ""; pstart[d] = end + 1
    }
    BEGIN {
      n = split(statuses, st, " ")
      if (n < 2) exit
      len = length(text); d = 0; pstart[0] = 1; q = ""
      for (i = 1; i <= len; i++) {
        ch = substr(text, i, 1); nx = substr(text, i + 1, 1); pv = substr(text, i - 1, 1)
        if (q == "\x27") { if (ch == "\x27") q = ""; continue }
        if (ch == "\\") { i++; continue }
        if (q == "\"") {
          if (ch == "\"") q = ""
          else if (ch == "$" && nx == "(") { i++; d++; open[d] = "("; inq[d] = "\""; q = ""; pstart[d] = i + 1; bars[d] = "" }
          continue
        }
        if (ch == "\x27" || ch == "\"") { q = ch; continue }
        if (ch == "#" && (i == 1 || pv ~ /[ \t;]/)) { len = i - 1; break }
        if (ch == "(") { d++; open[d] = "("; inq[d] = ""; pstart[d] = i + 1; bars[d] = ""; continue }
        if (ch == "{" && (i == 1 || pv ~ /[ \t;]/) && nx ~ /[ \t]/) { d++; open[d] = "{"; inq[d] = ""; pstart[d] = i + 1; bars[d] = ""; continue }
        if ((ch == ")" && d > 0 && open[d] == "(") || (ch == "}" && d > 0 && open[d] == "{" && pv ~ /[ \t;]/)) {
          close_pipeline(i); q = inq[d]; d--; continue
        }
        if (ch == "|" && nx == "|") { close_pipeline(i); i++; pstart[d] = i + 1; continue }
        if (ch == "&" && nx == "&") { close_pipeline(i); i++; pstart[d] = i + 1; continue }
        if (ch == ";") { close_pipeline(i); continue }
        if (ch == "|") { bars[d] = bars[d] (bars[d] == "" ? "" : " ") i; if (nx == "&") i++; continue }
      }
      while (d > 0) { close_pipeline(len + 1); d-- }
      close_pipeline(len + 1)
      if (fits == 1) { sub(/; $/, "", out); print out }
    }'
}

# The ERR trap: STATUS PIPESTATUS LINE of the failed command.
bench_on_err() {
  local rc=$1 statuses=$2 line=$3 file=${BASH_SOURCE[1]:-$0} how="stopped in" where calls="" text cmds i
  local to_notes=no
  case $- in
    *e*) [ "$BASH_SUBSHELL" = 0 ] || how="in a subshell, in" ;;
    *)
      [ "$BASH_SUBSHELL" = 0 ] && return 0
      # shellcheck disable=SC2016 # the words $(...), not an expansion
      how='inside $(...), where bash goes on, in'
      to_notes=yes
      ;;
  esac
  [ "$file" = "$0" ] && where="line $line" || where="$file line $line"
  for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do
    calls+="${calls:+; }in ${FUNCNAME[i]}, called at line ${BASH_LINENO[i]}"
    [ "${BASH_SOURCE[i + 1]}" = "$0" ] || calls+=" of ${BASH_SOURCE[i + 1]}"
  done
  text=$(bench_source_text "$file" "$line")
  [ ${#text} -le 300 ] || text="${text:0:300}…"
  {
    # The notes of this step's $(...) failures first, most recent last.
    if [ "$how" = "stopped in" ] && [ -s "$bench_notes" ]; then
      echo "$(date +%H:%M:%S) $0: before it, in the same step:"
      tail -n 8 "$bench_notes" | sed 's/^/  /'
    fi
    printf '%s %s: %s step "%s": %s%s failed with exit status %s: %s\n' "$(date +%H:%M:%S)" "$0" \
      "$how" "$BENCH_STEP" "$where" "${calls:+ ($calls)}" "$rc" "${text:-$BASH_COMMAND}"
    if [ "${statuses// /}" != "$statuses" ]; then
      cmds=$(bench_failed_commands "$text" "$statuses")
      printf '  the pipeline'\''s exit statuses: %s%s\n' "$statuses" "${cmds:+; $cmds}"
    fi
  } | if [ $to_notes = yes ]; then cat >>"$bench_notes"; else cat >&2; fi
}
trap 'bench_on_err "$?" "${PIPESTATUS[*]}" "$LINENO"' ERR

# A stop by a signal: NAME STATUS. bash runs this once the command it waits for has ended: at
# once for Ctrl-C, which reaches the whole process group, but a signal sent to the script's
# process alone waits for that command (a wrk run, say) to end.
bench_on_signal() {
  trap - ERR
  local calls="" i
  for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do
    calls+="${calls:+; }in ${FUNCNAME[i]}, called at line ${BASH_LINENO[i]}"
  done
  printf '%s %s: stopped by SIG%s in step "%s"%s while running: %s\n' "$(date +%H:%M:%S)" "$0" \
    "$1" "$BENCH_STEP" "${calls:+ ($calls)}" "$BASH_COMMAND" >&2
  exit "$2"
}
trap 'bench_on_signal INT 130' INT
trap 'bench_on_signal TERM 143' TERM
trap 'bench_on_signal HUP 129' HUP
