//! A small client of QEMU's machine protocol (QMP) over a connected unix socket, for the warm
//! pool's hand-over of a root disk ([`crate::qemu_hotplug`]).
//!
//! QEMU is the guest's host-side process: what it writes is untrusted input. Replies are read
//! with a deadline, one line of at most [`MAX_LINE`] bytes at a time, at most [`MAX_EVENTS`]
//! asynchronous events are skipped before a command's answer, and an error answer carries QEMU's
//! own `desc`. File descriptors go with a command as SCM_RIGHTS (`add-fd`).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest reply line accepted (QEMU's answers to the commands used here are < 4 KiB).
pub const MAX_LINE: usize = 64 << 10;
/// Events skipped while waiting for one command's answer.
pub const MAX_EVENTS: usize = 64;

/// What went wrong talking to QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed or timed out.
    #[error("QMP {step}: {source}")]
    Io {
        /// The command (or `greeting`) being read or sent.
        step: String,
        /// The underlying error.
        source: io::Error,
    },
    /// QEMU's answer is not QMP.
    #[error("QMP {step}: {why}")]
    Protocol {
        /// The command (or `greeting`).
        step: String,
        /// What is wrong with it.
        why: String,
    },
    /// QEMU refused the command.
    #[error("QEMU refused {command} ({class}): {desc}")]
    Refused {
        /// The command.
        command: String,
        /// QEMU's error class (e.g. `GenericError`).
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting (`{"QMP": ...}`).
    Greeting,
    /// An asynchronous event.
    Event(String),
    /// A command's success and its value.
    Return(Value),
    /// A command's failure: (class, desc).
    Error(String, String),
}

/// Parses one line from QEMU. Never panics (tested with hostile input).
pub fn parse(line: &[u8]) -> Result<Message, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    let Some(o) = v.as_object() else {
        return Err("not a JSON object".into());
    };
    if let Some(r) = o.get("return") {
        return Ok(Message::Return(r.clone()));
    }
    if let Some(e) = o.get("error") {
        let text = |k: &str| {
            e.get(k)
                .and_then(Value::as_str)
                .map(|s| s.chars().take(1024).collect::<String>())
        };
        return Ok(Message::Error(
            text("class").unwrap_or_else(|| "unknown".into()),
            text("desc").unwrap_or_else(|| "no description".into()),
        ));
    }
    if let Some(ev) = o.get("event") {
        let name = ev.as_str().unwrap_or("?").chars().take(64).collect();
        return Ok(Message::Event(name));
    }
    if o.contains_key("QMP") {
        return Ok(Message::Greeting);
    }
    Err("neither a return, an error, an event nor a greeting".into())
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    sock: UnixStream,
    /// Bytes read past the last line.
    buf: Vec<u8>,
    timeout: Duration,
}

impl Qmp {
    /// Reads QEMU's greeting and enters command mode (`qmp_capabilities`); each answer must come
    /// within `timeout`.
    pub fn handshake(sock: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        let mut q = Qmp::resume(sock, timeout);
        match q.message("greeting", Instant::now() + timeout)? {
            Message::Greeting => {}
            m => {
                return Err(QmpError::Protocol {
                    step: "greeting".into(),
                    why: format!("expected QEMU's greeting, got {m:?}"),
                })
            }
        }
        q.execute("qmp_capabilities", None, &[])?;
        Ok(q)
    }

    /// A connection that is already in command mode (handed over by another process).
    pub fn resume(sock: UnixStream, timeout: Duration) -> Qmp {
        Qmp {
            sock,
            buf: Vec::new(),
            timeout,
        }
    }

    /// The socket (to hand the connection to another process).
    pub fn into_socket(self) -> UnixStream {
        self.sock
    }

