#!/usr/bin/env bash
# Builds the release binaries (strata-oci and strata) as they are shipped and benchmarked:
# static-pie. Every container start executes the binary twice (the CVE-2019-5736 re-exec,
# crates/container/src/exe_guard.rs), and without the dynamic loader (libc and libgcc_s mapped,
# symbols looked up, libgcc's CPU probe) each start costs ~0.35 ms (strata-oci) to ~0.45 ms
# (strata) less CPU here (bench/oci-run-notes.md). Still position-independent (ASLR).
# Cargo cannot give one binary a target feature (crt-static in RUSTFLAGS would also hit the
# proc-macro crates, which cannot be static), so `cargo rustc` passes it to the final crate
# only; std and libc pick their static libraries at that final link.
# Host names (`strata pull`) still resolve through /etc/hosts and DNS: glibc >= 2.34 has the
# files and dns NSS modules inside libc.a; other NSS modules are loaded from the glibc the
# binary was built against, i.e. build on the host that runs it (this repository's model).
# A later plain `cargo build --release` relinks them dynamically; use this script.
# usage: scripts/build-release.sh [CARGO FLAGS...]   (STRATA_BINS="strata-oci" builds only that one)
set -euo pipefail
cd "$(dirname "$0")/.."
for bin in ${STRATA_BINS:-strata-oci strata}; do
  case $bin in
    strata-oci) cargo rustc --release "$@" -p strata-cli --bin strata-oci -- -C target-feature=+crt-static ;;
    strata) cargo rustc --release "$@" -p strata-cli --bin strata -- -C target-feature=+crt-static ;;
    *) echo "build-release.sh: unknown binary $bin (strata-oci, strata)" >&2; exit 1 ;;
  esac
done
