//! The runtime side of starting processes: clone the container's init straight into its new
//! namespaces (single-threaded caller: no re-exec, no intermediate unless namespaces must be
//! joined), create its cgroup while it does its first mounts, write the id maps, put it in its
//! cgroup, and talk to it over the typed channel.

use std::io::Write;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Process, Spec};

use crate::cgroups::{Cgroup, CgroupError};
use crate::channel::{self, Channel, ChannelError, Message};
use crate::init::{self, InitConfig};

/// Starting a process failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Namespace(#[from] crate::namespaces::NamespaceError),
    /// The child reported a failed step; the message is the child's.
    #[error("unable to start container process: {0}")]
    Child(String),
    #[error("unable to start container process: the process exited during set-up")]
    ChildDied,
    /// The init died without a word (it could not even write its error: a seccomp profile
    /// that refuses write, or kills); its wait status is the only cause left to report.
    #[error("unable to start container process: the process exited during set-up without reporting why ({0})")]
    ChildDiedWith(String),
    #[error("{0}")]
    Hook(String),
}

fn sys(step: &'static str) -> impl Fn(nix::Error) -> LaunchError {
    move |source| LaunchError::Sys { step, source }
}

/// clone(2) with fork semantics (the child continues on a copy of our stack) into `flags`.
/// Returns 0 in the child.
fn clone_fork(flags: CloneFlags) -> Result<i32, LaunchError> {
    // SAFETY: a raw clone without a new stack behaves like fork(2). Callers are
    // single-threaded (strata-oci), so the child cannot inherit a lock held by another thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() as libc::c_ulong) | libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        return Err(sys("clone")(nix::Error::last()));
    }
    Ok(r as i32)
}

fn exit_child(code: i32) -> ! {
    // SAFETY: _exit in a forked child: none of the parent's destructors may run here.
    unsafe { libc::_exit(code) }
}

fn write_file(path: String, data: &str) -> Result<(), LaunchError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(data.as_bytes()))
        .map_err(|source| LaunchError::Write { path, source })
}

fn map_lines(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

fn write_time_offsets(spec: &Spec) -> Result<(), LaunchError> {
    let Some(offs) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().as_ref())
    else {
        return Ok(());
    };
    let mut s = String::new();
    for (clock, o) in offs {
        s.push_str(&format!(
            "{clock} {} {}\n",
            o.secs().unwrap_or(0),
            o.nanosecs().unwrap_or(0)
        ));
    }
    write_file("/proc/self/timens_offsets".into(), &s)
}

/// Kills and reaps a child that failed set-up.
pub fn kill_and_reap(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = waitpid(Pid::from_raw(pid), None);
}

/// Waits for our child `pid` (killing it if it still runs) and describes how it ended.
fn reap_status(pid: i32) -> String {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    match waitpid(Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, c)) => format!("exit status {c}"),
        Ok(WaitStatus::Signaled(_, Signal::SIGSYS, _)) => {
            "killed by SIGSYS: check linux.seccomp".to_string()
        }
        Ok(WaitStatus::Signaled(_, s, _)) => format!("killed by {s}"),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("wait: {e}"),
    }
}

/// What the runtime does while init waits at the hooks point (prestart/createRuntime).
pub type RuntimeHooks<'a> = &'a dyn Fn(i32) -> Result<(), String>;

/// A container init that is ready.
#[derive(Debug, Clone, Copy)]
pub struct Spawned {
    /// Host pid of the init.
    pub pid: i32,
    /// `run` only: the time the init read right before the workload's execve, once that execve
    /// took effect (the init's close-on-exec end of the channel closed) — the runtime's own
    /// "first instruction" marker. `None` for `create`, or when the init failed after reporting
    /// ready (it then exits with the failure's code).
    pub exec_time: Option<std::time::SystemTime>,
}

/// A cloned container init that has not been given its cgroup yet. It builds its rootfs
/// meanwhile and waits for `cgroups_created` only where it binds its cgroup directories.
/// Killed and reaped on drop unless `finish` succeeded.
pub struct Cloned {
    pid: i32,
    ch: Channel,
    armed: bool,
}

