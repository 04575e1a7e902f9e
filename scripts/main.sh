#!/usr/bin/env bash
# strata's main job: install what is needed, build the release binaries, prepare a busybox OCI
# bundle from Debian's busybox-static, run it with strata-oci and show what it sees, then compare
# the default busybox image as a container and as a VM (`strata compare`): the whole idea in one run.
# Idempotent: re-running rebuilds incrementally and refreshes the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/main.sh: strata-oci needs root (namespaces, cgroups, mounts); run it with sudo" >&2; exit 1; }
bash scripts/deps.sh
bash scripts/build-release.sh
bash scripts/build-agent.sh >/dev/null   # the VM guest's PID 1, for the compare below
# strata's own UML guest kernel (guest/uml.config): built once, cached in /var/lib/strata/kernels
# (~7 min on 2 cores the first time; Debian's user-mode-linux kernel is the fallback meanwhile).
echo "building the guest kernel if needed (first run: ~7 min on 2 cores; log under /var/lib/strata/kernels)"
bash scripts/build-guest-kernel.sh >/dev/null
bash scripts/build-guest-kernel.sh qemu >/dev/null   # the qemu platform's kernel (guest/qemu.config)
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

strata=$target/release/strata
store=${STRATA_MAIN_STORE:-/var/tmp/strata-main/store}
sroot=${STRATA_MAIN_STRATA_ROOT:-/run/strata-main-strata}
s() { "$strata" --store "$store" --root "$sroot" "$@"; }
s inspect busybox >/dev/null 2>&1 || s --quiet image build-default >/dev/null
chart=${STRATA_MAIN_CHART:-/var/tmp/strata-main/compare.svg}
echo
echo "running: $strata compare --runs 3 --chart $chart busybox"
echo
s compare --runs 3 --chart "$chart" busybox
echo
echo "chart: $chart"
