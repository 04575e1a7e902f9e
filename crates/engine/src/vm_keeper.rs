//! The per-VM keeper: one small host process per VM (what the container monitor is to a
//! container, and what runc's init pid is to an engine). It boots the VM through strata-vmm with
//! strata-agent as PID 1, owns the strata-proto client, sends config.json, relays the workload's
//! stdio (pty and resize included) and signals, and exits with the workload's exit code. Later
//! commands (`strata exec/kill`, `strata-oci start/kill/exec/state`) reach it over a Unix socket
//! in the VM's state directory.
//!
//! Used by `strata` (through vm_backend.rs) and `strata-oci` (crates/cli/src/oci/vm.rs).
//!
//! State directory `<root>/vm/<id>/`: `state.json` (keeper and VM pids, cgroups, status, exit
//! code), `keeper.sock`, `run/` (the jail's mount point), `root.cow` (the VM's writes over the
//! shared image disk), `console.log` (guest kernel messages).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};
use strata_proto::{Client, Session};
use strata_vmm::{Console, Disk, DiskFormat, GuestContract, Platform, VmConfig};

use crate::{pty, relay};

/// How a VM is made: `<bundle>/vm.json` for `strata run --vm`, derived from the bundle by
/// strata-oci.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSpec {
    /// `auto`, `uml`, `qemu` or `kvm`.
    pub platform: String,
    /// A guest kernel the user brought (`--kernel`), else the platform's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// The user's initrd (`--initrd`), unpacked after the agent's (e.g. the kernel's modules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The image's root disk (ext4, shared read-only; the VM writes to its own COW file).
    pub disk: PathBuf,
    /// Extra block devices for `-v` volumes, in guest order after the root disk.
    #[serde(default)]
    pub volumes: Vec<VolumeDisk>,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Where the agent's initramfs is cached.
    pub cache_dir: PathBuf,
    /// The workload gets a terminal (a guest pty relayed to the caller's stdio).
    #[serde(default)]
    pub tty: bool,
    /// config.json's `linux.cgroupsPath` (strata-oci): the VM's host processes live in the cgroup
    /// the engine chose. None: strata's `/strata-vm/<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<PathBuf>,
}

/// A volume as a block device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeDisk {
    /// The host file holding the filesystem image.
    pub path: PathBuf,
    /// The mount point in the guest (the config.json mount's destination).
    pub destination: String,
    pub read_only: bool,
    /// A snapshot strata built from a directory: removed with the VM's state.
    #[serde(default)]
    pub snapshot: bool,
}

/// `<state_dir>/state.json`, written by the keeper.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct KeeperState {
    pub keeper_pid: i32,
    pub vm_pid: i32,
    pub platform: String,
    /// How guest code runs (`kvm`/`tcg` on qemu; none on uml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// The VM's cgroup directories, one per hierarchy (for readers of the memory usage).
    pub cgroup_dirs: Vec<PathBuf>,
    /// The VM's cgroup, for pause, update and removal from later commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<strata_vmm::cgroup::VmCgroup>,
    /// Where the VM's cgroup goes (`cgroupsPath` form), saved before the boot makes it: a keeper
    /// killed while booting leaves a cgroup that `cgroup` does not record, found by this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<PathBuf>,
    /// `creating`, `created` (workload held), `running`, `stopped`.
    pub status: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub bundle: PathBuf,
    #[serde(default)]
    pub created: String,
    /// Guest memory.
    #[serde(default)]
    pub memory_mib: u32,
    /// RFC 3339 host time at which the agent's `Started` reply arrived: the agent sends it once
    /// the workload's execve took effect (its close-on-exec error pipe closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// The VM came from the warm pool (vm_pool.rs) instead of a boot of its own.
    #[serde(default)]
    pub warm: bool,
    /// Why a warm hand-over failed (the VM then booted cold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_fallback: Option<String>,
    /// A pooled VM's slot directory and its pool keeper, which reaps the VM and removes its
    /// cgroup and slot after the workload (the detached teardown: [`destroy`] does not wait for
    /// it while that keeper lives, and finishes it when that keeper died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_slot: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pool_keeper_pid: i32,
    /// Where the start's time went, phase by phase (start_phases.rs), once the workload runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_phases: Option<crate::start_phases::StartPhases>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Starting a workload failed; `code` follows Docker (125 set-up, 126 cannot execute, 127 not
/// found).
#[derive(Debug)]
pub struct LaunchError {
    pub code: i32,
    pub message: String,
}

/// What to launch.
pub struct Launch<'a> {
    pub id: &'a str,
    pub state_dir: &'a Path,
    pub bundle: &'a Path,
    pub spec: &'a VmSpec,
    /// The config.json as the container path generated it.
    pub config: serde_json::Value,
    /// Boot and create, then hold the workload until a `start` request (strata-oci create).
    pub hold: bool,
    /// End the VM when the caller dies (foreground `strata run`); strata-oci's keeper outlives
    /// `strata-oci create`.
    pub die_with_parent: bool,
    /// The keeper (the pid engines are given) lives in a network namespace of its own, as a
    /// runc container's init does when config.json asks for a new one: an engine that
    /// configures the task's namespace after `create` (containerd's `ctr run --cni` runs its
    /// CNI ADD on `/proc/<pid>/ns/net`) configures that one, and the guest's NIC takes its
    /// interface over at `start` ([`Launch::hold`]; docs/engines.md).
    pub own_netns: bool,
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// The state file of a VM.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

/// Reads a VM's state (None when there is none).
pub fn load_state(state_dir: &Path) -> Option<KeeperState> {
    serde_json::from_slice(&std::fs::read(state_path(state_dir)).ok()?).ok()
}

pub(crate) fn save_state(state_dir: &Path, st: &KeeperState) {
    let tmp = state_dir.join(".state.json.tmp");
    if let Ok(b) = serde_json::to_vec(st) {
        if std::fs::write(&tmp, b).is_ok() {
            let _ = std::fs::rename(&tmp, state_path(state_dir));
        }
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(pid, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return false;
    }
    !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Picks the VM platform: `auto` takes kvm where hardware virtualization and strata's KVM
/// monitor exist, uml otherwise; a named platform must be available here.
pub fn select_platform(name: &str) -> Result<Box<dyn Platform>, String> {
    match name {
        "" | "auto" => strata_vmm::detect().map_err(|why| {
            let reasons: Vec<String> = why
                .iter()
                .map(|u| format!("{}: {}", u.platform, u.reason))
                .collect();
            format!(
                "no VM platform is usable on this host ({}); see `strata info`",
                reasons.join("; ")
            )
        }),
        n => {
            let p = strata_vmm::platform(n).map_err(|e| e.to_string())?;
            p.check().map_err(|u| {
                format!(
                    "--platform {n} is unavailable on this host: {}; see `strata info`",
                    u.reason
                )
            })?;
            Ok(p)
        }
    }
}

/// The static strata-agent binary that becomes the guest's PID 1: `$STRATA_AGENT`, else next
/// to this executable, else the release build of scripts/build-agent.sh in the same target
/// directory, else /usr/local/lib/strata or /usr/lib/strata.
pub fn agent_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("STRATA_AGENT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "STRATA_AGENT={} does not exist: build the agent with scripts/build-agent.sh",
                p.display()
            ))
        };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("strata-agent"));
            if let Some(target) = dir.parent() {
                candidates.push(target.join("x86_64-unknown-linux-gnu/release/strata-agent"));
            }
        }
    }
    candidates.push("/usr/local/lib/strata/strata-agent".into());
    candidates.push("/usr/lib/strata/strata-agent".into());
    for c in &candidates {
        if is_static_elf(c) {
            return Ok(c.clone());
        }
    }
    Err(format!(
        "no static strata-agent found (looked at {}): build it with scripts/build-agent.sh or set STRATA_AGENT",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn is_static_elf(p: &Path) -> bool {
    // The program headers sit at the start of the file: 64 KiB is plenty.
    let mut buf = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(p)
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    n > 0 && strata_vmm::kernel::elf_is_dynamic(&buf[..n]) == Some(false)
}

/// Forks the keeper for `l` and returns its pid (our child, which exits with the workload's exit
/// code) once the workload runs (or, with `hold`, is created and held).
pub fn launch(l: Launch) -> Result<i32, LaunchError> {
    let err = |message: String| LaunchError { code: 125, message };
    std::fs::create_dir_all(l.state_dir)
        .map_err(|e| err(format!("create {}: {e}", l.state_dir.display())))?;
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| err(format!("create status pipe: {e}")))?;
    let parent = std::process::id() as i32;
    // SAFETY: callers are single-threaded (strata and strata-oci are); the child runs the keeper
    // and leaves with _exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| err(format!("fork the VM keeper: {e}")))? {
        nix::unistd::ForkResult::Child => {
            drop(status_r);
            let code = keeper(&l, status_w, parent);
            // SAFETY: _exit in the forked child: nothing of the parent's must run at exit.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(status_w);
            let mut msg = String::new();
            let _ = std::fs::File::from(status_r).read_to_string(&mut msg);
            if let Some(warnings) = crate::start_warnings::ok_warnings(&msg) {
                crate::start_warnings::say(warnings);
                return Ok(child.as_raw());
            }
            // The keeper failed and is exiting: reap it.
            let _ = nix::sys::wait::waitpid(child, None);
            if let Some(rest) = msg.strip_prefix("err ") {
                let (code, m) = rest.split_once(' ').unwrap_or((rest, ""));
                return Err(LaunchError {
                    code: code.parse().unwrap_or(125),
                    message: m.to_string(),
                });
            }
            Err(err("the VM keeper died before the VM started".into()))
        }
    }
}