/// Clones the container's init into its namespaces (through an intermediate process when
/// namespaces must be joined). The caller creates the cgroup while the init does its first
/// mounts, then calls [`Cloned::cgroups_created`] and [`Cloned::finish`].
pub fn clone_init(cfg: &InitConfig) -> Result<Cloned, LaunchError> {
    let (parent, child) = channel::pair()?;
    let plan = cfg.plan;
    let pid = if plan.join.is_empty() {
        if plan.new_time {
            nix::sched::unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
                .map_err(sys("unshare time namespace"))?;
            write_time_offsets(cfg.spec)?;
        }
        match clone_fork(plan.clone_flags)? {
            0 => {
                drop(parent);
                init::run(cfg, &child)
            }
            pid => pid,
        }
    } else {
        // Joining namespaces changes the caller: do it in an intermediate process that then
        // clones init as OUR child (CLONE_PARENT) into the remaining new namespaces.
        match clone_fork(CloneFlags::empty())? {
            0 => {
                drop(parent);
                intermediate(cfg, &child)
            }
            mid => {
                let _ = waitpid(Pid::from_raw(mid), None);
                match parent.recv()? {
                    Some(Message::ChildPid(p)) => p,
                    Some(Message::Failed(m)) => return Err(LaunchError::Child(m)),
                    _ => return Err(LaunchError::ChildDied),
                }
            }
        }
    };
    drop(child);
    Ok(Cloned {
        pid,
        ch: parent,
        armed: true,
    })
}

impl Cloned {
    /// Tells the init that its cgroup directories exist (the first of its two `Proceed`s): it
    /// may bind them into its `/sys/fs/cgroup` now.
    pub fn cgroups_created(&self) {
        // The child may already have failed while building its rootfs: its message is still
        // queued for `finish`, so a failed send is not the error to report.
        let _ = self.ch.send(&Message::Proceed);
    }

    /// Gives the init its id maps and cgroup, and waits until it is ready (blocked on
    /// exec.fifo for `create`; for `run`, until the workload's execve took effect).
    pub fn finish(
        mut self,
        cfg: &InitConfig,
        cg: &Cgroup,
        hooks: RuntimeHooks,
    ) -> Result<Spawned, LaunchError> {
        let (pid, parent) = (self.pid, &self.ch);
        if let Err(e) = finish_init(cfg, cg, pid, parent, hooks) {
            if matches!(e, LaunchError::ChildDied) {
                // Our child: its wait status says how it ended.
                self.armed = false;
                return Err(LaunchError::ChildDiedWith(reap_status(pid)));
            }
            return Err(e);
        }
        self.armed = false;
        // `run`: nothing is left to do but exec: the init sends the time it read right before
        // execve, and the channel's close by that execve confirms it (a late failure instead
        // sends `Failed`, and the init's exit code reports it).
        // A failure between `Ready` and the execve is the run's failure: reported with its
        // cause, never as a workload that exited 1. A channel closed without a word is the
        // execve (or an init a seccomp profile kept from sending: its exit code tells).
        let exec_time = match cfg.exec_fifo {
            Some(_) => None,
            None => {
                let mut exec_time = None;
                loop {
                    match parent.recv() {
                        Ok(Some(Message::Exec(ns))) => {
                            exec_time =
                                Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns));
                        }
                        Ok(Some(Message::Failed(m))) => {
                            kill_and_reap(pid);
                            return Err(LaunchError::Child(m));
                        }
                        Ok(None) => break exec_time,
                        _ => break None,
                    }
                }
            }
        };
        Ok(Spawned { pid, exec_time })
    }
}

impl Drop for Cloned {
    fn drop(&mut self) {
        if self.armed {
            kill_and_reap(self.pid);
        }
    }
}

fn intermediate(cfg: &InitConfig, ch: &Channel) -> ! {
    let r = (|| -> Result<i32, LaunchError> {
        crate::namespaces::join(&cfg.plan.join)?;
        if cfg.plan.new_time {
            nix::sched::unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
                .map_err(sys("unshare time namespace"))?;
            write_time_offsets(cfg.spec)?;
        }
        clone_fork(cfg.plan.clone_flags | CloneFlags::CLONE_PARENT)
    })();
    match r {
        Ok(0) => init::run(cfg, ch),
        Ok(pid) => {
            let _ = ch.send(&Message::ChildPid(pid));
            exit_child(0)
        }
        Err(e) => {
            let _ = ch.send(&Message::Failed(e.to_string()));
            exit_child(1)
        }
    }
}

