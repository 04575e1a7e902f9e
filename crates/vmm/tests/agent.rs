//! strata-agent as PID 1 of a jailed UML VM (as root): the initramfs delivery, the guest contract
//! (image disk as overlay lower), the channel carrying strata-proto, stdout/stderr separation and
//! the workload's exit code. The agent is the static one of scripts/build-agent.sh.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use strata_vmm::initramfs::{agent_initramfs, AGENT_GUEST_PATH};
use strata_vmm::{
    build_disk, Console, Disk, DiskFormat, GuestContract, Platform, UmlPlatform, VmConfig,
};

fn agent() -> PathBuf {
    strata_testkit::static_agent(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
}

#[test]
fn agent_runs_the_workload_in_a_jailed_vm() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path(), "#!/bin/sh\necho not the init\n");
    let disk = build_disk(
        &[rootfs],
        DiskFormat::Ext4,
        &dir.path().join("disks"),
        "sha256:agent",
    )
    .unwrap();
    let initrd = agent_initramfs(&agent(), &dir.path().join("initramfs")).unwrap();
    let platform = UmlPlatform::new();
    let mut cfg = VmConfig::new(vm_id("agent"), strata_kernel(), dir.path().join("run"));
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
    cfg.console = Console::File(dir.path().join("console.log"));
    let mut vm = platform.boot(&cfg).unwrap();
    let ch = vm.take_channel().unwrap();
    let client =
        strata_proto::Client::with_timeout(ch.try_clone().unwrap(), ch, Duration::from_secs(60))
            .unwrap_or_else(|e| {
                panic!("no agent handshake: {e}; console: {}", console(dir.path()))
            });
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
