//! dockerd 20.10 (on its own private containerd) drives the runtime through containerd's runc shim,
//! with Docker's full config.json (seccomp profile, sysctls, the libnetwork-setkey prestart hook,
//! resolv.conf/hosts bind mounts). The client is Debian's /usr/bin/docker (a newer client may be
//! at /usr/local/bin/docker). The matrix runs with runc first, then with strata-oci.

mod engines;

use engines::cli_engine::{CliEngine, RuntimeSelection};
use engines::daemons::{start_containerd, start_dockerd};
use engines::matrix::{Layer, Op};
use engines::{sh, Harness};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;

/// strata-oci cells proven to pass under dockerd (container layer). Every cell passes; list the passing ones instead if one regresses.
const STRATA_PASSING: &[Op] = engines::ALL_OPS;
/// strata-oci cells proven to pass under dockerd with VM isolation (runtime `strata-vm`, whose
/// runtimeArgs are the global `--vm` flag).
const STRATA_VM_PASSING: &[Op] = engines::ALL_OPS;

/// Docker 20.10 has no `run --annotation`, so each VM layer is another runtime entry whose
/// runtimeArgs select it: dockerd writes a wrapper that runs `strata-oci --vm ...`; for the qemu
/// platform the entry's path is a script that sets `STRATA_VM_PLATFORM=qemu` first.
fn docker_runtime_name(runtime: &str, layer: Layer) -> String {
    match (runtime, layer) {
        // "runc" is reserved by dockerd for its built-in entry.
        ("runc", _) => "runc-logged".into(),
        (_, Layer::Container) => "strata".into(),
        (_, Layer::Vm) => "strata-vm".into(),
        (_, Layer::VmQemu) => "strata-vm-qemu".into(),
    }
}

#[test]
fn docker_drives_runc_and_strata_oci() {
    let mut h = Harness::start("dockerd");
    let cd = start_containerd(&mut h.sb, false, "");
    let qemu_wrapper = h.sb.path("strata-oci-qemu");
    std::fs::write(
        &qemu_wrapper,
        format!(
            "#!/bin/sh\nSTRATA_VM_PLATFORM=qemu exec {} \"$@\"\n",
            h.strata.wrapper.display()
        ),
    )
    .expect("write the qemu wrapper");
    std::fs::set_permissions(&qemu_wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the qemu wrapper");
    let daemon_json = serde_json::json!({
        "runtimes": {
            "strata-vm": { "path": h.strata.wrapper, "runtimeArgs": ["--vm"] },
            "strata-vm-qemu": { "path": qemu_wrapper, "runtimeArgs": ["--vm"] }
        }
    });
    let dockerd = start_dockerd(
        &mut h.sb,
        &cd.socket,
        &[
            ("runc-logged".to_string(), h.runc.wrapper.clone()),
            ("strata".to_string(), h.strata.wrapper.clone()),
        ],
        &daemon_json,
    );
    let docker = CliEngine::new(
        "docker",
        vec![
            OsString::from("/usr/bin/docker"),
            "-H".into(),
            dockerd.host.clone().into(),
        ],
        vec!["--network".into(), "none".into()],
        RuntimeSelection::DockerNames(docker_runtime_name),
    );
    let load = sh(docker.cmd(None).arg("load").arg("-i").arg(&h.img.archive));
    assert_eq!(load.code, 0, "docker load: {}", load.describe());
    h.run_matrix(&docker, STRATA_PASSING, STRATA_VM_PASSING);
}