/// Signals the keeper handles itself (blocked in every thread, read by one).
fn keeper_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPWR,
    ] {
        set.add(s);
    }
    set
}

fn keeper(l: &Launch, status: OwnedFd, parent: i32) -> i32 {
    // The keeper can live long (detached VMs, strata-oci): it must not hold other ends of its
    // caller's pipes (e.g. the monitor's status pipe, whose reader waits for EOF).
    close_other_fds(&[
        0,
        1,
        2,
        status.as_raw_fd(),
        l.stdin.as_raw_fd(),
        l.stdout.as_raw_fd(),
        l.stderr.as_raw_fd(),
    ]);
    // What the caller's 0/1/2 were must not stay open here unless they are the workload's stdio:
    // an engine that captures `strata-oci create`'s output (containerd's shim with a terminal)
    // waits for EOF on it.
    let stdio = [
        l.stdin.as_raw_fd(),
        l.stdout.as_raw_fd(),
        l.stderr.as_raw_fd(),
    ];
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in (0..3).filter(|fd| !stdio.contains(fd)) {
            // SAFETY: dup2 onto a standard fd that nothing in the keeper uses.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    let mut status = Some(std::fs::File::from(status));
    let report = |status: &mut Option<std::fs::File>, msg: &str| {
        if let Some(mut s) = status.take() {
            let _ = s.write_all(msg.as_bytes());
        }
    };
    strata_container::kill_point::hit("keeper:forked");
    let mut clock = crate::start_phases::PhaseClock::start();
    let t0 = Instant::now();
    let phase =
        |what: &str| tracing::debug!(ms = t0.elapsed().as_millis() as u64, "vm keeper: {what}");
    let signals = keeper_signals();
    let _ = signals.thread_block();
    if l.die_with_parent {
        // SAFETY: prctl with a signal number; SIGPWR is handled below as "end the VM now".
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGPWR) };
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } != parent {
            return 1;
        }
    } else {
        // Outlive the invoking command and its session (strata-oci create).
        let _ = nix::unistd::setsid();
    }
    let mut st = KeeperState {
        keeper_pid: std::process::id() as i32,
        status: "creating".into(),
        bundle: l.bundle.to_path_buf(),
        created: chrono::Utc::now().to_rfc3339(),
        memory_mib: l.spec.memory_mib,
        ..Default::default()
    };
    let fail = |status: &mut Option<std::fs::File>, st: &mut KeeperState, code: i32, m: String| {
        report(status, &format!("err {code} {m}"));
        st.status = "stopped".into();
        st.exit_code = Some(code);
        save_state(l.state_dir, st);
        code
    };
    // Before any thread starts: the whole keeper moves.
    let own_netns = if l.own_netns {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            return fail(
                &mut status,
                &mut st,
                125,
                format!("create the VM keeper's network namespace: {e}"),
            );
        }
        Some(PathBuf::from(format!(
            "/proc/{}/ns/net",
            std::process::id()
        )))
    } else {
        None
    };
    let platform = match select_platform(&l.spec.platform) {
        Ok(p) => p,
        Err(m) => return fail(&mut status, &mut st, 125, m),
    };
    st.platform = platform.name().into();
    let config = match guest_config(l.config.clone(), l.spec, platform.as_ref()) {
        Ok(mut c) => {
            set_console_size(&mut c["process"], l.stdin, l.spec.tty);
            c
        }
        Err(m) => return fail(&mut status, &mut st, 125, m),
    };
    let sock_path = l.state_dir.join("keeper.sock");
    let _ = std::fs::remove_file(&sock_path);
    let listener = match SocketPath::new(l.state_dir).and_then(|p| UnixListener::bind(p.path())) {
        Ok(x) => x,
        Err(e) => {
            return fail(
                &mut status,
                &mut st,
                125,
                format!("listen on {}: {e}", sock_path.display()),
            )
        }
    };
    // The platform hands writable disks to the VM's unprivileged uid; the user's volume files get
    // their owners back when the VM is gone.
    let owners: Vec<(PathBuf, u32, u32)> = l
        .spec
        .volumes
        .iter()
        .filter(|v| !v.read_only && !v.snapshot)
        .filter_map(|v| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(&v.path).ok()?;
            Some((v.path.clone(), m.uid(), m.gid()))
        })
        .collect();
    let restore_owners = || {
        for (p, uid, gid) in &owners {
            let _ = std::os::unix::fs::chown(p, Some(*uid), Some(*gid));
        }
    };
    // A UML guest very rarely spins in its kernel before the agent answers (seen about once in
    // a few hundred boots here): nothing of the workload has run before `create` is answered, so
    // such a boot is killed and the VM booted again, twice at most.
    let console = l.state_dir.join("console.log");
    let netns = netns_path(&l.config);
    // strata's own `--network bridge|NAME` (network.json in the container directory): the guest
    // must get its NIC. An engine's namespace may legitimately have only `lo` (`--network none`).
    let nic_required = netns.is_some() && crate::network::load(l.bundle).is_some();
    let net_sources = net_file_sources(&config);
    // The keeper's own namespace, configured (or not) by the engine before `start`: the guest
    // boots with its NIC on a tap there, taken over at start. A platform that cannot do that
    // boots without a NIC and refuses a network that shows up at start.
    let deferred_netns = own_netns
        .as_deref()
        .filter(|_| l.hold && platform.nic_at_start());
    let config = if deferred_netns.is_some() {
        without_net_mounts(config)
    } else {
        config
    };
    st.cgroups_path = Some(match &l.spec.cgroups_path {
        Some(p) if !p.as_os_str().is_empty() => p.clone(),
        _ => PathBuf::from(format!("/strata-vm/{}", l.id)),
    });
    save_state(l.state_dir, &st);
    clock.mark("keeper-setup");
    let setup_phases = clock.marked();
    let mut attempt = 0;
    // The first try takes a VM from the warm pool when one fits; a hand-over that fails ends
    // that VM and falls back to a cold boot (the cause is kept in state.json: `inspect` shows it).
    // (A VM with a network boots cold: pooled VMs have no NIC.)
    let mut try_warm = !l.hold && netns.is_none();
    let mut prewarm_child = None;
    // What went wrong but did not stop the start: sent with the "ok" to the caller, whose
    // stderr is the user's (the keeper's own is /dev/null unless it is the workload's).
    let mut warnings: Vec<String> = Vec::new();
    let (mut vm, vm_pid, client, session) = loop {
        clock.boot_attempt(setup_phases);
        let warm = if std::mem::take(&mut try_warm) {
            match take_warm(l) {
                Ok(w) => w,
                Err(m) => {
                    warnings.push(format!("warm VM hand-over failed, booting cold: {m}"));
                    st.warm_fallback = Some(m);
                    None
                }
            }
        } else {
            None
        };
        let is_warm = warm.is_some();
        if !is_warm {
            attempt += 1;
        }
        let last = attempt >= 3;
        if warm.is_none() && !strata_container::cgroups::prewarm::started() {
            // The CLI skipped it for a run it expected to be warm (main.rs): the cold boot's
            // cgroup join gets its grace period started now (the helper is reaped below).
            prewarm_child = strata_container::cgroups::prewarm::start();
        }
        let mut vm = match warm {
            Some(p) => Booted::Warm(p),
            None => match boot(
                l,
                platform.as_ref(),
                netns.as_deref().or(deferred_netns),
                deferred_netns.is_some(),
            ) {
                Ok(v) => Booted::Cold(v),
                Err(m) => {
                    restore_owners();
                    let _ = std::fs::remove_file(&sock_path);
                    return fail(&mut status, &mut st, 125, m);
                }
            },
        };
        st.warm = is_warm;
        if let Booted::Warm(p) = &vm {
            st.pool_slot = Some(p.slot().to_path_buf());
            st.pool_keeper_pid = p.keeper_pid();
        }
        phase(if is_warm {
            "warm VM taken from the pool"
        } else {
            "guest kernel started"
        });
        clock.mark(if is_warm { "warm-take" } else { "jail" });
        if nic_required && vm.nic().is_none() {
            let _ = vm.kill();
            restore_owners();
            let _ = std::fs::remove_file(&sock_path);
            let m = format!(
                "the network namespace {} has no interface with an IPv4 address: the network \
                 attachment did not complete (try `strata network prune`)",
                netns.as_deref().unwrap_or(Path::new("")).display()
            );
            return fail(&mut status, &mut st, 125, m);
        }
        let bytes = match with_network(config.clone(), vm.nic()) {
            Ok(c) => serde_json::to_vec(&on_the_wire(c)).unwrap_or_default(),
            Err(m) => {
                let _ = vm.kill();
                restore_owners();
                let _ = std::fs::remove_file(&sock_path);
                return fail(&mut status, &mut st, 125, m);
            }
        };
        strata_container::kill_point::hit("keeper:booted");
        st.vm_pid = vm.pid();
        st.accelerator = vm.accelerator().map(str::to_string);
        st.cgroup_dirs = vm.cgroup_dirs();
        st.cgroup = vm.cgroup().cloned();
        save_state(l.state_dir, &st);
        let vm_pid = vm.pid();
        let Some(channel) = vm.take_channel() else {
            let _ = vm.kill();
            return fail(&mut status, &mut st, 125, "the VM has no channel".into());
        };
        // Under software emulation (qemu with TCG) a distribution kernel takes seconds to boot,
        // ten or more on a loaded host: give its agent longer before calling the VM hung.
        let hello_within = if vm.accelerator() == Some("tcg") {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(20)
        };
        let client = match Client::from_unix_stream(channel, hello_within) {
            Ok(c) => Arc::new(c),
            Err(e) if is_warm => {
                let _ = vm.kill();
                st.warm_fallback = Some(format!("the pooled VM's agent did not answer: {e}"));
                warnings.push(format!("warm VM hand-over failed, booting cold: {e}"));
                continue;
            }
            Err(e) => {
                // A channel that closed usually means the VM process itself ended (a QEMU that
                // refused its command line, a kernel that died): say how, it is the cause.
                let ended = if matches!(e, strata_proto::ClientError::ConnectionLost(_)) {
                    vm.ended_how(Duration::from_millis(500))
                } else {
                    None
                };
                let _ = vm.kill();
                if !last && matches!(e, strata_proto::ClientError::Timeout(..)) {
                    warnings.push(format!(
                        "boot {attempt}: the guest agent did not answer ({e}); booting again"
                    ));
                    continue;
                }
                // QEMU's own stderr and the console, or the console alone (UML).
                let report = vm.report();
                let how = ended.map(|h| format!("; {h}")).unwrap_or_default();
                let m = if report.contains("stderr:") {
                    format!("the guest agent did not answer: {e}{how}; {report}")
                } else {
                    format!(
                        "the guest agent did not answer: {e}{how}{}",
                        console_tail(&console)
                    )
                };
                let _ = std::fs::remove_file(&sock_path);
                return fail(&mut status, &mut st, 125, m);
            }
        };
        if is_warm {
            // The pooled agent booted long ago: the hand-over's Hello is all there is to time.
            clock.mark("warm-hello");
            let hello = client.agent_hello();
            clock.rehearsed(hello.rehearsal_us.map(Duration::from_micros));
        } else {
            clock.mark_hello(client.agent_hello().agent_setup());
        }
        phase("agent answered");
        match client.create_within(&bytes, Some(Duration::from_secs(30))) {
            Ok(s) => {
                clock.mark("rootfs");
                // What the guest could not do but went on without (a mount it skipped, a
                // hostname it could not set, a rehearsal that failed): said before Created.
                for w in client.connection_errors() {
                    warnings.push(format!("the guest agent: {w}"));
                }
                break (vm, vm_pid, client, Arc::new(s));
            }
            // A refusal of the workload's own config would refuse it after a cold boot too; a
            // root disk the agent could not mount is the hand-over's failure.
            Err(e)
                if is_warm
                    && !matches!(&e, strata_proto::ClientError::Agent { kind, .. } if kind != "rootfs") =>
            {
                let _ = vm.kill();
                st.warm_fallback = Some(format!("create in the pooled VM: {e}"));
                warnings.push(format!("warm VM hand-over failed, booting cold: {e}"));
                continue;
            }
            Err(e) => {
                // A channel that closed usually means the VM process itself ended (a QEMU that
                // refused its command line, a kernel that died): say how, it is the cause.
                let ended = if matches!(e, strata_proto::ClientError::ConnectionLost(_)) {
                    vm.ended_how(Duration::from_millis(500))
                } else {
                    None
                };
                let _ = vm.kill();
                if !last && matches!(e, strata_proto::ClientError::Timeout(..)) {
                    warnings.push(format!(
                        "boot {attempt}: no answer to create ({e}); booting again"
                    ));
                    continue;
                }
                restore_owners();
                let _ = std::fs::remove_file(&sock_path);
                let how = ended.map(|h| format!("; {h}")).unwrap_or_default();
                return fail(
                    &mut status,
                    &mut st,
                    125,
                    format!("create in the VM: {e}{how}"),
                );
            }
        }
    };
    if let Some(pid) = prewarm_child {
        // Done long ago (one grace period; the boot took longer): no zombie for the VM's life.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    if vm.nic().is_some() && (net_sources.0.is_some() || net_sources.1.is_some()) {
        // Peers that join or leave later: strata-net (or the engine) rewrites the host's copies;
        // the guest's follow.
        let client = Arc::clone(&client);
        let (hosts, resolv) = net_sources.clone();
        std::thread::spawn(move || watch_net_files(&client, hosts, resolv));
    }
    // strata-oci's keeper (the one that outlives its caller) is the pid engines were given for
    // the container: it lives in the VM's cgroups, so that the cgroups engines find from that pid
    // are the VM's (pause, update, removal); it leaves them before the VM's cgroup is removed.
    let joined = st
        .cgroup
        .as_ref()
        .filter(|cg| !l.die_with_parent && cg.join(st.keeper_pid).is_ok());
    let leave_cgroups = || {
        if let Some(cg) = joined {
            let _ = cg.leave(std::process::id() as i32);
        }
    };
    // Requests from other commands; `start` comes back to this thread.
    let (start_tx, start_rx) = mpsc::channel::<UnixStream>();
    {
        let client = Arc::clone(&client);
        let session = Arc::clone(&session);
        std::thread::spawn(move || serve(listener, client, session, start_tx));
    }
    // Signals: forwarded to the workload; SIGPWR (our parent died) ends the VM.
    {
        let session = Arc::clone(&session);
        std::thread::spawn(move || loop {
            match signals.wait() {
                Ok(Signal::SIGPWR) => {
                    // SAFETY: killing the VM's leader, our child.
                    unsafe { libc::kill(vm_pid, libc::SIGKILL) };
                }
                Ok(sig) => {
                    let _ = session.signal(sig as i32);
                }
                Err(_) => {}
            }
        });
    }
    strata_container::kill_point::hit("keeper:created");
    let mut start_reply = None;
    if l.hold {
        st.status = "created".into();
        save_state(l.state_dir, &st);
        report(&mut status, &crate::start_warnings::ok_status(&warnings));
        let held = clock.pause();
        match start_rx.recv() {
            Ok(conn) => {
                clock.resume(held);
                start_reply = Some(conn)
            }
            Err(_) => {
                leave_cgroups();
                return 1;
            }
        }
    }
    let stdio = [l.stdin, l.stdout, l.stderr].map(|fd| fd.try_clone_to_owned().ok());
    // A /dev/null stdin (`run` without -i) is not relayed: the workload's stdin is at its end
    // from the start, and no Close(stdin) frame wakes the guest while it starts.
    let stdin_at_eof = !l.spec.tty && is_dev_null(l.stdin);
    let started = match &own_netns {
        Some(ns) => network_at_start(&mut vm, ns, platform.name(), &net_sources),
        None => Ok(strata_proto::StartRequest::default()),
    }
    .map(|req| strata_proto::StartRequest {
        stdin: !stdin_at_eof,
        ..req
    })
    .and_then(|req| {
        let with_network = req.network.is_some();
        client
            .start_with(req)
            .map_err(|e| format!("start in the VM: {e}"))?;
        Ok(with_network)
    });
    match started {
        Ok(with_network) => {
            if with_network && (net_sources.0.is_some() || net_sources.1.is_some()) {
                let client = Arc::clone(&client);
                let (hosts, resolv) = net_sources.clone();
                std::thread::spawn(move || watch_net_files(&client, hosts, resolv));
            }
        }
        Err(m) => {
            if let Some(mut c) = start_reply.take() {
                let _ = writeln!(c, "{}", serde_json::json!({"ok": false, "message": m}));
            }
            leave_cgroups();
            let _ = vm.kill();
            restore_owners();
            let _ = std::fs::remove_file(&sock_path);
            return fail(&mut status, &mut st, 125, m);
        }
    }
    st.started = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    clock.mark("workload-execve");
    let phases = clock.finish();
    tracing::debug!("vm keeper: start phases: {}", phases.summary());
    st.start_phases = Some(phases);
    phase("workload started");
    if let Booted::Warm(p) = &vm {
        p.started();
    }
    st.status = "running".into();
    save_state(l.state_dir, &st);
    if let Some(mut c) = start_reply.take() {
        let _ = writeln!(c, "{}", serde_json::json!({"ok": true}));
    }
    report(&mut status, &crate::start_warnings::ok_status(&warnings));
    strata_container::kill_point::hit("keeper:running");
    let [i, o, e] = stdio;
    let i = match i {
        _ if stdin_at_eof => HostStdin::AtEof,
        Some(fd) => HostStdin::Fd(fd),
        None => HostStdin::Closed,
    };
    let code = relay_session(&session, i, o, e, l.spec.tty);
    phase("workload exited");
    strata_container::kill_point::hit("keeper:exited");
    st.status = "stopped".into();
    st.exit_code = Some(code.unwrap_or(137));
    save_state(l.state_dir, &st);
    // The agent syncs and powers the guest off after our acknowledgement. Only a writable volume
    // needs that (its file outlives the VM); the root COW file is discarded, so without one the
    // VM is ended at once (saves the guest's shutdown on every run).
    let wait_for_poweroff = l.spec.volumes.iter().any(|v| !v.read_only);
    let t = Instant::now();
    while wait_for_poweroff && t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = vm.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    leave_cgroups();
    match &mut vm {
        // Its pool keeper, a detached process, reaps it and removes its cgroup and slot: the
        // caller (`strata run --rm`, the monitor) does not wait for the VM's end.
        Booted::Warm(p) => {
            p.end_detached();
            phase("VM handed to its pool keeper's teardown");
        }
        Booted::Cold(_) => {
            let _ = vm.kill();
            phase("VM reaped");
        }
    }
    restore_owners();
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(l.state_dir.join("root.cow"));
    // A VM killed from outside (rm -f, OOM): like a container killed by SIGKILL.
    code.unwrap_or(137)
}

