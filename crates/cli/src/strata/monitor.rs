//! The per-container monitor of detached containers (what conmon is to podman): a fork of
//! `strata` in its own session that starts the workload as its child, holds its stdout and
//! stderr, writes them to the log file as JSON lines, reaps it and records the exit code (or
//! removes an `--rm` container). No re-exec: forking the already-loaded binary is cheaper.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{bail, Context};
use nix::unistd::ForkResult;

use super::containers::{self, Containers, Record, State};
use super::instance::{self, Stdio};
use super::{lifecycle, run, tty, Global};

/// One line of the log file (Docker's json-file format).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// Starts `rec` under a new monitor; returns once the workload runs (or failed to start, with
/// the reason).
pub fn spawn(g: &Global, containers: &Containers, rec: Record) -> anyhow::Result<()> {
    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create status pipe")?;
    // SAFETY: strata is single-threaded; the child only runs the monitor and _exits.
    match unsafe { nix::unistd::fork() }.context("fork the monitor")? {
        ForkResult::Child => {
            drop(status_r);
            let code = monitor(g, containers, rec, status_w);
            // SAFETY: _exit in the forked child; nothing of the parent must run at exit.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { .. } => {
            drop(status_w);
            let mut msg = String::new();
            let _ = std::fs::File::from(status_r).read_to_string(&mut msg);
            match msg.strip_prefix("ok") {
                Some(_) => Ok(()),
                None if msg.is_empty() => {
                    bail!("the container monitor died before starting the container")
                }
                None => bail!("{}", msg.trim_start_matches("err ")),
            }
        }
    }
}

