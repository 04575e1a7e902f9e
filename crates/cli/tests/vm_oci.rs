//! strata-oci's VM path end to end: a bundle annotated `dev.strata.isolation=vm` is created (VM
//! booted, workload held), started, exec'd into, listed, killed and deleted with the call forms
//! containerd's shim uses; the --pid-file pid exits with the workload's exit code.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// Force-deletes the VM container even when the test fails.
struct Cleanup<'a> {
    oci: &'a Oci,
    id: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.oci.run(&["delete", "--force", &self.id]);
    }
}

fn wait_exit_code(pid: i32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => panic!("waitpid {pid}: {e}"),
        }
    }
}

#[test]
fn an_annotated_bundle_runs_in_a_vm_like_runc_runs_a_container() {
    if !root_or_skip() {
        return;
    }
    // The keeper (the --pid-file pid) outlives `strata-oci create`; as containerd's shim does,
    // become the subreaper that inherits and reaps it.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let oci = Oci::new();
    let id = unique_id("vm");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    let mut b = Bundle::sh(
        &id,
        "echo started > /tmp/marker; trap 'exit 7' TERM; while true; do sleep 0.1; done",
    );
    b.edit(|c| {
        c["annotations"] = json!({"dev.strata.isolation": "vm"});
        c["root"]["readonly"] = json!(false);
    });
    let bp = b.path().to_str().unwrap().to_string();
    let pidf = format!("{bp}/init.pid");
    oci.ok(&["create", "--bundle", &bp, "--pid-file", &pidf, &id]);
    let pid: i32 = std::fs::read_to_string(&pidf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(oci.status(&id), "created");
    let st: Value = serde_json::from_str(&oci.ok(&["state", &id])).unwrap();
    assert_eq!(st["pid"], pid);
    assert_eq!(st["annotations"]["dev.strata.isolation"], "vm");

    oci.ok(&["start", &id]);
    assert_eq!(oci.status(&id), "running");
    // exec runs in the guest: its own kernel, the workload's files, the exit code comes back.
    let host = String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    let guest = oci.ok(&["exec", &id, "uname", "-r"]);
    assert!(!guest.trim().is_empty());
    assert_ne!(guest, host, "the guest runs its own kernel");
    let mut marker = String::new();
    for _ in 0..100 {
        let o = oci.run(&["exec", &id, "cat", "/tmp/marker"]);
        marker = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(marker, "started\n");
    // Hostile requests on the keeper's socket are refused; the VM keeps working.
    let sock = oci.root.path().join("vm").join(&id).join("keeper.sock");
    for bad in [
        b"\x00\xff\xfe garbage\n".to_vec(),
        b"{\"op\":\"format-disk\"}\n".to_vec(),
        vec![b'{'; 1 << 20],
    ] {
        use std::io::{Read, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let _ = c.write_all(&bad);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.contains("\"ok\":false"),
            "{answer}"
        );
    }
    let out = oci.run(&["exec", &id, "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let pids: Vec<i32> = serde_json::from_str(&oci.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(!pids.is_empty());
    // A running VM is not deleted without --force.
    let err = oci.fails(&["delete", &id]);
    assert!(err.contains("not stopped"), "{err}");

    oci.ok(&["kill", &id, "TERM"]);
    assert_eq!(
        wait_exit_code(pid),
        7,
        "the pid-file process exits with the workload's code"
    );
    assert_eq!(oci.status(&id), "stopped");
    oci.ok(&["delete", &id]);
    assert!(!oci.root.path().join("vm").join(&id).exists());
    for ctrl in ["memory", "pids"] {
        let d = std::path::Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("strata-vm")
            .join(&id);
        assert!(!d.exists(), "{} left", d.display());
    }
    let features: Value = serde_json::from_str(&oci.ok(&["features"])).unwrap();
    assert_eq!(
        features["annotations"]["dev.strata.isolation"],
        "container|vm"
    );
}