pub(crate) fn close_other_fds(keep: &[RawFd]) {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    for fd in fds {
        if !keep.contains(&fd) {
            // SAFETY: closing an fd inherited from the caller that the keeper does not use (the
            // directory fd of the listing above is already closed; EBADF is harmless).
            unsafe { libc::close(fd) };
        }
    }
}

/// The last lines of the console log, to explain a VM that did not come up.
fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(10)..];
    format!("; guest console ({}):\n{}", path.display(), tail.join("\n"))
}

/// The agent's initramfs, found by the agent file's identity (device, inode, size, mtime) so a
/// VM start does not read and hash the agent again (strata-vmm caches the archive by content).
pub(crate) fn agent_initrd(agent: &Path, cache: &Path) -> Result<PathBuf, String> {
    by_agent_identity(agent, cache, "agent", || {
        strata_vmm::initramfs::agent_initramfs(agent, cache)
            .map_err(|e| format!("agent initramfs: {e}"))
    })
}

/// A pooled qemu VM's rehearsal disk (strata_vmm::rehearsal), found as [`agent_initrd`] is: a
/// refill does not read and hash the agent again.
pub(crate) fn agent_rehearsal_disk(agent: &Path, cache: &Path) -> Result<PathBuf, String> {
    by_agent_identity(agent, cache, "rehearsal", || {
        strata_vmm::rehearsal::rehearsal_disk(agent, cache)
            .map_err(|e| format!("the pooled VM's rehearsal disk: {e}"))
    })
}

