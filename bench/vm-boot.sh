#!/usr/bin/env bash
# Boot time and host memory of a VM to an init marker, per platform and kernel:
#  - UML, strata's kernel (scripts/build-guest-kernel.sh) and Debian's user-mode-linux, as a bare
#    host process booting a busybox initramfs;
#  - QEMU's own fastest direct boot (-accel tcg -M microvm, no firmware tables, no option ROMs)
#    of strata's QEMU kernel (guest/qemu.config: its PVH vmlinux, and its bzImage) and of Debian's
#    stock amd64 kernel, with the same initramfs;
#  - the product path: a jailed VM through strata-vmm (crates/vmm/examples/vm-boot.rs) on a
#    copy-on-write busybox ext4 disk, marker read from the strata channel, per platform;
#  - the whole VM path minus the CLI: strata-agent as PID 1 (initramfs), the busybox disk as the
#    overlay's lower, `true` run over strata-proto (crates/vmm/examples/vm-agent.rs), per
#    platform: start → workload execve, → exit status, → VM reaped.
# Time: repeated runs (start → VM process exit; init prints the marker and powers off at once),
# each under a 60 s timeout: a run that hangs (QEMU TCG occasionally does here) or misses the
# marker is counted as failed, not timed.
# Memory: peak RSS of the largest host process (/usr/bin/time -v), and for the jailed path the
# peak of the VM's cgroup (guest memory touched + host-side overhead).
# Then the product path phase by phase: `strata run --vm -d` per platform (uml, qemu), each
# start's phases as its keeper measured them (`strata inspect` → Vm.StartPhases,
# crates/engine/src/start_phases.rs), medians side by side.
# Writes the "vm-boot" and "vm-start-phases" sections of docs/benchmarks.md.
# PHASES_ONLY=1: only the phase breakdown (PHASE_RUNS runs per platform, default RUNS).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/vm-section.sh
runs=${RUNS:-10}
mem=128
work=$(mktemp -d /tmp/strata-vm-boot.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

# The start phases of `strata run --vm` (release strata, its static agent), uml and qemu side
# by side: median of each phase over PHASE_RUNS detached starts, after one unrecorded warm-up
# start per platform (root disk and agent initramfs caches).
phase_section() {
  local n=${PHASE_RUNS:-$runs} pw="$work/phases" p i id
  STRATA_BINS=strata bash scripts/build-release.sh -q
  bash scripts/build-agent.sh >/dev/null 2>&1
  local strata=("$CARGO_TARGET_DIR/release/strata" --store "$pw/store" --root "$pw/root" --quiet)
  mkdir -p "$pw"
  "${strata[@]}" image build-default >/dev/null
  local load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  for p in uml qemu; do
    for i in $(seq 0 "$n"); do
      id=$("${strata[@]}" run --vm --platform "$p" -d busybox sleep 600)
      [ "$i" = 0 ] || "${strata[@]}" inspect "$id" >"$pw/$p-$i.json"
      "${strata[@]}" rm -f "$id" >/dev/null
    done
  done
  local body=$pw/section.md
  {
    echo "## Where a \`strata run --vm\` start goes, phase by phase (bench/vm-boot.sh)"
    echo
    echo "Host: $(nproc) cores (shared), $(uname -r), load average at start: $load. Median of $n"
    echo "detached starts per platform of \`busybox sleep\` (128 MiB guest), as each VM's keeper timed"
    echo "them (\`strata inspect\` → Vm.StartPhases; crates/engine/src/start_phases.rs says what each"
    echo "phase covers). \`total\` is keeper forked → workload execve; the CLI's own part before the"
    echo "keeper (record, overlay/disk lookup, config.json) is not in it."
    echo
    python3 - "$pw" "$n" <<'PY'
import glob, json, statistics, sys
pw, n = sys.argv[1], int(sys.argv[2])
cols, data, order = [], {}, []
for p in ("uml", "qemu"):
    runs = [json.load(open(f))[0]["Vm"] for f in sorted(glob.glob(f"{pw}/{p}-*.json"))]
    if not runs:
        continue
    accel = runs[0].get("Accelerator")
    col = f"{p}-{accel}" if accel else p
    cols.append(col)
    per = {}
    for r in runs:
        sp = r["StartPhases"]
        for ph in sp["phases"]:
            per.setdefault(ph["name"], []).append(ph["ms"])
            if ph["name"] not in order:
                order.append(ph["name"])
        per.setdefault("total", []).append(sp["total_ms"])
    data[col] = {k: statistics.median(v) for k, v in per.items()}
print("| phase | " + " | ".join(f"{c} (ms)" for c in cols) + " |")
print("|---|" + "---|" * len(cols))
for ph in order + ["total"]:
    print(f"| {ph} | " + " | ".join(f"{data[c].get(ph, float('nan')):.1f}" for c in cols) + " |")
PY
  } >"$body"
  cat "$body"
  vm_section vm-start-phases "$body"
}
if [ "${PHASES_ONLY:-0}" = 1 ]; then
  phase_section
  exit 0
fi
bash scripts/deps.sh

strata_kernel=$(bash scripts/build-guest-kernel.sh)
debian_kernel=/usr/bin/linux
# QEMU: strata's kernel (bzImage and the PVH vmlinux beside it) and Debian's stock kernel
# (linux-image-amd64, scripts/deps.sh).
qemu_bz=$(bash scripts/build-guest-kernel.sh qemu)
qemu_vmlinux=$(dirname "$qemu_bz")/vmlinux
qemu_kernel=$(ls /boot/vmlinuz-*-amd64 | sort | tail -1)
tsc_khz=$(awk -F: '/^cpu MHz/{printf "%d", $2*1000; exit}' /proc/cpuinfo)

# The same busybox userland for every platform; only the way to power off differs (UML: poweroff;
# QEMU microvm has no ACPI power button, so reboot with -no-reboot).
mkroot() { # DIR HALT
  mkdir -p "$1"/{bin,proc,sys,dev,tmp}
  cp /bin/busybox "$1/bin/"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$1/bin/$a"; done
  printf '#!/bin/sh\necho STRATA-BOOTED\n[ -c /dev/ttyS1 ] && echo STRATA-BOOTED >/dev/ttyS1\n%s -f\n' "$2" >"$1/init"
  chmod +x "$1/init"
}
mkroot "$work/uml-root" poweroff
mkroot "$work/qemu-root" reboot
# Without devtmpfs the initramfs has no console to print on; mount it and write to the serial port.
printf '#!/bin/sh\nmount -t devtmpfs dev /dev\necho STRATA-BOOTED >/dev/ttyS0\nreboot -f\n' >"$work/qemu-root/init"
mkcpio() { (cd "$1" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) >"$2"; }
mkcpio "$work/uml-root" "$work/uml.cpio"
mkcpio "$work/qemu-root" "$work/qemu.cpio"
# Disk for the jailed path: /init reports on the channel (mounting devtmpfs first if needed).
mkdir -p "$work/disk-root" && cp -a "$work/uml-root/." "$work/disk-root/"
printf '#!/bin/sh\nmount -t devtmpfs dev /dev 2>/dev/null\nif [ -c /dev/hvc0 ]; then echo STRATA-BOOTED >/dev/hvc0; reboot -f; fi\necho STRATA-BOOTED >/dev/ttyS1\npoweroff -f\n' >"$work/disk-root/init"
truncate -s 16M "$work/root.ext4"
mkfs.ext4 -q -F -b 4096 -m 0 -O ^has_journal,^resize_inode -d "$work/disk-root" "$work/root.ext4"
chmod 644 "$work/root.ext4"

uml_args="mem=${mem}M initrd=$work/uml.cpio con=null con0=null,fd:1 ssl=null console=tty0 quiet initcall_blacklist=raid6_select_algo rdinit=/init"
export GLIBC_TUNABLES=glibc.pthread.rseq=0
qemu_direct="qemu-system-x86_64 -accel tcg,tb-size=32 -cpu max -m $mem -nodefaults -no-user-config -display none -serial stdio -no-reboot -M microvm,x-option-roms=off,isa-serial=on"
qemu_append="console=ttyS0 quiet reboot=t panic=-1 tsc_early_khz=$tsc_khz rdinit=/init"
declare -A cmd=(
  [uml-strata]="$strata_kernel uml_dir=$work $uml_args"
  [uml-debian]="$debian_kernel uml_dir=$work $uml_args"
  [qemu-tcg-strata-pvh]="$qemu_direct,acpi=off -kernel $qemu_vmlinux -initrd $work/qemu.cpio -append '$qemu_append tsc=reliable noapictimer noreplace-smp'"
  [qemu-tcg-strata-bzimage]="$qemu_direct,acpi=off -kernel $qemu_bz -initrd $work/qemu.cpio -append '$qemu_append tsc=reliable noapictimer noreplace-smp'"
  [qemu-tcg-debian]="$qemu_direct,acpi=on -kernel $qemu_kernel -initrd $work/qemu.cpio -append '$qemu_append'"
)
order=(uml-strata uml-debian qemu-tcg-strata-pvh qemu-tcg-strata-bzimage qemu-tcg-debian)
for k in "${order[@]}"; do
  out=$(timeout 60 bash -c "${cmd[$k]}" </dev/null 2>&1 || true)
  grep -q STRATA-BOOTED <<<"$out" || { echo "vm-boot: $k did not reach the marker:"; tail -5 <<<"$out"; exit 1; }
done

peak_rss() { # max over 3 runs of the largest process's max RSS, MiB
  local m=0 r
  for _ in 1 2 3; do
    r=$(/usr/bin/time -v bash -c "$1" </dev/null 2>&1 >/dev/null | awk '/Maximum resident/{print $6}')
    [ "$r" -gt "$m" ] && m=$r
  done
  echo "scale=1; $m/1024" | bc
}

cargo build -q --release -p strata-vmm --example vm-boot --example vm-agent
example="$CARGO_TARGET_DIR/release/examples/vm-boot"
agent=$(bash scripts/build-agent.sh 2>/dev/null)

body=$work/section.md
load=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "## VM boot to an init marker (bench/vm-boot.sh)"
  echo
  echo "Host: $(nproc) cores (shared), $(uname -r), load average at start: $load. $runs runs each."
  echo "Guest: busybox, \`mem=${mem}M\`; init prints a marker and powers off at once. Kernels:"
  echo "strata's UML build ($("$strata_kernel" --version), guest/uml.config), Debian's user-mode-linux"
  echo "($("$debian_kernel" --version), with \`initcall_blacklist=raid6_select_algo\`); for QEMU (TCG, microvm)"
  echo "strata's build ($(cat "$(dirname "$qemu_bz")/version"), guest/qemu.config) and Debian's stock kernel"
  echo "($(basename "$qemu_kernel"))."
  echo
  echo "| platform and kernel | what is timed | min (ms) | median (ms) | peak memory (MiB) |"
  echo "|---|---|---|---|---|"
} >"$body"
for k in "${order[@]}"; do
  times=(); failed=0
  for _ in $(seq "$runs"); do
    s=$(date +%s%N)
    if timeout 60 bash -c "${cmd[$k]}" </dev/null 2>/dev/null | grep -q STRATA-BOOTED; then
      times+=($(( ($(date +%s%N) - s) / 1000000 )))
    else
      failed=$((failed + 1))
    fi
  done
  read -r min med < <(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END{print a[1], a[int((NR+1)/2)]}')
  rss=$(peak_rss "timeout 60 ${cmd[$k]}")
  note=""; [ "$failed" -gt 0 ] && note=" ($failed of $runs runs hung or missed the marker)"
  echo "| $k (bare process, initramfs)$note | start → exit | $min | $med | $rss (max RSS, largest process) |" >>"$body"
done
for k in uml-strata uml-debian qemu-tcg-strata; do
  kernel=$strata_kernel; platform=uml
  [ "$k" = uml-debian ] && kernel=$debian_kernel
  [ "$k" = qemu-tcg-strata ] && { kernel=$qemu_bz; platform=qemu; }
  line=$(STRATA_BENCH_PLATFORM=$platform "$example" "$kernel" "$work/root.ext4" "$runs" "$mem")
  get() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$line"; }
  note=""; [ "$(get failed)" != 0 ] && note=" ($(get failed) of $runs runs hung)"
  echo "| $k, jailed via strata-vmm (COW ext4 disk, channel)$note | start → marker on channel | $(get marker_min_ms) | $(get marker_median_ms) | $(get cgroup_peak_mib) (cgroup peak) |" >>"$body"
  echo "| $k, jailed via strata-vmm | start → VM reaped, cleaned up | $(get exit_min_ms) | $(get exit_median_ms) | |" >>"$body"
done
for k in uml-strata qemu-tcg-strata; do
  kernel=$strata_kernel; platform=uml
  [ "$k" = qemu-tcg-strata ] && { kernel=$qemu_bz; platform=qemu; }
  line=$(STRATA_BENCH_PLATFORM=$platform "$CARGO_TARGET_DIR/release/examples/vm-agent" "$kernel" "$agent" "$work/root.ext4" "$runs" "$mem")
  get() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$line"; }
  echo "| $k, jailed, strata-agent PID 1 runs \`true\` over strata-proto | start → agent's hello (kernel booted, PID 1 on its channel) | $(get hello_min_ms) | $(get hello_median_ms) | |" >>"$body"
  echo "| $k, jailed, strata-agent | start → workload execve (agent's Started) | $(get started_min_ms) | $(get started_median_ms) | |" >>"$body"
  echo "| $k, jailed, strata-agent | start → exit status on host | $(get status_min_ms) | $(get status_median_ms) | $(get cgroup_peak_mib) (cgroup peak) |" >>"$body"
  echo "| $k, jailed, strata-agent | start → VM reaped, cleaned up | $(get exit_min_ms) | $(get exit_median_ms) | |" >>"$body"
done
{
  echo
  echo "Notes: QEMU's peak RSS includes TCG's translation cache (1 GiB of address space by default in"
  echo "QEMU 7.2; strata and these rows use \`-accel tcg,tb-size=32\`). The UML max RSS counts the guest memory pages the kernel"
  echo "touched (its memory file is mapped into the kernel process). The cgroup peak is everything the"
  echo "jailed VM's host processes charged (guest memory touched, page tables, page cache of its disks)."
  echo "The bare UML runs boot an initramfs; the jailed runs boot a COW ext4 disk and add the jail (namespaces,"
  echo "mounts, cgroup, uid drop) and the channel, i.e. the \`strata run --vm\` path minus the agent."
} >>"$body"
cat "$body"
vm_section vm-boot "$body"
phase_section
