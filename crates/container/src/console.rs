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
//! The container's init also bind-mounts the pty slave at /dev/console, as runc does. That
//! mount is where CVE-2025-52565 struck runc: the source was a *path* (/dev/pts/N) and the
//! target a *path* (/dev/console), so a container that could swap either for a symlink got a
//! writable bind of a masked procfs file, or a mount on a host path. Here neither is a path:
//!
//! * the pty comes from /dev/pts/ptmx of the container's root opened with openat2
//!   (RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS), checked to be a devpts filesystem and the ptmx
//!   device (5:2, inode 2) before use, and the slave is opened from the master with
//!   `TIOCGPTPEER`, never by path;
//! * /dev/console is opened (or created with O_EXCL) the same way, so a symlink there is
//!   refused, and must be a regular file or a character device;
//! * the mount is `open_tree(slave fd, OPEN_TREE_CLONE)` + `move_mount(.., target fd)`: no
//!   path is resolved at mount time at all (nor /proc, which the container controls).

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
    /// A path of the container's /dev is not what a terminal needs (a symlink, another
    /// filesystem, another device): refused rather than followed (CVE-2025-52565).
    #[error("console: refusing {path} in the container: {reason}")]
    Unsafe {
        /// The path inside the container.
        path: &'static str,
        /// What is wrong with it and what to do.
        reason: String,
    },
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

const PTMX_MAJOR: u32 = 5;
const PTMX_MINOR: u32 = 2;
/// devpts gives its ptmx node inode 2 (the root directory is 1, ptys start at 3).
const PTMX_INO: u64 = 2;
/// UNIX98_PTY_SLAVE_MAJOR and the 7 majors after it.
const PTY_SLAVE_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

fn unsafe_path(path: &'static str, reason: impl Into<String>) -> ConsoleError {
    ConsoleError::Unsafe {
        path,
        reason: reason.into(),
    }
}

/// Maps an openat2 failure on a container path to an error that says what to fix.
fn open_err(path: &'static str, e: nix::Error) -> ConsoleError {
    match e {
        nix::Error::ELOOP | nix::Error::EXDEV => unsafe_path(
            path,
            "it is (or passes through) a symlink or another mount; the terminal is only set up on a real file of the container",
        ),
        e => ConsoleError::Pty {
            step: path,
            source: e.into(),
        },
    }
}

fn is_devpts(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: statfs is plain data; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st.f_type == libc::DEVPTS_SUPER_MAGIC)
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

fn is_char_device(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR
}

/// Allocates a pty from the devpts mounted at /dev/pts of `root` (the container's root: "/"
/// after pivot_root, or the container's mount namespace for `exec -t`, so /dev/pts/N names the
/// right device there). Nothing on the way may be a symlink, /dev/pts must be a devpts
/// filesystem and its ptmx the real ptmx device, so a rootfs cannot hand us a host pty or
/// another file. Output post-processing (ONLCR) is switched off, as runc does, so the engine
/// receives the bytes the process wrote.
pub fn open_pty_in(root: BorrowedFd<'_>) -> Result<Pty, ConsoleError> {
    use crate::resolve::{
        openat2, RESOLVE_BENEATH, RESOLVE_IN_ROOT, RESOLVE_NO_SYMLINKS, RESOLVE_NO_XDEV,
    };
    let pts = openat2(
        root,
        Path::new("dev/pts"),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS,
    )
    .map_err(|e| open_err("/dev/pts", e))?;
    if !is_devpts(pts.as_fd()).map_err(pty_err("statfs /dev/pts"))? {
        return Err(unsafe_path(
            "/dev/pts",
            "it is not a devpts filesystem; add a devpts mount at /dev/pts to config.json (mounts)",
        ));
    }
    // Inside one devpts directory (no symlink, no other mount), "ptmx" is the filesystem's own.
    let master = openat2(
        pts.as_fd(),
        Path::new("ptmx"),
        libc::O_RDWR | libc::O_NOCTTY,
        0,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV,
    )
    .map_err(|e| open_err("/dev/pts/ptmx", e))?;
    let st = fstat(master.as_fd()).map_err(pty_err("stat /dev/pts/ptmx"))?;
    if !is_char_device(&st)
        || libc::major(st.st_rdev) != PTMX_MAJOR
        || libc::minor(st.st_rdev) != PTMX_MINOR
        || st.st_ino != PTMX_INO
        || !is_devpts(master.as_fd()).map_err(pty_err("statfs /dev/pts/ptmx"))?
    {
        return Err(unsafe_path(
            "/dev/pts/ptmx",
            "it is not the devpts ptmx device (5:2)",
        ));
    }
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
    let st = fstat(slave.as_fd()).map_err(pty_err("stat the pty slave"))?;
    if !is_char_device(&st) || !PTY_SLAVE_MAJORS.contains(&libc::major(st.st_rdev)) {
        return Err(unsafe_path("/dev/pts", "the pty peer is not a pty slave"));
    }
    clear_onlcr(slave.as_fd()).map_err(pty_err("clear ONLCR"))?;
    Ok(Pty { master, slave })
}

