//! Starting a workload process: a vfork-style child (`clone(CLONE_VM|CLONE_VFORK)` on a stack
//! of its own) sets up identity/limits/rootfs/cwd and execs, like posix_spawn.
//!
//! Why not fork: inside a UML guest every address space is a host process driven by ptrace, so
//! fork's copy of the agent's address space costs a host process, and every page the child
//! touches before exec a guest page fault (bench/vm-exec.sh: fork+exec was most of an exec's
//! latency). The vfork child borrows the agent's memory until its execve, so only the
//! workload's own address space is made. The agent is suspended meanwhile (CLONE_VFORK).
//!
//! The child therefore allocates nothing and takes no lock: everything it needs (argv, envp,
//! paths, limits) is prepared before the clone, and it makes plain system calls only (set*id
//! as raw syscalls: glibc's wrappers would broadcast the change to the agent's threads). It
//! reports which step failed and its errno in a record in the agent's memory, read once the
//! clone returns, so the host gets the same answers Docker gives: 127 for a missing program,
//! 126 for one that cannot be executed.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::pty::{openpty, Winsize};

use crate::spec::{rlimit_resource, Process};

/// PATH used when the process environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A step the child performs before exec; reported back when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Session = 1,
    ControllingTerminal,
    Stdio,
    Chroot,
    Rlimit,
    Groups,
    Gid,
    Uid,
    Chdir,
    NoNewPrivs,
    Exec,
}

impl Step {
    fn from_u8(b: u8) -> Option<Step> {
        use Step::*;
        [
            Session,
            ControllingTerminal,
            Stdio,
            Chroot,
            Rlimit,
            Groups,
            Gid,
            Uid,
            Chdir,
            NoNewPrivs,
            Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }

    fn describe(self) -> &'static str {
        match self {
            Step::Session => "create a session (setsid)",
            Step::ControllingTerminal => "set the controlling terminal",
            Step::Stdio => "set up stdio",
            Step::Chroot => "enter the container rootfs",
            Step::Rlimit => "apply process.rlimits",
            Step::Groups => "set additional groups",
            Step::Gid => "set gid",
            Step::Uid => "set uid",
            Step::Chdir => "change to process.cwd",
            Step::NoNewPrivs => "set no_new_privs",
            Step::Exec => "execute",
        }
    }
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The agent could not prepare the process (pipes, pty, fork).
    #[error("cannot {step}: {errno}")]
    Prepare { step: &'static str, errno: Errno },
    /// The forked child failed before or at exec; it has exited with 127 and must be reaped.
    #[error("{}", child_message(.step, .errno, .program, .cwd))]
    Child {
        pid: i32,
        step: Step,
        errno: Errno,
        program: String,
        cwd: String,
    },
}

fn child_message(step: &Step, errno: &Errno, program: &str, cwd: &str) -> String {
    match (step, errno) {
        (Step::Exec, Errno::ENOENT) if !program.contains('/') => {
            format!("exec: \"{program}\": executable file not found in $PATH")
        }
        (Step::Exec, e) => format!("exec {program}: {}", e.desc().to_lowercase()),
        (Step::Chdir, e) => format!("chdir to cwd (\"{cwd}\"): {}", e.desc().to_lowercase()),
        (s, e) => format!("cannot {}: {}", s.describe(), e.desc().to_lowercase()),
    }
}

impl SpawnError {
    /// The exit status the session reports, as for containers: 127 when the program is not
    /// found, 126 when it cannot be executed, 125 when a set-up step (cwd, user, rlimits...)
    /// failed before exec.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::Child {
                step: Step::Exec,
                errno: Errno::ENOENT | Errno::ENOTDIR,
                ..
            } => 127,
            SpawnError::Child {
                step: Step::Exec, ..
            } => 126,
            _ => 125,
        }
    }
}

