//! The `uml` platform: the guest kernel is a User-Mode Linux process on the host, started in
//! the [jail](crate::jail). Disks are `ubd` devices over files (copy-on-write files over shared
//! read-only bases), the channel is serial line 1 mapped to a host socket, and the console goes
//! to a log file or nowhere.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::cgroup::VmCgroup;
use crate::error::{Result, Unavailable, VmmError};
use crate::jail::{self, JailFile, JailSpec};
use crate::kvm::disk_letters;
use crate::netns_tap::{self, TAP_FD};
use crate::platform::{Console, Platform, VmConfig};
use crate::vm::Vm;

/// The guest's serial line carrying strata-proto (ssl1 → /dev/ttyS1, created by devtmpfs).
pub const CHANNEL_DEVICE: &str = "/dev/ttyS1";
/// Host-side memory the VM may use beyond its guest memory (UML's own text, page tables, the
/// per-address-space helper processes).
const HOST_OVERHEAD_BYTES: u64 = 96 << 20;
/// Host processes per VM: in UML's ptrace mode every guest address space is a host process.
const PIDS_MAX: u64 = 8192;
/// The jailed process's fd number for the channel.
const CHANNEL_FD: i32 = 3;
/// ubd's device limit.
const MAX_DISKS: usize = 16;

/// The `uml` platform.
#[derive(Debug, Default)]
pub struct UmlPlatform;

impl UmlPlatform {
    /// The platform (nothing is probed until [`Platform::check`]).
    pub fn new() -> Self {
        UmlPlatform
    }
}

/// The kernel command line for `config`, as the jailed kernel sees its files: `/linux`,
/// `/initrd`, `/diskN` (and `/diskN.cow`). `console=` comes before `init=` so that UML does not
/// append `console=tty0` to init's arguments; UML's exit status is always 0, so nothing here
/// depends on it.
/// `nic`: the guest NIC's MAC and MTU at boot.
pub(crate) fn command_line(config: &VmConfig, nic: Option<(&str, u32)>) -> Vec<String> {
    let mut args = vec!["linux".to_string()];
    for (i, disk) in config.disks.iter().enumerate() {
        args.push(match (&disk.cow, disk.read_only) {
            (Some(_), _) => format!("ubd{i}=/disk{i}.cow,/disk{i}"),
            (None, true) => format!("ubd{i}r=/disk{i}"),
            (None, false) => format!("ubd{i}=/disk{i}"),
        });
    }
    args.push(format!("mem={}M", config.memory_mib));
    // Every console and serial line is detached except the ones strata uses.
    args.push("con=null".into());
    if matches!(config.console, Console::File(_)) {
        args.push("con0=null,fd:2".into());
    }
    args.push("ssl=null".into());
    args.push(format!("ssl1=fd:{CHANNEL_FD}"));
    if let Some((mac, mtu)) = nic {
        // The vector driver's `fd` transport over the tap fd the host opened (netns_tap.rs);
        // `vec=0`: a tap is not a socket, so no recvmmsg/sendmmsg, plain readv/writev.
        args.push(format!(
            "vec0:transport=fd,fd={TAP_FD},vec=0,mac={mac},mtu={mtu}"
        ));
    }
    // UML keeps its pid file and memory file in the jail's private /tmp.
    args.push("uml_dir=/tmp".into());
    // A fixed instance name puts the management console at /tmp/vm/mconsole (uml_hotplug.rs).
    args.push(format!("umid={}", crate::uml_hotplug::UMID));
    if config.initrd.is_some() {
        args.push("initrd=/initrd".into());
    }
    args.push("console=tty0".into());
    args.push("quiet".into());
    // Debian's UML kernel benchmarks RAID6 for ~850 ms at boot; strata's kernel has no RAID6.
    args.push("initcall_blacklist=raid6_select_algo".into());
    args.push(format!("strata.channel={CHANNEL_DEVICE}"));
    args.extend(config.kernel_params.iter().cloned());
    if let Some(init) = &config.init {
        let key = if config.initrd.is_some() {
            "rdinit"
        } else {
            "init"
        };
        args.push(format!("{key}={init}"));
    }
    args
}

fn open_null() -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")
        .map_err(|e| VmmError::file("null device", "/dev/null", e))
}

