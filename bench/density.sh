#!/usr/bin/env bash
# Density (issue 14): how many detached containers and VMs are alive at once, each answering
# `strata exec`, and the host memory per VM (its cgroup's memory.usage_in_bytes: UML kernel and
# guest memory touched so far, plus its keeper's and monitor's RSS). Writes the "Density" section
# of docs/reliability.md. Not part of the test command.
# Usage: bench/density.sh [CONTAINERS VMS]   (root; defaults 100 50)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/density.sh: needs root" >&2; exit 1; }
nc=${1:-100} nv=${2:-50}
cargo build -q -p strata-cli --features kill-points --bins  # the test build (no rebuild); the points stay off
bash scripts/build-agent.sh >/dev/null
strata=$PWD/target/debug/strata
work=$(mktemp -d /tmp/strata-density-XXXXXX)
S() { "$strata" --store "$work/store" --root "$work/root" --quiet "$@"; }
cleanup() {
  for id in $(S ps -aq 2>/dev/null); do S rm -f "$id" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
S image build-default >/dev/null
mem_avail() { awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

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
# Per VM: its cgroup's memory usage (UML processes), its keeper's and its monitor's RSS.
sum_cg=0 sum_keeper=0 sum_monitor=0 n=0
while read -r id; do
  cg=/sys/fs/cgroup/memory/strata-vm/$id/memory.usage_in_bytes
  [ -r "$cg" ] || continue
  sum_cg=$((sum_cg + $(cat "$cg") / 1024))
  k=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keeper_pid"])' "$work/root/vm/$id/state.json")
  m=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["monitor_pid"])' "$work/store/containers/$id/record.json")
  sum_keeper=$((sum_keeper + $(rss_kib "$k"))); sum_monitor=$((sum_monitor + $(rss_kib "$m")))
  n=$((n + 1))
done < "$work/ids.vm"
per_cg=$(( n ? sum_cg / n / 1024 : 0 )) per_keeper=$(( n ? sum_keeper / n / 1024 : 0 )) per_monitor=$(( n ? sum_monitor / n / 1024 : 0 ))
per_avail_c=$(( started_c ? (avail0 - avail_c) / started_c : 0 ))
per_avail_v=$(( started_v ? (avail_c - avail_v) / started_v : 0 ))

section="$(cat <<MD
## Density

Command: \`bench/density.sh $nc $nv\` ($(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {print int($2/1048576)}' /proc/meminfo) GiB, debug build,
other work on the host: load $(cut -d' ' -f1 /proc/loadavg)). Detached \`busybox sleep\` workloads, started one after the other,
then \`strata exec ID echo ok\` in each while all are alive.

| | asked | started | answered exec | time to start all | MemAvailable drop per instance |
|---|---|---|---|---|---|
| containers | $nc | $started_c | $answered_c | $((t1 - t0)) s (with the execs) | $per_avail_c MiB |
| VMs (UML, 128 MiB guests) | $nv | $started_v | $answered_v | $((t2 - t1)) s (with the execs) | $per_avail_v MiB |

Host memory per VM: $per_cg MiB in its cgroup (UML kernel and the guest memory it touched), plus its keeper
($per_keeper MiB RSS) and its monitor ($per_monitor MiB RSS).
MD
)"
doc=docs/reliability.md
touch "$doc"
python3 - "$doc" "$section" <<'PY'
import sys, re
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
pat = re.compile(r"^## Density\n.*?(?=^## |\Z)", re.S | re.M)
text = pat.sub(section + "\n\n", text) if pat.search(text) else text.rstrip("\n") + ("\n\n" if text.strip() else "") + section + "\n"
open(path, "w").write(text)
PY
echo "$section"