/// A running child and the agent's ends of its stdio.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    /// Write end of stdin (a pipe, or a dup of the pty master); None when the process got a
    /// stdin already at its end ([`SpawnRequest::stdin`] false).
    pub stdin: Option<OwnedFd>,
    /// Read end of stdout (a pipe, or the pty master).
    pub stdout: OwnedFd,
    /// Read end of stderr (None with a pty: everything arrives on the master).
    pub stderr: Option<OwnedFd>,
    /// The pty master, for window resizes.
    pub pty: Option<OwnedFd>,
}

/// How to start one process.
pub struct SpawnRequest<'a> {
    pub process: &'a Process,
    pub tty: bool,
    /// The host sends stdin. False (and no tty): the process's stdin is a pipe whose write end
    /// is closed before it starts, so it reads EOF at once.
    pub stdin: bool,
    /// Container rootfs to chroot into (None: run in the agent's own root).
    pub root: Option<&'a Path>,
}

fn cstring(s: &str) -> CString {
    // Validation (spec.rs) already refused NUL bytes; stripping keeps this total.
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

fn set_flags(fd: RawFd, nonblock: bool) -> Result<(), Errno> {
    // SAFETY: fcntl on an fd we own; no memory is passed.
    unsafe {
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(Errno::last());
        }
        if nonblock {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(Errno::last());
            }
        }
    }
    Ok(())
}

/// Marks an agent-side fd close-on-exec and non-blocking.
pub fn make_agent_fd(fd: RawFd) -> Result<(), Errno> {
    set_flags(fd, true)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|errno| SpawnError::Prepare {
        step: "create a pipe",
        errno,
    })
}

/// Everything the child needs, computed before fork.
struct Prepared {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    root: Option<CString>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    umask: Option<u32>,
    no_new_privs: bool,
}

/// [`Prepared`] plus the NULL-terminated pointer arrays execve takes (pointing into it).
struct Exec {
    prep: Prepared,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl Exec {
    fn new(prep: Prepared) -> Exec {
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|a| a.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Exec {
            argv: ptrs(&prep.argv),
            envp: ptrs(&prep.envp),
            prep,
        }
    }
}

/// What the vfork child writes into the agent's memory when a step fails (step 0: it exec'd).
#[derive(Default)]
#[repr(C)]
struct Failure {
    step: u8,
    errno: i32,
}

/// Everything the child reads, behind the one pointer clone(2) passes it.
struct ChildArgs<'a> {
    exec: &'a Exec,
    tty: bool,
    fds: [RawFd; 3],
    failure: *mut Failure,
}

/// Stack of the vfork child: child_setup's frames and the libc calls it makes (a few KiB).
const CHILD_STACK: usize = 64 * 1024;

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs the parent passed to clone; the parent is suspended
    // (CLONE_VFORK) and keeps it alive until this child has exec'd or exited.
    let a = unsafe { &*(arg as *const ChildArgs) };
    let (step, errno) = child_setup(a.exec, a.tty, &a.fds);
    // SAFETY: the record lives in the suspended parent's memory, which we share; _exit leaves
    // without running anything of the agent's.
    unsafe {
        std::ptr::write_volatile(
            a.failure,
            Failure {
                step: step as u8,
                errno: errno as i32,
            },
        );
        libc::_exit(127)
    }
}

fn prepare(req: &SpawnRequest<'_>) -> Prepared {
    let p = req.process;
    let mut env = p.env.clone();
    if p.env_var("PATH").is_none() {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if req.tty && p.env_var("TERM").is_none() {
        env.push("TERM=xterm".to_string());
    }
    let program = p.args.first().map(String::as_str).unwrap_or_default();
    let candidates = if program.contains('/') {
        vec![cstring(program)]
    } else {
        let path = p.env_var("PATH").unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|d| {
                let d = if d.is_empty() { "." } else { d };
                cstring(&format!("{}/{program}", d.trim_end_matches('/')))
            })
            .collect()
    };
    Prepared {
        candidates,
        argv: p.args.iter().map(|a| cstring(a)).collect(),
        envp: env.iter().map(|e| cstring(e)).collect(),
        cwd: cstring(&p.cwd),
        root: req.root.map(|r| cstring(&r.to_string_lossy())),
        rlimits: p
            .rlimits
            .iter()
            .filter_map(|r| {
                Some((
                    rlimit_resource(&r.kind)?,
                    libc::rlimit {
                        rlim_cur: r.soft,
                        rlim_max: r.hard,
                    },
                ))
            })
            .collect(),
        uid: p.user.uid,
        gid: p.user.gid,
        groups: p.user.additional_gids.clone(),
        umask: p.user.umask,
        no_new_privs: p.no_new_privileges,
    }
}