/// What `build` makes of the agent (a file strata-vmm caches by the agent's content), looked
/// up by the agent file's identity through an index file `<kind>-<dev>-<ino>-<len>-<mtime>.path`.
fn by_agent_identity(
    agent: &Path,
    cache: &Path,
    kind: &str,
    build: impl FnOnce() -> Result<PathBuf, String>,
) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(agent).map_err(|e| format!("agent {}: {e}", agent.display()))?;
    let index = cache.join(format!(
        "{kind}-{}-{}-{}-{}.{}.path",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec()
    ));
    if let Ok(p) = std::fs::read_to_string(&index) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    let p = build()?;
    let tmp = index.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, p.as_os_str().as_encoded_bytes()).is_ok() {
        let _ = std::fs::rename(&tmp, &index);
    }
    Ok(p)
}

/// A VM booted for this instance, or taken from the warm pool.
enum Booted {
    Cold(strata_vmm::Vm),
    Warm(crate::vm_pool::Pooled),
}

impl Booted {
    fn pid(&self) -> i32 {
        match self {
            Booted::Cold(v) => v.pid(),
            Booted::Warm(p) => p.pid(),
        }
    }

    fn accelerator(&self) -> Option<&'static str> {
        match self {
            Booted::Cold(v) => v.accelerator(),
            Booted::Warm(p) => p.accelerator(),
        }
    }

    fn cgroup(&self) -> Option<&strata_vmm::cgroup::VmCgroup> {
        match self {
            Booted::Cold(v) => v.cgroup(),
            Booted::Warm(p) => p.cgroup(),
        }
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup().map(|c| c.paths()).unwrap_or_default()
    }

    fn nic(&self) -> Option<&strata_vmm::GuestNic> {
        match self {
            Booted::Cold(v) => v.nic(),
            Booted::Warm(_) => None,
        }
    }

    fn nic_deferred(&self) -> bool {
        matches!(self, Booted::Cold(v) if v.nic_deferred())
    }

    fn take_over_network(&mut self) -> Result<Option<strata_vmm::GuestNic>, String> {
        match self {
            Booted::Cold(v) => v
                .take_over_network()
                .map(|n| n.cloned())
                .map_err(|e| e.to_string()),
            Booted::Warm(_) => Ok(None),
        }
    }

    fn take_channel(&mut self) -> Option<UnixStream> {
        match self {
            Booted::Cold(v) => v.take_channel(),
            Booted::Warm(p) => p.take_channel(),
        }
    }

    fn kill(&mut self) -> Result<(), String> {
        match self {
            Booted::Cold(v) => v.kill().map(|_| ()).map_err(|e| e.to_string()),
            Booted::Warm(p) => {
                p.kill();
                Ok(())
            }
        }
    }

    /// Whether the VM has ended.
    fn try_wait(&mut self) -> Result<Option<()>, String> {
        match self {
            Booted::Cold(v) => v
                .try_wait()
                .map(|s| s.map(|_| ()))
                .map_err(|e| e.to_string()),
            Booted::Warm(p) => Ok(p.has_exited().then_some(())),
        }
    }

    fn report(&self) -> String {
        match self {
            Booted::Cold(v) => v.report(),
            Booted::Warm(p) => p.report(),
        }
    }

    /// How the VM process ended, if it ends within `within` (a booted VM's status: QEMU's, or
    /// the UML kernel's as its jail's reaper passes it on); None while it runs.
    fn ended_how(&mut self, within: Duration) -> Option<String> {
        let Booted::Cold(v) = self else {
            return None;
        };
        let t = Instant::now();
        loop {
            match v.try_wait() {
                Ok(Some(s)) => {
                    return Some(format!("the VM process ({}) ended with {s}", v.platform()))
                }
                Ok(None) if t.elapsed() < within => std::thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }
}

/// Takes a VM from the warm pool and hands it this instance's root disk with this VM's own
/// copy-on-write layer (UML: hot-added as ubd1 with a COW file; qemu: the image and a qcow2
/// overlay put under the root device over QMP). None when no pooled VM fits; an error when the
/// hand-over failed (the pooled VM is then ended).
fn take_warm(l: &Launch) -> Result<Option<crate::vm_pool::Pooled>, String> {
    let t = Instant::now();
    let Some(mut p) = crate::vm_pool::take(l.state_dir, l.id, l.spec)? else {
        return Ok(None);
    };
    tracing::debug!(
        us = t.elapsed().as_micros() as u64,
        "vm keeper: pooled VM claimed"
    );
    let cow = l.state_dir.join("root.cow");
    let added = match p.take_qmp() {
        // qemu: the claim passed the VM's monitor (the claimer's copy closes here, after use).
        Some(mut qmp) => strata_vmm::qemu_hotplug::hot_add_root(&mut qmp, &l.spec.disk, &cow),
        None if l.spec.platform == "qemu" => Err(strata_vmm::VmmError::HotAdd(
            "the pooled qemu VM came without its QMP monitor".into(),
        )),
        None => {
            let index = crate::vm_pool::ROOT_DISK_INDEX;
            strata_vmm::uml_hotplug::hot_add_disk(p.pid(), p.uid(), index, &l.spec.disk, &cow)
        }
    };
    if let Err(e) = added {
        p.kill();
        let _ = std::fs::remove_file(&cow);
        return Err(e.to_string());
    }
    tracing::debug!(
        us = t.elapsed().as_micros() as u64,
        "vm keeper: root disk hot-added"
    );
    Ok(Some(p))
}

/// Boots the VM: kernel, agent initramfs, image disk with a fresh COW file, volume disks.
/// `network_at_start`: `netns` is configured later ([`VmConfig::network_at_start`]).
fn boot(
    l: &Launch,
    platform: &dyn Platform,
    netns: Option<&Path>,
    network_at_start: bool,
) -> Result<strata_vmm::Vm, String> {
    let kernel = match &l.spec.kernel {
        Some(k) => k.clone(),
        None => {
            strata_vmm::default_kernel(platform.name())
                .ok_or_else(|| {
                    format!(
                        "no guest kernel for {0}: run scripts/build-guest-kernel.sh {0}",
                        platform.name()
                    )
                })?
                .path
        }
    };
    let agent = agent_path()?;
    let mut initrd = agent_initrd(&agent, &l.spec.cache_dir)?;
    if let Some(user) = &l.spec.initrd {
        initrd = strata_vmm::initramfs::with_user_initrd(&initrd, user, &l.spec.cache_dir)
            .map_err(|e| format!("--initrd: {e}"))?;
    }
    let mut cfg = VmConfig::new(l.id, kernel, l.state_dir.join("run"));
    cfg.cgroups_path = l.spec.cgroups_path.clone();
    cfg.memory_mib = l.spec.memory_mib;
    cfg.vcpus = l.spec.vcpus;
    cfg.initrd = Some(initrd);
    cfg.init = Some(strata_vmm::initramfs::AGENT_GUEST_PATH.into());
    cfg.disks.push(Disk {
        path: l.spec.disk.clone(),
        cow: Some(l.state_dir.join("root.cow")),
        read_only: false,
    });
    for v in &l.spec.volumes {
        cfg.disks.push(Disk {
            path: v.path.clone(),
            cow: None,
            read_only: v.read_only,
        });
    }
    cfg.kernel_params = GuestContract {
        lower: Some((platform.disk_device(0), DiskFormat::Ext4)),
        upper: None,
        rootrw: true,
    }
    .kernel_params();
    // --network none: the guest has only its loopback (no dummy0 from the guest kernel).
    cfg.kernel_params.push("dummy.numdummies=0".into());
    if std::env::var_os("STRATA_VM_DEBUG").is_some() {
        // The agent logs to the console (console.log in the state directory).
        cfg.kernel_params.push("strata.debug=1".into());
    }
    cfg.console = Console::File(l.state_dir.join("console.log"));
    cfg.network = netns.map(Path::to_path_buf);
    cfg.network_at_start = network_at_start;
    platform
        .boot(&cfg)
        .map_err(|e| format!("boot the {} VM: {e}", platform.name()))
}

/// Drops from an OCI `process` what the agent does not read (crates/agent/src/spec.rs: the
/// capability sets, apparmor, selinux, oomScoreAdj... are the host runtime's): every byte of a
/// Create or an Exec crosses the guest's channel, which UML reads one byte per host read.
fn keep_what_the_agent_reads(process: &mut serde_json::Value) {
    if let Some(p) = process.as_object_mut() {
        p.retain(|k, _| {
            matches!(
                k.as_str(),
                "terminal"
                    | "consoleSize"
                    | "user"
                    | "args"
                    | "env"
                    | "cwd"
                    | "rlimits"
                    | "noNewPrivileges"
            )
        });
    }
}

/// config.json as the guest sees it: the same document, with the host-only parts replaced —
/// the volume bind mounts become mounts of their block devices, the host pty at /dev/console
/// goes (the agent allocates the guest's own pty), and `terminal` says whether there is one.
pub fn guest_config(
    mut config: serde_json::Value,
    spec: &VmSpec,
    platform: &dyn Platform,
) -> Result<serde_json::Value, String> {
    // The agent reads only these (crates/agent/src/spec.rs); the rest (`linux`: namespaces,
    // cgroups, devices, masked paths; the capability sets) is the host runtime's. Left out, the
    // Create fits in one window of a UML channel (2 KiB, Hello::link_window) instead of waiting
    // for the guest's acknowledgement of each one.
    if let Some(c) = config.as_object_mut() {
        c.retain(|k, _| {
            matches!(
                k.as_str(),
                "ociVersion" | "process" | "root" | "hostname" | "mounts" | "annotations"
            )
        });
    }
    keep_what_the_agent_reads(&mut config["process"]);
    config["process"]["terminal"] = serde_json::json!(spec.tty);
    if let Some(mounts) = config["mounts"].as_array_mut() {
        mounts.retain(|m| m["destination"] != "/dev/console");
        for (i, v) in spec.volumes.iter().enumerate() {
            let m = mounts
                .iter_mut()
                .find(|m| m["destination"] == v.destination.as_str())
                .ok_or_else(|| format!("config.json has no mount at {}", v.destination))?;
            let mut options = vec!["nosuid", "nodev"];
            if v.read_only {
                options.push("ro");
            }
            *m = serde_json::json!({
                "destination": v.destination,
                "type": "ext4",
                "source": platform.disk_device(i + 1),
                "options": options,
            });
        }
    }
    Ok(config)
}

/// The guest config as Create carries it: without what names host paths the guest cannot use
/// and the agent would skip with a warning each (the root's host path, the bind mounts of the
/// host's /etc/hostname, /etc/hosts and /etc/resolv.conf: the hostname is the guest kernel's,
/// a NIC's hosts and resolv.conf travel as annotations). A busybox run's Create then fits in one
/// window of a UML channel.
fn on_the_wire(mut config: serde_json::Value) -> serde_json::Value {
    if let Some(root) = config["root"].as_object_mut() {
        root.remove("path");
    }
    if let Some(mounts) = config["mounts"].as_array_mut() {
        mounts.retain(|m| {
            !(m["type"] == "bind"
                && ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
                    .iter()
                    .any(|d| m["destination"] == *d))
        });
    }
    config
}

/// The network namespace config.json joins by path: strata's bridge attachment
/// (`<root>/net/netns/<id>`) or the one an engine prepared with its CNI plugins.
pub fn netns_path(config: &serde_json::Value) -> Option<PathBuf> {
    config["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The host files config.json bind-mounts on /etc/hosts and /etc/resolv.conf.
fn net_file_sources(config: &serde_json::Value) -> (Option<PathBuf>, Option<PathBuf>) {
    let source = |dest: &str| {
        config["mounts"]
            .as_array()?
            .iter()
            .find(|m| m["destination"] == dest)?["source"]
            .as_str()
            .map(PathBuf::from)
    };
    (source("/etc/hosts"), source("/etc/resolv.conf"))
}

/// Sends the guest the host's /etc/hosts and /etc/resolv.conf whenever a writer closes them
/// (inotify IN_CLOSE_WRITE; strata-net rewrites them in place on every attach and detach of a
/// peer). Ends when the VM's connection is gone or the files cannot be watched.
fn watch_net_files(client: &Client, hosts: Option<PathBuf>, resolv: Option<PathBuf>) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: a plain inotify fd, owned below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        tracing::warn!(
            "cannot watch the VM's hosts file: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: a fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut watches = Vec::new();
    for p in [&hosts, &resolv].into_iter().flatten() {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: a NUL-terminated path and our inotify fd.
        let wd =
            unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_CLOSE_WRITE) };
        if wd >= 0 {
            watches.push(wd);
        }
    }
    if watches.is_empty() {
        return;
    }
    let read = |p: &Option<PathBuf>| {
        p.as_ref().and_then(|p| {
            let mut s = String::new();
            std::fs::File::open(p)
                .and_then(|f| f.take(64 << 10).read_to_string(&mut s))
                .ok()
                .map(|_| s)
        })
    };
    let mut last = (read(&hosts), read(&resolv));
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading inotify events into our buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return;
        }
        let now = (read(&hosts), read(&resolv));
        if now == last {
            continue;
        }
        let files = strata_proto::NetFiles {
            hosts: now.0.clone().filter(|h| Some(h) != last.0.as_ref()),
            resolv: now.1.clone().filter(|r| Some(r) != last.1.as_ref()),
        };
        if let Err(e) = client.net_files(files) {
            tracing::debug!("stop sending network files to the VM: {e}");
            return;
        }
        last = now;
    }
}

