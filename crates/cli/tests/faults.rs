//! Faults (issue 14): SIGKILL at each step of `strata-oci create`, `strata run` (foreground and
//! -d), the monitor and the VM keeper — at the named kill points compiled into test builds
//! (`--features kill-points`, strata-container kill_point.rs) and from outside — followed by
//! `strata-oci delete --force` or `strata rm -f`, leaves nothing behind (common/leaks.rs: mounts,
//! cgroups in every hierarchy, processes, loop devices, state and temp directories), and the
//! store stays usable. A VM's host processes end when its monitor or keeper dies.

mod cli_common;
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_common::Sandbox;
use common::leaks::{assert_no_leaks, cgroup_dirs, Scope, Snapshot};
use common::{oci_bin, root_or_skip, unique_id, Bundle, Oci};
use std::os::unix::process::ExitStatusExt;

/// Kill points of strata-container's create (strata-oci create/run and every container
/// `strata run` starts).
const CREATE_POINTS: &[&str] = &[
    "create:state-dir",
    "create:cloned",
    "create:cgroups",
    "create:init-ready",
    "create:state-written",
];

/// False (skip, or a failure under STRATA_REQUIRE_E2E) without root or without the kill points
/// compiled in.
fn ready() -> bool {
    root_or_skip()
        && strata_testkit::require(
            cfg!(feature = "kill-points"),
            "built without the kill points: cargo test -p strata-cli --features kill-points",
        )
}

/// Runs a command with stdin from /dev/null and its output in files (a process it leaves
/// behind, e.g. an init blocked on exec.fifo, would hold a pipe open forever); kills it after
/// `secs`. Returns its status, stdout and stderr.
fn run_to_files(mut c: Command, secs: u64) -> (std::process::ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = c
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("{c:?} did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    (st, read(&o), read(&e))
}

/// Asserts the command died by SIGKILL (it reached the kill point).
fn assert_killed(what: &str, st: std::process::ExitStatus, stderr: &[u8]) {
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "{what} did not die at its kill point ({st:?}): {}",
        String::from_utf8_lossy(stderr)
    );
}

fn oci_scope(oci: &Oci, b: &Bundle, id: &str) -> Scope {
    Scope::new()
        .path(oci.root.path())
        .path(b.path())
        .id(id)
        .empty_dir(oci.root.path())
        .empty_dir(oci.root.path().join("vm"))
}