/// Starts the process. On [`SpawnError::Child`] the child exists and exits with 127 by itself.
pub fn spawn(req: &SpawnRequest<'_>) -> Result<Child, SpawnError> {
    let exec = Exec::new(prepare(req));
    // (child end, agent end) for stdin, stdout, stderr; a pty gives one master for all three.
    let (child_fds, agent): ([OwnedFd; 3], Child) = if req.tty {
        let ws = req.process.console_size.map(|c| Winsize {
            ws_row: c.height,
            ws_col: c.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let pty = openpty(
            ws.as_ref().or(Some(&Winsize {
                ws_row: 24,
                ws_col: 80,
                ws_xpixel: 0,
                ws_ypixel: 0,
            })),
            None,
        )
        .map_err(|errno| SpawnError::Prepare {
            step: "allocate a pty",
            errno,
        })?;
        let prep_err = |errno| SpawnError::Prepare {
            step: "set up the pty",
            errno,
        };
        set_flags(pty.master.as_raw_fd(), true).map_err(prep_err)?;
        set_flags(pty.slave.as_raw_fd(), false).map_err(prep_err)?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| prep_err(Errno::from_raw(e.raw_os_error().unwrap_or(0))))
        };
        let (s1, s2, m1, m2) = (
            dup(&pty.slave)?,
            dup(&pty.slave)?,
            dup(&pty.master)?,
            dup(&pty.master)?,
        );
        (
            [pty.slave, s1, s2],
            Child {
                pid: 0,
                stdin: Some(m1),
                stdout: m2,
                stderr: None,
                pty: Some(pty.master),
            },
        )
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (e_r, e_w) = pipe()?;
        for fd in [&in_w, &out_r, &e_r] {
            set_flags(fd.as_raw_fd(), true).map_err(|errno| SpawnError::Prepare {
                step: "set up stdio pipes",
                errno,
            })?;
        }
        (
            [in_r, out_w, e_w],
            Child {
                pid: 0,
                // Dropping the write end now: EOF from the start.
                stdin: req.stdin.then_some(in_w),
                stdout: out_r,
                stderr: Some(e_r),
                pty: None,
            },
        )
    };

    let mut failure = Failure::default();
    let args = ChildArgs {
        exec: &exec,
        tty: req.tty,
        fds: [
            child_fds[0].as_raw_fd(),
            child_fds[1].as_raw_fd(),
            child_fds[2].as_raw_fd(),
        ],
        failure: &mut failure,
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    // SAFETY: the child runs child_main on its own stack, shares our memory only while we are
    // suspended (CLONE_VFORK: until its execve or _exit), has its own fd table, fs and signal
    // dispositions (no CLONE_FILES/FS/SIGHAND), and touches nothing but `args`.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ChildArgs as *mut libc::c_void,
        )
    };
    if pid < 0 {
        return Err(SpawnError::Prepare {
            step: "start a process (clone)",
            errno: Errno::last(),
        });
    }
    drop(stack);
    drop(child_fds);
    // SAFETY: the child has exec'd or exited (CLONE_VFORK): nothing writes the record any more.
    let failure = unsafe { std::ptr::read_volatile(&failure) };
    if failure.step != 0 {
        return Err(SpawnError::Child {
            pid,
            step: Step::from_u8(failure.step).unwrap_or(Step::Exec),
            errno: Errno::from_raw(failure.errno),
            program: req.process.args.first().cloned().unwrap_or_default(),
            cwd: req.process.cwd.clone(),
        });
    }
    Ok(Child { pid, ..agent })
}

