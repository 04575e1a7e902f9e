#!/usr/bin/env bash
# Exec latency: `strata exec X true` into a running container and into running VMs (uml, and
# qemu with the accelerator it uses here), side by side in one hyperfine run, plus the cold
# `strata run --vm --rm busybox true` per platform.
# usage: bench/vm-exec.sh [RUNS]
#   BEFORE=DIR   also measure the strata in DIR (with the strata-agent beside it, which its VMs
#                boot), e.g. a build of main: an A/B in the same run, same machine state.
#   AFTER=DIR    measure the binaries in DIR as "after" instead of building this tree
#                (scripts/build-release.sh, scripts/build-agent.sh).
#   COLD_RUNS (15), QEMU_COLD_RUNS (5), QEMU=0 to leave qemu out.
# Writes the "vm-exec" section of docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/vm-section.sh
[ "$(id -u)" = 0 ] || { echo "bench/vm-exec.sh: needs root (namespaces, cgroups, jails)" >&2; exit 1; }
runs=${1:-${RUNS:-50}}
cold_runs=${COLD_RUNS:-15}
qemu_cold_runs=${QEMU_COLD_RUNS:-5}
work=$(mktemp -d /tmp/strata-vm-exec.XXXXXX)
unset STRATA_AGENT STRATA_STORE STRATA_ROOT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

if [ -z "${AFTER:-}" ]; then
  STRATA_BINS=strata bash scripts/build-release.sh -q
  agent=$(bash scripts/build-agent.sh 2>/dev/null)
  AFTER=$work/after-bin
  # Measured as installed: copies, with the agent beside strata (where strata finds it).
  install -D -m 0755 "$CARGO_TARGET_DIR/release/strata" "$AFTER/strata"
  install -m 0755 "$agent" "$AFTER/strata-agent"
fi
builds=(after)
[ -n "${BEFORE:-}" ] && builds=(before after)
declare -A dir=([after]=$AFTER [before]=${BEFORE:-})
s() { # BUILD ARGS...: strata of BUILD on its own store and runtime root
  local b=$1; shift
  "${dir[$b]}/strata" --store "$work/$b/store" --root "$work/$b/root" --quiet "$@"
}
# The qemu VMs get a store of their own: a UML VM holds a lock on the image's shared root disk
# that QEMU refuses to share ("Failed to get consistent read lock").
q() { # BUILD ARGS...
  local b=$1; shift
  "${dir[$b]}/strata" --store "$work/$b/qstore" --root "$work/$b/qroot" --quiet "$@"
}
cleanup() {
  set +e
  for b in "${builds[@]}"; do
    for c in $(s "$b" ps -aq 2>/dev/null); do s "$b" rm -f "$c" >/dev/null 2>&1; done
    for c in $(q "$b" ps -aq 2>/dev/null); do q "$b" rm -f "$c" >/dev/null 2>&1; done
  done
  rm -rf "$work"
}
trap cleanup EXIT

