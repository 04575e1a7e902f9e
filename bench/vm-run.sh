#!/usr/bin/env bash
# `strata run --vm --rm busybox true` vs `strata run --rm busybox true` vs QEMU TCG booting a
# comparable kernel + busybox initramfs to a marker (the QEMU set-up of bench/vm-boot.sh):
#  - time: invocation → exit (whole command), and invocation → first byte the workload writes
#    (start-to-workload), min/median of $RUNS runs;
#  - host memory of an idle small VM (`run --vm -d busybox sleep`): the VM's cgroup (guest
#    memory touched + UML's host processes) plus the keeper's RSS;
#  - disk: the image's layers vs layers + guest kernel + the cached VM root disk + a VM's COW file.
# Writes the "vm-run" section of docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/vm-section.sh
runs=${RUNS:-10}
qemu_runs=${QEMU_RUNS:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
work=$(mktemp -d /tmp/strata-vm-run.XXXXXX)
export STRATA_STORE=$work/store STRATA_ROOT=$work/root
trap 'for i in $("$strata" ps -aq 2>/dev/null); do "$strata" rm -f "$i" >/dev/null 2>&1; done; rm -rf "$work"' EXIT

bash scripts/build-guest-kernel.sh >/dev/null
STRATA_BINS=strata bash scripts/build-release.sh -q
bash scripts/build-agent.sh >/dev/null 2>&1
strata=$CARGO_TARGET_DIR/release/strata
"$strata" --quiet image build-default >/dev/null
platform=$("$strata" info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["vm"]["default"])')
kernel=$("$strata" kernel list --json | python3 -c 'import json,sys; k=[k for k in json.load(sys.stdin) if k["Default"]][0]; print(k["Path"], k["Version"], k["Size"])')
read -r kpath kversion ksize <<<"$kernel"

# Warm the caches (root disk, agent initramfs) so runs measure the hot path.
"$strata" run --vm --rm busybox true
"$strata" run --rm busybox true

# ms timings of a command: min and median over N runs.
time_runs() { # N CMD...
  local n=$1; shift
  local t=()
  for _ in $(seq "$n"); do
    s=$(date +%s%N)
    "$@" >/dev/null 2>&1 </dev/null || true
    t+=($(( ($(date +%s%N) - s) / 1000000 )))
  done
  printf '%s\n' "${t[@]}" | sort -n | awk '{a[NR]=$1} END{print a[1], a[int((NR+1)/2)]}'
}
# ms from invocation to the workload's first output byte.
first_byte_runs() { # N CMD...
  python3 - "$@" <<'PY'
import subprocess, sys, time
n = int(sys.argv[1]); cmd = sys.argv[2:]
t = []
for _ in range(n):
    s = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    p.stdout.read(1)
    t.append((time.monotonic() - s) * 1000)
    p.stdout.read(); p.wait()
t.sort()
print(round(t[0]), round(t[(len(t) - 1) // 2]))
PY
}

read -r vm_min vm_med < <(time_runs "$runs" "$strata" run --vm --rm busybox true)
read -r ct_min ct_med < <(time_runs "$runs" "$strata" run --rm busybox true)
read -r vmw_min vmw_med < <(first_byte_runs "$runs" "$strata" run --vm --rm busybox echo x)
read -r ctw_min ctw_med < <(first_byte_runs "$runs" "$strata" run --rm busybox echo x)

# QEMU TCG, as in bench/vm-boot.sh: Debian's cloud kernel + a busybox initramfs to a marker.
qdir=/var/lib/strata/bench/cloud-kernel
qemu_line="| QEMU TCG (-M microvm), Debian cloud kernel + busybox initramfs | not measured: run bench/vm-boot.sh first (it caches the kernel in $qdir) | | | |"
if ls "$qdir"/boot/vmlinuz-* >/dev/null 2>&1 && command -v qemu-system-x86_64 >/dev/null; then
  qemu_kernel=$(ls "$qdir"/boot/vmlinuz-* | head -1)
  mkdir -p "$work/q"/{bin,proc,sys,dev}
  cp /bin/busybox "$work/q/bin/"; ln -s busybox "$work/q/bin/sh"
  printf '#!/bin/sh\necho STRATA-BOOTED\n/bin/busybox reboot -f\n' >"$work/q/init"; chmod +x "$work/q/init"
  (cd "$work/q" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) >"$work/q.cpio"
  q=(timeout 60 qemu-system-x86_64 -accel tcg -M microvm -m 128 -nodefaults -no-user-config -display none
     -serial stdio -no-reboot -kernel "$qemu_kernel" -initrd "$work/q.cpio"
     -append "console=ttyS0 quiet tsc_early_khz=2445406 rdinit=/init")
  read -r q_min q_med < <(time_runs "$qemu_runs" "${q[@]}")
  qemu_line="| QEMU TCG (-M microvm), $(basename "$qemu_kernel") + busybox initramfs to a marker | tcg | $q_min / $q_med | | $qemu_runs runs; bench/vm-boot.sh has memory |"
fi

# An idle small VM: host memory and disk.
id=$("$strata" run --vm -d busybox sleep 60)
sleep 2
st=$STRATA_ROOT/vm/$id/state.json
read -r keeper cg < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["keeper_pid"], [d for d in s["cgroup_dirs"] if "/memory/" in d][0])' "$st")
cg_now=$(( $(cat "$cg/memory.usage_in_bytes") / 1024 ))
cg_peak=$(( $(cat "$cg/memory.max_usage_in_bytes") / 1024 ))
keeper_rss=$(awk '/VmRSS/{print $2}' /proc/"$keeper"/status)
uml_rss=0
for p in $(cat "$cg/cgroup.procs"); do r=$(awk '/VmRSS/{print $2}' /proc/"$p"/status 2>/dev/null || echo 0); uml_rss=$((uml_rss + r)); done
cow_kib=$(du -k "$STRATA_ROOT/vm/$id/root.cow" | cut -f1)
"$strata" rm -f "$id" >/dev/null
layers_kib=$(du -sk "$STRATA_STORE/layers" | cut -f1)
disk=$(ls "$STRATA_STORE"/vm/disks/*.ext4 | head -1)
disk_kib=$(du -k "$disk" | cut -f1)
disk_apparent_kib=$(( $(stat -c %s "$disk") / 1024 ))
kernel_kib=$(( ksize / 1024 ))
mib() { echo "scale=1; $1/1024" | bc; }

body=$work/section.md
{
  echo "## strata run --vm vs strata run vs QEMU TCG (bench/vm-run.sh)"
  echo
  echo "Host: $(nproc) cores (shared with other work), $(uname -r), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "VM platform: **$platform**, guest kernel $kversion ($kpath); busybox image; guest memory 128 MiB;"
  echo "release build; root disk and agent initramfs cached (first run builds them)."
  echo
  echo "| what | platform | invocation → exit, min / median (ms) | invocation → workload's first output, min / median (ms) | notes |"
  echo "|---|---|---|---|---|"
  echo "| \`strata run --vm --rm busybox true\` | $platform | $vm_min / $vm_med | $vmw_min / $vmw_med (\`echo x\`) | $runs runs |"
  echo "| \`strata run --rm busybox true\` | container | $ct_min / $ct_med | $ctw_min / $ctw_med (\`echo x\`) | $runs runs |"
  echo "$qemu_line"
  echo
  echo "Target: \`strata run --vm --rm busybox true\` ≤ 0.2× QEMU TCG (≈ 300 ms): median ratio $( [ -n "${q_med:-}" ] && echo "scale=2; $vm_med/$q_med" | bc || echo n/a)."
  echo
  echo "| idle small VM (\`run --vm -d busybox sleep\`, $platform) | KiB | MiB |"
  echo "|---|---|---|"
  echo "| VM cgroup now (guest memory touched + UML host processes) | $cg_now | $(mib $cg_now) |"
  echo "| VM cgroup peak (boot included) | $cg_peak | $(mib $cg_peak) |"
  echo "| sum of VmRSS of the VM's host processes (shared pages counted per process) | $uml_rss | $(mib $uml_rss) |"
  echo "| keeper process VmRSS | $keeper_rss | $(mib $keeper_rss) |"
  echo
  echo "Target: ≤ 40 MB of host memory per idle small VM: cgroup + keeper = $(mib $((cg_now + keeper_rss))) MiB."
  echo
  echo "| disk footprint | KiB |"
  echo "|---|---|"
  echo "| image layers (container path uses only these) | $layers_kib |"
  echo "| + guest kernel ($platform, $kversion) | $kernel_kib |"
  echo "| + cached VM root disk (ext4, allocated / apparent) | $disk_kib / $disk_apparent_kib |"
  echo "| + per-VM COW file after \`sleep\` started (allocated) | $cow_kib |"
  echo "| total for the VM path | $((layers_kib + kernel_kib + disk_kib + cow_kib)) |"
} >"$body"
vm_section vm-run "$body"
cat "$body"
