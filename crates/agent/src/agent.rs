//! The agent's event loop: one thread, one poll(2) over the channel, a signalfd for SIGCHLD and
//! every session's stdio. Nothing here may panic: bad input becomes an Error frame.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use strata_proto::{
    CreateRequest, Decoder, ErrorMsg, ExecRequest, ExitStatus, Frame, GuestParams, Hello, Message,
    Started, StdStream, DATA_CHUNK, INITIAL_WINDOW, MAIN_SESSION, PROTOCOL_VERSION,
};
use tracing::{debug, warn};

use crate::process::{spawn, SpawnError, SpawnRequest};
use crate::spec::{Process, Spec};

/// How long the end of a process's output waits for its exit before it is sent alone (the
/// exit of a process takes well under this; see `Agent::run`).
const EXIT_LINGER: Duration = Duration::from_millis(2);

/// Stop reading workload output while this much is waiting to go out on the channel.
const MAX_OUT_QUEUE: usize = 1 << 20;
/// Stdin credit is returned to the host in batches of this size (or when the buffer drains).
const STDIN_CREDIT_BATCH: u32 = 16 * 1024;
/// After a process exits, output pipes still held open by its orphans are closed once they
/// have been silent this long, so the exit status is not held back forever.
const ORPHAN_OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// Bytes the host may have in flight toward a tty channel (see `Hello::link_window`).
const TTY_LINK_WINDOW: u32 = 2048;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Mode {
    /// PID 1 in a guest: assemble the rootfs, chroot processes, set the hostname, power off.
    pub pid1: bool,
    /// Guest parameters from /proc/cmdline (PID 1 mode).
    pub guest: GuestParams,
    /// Assemble the rootfs from `guest` and chroot processes into it without being PID 1 (the
    /// guest's rootfs logic tested on a host, inside a private mount namespace).
    pub assemble_rootfs: bool,
    /// [`boot_clock_us`] when the agent began (PID 1 mode), reported in the Hello.
    pub started_us: Option<u64>,
    /// How long the pooled VM's rehearsal took (crate::rehearsal), reported in the Hello.
    pub rehearsal_us: Option<u64>,
}

/// The guest's CLOCK_BOOTTIME in microseconds (time since its kernel started the clock).
pub fn boot_clock_us() -> Option<u64> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .ok()
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
}

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The main process finished and its status was acknowledged, or the host asked to shut down.
    Finished,
    /// The host closed the channel.
    ChannelClosed,
}

/// Setting up the loop failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot set up SIGCHLD handling: {0}")]
    Signals(Errno),
    #[error("poll failed: {0}")]
    Poll(Errno),
}

#[derive(Default)]
struct Session {
    pid: i32,
    stdin: Option<OwnedFd>,
    stdin_buf: VecDeque<u8>,
    stdin_close: bool,
    /// Stdin bytes received from the host and not yet credited back.
    stdin_outstanding: u32,
    /// Stdin bytes consumed (written or discarded) and not yet credited back.
    stdin_credit_due: u32,
    tty: bool,
    outs: [Option<OwnedFd>; 2],
    credit: [u32; 2],
    pty: Option<OwnedFd>,
    exit: Option<ExitStatus>,
    exit_sent: bool,
    last_output: Option<Instant>,
}

impl Session {
    fn new() -> Self {
        Session {
            credit: [INITIAL_WINDOW; 2],
            ..Default::default()
        }
    }
}

/// The agent state.
pub struct Agent {
    mode: Mode,
    chan: OwnedFd,
    dec: Decoder,
    out: VecDeque<u8>,
    sigfd: SignalFd,
    sessions: BTreeMap<u32, Session>,
    /// Children whose exit must be reaped but not reported (failed spawns).
    silent: HashSet<i32>,
    hello: bool,
    spec: Option<Spec>,
    rootfs: Option<PathBuf>,
    /// The guest's NIC was configured (at create, or by a start that took it over).
    network_applied: bool,
    started: bool,
    finishing: bool,
    /// Problems found before the handshake, reported right after it.
    pending_warnings: Vec<String>,
    /// Link window announced to the host (tty channels, see `Hello::link_window`).
    link_window: Option<u32>,
    /// The session of an output that reached its end, in this round of the loop, before its
    /// process was reaped.
    closed_before_exit: Option<u32>,
}

