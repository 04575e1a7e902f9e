#!/usr/bin/env bash
# Boot time and host memory of a VM to an init marker, per platform and kernel:
#  - UML, strata's kernel (scripts/build-guest-kernel.sh) and Debian's user-mode-linux, as a bare
#    host process booting a busybox initramfs;
#  - QEMU TCG (-accel tcg -M microvm) booting Debian's cloud kernel with the same initramfs;
#  - the product path: a jailed UML VM through strata-vmm (crates/vmm/examples/vm-boot.rs) on a
#    copy-on-write busybox ext4 disk, marker read from the strata channel;
#  - the whole VM path minus the CLI: strata-agent as PID 1 (initramfs), the busybox disk as the
#    overlay's lower, `true` run over strata-proto (crates/vmm/examples/vm-agent.rs).
# Time: repeated runs (start → VM process exit; init prints the marker and powers off at once),
# each under a 60 s timeout: a run that hangs (QEMU TCG occasionally does here) or misses the
# marker is counted as failed, not timed.
# Memory: peak RSS of the largest host process (/usr/bin/time -v), and for the jailed path the
# peak of the VM's cgroup (guest memory touched + host-side overhead).
# Writes the "vm-boot" section of docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/vm-section.sh
runs=${RUNS:-10}
mem=128
work=$(mktemp -d /tmp/strata-vm-boot.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
bash scripts/deps.sh

strata_kernel=$(bash scripts/build-guest-kernel.sh)
debian_kernel=/usr/bin/linux
# QEMU's kernel: Debian's cloud kernel, unpacked (not installed) into a cache directory.
qdir=/var/lib/strata/bench/cloud-kernel
if ! ls "$qdir"/boot/vmlinuz-* >/dev/null 2>&1; then
  mkdir -p "$qdir"
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image/{print $2; exit}')
  (cd "$work" && apt-get download "$pkg" >/dev/null 2>&1 && dpkg-deb -x "$work"/"$pkg"_*.deb "$qdir")
fi
qemu_kernel=$(ls "$qdir"/boot/vmlinuz-* | head -1)

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
mkcpio() { (cd "$1" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) >"$2"; }
mkcpio "$work/uml-root" "$work/uml.cpio"
mkcpio "$work/qemu-root" "$work/qemu.cpio"
# Disk for the jailed path: /init reports on the channel (mounting devtmpfs first if needed).
mkdir -p "$work/disk-root" && cp -a "$work/uml-root/." "$work/disk-root/"
printf '#!/bin/sh\nmount -t devtmpfs dev /dev 2>/dev/null\necho STRATA-BOOTED >/dev/ttyS1\npoweroff -f\n' >"$work/disk-root/init"
truncate -s 16M "$work/root.ext4"
mkfs.ext4 -q -F -b 4096 -m 0 -O ^has_journal,^resize_inode -d "$work/disk-root" "$work/root.ext4"
chmod 644 "$work/root.ext4"

uml_args="mem=${mem}M initrd=$work/uml.cpio con=null con0=null,fd:1 ssl=null console=tty0 quiet initcall_blacklist=raid6_select_algo rdinit=/init"
export GLIBC_TUNABLES=glibc.pthread.rseq=0
declare -A cmd=(
  [uml-strata]="$strata_kernel uml_dir=$work $uml_args"
  [uml-debian]="$debian_kernel uml_dir=$work $uml_args"
  [qemu-tcg]="qemu-system-x86_64 -accel tcg -M microvm -m $mem -nodefaults -no-user-config -display none -serial stdio -no-reboot -kernel $qemu_kernel -initrd $work/qemu.cpio -append 'console=ttyS0 quiet tsc_early_khz=2445406 rdinit=/init'"
)
order=(uml-strata uml-debian qemu-tcg)
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
  echo "($("$debian_kernel" --version), with \`initcall_blacklist=raid6_select_algo\`), Debian's cloud kernel"
  echo "for QEMU ($(basename "$qemu_kernel"), TCG, microvm)."
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
for k in uml-strata uml-debian; do
  kernel=$strata_kernel; [ "$k" = uml-debian ] && kernel=$debian_kernel
  line=$("$example" "$kernel" "$work/root.ext4" "$runs" "$mem")
  get() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$line"; }
  note=""; [ "$(get failed)" != 0 ] && note=" ($(get failed) of $runs runs hung)"
  echo "| $k, jailed via strata-vmm (COW ext4 disk, channel)$note | start → marker on channel | $(get marker_min_ms) | $(get marker_median_ms) | $(get cgroup_peak_mib) (cgroup peak) |" >>"$body"
  echo "| $k, jailed via strata-vmm | start → VM reaped, cleaned up | $(get exit_min_ms) | $(get exit_median_ms) | |" >>"$body"
done
line=$("$CARGO_TARGET_DIR/release/examples/vm-agent" "$strata_kernel" "$agent" "$work/root.ext4" "$runs" "$mem")
get() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$line"; }
echo "| uml-strata, jailed, strata-agent PID 1 runs \`true\` over strata-proto | start → exit status on host | $(get status_min_ms) | $(get status_median_ms) | $(get cgroup_peak_mib) (cgroup peak) |" >>"$body"
echo "| uml-strata, jailed, strata-agent | start → VM reaped, cleaned up | $(get exit_min_ms) | $(get exit_median_ms) | |" >>"$body"
{
  echo
  echo "Notes: QEMU's peak RSS is mostly TCG's translation cache (1 GiB by default in QEMU 7.2;"
  echo "\`-accel tcg,tb-size=N\` shrinks it). The UML max RSS counts the guest memory pages the kernel"
  echo "touched (its memory file is mapped into the kernel process). The cgroup peak is everything the"
  echo "jailed VM's host processes charged (guest memory touched, page tables, page cache of its disks)."
  echo "The bare UML runs boot an initramfs; the jailed runs boot a COW ext4 disk and add the jail (namespaces,"
  echo "mounts, cgroup, uid drop) and the channel, i.e. the \`strata run --vm\` path minus the agent."
} >>"$body"
cat "$body"
vm_section vm-boot "$body"