fn finish_init(
    cfg: &InitConfig,
    cg: &Cgroup,
    pid: i32,
    parent: &Channel,
    hooks: RuntimeHooks,
) -> Result<(), LaunchError> {
    if cfg.plan.new_user {
        let linux = cfg.spec.linux().as_ref();
        let uid = linux
            .and_then(|l| l.uid_mappings().as_deref())
            .unwrap_or_default();
        let gid = linux
            .and_then(|l| l.gid_mappings().as_deref())
            .unwrap_or_default();
        // Privileged step, kept in the runtime: root may write any mapping.
        write_file(format!("/proc/{pid}/gid_map"), &map_lines(gid))?;
        write_file(format!("/proc/{pid}/uid_map"), &map_lines(uid))?;
    }
    if let Err(e) = cg.add_process(pid) {
        // A child that already failed (it builds its rootfs while we work) explains better.
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        if let Ok(Some(Message::Failed(m))) = parent.recv() {
            return Err(LaunchError::Child(m));
        }
        return Err(e.into());
    }
    // The second `Proceed`. The child may already have failed (it builds its rootfs while we
    // work): its message is still queued, so a failed send is not the error to report.
    let _ = parent.send(&Message::Proceed);
    loop {
        match parent.recv()? {
            Some(Message::Ready) => return Ok(()),
            Some(Message::HooksRequest) => {
                hooks(pid).map_err(LaunchError::Hook)?;
                parent.send(&Message::HooksDone)?;
            }
            Some(Message::Failed(m)) => return Err(LaunchError::Child(m)),
            Some(m) => return Err(LaunchError::Child(format!("unexpected message {m:?}"))),
            None => return Err(LaunchError::ChildDied),
        }
    }
}

/// How `exec` runs a process inside an existing container.
pub struct ExecConfig<'a> {
    /// Host pid of the container's init (its namespaces are joined).
    pub init_pid: i32,
    pub process: &'a Process,
    pub caps: &'a crate::capabilities::CapSets,
    pub preserve_fds: i32,
    /// The container's compiled seccomp filter: exec'd processes get it too (as with runc).
    pub seccomp: Option<&'a crate::seccomp::CompiledFilter>,
    /// `exec -t`: the console socket, connected by the runtime before joining the mount
    /// namespace; the pty itself is allocated inside the container.
    pub console: Option<std::os::fd::BorrowedFd<'a>>,
}

/// Namespaces an exec'd process joins, user first, mount last (as nsexec orders them).
const EXEC_NAMESPACES: [(&str, LinuxNamespaceType); 8] = [
    ("user", LinuxNamespaceType::User),
    ("ipc", LinuxNamespaceType::Ipc),
    ("uts", LinuxNamespaceType::Uts),
    ("net", LinuxNamespaceType::Network),
    ("pid", LinuxNamespaceType::Pid),
    ("cgroup", LinuxNamespaceType::Cgroup),
    ("time", LinuxNamespaceType::Time),
    ("mnt", LinuxNamespaceType::Mount),
];

/// Starts a process in the namespaces and cgroup of a running container; returns its host pid
/// once it is about to exec.
pub fn spawn_exec(cfg: &ExecConfig, cg: &Cgroup) -> Result<i32, LaunchError> {
    let (parent, child) = channel::pair()?;
    let mid = match clone_fork(CloneFlags::empty())? {
        0 => {
            drop(parent);
            exec_intermediate(cfg, &child)
        }
        mid => mid,
    };
    drop(child);
    let r = (|| {
        // The intermediate joins the cgroup before forking, so the process starts inside it.
        cg.add_process(mid)?;
        parent.send(&Message::Proceed)?;
        let _ = waitpid(Pid::from_raw(mid), None);
        // The intermediate (ChildPid) and the exec'd process (Ready) share the channel, and the
        // process may report Ready before the intermediate reports its pid: accept either order.
        let (mut pid, mut ready) = (None, false);
        while pid.is_none() || !ready {
            match parent.recv()? {
                Some(Message::ChildPid(p)) if pid.is_none() => pid = Some(p),
                Some(Message::Ready) if !ready => ready = true,
                Some(Message::Failed(m)) => {
                    if let Some(p) = pid {
                        kill_and_reap(p);
                    }
                    return Err(LaunchError::Child(m));
                }
                _ => {
                    if let Some(p) = pid {
                        kill_and_reap(p);
                    }
                    return Err(LaunchError::ChildDied);
                }
            }
        }
        let pid = pid.ok_or(LaunchError::ChildDied)?;
        // Until its execve the process may still fail (fds, a seccomp filter, the execve
        // itself): wait for the channel to close on exec, or for the reason.
        match parent.recv() {
            Ok(Some(Message::Failed(m))) => {
                kill_and_reap(pid);
                Err(LaunchError::Child(m))
            }
            _ => Ok(pid),
        }
    })();
    if r.is_err() {
        let _ = nix::sys::signal::kill(Pid::from_raw(mid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(mid), Some(WaitPidFlag::WNOHANG));
    }
    r
}

fn same_ns(a: &str, b: &str) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.ino() == y.ino() && x.dev() == y.dev()
        }
        _ => false,
    }
}

