//! A leak checker for the load and fault tests (issue 14): [`Snapshot::take`] before, again
//! after, and [`Snapshot::leaks_since`] lists what the test's instances left behind: mounts,
//! cgroup directories in every hierarchy (v1 controllers and /sys/fs/cgroup/unified), processes,
//! loop devices, state and temp directories. [`ProcUsage`] follows the fd count and RSS of a
//! long-lived process (the monitor, the VM keeper).
//!
//! Tests run next to other tests on the same host, so a snapshot only looks at what belongs to
//! this test: its [`Scope`] names its paths (store, state root, bundles) and ids (container ids,
//! markers put in commands); a mount, cgroup, process or temp entry counts when its path or
//! command line contains one of them (a VM's host processes name neither: they are found
//! through the cgroups they keep from being removed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What belongs to one test.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Directories of the test (store, --root, bundles): mounts at or under them, processes
    /// naming them, loop devices backed by files under them.
    pub paths: Vec<PathBuf>,
    /// Container ids and markers: cgroup directories, processes and temp entries naming them.
    pub ids: Vec<String>,
    /// Directories that must be empty (or absent) when nothing is left, e.g. the runtime root.
    pub empty_dirs: Vec<PathBuf>,
}

impl Scope {
    pub fn new() -> Scope {
        Scope::default()
    }

    pub fn path(mut self, p: impl Into<PathBuf>) -> Scope {
        self.paths.push(p.into());
        self
    }

    pub fn id(mut self, id: impl Into<String>) -> Scope {
        self.add_id(id);
        self
    }

    pub fn empty_dir(mut self, p: impl Into<PathBuf>) -> Scope {
        self.empty_dirs.push(p.into());
        self
    }

    pub fn add_id(&mut self, id: impl Into<String>) {
        let id = id.into();
        if !id.is_empty() && !self.ids.contains(&id) {
            self.ids.push(id);
        }
    }

    fn names(&self, s: &str) -> bool {
        self.ids.iter().any(|i| s.contains(i.as_str()))
            || self
                .paths
                .iter()
                .any(|p| s.contains(p.to_string_lossy().as_ref()))
    }
}

/// What existed of a scope at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub mounts: BTreeSet<String>,
    pub cgroups: BTreeSet<String>,
    pub procs: BTreeSet<String>,
    pub loops: BTreeSet<String>,
    pub dir_entries: BTreeSet<String>,
    pub temp_entries: BTreeSet<String>,
}

impl Snapshot {
    pub fn take(scope: &Scope) -> Snapshot {
        Snapshot {
            mounts: mounts(scope),
            cgroups: cgroups(scope),
            procs: procs(scope),
            loops: loops(scope),
            dir_entries: dir_entries(scope),
            temp_entries: temp_entries(scope),
        }
    }

    /// Everything of the scope that exists now and did not in `before`, one line each.
    pub fn leaks_since(&self, before: &Snapshot) -> Vec<String> {
        let mut v = Vec::new();
        let mut diff = |kind: &str, now: &BTreeSet<String>, then: &BTreeSet<String>| {
            for x in now.difference(then) {
                v.push(format!("{kind}: {x}"));
            }
        };
        diff("mount", &self.mounts, &before.mounts);
        diff("cgroup", &self.cgroups, &before.cgroups);
        diff("process", &self.procs, &before.procs);
        diff("loop device", &self.loops, &before.loops);
        diff("state entry", &self.dir_entries, &before.dir_entries);
        diff("temp entry", &self.temp_entries, &before.temp_entries);
        v
    }
}

/// Takes snapshots until nothing new is left (processes and cgroups go away asynchronously
/// after a SIGKILL), up to `secs`; returns what is still left then.
pub fn settle_leaks(scope: &Scope, before: &Snapshot, secs: u64) -> Vec<String> {
    let t = std::time::Instant::now();
    loop {
        let left = Snapshot::take(scope).leaks_since(before);
        if left.is_empty() || t.elapsed() > std::time::Duration::from_secs(secs) {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Panics with the list when anything of `scope` is left compared with `before`.
pub fn assert_no_leaks(what: &str, scope: &Scope, before: &Snapshot) {
    let left = settle_leaks(scope, before, 10);
    assert!(
        left.is_empty(),
        "{what}: left behind:\n  {}",
        left.join("\n  ")
    );
}

/// Mount points at or under the scope's paths, or whose source or options name an id
/// (overlay lowerdirs/upperdirs in the store name it).
fn mounts(scope: &Scope) -> BTreeSet<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mi.lines()
        .filter(|l| {
            let point = l.split(' ').nth(4).unwrap_or("");
            scope.paths.iter().any(|p| Path::new(point).starts_with(p)) || scope.names(l)
        })
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            // mount point and what is mounted there (the id field changes on every mount).
            format!("{} ({})", f.get(4).unwrap_or(&""), f.get(3).unwrap_or(&""))
        })
        .collect()
}

