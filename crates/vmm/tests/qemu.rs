//! End-to-end tests of the QEMU platform (as root): strata's QEMU kernel on a busybox disk under
//! microvm (TCG here, KVM where the host has VMX/SVM), the virtio console channel, qcow2 overlays
//! over a shared base, the jail, panics, hangs, failures and bad input.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use strata_vmm::{Disk, Platform, QemuPlatform, VmConfig, VmmError};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A config booting the QEMU kernel with `disk` (qcow2 overlay in `dir`) as root and /init.
fn qconfig(name: &str, dir: &Path, disk: &Path) -> VmConfig {
    let mut c = config(name, &qemu_kernel(), dir, disk);
    c.kernel_params = vec!["root=/dev/vda".into(), "ro".into()];
    c
}

fn status_field(pid: i32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in status"))
        .trim()
        .to_string()
}

/// Host processes whose cmdline mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&c).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn boots_to_marker_with_memory_cpus_and_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let init = format!(
        "{QEMU_INIT_PRELUDE}
echo \"MARKER uname=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)\" >&3
grep MemTotal /proc/meminfo >&3
head -c 16 /dev/hwrng >/dev/null 2>&1 && echo HWRNG >&3
mount -o remount,rw / && echo written-by-guest > /guest-file && sync && echo WROTE >&3
echo END >&3
reboot -f
"
    );
    let disk = busybox_disk(dir.path(), &init);
    let base_before = sha256(&disk);
    let mut cfg = qconfig("boot", dir.path(), &disk);
    cfg.vcpus = 2;
    let mut vm = QemuPlatform::new().boot(&cfg).unwrap();
    assert_eq!(vm.platform(), "qemu");
    assert_eq!(vm.accelerator(), Some(strata_vmm::accelerator().0.name()));
    let out = read_all(vm.take_channel().unwrap(), TIMEOUT, dir.path());
    let status = vm.wait().unwrap();
    assert!(
        out.contains("MARKER"),
        "no marker: {out:?}; {}",
        vm.report()
    );
    assert!(status.success(), "QEMU exit {status:?}: {}", vm.report());
    let uname = out
        .split("uname=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(uname.ends_with("-strata"), "guest uname {uname:?}");
    assert!(out.contains("cpus=2"), "{out:?}");
    let mem_kib: u64 = out
        .split("MemTotal:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out:?}"));
    assert!(
        mem_kib > 40 * 1024 && mem_kib <= 96 * 1024,
        "MemTotal {mem_kib} kB"
    );
    assert!(out.contains("HWRNG"), "virtio-rng missing: {out:?}");
    assert!(
        out.contains("WROTE") && out.contains("END"),
        "{out:?}; {}",
        vm.report()
    );
    // The guest's write went to the qcow2 overlay; the shared base is unchanged.
    assert_eq!(sha256(&disk), base_before, "base disk modified");
    let overlay = std::fs::read(dir.path().join("root.cow")).unwrap();
    assert_eq!(&overlay[..4], b"QFI\xfb");
    assert!(
        overlay.windows(16).any(|w| w == b"written-by-guest"),
        "guest write not in the overlay"
    );
    assert!(!dir.path().join("run").exists(), "runtime dir left behind");
}

#[test]
fn channel_carries_bytes_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let init = format!(
        "{QEMU_INIT_PRELUDE}
echo READY >&3
read -r line <&3
echo \"ECHO:$line:$(echo \"$line\" | wc -c)\" >&3
reboot -f
"
    );
    let disk = busybox_disk(dir.path(), &init);
    let cfg = qconfig("channel", dir.path(), &disk);
    let mut vm = QemuPlatform::new().boot(&cfg).unwrap();
    let mut ch = vm.take_channel().unwrap();
    let got = read_until(&mut ch, "READY", TIMEOUT);
    assert!(got.contains("READY"), "{got:?}; {}", vm.report());
    let token = format!("ping-{}-{}", std::process::id(), "x".repeat(3000));
    send(&mut ch, &format!("{token}\n"));
    let rest = read_all(ch, TIMEOUT, dir.path());
    vm.wait().unwrap();
    assert!(
        rest.contains(&format!("ECHO:{token}:{}", token.len() + 1)),
        "{} bytes: {:?}",
        rest.len(),
        &rest[..rest.len().min(200)]
    );
}