fn check_readable(what: &str, path: &Path, executable: bool) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| VmmError::file(what, path, e))?;
    if !meta.is_file() {
        return Err(VmmError::InvalidConfig(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    let mode = meta.permissions().mode();
    let need = if executable { 0o005 } else { 0o004 };
    if mode & need != need {
        return Err(VmmError::InvalidConfig(format!(
            "{what} {} has mode {:o}: the jailed VM runs as an unprivileged uid and needs it \
             world-{} (chmod o+{})",
            path.display(),
            mode & 0o7777,
            if executable {
                "readable and executable"
            } else {
                "readable"
            },
            if executable { "rx" } else { "r" },
        )));
    }
    Ok(())
}

impl Platform for UmlPlatform {
    fn name(&self) -> &'static str {
        "uml"
    }

    fn nic_at_start(&self) -> bool {
        true
    }

    fn check(&self) -> Result<(), Unavailable> {
        // SAFETY: geteuid has no failure mode.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Unavailable {
                platform: "uml",
                reason: "the UML jail needs root (namespaces, mounts, cgroups); run strata as root"
                    .into(),
            });
        }
        if crate::kernel::default_kernel("uml").is_none() {
            return Err(Unavailable {
                platform: "uml",
                reason: "no UML guest kernel: run scripts/build-guest-kernel.sh or install user-mode-linux".into(),
            });
        }
        Ok(())
    }

    fn boot(&self, config: &VmConfig) -> Result<Vm> {
        config.validate()?;
        if config.vcpus != 1 {
            return Err(VmmError::InvalidConfig(format!(
                "{} vCPUs requested: the UML guest kernel is uniprocessor; use 1 vCPU (limit CPU time \
                 with cpu_limit instead) or the kvm platform",
                config.vcpus
            )));
        }
        check_readable("kernel", &config.kernel, true)?;
        if let Some(initrd) = &config.initrd {
            check_readable("initrd", initrd, false)?;
        }
        if config.rehearsal_disk.is_some() {
            return Err(VmmError::InvalidConfig(
                "a rehearsal disk is for pooled qemu VMs: UML runs guest code natively, there \
                 is no translation to warm"
                    .into(),
            ));
        }
        if config.disks.len() > MAX_DISKS {
            return Err(VmmError::InvalidConfig(format!(
                "{} disks requested: UML supports at most {MAX_DISKS} ubd devices",
                config.disks.len()
            )));
        }
        // A dynamically linked kernel (Debian's) needs its interpreter and libraries in the jail.
        let libs = crate::kernel::shared_libraries(&config.kernel)
            .map_err(|e| VmmError::file("kernel", &config.kernel, e))?;
        let uid = jail::allocate_uid();

        // The jail's files: kernel, initrd, disks (bases read-only, COW files and writable disks
        // owned by the VM's uid).
        // UML's `null` channel opens the host's /dev/null (without it the guest has no console
        // and its init no stdio); its hardware RNG reads /dev/random. Both are harmless to share.
        let mut files = vec![
            JailFile {
                host: "/dev/null".into(),
                name: "dev/null".into(),
                writable: true,
                executable: false,
                device: true,
            },
            JailFile {
                host: "/dev/urandom".into(),
                name: "dev/random".into(),
                writable: false,
                executable: false,
                device: true,
            },
        ];
        files.push(JailFile {
            host: config.kernel.clone(),
            name: "linux".into(),
            writable: false,
            executable: true,
            device: false,
        });
        for lib in &libs {
            let name = lib.to_string_lossy().trim_start_matches('/').to_string();
            files.push(JailFile {
                host: lib.clone(),
                name,
                writable: false,
                executable: true,
                device: false,
            });
        }
        if let Some(initrd) = &config.initrd {
            files.push(JailFile {
                host: initrd.clone(),
                name: "initrd".into(),
                writable: false,
                executable: false,
                device: false,
            });
        }
        let mut created_cows = Vec::new();
        let result = (|| -> Result<Vm> {
            for (i, disk) in config.disks.iter().enumerate() {
                let what = format!("disk {i}");
                match &disk.cow {
                    Some(cow) => {
                        check_readable(&what, &disk.path, false)?;
                        let f = crate::cow::create(cow, &disk.path, &format!("/disk{i}")).map_err(
                            |source| VmmError::Cow {
                                cow: cow.clone(),
                                base: disk.path.clone(),
                                source,
                            },
                        )?;
                        created_cows.push(cow.clone());
                        chown(&f, uid)
                            .map_err(|e| VmmError::file(format!("{what} COW file"), cow, e))?;
                        files.push(JailFile {
                            host: disk.path.clone(),
                            name: format!("disk{i}"),
                            writable: false,
                            executable: false,
                            device: false,
                        });
                        files.push(JailFile {
                            host: cow.clone(),
                            name: format!("disk{i}.cow"),
                            writable: true,
                            executable: false,
                            device: false,
                        });
                    }
                    None if disk.read_only => {
                        check_readable(&what, &disk.path, false)?;
                        files.push(JailFile {
                            host: disk.path.clone(),
                            name: format!("disk{i}"),
                            writable: false,
                            executable: false,
                            device: false,
                        });
                    }
                    None => {
                        // A writable disk belongs to this VM: hand it to the VM's uid.
                        let f = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                            .open(&disk.path)
                            .map_err(|e| VmmError::file(&what, &disk.path, e))?;
                        if !f
                            .metadata()
                            .map_err(|e| VmmError::file(&what, &disk.path, e))?
                            .is_file()
                        {
                            return Err(VmmError::InvalidConfig(format!(
                                "{what} {} is not a regular file",
                                disk.path.display()
                            )));
                        }
                        chown(&f, uid).map_err(|e| VmmError::file(&what, &disk.path, e))?;
                        files.push(JailFile {
                            host: disk.path.clone(),
                            name: format!("disk{i}"),
                            writable: true,
                            executable: false,
                            device: false,
                        });
                    }
                }
            }

            std::fs::create_dir_all(&config.runtime_dir)
                .map_err(|e| VmmError::file("runtime directory", &config.runtime_dir, e))?;
            let jail_root = config.runtime_dir.join("jail");
            match std::fs::create_dir(&jail_root) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(VmmError::file("jail root", &jail_root, e)),
            }
            let cleanup_dirs = vec![jail_root.clone(), config.runtime_dir.clone()];
            let remove_dirs = || {
                for d in &cleanup_dirs {
                    let _ = std::fs::remove_dir(d);
                }
            };

            let (host_end, guest_end) = UnixStream::pair().map_err(|e| VmmError::Jail {
                step: "create channel socketpair".into(),
                source: e,
            })?;
            let null = open_null()?;
            let log = match &config.console {
                Console::Null => None,
                Console::File(p) => Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o640)
                        .custom_flags(libc::O_CLOEXEC)
                        .open(p)
                        .map_err(|e| VmmError::file("console log", p, e))?,
                ),
            };
            let out_fd = log
                .as_ref()
                .map(|f| f.as_raw_fd())
                .unwrap_or(null.as_raw_fd());

            let memory = u64::from(config.memory_mib) << 20;
            let cgroup = match VmCgroup::create(
                &config.id,
                config.cgroups_path.as_deref(),
                memory + HOST_OVERHEAD_BYTES,
                PIDS_MAX,
                config.cpu_limit,
            ) {
                Ok(c) => c,
                Err(e) => {
                    remove_dirs();
                    return Err(e);
                }
            };
            let procs = match cgroup.procs_files() {
                Ok(p) => p,
                Err(e) => {
                    let _ = cgroup.destroy();
                    remove_dirs();
                    return Err(e);
                }
            };
            // The guest's NIC: a tap in the VM's network namespace, redirected to its
            // interface now, or (network_at_start) once the namespace has one
            // (Vm::take_over_network). The VM process itself stays in the jail's empty
            // namespace.
            let tap = match netns_tap::for_vm(
                &config.id,
                config.network.as_ref(),
                config.network_at_start,
            ) {
                Ok(t) => t,
                Err(e) => {
                    let _ = cgroup.destroy();
                    remove_dirs();
                    return Err(e);
                }
            };
            let mut fds = vec![
                (null.as_raw_fd(), 0),
                (out_fd, 1),
                (out_fd, 2),
                (guest_end.as_raw_fd(), CHANNEL_FD),
            ];
            if let Some(t) = &tap {
                fds.push((t.fd.as_raw_fd(), TAP_FD));
            }
            let spec = JailSpec {
                root: jail_root,
                files,
                // Guest memory (UML's memory file is sparse; the kernel's reserved
                // address gap is never touched) plus slack for UML's pid file.
                tmp_bytes: memory + (16 << 20),
                uid,
                gid: uid,
                exe: "/linux".into(),
                argv: command_line(
                    config,
                    tap.as_ref().map(|t| (t.boot_mac.as_str(), t.boot_mtu)),
                ),
                env: vec![
                    "TMPDIR=/tmp".into(),
                    "HOME=/tmp".into(),
                    "PATH=/".into(),
                    // glibc registers rseq for the kernel's main thread; UML's ptrace stubs
                    // inherit that registration over memory they do not have and die with
                    // SIGSEGV (seen with the static build). UML has no use for rseq.
                    "GLIBC_TUNABLES=glibc.pthread.rseq=0".into(),
                ],
                fds,
                cgroup_procs: procs,
                rlimits: vec![
                    (libc::RLIMIT_CORE, 0),
                    (libc::RLIMIT_NOFILE, 1024),
                    (libc::RLIMIT_NPROC, PIDS_MAX),
                ],
                cpu: jail::cpu_for_single_cpu_guest(),
            };
            tracing::debug!(id = %config.id, uid, argv = ?spec.argv, "booting UML guest");
            let pid = match jail::spawn(&spec) {
                Ok(pid) => pid,
                Err(e) => {
                    let _ = cgroup.destroy();
                    remove_dirs();
                    return Err(e);
                }
            };
            Ok(Vm {
                platform: "uml",
                pid,
                channel: Some(host_end),
                cgroup: Some(cgroup),
                cleanup_dirs,
                status: None,
                uid,
                accelerator: None,
                stderr: None,
                console_log: match &config.console {
                    Console::File(p) => Some(p.clone()),
                    Console::Null => None,
                },
                // Our tap fd closes here: the VM holds the only other one, so the tap goes
                // with it.
                deferred_nic: tap.as_ref().and_then(|t| t.deferred.clone()),
                qmp: None,
                nic: tap.and_then(|t| t.nic),
            })
        })();
        if result.is_err() {
            for cow in created_cows {
                let _ = std::fs::remove_file(cow);
            }
        }
        result
    }

    fn disk_device(&self, index: usize) -> String {
        format!("/dev/ubd{}", disk_letters(index))
    }

    fn channel_device(&self) -> &'static str {
        CHANNEL_DEVICE
    }
}

