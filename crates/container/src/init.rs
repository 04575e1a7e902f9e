//! The container's init: runs in the cloned child, inside the new namespaces, and turns
//! itself into the workload. The sequence below IS the container set-up; each step is named.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::capabilities::CapSets;
use crate::channel::{Channel, ChannelError, Message};
use crate::namespaces::Plan;
use crate::process::{self, ProcessError};
use crate::rootfs::{self, RootfsContext, RootfsError};

/// Everything init needs, prepared by the runtime before the clone.
pub struct InitConfig<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub plan: &'a Plan,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// `<state dir>/exec.fifo` for `create`; `None` for `run` (no wait for `start`).
    pub exec_fifo: Option<&'a Path>,
    /// The container's cgroup directories on the host, by hierarchy name ("" = cgroup2 only).
    pub cgroup_dirs: Vec<(String, PathBuf)>,
    /// Fds above stdio that reach the workload (`--preserve-fds`).
    pub preserve_fds: i32,
    /// Where the pty master goes when process.terminal is set: the engine's
    /// `--console-socket` or the runtime's own relay (`console::Terminal::container_end`).
    pub console: Option<std::os::fd::BorrowedFd<'a>>,
    /// The runtime's fd holding the container lock: closed first thing in init, or the flock
    /// (shared by the forked fd) would stay held and block `start`.
    pub lock_fd: Option<std::os::fd::RawFd>,
}

