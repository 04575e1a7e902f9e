//! Host side of the protocol: one [`Client`] per agent connection, one [`Session`] per guest
//! process (the main process from [`Client::create`], more from [`Client::exec`]).
//!
//! A reader thread demultiplexes frames into per-session buffers. Output buffers are bounded by
//! the credit window: the host grants credit only as the caller consumes output, so a slow reader
//! stalls the guest process (like a full pipe) instead of growing memory on either side.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::frame::{DecodeError, Decoder, EncodeError, Frame, DATA_CHUNK, INITIAL_WINDOW};
use crate::message::{CreateRequest, ExecRequest, ExitStatus, Hello, Message, StdStream};
use crate::PROTOCOL_VERSION;

/// Session id of the main (config.json) process.
pub const MAIN_SESSION: u32 = 1;
/// Default time to wait for the agent's handshake answer.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time to wait for the agent to answer a Start or an Exec (Started, or the error of a
/// process that could not run): the agent answers as soon as the process was spawned, so only a
/// hung guest (or an agent that cannot read the request) takes this long.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Consumed bytes are returned to the agent as credit once this many have accumulated.
const CREDIT_BATCH: u32 = INITIAL_WINDOW / 4;

/// Errors of the host client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Writing to the channel failed.
    #[error("cannot write to the agent channel while {step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// A message could not be encoded (e.g. a config.json above the frame size limit).
    #[error("cannot encode the {step} message: {source}")]
    Encode {
        step: &'static str,
        #[source]
        source: EncodeError,
    },
    /// The connection is gone or the agent sent something malformed; nothing more can be done on it.
    #[error("agent connection lost: {0}")]
    ConnectionLost(String),
    /// The agent did not answer in time.
    #[error("timed out after {0:?} waiting for the agent to {1}")]
    Timeout(Duration, &'static str),
    /// The agent refused a request.
    #[error("agent refused {step} (session {session}): {kind}: {message}")]
    Agent {
        step: &'static str,
        session: u32,
        kind: String,
        message: String,
    },
    /// The client was used out of order (e.g. `start` before `create`).
    #[error("{0}")]
    Usage(&'static str),
}

#[derive(Default)]
struct OutBuf {
    data: VecDeque<u8>,
    eof: bool,
    taken: bool,
    unacked: u32,
}

#[derive(Default)]
struct SessionState {
    started: Option<u32>,
    /// (request, kind, message) of the last refused request.
    error: Option<(String, String, String)>,
    exit: Option<ExitStatus>,
    stdout: OutBuf,
    stderr: OutBuf,
    stdin_credit: u32,
    stdin_taken: bool,
    /// Live handles (Session, StdinWriter, OutputReader) of this session. An exec session whose
    /// process has exited and that no handle names any more is forgotten (`release`), so a
    /// long-lived client (the VM keeper) does not grow by one entry per exec.
    handles: u32,
}

impl SessionState {
    fn new() -> Self {
        SessionState {
            stdin_credit: INITIAL_WINDOW,
            ..Default::default()
        }
    }
    fn out(&mut self, s: StdStream) -> &mut OutBuf {
        if s == StdStream::Stderr {
            &mut self.stderr
        } else {
            &mut self.stdout
        }
    }
}

#[derive(Default)]
struct State {
    hello: Option<Hello>,
    broken: Option<String>,
    /// Errors the agent reported for the connection as a whole (session 0).
    conn_errors: Vec<String>,
    created: bool,
    sessions: HashMap<u32, SessionState>,
    next_session: u32,
}

impl State {
    /// Forgets exec session `sid` once its process has exited and no handle names it. The main
    /// session stays: start, and the agent's power-off, refer to it for the client's lifetime.
    fn release(&mut self, sid: u32) {
        if sid == MAIN_SESSION {
            return;
        }
        if let Some(s) = self.sessions.get(&sid) {
            if s.handles == 0 && s.exit.is_some() {
                self.sessions.remove(&sid);
            }
        }
    }

    /// One more handle names session `sid`.
    fn hold(&mut self, sid: u32) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.handles += 1;
        }
    }

    /// A handle of session `sid` went away.
    fn drop_handle(&mut self, sid: u32) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.handles = s.handles.saturating_sub(1);
        }
        self.release(sid);
    }

    /// How many sessions the client keeps state for (the main one included).
    fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