#[test]
fn oci_create_killed_at_each_point_leaves_nothing_after_delete_force() {
    if !ready() {
        return;
    }
    let oci = Oci::new();
    for point in CREATE_POINTS {
        let id = unique_id("kp");
        let b = Bundle::sh(&id, "sleep 1000");
        let scope = oci_scope(&oci, &b, &id);
        let before = Snapshot::take(&scope);
        let mut c = oci.cmd(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
        c.env("STRATA_KILL_POINT", point);
        let (st, _, msg) = run_to_files(c, 60);
        assert_killed(&format!("create ({point})"), st, msg.as_bytes());
        // The runtime root stays readable for every command while the wreck is there.
        let list = oci.run(&["list"]);
        assert!(list.status.success(), "{point}: list: {list:?}");
        let del = oci.run(&["delete", "--force", &id]);
        assert!(
            del.status.success(),
            "{point}: delete --force: {}",
            String::from_utf8_lossy(&del.stderr)
        );
        assert_no_leaks(
            &format!("strata-oci create killed at {point}"),
            &scope,
            &before,
        );
        // The same id is usable again, through a whole lifecycle.
        let bp = b.path().to_str().unwrap();
        oci.ok(&["create", "--bundle", bp, &id]);
        oci.ok(&["start", &id]);
        oci.ok(&["kill", &id, "KILL"]);
        let t = Instant::now();
        while !oci.ok(&["state", &id]).contains("\"stopped\"") {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{point}: not stopped"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        oci.ok(&["delete", &id]);
        assert_no_leaks(&format!("lifecycle after {point}"), &scope, &before);
    }
}

/// The ids of the containers in a sandbox's store.
fn store_ids(s: &Sandbox) -> Vec<String> {
    std::fs::read_dir(s.store.path().join("containers"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".names")
                .collect()
        })
        .unwrap_or_default()
}

fn cli_scope(s: &Sandbox, marker: &str) -> Scope {
    Scope::new()
        .path(s.store.path())
        .path(s.root.path())
        .id(marker)
        .empty_dir(s.root.path())
        .empty_dir(s.root.path().join("vm"))
}

/// After a kill: the next commands see the wreck (`ps -a` works), `rm -f` of whatever is in the
/// store removes it all, and a new container runs.
fn recover_and_check(s: &Sandbox, what: &str, mut scope: Scope, before: &Snapshot) {
    let ids = store_ids(s);
    for id in &ids {
        scope.add_id(id.clone());
    }
    s.ps();
    for id in &ids {
        s.ok(&["rm", "-f", id]);
    }
    assert_no_leaks(what, &scope, before);
    s.assert_nothing_left(&[]);
    let again = s.ok(&["run", "--rm", "busybox", "echo", "usable"]);
    assert_eq!(again.trim(), "usable", "{what}: the store is not usable");
    assert_no_leaks(&format!("{what}, then a run"), &scope, before);
}

/// `strata run` killed at a point: foreground with --rm, foreground kept, and -d.
fn run_killed_at(s: &Sandbox, mode: &str, point: &str, cmd: &[&str]) {
    let marker = unique_id("kpm");
    let scope = cli_scope(s, &marker);
    let before = Snapshot::take(&scope);
    let mut args: Vec<&str> = vec!["run"];
    args.extend(s.iso_flags());
    match mode {
        "rm" => args.push("--rm"),
        "kept" => {}
        "detached" => args.push("-d"),
        m => panic!("{m}"),
    }
    let script = format!("{} # {marker}", cmd.join(" "));
    args.extend(["busybox", "sh", "-c", &script]);
    let mut c = s.cmd();
    c.args(&args).env("STRATA_KILL_POINT", point);
    let (status, _, stderr) = run_to_files(c, 120);
    let what = format!("strata run ({mode}, {}) at {point}", s.isolation);
    if status.signal() != Some(libc::SIGKILL) {
        // A helper process died at the point, not the command (the monitor, which runs the
        // container runtime of a detached container, or the VM keeper): the command failed or
        // went on; wait until the helper is gone.
        assert!(
            point.starts_with("monitor:")
                || point.starts_with("keeper:")
                || (mode == "detached" && point.starts_with("create:")),
            "{what} did not die at its kill point ({status:?}): {stderr}"
        );
        let t = Instant::now();
        while !helper_gone(s) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{what}: the helper did not die ({status:?}: {stderr})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    recover_and_check(s, &what, scope, &before);
}

/// The monitor (or keeper) recorded for the sandbox's only container is gone.
fn helper_gone(s: &Sandbox) -> bool {
    let ids = store_ids(s);
    ids.iter().all(|id| {
        let rec: serde_json::Value = std::fs::read(
            s.store
                .path()
                .join("containers")
                .join(id)
                .join("record.json"),
        )
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
        let monitor_dead = rec["monitor_pid"]
            .as_i64()
            .is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists() || zombie(p as i32));
        let keeper = std::fs::read(s.root.path().join("vm").join(id).join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["keeper_pid"].as_i64());
        let keeper_dead =
            keeper.is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists() || zombie(p as i32));
        monitor_dead || keeper_dead
    })
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s[s.rfind(')')? + 2..].starts_with('Z')))
        .unwrap_or(true)
}

#[test]
fn strata_run_killed_at_each_point_leaves_nothing_after_rm_f() {
    if !ready() {
        return;
    }
    let s = Sandbox::new("container");
    let prepare = [
        "prepare:reserved",
        "prepare:held",
        "prepare:rootfs",
        "prepare:recorded",
    ];
    for p in prepare.iter().chain(CREATE_POINTS) {
        run_killed_at(&s, "rm", p, &["sleep", "1000"]);
        run_killed_at(&s, "detached", p, &["sleep", "1000"]);
    }
    run_killed_at(&s, "rm", "run:started", &["sleep", "1000"]);
    run_killed_at(&s, "kept", "run:started", &["sleep", "1000"]);
    run_killed_at(&s, "rm", "run:exited", &["true"]);
    run_killed_at(&s, "kept", "run:exited", &["true"]);
    for p in ["monitor:forked", "monitor:started", "monitor:running"] {
        run_killed_at(&s, "detached", p, &["sleep", "1000"]);
    }
    run_killed_at(&s, "detached", "monitor:exited", &["true"]);
}

