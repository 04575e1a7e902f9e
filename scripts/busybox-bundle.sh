#!/usr/bin/env bash
# Builds a busybox OCI bundle in DIR: rootfs from Debian's busybox-static (/bin/busybox plus
# one symlink per applet) and a config.json from `strata-oci spec`, made non-interactive.
# Usage: scripts/busybox-bundle.sh DIR [ARGS...]   (ARGS default: sh -c 'echo hello')
# Idempotent: an existing DIR is refreshed. STRATA_OCI may name the strata-oci binary.
set -euo pipefail
dir=${1:?usage: busybox-bundle.sh DIR [ARGS...]}
shift
[ -x /bin/busybox ] || { echo "busybox-bundle.sh: /bin/busybox missing; install busybox-static (scripts/deps.sh)" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
oci=${STRATA_OCI:-}
if [ -z "$oci" ]; then
  for c in "${CARGO_TARGET_DIR:-$here/target}/release/strata-oci" "${CARGO_TARGET_DIR:-$here/target}/debug/strata-oci"; do
    [ -x "$c" ] && { oci=$c; break; }
  done
fi
[ -n "$oci" ] || { echo "busybox-bundle.sh: strata-oci not built; run cargo build --release first or set STRATA_OCI" >&2; exit 1; }
mkdir -p "$dir/rootfs/bin" "$dir/rootfs/proc" "$dir/rootfs/sys" "$dir/rootfs/dev" "$dir/rootfs/tmp" "$dir/rootfs/etc" "$dir/rootfs/root"
cp -f /bin/busybox "$dir/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$dir/rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$dir/rootfs/etc/passwd"
echo 'root:x:0:' > "$dir/rootfs/etc/group"
rm -f "$dir/config.json"
"$oci" spec --bundle "$dir"
if [ $# -eq 0 ]; then set -- sh -c 'echo hello'; fi
python3 - "$dir/config.json" "$@" <<'PY'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = args
json.dump(c, open(path, "w"), indent=2)
PY
