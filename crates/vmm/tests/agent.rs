//! strata-agent as PID 1 of a jailed VM (as root), on every platform (UML and QEMU): the initramfs
//! delivery, the guest contract (image disk as overlay lower), the channel carrying strata-proto,
//! stdout/stderr separation, the workload's exit code, exec and signals. The agent is built by
//! scripts/build-agent.sh into this test's own target directory.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use strata_vmm::initramfs::{agent_initramfs, AGENT_GUEST_PATH};
use strata_vmm::{
    build_disk, Console, Disk, DiskFormat, GuestContract, Platform, QemuPlatform, UmlPlatform,
    VmConfig,
};

#[test]
fn agent_runs_the_workload_in_a_jailed_vm() {
    agent_runs_the_workload(&UmlPlatform::new(), &strata_kernel());
}

#[test]
fn agent_runs_the_workload_in_a_jailed_qemu_vm() {
    agent_runs_the_workload(&QemuPlatform::new(), &qemu_kernel());
}

#[test]
fn agent_execs_and_signals_in_a_qemu_vm() {
    agent_exec_and_signals(&QemuPlatform::new(), &qemu_kernel());
}

#[test]
fn agent_execs_and_signals_in_a_uml_vm() {
    agent_exec_and_signals(&UmlPlatform::new(), &strata_kernel());
}

/// Debian's stock kernel (linux-image-amd64) and its release: the newest /boot/vmlinuz-*-amd64.
fn debian_stock_kernel() -> (PathBuf, String) {
    let mut found: Vec<String> = std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("vmlinuz-") && n.ends_with("-amd64"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let name = found
        .pop()
        .expect("Debian's stock kernel: install linux-image-amd64 (scripts/deps.sh)");
    let release = name.trim_start_matches("vmlinuz-").to_string();
    (Path::new("/boot").join(name), release)
}

#[test]
fn agent_runs_the_workload_on_debians_stock_kernel_under_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, release) = debian_stock_kernel();
    // The user's initrd: the kernel's own virtio, ext4 and overlay modules.
    let modules = dir.path().join("modules.cpio");
    strata_vmm::initramfs::module_initrd(
        &release,
        &Path::new("/lib/modules").join(&release),
        &[
            "virtio_mmio",
            "virtio_blk",
            "virtio_console",
            "virtio_rng",
            "crc32c_generic",
            "ext4",
            "overlay",
        ],
        &modules,
    )
    .unwrap();
    let (mut vm, client, cfg) = boot_agent_with(
        &QemuPlatform::new(),
        &kernel,
        dir.path(),
        "debian",
        Some(&modules),
    );
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["/bin/sh", "-c", "echo release=$(uname -r); grep -c ext4 /proc/filesystems; exit 4"],
            "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
        },
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]
    });
    let session = client
        .create(&serde_json::to_vec(&config).unwrap())
        .unwrap_or_else(|e| panic!("{e}; console: {}", console(dir.path())));
    client.start().unwrap();
    let (stdout, stderr, status) = session.output().unwrap();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let _ = client.shutdown();
    vm.wait().unwrap();
    assert_eq!(
        status.code,
        4,
        "{stdout} {}",
        String::from_utf8_lossy(&stderr)
    );
    assert!(
        stdout.starts_with(&format!("release={release}\n")),
        "{stdout}"
    );
    assert!(!cfg.runtime_dir.exists());
}

/// Boots the agent on `platform` with a busybox image; returns the VM and a connected client.
fn boot_agent(
    platform: &dyn Platform,
    kernel: &Path,
    dir: &Path,
    name: &str,
) -> (strata_vmm::Vm, strata_proto::Client, VmConfig) {
    boot_agent_with(platform, kernel, dir, name, None)
}

