//! strata-oci's VM path end to end: a bundle annotated `dev.strata.isolation=vm` is created (VM
//! booted, workload held), started, exec'd into, listed, killed and deleted with the call forms
//! containerd's shim uses; the --pid-file pid exits with the workload's exit code. The global
//! `--vm` flag selects the VM too (Docker's runtimeArgs); pause/resume freeze the VM's cgroup,
//! update sets its memory limit; a terminal comes through --console-socket like runc's, and
//! nothing of a VM is left after `delete --force`, even when its keeper was SIGKILLed.

mod common;

use std::process::Command;

use common::proc_cgroup;
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

/// The cgroup of `pid` in a v1 hierarchy, as /proc/PID/cgroup gives it (`/a/b`).
fn cgroup_line(pid: i32, ctrl: &str) -> String {
    proc_cgroup::cgroup_line(pid, ctrl).unwrap_or_else(|e| panic!("{e}"))
}

/// The cgroup directory of `pid` in a v1 hierarchy (`/sys/fs/cgroup/<ctrl><path>`).
fn cgroup_of(pid: i32, ctrl: &str) -> std::path::PathBuf {
    std::path::Path::new("/sys/fs/cgroup")
        .join(ctrl)
        .join(cgroup_line(pid, ctrl).trim_start_matches('/'))
}

/// The VM's host cgroups must be gone: the bundle's cgroupsPath (`Bundle` makes it
/// `/strata-test-<bundle id>`) and strata's default `/strata-vm/<id>`, in every hierarchy.
fn assert_no_vm_cgroups(bundle_id: &str, id: &str) {
    for ctrl in ["memory", "pids", "freezer", "cpu", "unified"] {
        let h = std::path::Path::new("/sys/fs/cgroup").join(ctrl);
        for d in [
            h.join(format!("strata-test-{bundle_id}")),
            h.join("strata-vm").join(id),
        ] {
            assert!(!d.exists(), "{} left", d.display());
        }
    }
}

fn read_file(p: &std::path::Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
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
    annotated_bundle_runs_in_a_vm(None);
}

#[test]
fn an_annotated_bundle_runs_in_a_qemu_vm_like_runc_runs_a_container() {
    annotated_bundle_runs_in_a_vm(Some("qemu"));
}

