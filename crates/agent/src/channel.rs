//! The byte stream to the host: a char device in the guest (a UML serial line, a virtio console
//! `/dev/hvc0` on QEMU, a vsock shim) or
//! an inherited fd (tests). Serial lines are put in raw mode so the line discipline neither
//! echoes, translates CR/LF, nor interprets XON/XOFF or ^C inside binary frames.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::termios;

/// Why the channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot open the channel device {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot put the channel {what} in raw mode: {errno}")]
    Raw { what: String, errno: Errno },
    #[error("channel fd {fd} is not usable: {errno}")]
    Fd { fd: RawFd, errno: Errno },
}

/// Opens the channel device and puts it in raw mode if it is a terminal.
pub fn open_device(path: &Path) -> Result<OwnedFd, ChannelError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| ChannelError::Open {
            path: path.display().to_string(),
            source,
        })?;
    let fd = OwnedFd::from(f);
    make_raw(&fd, &path.display().to_string())?;
    Ok(fd)
}

/// Waits until `path` exists (a device node devtmpfs creates when its driver probes), for at most
/// `limit`; returns whether it appeared. The open that follows reports a device that never did.
pub fn wait_for_device(path: &Path, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if path.exists() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Takes ownership of an inherited fd (non-PID-1 mode) and prepares it like a device.
pub fn from_fd(fd: RawFd) -> Result<OwnedFd, ChannelError> {
    // SAFETY: F_GETFD only checks that the fd is open; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(ChannelError::Fd {
            fd,
            errno: Errno::last(),
        });
    }
    crate::process::make_agent_fd(fd).map_err(|errno| ChannelError::Fd { fd, errno })?;
    // SAFETY: the fd is open (checked above) and handed to us by the parent for our exclusive use.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    make_raw(&owned, &format!("fd {fd}"))?;
    Ok(owned)
}

fn make_raw(fd: &OwnedFd, what: &str) -> Result<(), ChannelError> {
    // SAFETY: isatty only inspects the fd.
    if unsafe { libc::isatty(fd.as_raw_fd()) } != 1 {
        return Ok(());
    }
    let err = |errno| ChannelError::Raw {
        what: what.to_string(),
        errno,
    };
    let mut t = termios::tcgetattr(fd).map_err(err)?;
    termios::cfmakeraw(&mut t);
    t.input_flags &=
        !(termios::InputFlags::IXON | termios::InputFlags::IXOFF | termios::InputFlags::IXANY);
    t.control_flags &= !termios::ControlFlags::CRTSCTS;
    t.control_flags |= termios::ControlFlags::CLOCAL | termios::ControlFlags::CREAD;
    t.local_flags &=
        !(termios::LocalFlags::ECHO | termios::LocalFlags::ICANON | termios::LocalFlags::ISIG);
    t.control_chars[termios::SpecialCharacterIndices::VMIN as usize] = 1;
    t.control_chars[termios::SpecialCharacterIndices::VTIME as usize] = 0;
    termios::tcsetattr(fd, termios::SetArg::TCSANOW, &t).map_err(err)?;
    Ok(())
}
