//! Starting a workload process: fork, set up identity/limits/rootfs/cwd in the child, execvpe.
//!
//! The agent is single-threaded, so the child may run ordinary code between fork and exec. A
//! close-on-exec error pipe reports which step failed and its errno, so the host gets the same
//! answers Docker gives: 127 for a missing program, 126 for one that cannot be executed.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
    /// Write end of stdin (a pipe, or a dup of the pty master).
    pub stdin: OwnedFd,
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
    let prep = prepare(req);
    let (err_r, err_w) = pipe()?;
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
                stdin: m1,
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
                stdin: in_w,
                stdout: out_r,
                stderr: Some(e_r),
                pty: None,
            },
        )
    };

    // SAFETY: the agent is single-threaded, so the child inherits no locks held by other threads
    // and may run ordinary code until exec or _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::Prepare {
            step: "fork",
            errno: Errno::last(),
        });
    }
    if pid == 0 {
        let (step, errno) = child_setup(&prep, req.tty, &child_fds);
        let mut rec = [0u8; 5];
        rec[0] = step as u8;
        rec[1..].copy_from_slice(&(errno as i32).to_le_bytes());
        // SAFETY: writing a stack buffer to our own pipe, then leaving without running any
        // destructors of the agent's state.
        unsafe {
            libc::write(err_w.as_raw_fd(), rec.as_ptr().cast(), rec.len());
            libc::_exit(127);
        }
    }
    drop(err_w);
    drop(child_fds);
    let mut rec = Vec::with_capacity(5);
    // SAFETY: err_r is an fd we own; File takes ownership and closes it.
    let mut f = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(err_r)) };
    let _ = f.read_to_end(&mut rec);
    if rec.len() == 5 {
        let step = Step::from_u8(rec[0]).unwrap_or(Step::Exec);
        let errno = Errno::from_raw(i32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]));
        return Err(SpawnError::Child {
            pid,
            step,
            errno,
            program: req.process.args.first().cloned().unwrap_or_default(),
            cwd: req.process.cwd.clone(),
        });
    }
    Ok(Child { pid, ..agent })
}

/// Runs in the child between fork and exec; returns only on failure.
fn child_setup(p: &Prepared, tty: bool, fds: &[OwnedFd; 3]) -> (Step, Errno) {
    macro_rules! check {
        ($step:expr, $call:expr) => {
            if $call < 0 {
                return ($step, Errno::last());
            }
        };
    }
    // SAFETY: plain syscalls on values prepared before fork; pointers refer to live CStrings
    // and stack structs for the duration of each call.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        check!(Step::Session, libc::setsid());
        if tty {
            check!(
                Step::ControllingTerminal,
                libc::ioctl(fds[0].as_raw_fd(), libc::TIOCSCTTY, 0)
            );
        }
        for (target, fd) in fds.iter().enumerate() {
            check!(Step::Stdio, libc::dup2(fd.as_raw_fd(), target as i32));
        }
        if let Some(root) = &p.root {
            check!(Step::Chroot, libc::chroot(root.as_ptr()));
            check!(Step::Chroot, libc::chdir(c"/".as_ptr()));
        }
        for (res, lim) in &p.rlimits {
            check!(Step::Rlimit, libc::setrlimit(*res, lim));
        }
        let is_root = libc::geteuid() == 0;
        if is_root {
            check!(
                Step::Groups,
                libc::setgroups(p.groups.len(), p.groups.as_ptr())
            );
        }
        if is_root || libc::getegid() != p.gid {
            check!(Step::Gid, libc::setgid(p.gid));
        }
        if is_root || libc::geteuid() != p.uid {
            check!(Step::Uid, libc::setuid(p.uid));
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
        let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // execvpe semantics: try every PATH entry; EACCES is remembered but the search goes on.
        let mut saw_eacces = false;
        for c in &p.candidates {
            libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr());
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
