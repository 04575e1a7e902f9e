//! podman 4.3 drives the runtime through conmon (no daemon): private root, runroot, tmpdir and
//! network config dir, vfs storage, cgroupfs manager, file events, and the ulimits this host needs.
//! The matrix runs with runc first (validating the harness), then with strata-oci.

mod engines;

use engines::cli_engine::{CliEngine, RuntimeSelection};
use engines::matrix::Op;
use engines::{sh, Harness};
use std::ffi::OsString;

/// strata-oci cells proven to pass under podman (container layer). Every cell passes; list the passing ones instead if one regresses.
const STRATA_PASSING: &[Op] = engines::ALL_OPS;
/// strata-oci cells proven to pass under podman with VM isolation.
const STRATA_VM_PASSING: &[Op] = engines::ALL_OPS;

#[test]
fn podman_drives_runc_and_strata_oci() {
    let mut h = Harness::start("podman");
    // podman writes its blob-info cache and netavark run dir at fixed host paths.
    for p in [
        "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
        "/var/lib/containers/cache",
        "/var/lib/containers",
        "/run/containers/networks",
        "/run/containers",
    ] {
        h.sb.remove_if_created(p);
    }
    let mut client = vec![OsString::from("podman")];
    for (flag, rel) in [
        ("--root", "podman/root"),
        ("--runroot", "podman/runroot"),
        ("--tmpdir", "podman/tmp"),
        ("--volumepath", "podman/volumes"),
        ("--network-config-dir", "podman/networks"),
    ] {
        client.push(flag.into());
        client.push(h.sb.path(rel).into());
    }
    for f in [
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ] {
        client.push(f.into());
    }
    let run_flags = [
        "--network",
        "none",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=30000:30000",
        "--log-driver",
        "k8s-file",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--cgroup-parent".to_string(), h.sb.cgroup_parent()])
    .collect();
    let podman = CliEngine::new("podman", client, run_flags, RuntimeSelection::PodmanPath);
    let load = sh(podman.cmd(None).arg("load").arg("-i").arg(&h.img.archive));
    assert_eq!(load.code, 0, "podman load: {}", load.describe());
    h.run_matrix(&podman, STRATA_PASSING, STRATA_VM_PASSING);
}
