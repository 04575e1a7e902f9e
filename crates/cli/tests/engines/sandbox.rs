//! A per-test private directory plus cgroup name that are torn down completely on drop, even when the
//! test panics: every process that mentions the directory or lives in the test's cgroups is killed,
//! every mount under the directory is detached, the cgroups are removed, the directory is deleted.
//!
//! Drop does not run when the test binary is killed (CI's timeout sends SIGTERM, an OOM kill is
//! SIGKILL), so each sandbox also starts a watchdog: this test binary again, in its own session,
//! running only [`sandbox_watchdog`], reading a pipe whose other end only this process holds.
//! The sandbox tells it what it adopts; when the pipe closes without a final `done` (the test
//! process died), the watchdog tears the sandbox down the same way Drop does.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Where cgroup v1 controllers, the named systemd hierarchy and the cgroup2 mount live on this host.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A unique temp dir (`/tmp/se-<tag>-<pid>-<n>`) and a cgroup parent of the same name.
pub struct Sandbox {
    pub dir: PathBuf,
    /// Unique name, also used as the cgroup parent (`/<name>`) and the containerd namespace.
    pub name: String,
    /// Daemons started in this sandbox, stopped gracefully first on drop.
    daemons: Vec<std::process::Child>,
    /// Host paths outside the sandbox that an engine creates and the sandbox removes.
    host_paths: Vec<PathBuf>,
    /// Daemons a killed test process left (the watchdog's view: not its children).
    orphans: Vec<i32>,
    watchdog: Option<Watchdog>,
}

/// The watchdog process and the write end of its pipe.
struct Watchdog {
    child: std::process::Child,
    pipe: std::io::PipeWriter,
}

/// Names the sandbox a watchdog process guards.
const WATCHDOG_ENV: &str = "STRATA_TEST_SANDBOX_WATCHDOG";

