#!/usr/bin/env bash
# VM harness: a real Debian VM (its own kernel, systemd as PID 1, a full cgroup v2 hierarchy)
# booted with qemu, for the tests a container here cannot do (per-cgroup memory, pids and cpu
# control). Follows shared/research/vm-under-tcg.md.
#
#   harness.sh prepare              install qemu and debootstrap if missing, build/cache the
#                                   image; prints the image directory on stdout
#   harness.sh run SHARE_DIR SCRIPT boot the image with SHARE_DIR at /share (9p), run SCRIPT
#                                   (a file in SHARE_DIR: a host path, or relative to
#                                   SHARE_DIR) as root after multi-user.target, power off
#   harness.sh image                print the cached image directory (built or not)
#
# `run` writes into SHARE_DIR: out.log (the script's stdout and stderr), rc (its exit code),
# console.log (the VM's serial console) and qemu.log (qemu's own messages, removed if empty).
# The script runs with /share as its working directory, stdin from /dev/null; an executable
# SCRIPT is exec'd, any other is run with sh.
#
# Environment:
#   PREFORKD_VM_CACHE    cache directory          (default /var/cache/preforkd-vm)
#   PREFORKD_VM_SUITE    Debian suite             (default bookworm)
#   PREFORKD_VM_PACKAGES comma list for debootstrap --include (default below)
#   PREFORKD_VM_MIRROR   override the mirror otherwise taken from the host's apt configuration
#   PREFORKD_VM_TIMEOUT  seconds for a whole `run`, boot to power-off (default 180)
#   PREFORKD_VM_ACCEL    auto (KVM only with kvm_intel/kvm_amd loaded), tcg or kvm (default auto)
#   PREFORKD_VM_CPUS, PREFORKD_VM_MEMORY   vCPUs and MiB of the VM (default 2 and 1024)
#
# Exit codes: 77 = this machine cannot run the VM (reason on stderr);
#   `run`: the script's own exit code; 3 = the VM produced no exit code (did not boot, crashed,
#   timed out: the console's tail on stderr); 125 = the harness failed before booting (bad
#   arguments, no image: run `prepare`). `prepare`: 0, or 1 on a failure (debootstrap, mkfs).
#   A missing or unknown subcommand prints this text and exits 2.
set -euo pipefail

CACHE=${PREFORKD_VM_CACHE:-/var/cache/preforkd-vm}
SUITE=${PREFORKD_VM_SUITE:-bookworm}
PACKAGES=${PREFORKD_VM_PACKAGES:-systemd,systemd-sysv,dbus,procps,linux-image-amd64,udev,iproute2,curl,python3}
TIMEOUT=${PREFORKD_VM_TIMEOUT:-180}
ACCEL=${PREFORKD_VM_ACCEL:-auto}
CPUS=${PREFORKD_VM_CPUS:-2}
MEMORY=${PREFORKD_VM_MEMORY:-1024}
# Bump when the way the image is made changes (invalidates the cache key).
RECIPE=1
IMAGE_SIZE=2G
# After the script's rc appears, the seconds the guest has to power off before qemu is killed.
POWEROFF_GRACE=20
# The kernel modules the initrd needs to mount the root (the rest load from the root).
INITRD_MODULES=(virtio_pci virtio_blk ext4 crc32c_generic)
PRUNE_MODULES=(sound drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet
  drivers/infiniband drivers/usb drivers/iio drivers/staging)
MASK_UNITS=(serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer
  dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer)

log() { printf 'harness: %s\n' "$*" >&2; }
die() { printf 'harness: error: %s\n' "$*" >&2; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
secs() { printf '%d.%d' $(($1 / 1000000)) $(($1 % 1000000 / 100000)); } # microseconds -> s
cannot() { printf 'harness: cannot run a VM here: %s\n' "$*" >&2; exit 77; }

for v in TIMEOUT CPUS MEMORY; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "PREFORKD_VM_$v must be a positive integer, not '${!v}'"
done
case "$ACCEL" in auto | tcg | kvm) ;; *) die "PREFORKD_VM_ACCEL must be auto, tcg or kvm, not '$ACCEL'" ;; esac

cache_key() {
  local pk
  pk=$(tr ',' '\n' <<<"$PACKAGES" | sed '/^$/d' | sort -u | paste -sd, -)
  printf 'suite=%s variant=minbase include=%s recipe=%s' "$SUITE" "$pk" "$RECIPE" |
    sha256sum | cut -c1-16
}
image_dir() { echo "$CACHE/image-$(cache_key)"; }

