//! Helpers of the `strata` container-command tests: a sandbox with its own store and runtime
//! root (removed on drop, with every container in it, even when the test fails), commands with
//! a time limit, and the "nothing left behind" checks.
//!
//! Tests are functions over an isolation ("container"; the VM layer adds "vm"): write
//! `fn case(iso: &str)` and list it in [`isolation_tests!`], which makes one #[test] per
//! isolation.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Makes `mod container { #[test] fn case() { super::case("container") } ... }` for every case,
/// and the same for `vm` (the default VM platform, uml here) and `vm_qemu` (`--platform qemu`):
/// every case runs on every isolation and VM platform. `iso.starts_with("vm")` is any VM.
#[macro_export]
macro_rules! isolation_tests {
    ($($case:ident),* $(,)?) => {
        mod container {
            $(#[test] fn $case() { super::$case("container") })*
        }
        mod vm {
            $(#[test] fn $case() { super::$case("vm") })*
        }
        mod vm_qemu {
            $(#[test] fn $case() { super::$case("vm-qemu") })*
        }
    };
}

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// A store and runtime root of one test.
pub struct Sandbox {
    pub isolation: String,
    pub store: tempfile::TempDir,
    pub root: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox with the default busybox image built in it.
    pub fn new(isolation: &str) -> Sandbox {
        let mk = |p: &str| {
            tempfile::Builder::new()
                .prefix(p)
                .tempdir()
                .expect("temp dir")
        };
        let s = Sandbox {
            isolation: isolation.to_string(),
            store: mk("strata-cli-store-"),
            root: mk("strata-cli-root-"),
        };
        s.ok(&["image", "build-default"]);
        s
    }

    /// `strata --store S --root R --quiet`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(STRATA);
        c.arg("--store")
            .arg(self.store.path())
            .arg("--root")
            .arg(self.root.path())
            .arg("--quiet")
            .env_remove("STRATA_STORE")
            .env_remove("STRATA_ROOT");
        c
    }

    /// Flags `run`/`create` need for this isolation.
    pub fn iso_flags(&self) -> Vec<&'static str> {
        match self.isolation.as_str() {
            "container" => vec![],
            "vm" => vec!["--vm"],
            "vm-qemu" => vec!["--vm", "--platform", "qemu"],
            other => panic!("unknown isolation {other}"),
        }
    }

    /// Args with the isolation flags inserted after the `run`/`create` word.
    fn full_args<'a>(&self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v: Vec<&str> = args.to_vec();
        if matches!(v.first(), Some(&"run") | Some(&"create")) {
            for (i, f) in self.iso_flags().into_iter().enumerate() {
                v.insert(1 + i, f);
            }
        }
        v
    }

    /// Runs strata with stdin from `input` (or /dev/null), killed after 120 s.
    pub fn strata_in(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut c = self.cmd();
        c.args(self.full_args(args));
        output_timeout(c, input, Duration::from_secs(120))
    }

    pub fn strata(&self, args: &[&str]) -> Output {
        self.strata_in(args, None)
    }

    /// Runs strata, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.strata(args);
        assert!(
            o.status.success(),
            "strata {args:?} failed ({:?}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8")
    }

    /// Runs strata, asserts failure, returns (exit code, stderr).
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let o = self.strata(args);
        assert!(
            !o.status.success(),
            "strata {args:?} succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// `ps -a --json` parsed.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ps", "-a", "--json"])).expect("ps prints JSON")
    }

    /// `inspect` of one container.
    pub fn inspect(&self, c: &str) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["inspect", c])).expect("inspect prints JSON");
        v[0].clone()
    }

    /// Polls until `f` holds, up to `secs`.
    pub fn eventually(&self, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts the store and root hold no container, mount, hold or runtime state, and that the
    /// given cgroup directories are gone.
    pub fn assert_nothing_left(&self, cgroups: &[PathBuf]) {
        let containers = self.store.path().join("containers");
        let left: Vec<String> = std::fs::read_dir(&containers)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.iter().all(|n| n == ".names"),
            "container dirs left: {left:?}"
        );
        let names: Vec<_> = std::fs::read_dir(containers.join(".names"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(names.is_empty(), "names left: {names:?}");
        let holds: Vec<_> = std::fs::read_dir(self.store.path().join("holds"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(holds.is_empty(), "image holds left: {holds:?}");
        let state: Vec<_> = std::fs::read_dir(self.root.path())
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(state.is_empty(), "runtime state left: {state:?}");
        let mounts = mounts_under(self.store.path());
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        for c in cgroups {
            assert!(!c.exists(), "cgroup left: {}", c.display());
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Every container, running or not, with its monitor, mounts and cgroups.
        if let Ok(o) = self.cmd().args(["ps", "-a", "--json"]).output() {
            if let Ok(v) = serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout) {
                for c in v {
                    if let Some(id) = c["Id"].as_str() {
                        let _ = self.cmd().args(["rm", "-f", id]).output();
                        for d in cgroup_dirs_of(id) {
                            let _ = std::fs::remove_dir(d);
                        }
                    }
                }
            }
        }
        for m in mounts_under(self.store.path()).into_iter().rev() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The host cgroup directories a container id would use (/sys/fs/cgroup/<ctrl>/strata/<id>).
pub fn cgroup_dirs_of(id: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            // Containers use strata/<id>; VMs strata-vm/<id> (crates/vmm cgroup.rs).
            for parent in ["strata", "strata-vm"] {
                let d = e.path().join(parent).join(id);
                if d.exists() {
                    v.push(d);
                }
            }
        }
    }
    v
}

/// The host cgroup directories of a container, from the /proc/self/cgroup its process printed.
pub fn host_cgroups(proc_self_cgroup: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for l in proc_self_cgroup.lines() {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if path.len() < 2 {
            continue;
        }
        for ctrl in ctrls.split(',') {
            let ctrl = ctrl.trim_start_matches("name=");
            let base = if ctrl.is_empty() { "unified" } else { ctrl };
            v.push(
                Path::new("/sys/fs/cgroup")
                    .join(base)
                    .join(path.trim_start_matches('/')),
            );
        }
    }
    v
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mi.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Runs a command with stdin from `input`, capturing stdout and stderr; kills it after `limit`.
pub fn output_timeout(mut c: Command, input: Option<&[u8]>, limit: Duration) -> Output {
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn strata");
    if let Some(i) = input {
        let mut stdin = child.stdin.take().unwrap();
        let i = i.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&i);
        });
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let te = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("{c:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
