//! Typed messages and their payload encodings. Control messages carry JSON; data and the small
//! fixed-size messages (credit, resize, signal) are binary so the hot path does no JSON work.

use serde::{Deserialize, Serialize};

use crate::wire::{FrameType, MAX_PAYLOAD};

/// Which standard stream of a session a data, close or credit message refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum StdStream {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
}

impl StdStream {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(StdStream::Stdin),
            1 => Some(StdStream::Stdout),
            2 => Some(StdStream::Stderr),
            _ => None,
        }
    }
}

/// Handshake, sent first by the host and answered by the agent with the version it picked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest protocol version the sender speaks.
    pub min_version: u32,
    /// Highest protocol version the sender speaks (in the answer: the chosen version).
    pub max_version: u32,
    /// Free-form software identification, e.g. "strata-agent 0.1.0".
    #[serde(default)]
    pub software: String,
    /// Agent only: the most bytes the host may have sent that the agent has not yet
    /// acknowledged with [`Message::LinkAck`]. Set when the channel is a tty: UML 6.1's serial
    /// driver stops delivering input for good once the tty's 4 KiB input buffer throttles, so
    /// the host must never get that far ahead. None: no limit (sockets, vsock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_window: Option<u32>,
    /// Agent only: the guest's CLOCK_BOOTTIME (microseconds since the guest kernel started
    /// its clock) when the agent began (PID 1's first step) and when it sent this Hello. The
    /// host splits its "VM process started → hello" time into the guest kernel's boot and the
    /// agent's set-up with it (the two clocks are never compared). Guest-controlled: the host
    /// clamps what it derives to what it measured itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_start_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello_us: Option<u64>,
    /// Agent only: how long the pooled VM's rehearsal took before this Hello (microseconds,
    /// guest clock; absent when the VM did not rehearse or the rehearsal failed). Informative:
    /// the host shows it, nothing depends on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehearsal_us: Option<u64>,
}

impl Hello {
    /// How long the agent took from its start to this Hello by the guest's clock, when the
    /// agent said (None when it did not, or the readings go backwards).
    pub fn agent_setup(&self) -> Option<std::time::Duration> {
        let (start, hello) = (self.agent_start_us?, self.hello_us?);
        hello
            .checked_sub(start)
            .map(std::time::Duration::from_micros)
    }
}

/// An error report. `session` in the frame header says which session it concerns (0: the
/// connection as a whole).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Machine-readable kind, e.g. "bad-frame", "create", "exec", "unknown-session".
    pub kind: String,
    /// Human-readable explanation of what went wrong and what to do.
    pub message: String,
    /// The request this error answers ("create", "start", "exec"); None for errors about the
    /// connection or about non-request messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// Host → agent: the OCI runtime config (config.json) of the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The config.json document, exactly as a container runtime would receive it.
    pub config: serde_json::Value,
}

/// Host → agent: run an additional process (OCI `process` object) in the container rootfs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// An OCI `process` object (args, env, cwd, user, terminal, rlimits...).
    pub process: serde_json::Value,
    /// Allocate a pty (overrides `process.terminal`).
    pub tty: bool,
    /// The host has stdin to send. False: the process's stdin is at its end from the start
    /// (the host's was /dev/null), so no stdin stream and no Close(stdin) frame are needed.
    /// Ignored with a tty (the pty is the process's stdin). Absent: true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub stdin: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Host → agent (session 0): new contents of the guest's /etc/hosts and/or /etc/resolv.conf
/// (the host rewrote its copy: a member joined or left the VM's network). The agent applies
/// them only to a guest whose network it configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetFiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv: Option<String>,
}

/// Host → agent (session 1): release the main process held by `Create`. Travels as an empty
/// payload when it asks nothing more (the default), so a plain `Start` is what it always was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The guest's network, taken over only now (the host's engine configured the VM's network
    /// namespace between create and start, as containerd's `ctr run --cni` does): the same keys
    /// and values as the `dev.strata.net.*` annotations of create (address, gateway, mtu, mac,
    /// hosts, resolv), applied before the main process runs. A map of strings; the agent checks
    /// every value before configuring anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<serde_json::Map<String, serde_json::Value>>,
    /// The host has stdin to send to the main process. False: its stdin is at its end from the
    /// start (the host's was /dev/null), so no stdin stream and no Close(stdin) frame, which
    /// would wake the guest while the workload starts. Ignored with a tty. Absent: true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub stdin: bool,
}