/// A step of init failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Caps(#[from] crate::capabilities::CapsError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("unexpected message from the runtime: {0:?}")]
    Protocol(Message),
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error(transparent)]
    Fds(#[from] crate::fds::FdError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

fn sys(step: &'static str) -> impl Fn(nix::Error) -> InitError {
    move |source| InitError::Sys { step, source }
}

/// Resets what a Rust runtime leaves behind that must not reach the workload: the signal mask
/// blocked by the runtime for forwarding, and SIGPIPE ignored by std.
pub fn reset_signals() {
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    // SAFETY: restoring the default disposition of SIGPIPE; no handler is installed.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Entry of the cloned child: never returns.
pub fn run(cfg: &InitConfig, ch: &Channel) -> ! {
    if let Some(fd) = cfg.lock_fd {
        // SAFETY: closing our copy of the runtime's lock fd; nothing in init uses it.
        unsafe { libc::close(fd) };
    }
    reset_signals();
    let code = match init(cfg, ch) {
        Ok(never) => match never {},
        Err(e) => {
            let msg = e.to_string();
            let _ = ch.send(&Message::Failed(msg.clone()));
            report_to_start(&msg);
            // After `Ready` nobody reads the channel: the exit code tells what failed.
            match &e {
                InitError::Process(p) => p.exit_code(),
                _ => 1,
            }
        }
    };
    // SAFETY: _exit in the forked child: no destructors or atexit handlers of the parent run.
    unsafe { libc::_exit(code) }
}

fn init(cfg: &InitConfig, ch: &Channel) -> Result<std::convert::Infallible, InitError> {
    // The host paths init needs (exec fifo, rootfs, /dev/null) are opened first, while our
    // ids are still the runtime's: in a user namespace the mapped root may not walk a 0700
    // state root or bundle directory. Opened here, after the clone, so the rootfs fd belongs
    // to our own mount namespace (a bind mount refuses a source from another).
    let fifo: Option<OwnedFd> = match cfg.exec_fifo {
        Some(p) => Some(open_opath(p).map_err(sys("open exec.fifo"))?),
        None => None,
    };
    let host_null = open_opath(Path::new("/dev/null")).map_err(sys("open /dev/null"))?;
    let rootfs_dir = open_opath(cfg.rootfs).map_err(|e| {
        InitError::Rootfs(RootfsError::Sys {
            step: "open rootfs",
            path: cfg.rootfs.to_path_buf(),
            source: e,
        })
    })?;
    // 1. The runtime sends two go-aheads (`Proceed`): the first once our cgroup directories
    // exist (it creates them after the clone, while we mount), the second once the uid/gid
    // maps are written and we are in our cgroup. Only a new user namespace (the maps) or a
    // cgroup2 mount in a new cgroup namespace need both before set-up; otherwise we wait for
    // the first only where the rootfs binds the cgroup directories (or before the second),
    // and for the second only before unsharing the cgroup namespace and before anything of
    // the workload's runs: the runtime's cgroup work runs in parallel on another core.
    let pure_v2_cgroupns =
        cfg.plan.new_cgroup && cfg.cgroup_dirs.len() == 1 && cfg.cgroup_dirs[0].0.is_empty();
    let early = cfg.plan.new_user || pure_v2_cgroupns;
    let cgroups_created = std::cell::Cell::new(false);
    let wait_cgroups_created = || -> Result<(), InitError> {
        if !cgroups_created.get() {
            wait_proceed(ch)?;
            cgroups_created.set(true);
        }
        Ok(())
    };
    if early {
        wait_cgroups_created()?;
        wait_proceed(ch)?;
    }
    let process = cfg
        .spec
        .process()
        .as_ref()
        .expect("validated: process present");
    let user_ns = cfg.plan.new_user
        || cfg
            .plan
            .join
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::User);
    if user_ns {
        // Become root of the user namespace (the maps exist now: we waited for a new one's,
        // a joined one has them): files we create on our own mounts must be owned by an id
        // mapped there (EOVERFLOW otherwise).
        let root_u = nix::unistd::Uid::from_raw(0);
        let root_g = nix::unistd::Gid::from_raw(0);
        nix::unistd::setresgid(root_g, root_g, root_g)
            .map_err(sys("setresgid(0) in user namespace"))?;
        nix::unistd::setresuid(root_u, root_u, root_u)
            .map_err(sys("setresuid(0) in user namespace"))?;
    }
    // 2. The cgroup namespace only once we are in our cgroup: its root becomes that cgroup.
    if early && cfg.plan.new_cgroup {
        unshare_cgroup_ns()?;
    }
    nix::unistd::setsid().map_err(sys("setsid"))?;
    if !cfg.no_new_keyring {
        join_session_keyring(cfg.id);
    }
    // 3. Hostname and domainname (uts namespace).
    if let Some(h) = cfg.spec.hostname() {
        nix::unistd::sethostname(h).map_err(sys("sethostname"))?;
    }
    if let Some(d) = cfg.spec.domainname() {
        // SAFETY: pointer and length of a live &str.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(sys("setdomainname")(nix::Error::last()));
        }
    }
    // 4. Root filesystem: mounts, /dev, sysctls, readonly and masked paths, then pivot.
    // The exec fifo and /dev/null were opened from the host side before any container path
    // is trusted.
    let root = rootfs::prepare(&RootfsContext {
        spec: cfg.spec,
        rootfs: cfg.rootfs,
        rootfs_dir: rootfs_dir.as_fd(),
        bundle: cfg.bundle,
        cgroup_dirs: &cfg.cgroup_dirs,
        cgroup_ns: cfg.plan.new_cgroup,
        user_ns,
        cgroups_created: &|| {
            wait_cgroups_created().map_err(|e| RootfsError::CgroupsNotCreated(e.to_string()))
        },
    })?;
    rootfs::set_sysctls(root.as_fd(), cfg.spec)?;
    rootfs::readonly_paths(root.as_fd(), cfg.spec)?;
    rootfs::masked_paths(root.as_fd(), cfg.spec, host_null.as_fd())?;
    drop(host_null);
    if !early {
        wait_cgroups_created()?;
        wait_proceed(ch)?;
        if cfg.plan.new_cgroup {
            unshare_cgroup_ns()?;
        }
    }
    if needs_runtime_hooks(cfg.spec) {
        ch.send(&Message::HooksRequest)?;
        match ch.expect()? {
            Message::HooksDone => {}
            m => return Err(InitError::Protocol(m)),
        }
    }
    hooks_create_container(cfg)?;
    drop(rootfs_dir);
    rootfs::enter(
        root.as_fd(),
        cfg.rootfs,
        cfg.no_pivot,
        rootfs::root_propagation(cfg.spec),
    )?;
    drop(root);
    // The pty comes from the container's own devpts, so it is allocated after pivot_root.
    setup_console(cfg, process)?;
    if cfg
        .spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        rootfs::readonly_root()?;
    }
    // 5. Process attributes, identity, capabilities.
    process::set_rlimits(process)?;
    process::set_oom_score_adj(process)?;
    process::set_cwd(process)?;
    // CVE-2024-21626: a cwd reached through a still-open host fd is outside the root.
    crate::fds::verify_cwd_inside_root(process.cwd())?;
    let caps = CapSets::from_spec(process.capabilities().as_ref())?;
    // The fds are marked close-on-exec before any seccomp filter: a profile need not allow
    // close_range (nor the /proc/self/fd walk behind it). Every fd opened from here on is
    // close-on-exec itself.
    close_fds(cfg)?;
    apply_seccomp_before_identity(cfg)?;
    process::set_identity(process, &caps, false)?;
    let program = process::resolve_program(process)?;
    // 6. Ready; for `create`, block on exec.fifo until `start` opens it.
    ch.send(&Message::Ready)?;
    if let Some(fifo) = fifo {
        wait_for_start(&fifo)?;
    }
    hooks_start_container(cfg)?;
    apply_seccomp(cfg)?;
    if cfg.exec_fifo.is_none() {
        // The runtime's "first instruction" marker (`state.json` "started"). A seccomp profile
        // that denies sendmsg only costs the marker, not the container.
        let _ = ch.send(&Message::Exec(now_ns()));
    }
    Err(program.exec().into())
}

fn wait_proceed(ch: &Channel) -> Result<(), InitError> {
    match ch.expect()? {
        Message::Proceed => Ok(()),
        m => Err(InitError::Protocol(m)),
    }
}

fn unshare_cgroup_ns() -> Result<(), InitError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).map_err(sys("unshare cgroup namespace"))
}

