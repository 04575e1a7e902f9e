//! Terminals: `process.terminal: true` with `--console-socket`, for the container init and for
//! `exec -t`.
//!
//! The protocol is runc's, which containerd's shim and conmon implement: the runtime connects to
//! the unix socket given by `--console-socket` (before entering the container), the container
//! process allocates a pty *inside* the container's devpts (so /dev/pts/N names the right
//! device there), sends the pty master over the socket as one `SCM_RIGHTS` message whose payload
//! is the master's name ("/dev/ptmx"), then makes the pty slave its controlling terminal and
//! stdin/stdout/stderr.
//!
//! The slave is opened from the master with `TIOCGPTPEER`, never by path, so a hostile
//! /dev/pts in the rootfs cannot substitute another file.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use oci_spec::runtime::Process;

/// What failed while setting up a terminal.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Connecting to `--console-socket` failed.
    #[error("console socket {path}: connect failed: {source}; is the engine listening there?")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A pty operation failed.
    #[error("console: {step} failed: {source}")]
    Pty {
        /// The step (open /dev/ptmx, unlockpt, TIOCGPTPEER, ...).
        step: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Sending or receiving the master fd failed.
    #[error("console socket: {step} failed: {source}")]
    Transfer {
        /// The step.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
    /// process.terminal and --console-socket do not fit together.
    #[error("{0}")]
    Usage(&'static str),
    /// The peer sent something other than one fd.
    #[error("console socket: expected one file descriptor with SCM_RIGHTS, got {0}")]
    Protocol(String),
}

/// A freshly allocated pseudo-terminal pair.
#[derive(Debug)]
pub struct Pty {
    /// The master side, sent to the engine.
    pub master: OwnedFd,
    /// The slave side, the container process's terminal.
    pub slave: OwnedFd,
}

/// The payload runc sends with the master fd; receivers log it and ignore it.
pub const MASTER_NAME: &str = "/dev/ptmx";

/// Connects to the engine's `--console-socket` (done by the runtime before it enters the
/// container, so the path is resolved on the host).
pub fn connect_socket(path: &Path) -> Result<UnixStream, ConsoleError> {
    UnixStream::connect(path).map_err(|source| ConsoleError::Connect {
        path: path.to_path_buf(),
        source,
    })
}

fn pty_err(step: &'static str) -> impl FnOnce(io::Error) -> ConsoleError {
    move |source| ConsoleError::Pty { step, source }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Allocates a pty from `ptmx` (normally "/dev/ptmx", opened after pivot_root so it is the
/// container's devpts instance). Output post-processing (ONLCR) is switched off, as runc does,
/// so the engine receives the bytes the process wrote.
pub fn open_pty(ptmx: &Path) -> Result<Pty, ConsoleError> {
    let path = std::ffi::CString::new(ptmx.as_os_str().as_encoded_bytes())
        .map_err(|_| pty_err("open ptmx")(io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: open(2) with a valid C string; the result is checked.
    let fd = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })
    .map_err(pty_err("open /dev/ptmx"))?;
    // SAFETY: a new fd we own.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })
        .map_err(pty_err("unlockpt"))?;
    // SAFETY: TIOCGPTPEER returns a new fd for the slave of this master.
    let sfd = cvt(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })
    .map_err(pty_err("TIOCGPTPEER"))?;
    // SAFETY: a new fd we own.
    let slave = unsafe { OwnedFd::from_raw_fd(sfd) };
    clear_onlcr(slave.as_fd()).map_err(pty_err("clear ONLCR"))?;
    Ok(Pty { master, slave })
}

fn clear_onlcr(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    cvt(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) })?;
    t.c_oflag &= !libc::ONLCR;
    // SAFETY: valid fd and pointer.
    cvt(unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) })?;
    Ok(())
}

/// Sets the terminal size (`process.consoleSize`).
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> Result<(), ConsoleError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ takes a pointer to a winsize.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) })
        .map_err(pty_err("TIOCSWINSZ"))?;
    Ok(())
}

