//! The warm VM pool (issue 16, crates/engine/src/vm_pool.rs), with real UML and QEMU (microvm,
//! TCG here) VMs: a run takes a pooled VM (inspect says so) and the pool refills; a pooled VM
//! never serves a second workload; killing a pool keeper or a pooled VM leaves nothing once the
//! pool is used again; `--size 0` drains; a failed hand-over (UML's console gone, QEMU refusing
//! the disk) boots cold with the cause; bad sizes and platforms are clear errors that make
//! nothing.

mod cli_common;
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cli_common::Sandbox;
use common::leaks::{assert_no_leaks, Scope, Snapshot};
use common::root_or_skip;

/// A sandbox whose pool is drained when the test ends, failed or not.
struct Pool {
    s: Sandbox,
    platform: &'static str,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for platform in ["uml", "qemu"] {
            let _ = self
                .s
                .cmd()
                .args(["vm", "pool", "--size", "0", "--platform", platform])
                .output();
        }
        // Keepers that did not answer the drain: their VMs and cgroups by their state.
        for slot in self.slots() {
            if let Some(st) = state(&slot) {
                for k in ["vm_pid", "keeper_pid"] {
                    if let Some(pid) = st[k].as_i64().filter(|p| *p > 0) {
                        // SAFETY: SIGKILL to a pid this test's pool recorded.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

impl Pool {
    fn new() -> Pool {
        Pool {
            s: Sandbox::new("vm"),
            platform: "uml",
        }
    }

    /// A sandbox whose runs are `run --vm --platform qemu` and whose pool is qemu's.
    fn qemu() -> Pool {
        Pool {
            s: Sandbox::new("vm-qemu"),
            platform: "qemu",
        }
    }

    fn shape_dir(&self) -> PathBuf {
        self.s
            .root
            .path()
            .join(format!("vm/pool/{}-128m", self.platform))
    }

    /// The pooled VMs' directories (any status).
    fn slots(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.shape_dir())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Slots whose VM is ready for a workload.
    fn ready(&self) -> Vec<PathBuf> {
        self.slots()
            .into_iter()
            .filter(|s| state(s).is_some_and(|st| st["status"] == "ready"))
            .collect()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.s.ok(&["vm", "pool", "--json"])).unwrap()
    }

    fn scope(&self) -> Scope {
        Scope::new()
            .path(self.s.store.path())
            .path(self.s.root.path())
    }
}

fn state(slot: &std::path::Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(slot.join("state.json")).ok()?).ok()
}

fn slot_vm_id(slot: &std::path::Path) -> String {
    format!("pool-{}", slot.file_name().unwrap().to_string_lossy())
}

fn alive(pid: i64) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid > 0
        && unsafe { libc::kill(pid as i32, 0) } == 0
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
}

fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The VM state of a running instance.
fn vm_state(p: &Pool, id: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(p.s.root.path().join("vm").join(id).join("state.json")).unwrap(),
    )
    .unwrap()
}

/// `run -d busybox sleep 1000` with one pooled VM ready (`slot`, whose VM is `vm_pid`): the run
/// takes that very VM (its start phases are the hand-over's, not a boot's), the VM's cgroups carry
/// the instance's name, and once the workload settled the pool's cgroup name is gone (cgroup2
/// cannot rename: its processes move after SETTLE, vm_pool.rs). Returns the instance id and its
/// `inspect` Vm object.
fn run_warm(
    p: &Pool,
    scope: &mut Scope,
    slot: &std::path::Path,
    vm_pid: i64,
) -> (String, serde_json::Value) {
    let id =
        p.s.ok(&["run", "-d", "busybox", "sleep", "1000"])
            .trim()
            .to_string();
    scope.add_id(id.clone());
    let vm = p.s.inspect(&id)["Vm"].clone();
    assert_eq!(vm["Warm"], true, "the run took the pooled VM: {vm}");
    assert!(vm["WarmFallback"].is_null(), "{vm}");
    let phases: Vec<&str> = vm["StartPhases"]["phases"]
        .as_array()
        .unwrap_or_else(|| panic!("{vm}"))
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "keeper-setup",
            "warm-take",
            "warm-hello",
            "rootfs",
            "workload-execve"
        ],
        "{vm}"
    );
    let st = vm_state(p, &id);
    assert_eq!(
        st["vm_pid"].as_i64().unwrap(),
        vm_pid,
        "the pooled VM itself"
    );
    let cg = st["cgroup_dirs"].as_array().unwrap();
    assert!(!cg.is_empty());
    for d in cg {
        let d = d.as_str().unwrap();
        assert!(d.ends_with(&format!("strata-vm/{id}")), "{d}");
        assert!(std::path::Path::new(d).exists(), "{d}");
    }
    let pool_cgroup = format!("/strata-vm/{}", slot_vm_id(slot));
    eventually(10, "the pool's cgroup name is gone", || {
        common::leaks::cgroup_dirs(&pool_cgroup)
            .iter()
            .all(|d| !d.exists())
    });
    (id, vm)
}