impl Default for StartRequest {
    fn default() -> StartRequest {
        StartRequest {
            network: None,
            stdin: true,
        }
    }
}

/// Agent → host: a session's process is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    /// The process id inside the guest.
    pub pid: u32,
}

/// Agent → host: how a session's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Shell-style exit code: the exit status, or 128+n for death by signal n, or 126/127 when
    /// the program could not be executed / was not found, 125 when a set-up step before exec
    /// failed (as for containers).
    pub code: i32,
    /// The signal that killed the process, if any.
    #[serde(default)]
    pub signal: Option<i32>,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    Error(ErrorMsg),
    /// Host → agent: kill everything, sync and power the guest off.
    Shutdown,
    /// Agent → host: the agent has read this many more bytes of the channel (see
    /// [`Hello::link_window`]).
    LinkAck(u32),
    Create(CreateRequest),
    /// Agent → host: the rootfs is ready and the main process is held until `Start`.
    Created,
    Start(StartRequest),
    Started(Started),
    Exec(ExecRequest),
    NetFiles(NetFiles),
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The sender will send no more data on this stream (stdin close from the host, output EOF
    /// from the agent).
    Close(StdStream),
    /// The receiver of `stream`'s data consumed `bytes` more: the sender may send that much more.
    Credit {
        stream: StdStream,
        bytes: u32,
    },
    /// Window size change of a session's pty.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Deliver a signal to the session's process.
    Signal(i32),
    Exit(ExitStatus),
    /// Host → agent: the exit status was received (the agent may power off after the main one).
    ExitAck,
}

/// Why a payload of a known frame type was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PayloadError {
    /// A JSON control payload is not valid UTF-8.
    #[error("control payload is not valid UTF-8 at byte {valid_up_to}")]
    Utf8 { valid_up_to: usize },
    /// A JSON control payload does not parse into the expected shape.
    #[error("control payload is not the expected JSON: {0}")]
    Json(String),
    /// A fixed-size payload has the wrong length.
    #[error("payload is {got} bytes, expected {expected}")]
    Length { got: usize, expected: usize },
    /// A stream byte is not 0, 1 or 2.
    #[error("unknown stream number {0}")]
    Stream(u8),
    /// A field value is out of range.
    #[error("{0}")]
    Value(&'static str),
}

fn json<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|e| PayloadError::Utf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    serde_json::from_str(text).map_err(|e| PayloadError::Json(e.to_string()))
}

fn fixed<const N: usize>(payload: &[u8]) -> Result<[u8; N], PayloadError> {
    payload.try_into().map_err(|_| PayloadError::Length {
        got: payload.len(),
        expected: N,
    })
}

fn empty(payload: &[u8]) -> Result<(), PayloadError> {
    fixed::<0>(payload).map(|_| ())
}

