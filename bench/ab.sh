#!/usr/bin/env bash
# A/B start-time check of two builds of strata, side by side in one hyperfine run (the way
# Firecracker's performance tests compare a change against main): `strata-oci run` of a busybox
# bundle running /bin/true, and `strata run --rm busybox true`, each for build A and build B.
# Used to show that a refactor changed no speed (issue 11: before and after the engine crate).
#
# AB_VM=uml|qemu adds the warm VM start of that platform: `strata run --vm --rm busybox true`
# taking a VM from each build's own pool (`strata vm pool --size 1`, refilled by hyperfine's
# untimed --prepare), each build with its own guest agent (issue 16: the qemu pool's rehearsal).
#
# usage: bench/ab.sh REV_A REV_B [RUNS]    (git revisions; release static-pie builds are made in
#                                            temporary worktrees under $AB_WORK, default /tmp/strata-ab)
#        A_BIN_DIR=dir B_BIN_DIR=dir bench/ab.sh REV_A REV_B [RUNS]   (dirs that already hold strata and
#                                            strata-oci built from those revisions; nothing is built)
# Prints hyperfine's tables and writes them (markdown) to $AB_WORK/ab-*.md. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "$(id -u)" = 0 ] || { echo "bench/ab.sh: needs root (namespaces, cgroups, mounts)" >&2; exit 1; }
[ $# -ge 2 ] || { echo "usage: bench/ab.sh REV_A REV_B [RUNS]" >&2; exit 2; }
rev_a=$1 rev_b=$2 runs=${3:-100}
base=${AB_WORK:-/tmp/strata-ab}
mkdir -p "$base"

# build REV DIR: release static-pie strata and strata-oci of REV, copied into DIR.
build() {
  local rev=$1 out=$2 tree
  tree="$base/tree-$(git rev-parse --short "$rev")"
  [ -d "$tree" ] || git worktree add -q --detach "$tree" "$rev"
  (cd "$tree" && CARGO_TARGET_DIR="$tree/target" bash scripts/build-release.sh -q)
  mkdir -p "$out"
  # Measured as installed: a copy, not the linker's output file (bench/oci-run.sh says why).
  install -m 0755 "$tree/target/release/strata" "$tree/target/release/strata-oci" "$out/"
  if [ -n "${AB_VM:-}" ]; then
    (cd "$tree" && CARGO_TARGET_DIR="$tree/target" bash scripts/build-agent.sh >/dev/null)
    install -m 0755 "$tree/target/x86_64-unknown-linux-gnu/release/strata-agent" "$out/"
  fi
}
# A given A_BIN_DIR/B_BIN_DIR is measured as it is (REV then only labels it).
a_dir=${A_BIN_DIR:-$base/bin-a} b_dir=${B_BIN_DIR:-$base/bin-b}
[ -n "${A_BIN_DIR:-}" ] || [ "$rev_a" = - ] || build "$rev_a" "$a_dir"
[ -n "${B_BIN_DIR:-}" ] || [ "$rev_b" = - ] || build "$rev_b" "$b_dir"

work=$(mktemp -d /run/strata-ab.XXXXXX)
cleanup() {
  set +e
  for s in a b; do
    d=$a_dir; [ $s = b ] && d=$b_dir
    [ -z "${AB_VM:-}" ] || "$d/strata" --store "$work/store-$s" --root "$work/run-$s" vm pool --size 0 \
      --platform "$AB_VM" >/dev/null 2>&1
    "$d/strata-oci" --root "$work/oci-$s" delete --force "ab-$s" >/dev/null 2>&1
    "$d/strata" --store "$work/store-$s" --root "$work/run-$s" ps -a -q 2>/dev/null |
      xargs -r "$d/strata" --store "$work/store-$s" --root "$work/run-$s" rm -f >/dev/null 2>&1
  done
  grep " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  rm -rf "$work"
}
trap cleanup EXIT

STRATA_OCI=$b_dir/strata-oci scripts/busybox-bundle.sh "$work/bundle" /bin/true >/dev/null
for s in a b; do
  d=$a_dir; [ $s = b ] && d=$b_dir
  "$d/strata" --store "$work/store-$s" --root "$work/run-$s" run --rm busybox true >/dev/null  # builds the default image
done

hyperfine -N -w 5 -r "$runs" --export-markdown "$base/ab-oci-run.md" \
  -n "strata-oci run (A $rev_a)" "$a_dir/strata-oci --root $work/oci-a run --bundle $work/bundle ab-a" \
  -n "strata-oci run (B $rev_b)" "$b_dir/strata-oci --root $work/oci-b run --bundle $work/bundle ab-b"
hyperfine -N -w 3 -r "$((runs / 3 + 1))" --export-markdown "$base/ab-strata-run.md" \
  -n "strata run --rm (A $rev_a)" "$a_dir/strata --store $work/store-a --root $work/run-a run --rm busybox true" \
  -n "strata run --rm (B $rev_b)" "$b_dir/strata --store $work/store-b --root $work/run-b run --rm busybox true"
tables="$base/ab-oci-run.md $base/ab-strata-run.md"
if [ -n "${AB_VM:-}" ]; then
  [ "$AB_VM" = qemu ] && bash scripts/build-guest-kernel.sh qemu >/dev/null
  vm() { # vm a|b ARGS...: that build's strata with its own agent, store and root
    local d=$a_dir; [ "$1" = b ] && d=$b_dir
    echo "env STRATA_AGENT=$d/strata-agent $d/strata --store $work/store-$1 --root $work/run-$1 ${*:2}"
  }
  for s in a b; do $(vm $s run --vm --platform "$AB_VM" --rm busybox true) >/dev/null; done  # caches
  hyperfine -N -w 2 -r "$((runs / 3 + 1))" --export-markdown "$base/ab-vm-warm.md" \
    --prepare "sh -c '$(vm b vm pool --size 0 --platform "$AB_VM") && $(vm a vm pool --size 1 --platform "$AB_VM")'" \
    --prepare "sh -c '$(vm a vm pool --size 0 --platform "$AB_VM") && $(vm b vm pool --size 1 --platform "$AB_VM")'" \
    -n "warm run --vm --platform $AB_VM (A $rev_a)" "$(vm a run --vm --platform "$AB_VM" --rm busybox true)" \
    -n "warm run --vm --platform $AB_VM (B $rev_b)" "$(vm b run --vm --platform "$AB_VM" --rm busybox true)"
  # The other build's pool would share the CPU (an idle VM, a refill booting): each --prepare
  # drains it and fills its own (untimed); the drain below ends both.
  for s in a b; do $(vm $s vm pool --size 0 --platform "$AB_VM") >/dev/null; done
  tables="$tables $base/ab-vm-warm.md"
fi
echo "tables: $tables"
