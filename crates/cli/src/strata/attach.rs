//! `strata attach`: our stdio connected to a detached container's, through its monitor.
//!
//! The monitor (monitor.rs) holds the workload's stdio; while the workload runs it listens on
//! `<container dir>/attach.sock` (0600, reached through the directory's fd: the store path can
//! be longer than a socket address allows). Both directions carry frames: a kind byte, a
//! little-endian u32 length, the payload. The client sends stdin bytes and window sizes; the
//! monitor sends stdout, stderr and, last, the exit code. Any number of clients may attach;
//! each gets all output from the moment it connected (earlier output is in `strata logs`).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{ArgAction, Args};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::containers::{Containers, State};
use super::logs::Stream;
use super::{instance, tty, Global};

/// The socket's name in the container directory.
pub const SOCKET: &str = "attach.sock";

/// Client → monitor: bytes for the workload's stdin.
pub const STDIN: u8 = 0;
/// Client → monitor: the terminal's size (rows, columns as two little-endian u16).
pub const RESIZE: u8 = 1;
/// Monitor → client: workload output.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// Monitor → client: the workload's exit code (little-endian i32); the last frame.
pub const EXIT: u8 = 3;

/// Largest payload either side accepts; the peer is dropped past it.
pub const MAX_FRAME: usize = 64 * 1024;
/// Output queued for a client that does not read; it is dropped past this (the log keeps all).
const MAX_QUEUED: usize = 4 << 20;

/// One frame.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + payload.len());
    v.push(kind);
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Takes the first complete frame off `buf`. `Err` when the peer announces a frame larger than
/// [`MAX_FRAME`] (nothing sane does: the connection is dropped).
pub fn take_frame(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, ()> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME {
        return Err(());
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let kind = buf[0];
    let payload = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some((kind, payload)))
}

/// The socket's address through an fd of the container directory.
fn socket_path(dir: BorrowedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()))
}

fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?
        .into())
}

/// What attached clients asked of the workload in one round.
#[derive(Default)]
pub struct Input {
    /// Bytes for its stdin.
    pub stdin: Vec<u8>,
    /// The last window size asked for.
    pub resize: Option<(u16, u16)>,
}

struct Client {
    sock: UnixStream,
    /// Frames not written yet (the socket is non-blocking).
    out: Vec<u8>,
    /// Bytes of a partial frame.
    inbuf: Vec<u8>,
}

/// The monitor's side: the listening socket and the attached clients.
pub struct Server {
    listener: UnixListener,
    dir: OwnedFd,
    clients: Vec<Client>,
}

