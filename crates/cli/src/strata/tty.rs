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
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::logs::{LogWriter, Stream};
use super::relay;

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
    log: Option<&mut LogWriter>,
) -> i32 {
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let mut front = Terminal {
        master: master.as_fd(),
        host: stdin.as_fd(),
        stdin: forward_stdin.then(|| stdin.as_fd()),
        stdout: stdout.as_fd(),
        signals: relay::Signals::new(pid, signals),
    };
    // The master stays ours (the front end writes input and sizes to it): the relay reads it
    // borrowed, and it closes when this returns.
    relay::run(vec![(master.as_fd(), Stream::Stdout)], log, &mut front);
    front.signals.finish()
}

/// The relay's front end for `-t`: our terminal ↔ the pty master, signals, window size.
struct Terminal<'a> {
    master: BorrowedFd<'a>,
    /// Our terminal, whose size the pty follows.
    host: BorrowedFd<'a>,
    /// Our stdin while it is forwarded and open.
    stdin: Option<BorrowedFd<'a>>,
    stdout: BorrowedFd<'a>,
    signals: relay::Signals<'a>,
}

impl relay::Front for Terminal<'_> {
    fn poll_fds<'f>(&'f self, fds: &mut Vec<PollFd<'f>>) {
        fds.extend(self.signals.poll_fd());
        fds.extend(self.stdin.map(|i| PollFd::new(i, PollFlags::POLLIN)));
    }

    fn output(&mut self, _stream: Stream, data: &[u8]) -> bool {
        // Our terminal gone is no reason to stop reading: the workload would block on a full
        // pty.
        relay::write_all(self.stdout, data);
        true
    }

    fn handle(&mut self, revents: &[PollFlags], buf: &mut [u8]) {
        let n_sig = usize::from(self.signals.polled());
        if let (Some(i), Some(r)) = (self.stdin, revents.get(n_sig)) {
            if r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                match nix::unistd::read(i.as_raw_fd(), buf) {
                    Ok(0) | Err(_) => {
                        self.stdin = None;
                        // End of input: send the terminal's EOF character, like a user typing ^D.
                        relay::write_all(self.master, &[4]);
                    }
                    Ok(n) => {
                        relay::write_all(self.master, &buf[..n]);
                    }
                }
            }
        }
        if let (1, Some(r)) = (n_sig, revents.first()) {
            self.signals.handle(*r, Some((self.host, self.master)));
        }
    }

    fn linger(&self) -> Option<PollTimeout> {
        // Once the workload exited, only drain what is already in the pty.
        self.signals.exited().then_some(PollTimeout::ZERO)
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
