//! `-t`: raw mode on the host terminal (restored on exit, even on error), the relay between it
//! and the workload's pty with window-size changes, and a host pty for backends that cannot
//! allocate one themselves.
//!
//! Containers get their pty from the runtime, inside the container (runc's console-socket
//! protocol, `Backend::start_with_terminal`), so it is the workload's controlling terminal and
//! /dev/pts/0 there. The host-pty fallback passes a slave allocated here as the workload's
//! stdio and bind-mounts it at /dev/console so `tty` finds a name for it; the workload then has
//! no controlling terminal (^C arrives as a byte, not as SIGINT).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use anyhow::Context;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::logs::{LogWriter, Stream};

/// A host pty pair.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// The slave's host path (/dev/pts/N).
    pub slave_path: PathBuf,
}

/// Allocates a pty sized like the host terminal on `size_from` (if it is one).
pub fn open(size_from: BorrowedFd) -> anyhow::Result<Pty> {
    let ws = window_size(size_from);
    let r = nix::pty::openpty(ws.as_ref(), None).context("allocate a pty (openpty)")?;
    let slave_path = std::fs::read_link(format!("/proc/self/fd/{}", r.slave.as_raw_fd()))
        .context("find the pty slave's path")?;
    for fd in [&r.master, &r.slave] {
        // SAFETY: setting FD_CLOEXEC on fds we own: the workload gets the slave through dup2
        // onto its stdio, never by inheritance of these numbers.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(Pty {
        master: r.master,
        slave: r.slave,
        slave_path,
    })
}

fn window_size(fd: BorrowedFd) -> Option<nix::pty::Winsize> {
    let mut ws: libc::winsize = unsafe_zeroed_winsize();
    // SAFETY: TIOCGWINSZ fills a winsize; failure (not a terminal) is checked.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some(ws)
}

fn unsafe_zeroed_winsize() -> libc::winsize {
    libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// The size (rows, columns) of the terminal on `fd`, if it is one with a size.
pub fn size(fd: BorrowedFd) -> Option<(u16, u16)> {
    window_size(fd).map(|w| (w.ws_row, w.ws_col))
}

/// Copies the host terminal's size to the pty (SIGWINCH).
pub fn copy_size(from: BorrowedFd, to: BorrowedFd) {
    if let Some(ws) = window_size(from) {
        // SAFETY: TIOCSWINSZ with a valid winsize; errors are harmless (the pty is gone).
        unsafe { libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// Puts a terminal in raw mode until dropped.
pub struct RawMode {
    fd: i32,
    saved: Termios,
}

impl RawMode {
    /// Raw mode on `fd` if it is a terminal; None otherwise.
    pub fn enable(fd: BorrowedFd) -> Option<RawMode> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: fd is stdin, open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// Relays between the host stdio and the pty master until `pid` exits; forwards the signals
/// in `signals` (blocked by the caller) to it and SIGWINCH as a resize; copies the output to
/// `log` if given. Returns the exit code.
pub fn relay(
    master: OwnedFd,
    pid: i32,
    forward_stdin: bool,
    signals: &SigSet,
    mut log: Option<&mut LogWriter>,
) -> i32 {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let sfd = match SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(s) => s,
        Err(_) => return wait_blocking(pid),
    };
    let mut stdin_open = forward_stdin;
    let mut master_open = true;
    let mut code: Option<i32> = None;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if !master_open || (code.is_some() && !drain_ready(master.as_fd())) {
            break;
        }
        let mut fds = vec![
            PollFd::new(master.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        // Once the workload exited, only drain what is left in the pty.
        let timeout = if code.is_some() {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) => break,
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
        let rev = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        let (m, s) = (rev(0), rev(1));
        let i = if stdin_open {
            rev(2)
        } else {
            PollFlags::empty()
        };
        if m.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(0) | Err(nix::Error::EIO) => master_open = false,
                Ok(n) => {
                    write_all(stdout.as_fd(), &buf[..n]);
                    if let Some(l) = log.as_deref_mut() {
                        l.write(Stream::Stdout, &buf[..n]);
                    }
                }
                Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
                Err(_) => master_open = false,
            }
        }
        if i.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    // End of input: send the terminal's EOF character, like a user typing ^D.
                    write_all(master.as_fd(), &[4]);
                }
                Ok(n) => write_all(master.as_fd(), &buf[..n]),
            }
        }
        if s.contains(PollFlags::POLLIN) {
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {
                        if let Some(c) = reap(pid) {
                            code = Some(c);
                        }
                    }
                    Ok(Signal::SIGWINCH) => copy_size(stdin.as_fd(), master.as_fd()),
                    Ok(sig) => {
                        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
                    }
                    Err(_) => {}
                }
            }
        }
    }
    // Every slave fd closed before SIGCHLD arrived: the workload is exiting; wait for it.
    code.unwrap_or_else(|| wait_blocking(pid))
}

fn drain_ready(fd: BorrowedFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

fn write_all(fd: BorrowedFd, mut b: &[u8]) {
    while !b.is_empty() {
        match nix::unistd::write(fd, b) {
            Ok(n) => b = &b[n..],
            Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => {}
            Err(_) => return,
        }
    }
}

/// Reaps `pid` if it exited; its exit code (128 + signal when killed).
pub fn reap(pid: i32) -> Option<i32> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => return Some(c),
            Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => return Some(128 + s as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn wait_blocking(pid: i32) -> i32 {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Err(nix::Error::EINTR) => continue,
            Ok(_) => continue,
            Err(_) => return 255,
        }
    }
}
