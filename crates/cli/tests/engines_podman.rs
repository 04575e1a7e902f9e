//! podman 4.3 drives the runtime through conmon (no daemon): private root, runroot, tmpdir and
//! network config dir, vfs storage, cgroupfs manager, file events, and the ulimits this host needs.
//! The matrix runs with runc first (validating the harness), then with strata-oci.

mod engines;

use engines::cli_engine::{CliEngine, RuntimeSelection};
use engines::image::IMAGE_REF;
use engines::matrix::{Layer, Op};
use engines::network;
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
    if !engines::only_network() {
        h.run_matrix(&podman, STRATA_PASSING, STRATA_VM_PASSING);
    }
    network_cells(&mut h, &podman);
}

/// `podman run --network bridge -p`: podman's default CNI network (bridge, portmap) around a
/// container run by runc (harness check) and by strata-oci on the container layer; busybox httpd
/// answers a real HTTP client on the host's loopback through the published port, and the port
/// goes with the container. The same on strata's VM layer (UML platform: networks on qemu are
/// refused, docs/networking.md): the guest's NIC takes over the namespace podman prepared.
fn network_cells(h: &mut Harness, podman: &CliEngine) {
    // Podman makes its default network's bridge on first use and leaves it.
    h.sb.remove_link_if_created("cni-podman0");
    let mut failed = Vec::new();
    for (rt, layer) in [
        (&h.runc, Layer::Container),
        (&h.strata, Layer::Container),
        (&h.strata, Layer::Vm),
    ] {
        let cell_name = format!("{}/{}", rt.name, layer.label());
        let name = format!("net-{}-{}", rt.name, layer.label());
        let port = network::free_port();
        let body = format!("served-by-{}-{}-under-podman", rt.name, layer.label());
        let mut run = podman.cmd(None);
        run.arg("--runtime").arg(&rt.wrapper).arg("run");
        for a in layer.annotations() {
            run.arg("--annotation").arg(a);
        }
        run.args(["-d", "--name", &name, "--network", "bridge", "-p"])
            .arg(format!("127.0.0.1:{port}:80"))
            .args([
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=30000:30000",
            ])
            .arg("--cgroup-parent")
            .arg(h.sb.cgroup_parent())
            .args([IMAGE_REF, "sh", "-c", &network::httpd_script(&body)]);
        let started = sh(&mut run);
        let cell = if started.code != 0 {
            Err(format!("podman run: {}", started.describe()))
        } else {
            match network::http_get(&format!("127.0.0.1:{port}"), "/index.html") {
                Ok(a) if a.ends_with(&format!("{body}\n")) => Ok(()),
                Ok(a) => Err(format!("unexpected answer {a:?}")),
                Err(e) => Err(format!("no answer through -p: {e}")),
            }
        };
        let mut rm = podman.cmd(None);
        rm.arg("--runtime")
            .arg(&rt.wrapper)
            .args(["rm", "-f", "-t", "0", &name]);
        let removed = sh(&mut rm);
        let cell = cell.and_then(|()| {
            if removed.code != 0 {
                return Err(format!("podman rm: {}", removed.describe()));
            }
            match network::http_get(&format!("127.0.0.1:{port}"), "/index.html") {
                Ok(a) => Err(format!("the port still answers after rm: {a:?}")),
                Err(_) => Ok(()),
            }
        });
        match cell {
            Ok(()) => eprintln!("podman network bridge -p, {cell_name}: pass"),
            Err(e) => {
                eprintln!("podman network bridge -p, {cell_name}: FAIL: {e}");
                failed.push(format!("{cell_name}: {e}"));
            }
        }
    }
    assert!(failed.is_empty(), "podman network cells failed: {failed:?}");
}