#[test]
fn a_run_takes_a_pooled_vm_the_pool_refills_and_no_vm_serves_twice() {
    if !root_or_skip() {
        return;
    }
    let p = Pool::new();
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    let out = p.s.ok(&["vm", "pool", "--size", "1"]);
    assert!(out.contains("uml"), "{out}");
    let first = p.ready();
    assert_eq!(first.len(), 1, "one pooled VM is ready: {first:?}");
    let first_vm = state(&first[0]).unwrap()["vm_pid"].as_i64().unwrap();
    scope.add_id(slot_vm_id(&first[0]));

    let (id, _) = run_warm(&p, &mut scope, &first[0], first_vm);
    // The workload runs in the VM, which booted without a disk: its root came at hand-over.
    let cmdline = p.s.ok(&["exec", &id, "cat", "/proc/cmdline"]);
    assert!(cmdline.contains("strata.lower=/dev/ubdb"), "{cmdline}");
    assert!(
        !cmdline.contains("ubd0=") && !cmdline.contains("ubd1="),
        "{cmdline}"
    );
    let mounts = p.s.ok(&["exec", &id, "cat", "/proc/mounts"]);
    assert!(mounts.starts_with("/dev/ubdb / ext4 rw"), "{mounts}");
    // The claimed VM is no longer offered: its socket is gone.
    assert!(!first[0].join("keeper.sock").exists());

    // Refill: a new VM, not the claimed one.
    eventually(60, "the pool refills", || {
        let r = p.ready();
        r.len() == 1 && r[0] != first[0]
    });
    let second = p.ready();
    scope.add_id(slot_vm_id(&second[0]));
    let second_vm = state(&second[0]).unwrap()["vm_pid"].as_i64().unwrap();
    assert_ne!(second_vm, first_vm);

    // The first VM ends with its workload and its slot goes.
    p.s.ok(&["rm", "-f", &id]);
    eventually(20, "the used VM is gone", || {
        !alive(first_vm) && !first[0].exists()
    });

    // The next run gets the refilled VM, never the used one.
    let out = p.s.ok(&["run", "--rm", "busybox", "echo", "warm again"]);
    assert_eq!(out.trim(), "warm again");
    eventually(20, "the second pooled VM was used and ended", || {
        !alive(second_vm) && !second[0].exists()
    });
    eventually(60, "the pool refills again", || p.ready().len() == 1);
    for s in p.slots() {
        scope.add_id(slot_vm_id(&s));
    }
    // `--size 0` drains: nothing of the pool is left.
    let st = p.status();
    assert_eq!(st[0]["ready"], 1, "{st}");
    assert!(
        st[0]["idle_memory_bytes"][0].as_u64().unwrap() > 1 << 20,
        "{st}"
    );
    p.s.ok(&["vm", "pool", "--size", "0"]);
    assert!(
        !p.shape_dir().exists(),
        "the drained pool's directory is gone"
    );
    assert_no_leaks("pool used twice, then drained", &scope, &before);
}

#[test]
fn killing_a_pool_keeper_or_a_pooled_vm_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    killing_a_keeper_or_a_vm(Pool::new());
}

#[test]
fn killing_a_qemu_pool_keeper_or_a_pooled_qemu_vm_leaves_nothing() {
    if !root_or_skip() || !qemu_or_skip() {
        return;
    }
    killing_a_keeper_or_a_vm(Pool::qemu());
}

fn killing_a_keeper_or_a_vm(p: Pool) {
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    p.s.ok(&["vm", "pool", "--size", "2", "--platform", p.platform]);
    let slots = p.ready();
    assert_eq!(slots.len(), 2, "{slots:?}");
    for s in &slots {
        scope.add_id(slot_vm_id(s));
    }
    let a = state(&slots[0]).unwrap();
    let b = state(&slots[1]).unwrap();
    let (a_keeper, a_vm) = (
        a["keeper_pid"].as_i64().unwrap(),
        a["vm_pid"].as_i64().unwrap(),
    );
    let b_vm = b["vm_pid"].as_i64().unwrap();
    // SAFETY: SIGKILL to the keeper and the VM this test's pool started.
    unsafe {
        libc::kill(a_keeper as i32, libc::SIGKILL);
        libc::kill(b_vm as i32, libc::SIGKILL);
    }
    // A killed VM's keeper ends its slot.
    eventually(30, "the killed VM's slot goes", || !slots[1].exists());
    // The next pool operation sweeps what the dead keeper left: its VM (if its agent has not
    // powered it off already: its channel closed), cgroup and directory.
    let st = p.status();
    assert!(!slots[0].exists(), "swept: {st}");
    assert!(!alive(a_vm), "the orphaned VM was ended");
    assert_eq!(st[0]["ready"], 0, "{st}");
    let out = p.s.ok(&["run", "--rm", "busybox", "echo", "still fine"]);
    assert_eq!(out.trim(), "still fine");
    for s in p.slots() {
        scope.add_id(slot_vm_id(&s));
    }
    p.s.ok(&["vm", "pool", "--size", "0", "--platform", p.platform]);
    assert_no_leaks("pool keeper and pooled VM killed", &scope, &before);
}

