//! The default CVE-2019-5736 defence (crates/container/src/exe_guard.rs; STRATA_EXE_PROTECTION=memfd
//! selects the sealed copy instead): `strata-oci` and the `strata` CLI re-execute themselves from
//! a detached read-only mount of their binary before they start container processes. A process
//! holding /proc/<pid>/exe of the runtime (a container process, for the runtime's init before it
//! exec'd) cannot write the host binary through it once that process is gone (the attack).

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
    // The read-only mount is detached (or, on old kernels, in the runtime's private mount
    // namespace): never in the host's.
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(bin.to_str().unwrap()),
        "bind mount leaked to the host"
    );
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}

/// The `strata` CLI forks the container's init (and, detached, its monitor) from its own
/// process, so it must run from a read-only image too: a handle on /proc/<pid>/exe of a running
/// `strata run` cannot be turned into a write of the host binary once the process is gone.
#[test]
fn strata_cli_runs_containers_from_a_readonly_image() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("strata-exeguard-cli-")
        .tempdir()
        .unwrap();
    // A private copy, so no other test executes this very file (ETXTBSY).
    let bin = tmp.path().join("strata");
    std::fs::copy(env!("CARGO_BIN_EXE_strata"), &bin).unwrap();
    let before = std::fs::read(&bin).unwrap();
    let store = tmp.path().join("store");
    let root = tmp.path().join("root");
    let strata = |args: &[&str]| {
        let mut c = std::process::Command::new(&bin);
        c.arg("--store")
            .arg(&store)
            .arg("--root")
            .arg(&root)
            .arg("--quiet")
            .args(args)
            .env_remove("STRATA_EXE_PROTECTION")
            .stdin(std::process::Stdio::null());
        c
    };
    let built = strata(&["image", "build-default"]).output().unwrap();
    assert!(built.status.success(), "{}", text(&built.stderr));
    let name = unique_id("exeguard-cli");
    let mut run = strata(&["run", "--rm", "--name", &name, "busybox", "sleep", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Removes the container even if an assertion below fails.
    struct Reap<'a>(&'a mut std::process::Child, std::process::Command);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.1.output();
            let _ = self.0.wait();
        }
    }
    let pid = run.id();
    let reap = Reap(&mut run, strata(&["rm", "-f", &name]));
    // Once the container runs, the `strata` process that forked its init is the re-executed one.
    let exe = format!("/proc/{pid}/exe");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        // This container by name: other containers may run on the host meanwhile.
        let o = strata(&["ps", "--format", "json"]).output().unwrap();
        let running: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if running.iter().any(|c| c["Name"] == name.as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the container never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ro = nix::sys::statvfs::statvfs(exe.as_str()).unwrap();
    assert!(
        ro.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
        "strata runs from a writable image"
    );
    let target = std::fs::read_link(&exe).unwrap();
    assert_ne!(target, bin, "strata runs from the host binary's path");
    // The attacker's handle, taken while `strata` runs; used after it exited.
    let handle = std::fs::File::open(&exe).unwrap();
    let stop = strata(&["kill", &name]).output().unwrap();
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let status = reap.0.wait().unwrap();
    assert!(!status.success(), "sleep was killed: {status:?}");
    let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
    let e = std::fs::OpenOptions::new()
        .append(true)
        .open(&fd)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        before,
        "the strata binary changed"
    );
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(bin.to_str().unwrap()),
        "a mount of the binary reached the host"
    );
    drop(reap);
    let left = strata(&["ps", "-a", "-q"]).output().unwrap();
    assert!(
        text(&left.stdout).trim().is_empty(),
        "container left behind"
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
