#!/usr/bin/env bash
# What a bridge network adds to a container start: `strata run --rm --network NAME busybox true`
# against `--network none` (and `-p` on top), release build, private store, root and network
# config directory. The network's own cost (namespace, CNI ADD and DEL) is in the difference.
# Usage: bench/network-start.sh [RUNS]   (root; scripts/build-release.sh first; hyperfine)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
bin="${STRATA_BIN:-target/release/strata}"
[ -x "$bin" ] || { echo "build first: scripts/build-release.sh" >&2; exit 1; }
work="$(mktemp -d /tmp/strata-netstart.XXXXXX)"
net="nsb$$"
export STRATA_NET_CONFIG_DIR="$work/net.d"
st() { "$bin" --store "$work/store" --root "$work/root" --quiet "$@"; }
cleanup() {
  st network rm "$net" >/dev/null 2>&1 || true
  st network prune >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
st image build-default >/dev/null
st network create --subnet "10.199.$(($$ % 200 + 20)).0/24" "$net" >/dev/null
port=$((20000 + $$ % 20000))
hyperfine -N -w 3 -r "$runs" --export-json "$work/h.json" \
  -n "network none" "$bin --store $work/store --root $work/root --quiet run --rm --network none busybox true" \
  -n "network $net (bridge)" "$bin --store $work/store --root $work/root --quiet run --rm --network $net busybox true" \
  -n "network $net, -p 127.0.0.1:$port:80" "$bin --store $work/store --root $work/root --quiet run --rm --network $net -p 127.0.0.1:$port:80 busybox true" \
  >/dev/null
python3 - "$work/h.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
base = r[0]["median"]
print("| strata run --rm busybox true | min | median | network adds (median) |")
print("|---|---|---|---|")
for x in r:
    print(f"| {x['command']} | {x['min']*1e3:.1f} ms | {x['median']*1e3:.1f} ms | {(x['median']-base)*1e3:+.1f} ms |")
PY
