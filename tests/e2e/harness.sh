#!/usr/bin/env bash
# End-to-end harness: a real systemd (Debian bookworm/trixie/sid: systemd 252/257/newest) as
# PID 1 in a systemd-nspawn container, for testing preforkd under socket activation.
#
#   harness.sh prepare                      install host tools, build/cache the rootfs
#   harness.sh up NAME                      boot a container, wait until running/degraded
#   harness.sh exec NAME -- CMD [ARG...]    run CMD inside (stdio and exit code pass through)
#   harness.sh cp NAME HOSTFILE GUESTPATH   copy a file into the running container
#   harness.sh down NAME                    stop it, remove its state and cgroups (idempotent)
#   harness.sh pid1 NAME                    print the host PID of the container's PID 1
#   harness.sh rootfs                       print the cached rootfs directory
#
# Environment:
#   PREFORKD_E2E_CACHE   cache directory         (default /var/cache/preforkd-e2e)
#   PREFORKD_E2E_STATE   per-container state     (default /tmp/preforkd-e2e)
#   PREFORKD_E2E_BINDS   "HOST:GUEST ..."         read-only bind mounts for `up`
#   PREFORKD_E2E_SUITE   Debian suite            (default bookworm; trixie, sid, ... work too)
#   PREFORKD_E2E_PACKAGES  comma list for debootstrap --include (default below)
#   PREFORKD_E2E_CGROUP  cgroup layout for `up`: unified (pure cgroup v2), nspawn (nspawn's
#                        choice: hybrid on a hybrid host); default nspawn for bookworm, unified
#                        for every other suite (systemd 258+ refuses to boot on v1 or hybrid)
#   PREFORKD_E2E_MIRROR  override the mirror otherwise taken from the host's apt configuration
#
# Exit codes: 77 = this machine cannot run containers (reason on stderr);
#             exec passes the command's own status through; harness errors are 1
#             (125 for `exec` on a container that is not up).
set -euo pipefail

CACHE=${PREFORKD_E2E_CACHE:-/var/cache/preforkd-e2e}
STATE=${PREFORKD_E2E_STATE:-/tmp/preforkd-e2e}
SUITE=${PREFORKD_E2E_SUITE:-bookworm}
BASE_PACKAGES=systemd,systemd-sysv,dbus,procps,python3-minimal,curl,ca-certificates
# gunicorn and nodejs: the recipes of examples/, run under the real systemd on bookworm only.
if [ "$SUITE" = bookworm ]; then BASE_PACKAGES+=,gunicorn,nodejs; fi
PACKAGES=${PREFORKD_E2E_PACKAGES:-$BASE_PACKAGES}
if [ "$SUITE" = bookworm ]; then CGROUP_DEFAULT=nspawn; else CGROUP_DEFAULT=unified; fi
CGROUP=${PREFORKD_E2E_CGROUP:-$CGROUP_DEFAULT}
case "$CGROUP" in unified | nspawn) ;; *)
  echo "harness: error: PREFORKD_E2E_CGROUP must be unified or nspawn, not '$CGROUP'" >&2; exit 1 ;;
esac
# Bump when the way the rootfs is post-processed changes (invalidates the cache key).
RECIPE=2
GUEST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
UP_DEADLINE=30
DOWN_DEADLINE=15
MASK_UNITS=(apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer
  e2scrub_all.timer e2scrub_reap.service fstrim.timer console-getty.service)

log() { printf 'harness: %s\n' "$*" >&2; }
die() { printf 'harness: error: %s\n' "$*" >&2; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

cache_key() {
  local pk
  pk=$(tr ',' '\n' <<<"$PACKAGES" | sed '/^$/d' | sort -u | paste -sd, -)
  printf 'suite=%s variant=minbase include=%s recipe=%s' "$SUITE" "$pk" "$RECIPE" |
    sha256sum | cut -c1-16
}
rootfs_dir() { echo "$CACHE/rootfs-$(cache_key)"; }

check_name() {
  [[ ${1:-} =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,62}$ ]] ||
    die "bad container name '${1:-}' (letters, digits, '-', at most 63)"
}