/// Runs in the vfork child before exec; returns only on failure. No allocation, no locks.
fn child_setup(e: &Exec, tty: bool, fds: &[RawFd; 3]) -> (Step, Errno) {
    let p = &e.prep;
    macro_rules! check {
        ($step:expr, $call:expr) => {
            if $call < 0 {
                return ($step, Errno::last());
            }
        };
    }
    // SAFETY: plain syscalls on values prepared before the clone; pointers refer to live
    // CStrings and stack structs for the duration of each call.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        check!(Step::Session, libc::setsid());
        if tty {
            check!(
                Step::ControllingTerminal,
                libc::ioctl(fds[0], libc::TIOCSCTTY, 0)
            );
        }
        for (target, fd) in fds.iter().enumerate() {
            check!(Step::Stdio, libc::dup2(*fd, target as i32));
        }
        if let Some(root) = &p.root {
            check!(Step::Chroot, libc::chroot(root.as_ptr()));
            check!(Step::Chroot, libc::chdir(c"/".as_ptr()));
        }
        for (res, lim) in &p.rlimits {
            check!(Step::Rlimit, libc::setrlimit(*res, lim));
        }
        // Raw syscalls: they change this task only (glibc's wrappers would also signal the
        // agent's other threads, were there any, and change the agent's credentials).
        let is_root = libc::geteuid() == 0;
        if is_root {
            check!(
                Step::Groups,
                libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr())
            );
        }
        if is_root || libc::getegid() != p.gid {
            check!(Step::Gid, libc::syscall(libc::SYS_setgid, p.gid));
        }
        if is_root || libc::geteuid() != p.uid {
            check!(Step::Uid, libc::syscall(libc::SYS_setuid, p.uid));
        }
        if let Some(m) = p.umask {
            libc::umask(m as libc::mode_t);
        }
        check!(Step::Chdir, libc::chdir(p.cwd.as_ptr()));
        if p.no_new_privs {
            check!(
                Step::NoNewPrivs,
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            );
        }
        // execvpe semantics: try every PATH entry; EACCES is remembered but the search goes on.
        // A PATH entry that does not hold the program is skipped with access(2), not execve:
        // an execve makes the new address space before it looks the file up, and in a UML
        // guest an address space is a host process (created, then killed, for each miss:
        // five of them for busybox's /bin/true under Docker's default PATH).
        let mut saw_eacces = false;
        let several = p.candidates.len() > 1;
        for c in &p.candidates {
            if several && libc::access(c.as_ptr(), libc::F_OK) < 0 {
                match Errno::last() {
                    Errno::ENOENT | Errno::ENOTDIR => continue,
                    // Anything else (EACCES on a directory of the path, ELOOP...): let
                    // execve say it, as execvpe would.
                    _ => {}
                }
            }
            libc::execve(c.as_ptr(), e.argv.as_ptr(), e.envp.as_ptr());
            match Errno::last() {
                Errno::ENOENT | Errno::ENOTDIR => {}
                Errno::EACCES => saw_eacces = true,
                other => return (Step::Exec, other),
            }
        }
        (
            Step::Exec,
            if saw_eacces {
                Errno::EACCES
            } else {
                Errno::ENOENT
            },
        )
    }
}

/// Encodes a raw wait status the shell way: the exit code, or 128+n for death by signal n.
/// Returns None for stop/continue reports.
pub fn exit_status(status: libc::c_int) -> Option<strata_proto::ExitStatus> {
    if libc::WIFEXITED(status) {
        Some(strata_proto::ExitStatus {
            code: libc::WEXITSTATUS(status),
            signal: None,
        })
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        Some(strata_proto::ExitStatus {
            code: 128 + sig,
            signal: Some(sig),
        })
    } else {
        None
    }
}