fn exec_intermediate(cfg: &ExecConfig, ch: &Channel) -> ! {
    let r = (|| -> Result<i32, LaunchError> {
        match ch.expect()? {
            Message::Proceed => {}
            m => return Err(LaunchError::Child(format!("unexpected message {m:?}"))),
        }
        // Non-dumpable while we hold the runtime's fds inside the container's namespaces:
        // container processes can neither ptrace us nor open our /proc/<pid>/{fd,exe,mem}.
        // execve of the workload makes it dumpable again.
        crate::exe_clone::set_dumpable(false).map_err(|e| LaunchError::Child(e.to_string()))?;
        let mut join = Vec::new();
        for (name, t) in EXEC_NAMESPACES {
            let theirs = format!("/proc/{}/ns/{name}", cfg.init_pid);
            let ours = format!("/proc/self/ns/{name}");
            if Path::new(&theirs).exists() && !same_ns(&theirs, &ours) {
                join.push((t, theirs.into()));
            }
        }
        crate::namespaces::join(&join)?;
        clone_fork(CloneFlags::CLONE_PARENT)
    })();
    match r {
        Ok(0) => {
            let code = match exec_process(cfg, ch) {
                Ok(never) => match never {},
                Err(e) => {
                    let _ = ch.send(&Message::Failed(e.to_string()));
                    match &e {
                        init::InitError::Process(p) => p.exit_code(),
                        _ => 1,
                    }
                }
            };
            exit_child(code)
        }
        Ok(pid) => {
            let _ = ch.send(&Message::ChildPid(pid));
            exit_child(0)
        }
        Err(e) => {
            let _ = ch.send(&Message::Failed(e.to_string()));
            exit_child(1)
        }
    }
}

fn exec_process(
    cfg: &ExecConfig,
    ch: &Channel,
) -> Result<std::convert::Infallible, init::InitError> {
    use crate::process;
    init::reset_signals();
    if let Some(socket) = cfg.console {
        crate::console::attach_fd(socket, cfg.process)?;
    }
    process::set_rlimits(cfg.process)?;
    process::set_cwd(cfg.process)?;
    crate::fds::verify_cwd_inside_root(cfg.process.cwd())?;
    // Before any seccomp filter, as in init: a profile need not allow close_range.
    crate::fds::prepare_exec_fds(cfg.preserve_fds.max(0) as u32)?;
    // seccomp as in init: before the capabilities are dropped unless no_new_privs is set.
    let nnp = cfg.process.no_new_privileges().unwrap_or(false);
    if let (Some(filter), false) = (cfg.seccomp, nnp) {
        filter.apply()?;
    }
    process::set_identity(cfg.process, cfg.caps, false)?;
    let program = process::resolve_program(cfg.process)?;
    ch.send(&Message::Ready)?;
    if let (Some(filter), true) = (cfg.seccomp, nnp) {
        filter.apply()?;
    }
    Err(program.exec().into())
}

/// Blocks the signals `wait_forwarding` forwards (call before spawning; the child unblocks).
pub fn block_forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    let _ = set.thread_block();
    set
}

/// Waits for `pid` (our child), forwarding the blocked signals to it; returns its exit code
/// (128 + signal when killed, as shells report it).
pub fn wait_forwarding(pid: i32, set: &SigSet) -> i32 {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => return c,
            Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => return 128 + s as i32,
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => continue,
            Err(nix::Error::ECHILD) => return 255,
            Err(_) => {}
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
        }
    }
}
