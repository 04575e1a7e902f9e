//! Volumes, tmpfs, read-only root and resource limits, checked from inside.

mod cli_common;

use cli_common::Sandbox;

fn volumes(iso: &str) {
    if iso.starts_with("vm") {
        return vm_volumes(iso);
    }
    let s = Sandbox::new(iso);
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("from-host"), "hello\n").unwrap();
    let h = host.path().to_str().unwrap();
    let rw = format!("{h}:/data");
    let out = s.ok(&[
        "run",
        "--rm",
        "-v",
        &rw,
        "busybox",
        "sh",
        "-c",
        "cat /data/from-host; echo written > /data/from-ctr",
    ]);
    assert_eq!(out, "hello\n");
    assert_eq!(
        std::fs::read_to_string(host.path().join("from-ctr")).unwrap(),
        "written\n"
    );
    let ro = format!("{h}:/data:ro");
    let o = s.strata(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /data/from-host; echo x > /data/new",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("Read-only file system"));
    assert!(!host.path().join("new").exists());
    s.assert_nothing_left(&[]);
}

/// VM volumes are block devices (docs/security.md): a host directory is copied into a read-only
/// disk (:ro only), a filesystem image file is attached as a writable disk whose writes the host
/// sees after the run.
fn vm_volumes(iso: &str) {
    let s = Sandbox::new(iso);
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("from-host"), "hello\n").unwrap();
    let h = host.path().to_str().unwrap();
    // A writable directory share is refused with what to do instead, leaving nothing behind.
    let (code, err) = s.fails(&[
        "run",
        "--rm",
        "-v",
        &format!("{h}:/data"),
        "busybox",
        "true",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("block devices") && err.contains(":ro"),
        "{err}"
    );
    s.assert_nothing_left(&[]);
    let ro = format!("{h}:/data:ro");
    let o = s.strata(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /data/from-host; echo x > /data/new",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("Read-only file system"));
    assert!(!host.path().join("new").exists());
    // A writable volume: an ext4 image file.
    let img = host.path().join("vol.img");
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .arg("8M")
        .status()
        .unwrap();
    assert!(st.success());
    let rw = format!("{}:/vol", img.display());
    s.ok(&[
        "run",
        "--rm",
        "-v",
        &rw,
        "busybox",
        "sh",
        "-c",
        "echo written > /vol/from-vm",
    ]);
    let out = s.ok(&["run", "--rm", "-v", &rw, "busybox", "cat", "/vol/from-vm"]);
    assert_eq!(out, "written\n");
    let dump = std::process::Command::new("debugfs")
        .args(["-R", "cat /from-vm"])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dump.stdout), "written\n");
    // The image file is the user's again (the VM's uid owned it while it ran).
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&img).unwrap().uid(), 0);
    s.assert_nothing_left(&[]);
}

fn tmpfs_and_read_only(iso: &str) {
    let s = Sandbox::new(iso);
    let out = s.ok(&[
        "run",
        "--rm",
        "--tmpfs",
        "/scratch:size=1m",
        "busybox",
        "sh",
        "-c",
        "grep ' /scratch ' /proc/mounts | cut -d' ' -f3; echo x > /scratch/f && cat /scratch/f",
    ]);
    assert_eq!(out, "tmpfs\nx\n");
    let o = s.strata(&[
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "busybox",
        "sh",
        "-c",
        "echo ok > /tmp/f && cat /tmp/f; touch /etc/nope",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("Read-only file system"));
    // Without --read-only, writes land in the container's own layer, not the image.
    s.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo x > /etc/new-file",
    ]);
    assert_eq!(
        s.ok(&[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "ls /etc/new-file 2>/dev/null; true"
        ]),
        ""
    );
}

fn resource_limits(iso: &str) {
    let s = Sandbox::new(iso);
    if iso.starts_with("vm") {
        // --memory sizes the VM: the guest kernel sees that much RAM (less its own reserve).
        let out = s.ok(&[
            "run",
            "--rm",
            "--memory",
            "64m",
            "busybox",
            "grep",
            "MemTotal",
            "/proc/meminfo",
        ]);
        let kib: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(kib > 32 << 10 && kib <= 64 << 10, "{out}");
        if iso == "vm-qemu" {
            // QEMU guests get as many vCPUs as --cpus asks, up to what the host has.
            let out = s.ok(&["run", "--rm", "--cpus", "2", "busybox", "nproc"]);
            assert_eq!(out, "2\n");
            let (_, err) = s.fails(&["run", "--rm", "--cpus", "64", "busybox", "true"]);
            assert!(err.contains("64 vCPUs") && err.contains("at most"), "{err}");
            let (_, err) = s.fails(&["run", "--rm", "--memory", "4096g", "busybox", "true"]);
            assert!(err.contains("MiB of guest memory"), "{err}");
        } else {
            // --cpus above what the platform offers is refused (UML guests are uniprocessor).
            let (_, err) = s.fails(&["run", "--rm", "--cpus", "2", "busybox", "true"]);
            assert!(err.contains("uniprocessor"), "{err}");
        }
        // --pids-limit: the guest kernel has no strata cgroup for the workload; the host caps
        // the whole VM (crates/vmm: pids.max of strata-vm/<id>).
        s.assert_nothing_left(&[]);
        return;
    }
    let out = s.ok(&[
        "run", "--rm", "--memory", "64m", "--pids-limit", "20", "--cpus", "0.5", "busybox", "sh", "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us",
    ]);
    assert_eq!(out, format!("{}\n20\n50000\n100000\n", 64 << 20));
    // The pids limit is enforced.
    let o = s.strata(&[
        "run",
        "--rm",
        "--pids-limit",
        "5",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("fork"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

isolation_tests!(volumes, tmpfs_and_read_only, resource_limits);