/// On the default platform, or the one `platform` names in the bundle's annotation.
fn annotated_bundle_runs_in_a_vm(platform: Option<&str>) {
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
    // A nested cgroupsPath, as engines give (containerd `/<namespace>/<id>`, podman
    // `/libpod_parent/libpod-<id>`).
    let cgroups_path = format!("/strata-test-{id}/vm-{id}");
    b.edit(|c| {
        c["annotations"] = json!({"dev.strata.isolation": "vm"});
        if let Some(p) = platform {
            c["annotations"]["dev.strata.vm.platform"] = json!(p);
        }
        c["root"]["readonly"] = json!(false);
        c["linux"]["cgroupsPath"] = json!(cgroups_path);
    });
    let bp = b.path().to_str().unwrap().to_string();
    let pidf = format!("{bp}/init.pid");
    oci.ok(&["create", "--bundle", &bp, "--pid-file", &pidf, &id]);
    let pid: i32 = std::fs::read_to_string(&pidf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The VM's host processes (the keeper, which engines were given as the container's pid, and
    // the UML processes) live in the cgroup config.json names, in every hierarchy: where the
    // kubelet, `podman stats` and containerd look for the container.
    let mut ctrls = vec!["memory", "pids", "cpu", "freezer"];
    if std::path::Path::new("/sys/fs/cgroup/unified").is_dir() {
        ctrls.push(""); // the cgroup2 line `0::/path` of a hybrid host
    }
    for ctrl in ctrls {
        assert_eq!(
            cgroup_line(pid, ctrl),
            cgroups_path,
            "{ctrl} cgroup of {pid}"
        );
    }
    let memory = cgroup_of(pid, "memory");
    let procs = read_file(&memory.join("cgroup.procs"));
    assert!(procs.lines().count() >= 2, "keeper and VM: {procs}");
    // Its limit is the guest's memory (128 MiB without a limit in config.json) plus the VM's
    // host-side overhead (96 MiB for UML, 160 MiB for QEMU: its TCG cache and own heap).
    let overhead: u64 = if platform == Some("qemu") { 160 } else { 96 };
    assert_eq!(
        read_file(&memory.join("memory.limit_in_bytes")),
        ((128u64 + overhead) << 20).to_string()
    );
    assert_eq!(oci.status(&id), "created");
    let st: Value = serde_json::from_str(&oci.ok(&["state", &id])).unwrap();
    assert_eq!(st["pid"], pid);
    assert_eq!(st["annotations"]["dev.strata.isolation"], "vm");
    // Held: the start is not over, so there are no start phases yet.
    assert!(
        st["annotations"]["dev.strata.vm.start-phases"].is_null(),
        "{st}"
    );

    oci.ok(&["start", &id]);
    assert_eq!(oci.status(&id), "running");
    // Where the VM's start went, phase by phase (the wait for `start` not counted).
    let st: Value = serde_json::from_str(&oci.ok(&["state", &id])).unwrap();
    let phases = st["annotations"]["dev.strata.vm.start-phases"]
        .as_str()
        .unwrap_or_default();
    assert!(
        phases.starts_with("keeper-setup=")
            && phases.contains(" jail=")
            && phases.contains(" kernel-boot=")
            && phases.contains(" rootfs=")
            && phases.contains(" workload-execve=")
            && phases.contains(" total="),
        "{st}"
    );
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
        // Each is refused with a reason (a hostile request is never silently dropped).
        assert!(
            answer.contains("\"ok\":false") && answer.contains("bad request"),
            "request {:?}...: {answer:?}",
            String::from_utf8_lossy(&bad[..bad.len().min(24)])
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
    assert_no_vm_cgroups(&id, &id);
    let features: Value = serde_json::from_str(&oci.ok(&["features"])).unwrap();
    assert_eq!(
        features["annotations"]["dev.strata.isolation"],
        "container|vm"
    );
}

#[test]
fn the_vm_flag_selects_a_vm_that_pauses_resumes_updates_and_is_force_deleted() {
    vm_pauses_resumes_updates_and_is_force_deleted(None);
}

#[test]
fn a_qemu_vm_pauses_resumes_updates_and_is_force_deleted() {
    vm_pauses_resumes_updates_and_is_force_deleted(Some("qemu"));
}

/// On the default platform, or the one `platform` names in the bundle's annotation.
fn vm_pauses_resumes_updates_and_is_force_deleted(platform: Option<&str>) {
    if !root_or_skip() {
        return;
    }
    // SAFETY: prctl with integer arguments (we reap the keeper, as an engine's shim does).
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let oci = Oci::new();
    let id = unique_id("vmp");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    // No annotation: the global flag alone (Docker's runtimeArgs) selects the VM.
    let mut b = Bundle::sh(&id, "trap 'exit 7' TERM; sleep 1000 & wait");
    b.edit(|c| {
        c["root"]["readonly"] = json!(false);
        if let Some(p) = platform {
            c["annotations"] = json!({"dev.strata.vm.platform": p});
        }
    });
    let bp = b.path().to_str().unwrap().to_string();
    let pidf = format!("{bp}/init.pid");
    oci.ok(&["--vm", "create", "--bundle", &bp, "--pid-file", &pidf, &id]);
    let pid: i32 = read_file(std::path::Path::new(&pidf)).parse().unwrap();
    oci.ok(&["start", &id]);
    let host = String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    assert_ne!(oci.ok(&["exec", &id, "uname", "-r"]), host, "runs in a VM");
    // On the platform asked for (qemu's channel is a virtio console).
    let cmdline = oci.ok(&["exec", &id, "cat", "/proc/cmdline"]);
    let channel = if platform == Some("qemu") {
        "strata.channel=/dev/hvc0"
    } else {
        "strata.channel=/dev/ttyS1"
    };
    assert!(cmdline.contains(channel), "{cmdline}");

    // list shows VMs with containers; events --stats reads the VM's cgroups.
    let list: serde_json::Value =
        serde_json::from_str(&oci.ok(&["list", "--format", "json"])).unwrap();
    let me = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in {list}"));
    assert_eq!(me["status"], "running", "{me}");
    assert_eq!(me["pid"], pid, "{me}");
    assert!(oci.ok(&["list", "-q"]).lines().any(|l| l == id));
    let ev: serde_json::Value = serde_json::from_str(&oci.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(ev["type"], "stats", "{ev}");
    assert_eq!(ev["id"], id.as_str(), "{ev}");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap_or(0) > 8 << 20,
        "a booted VM holds more than 8 MiB: {ev}"
    );
    assert!(
        ev["data"]["pids"]["current"].as_u64().unwrap_or(0) >= 2,
        "{ev}"
    );

    // The engine's pid (the keeper) is in the VM's cgroups: what engines read from it is the VM's.
    let memory = cgroup_of(pid, "memory");
    let freezer = cgroup_of(pid, "freezer");
    for d in [&memory, &freezer] {
        // At the bundle's cgroupsPath, as runc puts a container: where the engine looks.
        assert!(d.ends_with(format!("strata-test-{id}")), "{}", d.display());
    }

    oci.ok(&["pause", &id]);
    assert_eq!(oci.status(&id), "paused");
    assert_eq!(read_file(&freezer.join("freezer.state")), "FROZEN");
    // Every host process of the VM is frozen (the kernel's state letter).
    let procs = read_file(&freezer.join("cgroup.procs"));
    assert!(procs.lines().count() >= 2, "keeper and VM: {procs}");
    let err = oci.fails(&["exec", &id, "true"]);
    assert!(err.contains("paused"), "{err}");
    let err = oci.fails(&["delete", &id]);
    assert!(err.contains("paused"), "{err}");
    let err = oci.fails(&["pause", &id]);
    assert!(err.contains("already paused"), "{err}");
    oci.ok(&["resume", &id]);
    assert_eq!(oci.status(&id), "running");
    assert_eq!(read_file(&freezer.join("freezer.state")), "THAWED");
    let err = oci.fails(&["resume", &id]);
    assert!(err.contains("not paused"), "{err}");
    // The guest runs again.
    assert_eq!(oci.ok(&["exec", &id, "echo", "again"]), "again\n");

    // update: the memory limit of the VM's host cgroup.
    let limit = memory.join("memory.limit_in_bytes");
    oci.ok(&["update", "--memory", "200m", &id]);
    assert_eq!(read_file(&limit), (200u64 << 20).to_string());
    let no_swap = read_file(std::path::Path::new("/proc/swaps"))
        .lines()
        .count()
        <= 1;
    if no_swap {
        // Below what the VM holds, and nothing to swap it to: refused, limit unchanged.
        let err = oci.fails(&["update", "--memory", "1m", &id]);
        assert!(err.contains("memory limit"), "{err}");
        assert_eq!(read_file(&limit), (200u64 << 20).to_string());
    }
    let err = oci.fails(&["update", "--memory", "0", &id]);
    assert!(err.contains("invalid memory limit"), "{err}");
    // CPU and pids limits apply to the VM's host processes, as to a container's.
    oci.ok(&[
        "update",
        "--pids-limit",
        "777",
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        &id,
    ]);
    assert_eq!(read_file(&cgroup_of(pid, "pids").join("pids.max")), "777");
    let cpu = cgroup_of(pid, "cpu");
    assert_eq!(read_file(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read_file(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read_file(&limit), (200u64 << 20).to_string(), "memory kept");

    // SIGTERM to a paused VM waits on its keeper and reaches the workload on resume.
    oci.ok(&["pause", &id]);
    oci.ok(&["kill", &id, "TERM"]);
    assert_eq!(oci.status(&id), "paused");
    let err = oci.fails(&["kill", &id, "WINCH"]);
    assert!(err.contains("paused"), "{err}");
    oci.ok(&["resume", &id]);
    assert_eq!(wait_exit_code(pid), 7, "the workload's TERM trap ran");
    assert_eq!(oci.status(&id), "stopped");
    oci.ok(&["delete", &id]);
    assert!(!oci.root.path().join("vm").join(&id).exists());
    assert_no_vm_cgroups(&id, &id);

    // A paused VM goes with delete --force: keeper, VM, cgroups and state.
    let id2 = unique_id("vmp");
    let _cleanup2 = Cleanup {
        oci: &oci,
        id: id2.clone(),
    };
    let pidf2 = format!("{bp}/init2.pid");
    oci.ok(&[
        "--vm",
        "create",
        "--bundle",
        &bp,
        "--pid-file",
        &pidf2,
        &id2,
    ]);
    let pid2: i32 = read_file(std::path::Path::new(&pidf2)).parse().unwrap();
    // A created VM pauses too; it cannot be started while paused.
    oci.ok(&["pause", &id2]);
    assert_eq!(oci.status(&id2), "paused");
    let err = oci.fails(&["start", &id2]);
    assert!(err.contains("paused"), "{err}");
    oci.ok(&["resume", &id2]);
    assert_eq!(oci.status(&id2), "created");
    oci.ok(&["start", &id2]);
    oci.ok(&["pause", &id2]);
    assert_eq!(oci.status(&id2), "paused");
    oci.ok(&["delete", "--force", &id2]);
    assert_eq!(wait_exit_code(pid2), 137);
    assert!(!oci.root.path().join("vm").join(&id2).exists());
    assert_no_vm_cgroups(&id, &id2);
    let err = oci.fails(&["state", &id2]);
    assert!(err.contains(&id2) || err.contains("not exist"), "{err}");
}

#[test]
fn a_vm_that_cannot_start_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("vmbad");
    let mut b = Bundle::sh(&id, "true");
    b.edit(|c| {
        c["annotations"] = json!({"dev.strata.isolation": "vm"});
        c["process"]["terminal"] = json!(true);
    });
    let bp = b.path().to_str().unwrap().to_string();
    // A terminal without a console socket: refused before anything is made.
    let err = oci.fails(&["create", "--bundle", &bp, &id]);
    assert!(err.contains("--console-socket"), "{err}");
    assert!(!oci.root.path().join("vm").join(&id).exists());
    // A platform this host does not have: refused with the reason, nothing left.
    b.edit(|c| c["process"]["terminal"] = json!(false));
    let out = Command::new(oci_bin())
        .env("STRATA_VM_PLATFORM", "kvm")
        .arg("--root")
        .arg(oci.root.path())
        .args(["create", "--bundle", &bp, &id])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("kvm"), "{err}");
    assert!(!oci.root.path().join("vm").join(&id).exists());
    assert_no_vm_cgroups(&id, &id);
}

/// Reads from `fd` until `needle` has appeared (or 60 s passed); returns what was read.
fn read_until(fd: std::os::fd::BorrowedFd, needle: &str) -> String {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !String::from_utf8_lossy(&seen).contains(needle) && std::time::Instant::now() < deadline {
        let mut p = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        if nix::poll::poll(&mut p, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) == 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).replace('\r', "")
}

use std::os::fd::{AsFd, AsRawFd};

#[test]
fn a_terminal_vm_gets_its_pty_through_the_console_socket_and_leaves_nothing() {
    terminal_vm_gets_its_pty_and_leaves_nothing(None);
}

#[test]
fn a_terminal_qemu_vm_gets_its_pty_through_the_console_socket_and_leaves_nothing() {
    terminal_vm_gets_its_pty_and_leaves_nothing(Some("qemu"));
}

/// On the default platform, or the one `platform` names in the bundle's annotation.
fn terminal_vm_gets_its_pty_and_leaves_nothing(platform: Option<&str>) {
    if !root_or_skip() {
        return;
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let oci = Oci::new();
    let sockdir = tempfile::tempdir().unwrap();
    let create_tty = |id: &str, script: &str| -> (Bundle, i32, std::os::fd::OwnedFd) {
        let mut b = Bundle::sh(id, script);
        b.edit(|c| {
            c["annotations"] = json!({"dev.strata.isolation": "vm"});
            if let Some(p) = platform {
                c["annotations"]["dev.strata.vm.platform"] = json!(p);
            }
            c["root"]["readonly"] = json!(false);
            c["process"]["terminal"] = json!(true);
            c["process"]["consoleSize"] = json!({"height": 31, "width": 97});
        });
        let sock = sockdir.path().join(format!("{id}.sock"));
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let accept =
            std::thread::spawn(move || strata_container::console::accept_master(&listener));
        let bp = b.path().to_str().unwrap().to_string();
        let pidf = format!("{bp}/init.pid");
        oci.ok(&[
            "create",
            "--bundle",
            &bp,
            "--console-socket",
            sock.to_str().unwrap(),
            "--pid-file",
            &pidf,
            id,
        ]);
        let (master, _) = accept.join().unwrap().expect("the master arrives");
        let pid = read_file(std::path::Path::new(&pidf)).parse().unwrap();
        (b, pid, master)
    };

    // As `ctr run -t`: the workload's terminal is a guest pty, sized from consoleSize, relayed
    // both ways through the master the engine received.
    let id = unique_id("vmt");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    let (_b, pid, master) = create_tty(
        &id,
        "tty; test -t 0 && echo stdin-is-a-tty; stty size; read line; echo got-$line; exit 4",
    );
    oci.ok(&["start", &id]);
    let first = read_until(master.as_fd(), "31 97");
    nix::unistd::write(&master, b"hello\n").unwrap();
    let rest = read_until(master.as_fd(), "got-hello");
    let out = format!("{first}{rest}");
    for want in ["/dev/pts/", "stdin-is-a-tty", "31 97", "got-hello"] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    assert_eq!(wait_exit_code(pid), 4);
    oci.ok(&["delete", &id]);
    assert_no_vm_cgroups(&id, &id);

    // A created terminal VM whose keeper dies (an engine giving up on a create) is removed
    // completely by delete --force: VM processes, cgroups, state.
    let id2 = unique_id("vmk");
    let _cleanup2 = Cleanup {
        oci: &oci,
        id: id2.clone(),
    };
    let (_b2, pid2, _master2) = create_tty(&id2, "sleep 1000");
    assert_eq!(oci.status(&id2), "created");
    // The keeper's children become ours (the subreaper's) when it dies: reap exactly those
    // later, never with waitpid(-1), which would take other tests' children in this binary.
    let orphans = children_of(pid2);
    assert!(!orphans.is_empty(), "the keeper {pid2} has no VM process");
    // SAFETY: kill(2) on the keeper we are the reaper of.
    unsafe { libc::kill(pid2, libc::SIGKILL) };
    assert_eq!(wait_exit_code(pid2), 137);
    assert_eq!(oci.status(&id2), "stopped");
    oci.ok(&["delete", "--force", &id2]);
    assert!(!oci.root.path().join("vm").join(&id2).exists());
    assert_no_vm_cgroups(&id2, &id2);
    // The orphaned VM processes were ours to reap; delete --force ended them.
    for pid in orphans {
        reap_within(pid, std::time::Duration::from_secs(30));
    }
}

/// Reaps child `pid`, which must have ended (or end) within `limit`.
fn reap_within(pid: i32, limit: std::time::Duration) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = std::time::Instant::now() + limit;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::EINTR) => {}
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return,
            Ok(_) => {}
            Err(e) => panic!("waitpid {pid}: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "VM process {pid} ({}) outlived delete --force",
            std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The direct children of `pid` (every thread's).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    out
}

/// A keeper that stops answering (here: SIGSTOPped) does not hang the engine: `kill` and
/// `start` give up after the keeper timeout with a message saying what to do, and
/// `delete --force` still ends the VM and leaves nothing.
#[test]
fn an_unresponsive_keeper_times_out_instead_of_hanging() {
    if !root_or_skip() {
        return;
    }
    // SAFETY: prctl with integer arguments (we reap the keeper, as an engine's shim does).
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let oci = Oci::new();
    let id = unique_id("vmto");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    let b = Bundle::sh(&id, "sleep 1000");
    let bp = b.path().to_str().unwrap().to_string();
    let pidf = format!("{bp}/init.pid");
    oci.ok(&["--vm", "create", "--bundle", &bp, "--pid-file", &pidf, &id]);
    let keeper: i32 = read_file(std::path::Path::new(&pidf)).parse().unwrap();
    // SAFETY: stopping (later continuing) the keeper this test created.
    unsafe { libc::kill(keeper, libc::SIGSTOP) };
    for args in [
        vec!["kill", id.as_str(), "TERM"],
        vec!["start", id.as_str()],
    ] {
        let o = Command::new(oci_bin())
            .arg("--root")
            .arg(oci.root.path())
            .args(&args)
            .env("STRATA_KEEPER_TIMEOUT_MS", "300")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("did not answer in time") && err.contains("delete --force"),
            "{args:?}: {err}"
        );
    }
    // SAFETY: as above.
    unsafe { libc::kill(keeper, libc::SIGCONT) };
    oci.ok(&["delete", "--force", &id]);
    // The keeper still gets the requests queued on its socket (a late start races the delete),
    // so only "it ended, not cleanly" is certain.
    assert_ne!(wait_exit_code(keeper), 0);
    assert!(!oci.root.path().join("vm").join(&id).exists());
    assert_no_vm_cgroups(&id, &id);
}