# Exit 77 if this machine cannot run containers at all.
check_can_run_containers() {
  if [ "$(id -u)" != 0 ]; then
    echo "harness: cannot run containers: must be root (systemd-nspawn without -U needs it)" >&2
    exit 77
  fi
  local err
  if ! err=$(unshare --mount --uts --ipc --net --pid --fork true 2>&1); then
    echo "harness: cannot run containers: creating namespaces failed: ${err//$'\n'/ }" >&2
    exit 77
  fi
  [ -d /sys/fs/cgroup ] || { echo "harness: cannot run containers: no /sys/fs/cgroup" >&2; exit 77; }
}

# ---------------------------------------------------------------- prepare

install_host_tools() {
  local need=()
  command -v systemd-nspawn >/dev/null || need+=(systemd-container)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v nsenter >/dev/null || need+=(util-linux)
  [ ${#need[@]} -eq 0 ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only if apt does not know the packages yet.
  local p cand
  for p in "${need[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ { print $2 }')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
      log "apt-get update"
      apt-get update -q >"$CACHE/apt.log" 2>&1 || { tail -n 20 "$CACHE/apt.log" >&2; die "apt-get update failed"; }
      break
    fi
  done
  log "apt-get install --no-install-recommends ${need[*]} (log: $CACHE/apt.log)"
  if ! apt-get install -y -q --no-install-recommends "${need[@]}" >"$CACHE/apt.log" 2>&1; then
    tail -n 20 "$CACHE/apt.log" >&2
    die "apt-get install ${need[*]} failed"
  fi
}

# The Debian mirror of the host's own apt configuration (never hard-coded).
find_mirror() {
  if [ -n "${PREFORKD_E2E_MIRROR:-}" ]; then echo "$PREFORKD_E2E_MIRROR"; return; fi
  local uri
  # 1. a configured repository that serves our suite
  uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
    awk -v s="$SUITE" '$2 == s { print $1; exit }')
  # 2. any Debian repository that is not the security archive
  [ -n "$uri" ] || uri=$(apt-get indextargets --format '$(REPO_URI) $(ORIGIN) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
    awk '$2 == "Debian" && $3 !~ /security/ { print $1; exit }')
  # 3. the sources files themselves (before any apt-get update)
  if [ -z "$uri" ]; then
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      case "$f" in
        *.sources) uri=$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f") ;;
        *) uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { if ($i !~ /security/) { print $i; exit } else break } }' "$f") ;;
      esac
      [ -n "$uri" ] && break
    done
  fi
  [ -n "$uri" ] || die "no Debian mirror found in the host's apt configuration (set PREFORKD_E2E_MIRROR)"
  echo "${uri%/}"
}

# Unmount anything below $1 (a killed debootstrap may leave proc/sys mounted) and remove it.
remove_tree() {
  local dir=$1 m
  [ -e "$dir" ] || return 0
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$dir" '{ gsub(/\\040/, " ", $5) } index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  rm -rf --one-file-system -- "$dir"
}

# Wait (up to 20 s) for PID and its descendants, SIGTERMing descendants that are left.
pkill_tree_wait() {
  local pid=$1 c
  for _ in $(seq 1 200); do
    [ -n "$(cmdline_of "$pid")" ] || break
    for c in $(children_of "$pid"); do kill -TERM "$c" 2>/dev/null || true; done
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
}

