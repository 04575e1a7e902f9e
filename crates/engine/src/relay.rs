//! The one output relay of the engine: a workload's stdout/stderr (pipes or a pty master) read
//! as they become readable, each chunk appended to the container log (when there is one) and
//! handed to a front end, until every source reached EOF. The front ends: the foreground `run`
//! (our own stdout/stderr, signals forwarded; `run.rs`), the `-t` relay (host terminal ↔ pty,
//! window size; `terminal_relay.rs`) and the detached monitor (attach clients, their input and
//! window sizes; `monitor.rs`).
//!
//! One buffer for the whole relay and no per-chunk allocation: the foreground relay is on
//! `strata run`'s path.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::container_log::{LogWriter, Stream};
use crate::{pty, reap};

/// Bytes read from a source at once.
const CHUNK: usize = 64 * 1024;

/// What a relay does besides reading its sources into the log.
pub trait Front {
    /// Adds the fds this front end waits on; they follow the sources in the poll set.
    fn poll_fds<'f>(&'f self, fds: &mut Vec<PollFd<'f>>);
    /// A chunk of `stream`'s output; false closes its source (nobody reads it any more).
    fn output(&mut self, stream: Stream, data: &[u8]) -> bool;
    /// Acts on the poll results of the fds from `poll_fds` (`buf`: scratch space).
    fn handle(&mut self, revents: &[PollFlags], buf: &mut [u8]);
    /// Once the workload exited: how long to wait for more output before giving up on sources
    /// an escaped process keeps open. Only the sources are polled from then on.
    fn linger(&self) -> Option<PollTimeout>;
}

/// Relays `sources` until each reached EOF, was closed by `front` or (once the workload
/// exited) stayed silent for `front.linger()`. A source's partial last line goes to `log`
/// when it ends.
pub fn run<S: AsFd, F: Front>(
    sources: Vec<(S, Stream)>,
    mut log: Option<&mut LogWriter>,
    front: &mut F,
) {
    let mut open = sources;
    let mut buf = vec![0u8; CHUNK];
    let mut rev: Vec<PollFlags> = Vec::new();
    while !open.is_empty() {
        let linger = front.linger();
        let n_src = open.len();
        let mut fds: Vec<PollFd> = open
            .iter()
            .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        if linger.is_none() {
            front.poll_fds(&mut fds);
        }
        match poll(&mut fds, linger.unwrap_or(PollTimeout::NONE)) {
            // Only with a linger: nothing more came.
            Ok(0) => break,
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
        rev.clear();
        rev.extend(
            fds.iter()
                .map(|p| p.revents().unwrap_or(PollFlags::empty())),
        );
        drop(fds);
        let mut closed = Vec::new();
        for (i, (fd, stream)) in open.iter().enumerate() {
            if rev[i].is_empty() {
                continue;
            }
            match nix::unistd::read(fd.as_fd().as_raw_fd(), &mut buf) {
                // EOF of a pipe; a pty master whose slaves all closed answers EIO (below).
                Ok(0) => closed.push(i),
                Ok(n) => {
                    if let Some(l) = log.as_deref_mut() {
                        l.write(*stream, &buf[..n]);
                    }
                    if !front.output(*stream, &buf[..n]) {
                        closed.push(i);
                    }
                }
                Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            let (_, stream) = open.remove(i);
            if let Some(l) = log.as_deref_mut() {
                l.end(stream);
            }
        }
        if linger.is_none() {
            front.handle(&rev[n_src..], &mut buf);
        }
    }
}

/// The signals a foreground relay forwards to its workload (blocked by the caller before the
/// workload started), and the workload's exit code once SIGCHLD reported it.
pub struct Signals<'a> {
    sfd: Option<SignalFd>,
    set: &'a SigSet,
    pid: i32,
    code: Option<i32>,
}

impl<'a> Signals<'a> {
    /// Signals in `set` for workload `pid` (our child). Without a signalfd the relay still
    /// runs; [`Signals::finish`] then forwards while it waits.
    pub fn new(pid: i32, set: &'a SigSet) -> Signals<'a> {
        let sfd = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok();
        Signals {
            sfd,
            set,
            pid,
            code: None,
        }
    }

    /// The signalfd's poll entry, if there is one (always the last the caller adds).
    pub fn poll_fd(&self) -> Option<PollFd<'_>> {
        self.sfd
            .as_ref()
            .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
    }

    /// Reads the pending signals when `revents` says so: SIGCHLD reaps the workload,
    /// SIGWINCH copies the size of terminal `resize.0` to pty `resize.1` when given, every
    /// other signal (and SIGWINCH otherwise) is forwarded to the workload.
    pub fn handle(&mut self, revents: PollFlags, resize: Option<(BorrowedFd, BorrowedFd)>) {
        let Some(sfd) = &self.sfd else { return };
        if !revents.contains(PollFlags::POLLIN) {
            return;
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            match (Signal::try_from(info.ssi_signo as i32), resize) {
                (Ok(Signal::SIGCHLD), _) => {
                    if let Some(c) = reap::try_reap(self.pid) {
                        self.code = Some(c);
                    }
                }
                (Ok(Signal::SIGWINCH), Some((from, to))) => pty::copy_size(from, to),
                (Ok(sig), _) => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig);
                }
                (Err(_), _) => {}
            }
        }
    }

    /// Whether [`Signals::poll_fd`] adds an entry.
    pub fn polled(&self) -> bool {
        self.sfd.is_some()
    }

    /// Whether the workload's exit was seen.
    pub fn exited(&self) -> bool {
        self.code.is_some()
    }

    /// The workload's exit code: as reaped, or waited for now, still forwarding signals
    /// (every output source closed before SIGCHLD came).
    pub fn finish(self) -> i32 {
        self.code
            .unwrap_or_else(|| strata_container::launch::wait_forwarding(self.pid, self.set))
    }
}

