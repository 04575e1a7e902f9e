//! The `-t` relay of a foreground workload: our terminal ↔ the workload's pty master, the
//! blocked signals forwarded (SIGWINCH as a resize), the output copied to the log when there is
//! one. A front end of relay.rs.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;

use crate::container_log::{LogWriter, Stream};
use crate::relay;

/// Relays between the host stdio and the pty master until `pid` exits; forwards the signals
/// in `signals` (blocked by the caller) to it and SIGWINCH as a resize; copies the output to
/// `log` if given. Returns the exit code.
pub fn run(
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
