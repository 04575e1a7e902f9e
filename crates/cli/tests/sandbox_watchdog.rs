//! The engines tests' sandbox outlives a killed test binary: a test binary (this one, started
//! again as a child) builds a sandbox holding a real containerd, a process in the sandbox's
//! cgroup, a process tree and a mount, and is SIGTERM'd (CI's timeout) or SIGKILL'd in the middle;
//! its watchdog then removes all of it (as root).

#[path = "engines/sandbox.rs"]
#[allow(dead_code)]
mod sandbox;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox::Sandbox;

const VICTIM_ENV: &str = "STRATA_TEST_WATCHDOG_VICTIM";

/// What the victim built, as it reports it.
struct Built {
    name: String,
    watchdog: i32,
    pids: Vec<i32>,
}

impl Built {
    fn dir(&self) -> PathBuf {
        PathBuf::from("/tmp").join(&self.name)
    }

    /// What is still there, in words (empty: nothing).
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if self.dir().exists() {
            left.push(format!("directory {}", self.dir().display()));
        }
        for &pid in self.pids.iter().chain([&self.watchdog]) {
            if alive(pid) {
                left.push(format!("process {pid}"));
            }
        }
        for p in sandbox_processes(&self.dir()) {
            left.push(format!("process {p} naming the sandbox"));
        }
        for m in sandbox::mounts_under(&self.dir()) {
            left.push(format!("mount {}", m.display()));
        }
        if let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hs.flatten() {
                if h.path().join(&self.name).exists() {
                    left.push(format!("cgroup {}", h.path().join(&self.name).display()));
                }
            }
        }
        left
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

fn sandbox_processes(dir: &Path) -> Vec<i32> {
    let d = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&d))
        })
        .collect()
}

/// A cgroup hierarchy to put a process in (the pids controller of a v1/hybrid host, else
/// the cgroup2 root).
fn hierarchy() -> PathBuf {
    for h in ["pids", "memory", "unified"] {
        let p = Path::new("/sys/fs/cgroup").join(h);
        if p.join("cgroup.procs").exists() {
            return p;
        }
    }
    PathBuf::from("/sys/fs/cgroup")
}

/// The victim (run only as a child of the test below): builds a sandbox, reports it in the
/// file the environment names, and waits to be killed.
#[test]
#[ignore = "helper: started by killed_test_binaries_leave_nothing as the test binary to kill"]
fn victim() {
    let Some(report) = std::env::var_os(VICTIM_ENV) else {
        return;
    };
    let mut sb = Sandbox::new("wd");
    let mut pids = Vec::new();
    // A real engine daemon, everything it writes inside the sandbox.
    let base = sb.path("containerd");
    std::fs::create_dir_all(&base).unwrap();
    let config = base.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{b}/root\"\nstate = \"{b}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{b}/c.sock\"\n[ttrpc]\n  address = \"{b}/c.sock.ttrpc\"\n[debug]\n  address = \"{b}/debug.sock\"\n[metrics]\n  address = \"\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{b}/opt\"\n",
            b = base.display()
        ),
    )
    .unwrap();
    let containerd = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("containerd (scripts/engines-deps.sh installs it)");
    pids.push(containerd.id() as i32);
    sb.adopt(containerd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !base.join("c.sock").exists() {
        assert!(Instant::now() < deadline, "containerd did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A process tree naming the sandbox (a shell and its sleep).
    let tree = Command::new("sh")
        .args(["-c", "sleep 1000; true"])
        .arg(&sb.dir)
        .spawn()
        .unwrap();
    pids.push(tree.id() as i32);
    std::mem::forget(tree);
    // A process that is only in the sandbox's cgroup.
    let cg = hierarchy().join(&sb.name).join("c");
    std::fs::create_dir_all(&cg).unwrap();
    let sleeper = Command::new("sleep").arg("1000").spawn().unwrap();
    std::fs::write(cg.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    pids.push(sleeper.id() as i32);
    std::mem::forget(sleeper);
    // A mount.
    let mnt = sb.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let line = format!(
        "{} {} {}",
        sb.name,
        sb.watchdog_pid().unwrap(),
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let tmp = PathBuf::from(&report).with_extension("tmp");
    std::fs::write(&tmp, line).unwrap();
    std::fs::rename(&tmp, &report).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// SIGTERM and SIGKILL of a test binary in the middle of a sandbox: within 30 s nothing of the
/// sandbox is left (daemon, processes, cgroups, mount, directory, the watchdog itself).
#[test]
fn killed_test_binaries_leave_nothing() {
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let report_dir = tempfile::tempdir().unwrap();
        let report = report_dir.path().join("built");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "--ignored", "--test-threads=1", "-q", "victim"])
            .env(VICTIM_ENV, &report)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !report.exists() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("the victim test binary ended ({st}) before it built its sandbox");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the victim test binary built no sandbox in 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let line = std::fs::read_to_string(&report).unwrap();
        let f: Vec<&str> = line.split(' ').collect();
        let built = Built {
            name: f[0].to_string(),
            watchdog: f[1].parse().unwrap(),
            pids: f[2].split(',').map(|p| p.parse().unwrap()).collect(),
        };
        // Whatever happens below, this process cleans up last (the safety net is not the
        // watchdog: it runs only after the check).
        let _net = SafetyNet(built.name.clone());
        assert!(
            built.leftovers().len() >= 5,
            "the sandbox is not complete: {:?}",
            built.leftovers()
        );
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !built.leftovers().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            built.leftovers(),
            Vec::<String>::new(),
            "left behind after signal {signal}"
        );
    }
}

/// Tears down a sandbox this test saw built, even when the check failed.
struct SafetyNet(String);

impl Drop for SafetyNet {
    fn drop(&mut self) {
        drop(Sandbox::reclaim(&self.0));
    }
}