/// Opens the root directory of the calling process (the container's, after pivot_root or
/// setns into its mount namespace) as an O_PATH fd for [`open_pty_in`] and [`mount_console`].
pub fn open_own_root() -> Result<OwnedFd, ConsoleError> {
    let fd = cvt(
        // SAFETY: open(2) of a constant C string; the result is checked.
        unsafe {
            libc::open(
                c"/".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        },
    )
    .map_err(pty_err("open /"))?;
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bind-mounts the pty `slave` at /dev/console of `root` (runc does this for the container's
/// init), fd to fd: /dev/console is opened or created inside `root` without following any
/// symlink and must be a regular file or a character device; the mount source is the slave
/// itself (open_tree on its fd), not a /dev/pts/N path (CVE-2025-52565).
pub fn mount_console(root: BorrowedFd<'_>, slave: BorrowedFd<'_>) -> Result<(), ConsoleError> {
    use crate::resolve::{openat2, RESOLVE_BENEATH, RESOLVE_IN_ROOT, RESOLVE_NO_SYMLINKS};
    let dev = openat2(
        root,
        Path::new("dev"),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS,
    )
    .map_err(|e| open_err("/dev", e))?;
    let name = Path::new("console");
    let beneath = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
    let target = match openat2(dev.as_fd(), name, libc::O_PATH, 0, beneath) {
        Err(nix::Error::ENOENT) => {
            // O_EXCL: if something appears there meanwhile, fail rather than use it.
            let f = openat2(
                dev.as_fd(),
                name,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                0o666,
                beneath,
            )
            .map_err(|e| open_err("/dev/console", e))?;
            // SAFETY: fchmod on an fd we own (the umask applied at creation).
            cvt(unsafe { libc::fchmod(f.as_raw_fd(), 0o666) })
                .map_err(pty_err("chmod /dev/console"))?;
            f
        }
        r => r.map_err(|e| open_err("/dev/console", e))?,
    };
    let st = fstat(target.as_fd()).map_err(pty_err("stat /dev/console"))?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG && kind != libc::S_IFCHR {
        return Err(unsafe_path(
            "/dev/console",
            "it is neither a regular file nor a character device",
        ));
    }
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    // SAFETY: open_tree with an fd we hold, an empty C string and AT_EMPTY_PATH; it returns a
    // new fd (a detached bind mount of the slave) that we own.
    let tree = cvt(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            slave.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        ) as libc::c_int
    })
    .map_err(pty_err("open_tree of the pty slave"))?;
    // SAFETY: a new fd we own.
    let tree = unsafe { OwnedFd::from_raw_fd(tree) };
    // SAFETY: move_mount between two fds we hold, with empty C strings and *_EMPTY_PATH.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        ) as libc::c_int
    })
    .map_err(pty_err("bind mount the pty at /dev/console"))?;
    Ok(())
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

/// The whole container-side sequence: allocate the pty in `root`'s devpts, bind it at
/// /dev/console when `console_mount` (the init, not `exec -t`), send the master over `socket`,
/// make the slave the controlling terminal and stdio. The master is closed afterwards: the
/// engine owns it now.
pub fn setup_console(
    socket: BorrowedFd<'_>,
    root: BorrowedFd<'_>,
    console_mount: bool,
    size: Option<(u16, u16)>,
    owner: Option<(u32, u32)>,
) -> Result<(), ConsoleError> {
    let pty = open_pty_in(root)?;
    if let Some((rows, cols)) = size {
        set_window_size(pty.slave.as_fd(), rows, cols)?;
    }
    if console_mount {
        mount_console(root, pty.slave.as_fd())?;
    }
    send_master(socket, pty.master.as_fd())?;
    drop(pty.master);
    set_controlling_terminal(pty.slave, owner)
}