/// The same with a user's initrd after the agent's.
fn boot_agent_with(
    platform: &dyn Platform,
    kernel: &Path,
    dir: &Path,
    name: &str,
    user_initrd: Option<&Path>,
) -> (strata_vmm::Vm, strata_proto::Client, VmConfig) {
    let rootfs = busybox_rootfs(dir, "#!/bin/sh\necho not the init\n");
    let disk = build_disk(
        &[rootfs],
        DiskFormat::Ext4,
        &dir.join("disks"),
        "sha256:agent",
    )
    .unwrap();
    let mut initrd = agent_initramfs(&agent_binary(), &dir.join("initramfs")).unwrap();
    if let Some(user) = user_initrd {
        initrd =
            strata_vmm::initramfs::with_user_initrd(&initrd, user, &dir.join("initramfs")).unwrap();
    }
    let mut cfg = VmConfig::new(
        vm_id(&format!("{name}-{}", platform.name())),
        kernel,
        dir.join("run"),
    );
    cfg.memory_mib = 160;
    cfg.initrd = Some(initrd);
    cfg.init = Some(AGENT_GUEST_PATH.into());
    cfg.disks = vec![Disk {
        path: disk,
        cow: None,
        read_only: true,
    }];
    cfg.kernel_params = GuestContract {
        lower: Some((platform.disk_device(0), DiskFormat::Ext4)),
        upper: None,
        rootrw: false,
    }
    .kernel_params();
    cfg.console = Console::File(dir.join("console.log"));
    let mut vm = platform.boot(&cfg).unwrap();
    let ch = vm.take_channel().unwrap();
    let client =
        strata_proto::Client::with_timeout(ch.try_clone().unwrap(), ch, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no agent handshake: {e}; {}", vm.report()));
    (vm, client, cfg)
}

fn agent_exec_and_signals(platform: &dyn Platform, kernel: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, client, cfg) = boot_agent(platform, kernel, dir.path(), "exec");
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["/bin/sh", "-c", "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done"],
            "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
        },
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]
    });
    let main = client
        .create(&serde_json::to_vec(&config).unwrap())
        .unwrap();
    client.start().unwrap();
    let mut out = main.take_stdout().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    // exec: a second process in the same rootfs sees the main one and has its own exit code.
    let exec = serde_json::json!({
        "args": ["/bin/sh", "-c", "echo exec-$(cat /proc/1/comm 2>/dev/null)-$(ls /proc | grep -c '^[0-9]'); exit 5"],
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
    });
    let e = client
        .exec(&serde_json::to_vec(&exec).unwrap(), false)
        .unwrap();
    let (eout, _, estatus) = e.output().unwrap();
    assert_eq!(estatus.code, 5, "{}", String::from_utf8_lossy(&eout));
    assert!(
        String::from_utf8_lossy(&eout).starts_with("exec-"),
        "{eout:?}"
    );
    // A signal reaches the workload, whose trap decides its exit code.
    main.signal(libc::SIGTERM).unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut out, &mut rest).unwrap();
    let status = main.wait().unwrap();
    assert_eq!(
        (status.code, status.signal),
        (3, None),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    assert!(String::from_utf8_lossy(&rest).contains("got-term"));
    let _ = client.shutdown();
    vm.wait().unwrap();
    assert!(!cfg.runtime_dir.exists());
}

fn agent_runs_the_workload(platform: &dyn Platform, kernel: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, client, cfg) = boot_agent(platform, kernel, dir.path(), "agent");
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["/bin/sh", "-c",
                "echo out-$(uname -r); echo err >&2; grep MemTotal /proc/meminfo; echo x > /written; cat /written; exit 7"],
            "cwd": "/",
            "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0}
        },
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "hostname": "vm"
    });
    let session = client
        .create(&serde_json::to_vec(&config).unwrap())
        .unwrap();
    client.start().unwrap();
    let (stdout, stderr, status) = session.output().unwrap();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    let _ = client.shutdown();
    vm.wait().unwrap();
    assert_eq!(
        (status.code, status.signal),
        (7, None),
        "stdout {stdout:?} stderr {stderr:?}"
    );
    assert_eq!(stderr, "err\n");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let guest_release = stdout.lines().next().unwrap().strip_prefix("out-").unwrap();
    assert_ne!(guest_release, release.trim());
    // 160 MiB guest: MemTotal is the guest's, far below the host's.
    let kib: u64 = stdout
        .split_whitespace()
        .skip_while(|w| *w != "MemTotal:")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{stdout:?}"));
    assert!(kib > 100 * 1024 && kib <= 160 * 1024, "{kib}");
    // The overlay's writable layer took the write (the image disk is read-only).
    assert!(stdout.ends_with("x\n"), "{stdout:?}");
    assert!(!cfg.runtime_dir.exists());
}
