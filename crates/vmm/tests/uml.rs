//! End-to-end tests of the UML platform (as root): boot strata's and Debian's UML kernels on a
//! busybox disk, the channel, copy-on-write disks, the jail, and clean-up.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use strata_vmm::{Platform, UmlPlatform, VmConfig, VmmError};

const TIMEOUT: Duration = Duration::from_secs(30);

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn boots_to_marker_with_own_kernel_memory_and_cow() {
    for (name, kernel) in kernels() {
        let dir = tempfile::tempdir().unwrap();
        let init = format!(
            "{INIT_PRELUDE}
echo \"MARKER uname=$(uname -r)\" >&3
grep MemTotal /proc/meminfo >&3
mount -o remount,rw / && echo written-by-guest > /guest-file && sync && echo WROTE >&3
echo END >&3
poweroff -f
"
        );
        let disk = busybox_disk(dir.path(), &init);
        let base_before = sha256(&disk);
        let cfg = config(&format!("boot-{name}"), &kernel, dir.path(), &disk);
        let mut vm = UmlPlatform::new().boot(&cfg).unwrap();
        let out = read_all(vm.take_channel().unwrap(), TIMEOUT, dir.path());
        vm.wait().unwrap();
        let log = console(dir.path());
        assert!(
            out.contains("MARKER"),
            "{name}: no marker; channel {out:?}; console {log}"
        );
        let uname = out
            .split("uname=")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim();
        assert!(
            !uname.is_empty() && uname != host_release(),
            "{name}: guest uname {uname:?}"
        );
        let mem_kib: u64 = out
            .split("MemTotal:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no MemTotal in {out:?}"));
        // mem=96M: the guest sees its own memory size, minus the kernel's reservations.
        assert!(
            mem_kib > 40 * 1024 && mem_kib <= 96 * 1024,
            "{name}: MemTotal {mem_kib} kB"
        );
        assert!(
            out.contains("WROTE") && out.contains("END"),
            "{name}: {out:?}; console {log}"
        );
        // The guest's write went to the COW file; the shared base is unchanged.
        assert_eq!(sha256(&disk), base_before, "{name}: base disk modified");
        let cow = std::fs::read(dir.path().join("root.cow")).unwrap();
        assert!(
            cow.windows(16).any(|w| w == b"written-by-guest"),
            "{name}: guest write not in COW file"
        );
        // Nothing left behind: jail directory and runtime directory are gone, cgroup removed.
        assert!(
            !dir.path().join("run").exists(),
            "{name}: runtime dir left behind"
        );
    }
}

#[test]
fn channel_carries_bytes_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let init = format!(
        "{INIT_PRELUDE}
echo READY >&3
read -r line <&3
echo \"ECHO:$line:$(echo \"$line\" | wc -c)\" >&3
poweroff -f
"
    );
    let disk = busybox_disk(dir.path(), &init);
    let cfg = config("channel", &strata_kernel(), dir.path(), &disk);
    let mut vm = UmlPlatform::new().boot(&cfg).unwrap();
    let mut ch = vm.take_channel().unwrap();
    let got = read_until(&mut ch, "READY", TIMEOUT);
    assert!(
        got.contains("READY"),
        "{got:?}; console {}",
        console(dir.path())
    );
    let token = format!("ping-{}-{}", std::process::id(), "x".repeat(300));
    send(&mut ch, &format!("{token}\n"));
    let rest = read_all(ch, TIMEOUT, dir.path());
    vm.wait().unwrap();
    assert!(
        rest.contains(&format!("ECHO:{token}:{}", token.len() + 1)),
        "{rest:?}"
    );
}

/// Reads a field of /proc/PID/status.
fn status_field(pid: i32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in status"))
        .trim()
        .to_string()
}