#[test]
fn strata_run_vm_killed_at_each_point_leaves_nothing_after_rm_f() {
    vm_run_killed_at_each_point("vm");
}

/// The same kill points on QEMU: they are the keeper's and the engine's, not a platform's, but
/// what must end and be cleaned up behind them (QEMU's process, its jail and cgroup, its
/// sockets and disks) is the platform's.
#[test]
fn strata_run_qemu_vm_killed_at_each_point_leaves_nothing_after_rm_f() {
    vm_run_killed_at_each_point("vm-qemu");
}

fn vm_run_killed_at_each_point(iso: &str) {
    if !ready() {
        return;
    }
    let s = Sandbox::new(iso);
    for p in ["prepare:rootfs", "run:started", "run:exited"] {
        run_killed_at(&s, "rm", p, &["true"]);
    }
    for p in [
        "keeper:forked",
        "keeper:booted",
        "keeper:created",
        "keeper:running",
    ] {
        run_killed_at(&s, "rm", p, &["sleep", "1000"]);
    }
    run_killed_at(&s, "rm", "keeper:exited", &["true"]);
    for p in [
        "monitor:started",
        "monitor:running",
        "keeper:booted",
        "keeper:running",
    ] {
        run_killed_at(&s, "detached", p, &["sleep", "1000"]);
    }
}

/// Waits until `f` holds, up to `secs`.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids in a cgroups path (every hierarchy).
fn cgroup_pids(path: &str) -> Vec<String> {
    let mut v = Vec::new();
    for d in cgroup_dirs(path) {
        if let Ok(p) = std::fs::read_to_string(d.join("cgroup.procs")) {
            v.extend(p.lines().map(str::to_string));
        }
    }
    v.sort();
    v.dedup();
    v
}

