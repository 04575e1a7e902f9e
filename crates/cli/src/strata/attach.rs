//! `strata attach`: our stdio connected to a detached container's, through its monitor
//! (strata-engine: attach_server.rs is the monitor's side, attach_protocol.rs the frames). The
//! client relays our stdin and window size in and the output out, proxies signals, detaches on
//! the detach keys and exits with the workload's exit code.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;

use anyhow::{bail, Context};
use clap::{ArgAction, Args};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use strata_engine::attach_protocol::{
    frame, open_dir, socket_path, take_frame, EXIT, MAX_FRAME, RESIZE, STDERR, STDIN, STDOUT,
};
use strata_engine::records::State;
use strata_engine::{isolation, lifecycle, pty, relay};

use super::global_args::Global;

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
    let containers = g.paths().containers();
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
    let backend = isolation::backend(&rec.isolation, &g.root)?;
    let signals = strata_container::launch::block_forwarded_signals();
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut stdin_open = !a.no_stdin && rec.interactive;
    let raw = if rec.tty && stdin_open {
        pty::RawMode::enable(stdin.as_fd())
    } else {
        None
    };
    let mut w = &sock;
    let send_size = |w: &mut &UnixStream| {
        if let Some((r, c)) = pty::size(stdin.as_fd()).or_else(|| pty::size(stdout.as_fd())) {
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
                    Ok(Some((STDOUT, p))) => {
                        relay::write_all(stdout.as_fd(), &p);
                    }
                    Ok(Some((STDERR, p))) => {
                        relay::write_all(stderr.as_fd(), &p);
                    }
                    Ok(Some((EXIT, p))) if p.len() == 4 => {
                        break 'relay Some(i32::from_le_bytes([p[0], p[1], p[2], p[3]]))
                    }
                    Ok(None) => break,
                    Ok(Some(_)) | Err(_) => bail!("the container's monitor sent a bad frame"),
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
        None => lifecycle::recorded_exit_code(&containers, &rec.id),
    };
    std::process::exit(code)
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