#[test]
fn jail_confines_qemu_and_two_disks_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let init = format!(
        "{QEMU_INIT_PRELUDE}
echo \"DISKS $(cat /sys/block/vdb/size) $(head -c 9 /dev/vdb)\" >&3
echo READY >&3
read -r go <&3
reboot -f
"
    );
    let disk = busybox_disk(dir.path(), &init);
    let second = dir.path().join("second.img");
    let mut data = b"disk-two!".to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&second, &data).unwrap();
    let mut cfg = qconfig("jail", dir.path(), &disk);
    cfg.disks.push(Disk {
        path: second.clone(),
        cow: None,
        read_only: true,
    });
    let mut vm = QemuPlatform::new().boot(&cfg).unwrap();
    let mut ch = vm.take_channel().unwrap();
    let got = read_until(&mut ch, "READY", TIMEOUT);
    assert!(got.contains("READY"), "{got:?}; {}", vm.report());
    assert!(got.contains("DISKS 2048 disk-two!"), "{got:?}");
    let pid = vm.pid();
    assert_ne!(vm.uid(), 0);
    // The jail's PID 1 and QEMU (its child): unprivileged, no capabilities, no_new_privs, seccomp.
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let qemu: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    for p in [pid, qemu] {
        assert_eq!(
            status_field(p, "Uid").split_whitespace().next().unwrap(),
            vm.uid().to_string()
        );
        assert_eq!(status_field(p, "CapEff"), "0000000000000000");
        assert_eq!(status_field(p, "CapBnd"), "0000000000000000");
        assert_eq!(status_field(p, "NoNewPrivs"), "1");
        assert_eq!(status_field(p, "Seccomp"), "2");
    }
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{qemu}/comm"))
            .unwrap()
            .trim(),
        "qemu"
    );
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let guest = std::fs::read_link(format!("/proc/{qemu}/ns/{ns}")).unwrap();
        assert_ne!(host, guest, "{ns} namespace shared with the host");
    }
    // QEMU's root holds only its own files.
    let root: Vec<String> = std::fs::read_dir(format!("/proc/{qemu}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(root.contains(&"qemu".to_string()), "{root:?}");
    assert!(!root.contains(&"etc".to_string()), "{root:?}");
    assert!(!root.contains(&"home".to_string()), "{root:?}");
    // The VM's cgroup holds both.
    let cgroups = vm.cgroup_dirs();
    assert!(!cgroups.is_empty());
    let procs = std::fs::read_to_string(cgroups[0].join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == qemu.to_string()), "{procs}");
    send(&mut ch, "go\n");
    drop(ch);
    vm.wait().unwrap();
    assert!(cgroups.iter().all(|c| !c.exists()), "cgroup left behind");
}

#[test]
fn a_guest_kernel_panic_ends_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    // init exits: the kernel panics, panic=-1 resets, -no-reboot ends QEMU.
    let init = format!("{QEMU_INIT_PRELUDE}\necho BYE >&3\nexit 0\n");
    let disk = busybox_disk(dir.path(), &init);
    let cfg = qconfig("panic", dir.path(), &disk);
    let mut vm = QemuPlatform::new().boot(&cfg).unwrap();
    let out = read_all(vm.take_channel().unwrap(), TIMEOUT, dir.path());
    assert!(out.contains("BYE"), "{out:?}; {}", vm.report());
    vm.wait().unwrap();
    let report = vm.report();
    assert!(
        report.contains("Kernel panic"),
        "{report}\nfull console: {}",
        console(dir.path())
    );
    assert!(!cfg.runtime_dir.exists());
}

