# shellcheck shell=bash
# Healing figures, sourced by bench/run once the throughput rounds are done.
#
# For each setup that replaces dead workers: SIGKILL one worker, then
#  - the time until a new worker (a pid not seen before the kill) answers `GET /pid` on a
#    fresh connection (median of $heal_trials trials);
#  - how many of $heal_probes connections opened right after the kill get neither an answer
#    nor a close within 2 s: a round-robin master that hands a connection to the dead worker leaves it
#    hanging; with a shared socket the kernel gives it to a live worker.
# bench/lib/probe.py does the kill and the probing from one already-running process.

heal_trials=${heal_trials:-20}
heal_probes=${heal_probes:-20}

# heal_one ID PORT SUPERVISOR_PID -> "median_ms hung_total trials"
heal_one() {
  local p=$2 sup=$3 times=() hung=0 before victim ms path=/pid
  # The demo has no /pid: its GET / answer names the pid ("worker=1 pid=4712 gen=1").
  [ "$1" = Q ] && path=/
  for _ in $(seq 1 "$heal_trials"); do
    before=$(workers_of "$sup")
    victim=$(head -1 <<<"$before")
    [ -n "$victim" ] || break
    local h
    # shellcheck disable=SC2086 # one argument per old pid
    read -r ms h < <(PROBE_PATH=$path python3 bench/lib/probe.py "$p" "$victim" "$heal_probes" $before)
    hung=$((hung + h))
    [ "$ms" = "-" ] && ms=""
    [ -n "$ms" ] && times+=("$ms")
    # Let the pool settle back to its size before the next kill, and let the replacement
    # outlive preforkd's min_uptime (1 s): killing it sooner counts as a failed start, and
    # enough of those in a row make preforkd give up, as it should for a real crash loop.
    for _ in $(seq 1 500); do
      [ "$(workers_of "$sup" | wc -l)" -ge "$(wc -l <<<"$before")" ] && break
      sleep 0.01
    done
    sleep 1.1
  done
  local median="-"
  if [ ${#times[@]} -gt 0 ]; then
    median=$(printf '%s\n' "${times[@]}" | mid)
  fi
  echo "$median $hung ${#times[@]}"
}