/// runc's message for a terminal nobody could attach to (engines and scripts know it).
pub const DETACHED_TTY_WITHOUT_SOCKET: &str =
    "cannot allocate tty if runc will detach without setting console socket";

/// Where the pty master of a `process.terminal` process goes. Decided by the runtime before
/// anything is created, so a usage error leaves nothing behind.
#[derive(Debug)]
pub enum Terminal {
    /// No terminal: the process keeps the runtime's stdio.
    None,
    /// The engine's `--console-socket`, connected by the runtime (the path is a host path).
    Socket(UnixStream),
    /// Foreground without `--console-socket`, as runc does: the container side sends the
    /// master over `theirs`; the runtime receives it on `ours` and relays it to its own stdio
    /// ([`relay`]).
    Relay {
        /// The runtime's end.
        ours: UnixStream,
        /// The container side's end.
        theirs: UnixStream,
    },
}

impl Terminal {
    /// Checks that `process.terminal` and `--console-socket` fit together as runc does and
    /// connects the socket. `detached` is true for `create`, `run -d` and `exec -d`, where
    /// nobody is attached to the runtime's stdio.
    pub fn for_process(
        process: &Process,
        socket: Option<&Path>,
        detached: bool,
    ) -> Result<Terminal, ConsoleError> {
        let terminal = process.terminal().unwrap_or(false);
        match (terminal, socket) {
            (true, Some(path)) => connect_socket(path).map(Terminal::Socket),
            (true, None) if detached => Err(ConsoleError::Usage(DETACHED_TTY_WITHOUT_SOCKET)),
            (true, None) => {
                let (ours, theirs) = UnixStream::pair().map_err(|source| {
                    ConsoleError::Transfer {
                        step: "socketpair",
                        source,
                    }
                })?;
                Ok(Terminal::Relay { ours, theirs })
            }
            (false, Some(_)) => Err(ConsoleError::Usage(
                "--console-socket was given but process.terminal is false; set terminal or drop the socket",
            )),
            (false, None) => Ok(Terminal::None),
        }
    }

    /// For a relayed terminal, starts the pty at the size of ours (`process.consoleSize`):
    /// the workload may ask for its size before the relay could copy it.
    pub fn size_process(&self, process: &mut Process) {
        if !matches!(self, Terminal::Relay { .. }) {
            return;
        }
        if let Some((rows, cols)) = own_window_size() {
            if let Ok(b) = oci_spec::runtime::BoxBuilder::default()
                .height(rows as u64)
                .width(cols as u64)
                .build()
            {
                process.set_console_size(Some(b));
            }
        }
    }

    /// The socket the container side sends the master over, if any.
    pub fn container_end(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Terminal::None => None,
            Terminal::Socket(s) => Some(s.as_fd()),
            Terminal::Relay { theirs, .. } => Some(theirs.as_fd()),
        }
    }

    /// Once the container side has sent the master (it does so before reporting ready): the
    /// master when the runtime relays it itself, `None` otherwise.
    pub fn take_master(self) -> Result<Option<OwnedFd>, ConsoleError> {
        match self {
            Terminal::Relay { ours, theirs } => {
                drop(theirs);
                receive_master(&ours).map(|(m, _)| Some(m))
            }
            _ => Ok(None),
        }
    }
}

/// Inside the container (after pivot_root, so /dev/pts is the container's devpts): allocate
/// the pty, hand the master over `socket` ([`Terminal::container_end`]), take the slave as the
/// controlling terminal and stdio, owned by the process user. The pty is also bound at the
/// container's /dev/console, as runc does for the init.
pub fn attach(socket: Option<BorrowedFd<'_>>, process: &Process) -> Result<(), ConsoleError> {
    match socket {
        Some(socket) => attach_with(socket, process, true),
        None => Ok(()),
    }
}