fn kill9(pid: i32) {
    // SAFETY: kill(2) of a process this test started (directly or through strata).
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// `strata run` in the foreground (with and without --rm) SIGKILLed from outside while its
/// workload runs; the monitor of a detached one too.
fn killed_from_outside(iso: &str) {
    let s = Sandbox::new(iso);
    for mode in ["rm", "kept", "monitor"] {
        let marker = unique_id("kpo");
        let scope = cli_scope(&s, &marker);
        let before = Snapshot::take(&scope);
        let script = format!("sleep 1000 # {marker}");
        let mut c = s.cmd();
        c.arg("run").args(s.iso_flags());
        match mode {
            "rm" => c.arg("--rm"),
            "kept" => &mut c,
            _ => c.arg("-d"),
        };
        c.args(["busybox", "sh", "-c", &script]);
        let what = format!("{iso}: {mode} killed from outside");
        let (victim, child) = if mode == "monitor" {
            let out = cli_common::output_timeout(c, None, Duration::from_secs(120));
            assert!(out.status.success(), "{what}: {out:?}");
            let id = cli_common::text(&out.stdout).trim().to_string();
            let r: serde_json::Value = serde_json::from_slice(
                &std::fs::read(
                    s.store
                        .path()
                        .join("containers")
                        .join(&id)
                        .join("record.json"),
                )
                .unwrap(),
            )
            .unwrap();
            (r["monitor_pid"].as_i64().expect("monitor pid") as i32, None)
        } else {
            let child = c
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            (child.id() as i32, Some(child))
        };
        // Wait until the workload runs: its cgroup has processes.
        eventually(120, &format!("{what}: workload running"), || {
            let ids = store_ids(&s);
            ids.len() == 1 && {
                let parent = if iso.starts_with("vm") {
                    "strata-vm"
                } else {
                    "strata"
                };
                !cgroup_pids(&format!("/{parent}/{}", ids[0])).is_empty()
            }
        });
        let id = store_ids(&s).remove(0);
        kill9(victim);
        if let Some(mut c) = child {
            let _ = c.wait();
        }
        if iso.starts_with("vm") {
            // The VM's host processes end with its keeper's caller, before any rm.
            eventually(30, &format!("{what}: VM processes end"), || {
                cgroup_pids(&format!("/strata-vm/{id}")).is_empty()
            });
        }
        recover_and_check(&s, &what, scope, &before);
    }
}

#[test]
fn strata_run_and_monitor_killed_from_outside() {
    if !ready() {
        return;
    }
    killed_from_outside("container");
}

#[test]
fn strata_run_vm_monitor_and_keeper_killed_from_outside() {
    vm_monitor_and_keeper_killed_from_outside("vm");
}

#[test]
fn strata_run_qemu_vm_monitor_and_keeper_killed_from_outside() {
    vm_monitor_and_keeper_killed_from_outside("vm-qemu");
}

fn vm_monitor_and_keeper_killed_from_outside(iso: &str) {
    if !ready() {
        return;
    }
    killed_from_outside(iso);
    // The keeper itself: the VM's host processes (UML's or QEMU's) end with it.
    let s = Sandbox::new(iso);
    let marker = unique_id("kpk");
    let scope = cli_scope(&s, &marker);
    let before = Snapshot::take(&scope);
    let script = format!("sleep 1000 # {marker}");
    let id = s
        .ok(&["run", "-d", "busybox", "sh", "-c", &script])
        .trim()
        .to_string();
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.root.path().join("vm").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let keeper = st["keeper_pid"].as_i64().expect("keeper pid") as i32;
    assert!(!cgroup_pids(&format!("/strata-vm/{id}")).is_empty());
    kill9(keeper);
    eventually(30, "VM processes end with their keeper", || {
        cgroup_pids(&format!("/strata-vm/{id}")).is_empty()
    });
    recover_and_check(&s, "vm keeper killed from outside", scope, &before);
}

/// strata-oci's VM path: the keeper killed at each of its points during `create --vm`, then
/// `delete --force`.
#[test]
fn oci_vm_create_killed_at_each_point_leaves_nothing_after_delete_force() {
    oci_vm_create_killed_at_each_point(None);
}

/// The same on QEMU (`STRATA_VM_PLATFORM=qemu`, what a `strata-vm-qemu` engine runtime sets).
#[test]
fn oci_qemu_vm_create_killed_at_each_point_leaves_nothing_after_delete_force() {
    oci_vm_create_killed_at_each_point(Some("qemu"));
}

fn oci_vm_create_killed_at_each_point(platform: Option<&str>) {
    if !ready() {
        return;
    }
    let oci = Oci::new();
    for point in ["keeper:forked", "keeper:booted", "keeper:created"] {
        let id = unique_id("kpv");
        let b = Bundle::sh(&id, "sleep 1000");
        let scope = oci_scope(&oci, &b, &id);
        let before = Snapshot::take(&scope);
        let mut c = Command::new(oci_bin());
        if let Some(p) = platform {
            c.env("STRATA_VM_PLATFORM", p);
        }
        let st = c
            .arg("--root")
            .arg(oci.root.path())
            .args([
                "--vm",
                "create",
                "--bundle",
                b.path().to_str().unwrap(),
                &id,
            ])
            .env("STRATA_KILL_POINT", point)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        oci.track(&id);
        assert!(!st.success(), "{point}: create succeeded");
        let del = oci.run(&["delete", "--force", &id]);
        assert!(
            del.status.success() || !oci.root.path().join("vm").join(&id).exists(),
            "{point}: delete --force: {}",
            String::from_utf8_lossy(&del.stderr)
        );
        assert_no_leaks(
            &format!("strata-oci --vm create, keeper killed at {point}"),
            &scope,
            &before,
        );
    }
    // The platform asked for is the one the kills hit (a failing create proves nothing): the
    // same create, not killed, boots on it.
    if let Some(p) = platform {
        let id = unique_id("kpv");
        let b = Bundle::sh(&id, "sleep 1000");
        let scope = oci_scope(&oci, &b, &id);
        let before = Snapshot::take(&scope);
        let mut c = Command::new(oci_bin());
        c.env("STRATA_VM_PLATFORM", p)
            .arg("--root")
            .arg(oci.root.path())
            .args([
                "--vm",
                "create",
                "--bundle",
                b.path().to_str().unwrap(),
                &id,
            ]);
        // The keeper keeps the create's stdio: files, not pipes.
        let (st, _, stderr) = run_to_files(c, 120);
        oci.track(&id);
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(oci.root.path().join("vm").join(&id).join("state.json"))
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        oci.ok(&["delete", "--force", &id]);
        assert!(
            st.success() && state["platform"] == p && state["accelerator"].is_string(),
            "create --vm did not boot on {p} ({st:?}: {stderr}): state {state}"
        );
        assert_no_leaks(&format!("strata-oci --vm create on {p}"), &scope, &before);
    }
}

/// The leak checker sees each kind of leftover it looks for: a cgroup named by an id, a mount
/// under a scope path, a process naming an id, an entry in a directory that must stay empty.
#[test]
fn the_leak_checker_finds_each_kind_of_leftover() {
    if !root_or_skip() {
        return;
    }
    let id = unique_id("leakprobe");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let scope = Scope::new().path(dir.path()).id(&id).empty_dir(&state);
    let before = Snapshot::take(&scope);
    assert!(before.leaks_since(&before).is_empty());
    let cg = common::leaks::hierarchies()
        .into_iter()
        .find(|h| h.ends_with("pids"))
        .expect("a pids hierarchy")
        .join(format!("strata-test-{id}"));
    std::fs::create_dir(&cg).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let mut sleeper = Command::new("sh")
        .args(["-c", &format!("sleep 100 # {id}")])
        .spawn()
        .unwrap();
    std::fs::write(state.join("left"), b"").unwrap();
    let left = Snapshot::take(&scope).leaks_since(&before);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&cg);
    let _ = std::fs::remove_file(state.join("left"));
    let all = left.join("\n");
    for kind in ["cgroup: ", "mount: ", "process: ", "state entry: "] {
        assert!(
            left.iter().any(|l| l.starts_with(kind)),
            "no {kind:?} in:\n{all}"
        );
    }
    // What the test removed is gone (a killed process leaves /proc asynchronously).
    common::leaks::assert_no_leaks("after the probe's own cleanup", &scope, &before);
}

