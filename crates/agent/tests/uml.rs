//! The agent as PID 1 of a real guest kernel: User-Mode Linux (Debian's `linux`, or the kernel in
//! $STRATA_TEST_UML_KERNEL) boots a disk holding only the agent, the agent assembles the
//! container rootfs from an image disk and runs workloads over the UML serial line.
//!
//! The test binary of the agent is dynamically linked, so its libraries are copied next to it on
//! the agent disk; the release build from scripts/build-agent.sh is static and needs none. The
//! overlay rootfs test boots the way strata does (crates/vmm, jailed, strata's own kernel, which
//! has overlayfs built in, and the static agent): strata's kernel booted un-jailed as below dies
//! at init's first instructions on this kind of host ("wait_stub_done: failed to wait for
//! SIGTRAP").

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use strata_proto::Client;

fn uml_kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("STRATA_TEST_UML_KERNEL") {
        return Some(k.into());
    }
    let k = PathBuf::from("/usr/bin/linux");
    k.exists().then_some(k)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies `bin` and the shared libraries it needs (per ldd) under `root`.
fn install_with_libs(bin: &Path, root: &Path, dest: &str) {
    std::fs::copy(bin, root.join(dest.trim_start_matches('/'))).unwrap();
    let out = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line.split_whitespace().find(|w| w.starts_with('/'));
        if let Some(p) = path {
            let target = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(p, &target).unwrap();
        }
    }
}

/// A booted guest; the whole UML process group is killed on drop.
struct Guest {
    child: Child,
    client: Option<Client>,
    dir: tempfile::TempDir,
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.client = None;
        // SAFETY: signals the process group we created for UML (process_group(0) below).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Guest {
    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }
}