fn monitor(g: &Global, containers: &Containers, mut rec: Record, status: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    let mut status = std::fs::File::from(status);
    // Our stdio belonged to the `strata` that started us: let it go (the caller may be waiting
    // for EOF on a pipe), so nothing we or the workload print reaches it.
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        let _ = write!(status, "err open /dev/null");
        return 1;
    };
    for fd in 0..=2 {
        // SAFETY: dup2 of a live fd onto our stdio numbers.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    let dir = containers.dir(&rec.id);
    let fail = |rec: &mut Record, status: &mut std::fs::File, code: i32, msg: &str| {
        let _ = write!(status, "err {msg}");
        if rec.auto_remove {
            lifecycle::remove_all(g, containers, rec);
        } else {
            rec.state = State::Exited;
            rec.exit_code = Some(code);
            rec.finished = Some(containers::now());
            let _ = containers.save(rec);
        }
        1
    };
    let backend = match instance::backend(&rec.isolation, &g.root) {
        Ok(b) => b,
        Err(e) => return fail(&mut rec, &mut status, 125, &format!("{e:#}")),
    };
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(containers.log_path(&rec.id))
    {
        Ok(f) => f,
        Err(e) => {
            return fail(
                &mut rec,
                &mut status,
                125,
                &format!("open the log file: {e}"),
            )
        }
    };
    // Stdout and stderr: two pipes (or one pty with -t) that we read.
    let mut sources: Vec<(OwnedFd, &'static str)> = Vec::new();
    let mut held_stdin: Option<OwnedFd> = None;
    let started;
    let inner = if rec.tty {
        match backend.start_with_terminal(&rec.id, &dir) {
            Ok(t) => t,
            Err(e) => return fail(&mut rec, &mut status, e.code, &e.message),
        }
    } else {
        None
    };
    if let Some((pid, master)) = inner {
        started = Ok(pid);
        sources.push((master, "stdout"));
    } else if rec.tty {
        let pty = match tty::open(null.as_fd()).and_then(|p| {
            run::set_console(&dir, Some(&p.slave_path))?;
            Ok(p)
        }) {
            Ok(p) => p,
            Err(e) => return fail(&mut rec, &mut status, 125, &format!("{e:#}")),
        };
        let s = pty.slave.as_fd();
        started = backend.start(
            &rec.id,
            &dir,
            Stdio {
                stdin: s,
                stdout: s,
                stderr: s,
            },
        );
        drop(pty.slave);
        sources.push((pty.master, "stdout"));
    } else {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
        let pipes = pipe()
            .and_then(|o| pipe().map(|e| (o, e)))
            .and_then(|(o, e)| {
                // -i: the read end is the workload's stdin, the write end stays with us until it
                // exits, so `cat` or `sh` wait for input instead of seeing EOF.
                let i = if rec.interactive { Some(pipe()?) } else { None };
                Ok((o, e, i))
            });
        let ((out_r, out_w), (err_r, err_w), stdin_pipe) = match pipes {
            Ok(p) => p,
            Err(e) => return fail(&mut rec, &mut status, 125, &format!("create pipes: {e}")),
        };
        started = backend.start(
            &rec.id,
            &dir,
            Stdio {
                stdin: stdin_pipe
                    .as_ref()
                    .map(|(r, _)| r.as_fd())
                    .unwrap_or(null.as_fd()),
                stdout: out_w.as_fd(),
                stderr: err_w.as_fd(),
            },
        );
        drop((out_w, err_w));
        held_stdin = stdin_pipe.map(|(_, w)| w);
        sources.push((out_r, "stdout"));
        sources.push((err_r, "stderr"));
    }
    let pid = match started {
        Ok(p) => p,
        Err(e) => return fail(&mut rec, &mut status, e.code, &e.message),
    };
    rec.state = State::Running;
    rec.pid = Some(pid);
    rec.monitor_pid = Some(std::process::id() as i32);
    rec.started = Some(containers::now());
    rec.exit_code = None;
    rec.finished = None;
    let _ = containers.save(&rec);
    let _ = write!(status, "ok");
    drop(status);

    copy_to_log(sources, log);
    let code = wait(pid);
    drop(held_stdin);
    backend.delete(&rec.id);
    if rec.auto_remove {
        lifecycle::remove_all(g, containers, &rec);
    } else {
        // Re-read: `stop` may have recorded that it asked for the stop.
        rec.state = State::Exited;
        rec.exit_code = Some(code);
        rec.pid = None;
        rec.finished = Some(containers::now());
        let _ = containers.save(&rec);
    }
    0
}

fn wait(pid: i32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// Reads every source until EOF (the workload and everything it started exited: the pid
/// namespace ends with its init), one JSON line per output line.
fn copy_to_log(sources: Vec<(OwnedFd, &'static str)>, log: std::fs::File) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut log = std::io::BufWriter::new(log);
    let mut open: Vec<(OwnedFd, &'static str, Vec<u8>)> = sources
        .into_iter()
        .map(|(f, s)| (f, s, Vec::new()))
        .collect();
    let mut buf = vec![0u8; 64 * 1024];
    while !open.is_empty() {
        let mut fds: Vec<PollFd> = open
            .iter()
            .map(|(f, _, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|p| !p.revents().unwrap_or(PollFlags::empty()).is_empty())
            .collect();
        drop(fds);
        let mut closed = Vec::new();
        for (i, (fd, stream, pending)) in open.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) | Err(nix::Error::EIO) => closed.push(i),
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    emit_lines(&mut log, stream, pending, false);
                }
                Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            let (_, stream, mut pending) = open.remove(i);
            emit_lines(&mut log, stream, &mut pending, true);
        }
        // Flushed per read so `logs -f` sees lines as they come.
        let _ = log.flush();
    }
    let _ = log.flush();
}

/// Writes complete lines of `pending` (and the rest at EOF, or when a line grows past 16 KiB
/// as Docker splits them).
fn emit_lines(log: &mut impl Write, stream: &str, pending: &mut Vec<u8>, eof: bool) {
    let time = containers::now();
    let mut start = 0;
    while let Some(nl) = pending[start..].iter().position(|b| *b == b'\n') {
        write_line(log, stream, &pending[start..start + nl + 1], &time);
        start += nl + 1;
    }
    while pending.len() - start >= 16 * 1024 {
        write_line(log, stream, &pending[start..start + 16 * 1024], &time);
        start += 16 * 1024;
    }
    if eof && start < pending.len() {
        write_line(log, stream, &pending[start..], &time);
        start = pending.len();
    }
    pending.drain(..start);
}

fn write_line(log: &mut impl Write, stream: &str, bytes: &[u8], time: &str) {
    let line = LogLine {
        log: String::from_utf8_lossy(bytes).into_owned(),
        stream: stream.to_string(),
        time: time.to_string(),
    };
    if let Ok(s) = serde_json::to_string(&line) {
        let _ = writeln!(log, "{s}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workload's output is hostile input: random bytes (invalid UTF-8, NULs, escapes,
    /// lines far past the split size) in random chunks must give valid JSON lines whose text,
    /// joined, is the lossy decoding of what was written.
    #[test]
    fn hostile_output_gives_valid_log_lines() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..100 {
            let len = (next() % 70_000) as usize;
            let newline_rate = 1 + next() % 200;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % newline_rate == 0 {
                        b'\n'
                    } else {
                        (r >> 8) as u8
                    }
                })
                .collect();
            let mut out = Vec::new();
            let mut pending = Vec::new();
            let mut i = 0;
            while i < data.len() {
                let n = 1 + (next() % 9000) as usize;
                let end = (i + n).min(data.len());
                pending.extend_from_slice(&data[i..end]);
                emit_lines(&mut out, "stdout", &mut pending, false);
                assert!(pending.len() < 16 * 1024);
                i = end;
            }
            emit_lines(&mut out, "stdout", &mut pending, true);
            assert!(pending.is_empty());
            let text = String::from_utf8(out).expect("log is UTF-8");
            let mut bytes = 0;
            for l in text.lines() {
                let line: LogLine = serde_json::from_str(l).expect("every line is JSON");
                assert_eq!(line.stream, "stdout");
                assert!(!line.log.is_empty());
                bytes += line.log.len();
            }
            // Lossy decoding turns each invalid sequence into U+FFFD (3 bytes): never shorter.
            assert!(bytes >= data.len(), "{bytes} of {}", data.len());
        }
    }

    #[test]
    fn lines_are_split_and_partial_lines_wait() {
        let mut out = Vec::new();
        let mut p = b"a\nb\npart".to_vec();
        emit_lines(&mut out, "stdout", &mut p, false);
        assert_eq!(p, b"part");
        emit_lines(&mut out, "stdout", &mut p, true);
        assert!(p.is_empty());
        let lines: Vec<LogLine> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let logs: Vec<&str> = lines.iter().map(|l| l.log.as_str()).collect();
        assert_eq!(logs, ["a\n", "b\n", "part"]);
        let mut out = Vec::new();
        let mut p = vec![b'x'; 40 * 1024];
        emit_lines(&mut out, "stderr", &mut p, false);
        assert_eq!(p.len(), 8 * 1024);
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 2);
    }
}