/// The guest config with what its NIC took over (the agent's `dev.strata.net.*` annotations,
/// crates/agent/src/net.rs) and the contents of the host files config.json bind-mounts on
/// /etc/hosts and /etc/resolv.conf (strata's, kept current by strata-net, or the engine's); those
/// bind mounts name host paths and leave the guest config. Unchanged without a NIC.
fn with_network(
    config: serde_json::Value,
    nic: Option<&strata_vmm::GuestNic>,
) -> Result<serde_json::Value, String> {
    let Some(nic) = nic else {
        return Ok(config);
    };
    let mut notes = nic_notes(nic, false);
    notes.extend(read_net_files(&net_file_sources(&config))?);
    let mut config = without_net_mounts(config);
    if !config["annotations"].is_object() {
        config["annotations"] = serde_json::json!({});
    }
    if let Some(a) = config["annotations"].as_object_mut() {
        a.extend(notes);
    }
    Ok(config)
}

/// The `dev.strata.net.*` values of what the guest's NIC took over; `mac`: also the
/// interface's MAC (a NIC that booted with one of its own takes it at start).
fn nic_notes(nic: &strata_vmm::GuestNic, mac: bool) -> serde_json::Map<String, serde_json::Value> {
    let mut notes = serde_json::Map::new();
    notes.insert(
        "dev.strata.net.address".into(),
        format!("{}/{}", nic.address, nic.prefix).into(),
    );
    if let Some(gw) = nic.gateway {
        notes.insert("dev.strata.net.gateway".into(), gw.to_string().into());
    }
    notes.insert("dev.strata.net.mtu".into(), nic.mtu.to_string().into());
    if mac {
        notes.insert("dev.strata.net.mac".into(), nic.mac.clone().into());
    }
    notes
}