/// Link-level flow control toward the agent (only when the agent asked for it).
#[derive(Default)]
struct Link {
    window: Option<u32>,
    /// Bytes written and not yet acknowledged by the agent.
    outstanding: u32,
}

struct Shared {
    writer: Mutex<Box<dyn Write + Send>>,
    link: Mutex<Link>,
    link_cond: Condvar,
    /// A socket to shut down when the last handle goes, which ends the reader thread.
    closer: Option<std::os::unix::net::UnixStream>,
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, session: u32, message: Message, step: &'static str) -> Result<(), ClientError> {
        let bytes = Frame::new(session, message)
            .encode()
            .map_err(|source| ClientError::Encode { step, source })?;
        self.write_raw(&bytes, step)
    }

    fn write_raw(&self, bytes: &[u8], step: &'static str) -> Result<(), ClientError> {
        if let Some(reason) = self.lock().broken.clone() {
            return Err(ClientError::ConnectionLost(reason));
        }
        let result = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            self.write_within_window(&mut **w, bytes)
                .and_then(|_| w.flush())
        };
        result.map_err(|source| {
            // The reader usually knows better why the channel is gone (a malformed frame, the
            // agent's EOF): give it a moment to say so.
            let why = self.wait_for(
                Some(Duration::from_millis(200)),
                "report the channel state",
                |st| st.broken.clone().map(Ok),
            );
            match why {
                Ok(reason) => ClientError::ConnectionLost(reason),
                Err(_) => ClientError::Io { step, source },
            }
        })
    }

    /// Writes `bytes`, never letting more than the agent's link window be unacknowledged.
    /// Lock order: `state` may be held while taking `link`, never the other way round.
    fn write_within_window(&self, w: &mut dyn Write, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if let Some(reason) = self.lock().broken.clone() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, reason));
            }
            let n = {
                let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
                let Some(window) = link.window else {
                    drop(link);
                    return w.write_all(bytes);
                };
                if link.outstanding >= window {
                    // Re-check the connection state at least every 100 ms while waiting.
                    let _ = self
                        .link_cond
                        .wait_timeout(link, Duration::from_millis(100))
                        .unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                let n = bytes.len().min((window - link.outstanding) as usize);
                link.outstanding += n as u32;
                n
            };
            w.write_all(&bytes[..n])?;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Waits until `ready` yields a value, the connection breaks, or `timeout` passes.
    fn wait_for<T>(
        &self,
        timeout: Option<Duration>,
        what: &'static str,
        mut ready: impl FnMut(&mut State) -> Option<Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        loop {
            if let Some(r) = ready(&mut st) {
                return r;
            }
            if let Some(reason) = &st.broken {
                return Err(ClientError::ConnectionLost(reason.clone()));
            }
            st = match deadline {
                None => self.cond.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(ClientError::Timeout(timeout.unwrap_or_default(), what));
                    }
                    self.cond
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    fn break_with(&self, reason: String) {
        let mut st = self.lock();
        if st.broken.is_none() {
            st.broken = Some(reason);
        }
        self.cond.notify_all();
        self.link_cond.notify_all();
    }

    /// Applies one frame from the agent. An Err means the agent violated the protocol.
    fn dispatch(&self, frame: Frame) -> Result<(), String> {
        let mut st = self.lock();
        let sid = frame.session;
        let result = match frame.message {
            Message::Hello(h) => {
                self.link.lock().unwrap_or_else(|p| p.into_inner()).window =
                    h.link_window.map(|w| w.max(64));
                st.hello = Some(h);
                Ok(())
            }
            Message::LinkAck(n) => {
                let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
                link.outstanding = link.outstanding.saturating_sub(n);
                self.link_cond.notify_all();
                Ok(())
            }
            Message::Error(e) if sid == 0 => {
                let text = format!("{}: {}", e.kind, e.message);
                if st.hello.is_none() {
                    // Before the handshake completes an error is fatal (e.g. version mismatch).
                    Err(format!("agent refused the handshake: {text}"))
                } else {
                    if st.conn_errors.len() < 64 {
                        st.conn_errors.push(text);
                    }
                    Ok(())
                }
            }
            Message::Error(e) => {
                match (st.sessions.get_mut(&sid), e.request) {
                    (Some(s), Some(request)) => s.error = Some((request, e.kind, e.message)),
                    (_, _) => {
                        if st.conn_errors.len() < 64 {
                            st.conn_errors
                                .push(format!("session {sid}: {}: {}", e.kind, e.message));
                        }
                    }
                }
                Ok(())
            }
            Message::Created if sid == MAIN_SESSION => {
                st.created = true;
                Ok(())
            }
            Message::Started(s) => {
                if let Some(sess) = st.sessions.get_mut(&sid) {
                    sess.started = Some(s.pid);
                }
                Ok(())
            }
            Message::Stdout(d) | Message::Stderr(d) if d.is_empty() => Ok(()),
            ref m @ (Message::Stdout(_) | Message::Stderr(_)) => {
                let stream = if matches!(m, Message::Stdout(_)) {
                    StdStream::Stdout
                } else {
                    StdStream::Stderr
                };
                let data = match frame.message {
                    Message::Stdout(d) | Message::Stderr(d) => d,
                    _ => Vec::new(),
                };
                match st.sessions.get_mut(&sid) {
                    Some(sess) => {
                        let buf = sess.out(stream);
                        // Everything buffered or consumed-but-not-yet-credited counts against the window.
                        let outstanding = buf.data.len() + buf.unacked as usize + data.len();
                        if outstanding > INITIAL_WINDOW as usize {
                            Err(format!(
                                "agent sent {outstanding} bytes of {stream:?} on session {sid}, beyond its {INITIAL_WINDOW}-byte credit"
                            ))
                        } else {
                            buf.data.extend(data);
                            Ok(())
                        }
                    }
                    None => Ok(()),
                }
            }
            Message::Close(stream @ (StdStream::Stdout | StdStream::Stderr)) => {
                if let Some(sess) = st.sessions.get_mut(&sid) {
                    sess.out(stream).eof = true;
                }
                Ok(())
            }
            Message::Credit {
                stream: StdStream::Stdin,
                bytes,
            } => {
                if let Some(sess) = st.sessions.get_mut(&sid) {
                    sess.stdin_credit = sess.stdin_credit.saturating_add(bytes).min(INITIAL_WINDOW);
                }
                Ok(())
            }
            Message::Exit(status) => {
                if let Some(sess) = st.sessions.get_mut(&sid) {
                    sess.exit = Some(status);
                }
                st.release(sid);
                Ok(())
            }
            other => Err(format!(
                "agent sent a {:?} message on session {sid}, which only the host may send",
                other.frame_type()
            )),
        };
        self.cond.notify_all();
        result
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(s) = &self.closer {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The reader holds only a weak reference, so dropping every handle drops `Shared` (and shuts
/// a socket channel down, which wakes this thread with EOF).
fn reader_loop(weak: Weak<Shared>, mut reader: Box<dyn Read + Send>) {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let result = reader.read(&mut buf);
        let Some(shared) = weak.upgrade() else { return };
        let n = match result {
            Ok(0) => {
                let why = match dec.finish() {
                    Ok(()) => "the agent closed the channel".to_string(),
                    Err(e) => format!("the agent closed the channel: {e}"),
                };
                shared.break_with(why);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                shared.break_with(format!("reading the agent channel failed: {e}"));
                return;
            }
        };
        dec.push(&buf[..n]);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    if let Err(why) = shared.dispatch(frame) {
                        shared.break_with(why);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // A malformed frame from the guest is refused: the guest is not trusted, so the
                    // connection is closed rather than guessing at resynchronisation.
                    let e: DecodeError = e;
                    shared.break_with(format!("malformed frame from the agent: {e}"));
                    return;
                }
            }
        }
    }
}

/// A connection to one strata-agent.
pub struct Client {
    shared: Arc<Shared>,
    agent: Hello,
    /// How long `start` and `exec` wait for the agent's answer, in milliseconds.
    answer_timeout_ms: std::sync::atomic::AtomicU64,
}

impl Client {
    /// Connects over a reader/writer pair (a socket's two halves, or the two pipes of a UML
    /// serial line) and performs the version handshake, waiting up to
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn new<R, W>(reader: R, writer: W) -> Result<Client, ClientError>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        Self::with_timeout(reader, writer, DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// Like [`Client::new`] with an explicit handshake timeout (it covers the guest's boot).
    pub fn with_timeout<R, W>(
        reader: R,
        writer: W,
        timeout: Duration,
    ) -> Result<Client, ClientError>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        Self::connect(Box::new(reader), Box::new(writer), None, timeout)
    }

    fn connect(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        closer: Option<std::os::unix::net::UnixStream>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let shared = Arc::new(Shared {
            link: Mutex::new(Link::default()),
            link_cond: Condvar::new(),
            closer,
            writer: Mutex::new(writer),
            state: Mutex::new(State {
                next_session: MAIN_SESSION + 1,
                ..Default::default()
            }),
            cond: Condvar::new(),
        });
        let rs = Arc::downgrade(&shared);
        thread::Builder::new()
            .name("strata-proto-reader".into())
            .spawn(move || reader_loop(rs, reader))
            .map_err(|source| ClientError::Io {
                step: "starting the reader thread",
                source,
            })?;
        // The agent speaks first (input sent before the guest opens its end of a UML serial
        // line is lost), then the host answers with the version it picked.
        let agent = shared.wait_for(Some(timeout), "announce itself", |st| {
            st.hello.clone().map(Ok)
        })?;
        if agent.min_version > PROTOCOL_VERSION || agent.max_version < PROTOCOL_VERSION {
            return Err(ClientError::Agent {
                step: "handshake",
                session: 0,
                kind: "version".into(),
                message: format!(
                    "agent speaks protocol versions {}..={}, this host speaks {PROTOCOL_VERSION}: use matching strata and agent builds",
                    agent.min_version, agent.max_version
                ),
            });
        }
        shared.send(
            0,
            Message::Hello(Hello {
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                software: format!("strata-proto {}", env!("CARGO_PKG_VERSION")),
                link_window: None,
                agent_start_us: None,
                hello_us: None,
                rehearsal_us: None,
            }),
            "sending hello",
        )?;
        Ok(Client {
            shared,
            agent,
            answer_timeout_ms: std::sync::atomic::AtomicU64::new(
                DEFAULT_ANSWER_TIMEOUT.as_millis() as u64,
            ),
        })
    }

    /// Connects over a Unix stream socket (the host end of a VM's channel, or a socketpair),
    /// waiting up to `timeout` for the agent to announce itself. The socket is shut down when
    /// the client and all its sessions are dropped.
    pub fn from_unix_stream(
        stream: std::os::unix::net::UnixStream,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let clone = |s: &std::os::unix::net::UnixStream| {
            s.try_clone().map_err(|source| ClientError::Io {
                step: "cloning the socket",
                source,
            })
        };
        let (reader, closer) = (clone(&stream)?, clone(&stream)?);
        Self::connect(Box::new(reader), Box::new(stream), Some(closer), timeout)
    }

    /// How long [`Client::start`] and [`Client::exec`] wait for the agent's answer before they
    /// fail with [`ClientError::Timeout`] (default [`DEFAULT_ANSWER_TIMEOUT`]).
    pub fn set_answer_timeout(&self, timeout: Duration) {
        self.answer_timeout_ms.store(
            timeout.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The agent's handshake answer (its software version).
    pub fn agent_hello(&self) -> &Hello {
        &self.agent
    }

    /// Errors the agent reported about the connection (e.g. malformed frames it dropped).
    pub fn connection_errors(&self) -> Vec<String> {
        self.shared.lock().conn_errors.clone()
    }

    /// Sends the OCI config.json; the agent builds the rootfs and holds the process until
    /// [`Client::start`]. Returns the main process's session, whose stdio may be taken now.
    pub fn create(&self, config_json: &[u8]) -> Result<Session, ClientError> {
        self.create_within(config_json, None)
    }

    /// [`Client::create`], giving up after `timeout` without the agent's answer (a guest that
    /// hangs while building its rootfs).
    pub fn create_within(
        &self,
        config_json: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Session, ClientError> {
        let config: serde_json::Value =
            serde_json::from_slice(config_json).map_err(|e| ClientError::Agent {
                step: "create",
                session: MAIN_SESSION,
                kind: "config".into(),
                message: format!("config.json is not valid JSON: {e}"),
            })?;
        {
            let mut st = self.shared.lock();
            if st.sessions.contains_key(&MAIN_SESSION) {
                return Err(ClientError::Usage(
                    "create was already called on this connection",
                ));
            }
            st.sessions.insert(MAIN_SESSION, SessionState::new());
        }
        self.shared.send(
            MAIN_SESSION,
            Message::Create(CreateRequest { config }),
            "create",
        )?;
        self.shared.wait_for(timeout, "create", |st| {
            if st.created {
                return Some(Ok(()));
            }
            take_error(st, MAIN_SESSION, "create")
        })?;
        Ok(self.session(MAIN_SESSION))
    }

    /// Releases the main process held by [`Client::create`]; returns its pid in the guest.
    pub fn start(&self) -> Result<u32, ClientError> {
        self.start_with(crate::StartRequest::default())
    }

    /// [`Client::start`] with what the agent must do first (a network taken over only now); a
    /// refusal of that is the start's error.
    pub fn start_with(&self, req: crate::StartRequest) -> Result<u32, ClientError> {
        {
            let mut st = self.shared.lock();
            if !st.created {
                return Err(ClientError::Usage(
                    "start called before a successful create",
                ));
            }
            // A refusal of an earlier start (already received: the agent answers in order)
            // must not be mistaken for the answer to this one.
            if let Some(s) = st.sessions.get_mut(&MAIN_SESSION) {
                s.error = None;
            }
        }
        self.shared
            .send(MAIN_SESSION, Message::Start(req), "start")?;
        self.wait_started(MAIN_SESSION, "start")
    }

    /// Runs another process (an OCI `process` object as JSON) in the container rootfs.
    pub fn exec(&self, process_json: &[u8], tty: bool) -> Result<ExecHandle, ClientError> {
        self.exec_with_stdin(process_json, tty, true)
    }

    /// [`Client::exec`]; `stdin` false: the process's stdin is at its end from the start (no
    /// stdin to send: the session's stdin writer must not be used).
    pub fn exec_with_stdin(
        &self,
        process_json: &[u8],
        tty: bool,
        stdin: bool,
    ) -> Result<ExecHandle, ClientError> {
        let process: serde_json::Value =
            serde_json::from_slice(process_json).map_err(|e| ClientError::Agent {
                step: "exec",
                session: 0,
                kind: "process".into(),
                message: format!("process JSON is not valid: {e}"),
            })?;
        let sid = {
            let mut st = self.shared.lock();
            let sid = st.next_session;
            st.next_session = sid
                .checked_add(1)
                .ok_or(ClientError::Usage("session ids exhausted"))?;
            // One handle from the start: the Session this returns (an Exit that arrives before
            // it is built must not release the entry).
            st.sessions.insert(
                sid,
                SessionState {
                    handles: 1,
                    ..SessionState::new()
                },
            );
            sid
        };
        // The session is named before the agent answers, so its Started/Exit land on it; if the
        // exec fails no handle will ever name it: forget it.
        let started = self
            .shared
            .send(
                sid,
                Message::Exec(ExecRequest {
                    process,
                    tty,
                    stdin,
                }),
                "exec",
            )
            .and_then(|()| self.wait_started(sid, "exec"));
        if let Err(e) = started {
            self.shared.lock().sessions.remove(&sid);
            return Err(e);
        }
        Ok(Session {
            shared: Arc::clone(&self.shared),
            id: sid,
        })
    }

    /// Asks the agent to kill everything and power the guest off.
    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.shared.send(0, Message::Shutdown, "shutdown")
    }

    /// Sends the guest new /etc/hosts and/or /etc/resolv.conf contents (a networked VM's peers
    /// changed); the agent reports a refusal as a connection error.
    pub fn net_files(&self, files: crate::message::NetFiles) -> Result<(), ClientError> {
        self.shared
            .send(0, Message::NetFiles(files), "send network files")
    }

    /// Sends a raw frame (for tests of the agent's handling of odd but well-formed input).
    pub fn send_raw_bytes(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.shared.write_raw(bytes, "sending raw bytes")
    }

    fn wait_started(&self, sid: u32, step: &'static str) -> Result<u32, ClientError> {
        let timeout = Duration::from_millis(
            self.answer_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        self.shared.wait_for(Some(timeout), step, |st| {
            let s = st.sessions.get(&sid)?;
            if let Some(pid) = s.started {
                return Some(Ok(pid));
            }
            if s.exit.is_some() {
                // The process could not be executed (126/127): its exit status and message on
                // stderr are there to read, like `docker run` of a missing command.
                return Some(Ok(0));
            }
            take_error(st, sid, step)
        })
    }

    /// How many sessions this client keeps state for: the main one plus every exec whose process
    /// is running or still has a handle (a diagnostic for leak tests).
    pub fn open_sessions(&self) -> usize {
        self.shared.lock().session_count()
    }

    fn session(&self, id: u32) -> Session {
        self.shared.lock().hold(id);
        Session {
            shared: Arc::clone(&self.shared),
            id,
        }
    }
}

fn take_error<T>(st: &mut State, sid: u32, step: &'static str) -> Option<Result<T, ClientError>> {
    let s = st.sessions.get_mut(&sid)?;
    if s.error
        .as_ref()
        .map_or(true, |(request, _, _)| request != step)
    {
        return None;
    }
    let (_, kind, message) = s.error.take()?;
    Some(Err(ClientError::Agent {
        step,
        session: sid,
        kind,
        message,
    }))
}

/// Handle of an exec'd process (same type as the main process's session).
pub type ExecHandle = Session;

/// One guest process: its stdio, resize, signals and exit status.
pub struct Session {
    shared: Arc<Shared>,
    id: u32,
}

impl Session {
    /// The session id on the wire.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The guest pid, once started (0 if the program could not be executed).
    pub fn pid(&self) -> Option<u32> {
        self.shared
            .lock()
            .sessions
            .get(&self.id)
            .and_then(|s| s.started)
    }

    /// Takes the stdin writer (once). Dropping it closes the process's stdin.
    pub fn take_stdin(&self) -> Option<StdinWriter> {
        let mut st = self.shared.lock();
        let s = st.sessions.get_mut(&self.id)?;
        if std::mem::replace(&mut s.stdin_taken, true) {
            return None;
        }
        st.hold(self.id);
        Some(StdinWriter {
            shared: Arc::clone(&self.shared),
            id: self.id,
            closed: false,
        })
    }

    /// Takes the stdout reader (once). With a tty, all output arrives here.
    pub fn take_stdout(&self) -> Option<OutputReader> {
        self.take_output(StdStream::Stdout)
    }

    /// Takes the stderr reader (once).
    pub fn take_stderr(&self) -> Option<OutputReader> {
        self.take_output(StdStream::Stderr)
    }

    fn take_output(&self, stream: StdStream) -> Option<OutputReader> {
        let mut st = self.shared.lock();
        let s = st.sessions.get_mut(&self.id)?;
        if std::mem::replace(&mut s.out(stream).taken, true) {
            return None;
        }
        st.hold(self.id);
        Some(OutputReader {
            shared: Arc::clone(&self.shared),
            id: self.id,
            stream,
        })
    }

    /// Sets the pty window size (ignored by the agent for sessions without a tty).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.shared
            .send(self.id, Message::Resize { rows, cols }, "resize")
    }

    /// Sends signal `sig` to the process.
    pub fn signal(&self, sig: i32) -> Result<(), ClientError> {
        self.shared.send(self.id, Message::Signal(sig), "signal")
    }

    /// Waits for the process to exit and acknowledges the status (after the main process's
    /// acknowledgement the agent powers the guest off). Output must be read concurrently: the
    /// agent reports the exit only after delivering all output.
    pub fn wait(&self) -> Result<ExitStatus, ClientError> {
        let id = self.id;
        let status = self.shared.wait_for(None, "report the exit status", |st| {
            st.sessions.get(&id).and_then(|s| s.exit).map(Ok)
        })?;
        // Best effort: the status is already known even if the channel has just closed.
        let _ = self
            .shared
            .send(id, Message::ExitAck, "acknowledging the exit");
        Ok(status)
    }

    /// Reads stdout and stderr to the end (whichever has data) and waits for the exit.
    /// Streams already taken are skipped.
    pub fn output(&self) -> Result<(Vec<u8>, Vec<u8>, ExitStatus), ClientError> {
        let mut out = self.take_stdout();
        let mut err = self.take_stderr();
        let (mut o, mut e) = (Vec::new(), Vec::new());
        while out.is_some() || err.is_some() {
            let id = self.id;
            let ready = self.shared.wait_for(None, "send output", |st| {
                let s = st.sessions.get(&id)?;
                let o_ready = out.is_some() && (!s.stdout.data.is_empty() || s.stdout.eof);
                let e_ready = err.is_some() && (!s.stderr.data.is_empty() || s.stderr.eof);
                (o_ready || e_ready).then_some(Ok((o_ready, e_ready)))
            })?;
            let mut buf = [0u8; 32 * 1024];
            for (ready, reader, sink) in [(ready.0, &mut out, &mut o), (ready.1, &mut err, &mut e)]
            {
                if !ready {
                    continue;
                }
                if let Some(r) = reader {
                    let n = r
                        .read(&mut buf)
                        .map_err(|e| ClientError::ConnectionLost(e.to_string()))?;
                    if n == 0 {
                        *reader = None;
                    } else {
                        sink.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        Ok((o, e, self.wait()?))
    }
}

/// Writes a session's stdin, waiting for credit from the agent. Dropping it closes stdin.
pub struct StdinWriter {
    shared: Arc<Shared>,
    id: u32,
    closed: bool,
}

impl StdinWriter {
    /// Closes stdin (the process reads EOF).
    pub fn close(mut self) -> Result<(), ClientError> {
        self.closed = true;
        self.shared
            .send(self.id, Message::Close(StdStream::Stdin), "closing stdin")
    }
}

impl Write for StdinWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let id = self.id;
        let n = self
            .shared
            .wait_for(None, "grant stdin credit", |st| {
                let s = st.sessions.get_mut(&id)?;
                if s.exit.is_some() {
                    return Some(Err(ClientError::Usage("the process has exited")));
                }
                if s.stdin_credit == 0 {
                    return None;
                }
                let n = buf.len().min(s.stdin_credit as usize).min(DATA_CHUNK);
                s.stdin_credit -= n as u32;
                Some(Ok(n))
            })
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        self.shared
            .send(id, Message::Stdin(buf[..n].to_vec()), "writing stdin")
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for StdinWriter {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self
                .shared
                .send(self.id, Message::Close(StdStream::Stdin), "closing stdin");
        }
        self.shared.lock().drop_handle(self.id);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.lock().drop_handle(self.id);
    }
}

impl Drop for OutputReader {
    fn drop(&mut self) {
        self.shared.lock().drop_handle(self.id);
    }
}

/// Reads a session's stdout or stderr; returns 0 at the stream's end.
pub struct OutputReader {
    shared: Arc<Shared>,
    id: u32,
    stream: StdStream,
}

impl Read for OutputReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let (id, stream) = (self.id, self.stream);
        let (n, credit) = self
            .shared
            .wait_for(None, "send output", |st| {
                let s = st.sessions.get_mut(&id)?;
                let b = s.out(stream);
                if b.data.is_empty() {
                    return b.eof.then_some(Ok((0, 0)));
                }
                let n = buf.len().min(b.data.len());
                let (front, back) = b.data.as_slices();
                let k = n.min(front.len());
                buf[..k].copy_from_slice(&front[..k]);
                buf[k..n].copy_from_slice(&back[..n - k]);
                b.data.drain(..n);
                b.unacked += n as u32;
                let credit = if b.unacked >= CREDIT_BATCH && !b.eof {
                    std::mem::take(&mut b.unacked)
                } else {
                    0
                };
                Some(Ok((n, credit)))
            })
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        if credit > 0 {
            self.shared
                .send(
                    id,
                    Message::Credit {
                        stream,
                        bytes: credit,
                    },
                    "granting output credit",
                )
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        }
        Ok(n)
    }
}
