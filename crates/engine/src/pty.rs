//! Terminals for `-t`: raw mode on the host terminal (restored on exit, even on error), window
//! sizes, and a host pty for backends that cannot allocate one themselves (the relay between
//! the host terminal and the workload's pty is terminal_relay.rs).
//!
//! Containers get their pty from the runtime, inside the container (runc's console-socket
//! protocol, `Backend::start_with_terminal`), so it is the workload's controlling terminal and
//! /dev/pts/0 there. The host-pty fallback passes a slave allocated here as the workload's
//! stdio and bind-mounts it at /dev/console so `tty` finds a name for it; the workload then has
//! no controlling terminal (^C arrives as a byte, not as SIGINT).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use anyhow::Context;
use nix::sys::termios::{self, SetArg, Termios};

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

/// Sets the window size of a pty (an attach client's resize).
pub fn set_size(pty: BorrowedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on a pty master we hold; failure is harmless.
    unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}
