#!/usr/bin/env bash
# Builds the release binaries as they are shipped and benchmarked:
# - strata-oci as a static-pie: every container start executes it twice (the CVE-2019-5736
#   re-exec, crates/container/src/exe_guard.rs), and without the dynamic loader (libc and
#   libgcc_s mapped, symbols looked up, libgcc's CPU probe) each start costs ~0.35 ms less CPU
#   here (bench/oci-run-notes.md). Still position-independent (ASLR). Cargo cannot give one
#   binary a target feature (crt-static in RUSTFLAGS would also hit proc-macro crates), so
#   `cargo rustc` passes it to the final crate only; std and libc pick their static libraries
#   at that final link.
# - strata dynamically linked: it resolves registry host names through glibc's NSS.
# A later plain `cargo build --release` of strata-oci relinks it dynamically; use this script.
# usage: scripts/build-release.sh [CARGO FLAGS...]   (STRATA_BINS="strata-oci" builds only that one)
set -euo pipefail
cd "$(dirname "$0")/.."
for bin in ${STRATA_BINS:-strata-oci strata}; do
  case $bin in
    strata-oci) cargo rustc --release "$@" -p strata-cli --bin strata-oci -- -C target-feature=+crt-static ;;
    strata) cargo build --release "$@" -p strata-cli --bin strata ;;
    *) echo "build-release.sh: unknown binary $bin (strata-oci, strata)" >&2; exit 1 ;;
  esac
done