/// The contents of the host's /etc/hosts and /etc/resolv.conf for the guest (from
/// [`net_file_sources`]), as `dev.strata.net.hosts`/`resolv` values.
fn read_net_files(
    sources: &(Option<PathBuf>, Option<PathBuf>),
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut notes = serde_json::Map::new();
    for (src, dest, key) in [
        (&sources.0, "/etc/hosts", "dev.strata.net.hosts"),
        (&sources.1, "/etc/resolv.conf", "dev.strata.net.resolv"),
    ] {
        let Some(src) = src else { continue };
        let mut text = String::new();
        std::fs::File::open(src)
            .and_then(|f| f.take(64 << 10).read_to_string(&mut text))
            .map_err(|e| format!("read {} for the guest's {dest}: {e}", src.display()))?;
        notes.insert(key.into(), text.into());
    }
    Ok(notes)
}

/// config.json without its bind mounts on /etc/hosts and /etc/resolv.conf (host paths; the
/// guest gets their contents with its network).
fn without_net_mounts(mut config: serde_json::Value) -> serde_json::Value {
    if let Some(mounts) = config["mounts"].as_array_mut() {
        mounts.retain(|m| {
            !(m["destination"] == "/etc/hosts" || m["destination"] == "/etc/resolv.conf")
                || m["source"].as_str().is_none()
        });
    }
    config
}

/// At `start` of a VM whose keeper has a network namespace of its own: what the engine put
/// there since `create` goes to the guest. The guest's NIC (booted on a tap there) takes the
/// namespace's interface over and the agent gets its address, routes, MTU, MAC and the
/// engine's /etc files; nothing there (no CNI): the guest keeps only its loopback, as a runc
/// container would. A platform that booted without a NIC refuses an interface it cannot carry.
fn network_at_start(
    vm: &mut Booted,
    netns: &Path,
    platform: &str,
    net_sources: &(Option<PathBuf>, Option<PathBuf>),
) -> Result<strata_proto::StartRequest, String> {
    if vm.nic_deferred() {
        let Some(nic) = vm
            .take_over_network()
            .map_err(|e| format!("take the network namespace's interface over: {e}"))?
        else {
            return Ok(strata_proto::StartRequest::default());
        };
        let mut notes = nic_notes(&nic, true);
        notes.extend(read_net_files(net_sources)?);
        return Ok(strata_proto::StartRequest {
            network: Some(notes),
            ..Default::default()
        });
    }
    match strata_vmm::netns_interface(netns) {
        Ok(None) => Ok(strata_proto::StartRequest::default()),
        Ok(Some(i)) => Err(format!(
            "the VM's network namespace {} has {i} (configured by the engine after create), but \
             the {platform} platform cannot give the guest a NIC at start yet: use the uml \
             platform, or no network",
            netns.display()
        )),
        Err(e) => Err(format!("look at the VM's network namespace: {e}")),
    }
}

/// What a session's stdin is on the host side.
enum HostStdin {
    /// Relayed from this fd.
    Fd(OwnedFd),
    /// None: the process's stdin is closed at once (a Close(stdin) frame).
    Closed,
    /// The process got a stdin already at its end (`ExecRequest::stdin` false): nothing to send.
    AtEof,
}

/// Relays between host fds and a guest session until the process exits; its exit code (None
/// when the connection to the VM was lost).
fn relay_session(
    session: &Arc<Session>,
    stdin: HostStdin,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    tty: bool,
) -> Option<i32> {
    let done = Arc::new(AtomicBool::new(false));
    let stdin = match stdin {
        HostStdin::Fd(fd) => Some(fd),
        HostStdin::Closed => None,
        HostStdin::AtEof => return relay_output(session, stdout, stderr, done),
    };
    // Taken even without an fd: dropping the writer closes the process's stdin.
    if let (Some(fd), Some(mut w)) = (stdin, session.take_stdin()) {
        let done = Arc::clone(&done);
        let session = Arc::clone(session);
        std::thread::spawn(move || {
            // The guest's pty does the line discipline (echo, ^C): the host side passes bytes
            // through untouched. Restored at once: its reader may be gone by then.
            let _raw = if tty {
                pty::RawMode::enable_restoring_now(fd.as_fd())
            } else {
                None
            };
            let mut last = None;
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                if tty {
                    let ws = pty::size(fd.as_fd());
                    if ws.is_some() && ws != last {
                        last = ws;
                        if let Some((r, c)) = ws {
                            let _ = session.resize(r, c);
                        }
                    }
                }
                if done.load(Ordering::Relaxed) {
                    return;
                }
                let mut p = [nix::poll::PollFd::new(
                    fd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut p, nix::poll::PollTimeout::from(200u16)) {
                    Ok(0) | Err(nix::Error::EINTR) => continue,
                    Ok(_) => {}
                    Err(_) => break,
                }
                match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => {}
                    Err(_) => break,
                }
            }
            let _ = w.close();
        });
    }
    relay_output(session, stdout, stderr, done)
}

/// The output half of [`relay_session`]: until the process exits; then `done` tells the stdin
/// relay to stop.
fn relay_output(
    session: &Arc<Session>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    done: Arc<AtomicBool>,
) -> Option<i32> {
    let mut outs = Vec::new();
    for (fd, reader) in [
        (stdout, session.take_stdout()),
        (stderr, session.take_stderr()),
    ] {
        let Some(mut r) = reader else { continue };
        outs.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            let mut sink_ok = fd.is_some();
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if sink_ok {
                            if let Some(fd) = &fd {
                                sink_ok = relay::write_all(fd.as_fd(), &buf[..n]);
                            }
                        }
                    }
                }
            }
        }));
    }
    let code = session.wait().ok().map(|s| s.code);
    for t in outs {
        let _ = t.join();
    }
    done.store(true, Ordering::Relaxed);
    code
}

/// The pty the agent allocates starts at the caller's terminal size (a resize sent after the
/// start would race with a program that asks for the size at once).
fn set_console_size(process: &mut serde_json::Value, fd: BorrowedFd, tty: bool) {
    if let (true, Some((rows, cols))) = (tty, pty::size(fd)) {
        process["consoleSize"] = serde_json::json!({"height": rows, "width": cols});
    }
}