#[test]
fn jail_confines_the_guest_kernel() {
    let dir = tempfile::tempdir().unwrap();
    // A host secret outside anything shared with the VM.
    let secret_token = format!(
        "strata-secret-{}-{}",
        std::process::id(),
        dir.path().display().to_string().len()
    );
    let secret = dir.path().join("host-secret");
    std::fs::write(&secret, &secret_token).unwrap();
    let init = format!(
        "{INIT_PRELUDE}
echo READY >&3
read -r go <&3
# The token is assembled here so that the disk itself never contains it.
token=\"{t1}\"\"{t2}\"
# Every route a guest root user has towards host files: hostfs (the host's / and the secret's
# directory), the block devices, the guest's own tree.
for src in / {dir} ; do
  if mount -t hostfs -o \"$src\" none /mnt 2>/dev/null; then
    echo \"HOSTFS-MOUNTED $src: $(ls /mnt | tr '\\n' ' ')\" >&3
    cat /mnt/etc/shadow >/dev/null 2>&1 && echo SHADOW-READABLE >&3
    grep -rl --exclude-dir=dev \"$token\" /mnt 2>/dev/null | head -3 | sed 's/^/FOUND /' >&3
    umount /mnt
  else
    echo \"HOSTFS-REFUSED $src\" >&3
  fi
done
grep -l \"$token\" /dev/ubd* 2>/dev/null | sed 's/^/FOUND /' >&3
grep -rl \"$token\" / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null | sed 's/^/FOUND /' >&3
echo END >&3
poweroff -f
",
        dir = dir.path().display(),
        t1 = &secret_token[..10],
        t2 = &secret_token[10..],
    );
    let disk = busybox_disk(dir.path(), &init);
    for (name, kernel) in kernels() {
        let cfg = config(&format!("jail-{name}"), &kernel, dir.path(), &disk);
        let mut vm = UmlPlatform::new().boot(&cfg).unwrap();
        let mut ch = vm.take_channel().unwrap();
        let got = read_until(&mut ch, "READY", TIMEOUT);
        assert!(
            got.contains("READY"),
            "{name}: {got:?}; console {}",
            console(dir.path())
        );
        let pid = vm.pid();

        // From the host: the kernel process is unprivileged, capability-less, no_new_privs...
        assert_eq!(
            status_field(pid, "Uid").split_whitespace().next().unwrap(),
            vm.uid().to_string()
        );
        assert_ne!(vm.uid(), 0);
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
        assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
        assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        // Seccomp filter mode: namespaces, mounts, bpf, keyrings... are refused to the kernel
        // process and every helper it forks.
        assert_eq!(status_field(pid, "Seccomp"), "2");
        // ...PID 1 of its own namespaces...
        assert_eq!(
            status_field(pid, "NSpid")
                .split_whitespace()
                .last()
                .unwrap(),
            "1"
        );
        for ns in ["mnt", "pid", "net", "ipc", "uts"] {
            let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            let vm_ns = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            assert_ne!(host, vm_ns, "{name}: VM shares the host's {ns} namespace");
        }
        // ...whose whole file tree is the kernel, its disks and a private /tmp.
        let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        root.sort();
        // /dev holds only null and random (UML's null channel and RNG open them). Both kernels
        // are dynamically linked (strata's since its vector network driver, which 6.1 does not
        // allow in a static UML): the loader and libc are bound in as well, read-only.
        let (expected, n_mounts): (&[&str], usize) = (
            &["dev", "disk0", "disk0.cow", "lib", "lib64", "linux", "tmp"],
            9,
        );
        assert_eq!(root, expected, "{name}");
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
        assert_eq!(mounts.lines().count(), n_mounts, "{name}: {mounts}");
        let mut dev: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/dev"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        dev.sort();
        assert_eq!(dev, ["null", "random"], "{name}");
        assert!(
            !mounts.contains(" /etc") && !mounts.contains("/proc "),
            "{name}: {mounts}"
        );
        // ...inside its cgroup.
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cg.contains(&format!("strata-vm/{}", cfg.id)),
            "{name}: {cg}"
        );

        // From the guest, as root: no route reaches the host's files.
        send(&mut ch, "go\n");
        let out = read_all(ch, TIMEOUT, dir.path());
        vm.wait().unwrap();
        eprintln!("{name} guest report:\n{out}");
        assert!(
            out.contains("END"),
            "{name}: {out:?}; console {}",
            console(dir.path())
        );
        assert!(
            !out.contains("FOUND"),
            "{name}: guest found the host secret: {out}"
        );
        assert!(!out.contains("SHADOW-READABLE"), "{name}: {out}");
        for line in out.lines().filter(|l| l.starts_with("HOSTFS-MOUNTED")) {
            // hostfs (Debian's kernel has it built in) only sees the jail: kernel, disks, /tmp.
            assert!(
                !line.contains("etc") && !line.contains("host-secret"),
                "{name}: {line}"
            );
        }
    }
}

