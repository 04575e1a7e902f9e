//! Shared helpers of the strata-oci end-to-end tests: a busybox bundle built from Debian's
//! busybox-static, a per-test state root, and checks that nothing is left behind.
#![allow(dead_code)]

pub mod leaks;
pub mod proc_cgroup;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

/// The binary under test.
pub fn oci_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata-oci")
}

/// Root and /bin/busybox, which every test here needs (namespaces, mounts, cgroups, bundles);
/// false after a skip (a failure with STRATA_REQUIRE_E2E=1) when one is missing.
#[track_caller]
pub fn root_or_skip() -> bool {
    strata_testkit::root_and_busybox()
}

/// A unique container id for this test process.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A busybox bundle in a temp dir: rootfs/bin/busybox + applet symlinks, config.json from
/// `strata-oci spec` (non-interactive, cgroupsPath unique to the test).
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub config: Value,
}

impl Bundle {
    /// A bundle running `sh -c script` as container `id` (the id names its cgroup).
    pub fn sh(id: &str, script: &str) -> Bundle {
        Bundle::new(id, &["sh", "-c", script])
    }

    pub fn new(id: &str, args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("strata-oci-test-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in applets() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
        let out = Command::new(oci_bin())
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["linux"]["cgroupsPath"] = json!(format!("/strata-test-{id}"));
        let b = Bundle { dir, config };
        b.save();
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Writes `config` to config.json.
    pub fn save(&self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// Edits the config and saves it.
    pub fn edit(&mut self, f: impl FnOnce(&mut Value)) {
        f(&mut self.config);
        self.save();
    }
}

fn applets() -> Vec<String> {
    static LIST: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        let out = Command::new("/bin/busybox").arg("--list").output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
    .clone()
}

/// A state root for one test; on drop force-deletes every container it saw.
pub struct Oci {
    pub root: tempfile::TempDir,
    ids: std::sync::Mutex<Vec<String>>,
}

impl Oci {
    pub fn new() -> Oci {
        Oci {
            root: tempfile::Builder::new()
                .prefix("strata-oci-root-")
                .tempdir()
                .unwrap(),
            ids: Default::default(),
        }
    }

    /// `strata-oci --root R args`, stdin closed; its last arg is taken as a container id to
    /// delete on drop.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(oci_bin());
        c.arg("--root").arg(self.root.path()).args(args);
        self.track(args.last().copied().unwrap_or_default());
        c.stdin(Stdio::null());
        c
    }

    /// Deletes container `id` on drop too (for a test running strata-oci with its own Command).
    pub fn track(&self, id: &str) {
        if !id.is_empty() {
            self.ids.lock().unwrap().push(id.to_string());
        }
    }

    /// Runs strata-oci with `args` (after --root), stdin closed. Output goes through files,
    /// not pipes: a detached container inherits them and would hold a pipe open forever.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, None)
    }

    /// Runs strata-oci feeding `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        self.run_with(args, Some(input))
    }

    fn run_with(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        let err = std::fs::File::create(dir.path().join("err")).unwrap();
        let stdin = match input {
            Some(data) => {
                std::fs::write(dir.path().join("in"), data).unwrap();
                Stdio::from(std::fs::File::open(dir.path().join("in")).unwrap())
            }
            None => Stdio::null(),
        };
        let status = self
            .cmd(args)
            .stdin(stdin)
            .stdout(out)
            .stderr(err)
            .status()
            .unwrap();
        Output {
            status,
            stdout: std::fs::read(dir.path().join("out")).unwrap(),
            stderr: std::fs::read(dir.path().join("err")).unwrap(),
        }
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strata-oci {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "strata-oci {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `run` in the foreground; returns (exit code, stdout, stderr).
    pub fn run_container(&self, b: &Bundle, id: &str) -> (i32, String, String) {
        let out = self.run(&["run", "--bundle", b.path().to_str().unwrap(), id]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `create --bundle B extra.. id` with stdout/stderr in files: the container inherits them
    /// and outlives the command, so pipes would never reach EOF. Returns (success, stderr,
    /// path of the stdout file).
    pub fn create(
        &self,
        b: &Bundle,
        id: &str,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> (bool, String, PathBuf) {
        let out = b.path().join(format!("{id}.stdout"));
        let err = b.path().join(format!("{id}.stderr"));
        let mut args = vec!["create", "--bundle", b.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(id);
        let mut cmd = self.cmd(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let status = cmd
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        (
            status.success(),
            std::fs::read_to_string(&err).unwrap_or_default(),
            out,
        )
    }

    /// [`Oci::create`], asserting success; returns the path of the stdout file.
    pub fn create_ok(&self, b: &Bundle, id: &str, extra: &[&str]) -> PathBuf {
        let (ok, err, out) = self.create(b, id, extra, &[]);
        assert!(ok, "create {id}: {err}");
        out
    }

    /// The container's host pid from `state`.
    pub fn pid(&self, id: &str) -> i32 {
        let v: Value = serde_json::from_str(&self.ok(&["state", id])).unwrap();
        v["pid"].as_i64().unwrap() as i32
    }

    /// `run`, asserting exit 0; returns the container's stdout.
    pub fn output_of(&self, b: &Bundle, id: &str) -> String {
        let (code, out, err) = self.run_container(b, id);
        assert_eq!(code, 0, "container failed: stdout={out} stderr={err}");
        out
    }

    /// The container's status from `state`.
    pub fn status(&self, id: &str) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["state", id])).unwrap();
        v["status"].as_str().unwrap().to_string()
    }

    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.root.path().join(id)
    }
}

impl Drop for Oci {
    fn drop(&mut self) {
        // Every container under this root, whether or not a helper saw its id (a test may
        // create one with its own Command), is force-deleted.
        let mut ids = std::mem::take(&mut *self.ids.lock().unwrap());
        if let Ok(rd) = std::fs::read_dir(self.root.path()) {
            ids.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        // A VM's state lives under root/vm: without this a test that panics leaves its VM
        // (keeper and guest) running.
        let vm = self.root.path().join("vm");
        if let Ok(rd) = std::fs::read_dir(&vm) {
            ids.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.')),
            );
        }
        ids.sort();
        ids.dedup();
        for id in ids {
            if id != "vm" && (self.root.path().join(&id).exists() || vm.join(&id).exists()) {
                let _ = Command::new(oci_bin())
                    .arg("--root")
                    .arg(self.root.path())
                    .args(["delete", "--force", &id])
                    .output();
            }
        }
    }
}

/// Asserts nothing of container `id` from bundle `b` is left: no state dir, no mount
/// mentioning the bundle, no cgroup directory, no process rooted in the rootfs.
pub fn assert_clean(oci: &Oci, b: &Bundle, id: &str) {
    assert!(!oci.state_dir(id).exists(), "state dir of {id} left behind");
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bundle = b.path().to_string_lossy().into_owned();
    assert!(!mi.contains(&bundle), "mount of {bundle} left behind");
    for ctrl in ["memory", "pids", "devices", "cpu", "freezer", "unified"] {
        let p = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(format!("strata-test-{id}"));
        assert!(!p.exists(), "cgroup {} left behind", p.display());
    }
    let rootfs = b.rootfs();
    // A live process whose root is the rootfs is a leftover container process (allow a
    // moment for a SIGKILLed one to go).
    for _ in 0..100 {
        let leftover = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_link(e.path().join("root")).is_ok_and(|r| r == rootfs)
                && std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| !s.contains(") Z "))
        });
        if !leftover {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("a process rooted in {} is still alive", rootfs.display());
}