/// Sends the master over the console socket exactly as runc does: payload "/dev/ptmx", one fd in
/// an SCM_RIGHTS control message.
pub fn send_master(socket: BorrowedFd<'_>, master: BorrowedFd<'_>) -> Result<(), ConsoleError> {
    // Built by hand on the stack (no allocation): this runs in a freshly cloned child.
    const FD_LEN: u32 = std::mem::size_of::<RawFd>() as u32;
    #[repr(C, align(8))]
    struct Control([u8; 64]);
    let mut control = Control([0; 64]);
    let payload = MASTER_NAME.as_bytes();
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(FD_LEN) } as _;
    // SAFETY: the control buffer is large enough and aligned for one cmsghdr carrying one fd.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(FD_LEN) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), master.as_raw_fd());
    }
    loop {
        // SAFETY: msg is fully initialised above.
        let rc = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(ConsoleError::Transfer {
                step: "sendmsg",
                source: e,
            });
        }
    }
}

/// Makes `slave` the controlling terminal and stdin/stdout/stderr of the calling process, which
/// must not be a session leader yet (the container init, or the process `exec -t` starts).
/// `owner` chowns the slave to the container user, like runc, so the workload can use it.
pub fn set_controlling_terminal(
    slave: OwnedFd,
    owner: Option<(u32, u32)>,
) -> Result<(), ConsoleError> {
    // SAFETY: setsid has no arguments; EPERM means we already lead a session, which is fine.
    if unsafe { libc::setsid() } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(pty_err("setsid")(e));
        }
    }
    if let Some((uid, gid)) = owner {
        // SAFETY: fchown on an fd we own.
        cvt(unsafe { libc::fchown(slave.as_raw_fd(), uid, gid) })
            .map_err(pty_err("chown the pty slave"))?;
    }
    // SAFETY: TIOCSCTTY with arg 0: acquire the terminal only if it has no session.
    cvt(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) })
        .map_err(pty_err("TIOCSCTTY"))?;
    for target in 0..=2 {
        // SAFETY: dup2 onto the stdio fds; they are replaced atomically.
        cvt(unsafe { libc::dup2(slave.as_raw_fd(), target) })
            .map_err(pty_err("dup2 the pty slave onto stdio"))?;
    }
    // `slave` is dropped (closed) here; 0, 1 and 2 keep the terminal open.
    Ok(())
}

/// The whole container-side sequence: allocate the pty from `ptmx`, send the master over
/// `socket`, make the slave the controlling terminal and stdio. The master is closed afterwards:
/// the engine owns it now.
pub fn setup_console(
    socket: BorrowedFd<'_>,
    ptmx: &Path,
    size: Option<(u16, u16)>,
    owner: Option<(u32, u32)>,
) -> Result<(), ConsoleError> {
    let pty = open_pty(ptmx)?;
    if let Some((rows, cols)) = size {
        set_window_size(pty.slave.as_fd(), rows, cols)?;
    }
    send_master(socket, pty.master.as_fd())?;
    drop(pty.master);
    set_controlling_terminal(pty.slave, owner)
}

/// First half, before the container's mounts (the socket path is a host path): checks that
/// `process.terminal` and `--console-socket` fit together, as runc does, and connects.
/// `detached` is true for `create` (nobody is attached to the runtime's own stdio).
pub fn connect_for(
    process: &Process,
    socket: Option<&Path>,
    detached: bool,
) -> Result<Option<UnixStream>, ConsoleError> {
    let terminal = process.terminal().unwrap_or(false);
    match (terminal, socket) {
        (true, Some(path)) => connect_socket(path).map(Some),
        (true, None) if detached => Err(ConsoleError::Usage(
            "process.terminal is true but no --console-socket was given: cannot allocate a terminal for a detached container",
        )),
        // Foreground without a socket: the process keeps the runtime's stdio.
        (true, None) => Ok(None),
        (false, Some(_)) => Err(ConsoleError::Usage(
            "--console-socket was given but process.terminal is false; set terminal or drop the socket",
        )),
        (false, None) => Ok(None),
    }
}

/// Second half, inside the container (after pivot_root, so /dev/ptmx is the container's
/// devpts): allocate the pty, hand the master to the engine, take the slave as the controlling
/// terminal and stdio, owned by the process user.
pub fn attach(socket: Option<UnixStream>, process: &Process) -> Result<(), ConsoleError> {
    match socket {
        Some(socket) => attach_fd(socket.as_fd(), process),
        None => Ok(()),
    }
}

/// [`attach`] over an already connected socket fd (`exec -t`: the runtime connected it before
/// the process joined the container's mount namespace).
pub fn attach_fd(socket: BorrowedFd<'_>, process: &Process) -> Result<(), ConsoleError> {
    let size = process
        .console_size()
        .as_ref()
        .map(|b| (b.height() as u16, b.width() as u16));
    let owner = Some((process.user().uid(), process.user().gid()));
    setup_console(socket, Path::new("/dev/ptmx"), size, owner)
}