/// [`attach`] over an already connected socket fd, without the /dev/console mount (`exec -t`:
/// the runtime connected it before the process joined the container's mount namespace).
pub fn attach_fd(socket: BorrowedFd<'_>, process: &Process) -> Result<(), ConsoleError> {
    attach_with(socket, process, false)
}

fn attach_with(
    socket: BorrowedFd<'_>,
    process: &Process,
    console_mount: bool,
) -> Result<(), ConsoleError> {
    let size = process
        .console_size()
        .as_ref()
        .map(|b| (b.height() as u16, b.width() as u16));
    let owner = Some((process.user().uid(), process.user().gid()));
    let root = open_own_root()?;
    setup_console(socket, root.as_fd(), console_mount, size, owner)
}

/// Puts a terminal in raw mode (runc does the same with its own stdin) and restores it on drop.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> Option<RawMode> {
        // SAFETY: isatty/tcgetattr/cfmakeraw/tcsetattr on a caller's fd with local termios.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes read in `enter` on the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// The size of our own terminal (stdin, else stdout), if either is one.
fn own_window_size() -> Option<(u16, u16)> {
    for fd in [0, 1] {
        // SAFETY: winsize is plain data; TIOCGWINSZ fills it or fails on a non-tty.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer; a failure leaves ws untouched.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Copies the size of our own terminal to the pty `master`.
fn copy_window_size(master: BorrowedFd<'_>) {
    if let Some((rows, cols)) = own_window_size() {
        let _ = set_window_size(master, rows, cols);
    }
}

/// Reaps exited children without blocking; the exit code of `pid` once it is gone (128 + N
/// when killed by signal N, as shells report it).
fn reap(pid: i32) -> Option<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => return Some(c),
            Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => return Some(128 + s as i32),
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => continue,
            Err(nix::Error::ECHILD) => return Some(255),
            Err(nix::Error::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: write(2) from a live slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, -1) };
                    continue;
                }
                _ => return Err(e),
            }
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// How long output may keep arriving on the pty after the process exited (a background
/// process of an `exec -t` can hold the terminal open; the runtime does not wait for it).
const DRAIN_AFTER_EXIT_MS: libc::c_int = 200;