impl Server {
    /// Listens on the container directory's socket.
    pub fn bind(dir: &Path) -> std::io::Result<Server> {
        let dir = open_dir(dir)?;
        let path = socket_path(dir.as_fd());
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        // Whoever connects writes the workload's stdin: root only, like the store.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            dir,
            clients: Vec::new(),
        })
    }

    /// The fds to poll: the listener, then each client (its input only when `want_input`).
    pub fn poll_fds(&self, want_input: bool) -> Vec<PollFd<'_>> {
        let mut v = vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        for c in &self.clients {
            let mut f = PollFlags::empty();
            if want_input {
                f |= PollFlags::POLLIN;
            }
            if !c.out.is_empty() {
                f |= PollFlags::POLLOUT;
            }
            v.push(PollFd::new(c.sock.as_fd(), f));
        }
        v
    }

    /// Acts on the poll results (in [`Server::poll_fds`] order): accepts clients, reads their
    /// frames into `input`, writes queued output, drops clients that left or misbehaved.
    pub fn handle(&mut self, revents: &[PollFlags], input: &mut Input) {
        let mut gone = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            let Some(r) = revents.get(i + 1).copied() else {
                break;
            };
            if r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                && !read_client(c, input)
            {
                gone.push(i);
                continue;
            }
            if r.contains(PollFlags::POLLOUT) && !flush_client(c) {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.remove(i);
        }
        if revents
            .first()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            while let Ok((sock, _)) = self.listener.accept() {
                if sock.set_nonblocking(true).is_ok() {
                    self.clients.push(Client {
                        sock,
                        out: Vec::new(),
                        inbuf: Vec::new(),
                    });
                }
            }
        }
    }

    /// Workload output to every client.
    pub fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        if self.clients.is_empty() {
            return;
        }
        let kind = match stream {
            Stream::Stdout => STDOUT,
            Stream::Stderr => STDERR,
        };
        let mut frames = Vec::new();
        for chunk in data.chunks(MAX_FRAME) {
            frames.extend_from_slice(&frame(kind, chunk));
        }
        self.clients.retain_mut(|c| {
            c.out.extend_from_slice(&frames);
            c.out.len() <= MAX_QUEUED && flush_client(c)
        });
    }

    /// The workload exited: no new clients; every attached one gets the rest of its output
    /// and the exit code (a client that does not take them within a few seconds is dropped).
    pub fn finish(mut self, code: i32) {
        let _ = nix::unistd::unlinkat(
            Some(self.dir.as_raw_fd()),
            SOCKET,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        for c in &mut self.clients {
            c.out.extend_from_slice(&frame(EXIT, &code.to_le_bytes()));
            let _ = c.sock.set_nonblocking(false);
            let _ = c.sock.set_write_timeout(Some(Duration::from_secs(3)));
            let _ = c.sock.write_all(&c.out);
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Stops taking new clients (the socket goes; connected clients stay).
    pub fn close(&self) {
        let _ = nix::unistd::unlinkat(
            Some(self.dir.as_raw_fd()),
            SOCKET,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// Reads what a client sent; false when it left or sent garbage.
fn read_client(c: &mut Client, input: &mut Input) -> bool {
    let mut buf = [0u8; 32 * 1024];
    match c.sock.read(&mut buf) {
        Ok(0) => return false,
        Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
        Err(_) => return false,
    }
    loop {
        match take_frame(&mut c.inbuf) {
            Ok(None) => return true,
            Ok(Some((STDIN, p))) => input.stdin.extend_from_slice(&p),
            Ok(Some((RESIZE, p))) if p.len() == 4 => {
                let rows = u16::from_le_bytes([p[0], p[1]]);
                let cols = u16::from_le_bytes([p[2], p[3]]);
                if rows > 0 && cols > 0 {
                    input.resize = Some((rows, cols));
                }
            }
            Ok(Some(_)) | Err(()) => return false,
        }
    }
}

/// Writes what the socket takes now; false when the client is gone.
fn flush_client(c: &mut Client) -> bool {
    while !c.out.is_empty() {
        match c.sock.write(&c.out) {
            Ok(0) => return false,
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Do not attach stdin
    #[arg(long = "no-stdin")]
    pub no_stdin: bool,
    /// Send the signals strata receives to the container (not with a terminal: ^C is a key
    /// press there); false: ^C detaches
    #[arg(long = "sig-proxy", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = true, default_missing_value = "true")]
    pub sig_proxy: bool,
    /// Keys that detach (comma-separated: ctrl-A..ctrl-Z, ctrl-@, ctrl-[, ctrl-\, ctrl-],
    /// ctrl-^, ctrl-_, or single characters)
    #[arg(long = "detach-keys", default_value = "ctrl-p,ctrl-q")]
    pub detach_keys: String,
    /// Container (name, id or id prefix)
    pub container: String,
}

/// Parses Docker's detach-key syntax into the byte sequence.
pub fn parse_detach_keys(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for k in s.split(',') {
        let b = match k.strip_prefix("ctrl-") {
            Some(c) if c.len() == 1 => {
                let c = c.as_bytes()[0].to_ascii_uppercase();
                match c {
                    b'@' | b'A'..=b'Z' | b'[' | b'\\' | b']' | b'^' | b'_' => c - b'@',
                    _ => bail!("bad --detach-keys {s:?}: {k:?} is not a control key"),
                }
            }
            None if k.len() == 1 => k.as_bytes()[0],
            _ => bail!(
                "bad --detach-keys {s:?}: use keys like ctrl-p,ctrl-q or single characters, comma-separated"
            ),
        };
        out.push(b);
    }
    Ok(out)
}

/// Exits with the container's exit code (0 after the detach keys).
pub fn attach(g: &Global, a: AttachArgs) -> anyhow::Result<()> {
    let keys = parse_detach_keys(&a.detach_keys)?;
    let containers = Containers::new(&g.store);
    let rec = containers.find(&a.container)?;
    if rec.live_state() != State::Running {
        bail!(
            "container {} is not running: start it with `strata start {}` (its output so far: `strata logs {}`)",
            rec.name,
            rec.name,
            rec.name
        );
    }
    let dir = containers.dir(&rec.id);
    let dfd = open_dir(&dir).with_context(|| format!("open {}", dir.display()))?;
    let sock = match UnixStream::connect(socket_path(dfd.as_fd())) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            bail!(
                "container {} has no monitor to attach to: it runs in the foreground of its `strata run` (attach works for containers started with `run -d` or `start`)",
                rec.name
            )
        }
        Err(e) => return Err(e).context("connect to the container's monitor"),
    };
    let backend = instance::backend(&rec.isolation, &g.root)?;
    let signals = strata_container::launch::block_forwarded_signals();
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut stdin_open = !a.no_stdin && rec.interactive;
    let raw = if rec.tty && stdin_open {
        tty::RawMode::enable(stdin.as_fd())
    } else {
        None
    };
    let mut w = &sock;
    let send_size = |w: &mut &UnixStream| {
        if let Some((r, c)) = tty::size(stdin.as_fd()).or_else(|| tty::size(stdout.as_fd())) {
            let mut p = r.to_le_bytes().to_vec();
            p.extend_from_slice(&c.to_le_bytes());
            let _ = w.write_all(&frame(RESIZE, &p));
        }
    };
    if rec.tty {
        send_size(&mut w);
    }
    let mut detach = Detach::new(keys);
    let mut inbuf = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let code = 'relay: loop {
        let mut fds = vec![
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e).context("poll"),
        }
        let rev: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        if rev[0].intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match (&sock).read(&mut buf) {
                Ok(0) | Err(_) => break 'relay None,
                Ok(n) => inbuf.extend_from_slice(&buf[..n]),
            }
            loop {
                match take_frame(&mut inbuf) {
                    Ok(Some((STDOUT, p))) => write_out(stdout.as_fd(), &p),
                    Ok(Some((STDERR, p))) => write_out(stderr.as_fd(), &p),
                    Ok(Some((EXIT, p))) if p.len() == 4 => {
                        break 'relay Some(i32::from_le_bytes([p[0], p[1], p[2], p[3]]))
                    }
                    Ok(None) => break,
                    Ok(Some(_)) | Err(()) => bail!("the container's monitor sent a bad frame"),
                }
            }
        }
        if rev[1].contains(PollFlags::POLLIN) {
            while let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) | Err(_) => {}
                    Ok(Signal::SIGWINCH) => {
                        if rec.tty {
                            send_size(&mut w);
                        }
                    }
                    Ok(sig) if a.sig_proxy && !rec.tty => {
                        let _ = backend.kill(&rec.id, sig);
                    }
                    // Not proxied: the signal ends the attachment, not the container.
                    Ok(_) => {
                        drop(raw);
                        std::process::exit(0);
                    }
                }
            }
        }
        if stdin_open && rev.get(2).is_some_and(|r| !r.is_empty()) {
            match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let (pass, detached) = detach.feed(&buf[..n]);
                    for chunk in pass.chunks(MAX_FRAME) {
                        if w.write_all(&frame(STDIN, chunk)).is_err() {
                            stdin_open = false;
                        }
                    }
                    if detached {
                        drop(raw);
                        std::process::exit(0);
                    }
                }
            }
        }
    };
    drop(raw);
    let code = match code {
        Some(c) => c,
        // The monitor went before sending the exit code (the workload exited while we
        // connected): the record has it.
        None => exit_code_from_record(&containers, &rec.id),
    };
    std::process::exit(code)
}