/// A foreground `strata run` is listed as running from the moment it recorded the container,
/// before its runtime made it. `strata kill` in that window used to fail with "not running"
/// (seen as a flake of oci_exe_guard); it now waits for the start and delivers the signal.
/// The run is held at the window with a stop point, so the window is not left to timing.
#[test]
fn kill_while_a_foreground_run_is_still_starting_waits_and_delivers() {
    if !root_or_skip() {
        return;
    }
    let s = Sandbox::new("container");
    let name = unique_id("starting");
    let mut c = s.cmd();
    c.args(["run", "--rm", "--name", &name, "busybox", "sleep", "60"])
        .env(strata_container::kill_point::STOP_ENV, "prepare:recorded")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut run = c.spawn().unwrap();
    struct Reap<'a>(&'a mut std::process::Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            // SAFETY: signals to our own child.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGCONT) };
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = run.id() as i32;
    let run = Reap(&mut run);
    eventually(30, "the run stops at prepare:recorded", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
    });
    assert!(
        s.ps().iter().any(|c| c["Name"] == name.as_str()),
        "ps does not list the starting container"
    );
    let mut kill = s.cmd();
    kill.args(["kill", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut kill = kill.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        kill.try_wait().unwrap().is_none(),
        "kill gave up on a starting container: {}",
        {
            let o = kill.wait_with_output().unwrap();
            String::from_utf8_lossy(&o.stderr).into_owned()
        }
    );
    // SAFETY: SIGCONT to our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let o = kill.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "kill: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let status = run.0.wait().unwrap();
    assert!(!status.success(), "sleep 60 was not killed: {status:?}");
    drop(run);
    s.assert_nothing_left(&[]);
}
