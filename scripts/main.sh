#!/usr/bin/env bash
# strata's main job (for now): install what is needed, build the release binaries, prepare a
# busybox OCI bundle from Debian's busybox-static, run it with strata-oci and show what it sees.
# Idempotent: re-running rebuilds incrementally and refreshes the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/main.sh: strata-oci needs root (namespaces, cgroups, mounts); run it with sudo" >&2; exit 1; }
bash scripts/deps.sh
cargo build --release -p strata-cli --bin strata-oci
target=${CARGO_TARGET_DIR:-$PWD/target}
oci=$target/release/strata-oci
bundle=${STRATA_MAIN_BUNDLE:-/var/tmp/strata-main/busybox}
root=${STRATA_MAIN_ROOT:-/run/strata-main}
id=strata-main-$$
STRATA_OCI=$oci scripts/busybox-bundle.sh "$bundle" sh -c \
  'echo "== uname"; uname -a; echo "== id"; id; echo "== hostname"; hostname;
   echo "== cgroup"; cat /proc/self/cgroup; echo "== /"; ls /;
   echo "== mounts"; cut -d" " -f5,10 /proc/self/mountinfo' >/dev/null
echo "bundle: $bundle (rootfs from /bin/busybox, config.json from strata-oci spec)"
echo "running: $oci --root $root run --bundle $bundle $id"
echo
"$oci" --root "$root" run --bundle "$bundle" "$id"