fn chown(f: &File, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::fchown(f, Some(uid), Some(uid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Disk;

    #[test]
    fn command_line_orders_console_before_init() {
        let mut c = VmConfig::new("t", "/k", "/run/t");
        c.memory_mib = 256;
        c.disks = vec![
            Disk {
                path: "/img".into(),
                cow: Some("/c".into()),
                read_only: false,
            },
            Disk {
                path: "/ro".into(),
                cow: None,
                read_only: true,
            },
            Disk {
                path: "/rw".into(),
                cow: None,
                read_only: false,
            },
        ];
        c.initrd = Some("/i".into());
        c.init = Some("/strata-agent".into());
        c.kernel_params = vec!["strata.lower=/dev/ubda".into()];
        let args = command_line(&c, None);
        assert_eq!(args[0], "linux");
        assert_eq!(
            &args[1..4],
            ["ubd0=/disk0.cow,/disk0", "ubd1r=/disk1", "ubd2=/disk2"]
        );
        assert!(args.contains(&"mem=256M".to_string()));
        assert!(args.contains(&"ssl1=fd:3".to_string()));
        assert!(args.contains(&"initrd=/initrd".to_string()));
        assert!(args.contains(&"strata.channel=/dev/ttyS1".to_string()));
        let console = args.iter().position(|a| a == "console=tty0").unwrap();
        let param = args
            .iter()
            .position(|a| a == "strata.lower=/dev/ubda")
            .unwrap();
        assert_eq!(args.last().unwrap(), "rdinit=/strata-agent");
        assert!(console < args.len() - 1 && param < args.len() - 1);
        assert!(
            !args.iter().any(|a| a.starts_with("con0=")),
            "no log: console discarded"
        );
    }

    #[test]
    fn init_without_initrd() {
        let mut c = VmConfig::new("t", "/k", "/run/t");
        c.init = Some("/init".into());
        c.console = Console::File("/log".into());
        let args = command_line(&c, None);
        assert_eq!(args.last().unwrap(), "init=/init");
        assert!(args.contains(&"con0=null,fd:2".to_string()));
    }

    #[test]
    fn devices() {
        let p = UmlPlatform::new();
        assert_eq!(p.disk_device(0), "/dev/ubda");
        assert_eq!(p.disk_device(2), "/dev/ubdc");
        assert_eq!(p.channel_device(), "/dev/ttyS1");
    }
}
