//! Terminals for `-t`: a host pty for backends that cannot allocate one themselves, and (from
//! strata-tty, shared with the guest agent) raw mode on the host terminal and window sizes. The
//! relay between the host terminal and the workload's pty is terminal_relay.rs.
//!
//! Containers get their pty from the runtime, inside the container (runc's console-socket
//! protocol, `Backend::start_with_terminal`), so it is the workload's controlling terminal and
//! /dev/pts/0 there. The host-pty fallback passes a slave allocated here as the workload's
//! stdio and bind-mounts it at /dev/console so `tty` finds a name for it; the workload then has
//! no controlling terminal (^C arrives as a byte, not as SIGINT).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use anyhow::Context;
pub use strata_tty::{copy_size, set_size, size, RawMode};

/// A host pty pair.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// The slave's host path (/dev/pts/N).
    pub slave_path: PathBuf,
}

/// Allocates a pty sized like the host terminal on `size_from` (if it is one).
pub fn open(size_from: BorrowedFd) -> anyhow::Result<Pty> {
    let ws = size(size_from).map(|(rows, cols)| nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
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