#[test]
fn kill_leaves_no_process_mount_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let init = format!(
        "{INIT_PRELUDE}
# a few guest processes, so the VM has several host processes
sleep 1000 & sleep 1000 &
echo READY >&3
exec sleep 1000
"
    );
    let disk = busybox_disk(dir.path(), &init);
    let mut cfg = config("kill", &strata_kernel(), dir.path(), &disk);
    cfg.cpu_limit = Some(0.5);
    let mut vm = UmlPlatform::new().boot(&cfg).unwrap();
    let mut ch = vm.take_channel().unwrap();
    let got = read_until(&mut ch, "READY", TIMEOUT);
    assert!(
        got.contains("READY"),
        "{got:?}; console {}",
        console(dir.path())
    );
    let cgroups = vm.cgroup_dirs();
    assert!(!cgroups.is_empty());
    let procs: Vec<i32> = std::fs::read_to_string(cgroups[0].join("cgroup.procs"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        procs.len() >= 4,
        "UML runs a host process per guest process: {procs:?}"
    );
    // The CPU limit is a CFS quota of half a CPU on the VM's cgroup.
    let quota = cgroups.iter().find_map(|d| {
        std::fs::read_to_string(d.join("cpu.cfs_quota_us"))
            .or_else(|_| std::fs::read_to_string(d.join("cpu.max")))
            .ok()
    });
    assert!(
        matches!(
            quota.as_deref().map(str::trim),
            Some("50000") | Some("50000 100000")
        ),
        "{quota:?}"
    );
    let mem = vm.memory().unwrap();
    assert!(
        mem.current_bytes > 0 && mem.limit_bytes >= 96 << 20,
        "{mem:?}"
    );
    let jail = cfg.runtime_dir.join("jail");
    assert!(jail.is_dir());

    vm.kill().unwrap();
    drop(ch);
    for pid in procs {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived"
        );
    }
    for cg in cgroups {
        assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    }
    assert!(!cfg.runtime_dir.exists(), "runtime dir left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.path().display().to_string()),
        "mount left behind"
    );
}

#[test]
fn dropping_a_vm_kills_it() {
    let dir = tempfile::tempdir().unwrap();
    let init = format!("{INIT_PRELUDE}\necho READY >&3\nexec sleep 1000\n");
    let disk = busybox_disk(dir.path(), &init);
    let cfg = config("drop", &strata_kernel(), dir.path(), &disk);
    let mut vm = UmlPlatform::new().boot(&cfg).unwrap();
    let mut ch = vm.take_channel().unwrap();
    assert!(read_until(&mut ch, "READY", TIMEOUT).contains("READY"));
    let pid = vm.pid();
    drop(vm);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!cfg.runtime_dir.exists());
}

#[test]
fn a_guest_kernel_panic_ends_the_vm() {
    // The guest's init exits: its kernel panics ("Attempted to kill init!") and aborts. The VM
    // must end with a failure status, not spin (a UML kernel that is its namespace's PID 1 would
    // loop forever on a SIGABRT the namespace ignores), and leave nothing behind.
    for (name, kernel) in kernels() {
        let dir = tempfile::tempdir().unwrap();
        let init = format!("{INIT_PRELUDE}\necho READY >&3\nexit 3\n");
        let disk = busybox_disk(dir.path(), &init);
        let cfg = config(&format!("panic-{name}"), &kernel, dir.path(), &disk);
        let mut vm = UmlPlatform::new().boot(&cfg).unwrap();
        let pid = vm.pid();
        let out = read_all(vm.take_channel().unwrap(), TIMEOUT, dir.path());
        assert!(out.contains("READY"), "{name}: {out:?}");
        let status = vm.wait().unwrap();
        assert!(
            !status.success(),
            "{name}: a panicked VM reported {status:?}"
        );
        let log = console(dir.path());
        assert!(
            log.contains("Attempted to kill init"),
            "{name}: console {log}"
        );
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name}: VM process left"
        );
        assert!(!cfg.runtime_dir.exists(), "{name}: runtime dir left");
    }
}

#[test]
fn bad_configs_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let platform = UmlPlatform::new();

    let mut cfg = config("bad", Path::new("/nonexistent/linux"), dir.path(), &disk);
    let err = platform.boot(&cfg).unwrap_err();
    assert!(matches!(err, VmmError::File { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/linux"), "{err}");

    cfg.kernel = debian_kernel();
    cfg.vcpus = 2;
    let err = platform.boot(&cfg).unwrap_err();
    assert!(err.to_string().contains("uniprocessor"), "{err}");

    cfg.vcpus = 1;
    cfg.disks[0].path = dir.path().join("missing.img");
    let err = platform.boot(&cfg).unwrap_err();
    assert!(err.to_string().contains("missing.img"), "{err}");

    let mut c = VmConfig::new("bad id!", debian_kernel(), dir.path().join("run"));
    c.init = Some("/init".into());
    assert!(matches!(platform.boot(&c), Err(VmmError::InvalidConfig(_))));

    assert!(!dir.path().join("run").exists());
    assert!(!dir.path().join("root.cow").exists());
}
