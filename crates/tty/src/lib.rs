//! strata-tty: the window size and raw mode of terminals, for both ends of a workload's
//! terminal — the host (strata-engine: `strata run -t`, the monitor's attach clients, the VM
//! keeper's relay) and the guest (strata-agent applying the host's `Resize` to the guest pty).
//! Small and std/libc only, so the static agent stays small.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::sys::termios::{self, SetArg, Termios};

/// The size (rows, columns) of the terminal on `fd`, if it is one with a size.
pub fn size(fd: BorrowedFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize we pass; failure (not a terminal) is checked.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sets the window size of the terminal (a pty) on `fd`; best effort: a pty that is gone has
/// no size to set.
pub fn set_size(fd: BorrowedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we pass; the result is deliberately ignored.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Gives the terminal on `to` the size of the one on `from` (SIGWINCH), if that has one.
pub fn copy_size(from: BorrowedFd, to: BorrowedFd) {
    if let Some((rows, cols)) = size(from) {
        set_size(to, rows, cols);
    }
}

/// A terminal in raw mode until dropped, when its settings are restored.
pub struct RawMode {
    fd: RawFd,
    saved: Termios,
    restore: SetArg,
}

impl RawMode {
    /// Raw mode on `fd` if it is a terminal (None otherwise); restored once output written
    /// before the drop has drained (our own terminal, `strata run -t`).
    pub fn enable(fd: BorrowedFd) -> Option<RawMode> {
        Self::with_restore(fd, SetArg::TCSADRAIN)
    }

    /// As [`RawMode::enable`], restored at once on drop: for a pty whose reader may already
    /// be gone (the VM keeper's side of a relayed terminal), where draining could wait forever.
    pub fn enable_restoring_now(fd: BorrowedFd) -> Option<RawMode> {
        Self::with_restore(fd, SetArg::TCSANOW)
    }

    fn with_restore(fd: BorrowedFd, restore: SetArg) -> Option<RawMode> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode {
            fd: fd.as_raw_fd(),
            saved,
            restore,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: the caller keeps the terminal open while the guard lives (stdin, or the pty
        // the relay owns); a closed fd only makes tcsetattr fail.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = termios::tcsetattr(fd, self.restore, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn sizes_are_set_read_and_copied_on_real_ptys() {
        let a = nix::pty::openpty(None, None).unwrap();
        let b = nix::pty::openpty(None, None).unwrap();
        set_size(a.master.as_fd(), 40, 132);
        assert_eq!(size(a.slave.as_fd()), Some((40, 132)));
        copy_size(a.slave.as_fd(), b.master.as_fd());
        assert_eq!(size(b.slave.as_fd()), Some((40, 132)));
        // Not a terminal: no size, and setting one is harmless.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(size(r.as_fd()), None);
        set_size(r.as_fd(), 1, 1);
    }

    #[test]
    fn raw_mode_is_restored_on_drop() {
        let p = nix::pty::openpty(None, None).unwrap();
        let fd = p.slave.as_fd();
        let canonical = |fd| {
            termios::tcgetattr(fd)
                .unwrap()
                .local_flags
                .contains(termios::LocalFlags::ICANON)
        };
        assert!(canonical(fd));
        let enables: [fn(BorrowedFd) -> Option<RawMode>; 2] =
            [RawMode::enable, RawMode::enable_restoring_now];
        for enable in enables {
            let raw = enable(fd);
            assert!(raw.is_some());
            assert!(!canonical(fd));
            drop(raw);
            assert!(canonical(fd));
        }
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(RawMode::enable(r.as_fd()).is_none());
    }
}
