#!/usr/bin/env bash
# Runs every test of strata: unit tests and end-to-end tests (as root, on real bundles, images and VMs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: the end-to-end tests need root (namespaces, cgroups, mounts); run it with sudo" >&2; exit 1; }
bash scripts/deps.sh
bash scripts/engines-deps.sh  # containerd, dockerd, podman for crates/cli/tests/engines_*.rs
# strata's UML guest kernel for crates/vmm/tests (cached in /var/lib/strata/kernels; a fresh build
# takes ~7 min on 2 cores, see docs/benchmarks.md).
bash scripts/build-guest-kernel.sh >/dev/null
python3 scripts/module-cycles.py  # no import circles between the files of any crate
cargo build --workspace --bins
# The static guest agent (PID 1 of every VM) for the `strata run --vm` / strata-oci VM tests.
bash scripts/build-agent.sh >/dev/null
cargo test --workspace --no-fail-fast -- --test-threads=2
# Fuzz smoke runs (seconds each) where nightly and cargo-fuzz exist; the stable #[test] corpora
# above cover the same entry points everywhere. Long runs: docs/security.md.
if cargo +nightly fuzz --version >/dev/null 2>&1; then
  for t in seccomp_profile config_json cgroups; do
    scratch=$(mktemp -d)
    (cd crates/container && cargo +nightly fuzz run "$t" "$scratch" "fuzz/seeds/$t" -- -max_total_time=5 -rss_limit_mb=2048 >/dev/null 2>"$scratch.log") \
      || { cat "$scratch.log" >&2; exit 1; }
    rm -rf "$scratch" "$scratch.log"
  done
fi
