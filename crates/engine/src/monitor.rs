//! The per-container monitor of detached containers (what conmon is to podman): a fork of
//! `strata` in its own session that starts the workload as its child, holds its stdio, writes
//! its output to the log file as JSON lines, serves `strata attach` clients (attach_server.rs), reaps
//! it and records the exit code (or removes an `--rm` container). No re-exec: forking the
//! already-loaded binary is cheaper.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{bail, Context};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::unistd::ForkResult;

use crate::attach_server;
use crate::backend::Stdio;
use crate::container_log::{LogWriter, Stream};
use crate::paths::Paths;
use crate::records::{self, Containers, Record, State};
use crate::{config_json, isolation, network, pty, reap, relay, removal};

/// Starts `rec` under a new monitor; returns once the workload runs (or failed to start, with
/// the reason).
pub fn spawn(paths: &Paths, containers: &Containers, rec: Record) -> anyhow::Result<()> {
    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create status pipe")?;
    // SAFETY: strata is single-threaded; the child only runs the monitor and _exits.
    match unsafe { nix::unistd::fork() }.context("fork the monitor")? {
        ForkResult::Child => {
            drop(status_r);
            let code = monitor(paths, containers, rec, status_w);
            // SAFETY: _exit in the forked child; nothing of the parent must run at exit.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { .. } => {
            drop(status_w);
            let mut msg = String::new();
            let _ = std::fs::File::from(status_r).read_to_string(&mut msg);
            match crate::start_warnings::ok_warnings(&msg) {
                Some(warnings) => {
                    crate::start_warnings::say(warnings);
                    Ok(())
                }
                None if msg.is_empty() => {
                    bail!("the container monitor died before starting the container")
                }
                None => bail!("{}", msg.trim_start_matches("err ")),
            }
        }
    }
}

fn monitor(paths: &Paths, containers: &Containers, mut rec: Record, status: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    strata_container::kill_point::hit("monitor:forked");
    let mut status = std::fs::File::from(status);
    // Our stdio belonged to the `strata` that started us: let it go (the caller may be waiting
    // for EOF on a pipe), so nothing we or the workload print reaches it.
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        let _ = write!(status, "err open /dev/null");
        return 1;
    };
    for fd in 0..=2 {
        // SAFETY: dup2 of a live fd onto our stdio numbers.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    let dir = containers.dir(&rec.id);
    let fail = |rec: &mut Record, status: &mut std::fs::File, code: i32, msg: &str| {
        let _ = write!(status, "err {msg}");
        removal::settle(paths, containers, rec, code);
        1
    };
    let backend = match isolation::backend(&rec.isolation, &paths.root) {
        Ok(b) => b,
        Err(e) => return fail(&mut rec, &mut status, 125, &format!("{e:#}")),
    };
    if let Err(e) = network::up(paths, &rec.id, &rec.name, &dir) {
        return fail(&mut rec, &mut status, 125, &format!("{e:#}"));
    }
    let mut log = match LogWriter::open(&containers.log_path(&rec.id)) {
        Ok(f) => f,
        Err(e) => {
            return fail(
                &mut rec,
                &mut status,
                125,
                &format!("open the log file: {e}"),
            )
        }
    };
    // Stdout and stderr: two pipes (or one pty with -t) that we read.
    let mut sources: Vec<(OwnedFd, Stream)> = Vec::new();
    let mut held_stdin: Option<OwnedFd> = None;
    let started;
    let inner = if rec.tty {
        match backend.start_with_terminal(&rec.id, &dir) {
            Ok(t) => t,
            Err(e) => return fail(&mut rec, &mut status, e.code, &e.message),
        }
    } else {
        None
    };
    if let Some((pid, master)) = inner {
        started = Ok(pid);
        sources.push((master, Stream::Stdout));
    } else if rec.tty {
        let pty = match pty::open(null.as_fd()).and_then(|p| {
            config_json::set_console(&dir, Some(&p.slave_path))?;
            Ok(p)
        }) {
            Ok(p) => p,
            Err(e) => return fail(&mut rec, &mut status, 125, &format!("{e:#}")),
        };
        let s = pty.slave.as_fd();
        started = backend.start(
            &rec.id,
            &dir,
            Stdio {
                stdin: s,
                stdout: s,
                stderr: s,
            },
        );
        drop(pty.slave);
        sources.push((pty.master, Stream::Stdout));
    } else {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
        let pipes = pipe()
            .and_then(|o| pipe().map(|e| (o, e)))
            .and_then(|(o, e)| {
                // -i: the read end is the workload's stdin, the write end stays with us until it
                // exits, so `cat` or `sh` wait for input instead of seeing EOF.
                let i = if rec.interactive { Some(pipe()?) } else { None };
                Ok((o, e, i))
            });
        let ((out_r, out_w), (err_r, err_w), stdin_pipe) = match pipes {
            Ok(p) => p,
            Err(e) => return fail(&mut rec, &mut status, 125, &format!("create pipes: {e}")),
        };
        started = backend.start(
            &rec.id,
            &dir,
            Stdio {
                stdin: stdin_pipe
                    .as_ref()
                    .map(|(r, _)| r.as_fd())
                    .unwrap_or(null.as_fd()),
                stdout: out_w.as_fd(),
                stderr: err_w.as_fd(),
            },
        );
        drop((out_w, err_w));
        held_stdin = stdin_pipe.map(|(_, w)| w);
        sources.push((out_r, Stream::Stdout));
        sources.push((err_r, Stream::Stderr));
    }
    let pid = match started {
        Ok(p) => p,
        Err(e) => return fail(&mut rec, &mut status, e.code, &e.message),
    };
    strata_container::kill_point::hit("monitor:started");
    // Attach clients write the workload's stdin (-i: the pipe we hold, or the pty) and size
    // its pty (-t). Without the socket the container still runs; only attach is missing.
    let server = match attach_server::Server::bind(&dir) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no attach socket");
            None
        }
    };
    let pty_master = if rec.tty {
        sources.first().and_then(|(f, _)| f.try_clone().ok())
    } else {
        None
    };
    let stdin_target = match (rec.interactive, rec.tty) {
        (false, _) => None,
        (true, false) => held_stdin.take(),
        (true, true) => pty_master.as_ref().and_then(|m| m.try_clone().ok()),
    };
    rec.state = State::Running;
    rec.pid = Some(pid);
    rec.monitor_pid = Some(std::process::id() as i32);
    rec.started = Some(records::now());
    rec.exit_code = None;
    rec.finished = None;
    let _ = containers.save(&rec);
    // What the start warned of (the VM keeper's report, said in this process) goes to the
    // waiting `strata`: our own stderr is /dev/null.
    let _ = write!(
        status,
        "{}",
        crate::start_warnings::ok_status(&crate::start_warnings::take())
    );
    drop(status);
    strata_container::kill_point::hit("monitor:running");

    let server = serve(sources, &mut log, server, stdin_target, pty_master);
    drop(log);
    let code = reap::wait(pid);
    strata_container::kill_point::hit("monitor:exited");
    drop(held_stdin);
    if let Some(s) = server {
        s.finish(code);
    }
    backend.delete(&rec.id);
    removal::settle(paths, containers, &mut rec, code);
    0
}

