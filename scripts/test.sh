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
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
