//! The default CVE-2019-5736 defence (a read-only bind mount of the binary; STRATA_EXE_PROTECTION=memfd selects the sealed copy): the runtime re-executes itself from a read-only bind mount of
//! its binary; a container process holding /proc/1/exe of the runtime's init cannot write the
//! host binary through it once the init has exec'd (the CVE-2019-5736 attack).

mod common;

use common::*;

#[test]
fn readonly_bind_of_the_runtime_binary_refuses_writes() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("exeguard");
    let mut b = Bundle::sh(&id, "exec sleep 1000");
    b.edit(|c| c["root"]["readonly"] = serde_json::json!(false));
    // A private copy of the runtime, so no other test executes this very file (ETXTBSY).
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = bin_dir.path().join("strata-oci");
    std::fs::copy(oci_bin(), &bin).unwrap();
    let before = std::fs::read(&bin).unwrap();
    // `create` (by the copy) leaves its init, still the runtime's image, blocked in the container.
    let status = std::process::Command::new(&bin)
        .arg("--root")
        .arg(oci.root.path())
        .args(["create", "--bundle", b.path().to_str().unwrap(), &id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    // The attacker grabs the init's exe, waits until the init exec'd the workload, then writes.
    oci.ok(&[
        "exec",
        "--detach",
        &id,
        "sh",
        "-c",
        "exec 3</proc/1/exe; while [ ! -e /tmp/go ]; do sleep 0.05; done; \
         (echo x >> /proc/self/fd/3) 2>/tmp/err; echo rc=$? >> /tmp/err",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    oci.ok(&["start", &id]);
    std::fs::write(b.rootfs().join("tmp/go"), "").unwrap();
    let mut err = String::new();
    for _ in 0..250 {
        err = std::fs::read_to_string(b.rootfs().join("tmp/err")).unwrap_or_default();
        if err.contains("rc=") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!err.contains("rc=0"), "{err}");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        before,
        "the runtime binary changed"
    );
    // The bind mount lives in the runtime's private mount namespace, not the host's.
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(bin.to_str().unwrap()),
        "bind mount leaked to the host"
    );
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}
