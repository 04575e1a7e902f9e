#!/usr/bin/env bash
# strata-oci run vs crun run vs runc run, side by side with hyperfine, on the same busybox bundle
# running /bin/true; writes the oci-run section of docs/benchmarks.md (numbers + the notes in
# bench/oci-run-notes.md on where the time goes).
# crun refuses this hybrid host unless hugetlb sits on a v1 hierarchy: the script mounts one for
# the run and undoes exactly what it did afterwards.
# usage: bench/oci-run.sh [RUNS]   (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
runs=${1:-100}
[ "$(id -u)" = 0 ] || { echo "bench/oci-run.sh: needs root (namespaces, cgroups)" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-$PWD/target}
STRATA_BINS=strata-oci bash scripts/build-release.sh -q
# State roots on /run, like the runtimes' defaults (/run/runc, /run/crun, /run/strata).
work=$(mktemp -d /run/oci-run-bench.XXXXXX)
# Measured as installed (like crun and runc, which dpkg wrote): a copy, not the linker's output
# file, whose page cache holds small folios written piecemeal; every exec then takes more page
# faults (0.95 vs 0.72 ms for a bare start here).
install -m 0755 "$target/release/strata-oci" "$work/strata-oci"
oci=$work/strata-oci
v2ctl=/sys/fs/cgroup/unified/cgroup.subtree_control
made_hugetlb=0
v2_hugetlb_off=0
cleanup() {
  for r in strata crun runc; do
    case $r in strata) bin=$oci ;; *) bin=$r ;; esac
    "$bin" --root "$work/root-$r" delete --force "bench-$r" >/dev/null 2>&1 || true
  done
  if [ "$made_hugetlb" = 1 ]; then
    umount /sys/fs/cgroup/hugetlb 2>/dev/null || true
    rmdir /sys/fs/cgroup/hugetlb 2>/dev/null || true
  fi
  if [ "$v2_hugetlb_off" = 1 ]; then
    # The unmounted v1 hierarchy is released asynchronously (after an RCU grace period): until
    # then the cgroup2 root refuses the controller (EBUSY). Retry briefly, quietly.
    for _ in $(seq 100); do
      if (echo +hugetlb > "$v2ctl") 2>/dev/null; then break; fi
      sleep 0.02
    done
    grep -qw hugetlb "$v2ctl" || echo "bench/oci-run.sh: could not re-enable hugetlb in $v2ctl" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT
if ! mountpoint -q /sys/fs/cgroup/hugetlb; then
  # hugetlb binds to a v1 hierarchy only while the cgroup2 root does not enable it (a test may
  # have enabled it): switch it off for the run, back on afterwards.
  if [ -f "$v2ctl" ] && grep -qw hugetlb "$v2ctl"; then
    echo -hugetlb > "$v2ctl"
    v2_hugetlb_off=1
  fi
  mkdir -p /sys/fs/cgroup/hugetlb
  made_hugetlb=1
  mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
fi
# The default row runs strata-oci exactly as crun and runc are run (no `env` in front): the
# default defence needs no setting.
unset STRATA_EXE_PROTECTION
STRATA_OCI=$oci scripts/busybox-bundle.sh "$work/bundle" /bin/true >/dev/null
cd "$work/bundle"
hyperfine -N --warmup 10 --runs "$runs" --export-json "$work/result.json" \
  -n "strata-oci" "$oci --root $work/root-strata run bench-strata" \
  -n crun "crun --root $work/root-crun run bench-crun" \
  -n runc "runc --root $work/root-runc run bench-runc" \
  -n "strata-oci (memfd)" "env STRATA_EXE_PROTECTION=memfd $oci --root $work/root-strata run bench-strata"
cd "$here"
body=$work/section.md
python3 - "$work/result.json" "$runs" "$(uname -r)" "$(crun --version | head -1)" \
  "$(runc --version | head -1)" "$(cat /proc/loadavg)" > "$body" <<'PY'
import json, sys
res, runs, kernel, crun_v, runc_v, load = sys.argv[1:7]
r = {x["command"]: x for x in json.load(open(res))["results"]}
ms = lambda v: f"{v * 1000:.1f}"
print("## strata-oci run vs crun vs runc (bench/oci-run.sh)\n")
print(f"`hyperfine -N --warmup 10 --runs {runs}` of `RUNTIME --root R run ID` on the same busybox")
print("bundle (`scripts/busybox-bundle.sh DIR /bin/true`: pid, net, ipc, uts, mount and cgroup")
print("namespaces, the default `strata-oci spec` mounts, masked and readonly paths, no seccomp).")
print(f"Host: 2 shared cores, kernel {kernel}, load average at the end: {load.split()[0]};")
print(f"{crun_v}; {runc_v}; strata-oci release build (static-pie, scripts/build-release.sh).\n")
print("| runtime | mean (ms) | σ (ms) | min (ms) | median (ms) | max (ms) | user (ms) | sys (ms) |")
print("|---|---|---|---|---|---|---|---|")
for name in ["strata-oci", "strata-oci (memfd)", "crun", "runc"]:
    x = r[name]
    print(f"| {name} | {ms(x['mean'])} | {ms(x['stddev'])} | {ms(x['min'])} | {ms(x['median'])} "
          f"| {ms(x['max'])} | {ms(x['user'])} | {ms(x['system'])} |")
print("\n`strata-oci` runs with the default defence against CVE-2019-5736 (a re-exec from a detached")
print("read-only mount of the binary: open_tree + mount_setattr + execveat); `strata-oci (memfd)` runs")
print("with `STRATA_EXE_PROTECTION=memfd` (a sealed memfd copy of the binary), through `env`.\n")
ratio = r["strata-oci"]["mean"] / r["crun"]["mean"]
print(f"- strata-oci mean / crun mean = **{ratio:.2f}** (target ≤ 0.80)")
ratio = r["strata-oci (memfd)"]["mean"] / r["crun"]["mean"]
print(f"- strata-oci (memfd) mean / crun mean = {ratio:.2f} (the alternative defence, for reference)")
PY
{ echo; cat "$here/bench/oci-run-notes.md"; } >> "$body"
# shellcheck source=bench/vm-section.sh
. bench/vm-section.sh
vm_section oci-run "$body"
cat "$body"