#[test]
fn a_hung_guest_is_killed_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let init = format!("{QEMU_INIT_PRELUDE}\necho HUNG >&3\nwhile :; do sleep 1; done\n");
    let disk = busybox_disk(dir.path(), &init);
    let cfg = qconfig("hang", dir.path(), &disk);
    let mut vm = QemuPlatform::new().boot(&cfg).unwrap();
    let mut ch = vm.take_channel().unwrap();
    assert!(
        read_until(&mut ch, "HUNG", TIMEOUT).contains("HUNG"),
        "{}",
        vm.report()
    );
    let pid = vm.pid();
    let cgroups = vm.cgroup_dirs();
    let marker = cfg.id.clone();
    vm.kill().unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "VM process left"
    );
    assert!(processes_mentioning(&marker).is_empty());
    assert!(cgroups.iter().all(|c| !c.exists()), "cgroup left behind");
    assert!(!cfg.runtime_dir.exists(), "runtime dir left behind");
    // Dropping a running VM kills it too.
    let vm = QemuPlatform::new().boot(&cfg).unwrap();
    let pid = vm.pid();
    drop(vm);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!cfg.runtime_dir.exists());
}

#[test]
fn a_failing_qemu_is_reported_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let disk = busybox_disk(dir.path(), "#!/bin/sh\n");
    // An initrd larger than the guest's memory: QEMU itself refuses to load it and exits.
    let initrd = dir.path().join("huge-initrd");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let mut cfg = qconfig("fail", dir.path(), &disk);
    cfg.initrd = Some(initrd);
    cfg.init = Some("/init".into());
    let mut vm = QemuPlatform::new().boot(&cfg).unwrap();
    let out = read_all(vm.take_channel().unwrap(), TIMEOUT, dir.path());
    let status = vm.wait().unwrap();
    let report = vm.report();
    assert!(out.is_empty(), "{out:?}");
    assert!(!status.success(), "{status:?}: {report}");
    assert!(
        report.contains("qemu stderr:") && report.contains("initrd"),
        "{report}"
    );
    assert!(!cfg.runtime_dir.exists());
}