    /// Runs `command` with `arguments`, passing `fds` along (SCM_RIGHTS); returns its value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fds: &[RawFd],
    ) -> Result<Value, QmpError> {
        let mut req = serde_json::json!({ "execute": command });
        if let Some(a) = arguments {
            req["arguments"] = a;
        }
        let mut bytes = req.to_string().into_bytes();
        bytes.push(b'\n');
        let io = |source| QmpError::Io {
            step: command.into(),
            source,
        };
        self.send(&bytes, fds).map_err(io)?;
        let deadline = Instant::now() + self.timeout;
        for _ in 0..=MAX_EVENTS {
            match self.message(command, deadline)? {
                Message::Return(v) => return Ok(v),
                Message::Error(class, desc) => {
                    return Err(QmpError::Refused {
                        command: command.into(),
                        class,
                        desc,
                    })
                }
                Message::Event(_) => continue,
                Message::Greeting => {
                    return Err(QmpError::Protocol {
                        step: command.into(),
                        why: "a second greeting".into(),
                    })
                }
            }
        }
        Err(QmpError::Protocol {
            step: command.into(),
            why: format!("more than {MAX_EVENTS} events and no answer"),
        })
    }

    fn send(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let mut sent = 0;
        while sent < bytes.len() {
            let iov = [io::IoSlice::new(&bytes[sent..])];
            let rights = [ControlMessage::ScmRights(fds)];
            // The fds go with the first byte only.
            let cmsgs: &[ControlMessage] = if sent == 0 && !fds.is_empty() {
                &rights
            } else {
                &[]
            };
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => sent += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The next message, by `deadline`.
    fn message(&mut self, step: &str, deadline: Instant) -> Result<Message, QmpError> {
        let line = self.line(step, deadline)?;
        parse(&line).map_err(|why| QmpError::Protocol {
            step: step.into(),
            why,
        })
    }

    /// The next line (without its newline), at most [`MAX_LINE`] bytes, by `deadline`.
    fn line(&mut self, step: &str, deadline: Instant) -> Result<Vec<u8>, QmpError> {
        let io = |source| QmpError::Io {
            step: step.into(),
            source,
        };
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.len() > MAX_LINE {
                    break;
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("QEMU did not answer within {} ms", self.timeout.as_millis()),
                )));
            }
            self.sock.set_read_timeout(Some(left)).map_err(io)?;
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk) {
                Ok(0) => {
                    return Err(io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "QEMU closed its monitor (the VM ended?)",
                    )))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(QmpError::Protocol {
            step: step.into(),
            why: format!("an answer line longer than {MAX_LINE} bytes"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn messages() {
        assert_eq!(
            parse(br#"{"QMP": {"version": {}, "capabilities": []}}"#),
            Ok(Message::Greeting)
        );
        assert_eq!(
            parse(br#"{"return": {"fd": 3, "fdset-id": 0}}"#),
            Ok(Message::Return(serde_json::json!({"fd": 3, "fdset-id": 0})))
        );
        assert_eq!(
            parse(br#"{"error": {"class": "GenericError", "desc": "Could not open"}}"#),
            Ok(Message::Error(
                "GenericError".into(),
                "Could not open".into()
            ))
        );
        assert_eq!(
            parse(br#"{"error": 5}"#),
            Ok(Message::Error("unknown".into(), "no description".into()))
        );
        assert_eq!(
            parse(br#"{"timestamp": {}, "event": "RESET"}"#),
            Ok(Message::Event("RESET".into()))
        );
        for bad in [
            &b"[]"[..],
            b"",
            b"{",
            b"{}",
            b"\xff\xfe",
            b"null",
            b"{\"x\":1}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // A desc is cut, not trusted to be small.
        let long = format!(
            r#"{{"error": {{"class": "x", "desc": "{}"}}}}"#,
            "a".repeat(5000)
        );
        match parse(long.as_bytes()) {
            Ok(Message::Error(_, d)) => assert_eq!(d.len(), 1024),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn parser_survives_hostile_input() {
        let seeds: [&[u8]; 4] = [
            br#"{"return": {"fd": 3}}"#,
            br#"{"error": {"class": "GenericError", "desc": "x"}}"#,
            br#"{"event": "SHUTDOWN", "data": {"guest": true}}"#,
            br#"{"QMP": {"version": {"qemu": {"major": 7}}}}"#,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut d = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 5) {
                let at = (next() as usize) % d.len();
                match next() % 3 {
                    0 => d[at] = next() as u8,
                    1 => {
                        d.remove(at);
                    }
                    _ => d.insert(at, next() as u8),
                }
                if d.is_empty() {
                    break;
                }
            }
            let _ = parse(&d);
        }
    }

    /// A fake QEMU on the other end of a socketpair: what it writes is hostile.
    fn client_with(peer_writes: Vec<u8>) -> (Qmp, UnixStream) {
        let (a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let _ = b.write_all(&peer_writes);
            // Keep the peer open a little, so the client sees data, not EOF.
            std::thread::sleep(Duration::from_millis(300));
        });
        let (_, keep) = UnixStream::pair().unwrap();
        (Qmp::resume(a, Duration::from_millis(200)), keep)
    }

    #[test]
    fn answers_are_bounded_and_errors_carry_qemus_desc() {
        // An endless line.
        let (mut q, _k) = client_with(vec![b'x'; MAX_LINE + 10]);
        let e = q.execute("query-status", None, &[]).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        // Endless events.
        let ev = br#"{"event": "X"}"#.to_vec()
            .into_iter()
            .chain(*b"\n")
            .collect::<Vec<u8>>()
            .repeat(MAX_EVENTS + 2);
        let (mut q, _k) = client_with(ev);
        let e = q.execute("query-status", None, &[]).unwrap_err();
        assert!(e.to_string().contains("events and no answer"), "{e}");
        // Silence: a deadline, not a hang.
        let (mut q, _k) = client_with(Vec::new());
        let t = Instant::now();
        let e = q.execute("query-status", None, &[]).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(
            e.to_string().contains("did not answer") || e.to_string().contains("closed"),
            "{e}"
        );
        // A refusal says QEMU's words.
        let (mut q, _k) = client_with(
            b"{\"event\": \"RESET\"}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"Could not open '/dev/fdset/9'\"}}\n"
                .to_vec(),
        );
        let e = q.execute("blockdev-add", None, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "QEMU refused blockdev-add (GenericError): Could not open '/dev/fdset/9'"
        );
    }
}