impl Sandbox {
    /// Creates the directory. Short paths: unix socket paths are limited to 108 bytes.
    pub fn new(tag: &str) -> Sandbox {
        let name = format!(
            "se-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let dir = PathBuf::from("/tmp").join(&name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create sandbox {}: {e}", dir.display()));
        let watchdog = Some(start_watchdog(&name));
        Sandbox {
            dir,
            name,
            daemons: Vec::new(),
            host_paths: Vec::new(),
            orphans: Vec::new(),
            watchdog,
        }
    }

    /// A sandbox named `name` created by another process (the watchdog's, or a test's safety
    /// net for a sandbox whose watchdog failed): dropping it tears it down.
    pub fn reclaim(name: &str) -> Sandbox {
        Sandbox {
            dir: PathBuf::from("/tmp").join(name),
            name: name.to_string(),
            daemons: Vec::new(),
            host_paths: Vec::new(),
            orphans: Vec::new(),
            watchdog: None,
        }
    }

    /// The watchdog process's pid.
    pub fn watchdog_pid(&self) -> Option<u32> {
        self.watchdog.as_ref().map(|w| w.child.id())
    }

    /// Tells the watchdog one line (`daemon PID`, `host-path PATH`, `done`).
    fn tell_watchdog(&mut self, line: &str) {
        if let Some(w) = &mut self.watchdog {
            let _ = writeln!(w.pipe, "{line}");
        }
    }

    /// A path inside the sandbox (not created).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `/<name>`: the cgroup parent every container of this sandbox is placed under.
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.name)
    }

    /// Hands a started daemon to the sandbox, which stops it (SIGTERM, then SIGKILL) on drop.
    pub fn adopt(&mut self, child: std::process::Child) {
        self.tell_watchdog(&format!("daemon {}", child.id()));
        self.daemons.push(child);
    }

    /// Removes `path` on drop if it does not exist now (files an engine insists on writing outside
    /// its configured roots). Register children before parents.
    pub fn remove_if_created(&mut self, path: &str) {
        let p = PathBuf::from(path);
        if fs::symlink_metadata(&p).is_err() {
            self.tell_watchdog(&format!("host-path {path}"));
            self.host_paths.push(p);
        }
    }

    /// Records the host network device `name` (a bridge an engine makes on first use of its
    /// default network, e.g. Podman's cni-podman0) for removal with the sandbox, when it does
    /// not exist yet. Kept with the host paths as `/sys/class/net/<name>`.
    pub fn remove_link_if_created(&mut self, name: &str) {
        self.remove_if_created(&format!("/sys/class/net/{name}"));
    }

    /// Whether the adopted daemon with this pid has exited (reaping it).
    pub fn daemon_exited(&mut self, pid: i32) -> bool {
        self.daemons
            .iter_mut()
            .find(|c| c.id() as i32 == pid)
            .map(|c| matches!(c.try_wait(), Ok(Some(_))))
            .unwrap_or(true)
    }

    /// Pids of processes that belong to this sandbox: their command line mentions the directory,
    /// or one of their cgroups is under the sandbox's cgroup parent, or they descend from such a
    /// process (containers under a shim or conmon, even if a runtime ignored the cgroup parent).
    pub fn processes(&self) -> Vec<i32> {
        let dir = self.dir.to_string_lossy().into_owned();
        let cg = format!(":{}", self.cgroup_parent());
        let me = std::process::id() as i32;
        let mut roots = BTreeSet::new();
        let mut parent_of = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            // The ppid is the 2nd field after the parenthesised command name.
            let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
                .unwrap_or(0);
            parent_of.push((pid, ppid));
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let cgroups = fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            let in_cgroup = cgroups.lines().any(|l| {
                l.split_once(':')
                    .map(|(_, rest)| rest.contains(&format!("{cg}/")) || rest.ends_with(&cg))
                    .unwrap_or(false)
            });
            if cmdline.contains(&dir) || in_cgroup {
                roots.insert(pid);
            }
        }
        // Close over descendants (a few passes suffice for these shallow trees).
        loop {
            let before = roots.len();
            for &(pid, ppid) in &parent_of {
                if pid != me && roots.contains(&ppid) {
                    roots.insert(pid);
                }
            }
            if roots.len() == before {
                break;
            }
        }
        roots.into_iter().collect()
    }

    /// Every cgroup directory under `/<name>` in every hierarchy, deepest first.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut found = BTreeSet::new();
        let Ok(hierarchies) = fs::read_dir(CGROUP_ROOT) else {
            return Vec::new();
        };
        for h in hierarchies.flatten() {
            let top = h.path().join(&self.name);
            if top.is_dir() {
                collect_dirs(&top, &mut found);
            }
        }
        let mut v: Vec<PathBuf> = found.into_iter().collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        v
    }

    fn thaw(&self) {
        for d in self.cgroup_dirs() {
            let state = d.join("freezer.state");
            if state.exists() {
                let _ = fs::write(&state, "THAWED");
            }
            let freeze = d.join("cgroup.freeze");
            if freeze.exists() {
                let _ = fs::write(&freeze, "0");
            }
        }
    }

    fn stop_daemons(&mut self) {
        for c in &self.daemons {
            // SAFETY: kill(2) on a child we spawned; no memory is touched.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for &pid in &self.orphans {
            // SAFETY: kill(2) with a pid the test process reported adopting; no memory is touched.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for &pid in &self.orphans {
            while Instant::now() < deadline && alive(pid) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for c in &mut self.daemons {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.daemons.clear();
    }

    fn kill_everything(&self) {
        for _round in 0..50 {
            self.thaw();
            let pids = self.processes();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid read from /proc; no memory is touched.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "sandbox {}: processes still alive: {:?}",
            self.name,
            self.processes()
        );
    }

    fn unmount_everything(&self) {
        for _round in 0..5 {
            let mounts = mounts_under(&self.dir);
            if mounts.is_empty() {
                return;
            }
            for m in mounts {
                let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
                    continue;
                };
                // SAFETY: umount2(2) with a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }

    /// Podman passes no `--root`, so runtimes keep its containers' state in their default roots;
    /// remove the state directories whose state.json points into the sandbox (bundle, rootfs).
    fn remove_default_root_state(&self) {
        let dir = self.dir.to_string_lossy().into_owned();
        for root in ["/run/strata", "/run/runc"] {
            let Ok(entries) = fs::read_dir(root) else {
                continue;
            };
            for e in entries.flatten() {
                let state = fs::read_to_string(e.path().join("state.json")).unwrap_or_default();
                if state.contains(&dir) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// VMs strata-oci ran for this sandbox: their state (`<root>/vm/<id>/state.json`, under the
    /// sandbox or strata's default root /run/strata) lists their host cgroups, which live under
    /// `strata-vm/`, outside the sandbox's cgroup parent. What is left in them is killed and they
    /// are removed (with the state when it is outside the sandbox).
    fn remove_vm_leftovers(&self) {
        let dir = self.dir.to_string_lossy().into_owned();
        let mut states = Vec::new();
        find_named(&self.dir, "state.json", &mut states);
        if let Ok(rd) = fs::read_dir("/run/strata/vm") {
            for e in rd.flatten() {
                let f = e.path().join("state.json");
                if fs::read_to_string(&f).is_ok_and(|s| s.contains(&dir)) {
                    states.push(f);
                }
            }
        }
        for f in states {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(
                &fs::read_to_string(&f).unwrap_or_default(),
            ) else {
                continue;
            };
            let Some(dirs) = v["cgroup_dirs"].as_array() else {
                continue;
            };
            for d in dirs.iter().filter_map(|d| d.as_str()) {
                let d = Path::new(d);
                if d.to_string_lossy().contains("/strata-vm/") {
                    remove_cgroup(d);
                }
            }
            if f.starts_with("/run/strata/vm") {
                if let Some(state_dir) = f.parent() {
                    let _ = fs::remove_dir_all(state_dir);
                }
            }
        }
        for ctrl in ["memory", "pids", "freezer", "cpu"] {
            // The shared parent goes with the last VM (busy while another test's VM runs).
            let _ = fs::remove_dir(Path::new(CGROUP_ROOT).join(ctrl).join("strata-vm"));
        }
    }

    /// containerd shims listen on `/run/containerd/s/<hash>`, outside the sandbox; each shim records
    /// that address in an `address` file in its bundle, which is inside the sandbox.
    fn remove_shim_sockets(&self) {
        let mut files = Vec::new();
        find_named(&self.dir, "address", &mut files);
        for f in files {
            let Ok(addr) = fs::read_to_string(&f) else {
                continue;
            };
            let path = addr.trim().trim_start_matches("unix://");
            if path.starts_with("/run/containerd/s/") {
                let _ = fs::remove_file(path);
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.teardown();
        if let Some(mut w) = self.watchdog.take() {
            let _ = writeln!(w.pipe, "done");
            drop(w.pipe);
            let _ = w.child.wait();
        }
    }
}

impl Sandbox {
    fn teardown(&mut self) {
        self.stop_daemons();
        self.kill_everything();
        self.remove_shim_sockets();
        self.remove_vm_leftovers();
        self.remove_default_root_state();
        self.unmount_everything();
        for d in self.cgroup_dirs() {
            let _ = fs::remove_dir(&d);
        }
        let left = self.cgroup_dirs();
        if !left.is_empty() {
            eprintln!("sandbox {}: cgroups left behind: {left:?}", self.name);
        }
        for p in &self.host_paths {
            if let Ok(link) = p.strip_prefix("/sys/class/net") {
                let _ = std::process::Command::new("ip")
                    .args(["link", "del"])
                    .arg(link)
                    .stderr(std::process::Stdio::null())
                    .status();
            } else if p.is_dir() {
                let _ = fs::remove_dir_all(p);
            } else {
                let _ = fs::remove_file(p);
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "sandbox {}: cannot remove {}: {e}",
                self.name,
                self.dir.display()
            );
        }
    }
}

/// Thaws a cgroup directory, kills what is in it and removes it (for up to 5 s).
fn remove_cgroup(d: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.exists() && Instant::now() < deadline {
        let _ = fs::write(d.join("freezer.state"), "THAWED");
        for pid in fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) with a pid listed in a VM cgroup of this sandbox; no memory is touched.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if fs::remove_dir(d).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if d.exists() {
        eprintln!("sandbox: VM cgroup {} left behind", d.display());
    }
}

fn collect_dirs(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    out.insert(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn find_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            // Container root filesystems are large and never hold shim addresses.
            if e.file_name() != "rootfs" {
                find_named(&e.path(), name, out);
            }
        } else if e.file_name() == name {
            out.push(e.path());
        }
    }
}

/// Mount points at or under `dir` in this mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// The libtest name of [`sandbox_watchdog`] in whichever test binary includes this file.
fn watchdog_test_name() -> String {
    let module = module_path!();
    let inner = module.split_once("::").map(|(_, m)| m).unwrap_or("");
    if inner.is_empty() {
        "sandbox_watchdog".to_string()
    } else {
        format!("{inner}::sandbox_watchdog")
    }
}

/// Starts this test binary as the watchdog of sandbox `name`, in its own session (a signal to
/// the test's process group does not reach it).
fn start_watchdog(name: &str) -> Watchdog {
    use std::os::unix::process::CommandExt;
    let (reader, pipe) = std::io::pipe().expect("create the sandbox watchdog's pipe");
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .arg(watchdog_test_name())
    .env(WATCHDOG_ENV, name)
    .stdin(reader)
    .stdout(std::process::Stdio::null());
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start the sandbox watchdog");
    Watchdog { child, pipe }
}

/// The watchdog process (started by [`Sandbox::new`], not a test of its own): reads what the
/// test process reports until the pipe closes; without a final `done`, tears the sandbox down.
#[test]
#[ignore = "helper: the sandbox watchdog's entry point, Sandbox::new starts it with the sandbox's name"]
fn sandbox_watchdog() {
    let Ok(name) = std::env::var(WATCHDOG_ENV) else {
        return;
    };
    let mut sb = Sandbox::reclaim(&name);
    let mut done = false;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Some(pid) = line.strip_prefix("daemon ") {
            sb.orphans.extend(pid.parse::<i32>().ok());
        } else if let Some(p) = line.strip_prefix("host-path ") {
            sb.host_paths.push(PathBuf::from(p));
        } else if line == "done" {
            done = true;
        }
    }
    if done {
        std::mem::forget(sb);
        return;
    }
    eprintln!("sandbox {name}: the test process died: its watchdog tears the sandbox down");
    drop(sb);
}