#[derive(Clone, Copy)]
enum Slot {
    Chan,
    Sig,
    Out(u32, usize),
    In(u32),
}

impl Agent {
    /// Prepares the loop on an open channel. Blocks SIGCHLD (delivered through a signalfd).
    pub fn new(chan: OwnedFd, mode: Mode) -> Result<Agent, AgentError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(AgentError::Signals)?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(AgentError::Signals)?;
        // SAFETY: ignoring SIGPIPE turns writes to closed pipes into EPIPE errors.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        // SAFETY: isatty only inspects the fd.
        let tty = unsafe { libc::isatty(chan.as_raw_fd()) } == 1;
        if !mode.pid1 {
            // Orphans of our sessions are reparented to us, so we reap them like PID 1 would.
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        Ok(Agent {
            mode,
            chan,
            dec: Decoder::new(),
            out: VecDeque::new(),
            sigfd,
            sessions: BTreeMap::new(),
            silent: HashSet::new(),
            hello: false,
            spec: None,
            rootfs: None,
            network_applied: false,
            started: false,
            finishing: false,
            pending_warnings: Vec::new(),
            // Half of n_tty's 4 KiB input buffer: the tty never throttles (which would end UML
            // 6.1 serial input for good) while the host keeps to this window.
            link_window: tty.then_some(TTY_LINK_WINDOW),
            closed_before_exit: None,
        })
    }

    /// Queues warnings (e.g. failed guest mounts) to report once the host has said hello.
    pub fn warn_after_hello(&mut self, warnings: Vec<String>) {
        self.pending_warnings.extend(warnings);
    }

