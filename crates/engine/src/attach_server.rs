//! The monitor's side of attach: the listening socket in the container directory and the
//! attached clients (their input and window sizes in, the workload's output and exit code out;
//! attach_protocol.rs has the frames).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags};

use crate::attach_protocol::{
    frame, open_dir, socket_path, take_frame, EXIT, MAX_FRAME, MAX_QUEUED, RESIZE, SOCKET, STDERR,
    STDIN, STDOUT,
};
use crate::container_log::Stream;

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
            Ok(Some(_)) | Err(_) => return false,
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
