//! cgroups on the real host, as root: create with resources, a real child process
//! joined to it, files read back, update, freeze/thaw, pids, stats, destroy.
//! The v1 tests need a v1 or hybrid host (like this machine); the v2 tests drive
//! the v2 code path (including the device eBPF filter) on whatever cgroup2 mount
//! exists, /sys/fs/cgroup/unified on a hybrid host.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use oci_spec::runtime::LinuxResources;
use strata_container::cgroups::{attached_device_programs, Cgroup, CgroupError, Layout};
use strata_testkit::{is_root, require, skip_or_fail};

/// Kills the children and removes the cgroup even when an assertion fails.
struct Guard {
    cg: Cgroup,
    children: Vec<Child>,
    extra_dirs: Vec<PathBuf>,
}

impl Guard {
    fn new(cg: Cgroup) -> Guard {
        Guard {
            cg,
            children: Vec::new(),
            extra_dirs: Vec::new(),
        }
    }

    fn spawn(&mut self, cmd: &mut Command) -> i32 {
        let child = cmd.spawn().expect("spawn child");
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }

    fn kill_children(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.cg.thaw();
        self.kill_children();
        let _ = self.cg.destroy();
        for d in self.extra_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A cgroup name unique to this process and test.
fn unique(test: &str) -> String {
    format!("strata-test-{}-{test}", std::process::id())
}

/// Root on a v1 or hybrid host; false after a skip (a failure with STRATA_REQUIRE_E2E=1).
#[track_caller]
fn host_has_v1() -> bool {
    if !require(is_root(), "needs root") {
        return false;
    }
    let cg = Cgroup::resolve(Some(Path::new("/probe")), "probe").expect("resolve");
    require(
        cg.layout != Layout::V2,
        "pure cgroup v2 host: the v1 tests need a v1 or hybrid host",
    )
}

/// The container's v1 pids directory; None after a skip of the pids checks (a failure with
/// STRATA_REQUIRE_E2E=1) when this host has no v1 pids hierarchy.
fn v1_pids(cg: &Cgroup) -> Option<PathBuf> {
    let p = cg.v1_path("pids").map(Path::to_path_buf);
    require(
        p.is_some(),
        "no v1 pids hierarchy: the pids checks are left out",
    );
    p
}

/// Whether the memory cgroup `mem` has the memsw files; false after a skip of the swap checks
/// (a failure with STRATA_REQUIRE_E2E=1) when swap accounting is off.
fn has_memsw(mem: &Path) -> bool {
    require(
        mem.join("memory.memsw.limit_in_bytes").exists(),
        "no memory.memsw files (swap accounting is off: boot with swapaccount=1): \
         the swap checks are left out",
    )
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()))
        .trim()
        .to_owned()
}

fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).expect("LinuxResources JSON")
}

fn sleeper() -> Command {
    let mut c = Command::new("sleep");
    c.arg("60").stdin(Stdio::null()).stdout(Stdio::null());
    c
}

/// The state letter of /proc/<pid>/stat.
fn proc_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')')
        .unwrap()
        .1
        .trim()
        .chars()
        .next()
        .unwrap()
}