/// Boots `kernel` with the agent disk as ubd0, the busybox image as ubd1, and `extra_disks`
/// (sizes in MiB, empty ext4) from ubd2 on.
/// The image disk `d`/img.img: busybox and /etc/marker, ext4.
fn image_disk(d: &Path) -> PathBuf {
    let img_root = d.join("img-root");
    std::fs::create_dir_all(img_root.join("bin")).unwrap();
    for sub in ["dev", "proc", "sys", "tmp", "etc", "root"] {
        std::fs::create_dir_all(img_root.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", img_root.join("bin/busybox")).unwrap();
    for c in [
        "sh", "echo", "cat", "uname", "id", "stty", "sleep", "ls", "mount", "tr", "head",
        "hostname", "grep", "test", "[",
    ] {
        std::os::unix::fs::symlink("busybox", img_root.join("bin").join(c)).unwrap();
    }
    std::fs::write(img_root.join("etc/marker"), "from the image disk\n").unwrap();
    let img = d.join("img.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&img_root)
        .arg(&img)
        .arg("32M"));
    img
}

/// An empty ext4 disk `d`/`name` of `mib` MiB.
fn empty_disk(d: &Path, name: &str, mib: u32) -> PathBuf {
    let path = d.join(name);
    run(Command::new("mkfs.ext4")
        .arg("-q")
        .arg(&path)
        .arg(format!("{mib}M")));
    path
}

fn boot(kernel: &Path, params: &[&str]) -> Guest {
    boot_with(kernel, params, &[])
}

fn boot_with(kernel: &Path, params: &[&str], extra_disks: &[u32]) -> Guest {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The agent disk: just the agent, its libraries and the mount points it needs.
    let agent_root = d.join("agent-root");
    for sub in ["dev", "proc", "sys", "run", "tmp"] {
        std::fs::create_dir_all(agent_root.join(sub)).unwrap();
    }
    install_with_libs(
        Path::new(env!("CARGO_BIN_EXE_strata-agent")),
        &agent_root,
        "/strata-agent",
    );
    run(Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&agent_root)
        .arg(d.join("agent.img"))
        .arg("64M"));
    image_disk(d);

    let mut extra_args = Vec::new();
    for (i, mib) in extra_disks.iter().enumerate() {
        let path = empty_disk(d, &format!("extra{i}.img"), *mib);
        extra_args.push(format!("ubd{}={}", i + 2, path.display()));
    }

    let (host, guest) = UnixStream::pair().unwrap();
    let fd = guest.as_raw_fd();
    let console = std::fs::File::create(d.join("console.log")).unwrap();
    let mut cmd = Command::new(kernel);
    cmd.arg(format!("ubd0r={}", d.join("agent.img").display()))
        .arg(format!("ubd1={}", d.join("img.img").display()))
        .args(&extra_args)
        .args([
            "root=/dev/ubda",
            "ro",
            "mem=128M",
            "con=null",
            "con0=null,fd:2",
            "ssl=null",
            "ssl1=fd:3",
        ])
        .arg(format!("uml_dir={}", d.display()))
        .args([
            "console=tty0",
            "quiet",
            "initcall_blacklist=raid6_select_algo",
            "strata.channel=/dev/ttyS1",
            "strata.debug=1",
        ])
        .args(params)
        .arg("init=/strata-agent")
        .stdin(Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console)
        .process_group(0);
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
    let mut g = Guest {
        child,
        client: None,
        dir,
    };
    match Client::from_unix_stream(host, Duration::from_secs(60)) {
        Ok(c) => g.client = Some(c),
        Err(e) => panic!(
            "no handshake from the guest agent: {e}\nconsole:\n{}",
            g.console()
        ),
    }
    g
}

fn process(args: &[&str]) -> serde_json::Value {
    json!({"args": args, "env": ["PATH=/bin"], "cwd": "/"})
}

#[test]
fn the_agent_runs_workloads_as_pid1_of_a_uml_guest() {
    let Some(kernel) = uml_kernel() else {
        strata_testkit::skip_or_fail("no UML kernel (install user-mode-linux: scripts/deps.sh)");
        return;
    };
    let mut g = boot(
        &kernel,
        &[
            "strata.lower=/dev/ubdb",
            "strata.lowerfs=ext4",
            "strata.rootrw=1",
        ],
    );
    let c = g.client.as_ref().unwrap();
    let config = json!({
        "process": process(&["sh", "-c", "cat /etc/marker; uname -r; hostname; cat; echo err >&2; exit 7"]),
        "hostname": "strata-guest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["newinstance"]},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/docker/x/resolv.conf", "options": ["rbind", "ro"]}
        ]
    });
    let main = c.create(&serde_json::to_vec(&config).unwrap()).unwrap();
    let warnings = c.connection_errors();
    assert!(
        warnings.iter().any(|w| w.contains("resolv.conf")),
        "{warnings:?}"
    );

    // An exec before start sees the assembled rootfs and its mounts.
    let probe = c
        .exec(
            &serde_json::to_vec(&process(&[
                "sh",
                "-c",
                "cat /proc/1/comm; ls /dev/null; test -e /dev/ttyS1 || echo channel-hidden",
            ]))
            .unwrap(),
            false,
        )
        .unwrap();
    let (o, e, st) = probe.output().unwrap();
    assert_eq!(st.code, 0, "{}", String::from_utf8_lossy(&e));
    assert_eq!(
        String::from_utf8_lossy(&o),
        "strata-agent\n/dev/null\nchannel-hidden\n"
    );

    // Every byte value survives the serial line both ways (raw mode: no echo, no CR/LF
    // translation, no XON/XOFF, no ^C), with the credit windows cycling many times.
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let echo = c
        .exec(&serde_json::to_vec(&process(&["cat"])).unwrap(), false)
        .unwrap();
    let mut stdin = echo.take_stdin().unwrap();
    let (o, _, st) = std::thread::scope(|s| {
        s.spawn(|| {
            stdin.write_all(&data).unwrap();
            drop(stdin);
        });
        echo.output().unwrap()
    });
    assert_eq!(st.code, 0);
    assert_eq!(o.len(), data.len());
    assert!(o == data, "bytes changed on the way through the guest");

    // A pty exec with a resize.
    let tty = c
        .exec(
            &serde_json::to_vec(&process(&["sh", "-c", "read x; stty size"])).unwrap(),
            true,
        )
        .unwrap();
    tty.resize(33, 77).unwrap();
    let mut w = tty.take_stdin().unwrap();
    w.write_all(b"go\n").unwrap();
    let mut out = String::new();
    tty.take_stdout().unwrap().read_to_string(&mut out).unwrap();
    assert!(out.contains("33 77"), "{out:?}");
    assert_eq!(tty.wait().unwrap().code, 0);

    c.start().unwrap();
    let mut stdin = main.take_stdin().unwrap();
    stdin.write_all(b"through the serial line\n").unwrap();
    drop(stdin);
    let (o, e, st) = main.output().unwrap();
    let o = String::from_utf8_lossy(&o).into_owned();
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines.len(), 4, "{o:?}\nconsole:\n{}", g.console());
    assert_eq!(lines[0], "from the image disk");
    assert_ne!(
        lines[1],
        host_release.trim(),
        "the guest runs its own kernel"
    );
    assert_eq!(lines[2], "strata-guest");
    assert_eq!(lines[3], "through the serial line");
    assert_eq!(String::from_utf8_lossy(&e), "err\n");
    assert_eq!(st.code, 7);

    // After the acknowledged exit the agent powers the guest off: the UML process ends.
    g.client = None;
    let status = g.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        g.console().contains("started"),
        "strata.debug=1 logs to the console:\n{}",
        g.console()
    );
    // The writable root was unmounted before power-off: its journal is clean.
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(g.dir.path().join("img.img"))
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// Runs `script` as the main process of the guest `c` talks to; `console` for failures.
fn run_script(c: &Client, script: &str, console: &dyn Fn() -> String) -> String {
    let config = json!({
        "process": process(&["sh", "-c", script]),
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]
    });
    let main = c.create(&serde_json::to_vec(&config).unwrap()).unwrap();
    c.start().unwrap();
    let (o, e, st) = main.output().unwrap();
    assert_eq!(
        st.code,
        0,
        "{}\nconsole:\n{}",
        String::from_utf8_lossy(&e),
        console()
    );
    String::from_utf8_lossy(&o).into_owned()
}