# qemu is measured when a qemu VM starts here (QEMU=0: never).
qemu=${QEMU:-1}
platforms=(uml)
cmds=() names=()
for b in "${builds[@]}"; do
  mkdir -p "$work/$b"
  s "$b" image build-default >/dev/null
  s "$b" run -d --name c busybox sleep 3600 >/dev/null
  s "$b" run --vm --platform uml -d --name vm-uml busybox sleep 3600 >/dev/null
  [ "$qemu" != 0 ] && q "$b" image build-default >/dev/null
  if [ "$qemu" != 0 ] && q "$b" run --vm --platform qemu -d --name vm-qemu busybox sleep 3600 >/dev/null 2>"$work/qemu.err"; then
    accel=$(q "$b" inspect vm-qemu | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Vm"]["Accelerator"])')
    [ "$b" = after ] && platforms=(uml "qemu-$accel")
  elif [ "$qemu" != 0 ]; then
    echo "vm-exec: no qemu VM ($(tail -1 "$work/qemu.err")): measuring uml only" >&2
    qemu=0
  fi
  # Warm: the first exec of each maps what later ones reuse.
  s "$b" exec c true && s "$b" exec vm-uml true
  [ "$qemu" = 0 ] || q "$b" exec vm-qemu true
done
[ "$qemu" = 0 ] && platforms=(uml)
for b in "${builds[@]}"; do
  for c in c vm-uml $([ "$qemu" != 0 ] && echo vm-qemu); do
    label=container; [ "$c" = vm-uml ] && label="vm (uml)"; [ "$c" = vm-qemu ] && label="vm (${platforms[1]})"
    names+=("$b: exec into $label")
    st=store rt=root; [ "$c" = vm-qemu ] && st=qstore rt=qroot
    cmds+=("${dir[$b]}/strata --store $work/$b/$st --root $work/$b/$rt exec $c true")
  done
done
# hyperfine runs one command's runs back to back: on a shared machine whose load drifts that
# favours whichever ran in a quiet spell. So each benchmark is split into $rounds rounds of
# hyperfine runs over every command, and the rounds' times are pooled (merge.py below).
rounds=${ROUNDS:-10}
bench() { # OUT WARMUP RUNS (NAME CMD)...
  local out=$1 warm=$2 n=$3 r per; shift 3
  per=$(( (n + rounds - 1) / rounds ))
  local hargs=()
  while [ $# -gt 0 ]; do hargs+=(-n "$1" "$2"); shift 2; done
  for r in $(seq "$rounds"); do
    hyperfine -N -w "$warm" -r "$per" --export-json "$out.$r" "${hargs[@]}" >/dev/null 2>&1
  done
  python3 - "$out" "$out".* <<'PY'
import json, sys
out, parts = sys.argv[1], sys.argv[2:]
pooled = {}
for f in parts:
    for r in json.load(open(f))["results"]:
        pooled.setdefault(r["command"], []).extend(r["times"])
json.dump({"results": [{"command": k, "times": v} for k, v in pooled.items()]}, open(out, "w"))
PY
}
load=$(cut -d' ' -f1-3 /proc/loadavg)
args=()
for i in "${!cmds[@]}"; do args+=("${names[$i]}" "${cmds[$i]}"); done
bench "$work/exec.json" 2 "$runs" "${args[@]}"

# Cold runs after the warm VMs are gone (they would share the CPU).
for b in "${builds[@]}"; do
  for c in c vm-uml; do s "$b" rm -f "$c" >/dev/null 2>&1 || true; done
  q "$b" rm -f vm-qemu >/dev/null 2>&1 || true
done
args=()
for b in "${builds[@]}"; do
  args+=("$b: run --vm --platform uml --rm busybox true" "${dir[$b]}/strata --store $work/$b/store --root $work/$b/root run --vm --platform uml --rm busybox true")
done
rounds=$(( cold_runs < rounds ? cold_runs : rounds )) bench "$work/cold.json" 1 "$cold_runs" "${args[@]}"
if [ "$qemu" != 0 ]; then
  args=()
  for b in "${builds[@]}"; do
    args+=("$b: run --vm --platform qemu --rm busybox true (${platforms[1]})" "${dir[$b]}/strata --store $work/$b/qstore --root $work/$b/qroot run --vm --platform qemu --rm busybox true")
  done
  rounds=$qemu_cold_runs bench "$work/cold-qemu.json" 0 "$qemu_cold_runs" "${args[@]}"
fi

body=$work/section.md
{
  echo "## Exec into a VM vs into a container (bench/vm-exec.sh)"
  echo
  echo "Host: $(nproc) cores (shared with other work), $(uname -r), load average at start: $load."
  echo "\`strata exec X true\` into a running \`busybox sleep\`: $runs runs each, in ${ROUNDS:-10} rounds of"
  echo "hyperfine over every command (pooled, so load drift hits all alike); cold \`run --vm --rm\`:"
  echo "$cold_runs runs (uml), $qemu_cold_runs (qemu). Builds: ${builds[*]}$([ -n "${BEFORE:-}" ] && echo " (before = $BEFORE)")."
  echo
  echo "| build: command | mean ± σ (ms) | median (ms) | min (ms) | median / container exec (same build) |"
  echo "|---|---|---|---|---|"
  python3 - "$work"/exec.json "$work"/cold.json $([ "$qemu" != 0 ] && echo "$work/cold-qemu.json") <<'PY'
import json, statistics, sys
rows = []
for f in sys.argv[1:]:
    rows += json.load(open(f))["results"]
med = {r["command"]: statistics.median(r["times"]) * 1e3 for r in rows}
for r in rows:
    name = r["command"]
    t = r["times"]
    m = med[name]
    build = name.split(":")[0]
    base = med.get(f"{build}: exec into container")
    ratio = f"{m / base:.1f}×" if base and "exec into vm" in name else ""
    sd = statistics.stdev(t) if len(t) > 1 else 0.0
    print(f"| {name} | {statistics.mean(t)*1e3:.1f} ± {sd*1e3:.1f} | {m:.1f} | {min(t)*1e3:.1f} | {ratio} |")
PY
} >"$body"
cat "$body"
vm_section vm-exec "$body"
