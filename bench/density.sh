#!/usr/bin/env bash
# Density (issue 14): how many detached containers and VMs are alive at once, each answering an
# exec, and what each VM costs in host memory, with the release build (scripts/build-release.sh):
#  1. `strata run -d` containers, then `strata run -d --vm` VMs (UML, 128 MiB guests), each
#     answering `strata exec ID echo ok` while all are alive;
#  2. the VM layer under containerd: `ctr run -d --runc-binary strata-oci --annotation
#     dev.strata.isolation=vm` on a private containerd (CRI off, as bench/engines.sh), each
#     answering `ctr task exec ... echo ok`.
# Per VM: its cgroup's memory.usage_in_bytes (the UML kernel's processes: guest memory touched,
# page tables, page cache charged to it) and memory.stat's split, plus the host processes around
# it (strata's keeper and monitor; containerd's shim and strata-oci's keeper), as RSS and as PSS
# (shared pages split between the processes that map them: the fair share of 50 copies of one
# static binary). Writes the "Density" section of docs/reliability.md. Not part of the test command.
# Usage: bench/density.sh [CONTAINERS VMS CONTAINERD_VMS]   (root; defaults 100 50 50)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/density.sh: needs root" >&2; exit 1; }
nc=${1:-100} nv=${2:-50} nd=${3:-50}
bash scripts/build-release.sh -q
bash scripts/build-agent.sh >/dev/null
target=${CARGO_TARGET_DIR:-$PWD/target}
strata=$target/release/strata
oci=$target/release/strata-oci
work=$(mktemp -d /tmp/strata-density-XXXXXX)
name=$(basename "$work")
pids=()
S() { "$strata" --store "$work/store" --root "$work/root" --quiet "$@"; }
cleanup() {
  set +e
  for id in $(S ps -aq 2>/dev/null); do S rm -f "$id" >/dev/null 2>&1; done
  if [ -n "${ctr:-}" ]; then
    for id in $($ctr tasks ls -q 2>/dev/null); do $ctr tasks kill -s KILL "$id" >/dev/null 2>&1; done
    sleep 2
    for id in $($ctr containers ls -q 2>/dev/null); do $ctr tasks delete -f "$id" >/dev/null 2>&1; $ctr containers rm "$id" >/dev/null 2>&1; done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  for p in $(grep -l "$work" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do kill -9 "$p" 2>/dev/null; done
  # containerd shims listen outside the sandbox; each recorded its socket in an `address` file.
  for f in $(find "$work" -name address -not -path '*/rootfs/*' 2>/dev/null); do
    s=$(sed 's|^unix://||' "$f"); case $s in /run/containerd/s/*) rm -f "$s" ;; esac
  done
  # strata-oci VMs left by a failed run: their state lists their host cgroups.
  for f in $(find "$work" -path '*/vm/*/state.json' 2>/dev/null); do
    for d in $(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1])).get("cgroup_dirs", [])))' "$f" 2>/dev/null); do
      [ -d "$d" ] || continue
      [ -e "$d/freezer.state" ] && echo THAWED >"$d/freezer.state"
      for p in $(cat "$d/cgroup.procs"); do kill -9 "$p" 2>/dev/null; done
      for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$d" 2>/dev/null && break; sleep 0.2; done
    done
  done
  grep " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  for d in /sys/fs/cgroup/*/"$name"; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; ; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
S image build-default >/dev/null
mem_avail() { awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
stat_kib() { awk -v k="$2" '$1 == k {print int($2/1024)}' "$1/memory.stat"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }  # KiB -> MiB

run_many() { # isolation count -> ids in $work/ids.<iso>, how many started
  local iso=$1 n=$2 flag=() ok=0
  [ "$iso" = vm ] && flag=(--vm)
  : > "$work/ids.$iso"
  for i in $(seq 1 "$n"); do
    if id=$(S run -d "${flag[@]}" busybox sleep 100000 2>"$work/err.$iso"); then
      echo "$id" >> "$work/ids.$iso"; ok=$((ok + 1))
    else
      echo "start $iso $i failed: $(cat "$work/err.$iso")" >&2; break
    fi
  done
  echo "$ok"
}
exec_all() { # isolation -> how many answered
  local ok=0
  while read -r id; do
    [ "$(S exec "$id" echo ok 2>/dev/null)" = ok ] && ok=$((ok + 1))
  done < "$work/ids.$1"
  echo "$ok"
}
# Sums over the VMs of a cgroup directory list: usage, rss, cache (KiB) -> "n usage rss cache"
cg_sums() {
  local n=0 u=0 r=0 c=0 d
  for d in "$@"; do
    [ -r "$d/memory.usage_in_bytes" ] || continue
    u=$((u + $(cat "$d/memory.usage_in_bytes") / 1024))
    r=$((r + $(awk '$1 == "total_rss" {print int($2/1024)}' "$d/memory.stat")))
    c=$((c + $(awk '$1 == "total_cache" {print int($2/1024)}' "$d/memory.stat")))
    n=$((n + 1))
  done
  echo "$n $u $r $c"
}

avail0=$(mem_avail)
t0=$(date +%s)
started_c=$(run_many container "$nc")
answered_c=$(exec_all container)
avail_c=$(mem_avail)
t1=$(date +%s)
started_v=$(run_many vm "$nv")
answered_v=$(exec_all vm)
avail_v=$(mem_avail)
t2=$(date +%s)
# Per VM: its cgroup (UML processes), its keeper and its monitor.
dirs=() sum_krss=0 sum_kpss=0 sum_mrss=0 sum_mpss=0
while read -r id; do
  dirs+=("/sys/fs/cgroup/memory/strata-vm/$id")
  k=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keeper_pid"])' "$work/root/vm/$id/state.json")
  m=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["monitor_pid"])' "$work/store/containers/$id/record.json")
  sum_krss=$((sum_krss + $(rss_kib "$k"))) sum_kpss=$((sum_kpss + $(pss_kib "$k")))
  sum_mrss=$((sum_mrss + $(rss_kib "$m"))) sum_mpss=$((sum_mpss + $(pss_kib "$m")))
done < "$work/ids.vm"
read -r n cg_u cg_r cg_c < <(cg_sums "${dirs[@]}")
per() { [ "$n" -gt 0 ] && mib $(( $1 / n )) || echo 0; }
vm_cg=$(per "$cg_u") vm_rss=$(per "$cg_r") vm_cache=$(per "$cg_c")
vm_krss=$(per "$sum_krss") vm_kpss=$(per "$sum_kpss") vm_mrss=$(per "$sum_mrss") vm_mpss=$(per "$sum_mpss")
vm_total=$(per $((cg_u + sum_kpss + sum_mpss)))
per_avail_c=$(( started_c ? (avail0 - avail_c) / started_c : 0 ))
per_avail_v=$(( started_v ? (avail_c - avail_v) / started_v : 0 ))
# Free the CLI's VMs before the containerd part.
for id in $(S ps -aq); do S rm -f "$id" >/dev/null 2>&1 || true; done

# 2. The VM layer under containerd.
img=localhost/strata-busybox:density
mkdir -p "$work/rootfs"/{bin,etc,tmp,root,proc,sys,dev}
cp /bin/busybox "$work/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/rootfs/etc/passwd"
echo 'root:x:0:' >"$work/rootfs/etc/group"
umoci init --layout "$work/layout" >/dev/null
umoci new --image "$work/layout:b" >/dev/null
umoci insert --image "$work/layout:b" "$work/rootfs" / >/dev/null
umoci config --image "$work/layout:b" --config.cmd sh --config.env PATH=/bin >/dev/null
skopeo copy -q "oci:$work/layout:b" "docker-archive:$work/busybox.tar:$img"
cd_dir=$work/containerd
mkdir -p "$cd_dir"
cat >"$cd_dir/config.toml" <<EOF
version = 2
root = "$cd_dir/root"
state = "$cd_dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$cd_dir/c.sock"
[ttrpc]
  address = "$cd_dir/c.sock.ttrpc"
[debug]
  address = "$cd_dir/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$cd_dir/opt"
EOF
containerd --config "$cd_dir/config.toml" >"$cd_dir/log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do ctr -a "$cd_dir/c.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
ctr="ctr -a $cd_dir/c.sock -n $name"
$ctr images import "$work/busybox.tar" >/dev/null
avail_d0=$(mem_avail)
t3=$(date +%s)
started_d=0 answered_d=0
for i in $(seq 1 "$nd"); do
  if $ctr run -d --runc-binary "$oci" --runc-root "$work/rr" --cgroup "/$name/d$i" \
      --annotation dev.strata.isolation=vm "$img" "d$i" sleep 100000 >/dev/null 2>"$work/err.d"; then
    started_d=$((started_d + 1))
  else
    echo "ctr run d$i failed: $(cat "$work/err.d")" >&2; break
  fi
done
for i in $(seq 1 "$started_d"); do
  [ "$($ctr tasks exec --exec-id e$i "d$i" echo ok 2>/dev/null)" = ok ] && answered_d=$((answered_d + 1))
done
t4=$(date +%s)
avail_d=$(mem_avail)
# Per VM under containerd: its cgroup (the engine's cgroupsPath: UML processes and the
# strata-oci keeper, which joins it), and its containerd-shim-runc-v2.
ddirs=() sum_srss=0 sum_spss=0 sum_kpss_d=0 sum_krss_d=0 ns=0
for i in $(seq 1 "$started_d"); do
  ddirs+=("/sys/fs/cgroup/memory/$name/d$i")
  st=$(find "$work/rr" -path "*/vm/d$i/state.json" | head -1)
  k=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keeper_pid"])' "$st" 2>/dev/null || echo 0)
  sum_krss_d=$((sum_krss_d + $(rss_kib "$k"))) sum_kpss_d=$((sum_kpss_d + $(pss_kib "$k")))
done
for p in $(pgrep -f "containerd-shim-runc-v2 -namespace $name" || true); do
  sum_srss=$((sum_srss + $(rss_kib "$p"))) sum_spss=$((sum_spss + $(pss_kib "$p"))); ns=$((ns + 1))
done
read -r n cg_u cg_r cg_c < <(cg_sums "${ddirs[@]}")
d_cg=$(per "$cg_u") d_rss=$(per "$cg_r") d_cache=$(per "$cg_c")
d_krss=$(per "$sum_krss_d") d_kpss=$(per "$sum_kpss_d")
d_srss=$( [ "$ns" -gt 0 ] && mib $((sum_srss / ns)) || echo 0) d_spss=$( [ "$ns" -gt 0 ] && mib $((sum_spss / ns)) || echo 0)
d_total=$( [ "$n" -gt 0 ] && mib $(( cg_u / n + (ns ? sum_spss / ns : 0) )) || echo 0)
per_avail_d=$(( started_d ? (avail_d0 - avail_d) / started_d : 0 ))

section="$(cat <<MD
## Density

Command: \`bench/density.sh $nc $nv $nd\` ($(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {print int($2/1048576)}' /proc/meminfo) GiB, release build
(scripts/build-release.sh, static-pie), other work on the host: load $(cut -d' ' -f1 /proc/loadavg)). Detached \`busybox sleep\`
workloads started one after the other, then an exec of \`echo ok\` in each while all are alive. VMs: UML
(strata's kernel), 128 MiB guests.

| | asked | started | answered exec | time to start all | MemAvailable drop per instance |
|---|---|---|---|---|---|
| containers (\`strata run -d\`) | $nc | $started_c | $answered_c | $((t1 - t0)) s (with the execs) | $per_avail_c MiB |
| VMs (\`strata run -d --vm\`) | $nv | $started_v | $answered_v | $((t2 - t1)) s (with the execs) | $per_avail_v MiB |
| VMs under containerd (\`ctr run -d --runc-binary strata-oci --annotation dev.strata.isolation=vm\`) | $nd | $started_d | $answered_d | $((t4 - t3)) s (with the execs) | $per_avail_d MiB |

Host memory per VM (averages over the live VMs):

| | VM cgroup: usage (anon / page cache) | keeper RSS / PSS | monitor or shim RSS / PSS | total (cgroup + PSS of the rest) |
|---|---|---|---|---|
| \`strata run -d --vm\` | $vm_cg MiB ($vm_rss / $vm_cache) | $vm_krss / $vm_kpss MiB | monitor $vm_mrss / $vm_mpss MiB | **$vm_total MiB** |
| under containerd | $d_cg MiB ($d_rss / $d_cache) (keeper included: it joins the VM's cgroup) | $d_krss / $d_kpss MiB | containerd-shim-runc-v2 $d_srss / $d_spss MiB | **$d_total MiB** |
MD
)"
doc=docs/reliability.md
touch "$doc"
python3 - "$doc" "$section" <<'PY'
import sys, re
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
# The generated part ends at the first "Reading" paragraph (kept: written by hand from the figures).
pat = re.compile(r"^## Density\n.*?(?=^Reading|^## |\Z)", re.S | re.M)
text = pat.sub(section + "\n\n", text) if pat.search(text) else text.rstrip("\n") + ("\n\n" if text.strip() else "") + section + "\n"
open(path, "w").write(text)
PY
echo "$section"