/// A pooled VM dies with its pool keeper (jail.rs: the parent-death signal), whatever its
/// guest does: here its kernel is stopped, so no agent powers it off when the channel closes.
#[test]
fn a_killed_pool_keeper_takes_its_vm_with_it_even_when_the_guest_does_not_react() {
    if !root_or_skip() {
        return;
    }
    let p = Pool::new();
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    p.s.ok(&["vm", "pool", "--size", "1"]);
    let slot = p.ready().pop().expect("a ready pooled VM");
    scope.add_id(slot_vm_id(&slot));
    let st = state(&slot).unwrap();
    let (keeper, vm) = (
        st["keeper_pid"].as_i64().unwrap(),
        st["vm_pid"].as_i64().unwrap(),
    );
    // The guest kernel: the jail's init's child.
    let kernel = std::fs::read_to_string(format!("/proc/{vm}/task/{vm}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the jail's init has forked the kernel")
        .parse::<i64>()
        .unwrap();
    // SAFETY: SIGSTOP to the guest kernel and SIGKILL to the pool keeper this test started.
    unsafe {
        libc::kill(kernel as i32, libc::SIGSTOP);
        libc::kill(keeper as i32, libc::SIGKILL);
    }
    eventually(10, "the VM dies with its keeper", || {
        !alive(vm) && !alive(kernel)
    });
    // The next pool operation sweeps the slot and the cgroup.
    let st = p.status();
    assert!(!slot.exists(), "swept: {st}");
    p.s.ok(&["vm", "pool", "--size", "0"]);
    assert_no_leaks("pool keeper killed under a stopped guest", &scope, &before);
}

/// Workloads that end around the moment the pool keeper moves the VM's cgroup2 processes to
/// the instance's name (vm_pool.rs SETTLE, 250 ms): an exiting process keeps the old directory
/// busy for a moment. Whether the move waits, fails or succeeds, every VM's cgroups go, under
/// the pool's name and the instance's (a failed move once left the pool's cgroup2 directory).
#[test]
fn workloads_ending_while_the_re_label_finishes_leave_no_cgroup() {
    if !root_or_skip() {
        return;
    }
    let p = Pool::new();
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    p.s.ok(&["vm", "pool", "--size", "1"]);
    for i in 0..12 {
        // The refill of the run before.
        eventually(30, "a ready pooled VM", || !p.ready().is_empty());
        for s in p.slots() {
            scope.add_id(slot_vm_id(&s));
        }
        let usecs = (200_000 + (i % 6) * 20_000).to_string();
        let id =
            p.s.ok(&["run", "-d", "busybox", "usleep", &usecs])
                .trim()
                .to_string();
        scope.add_id(id.clone());
        assert_eq!(p.s.inspect(&id)["Vm"]["Warm"], true, "run {i}");
        assert_eq!(p.s.ok(&["wait", &id]).trim(), "0", "run {i}");
        p.s.ok(&["rm", &id]);
    }
    for s in p.slots() {
        scope.add_id(slot_vm_id(&s));
    }
    p.s.ok(&["vm", "pool", "--size", "0"]);
    assert_no_leaks("warm runs ending near the re-label", &scope, &before);
}

/// A process of the test's own in a sub-cgroup `busy` of `dir`: the cgroup cannot be removed
/// until it is dropped (which ends the process and removes both directories).
struct Blocker(std::process::Child, PathBuf);

impl Blocker {
    fn new(dir: &std::path::Path) -> Blocker {
        std::fs::create_dir(dir.join("busy")).unwrap();
        let b = Blocker(
            std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap(),
            dir.to_path_buf(),
        );
        std::fs::write(dir.join("busy/cgroup.procs"), b.0.id().to_string()).unwrap();
        b
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        for d in [self.1.join("busy"), self.1.clone()] {
            for _ in 0..100 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The first existing directory of a cgroup path (in any hierarchy).
fn a_cgroup_dir(path: &str) -> PathBuf {
    common::leaks::cgroup_dirs(path)
        .into_iter()
        .find(|d| d.exists())
        .unwrap_or_else(|| panic!("no cgroup {path}"))
}

/// What the pool cannot clean up is never lost. The teardown of a VM that served a workload runs
/// detached (the claimer returned): when it cannot remove the VM's cgroup (a process of the
/// test's own sits in a sub-cgroup), the cause is shown by `strata vm pool` and its JSON. A
/// drain that cannot remove an idle VM's cgroup fails with the cause.
#[test]
fn a_teardown_or_drain_that_cannot_remove_the_cgroup_says_so() {
    if !root_or_skip() {
        return;
    }
    let p = Pool::new();
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    p.s.ok(&["vm", "pool", "--size", "1"]);
    let id =
        p.s.ok(&["run", "-d", "busybox", "sleep", "1000"])
            .trim()
            .to_string();
    scope.add_id(id.clone());
    assert_eq!(p.s.inspect(&id)["Vm"]["Warm"], true);
    let dir = a_cgroup_dir(&format!("/strata-vm/{id}"));
    let blocker = Blocker::new(&dir);
    p.s.ok(&["rm", "-f", &id]);
    eventually(30, "the teardown's error", || {
        p.status()[0]["last_error"].is_string()
    });
    let err = p.status()[0]["last_error"].as_str().unwrap().to_string();
    assert!(
        err.contains("tearing down the VM that served a workload")
            && err.contains(&format!("{}/busy", dir.display())),
        "{err}"
    );
    let out = p.s.ok(&["vm", "pool"]);
    assert!(out.contains("  last error: tearing down"), "{out}");
    // The next `vm pool --size` starts over.
    p.s.ok(&["vm", "pool", "--size", "1"]);
    assert!(p.status()[0]["last_error"].is_null());
    drop(blocker);
    assert!(!dir.exists(), "{}", dir.display());

    let ready = p.ready();
    assert_eq!(ready.len(), 1);
    for s in p.slots() {
        scope.add_id(slot_vm_id(&s));
    }
    let dir = a_cgroup_dir(&format!("/strata-vm/{}", slot_vm_id(&ready[0])));
    let blocker = Blocker::new(&dir);
    let (code, err) = p.s.fails(&["vm", "pool", "--size", "0"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("ending 1 of its VMs left something behind")
            && err.contains(&format!("{}/busy", dir.display())),
        "{err}"
    );
    drop(blocker);
    p.s.ok(&["vm", "pool", "--size", "0"]);
    assert_no_leaks("a teardown and a drain that failed", &scope, &before);
}

#[test]
fn pool_size_zero_drains_every_idle_vm() {
    if !root_or_skip() {
        return;
    }
    let p = Pool::new();
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    p.s.ok(&["vm", "pool", "--size", "2"]);
    let slots = p.ready();
    assert_eq!(slots.len(), 2);
    let pids: Vec<i64> = slots
        .iter()
        .map(|s| state(s).unwrap()["vm_pid"].as_i64().unwrap())
        .collect();
    for s in &slots {
        scope.add_id(slot_vm_id(s));
    }
    // Shrinking ends only the surplus.
    p.s.ok(&["vm", "pool", "--size", "1"]);
    assert_eq!(p.slots().len(), 1);
    p.s.ok(&["vm", "pool", "--size", "0"]);
    assert!(p.slots().is_empty());
    for pid in pids {
        assert!(!alive(pid), "VM {pid} drained");
    }
    let out = p.s.ok(&["vm", "pool"]);
    assert!(out.contains("no warm VM pool"), "{out}");
    assert_no_leaks("pool drained", &scope, &before);
}

#[test]
fn bad_pool_input_is_a_clear_error_that_makes_nothing() {
    if !root_or_skip() {
        return;
    }
    let p = Pool::new();
    for (args, want) in [
        (vec!["--size", "-1"], "cannot be negative"),
        (vec!["--size", "100000"], "at most 64"),
        (vec!["--size", "99999999999999999999"], "not a whole number"),
        (vec!["--size", "two"], "not a whole number"),
        (
            vec!["--size", "1", "--platform", "nope"],
            "unknown platform",
        ),
        (vec!["--size", "1", "--platform", "kvm"], "uml and qemu VMs"),
        (vec!["--size", "1", "--memory", "1m"], "at least 64m"),
        (
            vec!["--size", "64", "--memory", "900g"],
            "choose a smaller pool",
        ),
    ] {
        let mut a = vec!["vm", "pool"];
        a.extend(args.iter());
        let (code, err) = p.s.fails(&a);
        assert_ne!(code, 0);
        assert!(err.contains(want), "{a:?}: {err}");
    }
    assert!(!p.s.root.path().join("vm").exists(), "nothing was made");
}

#[test]
fn a_failed_hand_over_destroys_the_pooled_vm_and_boots_cold_with_the_cause() {
    if !root_or_skip() {
        return;
    }
    let p = Pool::new();
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    p.s.ok(&["vm", "pool", "--size", "1"]);
    let slot = p.ready().pop().expect("a ready pooled VM");
    scope.add_id(slot_vm_id(&slot));
    let vm = state(&slot).unwrap()["vm_pid"].as_i64().unwrap();
    // Break the hand-over: the guest kernel's management console goes away (root reaches the
    // jail's private /tmp through /proc).
    let console = PathBuf::from(format!("/proc/{vm}/root/tmp/vm/mconsole"));
    std::fs::remove_file(&console).expect("the pooled VM has a management console");
    let id =
        p.s.ok(&["run", "-d", "busybox", "sleep", "1000"])
            .trim()
            .to_string();
    scope.add_id(id.clone());
    let v = &p.s.inspect(&id)["Vm"];
    assert_eq!(v["Warm"], false, "{v}");
    let why = v["WarmFallback"].as_str().unwrap_or_default();
    assert!(why.contains("management console"), "{v}");
    // The pooled VM whose hand-over failed is gone; the workload runs in a VM of its own.
    eventually(20, "the broken pooled VM is destroyed", || {
        !alive(vm) && !slot.exists()
    });
    assert_ne!(vm_state(&p, &id)["vm_pid"].as_i64().unwrap(), vm);
    assert_eq!(p.s.ok(&["exec", &id, "echo", "cold"]).trim(), "cold");
    p.s.ok(&["rm", "-f", &id]);
    // A failed hand-over does not refill (only a claim that worked does): drain what is left.
    for s in p.slots() {
        scope.add_id(slot_vm_id(&s));
    }
    p.s.ok(&["vm", "pool", "--size", "0"]);
    assert_no_leaks("failed hand-over", &scope, &before);
}

/// Whether a process is stopped (SIGSTOP: state T).
fn stopped(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('T')
    })
}

/// `run --vm --rm` of a warm VM returns once the workload's exit is known: the VM's teardown
/// (kill, reap, cgroup and slot removal) is its pool keeper's, a detached process. Held there
/// (a stop point), the run has returned and left no container, a new run of the same name
/// works; killed there, what it had not finished (slot, re-labelled cgroup) is swept by the next
/// pool operation and nothing is left.
#[test]
fn a_warm_run_returns_before_the_vm_teardown_and_a_killed_teardown_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    let p = Pool::new();
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    // Every pool keeper of this pool (and of its refills) stops at the start of its teardown.
    let out =
        p.s.cmd()
            .args(["vm", "pool", "--size", "1"])
            .env("STRATA_STOP_POINT", "pool:teardown")
            .output()
            .unwrap();
    assert!(out.status.success(), "{out:?}");
    let slot = p.ready().pop().expect("a ready pooled VM");
    scope.add_id(slot_vm_id(&slot));
    let first = state(&slot).unwrap();
    let (keeper, vm) = (
        first["keeper_pid"].as_i64().unwrap(),
        first["vm_pid"].as_i64().unwrap(),
    );

    let out = p.s.ok(&[
        "run", "--name", "warm-end", "--rm", "busybox", "echo", "done",
    ]);
    assert_eq!(out.trim(), "done");
    // The run returned while the teardown is held: the VM's slot and its re-labelled cgroup
    // are still the (stopped) pool keeper's to remove.
    let claimed = state(&slot).expect("the used VM's slot is still there");
    assert_eq!(claimed["status"], "claimed", "{claimed}");
    let cg = claimed["cgroup_dirs"].as_array().unwrap();
    let id = cg[0]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    scope.add_id(id.clone());
    eventually(20, "the pool keeper reaches its teardown", || {
        stopped(keeper)
    });
    assert!(
        cg.iter()
            .any(|d| std::path::Path::new(d.as_str().unwrap()).exists()),
        "the teardown is the pool keeper's: {claimed}"
    );
    // Nothing of the container is left to the user, and its name is free again.
    assert!(p.s.ps().is_empty(), "{:?}", p.s.ps());
    assert!(!p.s.root.path().join("vm").join(&id).exists());
    assert_eq!(
        p.s.ok(&["run", "--name", "warm-end", "--rm", "busybox", "echo", "again"])
            .trim(),
        "again"
    );
    // The teardown killed halfway: the VM dies (it was sent SIGKILL with the workload's end),
    // and the next pool operation sweeps the slot and the cgroup.
    // SAFETY: SIGKILL to the pool keeper this test's pool started.
    unsafe { libc::kill(keeper as i32, libc::SIGKILL) };
    // SIGKILL takes effect once the stopped keeper is scheduled: until then the sweep below
    // would rightly take it for alive.
    eventually(20, "the pool keeper is dead", || !alive(keeper));
    eventually(20, "the used VM ends", || !alive(vm));
    for s in p.slots() {
        scope.add_id(slot_vm_id(&s));
        if let Some(cg) = state(&s).and_then(|st| st["cgroup_dirs"].as_array().cloned()) {
            for d in cg {
                if let Some(i) = d.as_str().and_then(|d| d.rsplit('/').next()) {
                    scope.add_id(i.to_string());
                }
            }
        }
    }
    let st = p.status();
    assert!(!slot.exists(), "swept: {st}");
    for d in cg {
        let d = d.as_str().unwrap();
        assert!(!std::path::Path::new(d).exists(), "{d} removed");
    }
    // The second run's pool keeper is held in its teardown too: let it finish.
    for s in p.slots() {
        if let Some(k) = state(&s).and_then(|st| st["keeper_pid"].as_i64()) {
            if stopped(k) {
                // SAFETY: SIGCONT to a pool keeper this test's pool started.
                unsafe { libc::kill(k as i32, libc::SIGCONT) };
            }
        }
    }
    eventually(20, "held teardowns finish", || {
        p.slots()
            .iter()
            .all(|s| state(s).is_some_and(|st| st["status"] != "claimed"))
    });
    p.s.ok(&["vm", "pool", "--size", "0"]);
    assert_no_leaks("warm teardown held, then killed", &scope, &before);
}

/// `run --vm` is not re-executed from a read-only copy of the binary (the CVE-2019-5736
/// defence of container runs): nothing of this process reaches the guest, whose processes
/// live in the VM. The foreground `strata` runs from the installed binary itself.
#[test]
fn a_vm_run_skips_the_re_exec_that_container_runs_need() {
    if !root_or_skip() {
        return;
    }
    let p = Pool::new();
    let name = format!("noreexec-{}", std::process::id());
    let mut child =
        p.s.cmd()
            .args([
                "run", "--vm", "--rm", "--name", &name, "busybox", "sleep", "30",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
    struct Reap<'a>(&'a mut std::process::Child, std::process::Command);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.1.output();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let mut rm = p.s.cmd();
    rm.args(["rm", "-f", &name]);
    let reap = Reap(&mut child, rm);
    eventually(60, "the VM runs", || {
        p.s.ps().iter().any(|c| c["Name"] == name.as_str())
    });
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(cli_common::STRATA).unwrap(),
        "the VM run was re-executed"
    );
    drop(reap);
}

/// The command lines of a process and its descendants.
fn tree_cmdlines(pid: i64) -> String {
    let mut out = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .replace('\0', " ");
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        out.push('\n');
        out.push_str(&tree_cmdlines(c));
    }
    out
}

/// The qemu platform's kernel is there (scripts/build-guest-kernel.sh qemu), or the test cannot
/// run (a failure under STRATA_REQUIRE_E2E=1).
fn qemu_or_skip() -> bool {
    let ok = std::path::Path::new("/usr/bin/qemu-system-x86_64").exists()
        && std::fs::read_dir("/var/lib/strata/kernels").is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("qemu-"))
        });
    strata_testkit::require(
        ok,
        "no QEMU or no qemu guest kernel (scripts/deps.sh, scripts/build-guest-kernel.sh qemu)",
    )
}