/// Receives a master fd the way containerd and conmon do: one message, a name, one fd.
/// Used by tests and by `strata` when it is its own engine.
pub fn receive_master(stream: &UnixStream) -> Result<(OwnedFd, String), ConsoleError> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| ConsoleError::Transfer {
        step: "recvmsg",
        source: e.into(),
    })?;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(ConsoleError::Protocol("a truncated control message".into()));
    }
    let mut fds = Vec::new();
    for c in msg
        .cmsgs()
        .map_err(|e| ConsoleError::Protocol(format!("unreadable control data: {e}")))?
    {
        if let ControlMessageOwned::ScmRights(r) = c {
            fds.extend(r);
        }
    }
    let n = msg.bytes;
    // SAFETY: every fd received with SCM_RIGHTS is new in this process and owned by us.
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if owned.len() != 1 {
        return Err(ConsoleError::Protocol(format!("{} fds", owned.len())));
    }
    let text = String::from_utf8_lossy(&name[..n]).into_owned();
    Ok((owned.remove(0), text))
}

/// Accepts one connection on `listener` and receives the master from it.
pub fn accept_master(listener: &UnixListener) -> Result<(OwnedFd, String), ConsoleError> {
    let (stream, _) = listener.accept().map_err(|source| ConsoleError::Transfer {
        step: "accept",
        source,
    })?;
    receive_master(&stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_master_travels_over_the_socket_and_talks_to_the_slave() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("console.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let client = connect_socket(&sock).unwrap();
        let pty = open_pty(Path::new("/dev/ptmx")).unwrap();
        send_master(client.as_fd(), pty.master.as_fd()).unwrap();
        drop(pty.master);
        let (master, name) = accept_master(&listener).unwrap();
        assert_eq!(name, MASTER_NAME);
        let mut slave = std::fs::File::from(pty.slave);
        slave.write_all(b"hello\n").unwrap();
        let mut m = std::fs::File::from(master);
        let mut buf = [0u8; 16];
        let n = m.read(&mut buf).unwrap();
        // ONLCR is off: "\n" arrives as "\n", not "\r\n".
        assert_eq!(&buf[..n], b"hello\n");
    }

    #[test]
    fn a_child_gets_the_pty_as_controlling_terminal_and_stdio() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("console.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let client = connect_socket(&sock).unwrap();
        // Allocated before fork: the child of a multi-threaded test may only make raw syscalls.
        let pty = open_pty(Path::new("/dev/ptmx")).unwrap();
        // SAFETY: the child only makes raw syscalls before _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let Pty { master, slave } = pty;
            let steps = set_window_size(slave.as_fd(), 24, 100)
                .and_then(|()| send_master(client.as_fd(), master.as_fd()))
                .and_then(|()| set_controlling_terminal(slave, None));
            let code = match steps {
                Ok(()) => {
                    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
                    // SAFETY: ioctl/isatty/write on fds this child owns.
                    unsafe {
                        let tty =
                            libc::isatty(0) == 1 && libc::isatty(1) == 1 && libc::isatty(2) == 1;
                        let fg = libc::tcgetpgrp(0) == libc::getpgrp();
                        libc::ioctl(1, libc::TIOCGWINSZ, &mut ws);
                        let msg: &[u8] = if tty && fg && ws.ws_col == 100 {
                            b"ok-ctty\n"
                        } else {
                            b"bad\n"
                        };
                        libc::write(1, msg.as_ptr().cast(), msg.len());
                    }
                    0
                }
                Err(_) => 3,
            };
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(code) };
        }
        drop(client);
        drop(pty);
        let (master, _) = accept_master(&listener).unwrap();
        let mut m = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        // Read until the child's line arrives (EIO once the slave side is closed).
        while !out.ends_with(b"\n") {
            match m.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let mut status = 0;
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(String::from_utf8_lossy(&out), "ok-ctty\n");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn errors_name_the_step() {
        let e = connect_socket(Path::new("/nonexistent/console.sock"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/console.sock") && e.contains("connect"),
            "{e}"
        );
        let e = open_pty(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("unlockpt"), "{e}");
        // A peer that sends bytes but no fd is a protocol error, not a panic.
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"/dev/ptmx").unwrap();
        let e = receive_master(&b).unwrap_err().to_string();
        assert!(e.contains("0 fds"), "{e}");
    }
}