fn exit_code_from_record(containers: &Containers, id: &str) -> i32 {
    let t = Instant::now();
    loop {
        match containers.load(id) {
            Ok(r) if r.live_state() != State::Running => return r.exit_code.unwrap_or(0),
            Ok(_) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => return 0,
        }
    }
}

fn write_out(fd: BorrowedFd, mut b: &[u8]) {
    while !b.is_empty() {
        match nix::unistd::write(fd, b) {
            Ok(n) => b = &b[n..],
            Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => {}
            Err(_) => return,
        }
    }
}

/// Watches stdin for the detach sequence. Bytes that may start it are held back until it is
/// clear they do not (then passed on), as Docker does.
struct Detach {
    keys: Vec<u8>,
    matched: usize,
}

impl Detach {
    fn new(keys: Vec<u8>) -> Detach {
        Detach { keys, matched: 0 }
    }

    /// The bytes to pass on, and whether the whole sequence was typed.
    fn feed(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(data.len());
        for &b in data {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
                continue;
            }
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if b == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_hostile_lengths_are_refused() {
        let mut b = frame(STDOUT, b"hello");
        b.extend_from_slice(&frame(EXIT, &7i32.to_le_bytes()));
        b.extend_from_slice(&frame(STDERR, b"part")[..6]);
        assert_eq!(take_frame(&mut b), Ok(Some((STDOUT, b"hello".to_vec()))));
        assert_eq!(
            take_frame(&mut b),
            Ok(Some((EXIT, 7i32.to_le_bytes().to_vec())))
        );
        assert_eq!(take_frame(&mut b), Ok(None));
        let mut huge = vec![STDIN];
        huge.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert_eq!(take_frame(&mut huge), Err(()));
        // Random bytes never panic and never yield a frame past the limit.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut v: Vec<u8> = (0..(seed % 64) as usize)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            while let Ok(Some((_, p))) = take_frame(&mut v) {
                assert!(p.len() <= MAX_FRAME);
            }
        }
    }

    #[test]
    fn detach_keys_are_parsed_and_matched() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), [16, 17]);
        assert_eq!(parse_detach_keys("a,ctrl-@").unwrap(), [b'a', 0]);
        for bad in ["ctrl-", "ctrl-1", "ab", "", "ctrl-p,,x"] {
            assert!(parse_detach_keys(bad).is_err(), "{bad:?}");
        }
        let mut d = Detach::new(vec![16, 17]);
        assert_eq!(d.feed(b"ab\x10"), (b"ab".to_vec(), false));
        assert_eq!(d.feed(b"x"), (b"\x10x".to_vec(), false));
        assert_eq!(d.feed(b"\x10\x10"), (b"\x10".to_vec(), false));
        assert_eq!(d.feed(b"\x11rest"), (Vec::new(), true));
    }
}