impl Message {
    /// The frame type this message travels as.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Message::Hello(_) => FrameType::Hello,
            Message::Error(_) => FrameType::Error,
            Message::Shutdown => FrameType::Shutdown,
            Message::LinkAck(_) => FrameType::LinkAck,
            Message::Create(_) => FrameType::Create,
            Message::Created => FrameType::Created,
            Message::Start(_) => FrameType::Start,
            Message::Started(_) => FrameType::Started,
            Message::Exec(_) => FrameType::Exec,
            Message::NetFiles(_) => FrameType::NetFiles,
            Message::Stdin(_) => FrameType::Stdin,
            Message::Stdout(_) => FrameType::Stdout,
            Message::Stderr(_) => FrameType::Stderr,
            Message::Close(_) => FrameType::Close,
            Message::Credit { .. } => FrameType::Credit,
            Message::Resize { .. } => FrameType::Resize,
            Message::Signal(_) => FrameType::Signal,
            Message::Exit(_) => FrameType::Exit,
            Message::ExitAck => FrameType::ExitAck,
        }
    }

    /// Appends the payload encoding to `out`.
    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        match self {
            Message::Hello(v) => serde_json::to_writer(out, v),
            Message::Error(v) => serde_json::to_writer(out, v),
            Message::Create(v) => serde_json::to_writer(out, v),
            Message::Started(v) => serde_json::to_writer(out, v),
            Message::Exec(v) => serde_json::to_writer(out, v),
            Message::NetFiles(v) => serde_json::to_writer(out, v),
            Message::Exit(v) => serde_json::to_writer(out, v),
            Message::Start(v) if *v != StartRequest::default() => serde_json::to_writer(out, v),
            Message::Shutdown | Message::Created | Message::Start(_) | Message::ExitAck => Ok(()),
            Message::Stdin(d) | Message::Stdout(d) | Message::Stderr(d) => {
                out.extend_from_slice(d);
                Ok(())
            }
            Message::Close(s) => {
                out.push(*s as u8);
                Ok(())
            }
            Message::Credit { stream, bytes } => {
                out.push(*stream as u8);
                out.extend_from_slice(&bytes.to_le_bytes());
                Ok(())
            }
            Message::Resize { rows, cols } => {
                out.extend_from_slice(&rows.to_le_bytes());
                out.extend_from_slice(&cols.to_le_bytes());
                Ok(())
            }
            Message::Signal(s) => {
                out.extend_from_slice(&s.to_le_bytes());
                Ok(())
            }
            Message::LinkAck(n) => {
                out.extend_from_slice(&n.to_le_bytes());
                Ok(())
            }
        }
    }

    /// Decodes a payload of type `ty`. Never panics; every malformed input is a [`PayloadError`].
    pub fn decode_payload(ty: FrameType, payload: &[u8]) -> Result<Message, PayloadError> {
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        Ok(match ty {
            FrameType::Hello => Message::Hello(json(payload)?),
            FrameType::Error => Message::Error(json(payload)?),
            FrameType::Create => {
                let req: CreateRequest = json(payload)?;
                if !req.config.is_object() {
                    return Err(PayloadError::Value("config must be a JSON object"));
                }
                Message::Create(req)
            }
            FrameType::Started => Message::Started(json(payload)?),
            FrameType::Exec => {
                let req: ExecRequest = json(payload)?;
                if !req.process.is_object() {
                    return Err(PayloadError::Value("process must be a JSON object"));
                }
                Message::Exec(req)
            }
            FrameType::NetFiles => Message::NetFiles(json(payload)?),
            FrameType::Exit => Message::Exit(json(payload)?),
            FrameType::Shutdown => empty(payload).map(|_| Message::Shutdown)?,
            FrameType::LinkAck => Message::LinkAck(u32::from_le_bytes(fixed::<4>(payload)?)),
            FrameType::Created => empty(payload).map(|_| Message::Created)?,
            FrameType::Start if payload.is_empty() => Message::Start(StartRequest::default()),
            FrameType::Start => Message::Start(json(payload)?),
            FrameType::ExitAck => empty(payload).map(|_| Message::ExitAck)?,
            FrameType::Stdin => Message::Stdin(payload.to_vec()),
            FrameType::Stdout => Message::Stdout(payload.to_vec()),
            FrameType::Stderr => Message::Stderr(payload.to_vec()),
            FrameType::Close => {
                let [b] = fixed::<1>(payload)?;
                Message::Close(StdStream::from_u8(b).ok_or(PayloadError::Stream(b))?)
            }
            FrameType::Credit => {
                let p = fixed::<5>(payload)?;
                let stream = StdStream::from_u8(p[0]).ok_or(PayloadError::Stream(p[0]))?;
                let bytes = u32::from_le_bytes([p[1], p[2], p[3], p[4]]);
                Message::Credit { stream, bytes }
            }
            FrameType::Resize => {
                let p = fixed::<4>(payload)?;
                Message::Resize {
                    rows: u16::from_le_bytes([p[0], p[1]]),
                    cols: u16::from_le_bytes([p[2], p[3]]),
                }
            }
            FrameType::Signal => {
                let p = fixed::<4>(payload)?;
                let sig = i32::from_le_bytes(p);
                if !(1..=64).contains(&sig) {
                    return Err(PayloadError::Value("signal number out of range 1..=64"));
                }
                Message::Signal(sig)
            }
        })
    }
}
