//! Shared fixtures of the VM tests: guest kernels, busybox root disks, and a channel reader.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use strata_vmm::{Console, Disk, DiskFormat, VmConfig};

/// strata's own UML kernel (built once, cached) and the repository root.
#[allow(unused_imports)] // each test file uses a part
pub use strata_testkit::{guest_kernel as strata_kernel, repo};

/// strata's own QEMU kernel (bzImage), built (once, cached) by
/// `scripts/build-guest-kernel.sh qemu`.
pub fn qemu_kernel() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/build-guest-kernel.sh"))
        .arg("qemu")
        .output()
        .expect("run scripts/build-guest-kernel.sh qemu");
    assert!(
        out.status.success(),
        "build-guest-kernel.sh qemu failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// The static strata-agent of this tree (strata_testkit builds it once per workspace).
pub fn agent_binary() -> PathBuf {
    strata_testkit::static_agent(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// Debian's user-mode-linux kernel.
pub fn debian_kernel() -> PathBuf {
    let p = PathBuf::from("/usr/bin/linux");
    assert!(p.exists(), "install user-mode-linux (scripts/deps.sh)");
    p
}

/// Both kernels the tests boot, named.
pub fn kernels() -> Vec<(&'static str, PathBuf)> {
    vec![("strata", strata_kernel()), ("debian", debian_kernel())]
}

/// A busybox root filesystem directory whose /init is `init` (a shell script).
pub fn busybox_rootfs(dir: &Path, init: &str) -> PathBuf {
    let root = dir.join("rootfs");
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "mnt", "etc", "root",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    let init_path = root.join("init");
    std::fs::write(&init_path, init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// Builds an ext4 disk of a busybox rootfs with `init`, in `dir`.
pub fn busybox_disk(dir: &Path, init: &str) -> PathBuf {
    let root = busybox_rootfs(dir, init);
    strata_vmm::build_disk(&[root], DiskFormat::Ext4, &dir.join("disks"), "sha256:test").unwrap()
}

/// The beginning of every test init: mounts, and fd 3 on the channel in raw mode.
pub const INIT_PRELUDE: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec 3<>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo
"#;

/// The same for a QEMU guest, whose channel is the virtio console /dev/hvc0.
pub const QEMU_INIT_PRELUDE: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec 3<>/dev/hvc0
stty -F /dev/hvc0 raw -echo
"#;

/// A unique VM id for this test process.
pub fn vm_id(name: &str) -> String {
    format!("test-{name}-{}", std::process::id())
}

/// A config booting `kernel` with `disk` (COW in `dir`) as root and /init as init.
pub fn config(name: &str, kernel: &Path, dir: &Path, disk: &Path) -> VmConfig {
    let mut c = VmConfig::new(vm_id(name), kernel, dir.join("run"));
    c.memory_mib = 96;
    c.disks = vec![Disk {
        path: disk.to_path_buf(),
        cow: Some(dir.join("root.cow")),
        read_only: false,
    }];
    c.kernel_params = vec!["root=/dev/ubda".into(), "ro".into()];
    c.init = Some("/init".into());
    c.console = Console::File(dir.join("console.log"));
    c
}

/// Reads everything the guest writes on the channel until it closes (the VM ended), or fails
/// after `timeout` with the console of the VM whose files are in `dir`.
pub fn read_all(channel: UnixStream, timeout: Duration, dir: &Path) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = channel;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    let buf = rx.recv_timeout(timeout).unwrap_or_else(|_| {
        panic!(
            "the guest did not finish in {timeout:?}; console: {}",
            console(dir)
        )
    });
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads from the channel until `needle` appears.
pub fn read_until(channel: &mut UnixStream, needle: &str, timeout: Duration) -> String {
    channel.set_read_timeout(Some(timeout)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match channel.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // The caller's assertion reports what arrived, with the console.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            // A socket with SO_RCVTIMEO returns EINTR even without a signal handler when the
            // process was stopped and continued (signal(7)).
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!(
                "reading the channel: {e}; got so far: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Writes to the channel.
pub fn send(channel: &mut UnixStream, data: &str) {
    channel.write_all(data.as_bytes()).unwrap();
}

/// The console log (for failure messages).
pub fn console(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("console.log")).unwrap_or_default()
}

/// sha256 of a file, via sha256sum.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