/// A guest booted as strata boots one (crates/vmm: strata's own kernel, jailed, the static
/// agent of scripts/build-agent.sh in an initramfs), with the image disk read-only as ubda (the
/// overlay's lower layer), `upper` (an empty ext4 disk) as ubdb when given, and `params`.
struct JailedGuest {
    vm: strata_vmm::Vm,
    client: Option<Client>,
    dir: tempfile::TempDir,
}

impl JailedGuest {
    fn boot(upper: bool, params: &[&str]) -> JailedGuest {
        use strata_vmm::{
            Console, Disk, DiskFormat, GuestContract, Platform, UmlPlatform, VmConfig,
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let agent = strata_testkit::static_agent(Path::new(env!("CARGO_TARGET_TMPDIR")));
        let initrd = strata_vmm::initramfs::agent_initramfs(&agent, &d.join("initramfs")).unwrap();
        let platform = UmlPlatform::new();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "agent-overlay-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let mut cfg = VmConfig::new(id, strata_testkit::guest_kernel(), d.join("run"));
        cfg.initrd = Some(initrd);
        cfg.init = Some(strata_vmm::initramfs::AGENT_GUEST_PATH.into());
        cfg.disks = vec![Disk {
            path: image_disk(d),
            cow: None,
            read_only: true,
        }];
        if upper {
            cfg.disks.push(Disk {
                path: empty_disk(d, "upper.img", 32),
                cow: None,
                read_only: false,
            });
        }
        cfg.kernel_params = GuestContract {
            lower: Some((platform.disk_device(0), DiskFormat::Ext4)),
            upper: upper.then(|| platform.disk_device(1)),
            rootrw: false,
        }
        .kernel_params();
        cfg.kernel_params
            .extend(params.iter().map(|p| p.to_string()));
        cfg.console = Console::File(d.join("console.log"));
        let mut vm = platform.boot(&cfg).unwrap();
        let ch = vm.take_channel().unwrap();
        let mut g = JailedGuest {
            vm,
            client: None,
            dir,
        };
        match Client::with_timeout(ch.try_clone().unwrap(), ch, Duration::from_secs(60)) {
            Ok(c) => g.client = Some(c),
            Err(e) => panic!(
                "no handshake from the guest agent: {e}\nconsole:\n{}",
                g.console()
            ),
        }
        g
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    fn run(&self, script: &str) -> String {
        run_script(self.client.as_ref().unwrap(), script, &|| self.console())
    }

    /// Powers the guest off and waits for it (its disks are then consistent).
    fn shut_down(mut self) -> tempfile::TempDir {
        let _ = self.client.take().map(|c| c.shutdown());
        self.vm.wait().unwrap();
        self.dir
    }
}

/// `path` of the ext4 image `disk`, read straight from the disk by debugfs.
fn debugfs_cat(disk: &Path, path: &str) -> String {
    let cat = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&cat.stdout).into_owned()
}

#[test]
fn the_rootfs_is_an_overlay_of_the_read_only_image_and_a_writable_layer() {
    // tmpfs upper.
    let g = JailedGuest::boot(false, &["strata.uppersize=16m"]);
    let out = g.run("echo changed > /etc/marker; cat /etc/marker; cat /proc/mounts");
    assert!(out.starts_with("changed\n"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("overlay / overlay ")),
        "{out}"
    );
    let dir = g.shut_down();
    assert_eq!(
        debugfs_cat(&dir.path().join("img.img"), "/etc/marker"),
        "from the image disk\n",
        "the image disk is untouched"
    );

    // ext4 upper disk: the write lands there.
    let g = JailedGuest::boot(true, &[]);
    let out = g.run("echo on-upper > /etc/marker; sync; cat /etc/marker");
    assert_eq!(out, "on-upper\n");
    let dir = g.shut_down();
    assert_eq!(
        debugfs_cat(&dir.path().join("upper.img"), "/upper/etc/marker"),
        "on-upper\n"
    );
    assert_eq!(
        debugfs_cat(&dir.path().join("img.img"), "/etc/marker"),
        "from the image disk\n"
    );
}
