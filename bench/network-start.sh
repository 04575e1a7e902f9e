#!/usr/bin/env bash
# What a bridge network adds to a container start: `strata run --rm --network NAME busybox true`
# against `--network none` (and `-p` on top), release build, private store, root and network
# config directory; Podman's bridge run (CNI backend, runc: crun refuses this cgroup v1 hybrid
# host) beside it, same three rows, in its own private root. The network's own cost (namespace,
# CNI ADD; DEL runs after the run returned since the release, see docs/networking.md) is in the
# difference to the `none` row of the same tool.
# Usage: bench/network-start.sh [RUNS]   (root; scripts/build-release.sh first)
#   STRATA_BIN=path (default target/release/strata); STRATA_BIN_BEFORE=path adds the same rows
#   for another build (A/B, each with its own network made by that build); NO_PODMAN=1 skips
#   Podman.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/network-start.sh: needs root (namespaces, iptables, CNI plugins)" >&2; exit 1; }
runs="${1:-20}"
bin="${STRATA_BIN:-target/release/strata}"
[ -x "$bin" ] || { echo "build first: scripts/build-release.sh" >&2; exit 1; }
work="$(mktemp -d /tmp/strata-netstart.XXXXXX)"
k=0
cmds=()
pcmds=()
nets=()
cleanup() {
  for n in "${nets[@]}"; do
    set -- $n
    env STRATA_NET_CONFIG_DIR="$3/net.d" "$1" --store "$3/store" --root "$3/root" --quiet network rm "$2" >/dev/null 2>&1 || true
    env STRATA_NET_CONFIG_DIR="$3/net.d" "$1" --store "$3/store" --root "$3/root" --quiet network prune >/dev/null 2>&1 || true
  done
  if [ -n "${podman:-}" ]; then
    $podman rm -af >/dev/null 2>&1 || true
    $podman network rm -f "pnet$$" >/dev/null 2>&1 || true
    $podman system reset -f >/dev/null 2>&1 || true
    # Podman's default bridge, made by the first `--network bridge` run, outlives its config.
    if [ -z "$had_podman_bridge" ]; then ip link delete cni-podman0 >/dev/null 2>&1 || true; fi
  fi
  rm -rf "$work"
}
had_podman_bridge=$([ -e /sys/class/net/cni-podman0 ] && echo 1 || true)
trap cleanup EXIT

# strata_rows LABEL BIN: a private store/root/config dir and network for BIN, three rows.
strata_rows() {
  local label=$1 b=$2 d="$work/s$k" net="nsb$$x$k"
  mkdir -p "$d"
  local st="env STRATA_NET_CONFIG_DIR=$d/net.d $b --store $d/store --root $d/root --quiet"
  $st image build-default >/dev/null
  $st network create --subnet "10.199.$(($$ % 100 + 20 + k)).0/24" "$net" >/dev/null
  nets+=("$b $net $d")
  cmds+=(-n "$label: network none" "$st run --rm --network none busybox true")
  cmds+=(-n "$label: network $net (bridge)" "$st run --rm --network $net busybox true")
  cmds+=(-n "$label: network $net, -p 127.0.0.1::80" "$st run --rm --network $net -p 127.0.0.1::80 busybox true")
  # The same network without pre-attached namespaces (every start runs the plugins), when this
  # build has --pool.
  if $st network create --help 2>/dev/null | grep -q -- --pool; then
    local cold="nsb$$x${k}c"
    $st network create --pool 0 --subnet "10.198.$(($$ % 100 + 20 + k)).0/24" "$cold" >/dev/null
    nets+=("$b $cold $d")
    cmds+=(-n "$label: network $cold (bridge, --pool 0)" "$st run --rm --network $cold busybox true")
  fi
  k=$((k + 1))
}

if [ -n "${STRATA_BIN_BEFORE:-}" ]; then
  strata_rows "strata before" "$STRATA_BIN_BEFORE"
fi
strata_rows "strata" "$(realpath "$bin")"

if [ -z "${NO_PODMAN:-}" ] && command -v podman >/dev/null; then
  p="$work/podman"
  mkdir -p "$p/rootfs/bin"
  cp /bin/busybox "$p/rootfs/bin/"
  ln -s busybox "$p/rootfs/bin/true"
  tar -C "$p/rootfs" -cf "$p/bb.tar" .
  podman="podman --root $p/root --runroot $p/runroot --tmpdir $p/tmp --network-config-dir $p/networks --storage-driver vfs --cgroup-manager cgroupfs --events-backend file"
  $podman import "$p/bb.tar" localhost/strata-bench-bb >/dev/null
  # The ulimits: podman's defaults exceed this host's hard limits (as in engines_podman.rs).
  prun="$podman run --rm --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=30000:30000"
  pcmds+=(-n "podman (runc): network none" "$prun --network none localhost/strata-bench-bb true")
  pcmds+=(-n "podman (runc): network bridge" "$prun --network bridge localhost/strata-bench-bb true")
  pcmds+=(-n "podman (runc): network bridge, -p 127.0.0.1::80" "$prun --network bridge -p 127.0.0.1::80 localhost/strata-bench-bb true")
fi

# Round robin: one run of each row per round (after 3 warm-up rounds), so a change of the host's
# load (other work on a 2-core machine) hits every row alike; each row's min and median over the
# rounds. (hyperfine runs all runs of one command before the next, which turns load drift into
# differences between rows.) strata's rows and Podman's are two separate round robins: a Podman
# run leaves work behind (conmon, cleanup) that would land on the next strata run.
cat >"$work/rr.py" <<'PY'
import shlex, statistics, subprocess, sys, time
runs = int(sys.argv[1])
args = sys.argv[2:]
rows = [(args[i + 1], shlex.split(args[i + 2])) for i in range(0, len(args), 3)]  # -n NAME CMD
times = {name: [] for name, _ in rows}
for r in range(3 + runs):
    for name, cmd in rows:
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        dt = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"{name}: {shlex.join(cmd)} failed: {p.stderr.decode(errors='replace')}")
        if r >= 3:
            times[name].append(dt)
print("| run --rm ... true | min | median | network adds (median, vs the same tool's none) |")
print("|---|---|---|---|")
base = None
for name, _ in rows:
    tool, _, what = name.partition(": ")
    med = statistics.median(times[name])
    if what == "network none":
        base, add = med, ""
    else:
        add = f"{(med - base) * 1e3:+.1f} ms"
    print(f"| {name} | {min(times[name])*1e3:.1f} ms | {med*1e3:.1f} ms | {add} |")
PY
python3 "$work/rr.py" "$runs" "${cmds[@]}"
if [ ${#pcmds[@]} -gt 0 ]; then
  python3 "$work/rr.py" "$runs" "${pcmds[@]}" | tail -n +3
fi