/// Writes all of `b`; false when the reader is gone.
pub fn write_all(fd: BorrowedFd, mut b: &[u8]) -> bool {
    while !b.is_empty() {
        match nix::unistd::write(fd, b) {
            Ok(n) => b = &b[n..],
            Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;
    use crate::container_log::LogLine;

    /// Records what the relay hands over; `refuse` makes `output` say its reader is gone.
    #[derive(Default)]
    struct Recorder {
        out: Vec<(Stream, Vec<u8>)>,
        refuse: bool,
        exited: bool,
        handled: usize,
    }

    impl Front for Recorder {
        fn poll_fds<'f>(&'f self, _fds: &mut Vec<PollFd<'f>>) {}
        fn output(&mut self, stream: Stream, data: &[u8]) -> bool {
            self.out.push((stream, data.to_vec()));
            !self.refuse
        }
        fn handle(&mut self, revents: &[PollFlags], _buf: &mut [u8]) {
            assert!(revents.is_empty(), "only the sources were polled");
            self.handled += 1;
        }
        fn linger(&self) -> Option<PollTimeout> {
            self.exited.then_some(PollTimeout::ZERO)
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    fn log_lines(path: &std::path::Path) -> Vec<LogLine> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn both_streams_reach_the_log_and_the_front_until_eof() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("container.log");
        let mut log = LogWriter::open(&path).unwrap();
        let ((out_r, out_w), (err_r, err_w)) = (pipe(), pipe());
        assert!(write_all(out_w.as_fd(), b"one\ntwo"));
        assert!(write_all(err_w.as_fd(), b"oops\n"));
        drop((out_w, err_w));
        let mut front = Recorder::default();
        run(
            vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            Some(&mut log),
            &mut front,
        );
        drop(log);
        let got: Vec<u8> = front
            .out
            .iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .flat_map(|(_, d)| d.clone())
            .collect();
        assert_eq!(got, b"one\ntwo");
        assert!(front.handled > 0);
        let lines = log_lines(&path);
        let text = |stream: &str| -> Vec<String> {
            lines
                .iter()
                .filter(|l| l.stream == stream)
                .map(|l| l.log.clone())
                .collect()
        };
        // The partial last line is written once its stream ended.
        assert_eq!(text("stdout"), ["one\n", "two"]);
        assert_eq!(text("stderr"), ["oops\n"]);
    }

    #[test]
    fn a_refused_chunk_closes_its_source() {
        let (r, w) = pipe();
        assert!(write_all(w.as_fd(), b"x"));
        let mut front = Recorder {
            refuse: true,
            ..Recorder::default()
        };
        // The write end stays open: only the refusal can end the relay.
        run(vec![(r, Stream::Stdout)], None, &mut front);
        assert_eq!(front.out.len(), 1);
        // The read end is closed, so the writer (the workload) sees EPIPE like a closed stdout.
        // SAFETY: ignoring SIGPIPE in this test process so the write reports EPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        assert_eq!(nix::unistd::write(w.as_fd(), b"y"), Err(nix::Error::EPIPE));
    }

    #[test]
    fn after_the_exit_a_source_held_open_ends_the_relay_once_silent() {
        let (r, w) = pipe();
        assert!(write_all(w.as_fd(), b"last words\n"));
        let mut front = Recorder {
            exited: true,
            ..Recorder::default()
        };
        // `w` stays open (an escaped process): what was written still arrives, then the
        // linger ends the relay instead of waiting for EOF forever.
        run(vec![(r.as_fd(), Stream::Stdout)], None, &mut front);
        assert_eq!(front.out, [(Stream::Stdout, b"last words\n".to_vec())]);
        assert_eq!(
            front.handled, 0,
            "nothing but the sources is polled after the exit"
        );
        drop(w);
    }
}