build_rootfs() {
  local root=$1 mirror tmp t0
  mirror=$(find_mirror)
  tmp="$root.tmp.$$"
  remove_tree "$tmp"
  local dlog="$CACHE/debootstrap-$SUITE.log"
  log "debootstrap --variant=minbase --include=$PACKAGES $SUITE from $mirror (log: $dlog)"
  t0=$(now)
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$mirror" \
    </dev/null >"$dlog" 2>&1 &
  local dbs=$! rc=0
  # Interrupted: stop debootstrap (and what it runs), drop the half-built tree.
  trap 'log "prepare interrupted"; kill -TERM "$dbs" 2>/dev/null; pkill_tree_wait "$dbs"; remove_tree "$tmp"; exit 130' INT TERM
  wait "$dbs" || rc=$?
  trap - INT TERM
  if [ "$rc" != 0 ]; then
    tail -n 20 "$dlog" >&2
    remove_tree "$tmp"
    die "debootstrap failed ($rc)"
  fi
  log "debootstrap done in $(since "$t0") s"
  # Trim: apt's cache and lists are of no use in the container.
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/cache/apt/*.bin \
    "$tmp"/var/lib/apt/lists/* "$tmp"/var/log/apt/* "$tmp"/var/cache/debconf/*-old
  mkdir -p "$tmp/var/lib/apt/lists/partial"
  # Quick, quiet boot: no apt/dpkg/e2scrub/fstrim timers, no console getty.
  local u
  for u in "${MASK_UNITS[@]}"; do ln -sfn /dev/null "$tmp/etc/systemd/system/$u"; done
  # debootstrap copies the host's /etc/hostname; without it the container keeps
  # the hostname nspawn gives it (the machine name).
  rm -f "$tmp/etc/hostname"
  echo "preforkd-e2e suite=$SUITE include=$PACKAGES recipe=$RECIPE built=$(date -u +%FT%TZ)" \
    >"$tmp/.preforkd-e2e-ok"
  mv -T "$tmp" "$root"
}

cmd_prepare() {
  local t0 root
  t0=$(now)
  check_can_run_containers
  mkdir -p "$CACHE"
  # Tests of several suites prepare at once: one apt-get at a time.
  exec {toolsfd}>"$CACHE/.tools.lock"
  flock -w 600 "$toolsfd" || die "timed out waiting for the lock $CACHE/.tools.lock"
  install_host_tools
  flock -u "$toolsfd"
  root=$(rootfs_dir)
  if [ -f "$root/.preforkd-e2e-ok" ]; then
    log "prepare: rootfs cached at $root ($(since "$t0") s)"
    return 0
  fi
  # One lock per rootfs, so different suites build at the same time.
  exec {lockfd}>"$root.lock"
  flock -w 1800 "$lockfd" || die "timed out waiting for the cache lock $root.lock"
  if [ ! -f "$root/.preforkd-e2e-ok" ]; then
    local old
    for old in "$root".tmp.*; do [ -e "$old" ] && remove_tree "$old"; done
    remove_tree "$root" # incomplete (no stamp)
    build_rootfs "$root"
  fi
  flock -u "$lockfd"
  log "prepare: rootfs ready at $root in $(since "$t0") s"
}

# ---------------------------------------------------------------- state helpers

sdir() { echo "$STATE/$1"; }

cmdline_of() { { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null || true; }

# True if PID is alive (not a zombie) and is the nspawn we started for NAME.
is_our_nspawn() {
  local pid=$1 name=$2 cl
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cl=$(cmdline_of "$pid")
  [[ $cl == *systemd-nspawn* && $cl == *" -M $name "* ]]
}

# True if PID is the container's PID 1 (a systemd that is PID 1 of its pid namespace).
is_container_pid1() {
  local pid=$1 comm
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = systemd ] || return 1
  awk '$1 == "NSpid:" { exit !(NF >= 3 && $NF == 1) }' "/proc/$pid/status" 2>/dev/null
}

# True if PID is an nsenter session of ours into PID1.
is_our_nsenter() {
  local pid=$1 pid1=$2 cl
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cl=$(cmdline_of "$pid")
  [[ $cl == "nsenter --target $pid1 --all "* ]]
}

children_of() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | sed '/^$/d' || true; }

# Running container's PID 1 (validated), or fail.
running_pid1() {
  local name=$1 d nsp pid1
  d=$(sdir "$name")
  nsp=$(cat "$d/nspawn.pid" 2>/dev/null) || return 1
  pid1=$(cat "$d/pid1" 2>/dev/null) || return 1
  is_our_nspawn "$nsp" "$name" || return 1
  is_container_pid1 "$pid1" || return 1
  echo "$pid1"
}

# ---------------------------------------------------------------- cgroups
# One cgroup of our own per hierarchy, below the current one, for nspawn to live in.
# Lines "mountpoint current-path" for every mounted cgroup hierarchy we are in.
cgroup_hierarchies() {
  local ctrls path mnt
  while IFS=: read -r _ ctrls path; do
    if [ -z "$ctrls" ]; then
      mnt=$(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' /proc/self/mountinfo)
    else
      mnt=$(awk -v c="$ctrls" '
        { sep = 0; for (i = 7; i <= NF; i++) if ($i == "-") { sep = i; break } }
        sep && $(sep + 1) == "cgroup" {
          n = split($(sep + 3), o, ","); split(c, want, ","); ok = 1
          for (w in want) { f = 0; for (j = 1; j <= n; j++) if (o[j] == want[w]) f = 1; if (!f) ok = 0 }
          if (ok) { print $5; exit }
        }' /proc/self/mountinfo)
    fi
    [ -n "$mnt" ] && [ -d "$mnt$path" ] && echo "$mnt ${path%/}"
  done </proc/self/cgroup
}

# Move the calling (sub)shell into a fresh cgroup per hierarchy; record the dirs.
cgroup_enter() {
  local name=$1 rec=$2 mnt cur dir
  : >"$rec"
  while read -r mnt cur; do
    dir="$mnt$cur/preforkd-e2e-$name"
    mkdir -p "$dir" 2>/dev/null || continue
    echo "$dir" >>"$rec"
    # v1 cpuset: a new cgroup starts with no cpus/mems and refuses tasks until they are set.
    if [ -f "$dir/cpuset.cpus" ] && [ -z "$(cat "$dir/cpuset.cpus")" ]; then
      cat "$mnt$cur/cpuset.cpus" >"$dir/cpuset.cpus" 2>/dev/null || true
      cat "$mnt$cur/cpuset.mems" >"$dir/cpuset.mems" 2>/dev/null || true
    fi
    echo "$BASHPID" >"$dir/cgroup.procs" 2>/dev/null || log "warning: could not move into $dir"
  done < <(cgroup_hierarchies)
}

# Remove the recorded cgroup subtrees (deepest first); retry briefly while emptying.
cgroup_remove() {
  local rec=$1 dir sub left
  [ -f "$rec" ] || return 0
  for _ in $(seq 1 20); do
    left=0
    while read -r dir; do
      [ -d "$dir" ] || continue
      while read -r sub; do rmdir "$sub" 2>/dev/null || left=1; done < <(find "$dir" -depth -type d 2>/dev/null)
    done <"$rec"
    [ "$left" = 0 ] && return 0
    sleep 0.1
  done
  log "warning: some cgroups could not be removed: $(xargs <"$rec")"
}

# ---------------------------------------------------------------- up / down

guest_sh() { # pid1 cmd... (no exec record; for the harness's own short queries)
  local pid1=$1; shift
  timeout -k 1 5 nsenter --target "$pid1" --all -- env -i PATH="$GUEST_PATH" "$@"
}

cmd_up() {
  local name=${1:-}
  check_name "$name"
  check_can_run_containers
  local root d t0 pid1 nsp state="" bind
  root=$(rootfs_dir)
  [ -f "$root/.preforkd-e2e-ok" ] || die "no cached rootfs at $root: run '$0 prepare' first"
  command -v systemd-nspawn >/dev/null || die "systemd-nspawn missing: run '$0 prepare' first"
  mkdir -p "$STATE"
  d=$(sdir "$name")
  exec {lockfd}>"$STATE/.$name.lock"
  flock -w 60 "$lockfd" || die "timed out waiting for the lock of $name"
  if pid1=$(running_pid1 "$name"); then
    log "up $name: already running (pid1 $pid1)"
    return 0
  fi
  # Left over from a failed or killed run: clean it first.
  [ -e "$d" ] && down_locked "$name"

  local args=(-D "$root" -M "$name" --boot --register=no --keep-unit --volatile=overlay
    --console=read-only --private-network)
  for bind in ${PREFORKD_E2E_BINDS:-}; do
    [[ $bind == *:* ]] || die "PREFORKD_E2E_BINDS entry '$bind' is not HOST:GUEST"
    [ -e "${bind%%:*}" ] || die "bind source ${bind%%:*} does not exist"
    args+=("--bind-ro=$bind")
  done

  mkdir -p "$d/execs"
  echo "$root" >"$d/rootfs"
  t0=$(now)
  trap 'log "up $name interrupted"; down_locked "$name"; rm -f "$STATE/.$name.lock"; exit 130' INT TERM
  (
    exec {lockfd}>&- # nspawn must not hold our lock
    cgroup_enter "$name" "$d/cgroups"
    # Pure cgroup v2 inside the container, whatever the host has (systemd 258+ needs it).
    if [ "$CGROUP" = unified ]; then export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1; fi
    # setsid: a Ctrl-C in the caller's terminal must not reach nspawn; `down` stops it.
    exec setsid systemd-nspawn "${args[@]}"
  ) </dev/null >"$d/console.log" 2>&1 &
  nsp=$!
  echo "$nsp" >"$d/nspawn.pid"

  # Container PID 1: nspawn's child whose comm is systemd.
  pid1=""
  local deadline c
  deadline=$(awk -v t="$t0" -v d="$UP_DEADLINE" 'BEGIN { printf "%.3f", t + d }')
  while :; do
    for c in $(children_of "$nsp"); do
      if is_container_pid1 "$c"; then pid1=$c; break; fi
    done
    [ -n "$pid1" ] && break
    # Not the cmdline: it reads empty for an instant while the process is inside execve.
    if ! [ -d "/proc/$nsp" ] || grep -q '^State:[[:space:]]*Z' "/proc/$nsp/status" 2>/dev/null; then
      up_failed "$name" "systemd-nspawn exited before the container's PID 1 appeared"
    fi
    awk -v n="$(now)" -v d="$deadline" 'BEGIN { exit !(n > d) }' &&
      up_failed "$name" "container PID 1 did not appear within $UP_DEADLINE s"
    sleep 0.02
  done
  echo "$pid1" >"$d/pid1"
  local t_pid1
  t_pid1=$(since "$t0")

  while :; do
    state=$(guest_sh "$pid1" systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    is_our_nspawn "$nsp" "$name" || up_failed "$name" "systemd-nspawn exited during boot (state '$state')"
    awk -v n="$(now)" -v d="$deadline" 'BEGIN { exit !(n > d) }' &&
      up_failed "$name" "not running within $UP_DEADLINE s (systemctl is-system-running: '${state:-no answer}')"
    sleep 0.05
  done
  trap - INT TERM
  flock -u "$lockfd"
  log "up $name: $SUITE, cgroup $CGROUP: $state in $(since "$t0") s (PID 1 after $t_pid1 s; nspawn $nsp, pid1 $pid1, console $d/console.log)"
  if [ "$state" = degraded ]; then
    guest_sh "$pid1" systemctl --failed --no-legend --plain 2>/dev/null | sed 's/^/harness:   failed unit: /' >&2 || true
  fi
}

up_failed() {
  local name=$1 msg=$2 d
  d=$(sdir "$name")
  log "up $name failed: $msg"
  if [ -f "$d/console.log" ]; then
    log "last lines of $d/console.log:"
    tail -n 30 "$d/console.log" | sed 's/^/  | /' >&2
    cp "$d/console.log" "$STATE/$name.failed-console.log" 2>/dev/null &&
      log "console log kept at $STATE/$name.failed-console.log"
  fi
  down_locked "$name"
  rm -f "$STATE/.$name.lock"
  exit 1
}

# End leftover exec sessions (see the shutdown-hang pitfall): SIGTERM the children
# of our nsenters, SIGCONT stopped nsenters, SIGKILL children that stay.
end_exec_sessions() {
  local d=$1 pid1=$2 f pid c sessions=()
  for f in "$d"/execs/*; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null || true)
    if is_our_nsenter "$pid" "$pid1"; then sessions+=("$pid"); fi
  done
  [ ${#sessions[@]} -eq 0 ] && return 0
  log "ending ${#sessions[@]} leftover exec session(s): ${sessions[*]}"
  for pid in "${sessions[@]}"; do
    for c in $(children_of "$pid"); do kill -TERM "$c" 2>/dev/null || true; done
    kill -CONT "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 20); do
    local alive=0
    for pid in "${sessions[@]}"; do is_our_nsenter "$pid" "$pid1" && alive=1; done
    [ "$alive" = 0 ] && break
    for pid in "${sessions[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
    sleep 0.1
  done
  for pid in "${sessions[@]}"; do
    if is_our_nsenter "$pid" "$pid1"; then
      for c in $(children_of "$pid"); do kill -KILL "$c" 2>/dev/null || true; done
      kill -CONT "$pid" 2>/dev/null || true
    fi
  done
}

wait_gone() { # pid name seconds -> 0 if the nspawn is gone (cmdline empty/absent)
  local pid=$1 name=$2 n
  n=$(awk -v s="$3" 'BEGIN { print int(s * 20) }')
  while [ "$n" -gt 0 ]; do
    is_our_nspawn "$pid" "$name" || return 0
    sleep 0.05
    n=$((n - 1))
  done
  ! is_our_nspawn "$pid" "$name"
}

down_locked() {
  local name=$1 d nsp="" pid1="" t0
  d=$(sdir "$name")
  t0=$(now)
  [ -d "$d" ] || return 0
  nsp=$(cat "$d/nspawn.pid" 2>/dev/null || true)
  pid1=$(cat "$d/pid1" 2>/dev/null || true)
  # After a failed `up` the container's PID 1 may be running without having been recorded:
  # find it now, or it would outlive nspawn's SIGKILL below.
  if [ -z "$pid1" ] && [ -n "$nsp" ] && is_our_nspawn "$nsp" "$name"; then
    local c
    for c in $(children_of "$nsp"); do
      if is_container_pid1 "$c"; then pid1=$c; break; fi
    done
  fi
  if [ -n "$pid1" ]; then end_exec_sessions "$d" "$pid1"; fi
  if [ -n "$nsp" ] && is_our_nspawn "$nsp" "$name"; then
    kill -TERM "$nsp" 2>/dev/null || true
    if ! wait_gone "$nsp" "$name" "$DOWN_DEADLINE"; then
      log "down $name: nspawn $nsp still there after $DOWN_DEADLINE s, SIGKILL"
      [ -n "$pid1" ] && end_exec_sessions "$d" "$pid1"
      kill -KILL "$nsp" 2>/dev/null || true
      wait_gone "$nsp" "$name" 5 || log "warning: nspawn $nsp did not die"
    fi
  fi
  # If nspawn died without taking the container with it, kill its PID 1 (ends the pid namespace).
  if [ -n "$pid1" ] && is_container_pid1 "$pid1"; then
    local p
    p=$(awk '$1 == "PPid:" { print $2 }' "/proc/$pid1/status" 2>/dev/null || true)
    if [ -n "$nsp" ] && { [ "$p" = "$nsp" ] || [ "$p" = 1 ]; }; then
      log "down $name: container PID 1 ($pid1) outlived nspawn, SIGKILL"
      kill -KILL "$pid1" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  cgroup_remove "$d/cgroups"
  rmdir "/run/systemd/nspawn/propagate/$name" 2>/dev/null || true
  rm -rf -- "$d"
  log "down $name: done in $(since "$t0") s"
}

cmd_down() {
  local name=${1:-}
  check_name "$name"
  [ -d "$STATE" ] || return 0
  exec {lockfd}>"$STATE/.$name.lock"
  flock -w 60 "$lockfd" || die "timed out waiting for the lock of $name"
  down_locked "$name"
  rm -f "$STATE/.$name.lock"
}

# ---------------------------------------------------------------- exec / cp

cmd_exec() {
  local name=${1:-}
  check_name "$name"
  shift
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "usage: $0 exec NAME -- CMD [ARG...]"
  local pid1 d rec rc=0
  pid1=$(running_pid1 "$name") || { log "error: container $name is not up"; exit 125; }
  d=$(sdir "$name")
  rec="$d/execs/$$"
  # The subshell writes its own PID into our record, then becomes nsenter (same PID),
  # so `down` can find leftover sessions; stdin/stdout/stderr are inherited.
  (
    echo "$BASHPID" >"$rec" 2>/dev/null || true
    exec nsenter --target "$pid1" --all -- env -i PATH="$GUEST_PATH" "$@"
  ) || rc=$?
  rm -f "$rec"
  return "$rc"
}

cmd_cp() {
  local name=${1:-} src=${2:-} dst=${3:-}
  check_name "$name"
  [ -n "$src" ] && [ -n "$dst" ] || die "usage: $0 cp NAME HOSTFILE GUESTPATH"
  [ -f "$src" ] || die "$src is not a file"
  [[ $dst == /* ]] || die "GUESTPATH must be absolute"
  local pid1 real
  pid1=$(running_pid1 "$name") || die "container $name is not up"
  # A trailing slash or an existing directory: copy into it.
  if [[ $dst == */ ]] || guest_sh "$pid1" test -d "$dst"; then dst="${dst%/}/${src##*/}"; fi
  # Resolve symlinks inside the guest, so none is followed on the host side.
  real=$(guest_sh "$pid1" readlink -m -- "$dst") || die "cannot resolve $dst in $name"
  mkdir -p "/proc/$pid1/root${real%/*}"
  cp --preserve=mode,timestamps -- "$src" "/proc/$pid1/root$real"
}

# ---------------------------------------------------------------- main

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  prepare) cmd_prepare ;;
  up) cmd_up "$@" ;;
  exec) cmd_exec "$@" ;;
  cp) cmd_cp "$@" ;;
  down) cmd_down "$@" ;;
  pid1) check_name "${1:-}"; running_pid1 "$1" || die "container $1 is not up" ;;
  rootfs) rootfs_dir ;;
  -h | --help | help | "") usage ;;
  *) log "unknown command '$cmd'"; usage ;;
esac