fn open_opath(p: &Path) -> Result<OwnedFd, nix::Error> {
    let fd = nix::fcntl::open(
        p,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: open returned a fresh fd we own.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Opens exec.fifo for writing (blocks until `start` opens it for reading) and writes one byte,
/// like runc's init. Reopened through /proc/self/fd because the path is outside our root now.
fn wait_for_start(fifo: &OwnedFd) -> Result<(), InitError> {
    let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
    let fd = loop {
        match nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            Err(nix::Error::EINTR) => continue,
            r => {
                break r.map_err(sys(
                    "open exec.fifo for writing (is /proc mounted in the container?)",
                ))?
            }
        }
    };
    // SAFETY: open returned a fresh fd we own.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    nix::unistd::write(&fd, b"0").map_err(sys("write exec.fifo"))?;
    // Kept open (close-on-exec) until the workload's execve: `start` reads the fifo to EOF,
    // so it learns that the execve happened, or reads why we failed before it.
    START_REPORT.store(
        std::os::fd::IntoRawFd::into_raw_fd(fd),
        std::sync::atomic::Ordering::Relaxed,
    );
    Ok(())
}

/// The write end of exec.fifo once `start` released us (-1 before): the runtime that created
/// us is gone by then, so a failure before the workload's execve is written here for `start`.
static START_REPORT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Writes `msg` to `start` when it is waiting on exec.fifo (see [`START_REPORT`]).
fn report_to_start(msg: &str) {
    let fd = START_REPORT.load(std::sync::atomic::Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // SAFETY: ignoring SIGPIPE (a `start` that stopped reading must not turn our exit code
    // into a signal); we exit right after.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // One write below PIPE_BUF is atomic: `start` reads the whole message or nothing.
    let b = &msg.as_bytes()[..msg.len().min(4000)];
    // SAFETY: writing a live buffer to an fd we own.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
}

/// A new session keyring named after the container, so containers do not share the host's
/// keys (runc does the same unless --no-new-keyring).
fn join_session_keyring(id: &str) {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    let Ok(name) = std::ffi::CString::new(id) else {
        return;
    };
    // SAFETY: keyctl with a valid C string; failure (ENOSYS, EPERM in some user namespaces)
    // leaves the inherited keyring, as runc tolerates.
    unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
}

/// Whether the runtime must run hooks while init waits (prestart / createRuntime).
pub fn needs_runtime_hooks(spec: &Spec) -> bool {
    spec.hooks().as_ref().is_some_and(|h| {
        #[allow(deprecated)]
        let prestart = h.prestart().as_ref().is_some_and(|v| !v.is_empty());
        prestart || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    })
}

// ---- Call points for issue 3 (engineer "harden" fills these; keep one function each). ----

/// Console: after pivot_root (the pty comes from the container's devpts). With
/// process.terminal, allocate the pty, bind it at /dev/console, send the master over the
/// socket the runtime connected (or its own relay) and make the slave the controlling
/// terminal and stdio.
fn setup_console(cfg: &InitConfig, process: &oci_spec::runtime::Process) -> Result<(), InitError> {
    Ok(crate::console::attach(cfg.console, process)?)
}

/// createContainer hooks: in the container's namespaces, after the mounts, before pivot_root.
fn hooks_create_container(cfg: &InitConfig) -> Result<(), InitError> {
    use crate::hooks::{run_container_hooks, HookKind};
    Ok(run_container_hooks(
        HookKind::CreateContainer,
        cfg.spec,
        cfg.id,
        cfg.bundle,
    )?)
}

/// startContainer hooks: after `start` released us, right before exec.
fn hooks_start_container(cfg: &InitConfig) -> Result<(), InitError> {
    use crate::hooks::{run_container_hooks, HookKind};
    Ok(run_container_hooks(
        HookKind::StartContainer,
        cfg.spec,
        cfg.id,
        cfg.bundle,
    )?)
}

/// Close every fd but stdio and the `preserve_fds` after it (CVE-2024-21626 class): marked
/// close-on-exec, so the init's own fds stay usable until the exec itself.
fn close_fds(cfg: &InitConfig) -> Result<(), InitError> {
    Ok(crate::fds::prepare_exec_fds(cfg.preserve_fds.max(0) as u32)?)
}

fn seccomp_stage(cfg: &InitConfig, stage: crate::seccomp::Stage) -> Result<(), InitError> {
    let process = cfg
        .spec
        .process()
        .as_ref()
        .expect("validated: process present");
    let profile = cfg.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let nnp = process.no_new_privileges().unwrap_or(false);
    Ok(crate::seccomp::apply_for_stage(profile, nnp, stage)?)
}

/// seccomp without noNewPrivileges needs CAP_SYS_ADMIN: installed before the capabilities are
/// dropped (runc's order).
fn apply_seccomp_before_identity(cfg: &InitConfig) -> Result<(), InitError> {
    seccomp_stage(cfg, crate::seccomp::Stage::BeforeIdentity)
}

/// seccomp with noNewPrivileges: last, after no_new_privs, right before exec.
fn apply_seccomp(cfg: &InitConfig) -> Result<(), InitError> {
    seccomp_stage(cfg, crate::seccomp::Stage::BeforeExec)
}

/// CLOCK_REALTIME in nanoseconds (not affected by a time namespace, so the host can use it).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