/// Foreground terminal without `--console-socket` (runc's behaviour): relays our stdin to the
/// pty `master` and its output to our stdout, in raw mode when our stdin is a terminal, copies
/// our window size (now and on SIGWINCH), forwards the other signals of `signals` (blocked by
/// the caller, see `launch::block_forwarded_signals`) to `pid`, and returns `pid`'s exit code
/// once it has exited and its output is drained.
pub fn relay(
    master: OwnedFd,
    pid: i32,
    signals: &nix::sys::signal::SigSet,
) -> Result<i32, ConsoleError> {
    use nix::sys::signal::Signal;
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let sfd = SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| pty_err("signalfd")(e.into()))?;
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let _raw = RawMode::enter(0);
    copy_window_size(master.as_fd());
    let (mut exit, mut stdin_open, mut master_open) = (None, true, true);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if exit.is_none() {
            exit = reap(pid);
        }
        if exit.is_some() && !master_open {
            break;
        }
        let mut fds = [
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: if exit.is_none() { libc::POLLIN } else { 0 },
                revents: 0,
            },
            libc::pollfd {
                fd: if master_open { master.as_raw_fd() } else { -1 },
                events: libc::POLLIN | if pending.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open && pending.is_empty() && exit.is_none() {
                    0
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if exit.is_some() {
            DRAIN_AFTER_EXIT_MS
        } else {
            -1
        };
        // SAFETY: poll over a live array of pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(pty_err("poll")(e));
        }
        if n == 0 && exit.is_some() {
            break;
        }
        if fds[0].revents != 0 {
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) | Err(_) => {}
                    Ok(Signal::SIGWINCH) => copy_window_size(master.as_fd()),
                    Ok(sig) => {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                    }
                }
            }
        }
        if fds[1].revents & libc::POLLOUT != 0 {
            // SAFETY: write(2) from a live buffer to a non-blocking fd we own.
            let w =
                unsafe { libc::write(master.as_raw_fd(), pending.as_ptr().cast(), pending.len()) };
            if w > 0 {
                pending.drain(..w as usize);
            }
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            // SAFETY: read(2) into a live buffer from a fd we own.
            let r = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r > 0 {
                write_all(1, &buf[..r as usize]).map_err(pty_err("write to stdout"))?;
            } else if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                // EIO: every slave fd is closed, the process and its children are done with
                // the terminal.
                master_open = false;
                pending.clear();
            }
        }
        if fds[2].revents != 0 {
            // SAFETY: read(2) into a live buffer from our stdin.
            let r = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if r > 0 {
                pending.extend_from_slice(&buf[..r as usize]);
            } else if r == 0
                || !matches!(
                    io::Error::last_os_error().kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                )
            {
                stdin_open = false;
            }
        }
    }
    Ok(exit.unwrap_or(255))
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
        let pty = open_pty_in(open_own_root().unwrap().as_fd()).unwrap();
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
        let pty = open_pty_in(open_own_root().unwrap().as_fd()).unwrap();
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
        // A root whose /dev/pts is no devpts, or a symlink to the host's, gives no pty.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev/pts")).unwrap();
        std::fs::write(root.path().join("dev/pts/ptmx"), "").unwrap();
        let rootfd = std::fs::File::open(root.path()).unwrap();
        let e = open_pty_in(rootfd.as_fd()).unwrap_err().to_string();
        assert!(e.contains("/dev/pts") && e.contains("not a devpts"), "{e}");
        std::fs::remove_dir_all(root.path().join("dev/pts")).unwrap();
        std::os::unix::fs::symlink("/dev/pts", root.path().join("dev/pts")).unwrap();
        let e = open_pty_in(rootfd.as_fd()).unwrap_err().to_string();
        assert!(e.contains("/dev/pts") && e.contains("symlink"), "{e}");
        // A peer that sends bytes but no fd is a protocol error, not a panic.
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"/dev/ptmx").unwrap();
        let e = receive_master(&b).unwrap_err().to_string();
        assert!(e.contains("0 fds"), "{e}");
    }

    #[test]
    fn a_symlinked_or_odd_dev_console_is_refused_before_any_mount() {
        let root = tempfile::tempdir().unwrap();
        let host = tempfile::NamedTempFile::new().unwrap();
        std::fs::create_dir(root.path().join("dev")).unwrap();
        std::os::unix::fs::symlink(host.path(), root.path().join("dev/console")).unwrap();
        let rootfd = std::fs::File::open(root.path()).unwrap();
        let slave = std::fs::File::open("/dev/null").unwrap();
        let e = mount_console(rootfd.as_fd(), slave.as_fd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/console") && e.contains("symlink"), "{e}");
        std::fs::remove_file(root.path().join("dev/console")).unwrap();
        std::fs::create_dir(root.path().join("dev/console")).unwrap();
        let e = mount_console(rootfd.as_fd(), slave.as_fd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a regular file"), "{e}");
        // /dev itself a symlink (to the host's /dev): refused too.
        std::fs::remove_dir_all(root.path().join("dev")).unwrap();
        std::os::unix::fs::symlink("/dev", root.path().join("dev")).unwrap();
        let e = mount_console(rootfd.as_fd(), slave.as_fd())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev ") && e.contains("symlink"), "{e}");
    }

    #[test]
    fn terminal_and_console_socket_are_checked_like_runc() {
        let mut p = Process::default();
        p.set_terminal(Some(true));
        let e = Terminal::for_process(&p, None, true)
            .unwrap_err()
            .to_string();
        assert_eq!(e, DETACHED_TTY_WITHOUT_SOCKET);
        let t = Terminal::for_process(&p, None, false).unwrap();
        assert!(matches!(t, Terminal::Relay { .. }) && t.container_end().is_some());
        let e = Terminal::for_process(&p, Some(Path::new("/nonexistent/sock")), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/sock"), "{e}");
        p.set_terminal(Some(false));
        let e = Terminal::for_process(&p, Some(Path::new("/x.sock")), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("process.terminal is false"), "{e}");
        let t = Terminal::for_process(&p, None, true).unwrap();
        assert!(t.container_end().is_none() && t.take_master().unwrap().is_none());
    }
}
