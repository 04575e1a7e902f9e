//! The guest's rootfs assembly (overlay of a read-only image disk and a writable layer, the
//! config.json mounts, chroot of every process) exercised on the host kernel: the agent runs in
//! a private mount namespace with `--guest-cmdline`, the disks are loop devices.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use strata_proto::Client;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path, read_only: bool) -> Loop {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if read_only {
            cmd.arg("--read-only");
        }
        Loop(run(cmd.arg(file)))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The agent in its own mount namespace; killed on drop, which also ends the namespace and its
/// mounts.
struct Agent {
    child: Child,
    client: Option<Client>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.client = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(guest_cmdline: &str) -> Agent {
    let (host, guest) = UnixStream::pair().unwrap();
    let fd = guest.as_raw_fd();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        // A private /run so /run/strata never appears on the host.
        .arg(r#"mount -t tmpfs tmpfs /run && exec "$0" --no-pid1 --channel-fd 3 --guest-cmdline "$1""#)
        .arg(env!("CARGO_BIN_EXE_strata-agent"))
        .arg(guest_cmdline)
        .stdin(Stdio::null());
    // SAFETY: dup2 and prctl are async-signal-safe; dup2 places the channel socket at fd 3
    // without CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Die with the test process even if it is killed before the Drop guard runs.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(guest);
    let client = Client::from_unix_stream(host, Duration::from_secs(20)).unwrap();
    Agent {
        child,
        client: Some(client),
    }
}

fn image(dir: &Path) -> PathBuf {
    let root = dir.join("img-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for sub in ["dev", "proc", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for c in ["sh", "cat", "echo", "grep", "ls", "sync", "id"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    std::fs::write(root.join("etc/marker"), "from the image\n").unwrap();
    let img = dir.join("img.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("32M"));
    img
}

fn debugfs_cat(img: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(script: &str) -> Vec<u8> {
    config_ro(script, false)
}

fn config_ro(script: &str, readonly: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "root": {"path": "rootfs", "readonly": readonly},
        "process": {"args": ["sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/"},
        "hostname": "ignored-off-pid1",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "mode=700"]},
            {"destination": "/etc/hostname", "type": "bind", "source": "/var/lib/docker/containers/none/hostname", "options": ["rbind", "rprivate"]}
        ]
    }))
    .unwrap()
}

fn run_workload(agent: &Agent, script: &str) -> (String, Vec<String>) {
    let c = agent.client.as_ref().unwrap();
    let main = c.create(&config(script)).unwrap();
    let warnings = c.connection_errors();
    c.start().unwrap();
    let (o, e, st) = main.output().unwrap();
    assert_eq!(st.code, 0, "{}", String::from_utf8_lossy(&e));
    (String::from_utf8_lossy(&o).into_owned(), warnings)
}

const SCRIPT: &str =
    "echo changed > /etc/marker; cat /etc/marker; grep -c ' / overlay ' /proc/self/mounts; \
                      ls /dev/null; grep ' /scratch ' /proc/self/mounts | grep -o 'size=1024k'";

#[test]
fn overlay_with_a_tmpfs_upper_leaves_the_image_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let lower = Loop::attach(&img, true);
    let agent = start_agent(&format!(
        "strata.lower={} strata.lowerfs=ext4 strata.uppersize=8m",
        lower.0
    ));
    let (out, warnings) = run_workload(&agent, SCRIPT);
    assert_eq!(out, "changed\n1\n/dev/null\nsize=1024k\n");
    assert!(
        warnings.iter().any(|w| w.contains("/etc/hostname")),
        "{warnings:?}"
    );
    drop(agent);
    assert_eq!(debugfs_cat(&img, "/etc/marker"), "from the image\n");
}

#[test]
fn overlay_with_an_upper_disk_keeps_the_writes_there() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let upper_img = dir.path().join("upper.ext4");
    run(Command::new("mkfs.ext4")
        .arg("-q")
        .arg(&upper_img)
        .arg("16M"));
    let lower = Loop::attach(&img, true);
    let upper = Loop::attach(&upper_img, false);
    let agent = start_agent(&format!(
        "strata.lower={} strata.lowerfs=ext4 strata.upper={}",
        lower.0, upper.0
    ));
    let (out, _) = run_workload(&agent, "echo on-upper > /etc/marker; sync; cat /etc/marker");
    assert_eq!(out, "on-upper\n");
    drop(agent);
    assert_eq!(debugfs_cat(&upper_img, "/upper/etc/marker"), "on-upper\n");
    assert_eq!(debugfs_cat(&img, "/etc/marker"), "from the image\n");
}

#[test]
fn a_writable_lower_is_the_root_without_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let lower = Loop::attach(&img, false);
    let agent = start_agent(&format!(
        "strata.lower={} strata.lowerfs=ext4 strata.rootrw=1",
        lower.0
    ));
    let (out, _) = run_workload(&agent, "echo rw > /etc/marker; sync; cat /etc/marker; grep -c ' / overlay ' /proc/self/mounts || true");
    assert_eq!(out, "rw\n0\n");
    drop(agent);
    assert_eq!(debugfs_cat(&img, "/etc/marker"), "rw\n");
}

#[test]
fn a_missing_lower_disk_is_a_clear_create_error() {
    let agent = start_agent("strata.lower=/dev/strata-no-such-disk strata.lowerfs=ext4");
    let err = agent
        .client
        .as_ref()
        .unwrap()
        .create(&config("true"))
        .map(|_| ())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("rootfs") && text.contains("/dev/strata-no-such-disk"),
        "{text}"
    );
}

#[test]
fn a_readonly_root_keeps_its_mounts_writable() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let lower = Loop::attach(&img, true);
    let agent = start_agent(&format!("strata.lower={} strata.lowerfs=ext4", lower.0));
    let c = agent.client.as_ref().unwrap();
    let script = "echo x > /etc/marker && echo wrote-root; echo y > /scratch/f && cat /scratch/f; ls /proc/self/fd >/dev/null && echo proc";
    let main = c.create(&config_ro(script, true)).unwrap();
    c.start().unwrap();
    let (o, e, st) = main.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o), "y\nproc\n");
    assert!(
        String::from_utf8_lossy(&e).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&e)
    );
    assert_eq!(st.code, 0);
}