#[test]
fn bad_input_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let disk = busybox_disk(dir.path(), "#!/bin/sh\n");
    let base = qconfig("bad", dir.path(), &disk);
    let refused = |cfg: &VmConfig, p: QemuPlatform, words: &[&str]| {
        let err = p.boot(cfg).expect_err("accepted");
        let msg = err.to_string();
        for w in words {
            assert!(msg.contains(w), "{w:?} not in {msg}");
        }
        assert!(!cfg.runtime_dir.exists(), "{msg}: runtime dir created");
        assert!(
            !dir.path().join("root.cow").exists(),
            "{msg}: overlay created"
        );
        assert!(processes_mentioning(&cfg.id).is_empty());
        err
    };
    // Missing kernel.
    let mut c = base.clone();
    c.kernel = dir.path().join("no-such-kernel");
    refused(&c, QemuPlatform::new(), &["kernel", "no-such-kernel"]);
    // Corrupt kernel: random bytes, a UML kernel, an empty file.
    let junk = dir.path().join("junk");
    std::fs::write(
        &junk,
        (0..100_000u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    for (k, why) in [
        (junk.clone(), "not an x86 bzImage"),
        (strata_kernel(), "ELF"),
        (empty, "too short"),
    ] {
        let mut c = base.clone();
        c.kernel = k;
        refused(
            &c,
            QemuPlatform::new(),
            &[why, "build-guest-kernel.sh qemu"],
        );
    }
    // A kernel without virtio-mmio (its config beside it says so).
    let kdir = dir.path().join("nommio");
    std::fs::create_dir(&kdir).unwrap();
    let kernel = qemu_kernel();
    std::fs::copy(&kernel, kdir.join("bzImage")).unwrap();
    let config = std::fs::read_to_string(kernel.with_file_name("config")).unwrap();
    std::fs::write(
        kdir.join("config"),
        config.replace("CONFIG_VIRTIO_MMIO=y", "# CONFIG_VIRTIO_MMIO is not set"),
    )
    .unwrap();
    let mut c = base.clone();
    c.kernel = kdir.join("bzImage");
    refused(
        &c,
        QemuPlatform::new(),
        &["CONFIG_VIRTIO_MMIO ", "guest/qemu.config"],
    );
    // QEMU not installed.
    let err = refused(
        &base,
        QemuPlatform::with_binary("/nonexistent/qemu-system-x86_64"),
        &["QEMU is not installed", "qemu-system-x86"],
    );
    assert!(matches!(err, VmmError::Unavailable(_)), "{err:?}");
    // More CPUs or memory than the host has.
    let mut c = base.clone();
    c.vcpus = 4096;
    refused(&c, QemuPlatform::new(), &["4096 vCPUs", "at most"]);
    let mut c = base.clone();
    c.memory_mib = 64 << 20;
    refused(
        &c,
        QemuPlatform::new(),
        &["MiB of guest memory", "ask for less"],
    );
    // A missing initrd.
    let mut c = base.clone();
    c.initrd = Some(PathBuf::from("/nonexistent/initrd"));
    refused(&c, QemuPlatform::new(), &["initrd", "/nonexistent/initrd"]);
    // A rehearsal disk outside the warm pool (no hot root), and a missing one.
    let mut c = base.clone();
    c.rehearsal_disk = Some(disk.clone());
    refused(&c, QemuPlatform::new(), &["rehearsal disk", "pooled VM"]);
    let mut c = base.clone();
    c.disks.clear();
    c.hot_root = true;
    c.rehearsal_disk = Some(PathBuf::from("/nonexistent/rehearsal.ext4"));
    refused(
        &c,
        QemuPlatform::new(),
        &["rehearsal disk", "/nonexistent/rehearsal.ext4"],
    );
    // A VM on a network whose kernel has no virtio-net (its config beside it says so).
    let kdir = dir.path().join("nonet");
    std::fs::create_dir(&kdir).unwrap();
    std::fs::copy(&kernel, kdir.join("bzImage")).unwrap();
    std::fs::write(
        kdir.join("config"),
        config.replace("CONFIG_VIRTIO_NET=y", "# CONFIG_VIRTIO_NET is not set"),
    )
    .unwrap();
    let mut c = base.clone();
    c.kernel = kdir.join("bzImage");
    c.network = Some(dir.path().join("netns"));
    refused(
        &c,
        QemuPlatform::new(),
        &["CONFIG_VIRTIO_NET (the NIC of --network)"],
    );
    // A namespace configured at start (an engine's new one) may never get an interface: the
    // same kernel is not refused for it; here the boot fails later, at the (missing)
    // namespace, and still leaves nothing.
    c.network_at_start = true;
    let err = refused(&c, QemuPlatform::new(), &["network namespace"]);
    assert!(!err.to_string().contains("CONFIG_VIRTIO_NET"), "{err}");
    // More disks than microvm has virtio-mmio slots (8 without ACPI, as strata's kernel boots:
    // the console and the RNG take two, a NIC one more).
    let mut c = base.clone();
    let ro = Disk {
        path: disk.clone(),
        cow: None,
        read_only: true,
    };
    c.disks.extend(std::iter::repeat_n(ro, 6));
    refused(&c, QemuPlatform::new(), &["7 disks requested", "at most 6"]);
    c.disks.pop();
    c.network = Some(dir.path().join("netns"));
    refused(
        &c,
        QemuPlatform::new(),
        &["6 disks requested", "and the NIC", "at most 5"],
    );
}

/// A network namespace that cannot be joined fails the boot at the tap, after the runtime
/// directory, the overlay and the cgroup were made: all of them go again, and no QEMU starts.
#[test]
fn a_network_that_cannot_be_joined_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = busybox_disk(dir.path(), "#!/bin/sh\n");
    let mut c = qconfig("badnet", dir.path(), &disk);
    // A regular file, not a namespace.
    let not_ns = dir.path().join("not-a-netns");
    std::fs::write(&not_ns, b"").unwrap();
    c.network = Some(not_ns);
    let err = QemuPlatform::new()
        .boot(&c)
        .expect_err("booted")
        .to_string();
    assert!(
        err.contains("join the network namespace") && err.contains("not-a-netns"),
        "{err}"
    );
    assert!(!c.runtime_dir.exists(), "{err}: runtime dir left");
    assert!(!dir.path().join("root.cow").exists(), "{err}: overlay left");
    assert!(processes_mentioning(&c.id).is_empty(), "a process is left");
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left = h.path().join("strata-vm").join(&c.id);
        assert!(!left.exists(), "cgroup {} left", left.display());
    }
    assert!(!Path::new("/sys/fs/cgroup/strata-vm").join(&c.id).exists());
}