/// A request to the keeper: one JSON line, with up to three fds (stdin, stdout, stderr of an
/// exec) attached to it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Release the held workload (strata-oci start).
    Start,
    /// Signal the workload.
    Kill { signal: i32 },
    /// Run another process in the guest; the fds passed are its stdio.
    Exec {
        process: serde_json::Value,
        tty: bool,
    },
}

/// Largest request accepted (a process JSON is small; the limit keeps a hostile local client
/// from making the keeper buffer without bound).
const MAX_REQUEST: usize = 256 * 1024;

fn serve(
    listener: UnixListener,
    client: Arc<Client>,
    session: Arc<Session>,
    start: mpsc::Sender<UnixStream>,
) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let client = Arc::clone(&client);
        let session = Arc::clone(&session);
        let start = start.clone();
        std::thread::spawn(move || {
            let _ = handle(conn, &client, &session, &start);
        });
    }
}

fn handle(
    mut conn: UnixStream,
    client: &Client,
    session: &Session,
    start: &mpsc::Sender<UnixStream>,
) -> std::io::Result<()> {
    let (line, fds) = recv_request(&conn)?;
    // One write per answer (the caller wakes once, not once per JSON token).
    let reply =
        |conn: &mut UnixStream, v: serde_json::Value| conn.write_all(format!("{v}\n").as_bytes());
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            return reply(
                &mut conn,
                serde_json::json!({"ok": false, "message": format!("bad request: {e}")}),
            )
        }
    };
    match req {
        Request::Start => {
            let _ = start.send(conn);
            Ok(())
        }
        Request::Kill { signal } => {
            let v = match session.signal(signal) {
                Ok(()) => serde_json::json!({"ok": true}),
                Err(e) => serde_json::json!({"ok": false, "message": e.to_string()}),
            };
            reply(&mut conn, v)
        }
        Request::Exec { mut process, tty } => {
            if let Some(fd) = fds.first() {
                set_console_size(&mut process, fd.as_fd(), tty);
            }
            keep_what_the_agent_reads(&mut process);
            let bytes = serde_json::to_vec(&process).unwrap_or_default();
            // A stdin of /dev/null (`strata exec` without -i) has nothing to send: the guest
            // process gets a stdin at its end from the start, and no relay thread or
            // Close(stdin) frame is needed.
            let stdin = tty || !fds.first().is_some_and(|fd| is_dev_null(fd.as_fd()));
            let h = match client.exec_with_stdin(&bytes, tty, stdin) {
                Ok(h) => Arc::new(h),
                Err(e) => {
                    return reply(
                        &mut conn,
                        serde_json::json!({"ok": false, "message": e.to_string()}),
                    )
                }
            };
            reply(&mut conn, serde_json::json!({"ok": true, "pid": h.pid()}))?;
            let mut it = fds.into_iter();
            let stdin_fd = match it.next() {
                _ if !stdin => HostStdin::AtEof,
                Some(fd) => HostStdin::Fd(fd),
                None => HostStdin::Closed,
            };
            let code = relay_session(&h, stdin_fd, it.next(), it.next(), tty);
            reply(&mut conn, serde_json::json!({"exit": code.unwrap_or(137)}))
        }
    }
}

/// Whether `fd` is the null device (character device 1:3).
fn is_dev_null(fd: BorrowedFd) -> bool {
    nix::sys::stat::fstat(fd.as_raw_fd()).is_ok_and(|st| {
        st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3)
    })
}