/// A qemu pool fills, lists (beside a uml pool, which keeps working) and drains; a `run --vm
/// --platform qemu` takes the pooled microvm, whose root device got the image over QMP at
/// hand-over (the VM booted with a placeholder under it), writes to its own copy-on-write layer,
/// and is never offered again; the pool refills.
#[test]
fn a_qemu_run_takes_a_pooled_microvm_whose_root_disk_came_over_qmp() {
    if !root_or_skip() || !qemu_or_skip() {
        return;
    }
    let p = Pool::qemu();
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    let out = p.s.ok(&["vm", "pool", "--size", "1", "--platform", "qemu"]);
    assert!(out.contains("qemu"), "{out}");
    // A uml pool beside it, in the same root.
    p.s.ok(&["vm", "pool", "--size", "1", "--platform", "uml"]);
    let uml_dir = p.s.root.path().join("vm/pool/uml-128m");
    let st = p.status();
    let pools: Vec<&str> = st
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["platform"].as_str().unwrap())
        .collect();
    assert_eq!(pools, ["qemu", "uml"], "{st}");
    for pool in st.as_array().unwrap() {
        assert_eq!(pool["ready"], 1, "{st}");
        assert!(
            pool["idle_memory_bytes"][0].as_u64().unwrap() > 1 << 20,
            "{st}"
        );
        assert!(pool["keeper_memory_bytes"][0].as_u64().unwrap() > 0, "{st}");
    }
    let listed = p.s.ok(&["vm", "pool"]);
    assert!(listed.lines().any(|l| l.starts_with("qemu ")), "{listed}");
    let first = p.ready();
    assert_eq!(first.len(), 1, "{first:?}");
    scope.add_id(slot_vm_id(&first[0]));
    for s in std::fs::read_dir(&uml_dir).unwrap().flatten() {
        if s.path().is_dir() {
            scope.add_id(slot_vm_id(&s.path()));
        }
    }
    let first_vm = state(&first[0]).unwrap()["vm_pid"].as_i64().unwrap();
    assert!(
        tree_cmdlines(first_vm).contains("null-co"),
        "the pooled QEMU booted over a placeholder root: {}",
        tree_cmdlines(first_vm)
    );

    let (id, vm) = run_warm(&p, &mut scope, &first[0], first_vm);
    assert_eq!(vm["Platform"], "qemu", "{vm}");
    assert_eq!(vm["Accelerator"], "tcg", "{vm}");
    // The pooled guest rehearsed a start before its hello (crates/agent/src/rehearsal.rs), and
    // nothing of the rehearsal is left for the workload: no disk node, no mount, no process.
    assert!(
        vm["StartPhases"]["rehearsal_ms"]
            .as_f64()
            .unwrap_or_default()
            > 0.0,
        "{vm}"
    );
    let seen = p.s.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "ls /dev/vd*; cat /proc/self/mountinfo; ps -o pid,args",
    ]);
    assert!(seen.contains("/dev/vda"), "{seen}");
    for gone in ["/dev/vdb", "rehearsal", "--version"] {
        assert!(!seen.contains(gone), "{gone}: {seen}");
    }
    // The image is the root, read-write through the instance's own qcow2 overlay.
    let mounts = p.s.ok(&["exec", &id, "cat", "/proc/mounts"]);
    assert!(mounts.starts_with("/dev/vda / ext4 rw"), "{mounts}");
    assert_eq!(
        p.s.ok(&[
            "exec",
            &id,
            "sh",
            "-c",
            "echo kept > /written; cat /written; ls /bin/busybox"
        ])
        .trim(),
        "kept\n/bin/busybox"
    );
    let overlay = p.s.root.path().join("vm").join(&id).join("root.cow");
    assert!(
        std::fs::read(&overlay).unwrap().starts_with(b"QFI\xfb"),
        "the instance's qcow2 overlay"
    );
    assert!(
        !first[0].join("keeper.sock").exists(),
        "never offered again"
    );

    eventually(90, "the qemu pool refills", || {
        let r = p.ready();
        r.len() == 1 && r[0] != first[0]
    });
    let second = p.ready();
    scope.add_id(slot_vm_id(&second[0]));
    let second_vm = state(&second[0]).unwrap()["vm_pid"].as_i64().unwrap();
    p.s.ok(&["rm", "-f", &id]);
    eventually(20, "the used VM is gone", || {
        !alive(first_vm) && !first[0].exists()
    });
    // `--rm`, warm again: the refilled VM; the uml pool keeps working beside it.
    let out = p.s.ok(&["run", "--rm", "busybox", "echo", "warm again"]);
    assert_eq!(out.trim(), "warm again");
    eventually(20, "the second pooled VM was used and ended", || {
        !alive(second_vm) && !second[0].exists()
    });
    let out =
        p.s.cmd()
            .args([
                "run",
                "-d",
                "--vm",
                "--platform",
                "uml",
                "busybox",
                "sleep",
                "100",
            ])
            .output()
            .unwrap();
    assert!(out.status.success(), "{out:?}");
    let uml_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    scope.add_id(uml_id.clone());
    let uml_vm = &p.s.inspect(&uml_id)["Vm"];
    assert_eq!(uml_vm["Warm"], true);
    assert!(
        uml_vm["StartPhases"].get("rehearsal_ms").is_none(),
        "UML runs guest code natively: nothing to rehearse: {uml_vm}"
    );
    p.s.ok(&["rm", "-f", &uml_id]);
    eventually(90, "the pools refill", || {
        p.ready().len() == 1
            && std::fs::read_dir(&uml_dir)
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_dir())
                .count()
                == 1
    });
    for s in p.slots() {
        scope.add_id(slot_vm_id(&s));
    }
    for s in std::fs::read_dir(&uml_dir).unwrap().flatten() {
        if s.path().is_dir() {
            scope.add_id(slot_vm_id(&s.path()));
        }
    }
    p.s.ok(&["vm", "pool", "--size", "0", "--platform", "qemu"]);
    p.s.ok(&["vm", "pool", "--size", "0", "--platform", "uml"]);
    assert!(
        !p.shape_dir().exists(),
        "the drained pool's directory is gone"
    );
    let out = p.s.ok(&["vm", "pool"]);
    assert!(out.contains("no warm VM pool"), "{out}");
    assert_no_leaks(
        "qemu pool used twice beside a uml pool, then drained",
        &scope,
        &before,
    );
}