/// Until every source reaches EOF (the workload and everything it started exited: the pid
/// namespace ends with its init): output to the log and to attached clients, their input to
/// the workload's stdin, their window size to its pty.
fn serve(
    sources: Vec<(OwnedFd, Stream)>,
    log: &mut LogWriter,
    server: Option<attach_server::Server>,
    stdin: Option<OwnedFd>,
    pty: Option<OwnedFd>,
) -> Option<attach_server::Server> {
    let mut front = Monitor {
        server,
        stdin: stdin.filter(|f| set_nonblocking(f.as_fd())),
        pending: Vec::new(),
        pty,
    };
    relay::run(sources, Some(log), &mut front);
    if let Some(s) = &front.server {
        s.close();
    }
    front.server
}

/// The relay's front end of the monitor: attach clients, their input and window sizes.
struct Monitor {
    server: Option<attach_server::Server>,
    /// The workload's stdin (non-blocking) while it takes input.
    stdin: Option<OwnedFd>,
    /// Input from clients the workload has not read yet.
    pending: Vec<u8>,
    /// The workload's pty (-t), for window sizes.
    pty: Option<OwnedFd>,
}

impl Monitor {
    /// Whether `poll_fds` adds the workload's stdin (last).
    fn polls_stdin(&self) -> bool {
        self.stdin.is_some() && !self.pending.is_empty()
    }
}

impl relay::Front for Monitor {
    fn poll_fds<'f>(&'f self, fds: &mut Vec<PollFd<'f>>) {
        if let Some(s) = &self.server {
            // Input waits while the workload does not read what it has (back-pressure).
            fds.extend(s.poll_fds(self.pending.len() < 1 << 20));
        }
        if let (Some(t), true) = (&self.stdin, self.polls_stdin()) {
            fds.push(PollFd::new(t.as_fd(), PollFlags::POLLOUT));
        }
    }

    fn output(&mut self, stream: Stream, data: &[u8]) -> bool {
        if let Some(s) = &mut self.server {
            s.broadcast(stream, data);
        }
        true
    }

    fn handle(&mut self, revents: &[PollFlags], _buf: &mut [u8]) {
        let n_srv = revents.len() - usize::from(self.polls_stdin());
        if let Some(s) = &mut self.server {
            let mut input = attach_server::Input::default();
            s.handle(&revents[..n_srv], &mut input);
            if self.stdin.is_some() {
                self.pending.extend_from_slice(&input.stdin);
            }
            if let (Some((rows, cols)), Some(p)) = (input.resize, &self.pty) {
                pty::set_size(p.as_fd(), rows, cols);
            }
        }
        if let Some(t) = &self.stdin {
            if revents.get(n_srv).is_some_and(|r| !r.is_empty()) || !self.pending.is_empty() {
                match nix::unistd::write(t.as_fd(), &self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
                    // The workload closed its stdin: what clients type goes nowhere.
                    Err(_) => {
                        self.pending.clear();
                        self.stdin = None;
                    }
                }
            }
        }
    }

    fn linger(&self) -> Option<PollTimeout> {
        // The workload is reaped after the relay: every source's EOF ends it.
        None
    }
}

fn set_nonblocking(fd: std::os::fd::BorrowedFd) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)
        .and_then(|f| {
            fcntl(
                fd.as_raw_fd(),
                FcntlArg::F_SETFL(OFlag::from_bits_truncate(f) | OFlag::O_NONBLOCK),
            )
        })
        .is_ok()
}