    /// Runs until the workload is over or the host goes away.
    pub fn run(&mut self) -> Result<Outcome, AgentError> {
        self.announce();
        let mut chan_closed = self.flush();
        // After an output's end that is (most likely) its process exiting: the session and
        // until when its exit is waited for before anything is sent (see below).
        let mut linger: Option<(u32, Instant)> = None;
        loop {
            if (self.finishing || chan_closed) && self.out.is_empty() {
                break;
            }
            if chan_closed {
                // Nobody can read what is queued.
                break;
            }
            let (mut fds, slots) = self.poll_set();
            let timeout = match linger {
                Some((_, until)) => {
                    let left = until.saturating_duration_since(Instant::now());
                    left.as_micros().div_ceil(1000) as i32
                }
                None => self.poll_timeout(),
            };
            // SAFETY: fds is a live, correctly sized array of pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = Errno::last();
                if e == Errno::EINTR {
                    continue;
                }
                return Err(AgentError::Poll(e));
            }
            for (pfd, slot) in fds.iter().zip(slots) {
                let ev = pfd.revents;
                if ev == 0 {
                    continue;
                }
                match slot {
                    Slot::Chan => {
                        if ev & libc::POLLOUT != 0 {
                            chan_closed |= self.flush();
                        }
                        if ev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                            chan_closed |= self.read_channel();
                        }
                    }
                    Slot::Sig => self.reap(),
                    Slot::Out(sid, i) => self.read_output(sid, i),
                    Slot::In(sid) => self.write_stdin(sid),
                }
            }
            self.expire_orphan_outputs();
            self.report_exits();
            // A process that exits closes its stdout, then its stderr, then its parent gets
            // SIGCHLD; the first close wakes us (the kernel reschedules between the closes), and
            // we would send a frame per step: each a write and a wake-up of the host, and in UML
            // every guest system call of ours a ptrace round trip. So after an output's end
            // before its process's exit, nothing is sent until that exit is reaped or
            // EXIT_LINGER passed: the poll in between sleeps, which lets the exit finish. A
            // process that closed an output and lives on delays that Close by EXIT_LINGER.
            if let Some(sid) = self.closed_before_exit.take() {
                linger.get_or_insert((sid, Instant::now() + EXIT_LINGER));
            }
            if let Some((sid, until)) = linger {
                let reaped = self.sessions.get(&sid).map_or(true, |s| s.exit.is_some());
                if !reaped && !chan_closed && Instant::now() < until {
                    continue;
                }
                linger = None;
            }
            chan_closed |= self.flush();
        }
        self.kill_all();
        if !self.mode.pid1 {
            // Leave no zombie or straggler behind (PID 1 reaps in power_off instead).
            crate::guest::reap_all(Duration::from_secs(2));
        }
        Ok(if chan_closed && !self.finishing {
            Outcome::ChannelClosed
        } else {
            Outcome::Finished
        })
    }

    fn poll_set(&self) -> (Vec<libc::pollfd>, Vec<Slot>) {
        let mut fds = Vec::with_capacity(2 + self.sessions.len() * 3);
        let mut slots = Vec::with_capacity(fds.capacity());
        let mut push = |fd: i32, events: i16, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        let mut chan_ev = 0;
        // A host that sends but does not read (e.g. floods malformed frames, each answered with
        // an error) is not read from until it drains our answers: memory stays bounded.
        if self.dec.wants_input() && self.out.len() < 2 * MAX_OUT_QUEUE {
            chan_ev |= libc::POLLIN;
        }
        if !self.out.is_empty() {
            chan_ev |= libc::POLLOUT;
        }
        push(self.chan.as_raw_fd(), chan_ev, Slot::Chan);
        push(self.sigfd.as_fd().as_raw_fd(), libc::POLLIN, Slot::Sig);
        let room = self.out.len() < MAX_OUT_QUEUE;
        for (&sid, s) in &self.sessions {
            for i in 0..2 {
                if let Some(fd) = &s.outs[i] {
                    if room && s.credit[i] > 0 {
                        push(fd.as_raw_fd(), libc::POLLIN, Slot::Out(sid, i));
                    }
                }
            }
            if let Some(fd) = &s.stdin {
                if !s.stdin_buf.is_empty() {
                    push(fd.as_raw_fd(), libc::POLLOUT, Slot::In(sid));
                }
            }
        }
        (fds, slots)
    }

    fn poll_timeout(&self) -> i32 {
        let waiting = self
            .sessions
            .values()
            .any(|s| s.exit.is_some() && s.outs.iter().any(Option::is_some));
        if waiting {
            250
        } else {
            -1
        }
    }

    fn send(&mut self, session: u32, message: Message) {
        match Frame::new(session, message).encode() {
            Ok(bytes) => self.out.extend(bytes),
            Err(e) => warn!("dropping unencodable frame: {e}"),
        }
    }

    /// Reports a problem with a message that is not a request (data, signals, unknown sessions,
    /// malformed frames): on session 0, so it is never mistaken for the answer to a request.
    fn send_conn_error(&mut self, session: u32, kind: &str, message: String) {
        self.send_error(0, kind, format!("session {session}: {message}"));
    }

    /// Reports a connection-level problem or warning (session 0).
    fn send_error(&mut self, session: u32, kind: &str, message: String) {
        debug!(session, kind, "{message}");
        self.send(
            session,
            Message::Error(ErrorMsg {
                kind: kind.to_string(),
                message,
                request: None,
            }),
        );
    }

    /// Refuses a request (`request`: "create", "start" or "exec") on its session.
    fn refuse(&mut self, session: u32, request: &str, kind: &str, message: String) {
        debug!(session, request, kind, "{message}");
        self.send(
            session,
            Message::Error(ErrorMsg {
                kind: kind.to_string(),
                message,
                request: Some(request.to_string()),
            }),
        );
    }

    /// Writes as much queued output as the channel takes. Returns true if the channel is gone.
    fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            let (a, _) = self.out.as_slices();
            let n = nix::unistd::write(&self.chan, a);
            match n {
                Ok(0) => return true,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(Errno::EAGAIN) => return false,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("channel write failed: {e}");
                    return true;
                }
            }
        }
        false
    }

    /// Reads and handles frames. Returns true if the channel is closed.
    fn read_channel(&mut self) -> bool {
        let mut buf = [0u8; 64 * 1024];
        loop {
            if !self.dec.wants_input() || self.out.len() >= 2 * MAX_OUT_QUEUE {
                break;
            }
            match nix::unistd::read(self.chan.as_raw_fd(), &mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    self.dec.push(&buf[..n]);
                    if self.link_window.is_some() {
                        self.send(0, Message::LinkAck(n as u32));
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("channel read failed: {e}");
                    return true;
                }
            }
            self.decode_frames();
        }
        self.decode_frames();
        false
    }

    fn decode_frames(&mut self) {
        loop {
            match self.dec.next_frame() {
                Ok(Some(frame)) => self.handle(frame),
                Ok(None) => return,
                Err(e) => self.send_error(0, "bad-frame", format!("dropped malformed input: {e}")),
            }
        }
    }

    fn handle(&mut self, frame: Frame) {
        let sid = frame.session;
        debug!(session = sid, "received {:?}", frame.message.frame_type());
        if !self.hello && !matches!(frame.message, Message::Hello(_)) {
            self.send_conn_error(sid, "handshake", "send Hello before anything else".into());
            return;
        }
        match frame.message {
            Message::Hello(h) => self.on_hello(h),
            Message::Create(req) => self.on_create(sid, req),
            Message::Start(req) => self.on_start(sid, req),
            Message::Exec(req) => self.on_exec(sid, req),
            Message::Shutdown => {
                self.kill_all();
                self.finishing = true;
            }
            // Outside a guest (tests) there are no guest /etc files to rewrite.
            Message::NetFiles(f) => {
                if self.mode.pid1 {
                    if let Err(e) = crate::net::update_files(Path::new(crate::net::FILES_DIR), &f) {
                        self.send_error(0, "network", e);
                    }
                }
            }
            Message::Stdin(data) => self.on_stdin(sid, data),
            Message::Close(StdStream::Stdin) => self.with_session(sid, |s| s.stdin_close = true),
            Message::Credit { stream, bytes } if stream != StdStream::Stdin => {
                self.with_session(sid, |s| {
                    let i = stream as usize - 1;
                    s.credit[i] = s.credit[i].saturating_add(bytes).min(INITIAL_WINDOW);
                })
            }
            Message::Resize { rows, cols } => self.with_session(sid, |s| {
                if let Some(pty) = &s.pty {
                    strata_tty::set_size(pty.as_fd(), rows, cols);
                }
            }),
            Message::Signal(sig) => self.with_session(sid, |s| {
                if s.pid > 0 && s.exit.is_none() {
                    // SAFETY: kill with a pid we spawned and not yet reaped, and a range-checked signal.
                    unsafe { libc::kill(s.pid, sig) };
                }
            }),
            Message::ExitAck => {
                if sid == MAIN_SESSION && self.sessions.get(&sid).is_some_and(|s| s.exit_sent) {
                    self.finishing = true;
                } else if self.sessions.get(&sid).is_some_and(|s| s.exit_sent) {
                    self.sessions.remove(&sid);
                }
            }
            other => self.send_conn_error(
                sid,
                "unexpected",
                format!(
                    "{:?} is not a message the host may send",
                    other.frame_type()
                ),
            ),
        }
        self.pump_stdin(sid);
    }

    fn with_session(&mut self, sid: u32, f: impl FnOnce(&mut Session)) {
        match self.sessions.get_mut(&sid) {
            Some(s) => f(s),
            None => self.send_conn_error(sid, "unknown-session", format!("no session {sid}")),
        }
    }

    /// The agent speaks first: input sent to a UML serial line before the guest opens it is
    /// dropped, so the host waits for this announcement before sending anything.
    fn announce(&mut self) {
        self.send(
            0,
            Message::Hello(Hello {
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
                software: format!("strata-agent {}", env!("CARGO_PKG_VERSION")),
                link_window: self.link_window,
                agent_start_us: self.mode.started_us,
                hello_us: self.mode.started_us.and(boot_clock_us()),
                rehearsal_us: self.mode.rehearsal_us,
            }),
        );
    }

    fn on_hello(&mut self, h: Hello) {
        if h.min_version > PROTOCOL_VERSION || h.max_version < PROTOCOL_VERSION {
            self.send_error(
                0,
                "version",
                format!(
                    "host speaks protocol versions {}..={}, this agent speaks {PROTOCOL_VERSION}: use matching strata and agent builds",
                    h.min_version, h.max_version
                ),
            );
            return;
        }
        self.hello = true;
        for w in std::mem::take(&mut self.pending_warnings) {
            self.send_error(0, "warning", w);
        }
    }

    fn on_create(&mut self, sid: u32, req: CreateRequest) {
        if sid != MAIN_SESSION {
            return self.refuse(
                sid,
                "create",
                "create",
                format!("create must use session {MAIN_SESSION}"),
            );
        }
        if self.spec.is_some() {
            return self.refuse(
                sid,
                "create",
                "create",
                "the container was already created".into(),
            );
        }
        let spec = match Spec::from_value(req.config) {
            Ok(s) => s,
            Err(e) => return self.refuse(sid, "create", "config", e.to_string()),
        };
        let network = match crate::net::GuestNet::from_annotations(&spec.annotations) {
            Ok(n) => n,
            Err(e) => return self.refuse(sid, "create", "config", e.to_string()),
        };
        if self.mode.pid1 || self.mode.assemble_rootfs {
            let root = match crate::guest::assemble_rootfs(&self.mode.guest) {
                Ok(r) => r,
                Err(e) => return self.refuse(sid, "create", "rootfs", e.to_string()),
            };
            if root != std::path::Path::new("/") {
                match crate::mounts::apply_mounts(&root, &spec.mounts) {
                    Ok(warnings) => {
                        for w in warnings {
                            self.send_error(0, "warning", w);
                        }
                    }
                    Err(e) => return self.refuse(sid, "create", "mounts", e.to_string()),
                }
                if spec.root.as_ref().is_some_and(|r| r.readonly) {
                    if let Err(e) = crate::mounts::remount_readonly(&root) {
                        return self.refuse(sid, "create", "rootfs", e.to_string());
                    }
                }
            }
            if let Some(h) = spec.hostname.as_ref().filter(|_| self.mode.pid1) {
                if let Err(e) = crate::guest::set_hostname(h) {
                    self.send_error(0, "warning", format!("cannot set hostname {h:?}: {e}"));
                }
            }
            if self.mode.pid1 {
                if let Err(e) = crate::net::loopback_up() {
                    self.send_error(0, "warning", format!("cannot bring lo up: {e}"));
                }
                if let Some(n) = &network {
                    if let Err(e) = crate::net::apply(n, &root) {
                        return self.refuse(sid, "create", "network", e);
                    }
                }
                self.network_applied = network.is_some();
            }
            self.rootfs = Some(root);
        }
        self.spec = Some(spec);
        self.sessions.insert(MAIN_SESSION, Session::new());
        self.send(sid, Message::Created);
    }

    fn on_start(&mut self, sid: u32, req: strata_proto::StartRequest) {
        if sid != MAIN_SESSION {
            return self.refuse(
                sid,
                "start",
                "start",
                format!("start must use session {MAIN_SESSION}"),
            );
        }
        if self.started {
            return self.refuse(
                sid,
                "start",
                "start",
                "the main process was already started".into(),
            );
        }
        let Some(process) = self.spec.as_ref().and_then(|s| s.process.clone()) else {
            return self.refuse(
                sid,
                "start",
                "start",
                "start before a successful create".into(),
            );
        };
        let stdin = req.stdin;
        // A network the host took over only now: configured before the main process runs, and
        // its refusal is the start's.
        if let Some(map) = req.network {
            let net = match crate::net::GuestNet::from_annotations(&serde_json::Value::Object(map))
            {
                Ok(Some(n)) => n,
                Ok(None) => {
                    return self.refuse(
                        sid,
                        "start",
                        "config",
                        format!("start's network has no {}", crate::net::ADDRESS),
                    )
                }
                Err(e) => return self.refuse(sid, "start", "config", e.to_string()),
            };
            if self.network_applied {
                return self.refuse(
                    sid,
                    "start",
                    "network",
                    "the network was already configured at create".into(),
                );
            }
            if self.mode.pid1 {
                let root = self.rootfs.clone().unwrap_or_else(|| "/".into());
                if let Err(e) = crate::net::apply(&net, &root) {
                    return self.refuse(sid, "start", "network", e);
                }
            }
            self.network_applied = true;
        }
        self.started = true;
        let tty = process.terminal;
        self.launch(sid, &process, tty, stdin);
    }

    fn on_exec(&mut self, sid: u32, req: ExecRequest) {
        if sid <= MAIN_SESSION || self.sessions.contains_key(&sid) {
            return self.send_conn_error(
                sid,
                "exec",
                format!("session id {sid} is reserved or in use"),
            );
        }
        if self.spec.is_none() {
            return self.refuse(
                sid,
                "exec",
                "exec",
                "exec before create: there is no container yet".into(),
            );
        }
        let process = match Process::from_value(req.process) {
            Ok(p) => p,
            Err(e) => return self.refuse(sid, "exec", "process", e.to_string()),
        };
        self.sessions.insert(sid, Session::new());
        self.launch(sid, &process, req.tty, req.stdin);
    }

    fn launch(&mut self, sid: u32, process: &Process, tty: bool, stdin: bool) {
        let root = self
            .rootfs
            .clone()
            .filter(|r| r != std::path::Path::new("/"));
        let result = spawn(&SpawnRequest {
            process,
            tty,
            stdin,
            root: root.as_deref(),
        });
        match result {
            Ok(child) => {
                debug!(session = sid, pid = child.pid, "started {:?}", process.args);
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.pid = child.pid;
                    s.tty = tty;
                    s.stdin_close |= child.stdin.is_none();
                    s.stdin = child.stdin;
                    s.outs = [Some(child.stdout), child.stderr];
                    s.pty = child.pty;
                }
                self.send(
                    sid,
                    Message::Started(Started {
                        pid: child.pid as u32,
                    }),
                );
                self.pump_stdin(sid);
            }
            Err(e @ SpawnError::Child { pid, .. }) => {
                self.silent.insert(pid);
                let code = e.exit_code();
                let text = format!("strata-agent: {e}\n").into_bytes();
                let stream = if tty {
                    Message::Stdout(text)
                } else {
                    Message::Stderr(text)
                };
                self.send(sid, stream);
                self.send(sid, Message::Close(StdStream::Stdout));
                self.send(sid, Message::Close(StdStream::Stderr));
                let status = ExitStatus { code, signal: None };
                self.send(sid, Message::Exit(status));
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.exit = Some(status);
                    s.exit_sent = true;
                }
                if sid == MAIN_SESSION {
                    self.kill_all();
                }
            }
            Err(e @ SpawnError::Prepare { .. }) => {
                if sid != MAIN_SESSION {
                    self.sessions.remove(&sid);
                } else {
                    self.started = false;
                }
                self.refuse(
                    sid,
                    if sid == MAIN_SESSION { "start" } else { "exec" },
                    "spawn",
                    e.to_string(),
                );
            }
        }
    }

    fn on_stdin(&mut self, sid: u32, data: Vec<u8>) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return self.send_conn_error(sid, "unknown-session", format!("no session {sid}"));
        };
        if s.stdin_close {
            return self.send_conn_error(sid, "stdin", "stdin data after stdin close".into());
        }
        let len = data.len() as u32;
        if s.stdin_outstanding.saturating_add(len) > INITIAL_WINDOW {
            return self.send_conn_error(
                sid,
                "credit",
                format!("{len} bytes of stdin beyond the granted credit dropped"),
            );
        }
        s.stdin_outstanding += len;
        s.stdin_buf.extend(data);
    }

    /// Moves buffered stdin into the process, returns credit, and closes stdin when asked.
    fn pump_stdin(&mut self, sid: u32) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.pid == 0 && s.exit.is_none() {
            return; // not started yet: keep buffering within the credit
        }
        let mut consumed = 0u32;
        while !s.stdin_buf.is_empty() {
            let Some(fd) = &s.stdin else {
                consumed += s.stdin_buf.len() as u32;
                s.stdin_buf.clear();
                break;
            };
            let (a, _) = s.stdin_buf.as_slices();
            match nix::unistd::write(fd, a) {
                Ok(n) => {
                    s.stdin_buf.drain(..n);
                    consumed += n as u32;
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    // The process closed its stdin or exited: discard, like a broken pipe.
                    s.stdin = None;
                }
            }
        }
        if s.stdin_close && s.stdin_buf.is_empty() {
            if let Some(fd) = s.stdin.take() {
                if s.tty {
                    // A pty has no EOF of its own: ^D at the start of a line is the terminal's.
                    let _ = nix::unistd::write(&fd, b"\x04");
                }
            }
        }
        s.stdin_credit_due += consumed;
        let due = s.stdin_credit_due;
        if due > 0 && (due >= STDIN_CREDIT_BATCH || s.stdin_buf.is_empty()) {
            s.stdin_credit_due = 0;
            s.stdin_outstanding = s.stdin_outstanding.saturating_sub(due);
            self.send(
                sid,
                Message::Credit {
                    stream: StdStream::Stdin,
                    bytes: due,
                },
            );
        }
    }

    fn write_stdin(&mut self, sid: u32) {
        self.pump_stdin(sid);
    }

    fn read_output(&mut self, sid: u32, i: usize) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(fd) = &s.outs[i] else { return };
        let want = (s.credit[i] as usize).min(DATA_CHUNK);
        if want == 0 {
            return;
        }
        let mut buf = vec![0u8; want];
        let msg = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(Errno::EIO) => None, // EIO: every pty slave is closed
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(Errno::EAGAIN | Errno::EINTR) => return,
            Err(e) => {
                warn!(session = sid, "output read failed: {e}");
                None
            }
        };
        let stream = if i == 0 {
            StdStream::Stdout
        } else {
            StdStream::Stderr
        };
        match msg {
            Some(data) => {
                s.credit[i] -= data.len() as u32;
                s.last_output = Some(Instant::now());
                let m = if i == 0 {
                    Message::Stdout(data)
                } else {
                    Message::Stderr(data)
                };
                self.send(sid, m);
            }
            None => {
                s.outs[i] = None;
                let before_exit = s.exit.is_none();
                if s.tty {
                    s.outs = [None, None];
                    self.send(sid, Message::Close(StdStream::Stderr));
                }
                self.send(sid, Message::Close(stream));
                if before_exit {
                    self.closed_before_exit = Some(sid);
                }
            }
        }
    }

    fn expire_orphan_outputs(&mut self) {
        let now = Instant::now();
        let mut closes = Vec::new();
        for (&sid, s) in self.sessions.iter_mut() {
            let Some(_) = s.exit else { continue };
            let quiet = s
                .last_output
                .map_or(true, |t| now.duration_since(t) >= ORPHAN_OUTPUT_GRACE);
            for i in 0..2 {
                // Only a pipe we could read from (credit left) counts as abandoned.
                if s.outs[i].is_some() && s.credit[i] > 0 && quiet {
                    s.outs[i] = None;
                    closes.push((
                        sid,
                        if i == 0 {
                            StdStream::Stdout
                        } else {
                            StdStream::Stderr
                        },
                    ));
                }
            }
        }
        for (sid, st) in closes {
            self.send(sid, Message::Close(st));
        }
    }

    fn reap(&mut self) {
        while let Ok(Some(_)) = self.sigfd.read_signal() {}
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a local integer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if self.silent.remove(&pid) {
                continue;
            }
            let Some(st) = crate::process::exit_status(status) else {
                continue;
            };
            let sid = self
                .sessions
                .iter()
                .find(|(_, s)| s.pid == pid && s.exit.is_none())
                .map(|(k, _)| *k);
            if let Some(sid) = sid {
                debug!(session = sid, pid, code = st.code, "process exited");
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.exit = Some(st);
                    s.last_output = Some(Instant::now());
                    s.stdin = None;
                }
                if sid == MAIN_SESSION {
                    // The container ends with its main process, as with runc.
                    self.kill_all();
                }
            }
        }
    }

    fn report_exits(&mut self) {
        let ready: Vec<(u32, ExitStatus)> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.exit_sent && s.outs.iter().all(Option::is_none))
            .filter_map(|(k, s)| s.exit.map(|e| (*k, e)))
            .collect();
        for (sid, st) in ready {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.exit_sent = true;
            }
            self.send(sid, Message::Exit(st));
        }
    }

    /// Kills every workload process (each session is its own process group; in PID 1 mode,
    /// everything in the guest).
    fn kill_all(&mut self) {
        if self.mode.pid1 {
            // SAFETY: kill(-1) from PID 1 signals every other process in the guest.
            unsafe { libc::kill(-1, libc::SIGKILL) };
            return;
        }
        for s in self.sessions.values() {
            if s.pid > 0 {
                // SAFETY: signals the process group our child created with setsid; the group
                // outlives its leader while orphans remain in it.
                unsafe { libc::kill(-s.pid, libc::SIGKILL) };
            }
        }
    }
}