/// QEMU refusing the image at hand-over (a test build's fail point hands it a file descriptor
/// set that does not exist, so QEMU's own error comes back): the pooled VM is destroyed, the
/// cause is recorded, the workload boots cold, and nothing is left.
#[test]
fn a_qemu_hand_over_that_qemu_refuses_destroys_the_vm_and_boots_cold_with_its_cause() {
    if !root_or_skip() || !qemu_or_skip() {
        return;
    }
    let p = Pool::qemu();
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    p.s.ok(&["vm", "pool", "--size", "1", "--platform", "qemu"]);
    let slot = p.ready().pop().expect("a ready pooled VM");
    scope.add_id(slot_vm_id(&slot));
    let vm = state(&slot).unwrap()["vm_pid"].as_i64().unwrap();
    let out =
        p.s.cmd()
            .args([
                "run",
                "-d",
                "--vm",
                "--platform",
                "qemu",
                "busybox",
                "sleep",
                "1000",
            ])
            .env("STRATA_FAIL_POINT", "qemu:hot-add")
            .output()
            .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    scope.add_id(id.clone());
    let v = &p.s.inspect(&id)["Vm"];
    assert_eq!(v["Warm"], false, "{v}");
    let why = v["WarmFallback"].as_str().unwrap_or_default();
    assert!(
        why.contains("QEMU refused blockdev-add") && why.contains("/dev/fdset/4096"),
        "QEMU's own words: {v}"
    );
    eventually(20, "the refused pooled VM is destroyed", || {
        !alive(vm) && !slot.exists()
    });
    assert_ne!(vm_state(&p, &id)["vm_pid"].as_i64().unwrap(), vm);
    assert_eq!(p.s.ok(&["exec", &id, "echo", "cold"]).trim(), "cold");
    p.s.ok(&["rm", "-f", &id]);
    for s in p.slots() {
        scope.add_id(slot_vm_id(&s));
    }
    assert!(p.ready().is_empty(), "a failed hand-over refills nothing");
    p.s.ok(&["vm", "pool", "--size", "0", "--platform", "qemu"]);
    assert_no_leaks("refused qemu hand-over", &scope, &before);
}