check_root() {
  [ "$(id -u)" = 0 ] || cannot "must be root (debootstrap, and qemu's 9p share writing as root)"
}

# ---------------------------------------------------------------- prepare

# The Debian mirror of the host's own apt configuration (never hard-coded).
find_mirror() {
  if [ -n "${PREFORKD_VM_MIRROR:-}" ]; then echo "${PREFORKD_VM_MIRROR%/}"; return; fi
  local uri
  uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
    awk -v s="$SUITE" '$2 == s { print $1; exit }')
  [ -n "$uri" ] || uri=$(apt-get indextargets --format '$(REPO_URI) $(ORIGIN) $(RELEASE)' 'Identifier: Packages' 2>/dev/null |
    awk '$2 == "Debian" && $3 !~ /security/ { print $1; exit }')
  [ -n "$uri" ] || die "no Debian mirror found in the host's apt configuration (set PREFORKD_VM_MIRROR)"
  echo "${uri%/}"
}

apt_quiet() { # log-file apt-get-args...
  local logf=$1; shift
  if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q "$@" >>"$logf" 2>&1; then
    tail -n 20 "$logf" >&2
    return 1
  fi
}

# qemu-system-x86 and debootstrap, installed if missing. On Debian 12 qemu comes from
# bookworm-backports: the image of our machines has backports' qemu-utils, which bookworm's own
# qemu-system-common conflicts with. Exits 77 when they cannot be installed.
install_host_tools() {
  local need=() logf="$CACHE/apt.log"
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || cannot "${need[*]} missing and no apt-get to install them"
  : >"$logf"
  local codename target=()
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = bookworm ] && [[ " ${need[*]} " == *" qemu-system-x86 "* ]]; then
    if ! grep -Eqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      /etc/apt/sources.list.d/*.sources; then
      local mirror
      mirror=$(find_mirror)
      log "adding bookworm-backports ($mirror) as /etc/apt/sources.list.d/preforkd-vm-backports.sources"
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" >/etc/apt/sources.list.d/preforkd-vm-backports.sources
    fi
    target=(-t bookworm-backports)
  fi
  log "apt-get update (log: $logf)"
  apt_quiet "$logf" update || cannot "apt-get update failed, so ${need[*]} cannot be installed"
  log "apt-get install --no-install-recommends ${target[*]} ${need[*]}"
  apt_quiet "$logf" install -y --no-install-recommends "${target[@]}" "${need[@]}" ||
    cannot "apt-get install ${need[*]} failed"
}

# Unmount anything below $1 (a killed build may leave proc mounted in the chroot) and remove it.
remove_tree() {
  local dir=$1 m
  [ -e "$dir" ] || return 0
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$dir" '{ gsub(/\\040/, " ", $5) } index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  rm -rf --one-file-system -- "$dir"
}

# The uncompressed kernel (vmlinux, an ELF that qemu boots directly through PVH, about 5 s
# faster than the bzImage under TCG) from vmlinuz: the payload after the first compression magic
# that decompresses to an ELF. Fails if none does.
extract_vmlinux() {
  local z=$1 out=$2 magic tool off
  for magic in '\xfd7zXZ\x00:xz -dc' '\x28\xb5\x2f\xfd:zstd -dcq' '\x1f\x8b\x08\x00:gzip -dc'; do
    tool=${magic#*:}
    command -v "${tool%% *}" >/dev/null || continue
    for off in $(LC_ALL=C grep -obUaP "${magic%%:*}" "$z" | cut -d: -f1 | head -n 5); do
      tail -c +$((off + 1)) "$z" | $tool >"$out" 2>/dev/null || true
      if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then return 0; fi
    done
  done
  rm -f "$out"
  return 1
}

build_image() {
  local img=$1 mirror tmp root t0
  mirror=$(find_mirror)
  tmp="$img.tmp.$$"
  root="$tmp/root"
  remove_tree "$tmp"
  mkdir -p "$tmp"
  local dlog="$CACHE/debootstrap-$SUITE.log"
  log "debootstrap --variant=minbase --include=$PACKAGES $SUITE from $mirror (log: $dlog)"
  t0=$(now)
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" \
    </dev/null >"$dlog" 2>&1 &
  local dbs=$! rc=0
  trap 'log "prepare interrupted"; kill -TERM "$dbs" 2>/dev/null; wait "$dbs"; remove_tree "$tmp"; exit 130' INT TERM
  wait "$dbs" || rc=$?
  if [ "$rc" != 0 ]; then
    tail -n 20 "$dlog" >&2
    remove_tree "$tmp"
    die "debootstrap failed ($rc)"
  fi
  trap 'log "prepare interrupted"; remove_tree "$tmp"; exit 130' INT TERM
  log "debootstrap done in $(since "$t0") s"

  # An initrd that can mount the root: Debian's kernel has virtio and ext4 as modules.
  t0=$(now)
  sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
  printf '%s\n' "${INITRD_MODULES[@]}" >>"$root/etc/initramfs-tools/modules"
  local ilog="$CACHE/initramfs-$SUITE.log"
  chroot "$root" update-initramfs -u -k all >"$ilog" 2>&1 || { tail -n 20 "$ilog" >&2; remove_tree "$tmp"; die "update-initramfs failed"; }
  local vmlinuz initrd
  vmlinuz=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
  initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)
  if [ ! -f "$vmlinuz" ] || [ ! -f "$initrd" ]; then remove_tree "$tmp"; die "no kernel or initrd in $root/boot"; fi
  cp "$vmlinuz" "$tmp/vmlinuz"
  cp "$initrd" "$tmp/initrd.img"
  extract_vmlinux "$tmp/vmlinuz" "$tmp/vmlinux" || log "warning: could not extract vmlinux; booting vmlinuz"
  log "initrd ($(du -h "$tmp/initrd.img" | cut -f1)) and kernel ${vmlinuz##*/vmlinuz-} in $(since "$t0") s"

  # Drivers for hardware a qemu VM does not have: 200 of the kernel's 390 MB of modules.
  local kdir
  for kdir in "$root"/usr/lib/modules/*/; do
    (cd "$kdir/kernel" && rm -rf "${PRUNE_MODULES[@]}")
    chroot "$root" depmod -a "$(basename "$kdir")"
  done

  # The guest: a quiet, quick boot that runs the script and powers off.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
    "$root"/var/lib/apt/lists/* "$root"/var/log/apt/* "$root"/var/cache/debconf/*-old
  mkdir -p "$root/var/lib/apt/lists/partial" "$root/share"
  local u
  for u in "${MASK_UNITS[@]}"; do ln -sfn /dev/null "$root/etc/systemd/system/$u"; done
  echo preforkd-vm >"$root/etc/hostname"
  # Not a first boot (every boot of a snapshot would be one, with systemd-firstboot's prompts).
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$root/etc/machine-id"
  echo >>"$root/etc/machine-id"
  cat >"$root/etc/fstab" <<'EOF'
/dev/vda / ext4 rw,errors=remount-ro 0 0
vmshare /share 9p trans=virtio,version=9p2000.L,msize=262144 0 0
EOF
  # A test that leaves a unit hanging must not hold the power-off for 90 s.
  mkdir -p "$root/etc/systemd/system.conf.d"
  printf '[Manager]\nDefaultTimeoutStopSec=10s\n' >"$root/etc/systemd/system.conf.d/preforkd-vm.conf"
  cat >"$root/usr/local/sbin/preforkd-vm-run" <<'EOF'
#!/bin/sh
# Runs the test script named on the kernel command line (preforkd_vm.script=, relative to
# /share): its stdout and stderr to /share/out.log, its exit code to /share/rc; then powers off.
script=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^preforkd_vm\.script=//p')
cd /share
if [ -z "$script" ] || [ ! -f "/share/$script" ]; then
  echo "preforkd-vm-run: no script '/share/$script'" >/share/out.log
  rc=126
elif [ -x "/share/$script" ]; then
  rc=0; "/share/$script" </dev/null >/share/out.log 2>&1 || rc=$?
else
  rc=0; sh "/share/$script" </dev/null >/share/out.log 2>&1 || rc=$?
fi
echo "$rc" >/share/rc.tmp && mv /share/rc.tmp /share/rc
sync
echo "preforkd-vm-run: script exited $rc" >/dev/kmsg
systemctl poweroff --no-block
EOF
  chmod 755 "$root/usr/local/sbin/preforkd-vm-run"
  # Type=exec, not oneshot: with oneshot, `systemctl is-system-running --wait` in the script
  # never says running (the boot's jobs include this one).
  cat >"$root/etc/systemd/system/preforkd-vm-run.service" <<'EOF'
[Unit]
Description=preforkd VM test script (/share)
After=multi-user.target
RequiresMountsFor=/share

[Service]
Type=exec
ExecStart=/usr/local/sbin/preforkd-vm-run
Environment=HOME=/root
StandardOutput=journal
StandardError=journal
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
  ln -sfn /etc/systemd/system/preforkd-vm-run.service \
    "$root/etc/systemd/system/multi-user.target.wants/preforkd-vm-run.service"

  t0=$(now)
  local mlog="$CACHE/mkfs-$SUITE.log"
  mkfs.ext4 -q -F -L preforkd-vm -d "$root" "$tmp/root.img" "$IMAGE_SIZE" >"$mlog" 2>&1 ||
    { cat "$mlog" >&2; remove_tree "$tmp"; die "mkfs.ext4 failed"; }
  remove_tree "$root"
  log "image $IMAGE_SIZE ($(du -h "$tmp/root.img" | cut -f1) used) in $(since "$t0") s"
  echo "preforkd-vm suite=$SUITE include=$PACKAGES recipe=$RECIPE built=$(date -u +%FT%TZ)" >"$tmp/ok"
  trap - INT TERM
  mv -T "$tmp" "$img"
}

cmd_prepare() {
  local t0 img
  t0=$(now)
  check_root
  mkdir -p "$CACHE"
  exec {toolsfd}>"$CACHE/.tools.lock"
  flock -w 600 "$toolsfd" || die "timed out waiting for the lock $CACHE/.tools.lock"
  install_host_tools
  flock -u "$toolsfd"
  img=$(image_dir)
  if [ ! -f "$img/ok" ]; then
    # One lock per image: a second caller waits, then finds it built.
    exec {lockfd}>"$img.lock"
    flock -w 1800 "$lockfd" || die "timed out waiting for the cache lock $img.lock"
    if [ ! -f "$img/ok" ]; then
      local old
      for old in "$img".tmp.*; do [ -e "$old" ] && remove_tree "$old"; done
      remove_tree "$img" # incomplete (no stamp)
      build_image "$img"
    fi
    flock -u "$lockfd"
  fi
  log "prepare: image ready at $img ($(du -sh "$img" | cut -f1) on disk) in $(since "$t0") s"
  echo "$img"
}

# ---------------------------------------------------------------- run

# KVM only where it can run a stock kernel: /dev/kvm usable and kvm_intel or kvm_amd loaded (the
# kvm_pvm of our machines cannot; see the research note).
pick_accel() {
  case "$ACCEL" in
    tcg | kvm) echo "$ACCEL" ;;
    auto)
      if [ -r /dev/kvm ] && [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
        echo kvm
      else
        echo tcg
      fi
      ;;
  esac
}

usage_error() { printf 'harness: error: %s\n' "$*" >&2; exit 125; }

cmd_run() {
  [ $# -eq 2 ] || usage_error "usage: $0 run SHARE_DIR SCRIPT"
  check_root
  local share script rel img
  [ -d "$1" ] || usage_error "SHARE_DIR $1 is not a directory"
  share=$(realpath -e -- "$1")
  if [[ $2 != /* ]] && [ -f "$share/$2" ]; then script="$share/$2"; else script=$2; fi
  [ -f "$script" ] || usage_error "SCRIPT $2 is not a file (in $share or from here)"
  script=$(realpath -e -- "$script")
  [[ $script == "$share"/* ]] || usage_error "SCRIPT $script is not inside SHARE_DIR $share"
  rel=${script#"$share"/}
  [[ $rel =~ ^[A-Za-z0-9._+/-]+$ ]] ||
    usage_error "SCRIPT's path in SHARE_DIR may only have letters, digits and ._+/- (it goes on the kernel command line): '$rel'"
  command -v qemu-system-x86_64 >/dev/null || usage_error "qemu-system-x86_64 missing: run '$0 prepare' first"
  img=$(image_dir)
  [ -f "$img/ok" ] || usage_error "no image at $img: run '$0 prepare' first"

  local kernel=$img/vmlinux accel cpu
  [ -f "$kernel" ] || kernel=$img/vmlinuz
  accel=$(pick_accel)
  if [ "$accel" = kvm ]; then cpu=host; else accel=tcg,thread=multi cpu=max,-vmx; fi
  rm -f "$share/out.log" "$share/rc" "$share/rc.tmp" "$share/console.log" "$share/qemu.log"

  local t0 tpid qpid="" pidfile
  pidfile=$(mktemp /tmp/preforkd-vm-qemu.XXXXXX)
  t0=$(now)
  timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -nodefaults -display none -no-reboot \
    -name preforkd-vm -pidfile "$pidfile" \
    -accel "$accel" -cpu "$cpu" -smp "$CPUS" -m "$MEMORY" \
    -kernel "$kernel" -initrd "$img/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 panic=-1 systemd.unified_cgroup_hierarchy=1 preforkd_vm.script=$rel" \
    -drive "file=$img/root.img,if=virtio,format=raw,snapshot=on" \
    -virtfs "local,path=$share,mount_tag=vmshare,security_model=none" \
    -serial "file:$share/console.log" \
    </dev/null >"$share/qemu.log" 2>&1 &
  tpid=$!
  # qemu dies with the harness, whatever ends it: the PID qemu wrote, checked to be our qemu.
  kill_qemu() {
    [ -n "$qpid" ] || qpid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ $qpid =~ ^[0-9]+$ ]] && tr '\0' ' ' 2>/dev/null <"/proc/$qpid/cmdline" | grep -qF -- "-pidfile $pidfile "; then
      kill -TERM "$qpid" 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10; do [ -d "/proc/$qpid/task" ] || break; sleep 0.2; done
      kill -KILL "$qpid" 2>/dev/null || true
    fi
    kill -TERM "$tpid" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
    rm -f "$pidfile"
  }
  trap 'kill_qemu' EXIT
  trap 'log "run interrupted"; exit 130' INT TERM HUP

  # Poll (forking nothing: the host is busy enough running the VM) for the script's start, its
  # exit code, and qemu's end; microseconds from bash's clock.
  local us0=${EPOCHREALTIME/[.,]/} us t_script="" t_rc="" rc_us="" state="" line
  while :; do
    us=${EPOCHREALTIME/[.,]/}
    [ -n "$qpid" ] || { [ -s "$pidfile" ] && read -r qpid <"$pidfile"; } || true
    [ -z "$t_script" ] && [ -e "$share/out.log" ] && t_script=$(secs $((us - us0)))
    [ -z "$t_rc" ] && [ -e "$share/rc" ] && { t_rc=$(secs $((us - us0))); rc_us=$us; }
    state=""
    if [ -r "/proc/$tpid/status" ]; then
      while read -r line; do
        [[ $line == State:* ]] && { state=${line#State:}; state=${state//[[:space:]]/}; state=${state:0:1}; break; }
      done <"/proc/$tpid/status" 2>/dev/null || true
    fi
    { [ -z "$state" ] || [ "$state" = Z ]; } && break
    if [ -n "$rc_us" ] && [ $((us - rc_us)) -gt $((POWEROFF_GRACE * 1000000)) ]; then
      log "the VM did not power off within $POWEROFF_GRACE s of the script's end: killing qemu"
      break
    fi
    sleep 0.2
  done
  local qrc=0
  if [ -n "$t_rc" ] && [ "$state" != Z ] && [ -n "$state" ]; then kill_qemu; else wait "$tpid" || qrc=$?; fi
  trap - EXIT INT TERM HUP
  kill_qemu
  [ -s "$share/qemu.log" ] || rm -f "$share/qemu.log"

  local rc
  rc=$(cat "$share/rc" 2>/dev/null || true)
  if [[ $rc =~ ^[0-9]+$ ]]; then
    log "run: $accel, script started after ${t_script:-?} s, ended after $t_rc s, VM gone after $(since "$t0") s: exit $rc"
    exit "$rc"
  fi
  if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    log "error: the VM did not finish within $TIMEOUT s (PREFORKD_VM_TIMEOUT)${t_script:+; the script started after $t_script s}"
  else
    log "error: qemu exited ($qrc) after $(since "$t0") s without the script's exit code${t_script:+; the script started after $t_script s}"
  fi
  if [ -s "$share/qemu.log" ]; then
    log "qemu said:"
    tail -n 20 "$share/qemu.log" | sed 's/^/  | /' >&2
  fi
  if [ -s "$share/out.log" ]; then
    log "last lines of $share/out.log:"
    tail -n 20 "$share/out.log" | sed 's/^/  | /' >&2
  fi
  log "last lines of the serial console ($share/console.log):"
  # Without systemd's colours.
  tail -n 40 "$share/console.log" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g; s/^/  | /' >&2 || true
  exit 3
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
  run) cmd_run "$@" ;;
  image) image_dir ;;
  -h | --help | help | "") usage ;;
  *) log "unknown command '$cmd'"; usage ;;
esac