#[test]
fn v1_full_lifecycle_with_resources() {
    if !host_has_v1() {
        return;
    }
    let name = unique("lifecycle");
    let path = format!("/{name}/ctr");
    let mut g = Guard::new(Cgroup::resolve(Some(Path::new(&path)), &name).unwrap());
    let r = resources(
        r#"{
        "memory": {"limit": 67108864, "reservation": 33554432, "swap": 134217728},
        "pids": {"limit": 20},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "blockIO": {"weight": 0},
        "devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 136, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "m"}
        ]
    }"#,
    );
    g.cg.create(Some(&r)).unwrap();
    let cg = g.cg.clone();
    assert!(
        cg.created.len() >= 2 * cg.v1.len(),
        "parent and leaf created in every hierarchy: {:?}",
        cg.created
    );

    let mem = cg.v1_path("memory").unwrap();
    assert_eq!(mem, Path::new(&format!("/sys/fs/cgroup/memory{path}")));
    assert_eq!(read(mem, "memory.limit_in_bytes"), "67108864");
    assert_eq!(read(mem, "memory.soft_limit_in_bytes"), "33554432");
    let memsw = has_memsw(mem);
    if memsw {
        assert_eq!(read(mem, "memory.memsw.limit_in_bytes"), "134217728");
    }
    let pids = v1_pids(&cg);
    if let Some(p) = &pids {
        assert_eq!(read(p, "pids.max"), "20");
    }
    let cpu = cg.v1_path("cpu").unwrap();
    assert_eq!(read(cpu, "cpu.shares"), "512");
    assert_eq!(read(cpu, "cpu.cfs_quota_us"), "50000");
    assert_eq!(read(cpu, "cpu.cfs_period_us"), "100000");
    let cpuset = cg.v1_path("cpuset").unwrap();
    assert_eq!(read(cpuset, "cpuset.cpus"), "0");
    assert_eq!(read(cpuset, "cpuset.mems"), "0");
    // The parent we created got the root's cpus/mems, so tasks can join below it.
    assert!(!read(cpuset.parent().unwrap(), "cpuset.cpus").is_empty());
    let devices = read(cg.v1_path("devices").unwrap(), "devices.list");
    let lines: Vec<&str> = devices.lines().collect();
    assert!(lines.contains(&"c 1:3 rw"), "{devices}");
    assert!(lines.contains(&"c 136:* rwm"), "{devices}");
    assert!(!lines.contains(&"a *:* rwm"), "{devices}");

    // A real process joins every hierarchy, the unified one included on hybrid hosts.
    let pid = g.spawn(&mut sleeper());
    cg.add_process(pid).unwrap();
    for dir in cg.paths() {
        let procs = read(dir, "cgroup.procs");
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "{pid} not in {}",
            dir.display()
        );
    }
    if cg.layout == Layout::Hybrid {
        let unified = cg.unified.as_ref().unwrap();
        assert_eq!(
            unified,
            &cg.unified_mountpoint
                .as_ref()
                .unwrap()
                .join(path.trim_start_matches('/'))
        );
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(own.lines().any(|l| l == format!("0::{path}")), "{own}");
    }
    assert_eq!(cg.pids().unwrap(), vec![pid]);

    let stats = cg.stats().unwrap();
    assert_eq!(stats.memory.usage.limit, 67108864);
    if pids.is_some() {
        assert_eq!(stats.pids.current, 1);
        assert_eq!(stats.pids.limit, 20);
    }
    let json = serde_json::to_value(&stats).unwrap();
    assert!(json["memory"]["usage"]["limit"].is_u64());

    // `docker update --memory 64m` as it reaches the runtime.
    let update = std::fs::read_to_string("/work/shared/fixtures/docker-update-resources.json")
        .unwrap_or_else(|_| r#"{"memory":{"limit":67108864,"reservation":0,"swap":67108864,"kernel":0},"cpu":{"shares":512,"quota":0,"period":0},"pids":{"limit":50},"blockIO":{"weight":0}}"#.to_owned());
    cg.update(&resources(&update)).unwrap();
    if let Some(p) = &pids {
        assert_eq!(read(p, "pids.max"), "50");
    }
    if memsw {
        assert_eq!(read(mem, "memory.memsw.limit_in_bytes"), "67108864");
    }
    assert_eq!(
        read(mem, "memory.soft_limit_in_bytes"),
        "33554432",
        "reservation 0 leaves it unchanged"
    );
    assert_eq!(
        read(cpu, "cpu.cfs_quota_us"),
        "50000",
        "quota 0 leaves it unchanged"
    );
    // Raising the limit above the current memsw needs memsw written first.
    cg.update(&resources(
        r#"{"memory":{"limit":268435456,"swap":536870912}}"#,
    ))
    .unwrap();
    assert_eq!(read(mem, "memory.limit_in_bytes"), "268435456");
    cg.update(&resources(r#"{"pids":{"limit":-1}}"#)).unwrap();
    if let Some(p) = &pids {
        assert_eq!(read(p, "pids.max"), "max");
    }

    // pause / resume
    cg.freeze().unwrap();
    assert!(cg.is_frozen().unwrap());
    assert_eq!(
        read(cg.v1_path("freezer").unwrap(), "freezer.state"),
        "FROZEN"
    );
    assert_eq!(
        proc_state(pid),
        'D',
        "a frozen task sleeps uninterruptibly in the freezer"
    );
    cg.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());
    assert_eq!(
        read(cg.v1_path("freezer").unwrap(), "freezer.state"),
        "THAWED"
    );
    // Thawed: back to an ordinary sleep (give the scheduler a moment to run it).
    let mut state = proc_state(pid);
    for _ in 0..100 {
        if state == 'S' {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        state = proc_state(pid);
    }
    assert_eq!(state, 'S');

    // A later command reloads the cgroup from state.json and removes it.
    let saved = serde_json::to_string(&cg).unwrap();
    let reloaded: Cgroup = serde_json::from_str(&saved).unwrap();
    g.kill_children();
    reloaded.destroy().unwrap();
    for p in &cg.created {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    let err = reloaded
        .update(&resources(r#"{"pids":{"limit":5}}"#))
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    reloaded.destroy().expect("destroy is idempotent");
}

#[test]
fn v1_preexisting_parent_is_kept_and_shared_parent_survives() {
    if !host_has_v1() {
        return;
    }
    let name = unique("parent");
    let probe = Cgroup::resolve(Some(Path::new(&format!("/{name}/a"))), &name).unwrap();
    let mem_parent = probe
        .v1_path("memory")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::create_dir(&mem_parent).unwrap();
    let mut ga = Guard::new(probe);
    ga.extra_dirs.push(mem_parent.clone());
    ga.cg.create(None).unwrap();
    assert!(!ga.cg.created.contains(&mem_parent));

    let mut gb =
        Guard::new(Cgroup::resolve(Some(Path::new(&format!("/{name}/b"))), &name).unwrap());
    gb.cg.create(None).unwrap();
    // a's destroy removes a only; the parent holds b (and pre-existed in memory).
    ga.cg.destroy().unwrap();
    for p in ga.cg.paths() {
        assert!(!p.exists(), "{}", p.display());
    }
    let cpu_parent = gb
        .cg
        .v1_path("cpu")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        cpu_parent.exists(),
        "shared parent created by a must stay while b lives"
    );
    assert!(mem_parent.exists());
    // b created nothing above its leaf (a made the parents), so b leaves them too;
    // the guard of a no longer owns them either: remove by hand.
    gb.cg.destroy().unwrap();
    for p in gb.cg.paths() {
        assert!(!p.exists(), "{}", p.display());
        let _ = std::fs::remove_dir(p.parent().unwrap());
    }
    assert!(!mem_parent.exists() || std::fs::remove_dir(&mem_parent).is_ok());
}

#[test]
fn v1_missing_controller_fails_and_rolls_back() {
    if !host_has_v1() {
        return;
    }
    let name = unique("rollback");
    let mut cg = Cgroup::resolve(Some(Path::new(&format!("/{name}/x"))), &name).unwrap();
    let _g = Guard::new(cg.clone());
    let wants_hugetlb = cg.v1_path("hugetlb").is_none();
    let r = if wants_hugetlb {
        resources(r#"{"pids":{"limit":5},"hugepageLimits":[{"pageSize":"2MB","limit":1048576}]}"#)
    } else {
        resources(r#"{"cpu":{"shares":1}, "memory":{"swappiness":1000}}"#)
    };
    let err = cg.create(Some(&r)).unwrap_err();
    if wants_hugetlb {
        assert!(
            matches!(
                err,
                CgroupError::ControllerMissing {
                    controller: "hugetlb",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("hugetlb"), "{err}");
    }
    assert!(cg.created.is_empty());
    for p in cg.paths() {
        assert!(
            !p.exists(),
            "{} left behind after a failed create",
            p.display()
        );
        assert!(
            !p.parent().unwrap().exists(),
            "{} left behind",
            p.parent().unwrap().display()
        );
    }
}

#[test]
fn v1_relative_path_is_under_own_cgroup() {
    if !host_has_v1() {
        return;
    }
    let name = unique("relative");
    let mut g = Guard::new(Cgroup::resolve(Some(Path::new(&name)), "ignored").unwrap());
    g.cg.create(None).unwrap();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own_mem = own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
        .unwrap();
    let expect = Path::new("/sys/fs/cgroup/memory")
        .join(own_mem.trim_start_matches('/'))
        .join(&name);
    assert_eq!(g.cg.v1_path("memory").unwrap(), expect);
    assert!(expect.is_dir());
    g.cg.destroy().unwrap();
    assert!(!expect.exists());
}

#[test]
fn v1_cpuset_spec_value_and_inherited_value() {
    if !host_has_v1() {
        return;
    }
    let name = unique("cpuset");
    let mut g =
        Guard::new(Cgroup::resolve(Some(Path::new(&format!("/{name}/a/b"))), &name).unwrap());
    g.cg.create(Some(&resources(r#"{"cpu":{"cpus":"0"}}"#)))
        .unwrap();
    let leaf = g.cg.v1_path("cpuset").unwrap().to_path_buf();
    let root = Path::new("/sys/fs/cgroup/cpuset");
    assert_eq!(read(&leaf, "cpuset.cpus"), "0");
    assert_eq!(read(&leaf, "cpuset.mems"), read(root, "cpuset.mems"));
    assert_eq!(
        read(leaf.parent().unwrap(), "cpuset.cpus"),
        read(root, "cpuset.cpus")
    );
    let pid = g.spawn(&mut sleeper());
    g.cg.add_process(pid).unwrap();
    let allowed = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        allowed
            .lines()
            .any(|l| l.starts_with("Cpus_allowed_list:") && l.ends_with("\t0")),
        "{allowed}"
    );
}

#[test]
fn destroy_with_a_live_task_reports_busy_and_keeps_state() {
    if !host_has_v1() {
        return;
    }
    let name = unique("busy");
    let mut g = Guard::new(Cgroup::resolve(Some(Path::new(&format!("/{name}"))), &name).unwrap());
    g.cg.create(None).unwrap();
    let pid = g.spawn(&mut sleeper());
    g.cg.add_process(pid).unwrap();
    let err = g.cg.destroy().unwrap_err();
    assert!(matches!(err, CgroupError::Remove { .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    g.kill_children();
    g.cg.destroy().unwrap();
    for p in g.cg.paths() {
        assert!(!p.exists());
    }
}

/// The cgroup2 mount to exercise the v2 code path on.
/// None after a skip (a failure with STRATA_REQUIRE_E2E=1) when not root or no cgroup2 mount.
#[track_caller]
fn v2_mount() -> Option<PathBuf> {
    if !require(is_root(), "needs root") {
        return None;
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let m = mi
        .lines()
        .filter(|l| l.contains(" - cgroup2 "))
        .map(|l| PathBuf::from(l.split(' ').nth(4).unwrap()))
        .next();
    require(m.is_some(), "no cgroup2 mount");
    m
}

/// A shell in the cgroup that answers each input line with device probes.
struct Probe {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Probe {
    fn start(g: &mut Guard) -> (i32, Probe) {
        let script = r#"while read x; do
            if (exec 3</dev/null); then echo null-read-ok; else echo null-read-denied; fi
            if (exec 3>/dev/null); then echo null-write-ok; else echo null-write-denied; fi
            if (exec 3</dev/zero); then echo zero-ok; else echo zero-denied; fi
        done"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let pid = child.id() as i32;
        g.children.push(child);
        (pid, Probe { stdin, stdout })
    }

    fn ask(&mut self) -> Vec<String> {
        writeln!(self.stdin, "go").unwrap();
        (0..3)
            .map(|_| {
                let mut l = String::new();
                self.stdout.read_line(&mut l).unwrap();
                l.trim().to_owned()
            })
            .collect()
    }
}

#[test]
fn v2_devices_ebpf_freeze_pids_stats_destroy() {
    let Some(mount) = v2_mount() else { return };
    let name = unique("v2dev");
    let parent = mount.join(&name);
    let leaf = parent.join("ctr");
    let mut g = Guard::new(Cgroup::v2_at(&mount, &leaf).unwrap());
    let r = resources(
        r#"{"devices":[
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "w"}
        ]}"#,
    );
    g.cg.create(Some(&r)).unwrap();
    assert_eq!(g.cg.created, vec![parent.clone(), leaf.clone()]);
    assert_eq!(attached_device_programs(&leaf).unwrap(), 1);

    let (pid, mut probe) = Probe::start(&mut g);
    let cg = g.cg.clone();
    cg.add_process(pid).unwrap();
    assert_eq!(
        probe.ask(),
        ["null-read-ok", "null-write-denied", "zero-denied"]
    );

    // Update replaces the program rather than stacking a second one.
    cg.update(&resources(r#"{"devices":[{"allow": false, "access": "rwm"},{"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"},{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"}]}"#)).unwrap();
    assert_eq!(attached_device_programs(&leaf).unwrap(), 1);
    assert_eq!(probe.ask(), ["null-read-ok", "null-write-ok", "zero-ok"]);

    // The shell and its probe subshells are all in the cgroup; only the shell remains now.
    assert_eq!(cg.pids().unwrap(), vec![pid]);

    cg.freeze().unwrap();
    assert!(cg.is_frozen().unwrap());
    assert!(read(&leaf, "cgroup.events")
        .lines()
        .any(|l| l == "frozen 1"));
    cg.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());
    assert_eq!(
        probe.ask(),
        ["null-read-ok", "null-write-ok", "zero-ok"],
        "thawed shell answers again"
    );

    let stats = cg.stats().unwrap();
    assert!(
        stats.cpu.usage.total > 0,
        "the shell used some CPU: {stats:?}"
    );

    drop(probe);
    g.kill_children();
    cg.destroy().unwrap();
    assert!(!leaf.exists() && !parent.exists());
}

#[test]
fn v2_resource_without_controller_is_a_clear_error_and_rolls_back() {
    let Some(mount) = v2_mount() else { return };
    let avail = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap();
    if avail.split_whitespace().any(|c| c == "pids") {
        skip_or_fail(format!(
            "the cgroup2 mount {} has the pids controller (this test needs one without it, \
             as on a hybrid host)",
            mount.display()
        ));
        return;
    }
    let leaf = mount.join(unique("v2missing")).join("c");
    let mut cg = Cgroup::v2_at(&mount, &leaf).unwrap();
    let _g = Guard::new(cg.clone());
    let err = cg
        .create(Some(&resources(r#"{"pids":{"limit":10}}"#)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::ControllerMissing {
                controller: "pids",
                ..
            }
        ),
        "{err}"
    );
    assert!(!leaf.parent().unwrap().exists(), "rolled back");
}

#[test]
fn bad_cgroups_paths_are_refused_before_anything_is_created() {
    assert!(Cgroup::resolve(None, "").is_err());
    assert!(Cgroup::resolve(None, "../x").is_err());
    assert!(Cgroup::resolve(Some(Path::new("/")), "x").is_err());
    // `..` cannot climb out of the hierarchy: cleaned like runc's CleanPath, "/../../../etc"
    // is "/etc" in every hierarchy. Checked on canonical paths (Path::starts_with compares
    // components and would take `/sys/fs/cgroup/memory/../../../etc` as inside).
    let cg = Cgroup::resolve(Some(Path::new("/../../../etc")), "x").expect("resolve");
    let top = std::fs::canonicalize("/sys/fs/cgroup").unwrap();
    assert!(!cg.paths().is_empty());
    for p in cg.paths() {
        let c = canonical(p);
        assert!(
            c.starts_with(&top) && c.file_name() == Some("etc".as_ref()),
            "{} (canonical {}) is not <hierarchy>/etc under {}",
            p.display(),
            c.display(),
            top.display()
        );
    }
}

/// `p` with symlinks and `..` resolved: its deepest existing ancestor canonicalized by the
/// kernel, the rest (which does not exist, so holds no symlink) cleaned lexically.
fn canonical(p: &Path) -> PathBuf {
    let base = p.ancestors().find(|a| a.exists()).expect("/ exists");
    let mut out = std::fs::canonicalize(base).unwrap();
    for c in p.strip_prefix(base).unwrap().components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

#[test]
fn v1_destroy_removes_sub_cgroups_the_container_made() {
    if !host_has_v1() {
        return;
    }
    // destroy tries one rmdir per leaf first; a leaf with sub-cgroups (EBUSY) is walked.
    let name = unique("subtree");
    let path = format!("/{name}/ctr");
    let mut g = Guard::new(Cgroup::resolve(Some(Path::new(&path)), &name).unwrap());
    g.cg.create(None).unwrap();
    let leaves: Vec<PathBuf> = g.cg.paths().iter().map(|p| p.to_path_buf()).collect();
    for leaf in &leaves {
        std::fs::create_dir_all(leaf.join("inner/deeper")).unwrap();
    }
    g.cg.destroy().unwrap();
    for leaf in &leaves {
        assert!(!leaf.exists(), "{} left behind", leaf.display());
    }
    for p in &g.cg.created {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}