/// A rehearsal that fails (here: the cached rehearsal disk overwritten with zeroes, so the
/// guest cannot mount it) is a warning with its cause on the run that takes the VM; the pooled
/// VM still serves, only without the rehearsal's head start, and nothing is left.
#[test]
fn a_failed_rehearsal_is_a_warning_and_the_pooled_vm_still_serves() {
    if !root_or_skip() || !qemu_or_skip() {
        return;
    }
    let p = Pool::qemu();
    let mut scope = p.scope();
    let before = Snapshot::take(&scope);
    // A first pooled VM builds the rehearsal disk into the store's cache.
    p.s.ok(&["vm", "pool", "--size", "1", "--platform", "qemu"]);
    for s in p.slots() {
        scope.add_id(slot_vm_id(&s));
    }
    p.s.ok(&["vm", "pool", "--size", "0", "--platform", "qemu"]);
    let cache = p.s.store.path().join("vm/cache");
    let disks: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("rehearsal-") && name.ends_with(".ext4")
        })
        .collect();
    assert_eq!(disks.len(), 1, "{disks:?}");
    let len = std::fs::metadata(&disks[0]).unwrap().len();
    std::fs::write(&disks[0], vec![0u8; len as usize]).unwrap();

    p.s.ok(&["vm", "pool", "--size", "1", "--platform", "qemu"]);
    let slot = p.ready().pop().expect("a ready pooled VM");
    scope.add_id(slot_vm_id(&slot));
    // Detached: the VM keeper's own stderr goes nowhere; what it says while the VM starts comes
    // to the run's stderr with its "started".
    let out = p.s.strata(&["run", "-d", "busybox", "sleep", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    scope.add_id(id.clone());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rehearsal failed") && stderr.contains("mount the rehearsal disk /dev/vdb"),
        "the cause reaches the user: {stderr}"
    );
    let vm = &p.s.inspect(&id)["Vm"];
    assert_eq!(vm["Warm"], true, "{vm}");
    assert!(vm["StartPhases"].get("rehearsal_ms").is_none(), "{vm}");
    assert_eq!(p.s.ok(&["exec", &id, "echo", "served"]).trim(), "served");
    p.s.ok(&["rm", "-f", &id]);
    for s in p.slots() {
        scope.add_id(slot_vm_id(&s));
    }
    p.s.ok(&["vm", "pool", "--size", "0", "--platform", "qemu"]);
    assert_no_leaks("failed rehearsal", &scope, &before);
}