/// Cgroup directories (up to 4 levels down every hierarchy) whose path names an id.
fn cgroups(scope: &Scope) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if scope.ids.is_empty() {
        return out;
    }
    for h in hierarchies() {
        walk(&h, 0, &mut |d| {
            let s = d.to_string_lossy();
            let rel = s.strip_prefix(h.to_string_lossy().as_ref()).unwrap_or(&s);
            if scope.ids.iter().any(|i| rel.contains(i.as_str())) {
                let procs = std::fs::read_to_string(d.join("cgroup.procs"))
                    .map(|p| p.lines().count())
                    .unwrap_or(0);
                out.insert(format!("{s} ({procs} processes)"));
            }
        });
    }
    out
}

/// Every cgroup hierarchy mounted here: v1 controllers and the unified (v2) one.
pub fn hierarchies() -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = mi
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap_or("")))
        })
        .filter(|p| p.starts_with("/sys/fs/cgroup"))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn walk(d: &Path, depth: usize, f: &mut impl FnMut(&Path)) {
    if depth > 4 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(d) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            f(&p);
            walk(&p, depth + 1, f);
        }
    }
}

/// Live processes whose command line names the scope (zombies are their parent's to reap:
/// with tests running in parallel threads, or as a subreaper, those are the test's own).
fn procs(scope: &Scope) -> BTreeSet<String> {
    let me = std::process::id() as i32;
    let mut lines = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let state = after.split(' ').next().unwrap_or("");
        if state == "Z" {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        lines.push((pid, state.to_string(), cmd));
    }
    lines
        .into_iter()
        .filter(|(pid, _, cmd)| *pid != me && scope.names(cmd))
        .map(|(pid, state, cmd)| format!("{pid} [{state}] {}", cmd.trim_end()))
        .collect()
}

/// Loop devices backed by a file under the scope's paths or naming an id.
fn loops(scope: &Scope) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            let b = b.trim();
            if scope.paths.iter().any(|p| Path::new(b).starts_with(p)) || scope.names(b) {
                out.insert(format!("/dev/{name} -> {b}"));
            }
        }
    }
    out
}

/// Entries of the directories that must end up empty, but hidden ones (caches kept on
/// purpose: the VM area's `.cache` of agent initramfs archives, the store's `.names`) and
/// the directories that are themselves checked (`vm/` in a runtime root).
fn dir_entries(scope: &Scope) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in &scope.empty_dirs {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if !e.file_name().to_string_lossy().starts_with('.') && !scope.empty_dirs.contains(&p) {
                out.insert(p.display().to_string());
            }
        }
    }
    out
}

/// Entries of the temp directory (and /run, /dev/shm, where runtimes keep sockets and state)
/// whose names contain an id.
fn temp_entries(scope: &Scope) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if scope.ids.is_empty() {
        return out;
    }
    for d in [std::env::temp_dir(), "/run".into(), "/dev/shm".into()] {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if scope.ids.iter().any(|i| n.contains(i.as_str())) {
                out.insert(e.path().display().to_string());
            }
        }
    }
    out
}

/// The fd count and resident memory of one process (a long-lived one: monitor, keeper).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcUsage {
    pub fds: usize,
    pub rss_kib: u64,
}

impl ProcUsage {
    pub fn of(pid: i32) -> Option<ProcUsage> {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Some(ProcUsage { fds, rss_kib })
    }
}

/// Host cgroup directories (every hierarchy) of a cgroups path relative to each root, e.g.
/// `/strata/<id>`.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(path.trim_start_matches('/')))
        .filter(|d| d.exists())
        .collect()
}