fn recv_request(conn: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut cmsg = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(v) = c {
            for fd in v {
                // SAFETY: the kernel just installed these fds for us.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let n = msg.bytes;
    buf.truncate(n);
    while buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok((buf, fds))
}

/// Sends a request (with `fds` attached) to the keeper of the VM in `state_dir` and returns the
/// connection for reading its answers.
pub fn request(
    state_dir: &Path,
    req: &Request,
    fds: &[RawFd],
) -> Result<BufReader<UnixStream>, String> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let sock = state_dir.join("keeper.sock");
    let conn = SocketPath::new(state_dir)
        .and_then(|p| UnixStream::connect(p.path()))
        .map_err(|e| format!("the VM is not running (connect {}: {e})", sock.display()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let iov = [std::io::IoSlice::new(&line)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cm: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
    sendmsg::<()>(conn.as_raw_fd(), &iov, cm, MsgFlags::empty(), None)
        .map_err(|e| format!("send to the VM keeper: {e}"))?;
    Ok(BufReader::new(conn))
}

/// Sends one JSON request line (with `fds` attached) to the keeper whose socket is in `dir`
/// (a VM's state directory or a pooled VM's slot).
pub(crate) fn request_at(
    dir: &Path,
    req: &serde_json::Value,
    fds: &[RawFd],
) -> Result<BufReader<UnixStream>, String> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let conn = SocketPath::new(dir)
        .and_then(|p| UnixStream::connect(p.path()))
        .map_err(|e| format!("connect {}: {e}", dir.join("keeper.sock").display()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let iov = [std::io::IoSlice::new(&line)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cm: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
    sendmsg::<()>(conn.as_raw_fd(), &iov, cm, MsgFlags::empty(), None)
        .map_err(|e| format!("send to the keeper: {e}"))?;
    Ok(BufReader::new(conn))
}

/// Listens on `<dir>/keeper.sock`.
pub(crate) fn bind_keeper_socket(dir: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(dir.join("keeper.sock"));
    SocketPath::new(dir).and_then(|p| UnixListener::bind(p.path()))
}

/// The keeper's socket named through an fd of its directory (`/proc/self/fd/N/keeper.sock`):
/// state directories can be deeper than a socket address allows (108 bytes).
struct SocketPath {
    _dir: std::fs::File,
    path: PathBuf,
}

impl SocketPath {
    fn new(state_dir: &Path) -> std::io::Result<SocketPath> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(state_dir)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}/keeper.sock", dir.as_raw_fd()));
        Ok(SocketPath { _dir: dir, path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads one JSON answer line from the keeper.
pub fn answer(r: &mut BufReader<UnixStream>) -> Result<serde_json::Value, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Err("the VM keeper closed the connection".into()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err("the VM keeper did not answer in time".into())
        }
        Err(e) => Err(format!("read the VM keeper's answer: {e}")),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("bad keeper answer: {e}")),
    }
}

/// How long `simple_request` waits for the keeper's one-line answer (start, kill), unless
/// STRATA_KEEPER_TIMEOUT_MS says otherwise.
fn simple_request_timeout() -> Duration {
    std::env::var("STRATA_KEEPER_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(Duration::from_secs(60), Duration::from_millis)
}

/// A request that expects `{"ok": true}`.
pub fn simple_request(state_dir: &Path, req: &Request) -> Result<(), String> {
    let mut r = request(state_dir, req, &[])?;
    let timeout = simple_request_timeout();
    // A keeper that stopped answering (a stuck guest) must not hang the engine calling us.
    r.get_ref()
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("set a timeout on the VM keeper's socket: {e}"))?;
    let v = answer(&mut r).map_err(|e| {
        format!(
            "{e} (waited {} ms; `delete --force` ends the VM)",
            timeout.as_millis()
        )
    })?;
    if v["ok"] == true {
        Ok(())
    } else {
        Err(v["message"].as_str().unwrap_or("refused").to_string())
    }
}

/// Ends a VM and removes its state: the VM's leader is killed (which ends its whole pid
/// namespace), the keeper is given a moment to finish, cgroups left by a dead keeper are
/// removed, then the state directory. Idempotent.
pub fn destroy(state_dir: &Path) {
    if let Some(st) = load_state(state_dir) {
        if st.vm_pid > 0 && alive(st.vm_pid) {
            // SAFETY: SIGKILL to the VM leader recorded by its keeper.
            unsafe { libc::kill(st.vm_pid, libc::SIGKILL) };
        }
        // A paused VM (and keeper) dies only once thawed.
        if let Some(cg) = st.cgroup.as_ref().filter(|cg| cg.is_frozen()) {
            let _ = cg.set_frozen(false);
        }
        // A pooled VM is its pool keeper's child: while that keeper lives it reaps the VM and
        // removes its cgroup and slot (the detached teardown), and nothing here waits for it.
        let pool_keeper =
            st.pool_slot.is_some() && st.pool_keeper_pid > 0 && alive(st.pool_keeper_pid);
        let t = Instant::now();
        while (alive(st.keeper_pid) || (!pool_keeper && alive(st.vm_pid)))
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if alive(st.keeper_pid) {
            // SAFETY: the keeper did not finish: it goes too.
            unsafe { libc::kill(st.keeper_pid, libc::SIGKILL) };
        }
        if !pool_keeper {
            remove_cgroup(&st);
            if st.cgroup.is_none() {
                remove_unrecorded_cgroup(&st, state_dir);
            }
            // A pool keeper that died before it finished: its slot (and what it records).
            if let Some(slot) = &st.pool_slot {
                if slot.exists() {
                    destroy(slot);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(state_dir);
    if let Some(parent) = state_dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

/// Kills a VM and its keeper but keeps the state (strata-oci `kill` of a created VM: `state`
/// then says stopped, `delete` removes it).
pub fn destroy_vm_only(state_dir: &Path) {
    let Some(st) = load_state(state_dir) else {
        return;
    };
    for pid in [st.vm_pid, st.keeper_pid] {
        if alive(pid) {
            // SAFETY: SIGKILL to the pids recorded in the VM's state.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    remove_cgroup(&st);
}

/// The cgroup of a VM whose keeper died while booting it (before it recorded the cgroup):
/// everything in it at `cgroups_path` is killed, then its directories go (an engine's parents
/// stay; strata's shared `strata-vm` parent goes when it is left empty).
fn remove_unrecorded_cgroup(st: &KeeperState, state_dir: &Path) {
    let Some(path) = &st.cgroups_path else {
        return;
    };
    let id = state_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Ok(cg) = strata_container::cgroups::Cgroup::resolve(Some(path), &id) else {
        return;
    };
    let _ = cg.thaw();
    let t = Instant::now();
    loop {
        let pids = cg.pids().unwrap_or_default();
        if pids.is_empty() || t.elapsed() > Duration::from_secs(10) {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) of a pid listed in this VM's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for dir in cg.paths() {
        let _ = std::fs::remove_dir(dir);
        if let Some(parent) = dir.parent().filter(|p| p.ends_with("strata-vm")) {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

fn remove_cgroup(st: &KeeperState) {
    if let Some(Err(e)) = st.cgroup.as_ref().map(|cg| cg.remove()) {
        tracing::warn!("remove the VM's cgroups: {e}");
    }
}

/// Host pids of the VM (every process in its cgroup).
pub fn pids(state_dir: &Path) -> Vec<i32> {
    load_state(state_dir)
        .and_then(|st| st.cgroup?.cgroup().pids().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            platform: "uml".into(),
            kernel: None,
            initrd: None,
            disk: "/d".into(),
            volumes: vec![VolumeDisk {
                path: "/v.img".into(),
                destination: "/data".into(),
                read_only: true,
                snapshot: true,
            }],
            memory_mib: 128,
            vcpus: 1,
            cache_dir: "/c".into(),
            tty: true,
            cgroups_path: None,
        }
    }

    #[test]
    fn guest_config_maps_volumes_to_disks_and_drops_the_host_console() {
        let cfg = serde_json::json!({
            "process": {"terminal": false, "args": ["sh"]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/host/dir", "options": ["rbind", "ro"]},
                {"destination": "/dev/console", "type": "bind", "source": "/dev/pts/3"},
            ]
        });
        let p = strata_vmm::UmlPlatform::new();
        let g = guest_config(cfg.clone(), &spec(), &p).unwrap();
        assert_eq!(g["process"]["terminal"], true);
        let mounts = g["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1]["source"], "/dev/ubdb");
        assert_eq!(mounts[1]["type"], "ext4");
        assert!(mounts[1]["options"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("ro")));
        let mut s = spec();
        s.volumes[0].destination = "/elsewhere".into();
        assert!(guest_config(cfg, &s, &p).is_err());
    }

    /// An Exec's process carries only what the agent reads (the capability sets alone were
    /// ~600 of the 973 bytes of an exec of `true`).
    #[test]
    fn an_exec_process_keeps_what_the_agent_reads() {
        let mut p = serde_json::json!({
            "args": ["true"], "env": ["A=1"], "cwd": "/", "terminal": false,
            "consoleSize": {"height": 1, "width": 2},
            "user": {"uid": 0, "gid": 0}, "noNewPrivileges": true,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"]},
            "apparmorProfile": "x", "oomScoreAdj": 5, "selinuxLabel": "y",
        });
        keep_what_the_agent_reads(&mut p);
        let keys: Vec<&str> = p.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "args",
                "consoleSize",
                "cwd",
                "env",
                "noNewPrivileges",
                "rlimits",
                "terminal",
                "user"
            ]
        );
    }

    /// Create carries only what the agent reads, without host paths it would skip: a busybox
    /// run's config fits in one 2 KiB window of a UML channel.
    #[test]
    fn the_guest_config_keeps_what_the_agent_reads_and_no_host_paths() {
        let host = "/var/lib/strata/containers/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cfg = serde_json::json!({
            "ociVersion": "1.0.2",
            "hostname": "h",
            "root": {"path": format!("{host}/rootfs"), "readonly": true},
            "process": {
                "args": ["true"], "env": ["A=1"], "cwd": "/", "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "noNewPrivileges": true,
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"]},
                "apparmorProfile": "x",
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": format!("{host}/etc/hosts")},
                {"destination": "/etc/hostname", "type": "bind", "source": format!("{host}/etc/hostname")},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": format!("{host}/etc/resolv.conf")},
            ],
            "annotations": {"dev.strata.isolation": "vm"},
            "linux": {"namespaces": [{"type": "pid"}], "maskedPaths": ["/proc/kcore"]},
        });
        let mut s = spec();
        s.volumes.clear();
        s.tty = false;
        let g = guest_config(cfg, &s, &strata_vmm::UmlPlatform::new()).unwrap();
        // Sources of the network files stay readable before the wire form drops them.
        assert!(net_file_sources(&g).0.is_some());
        let w = on_the_wire(g);
        let keys: Vec<&str> = w.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "annotations",
                "hostname",
                "mounts",
                "ociVersion",
                "process",
                "root"
            ]
        );
        let p = w["process"].as_object().unwrap();
        assert!(!p.contains_key("capabilities") && !p.contains_key("apparmorProfile"));
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["rlimits"][0]["hard"], 1024);
        assert_eq!(w["root"], serde_json::json!({"readonly": true}));
        assert_eq!(w["mounts"].as_array().unwrap().len(), 1);
        assert!(!w.to_string().contains(host), "{w}");
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let r: Request = serde_json::from_str(r#"{"op":"kill","signal":15}"#).unwrap();
        assert!(matches!(r, Request::Kill { signal: 15 }));
        for bad in [
            "",
            "{}",
            r#"{"op":"format-disk"}"#,
            r#"{"op":"kill","signal":"x"}"#,
            "\u{0}\u{ff}",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_nic_becomes_annotations_and_the_host_etc_mounts_leave_the_guest_config() {
        let d = tempfile::tempdir().unwrap();
        let hosts = d.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1\tlocalhost\n10.87.0.2\tweb\n").unwrap();
        let config = serde_json::json!({
            "process": {"args": ["true"]},
            "annotations": {"dev.strata.isolation": "vm"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/x/ns"}]},
            "mounts": [
                {"destination": "/etc/hosts", "type": "bind", "source": hosts},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": d.path().join("missing")},
                {"destination": "/proc", "type": "proc", "source": "proc"},
            ],
        });
        assert_eq!(netns_path(&config), Some(PathBuf::from("/run/x/ns")));
        assert_eq!(
            netns_path(&serde_json::json!({"linux": {"namespaces": [{"type": "network"}]}})),
            None
        );
        assert_eq!(
            net_file_sources(&config).0.as_deref(),
            Some(hosts.as_path())
        );
        // Without a NIC nothing changes.
        assert_eq!(with_network(config.clone(), None).unwrap(), config);
        let nic = strata_vmm::GuestNic {
            interface: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            address: "10.87.0.3".parse().unwrap(),
            prefix: 16,
            gateway: Some("10.87.0.1".parse().unwrap()),
            mtu: 1500,
        };
        // A source that cannot be read is an error naming it, not a guest without /etc/resolv.conf.
        let err = with_network(config.clone(), Some(&nic)).unwrap_err();
        assert!(
            err.contains("missing") && err.contains("/etc/resolv.conf"),
            "{err}"
        );
        let mut ok = config.clone();
        ok["mounts"].as_array_mut().unwrap().remove(1);
        let g = with_network(ok, Some(&nic)).unwrap();
        let a = &g["annotations"];
        assert_eq!(a["dev.strata.isolation"], "vm");
        assert_eq!(a["dev.strata.net.address"], "10.87.0.3/16");
        assert_eq!(a["dev.strata.net.gateway"], "10.87.0.1");
        assert_eq!(a["dev.strata.net.mtu"], "1500");
        assert_eq!(
            a["dev.strata.net.hosts"],
            "127.0.0.1\tlocalhost\n10.87.0.2\tweb\n"
        );
        let dests: Vec<&str> = g["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(dests, ["/proc"]);
    }
}
