//! The wire framing: a fixed 16-byte header followed by a payload of at most [`MAX_PAYLOAD`] bytes.
//!
//! ```text
//! 0      4        5      6      8          12         16
//! | magic | version | type | flags | session | length | payload...
//! ```
//! All integers are little-endian. `flags` is reserved and must be zero. The magic lets a reader
//! that lost sync (line noise on a serial line, a hostile peer) find the next frame boundary.

use crate::message::{Message, PayloadError};
pub use crate::wire::{FrameType, MAX_PAYLOAD};

/// First four bytes of every frame ("\xF7STR"): 0xF7 is not valid UTF-8 on its own, so it is rare in text.
pub const MAGIC: [u8; 4] = [0xF7, b'S', b'T', b'R'];
/// Wire format version carried in every header.
pub const WIRE_VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 16;
/// Largest data chunk a sender puts in one stdin/stdout/stderr frame.
pub const DATA_CHUNK: usize = 32 * 1024;
/// Bytes a receiver buffers per data stream before the sender must wait for credit.
pub const INITIAL_WINDOW: u32 = 256 * 1024;
/// Upper bound on buffered undecoded input the decoder accepts (one maximal frame plus slack).
const MAX_BUFFERED: usize = HEADER_LEN + MAX_PAYLOAD + 64 * 1024;

/// One decoded frame: the session it belongs to and its typed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Session id: 0 is the connection itself, 1 the main process, 2.. are execs chosen by the host.
    pub session: u32,
    /// The typed message.
    pub message: Message,
}

impl Frame {
    /// Builds a frame.
    pub fn new(session: u32, message: Message) -> Self {
        Frame { session, message }
    }

    /// Encodes the frame and appends it to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(WIRE_VERSION);
        out.push(self.message.frame_type() as u8);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        self.message.encode_payload(out)?;
        let len = out.len() - start - HEADER_LEN;
        if len > MAX_PAYLOAD {
            out.truncate(start);
            return Err(EncodeError::TooLarge { len });
        }
        out[start + 12..start + 16].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }

    /// Encodes the frame into a new buffer.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut v = Vec::new();
        self.encode_into(&mut v)?;
        Ok(v)
    }
}

/// Errors while encoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The payload is larger than the protocol's hard limit.
    #[error("frame payload of {len} bytes exceeds the maximum of {MAX_PAYLOAD} bytes")]
    TooLarge { len: usize },
    /// A control payload could not be serialized.
    #[error("cannot serialize control payload: {0}")]
    Json(#[from] serde_json::Error),
}

/// Errors while decoding a frame. After any of them the [`Decoder`] has already skipped the bad
/// bytes and can be asked for the next frame.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The bytes at the frame boundary are not the protocol magic.
    #[error("bad frame magic {found:02x?} (expected {MAGIC:02x?}): peer is not speaking strata-proto or the stream lost sync")]
    BadMagic { found: [u8; 4] },
    /// The header carries a wire version this side does not speak.
    #[error("unsupported wire version {found} (this side speaks {WIRE_VERSION})")]
    BadVersion { found: u8 },
    /// Reserved header flags were set.
    #[error("reserved header flags {flags:#06x} are set")]
    BadFlags { flags: u16 },
    /// The header announces a payload above the hard limit.
    #[error("frame length {len} exceeds the maximum of {MAX_PAYLOAD} bytes")]
    Oversize { len: u32 },
    /// The frame type byte is not known.
    #[error("unknown frame type {ty:#04x} on session {session}")]
    UnknownType { ty: u8, session: u32 },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated { have: usize, need: usize },
    /// The payload of a known frame type is malformed.
    #[error("bad {ty:?} payload on session {session}: {source}")]
    Payload {
        ty: FrameType,
        session: u32,
        #[source]
        source: PayloadError,
    },
}

/// Incremental decoder: feed it bytes as they arrive, take frames out.
///
/// Memory is bounded: a header announcing more than [`MAX_PAYLOAD`] is refused before its payload
/// is buffered, so at most one maximal frame is ever held.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the undecoded bytes in `buf` (consumed bytes are compacted away lazily).
    pos: usize,
}

impl Decoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether the decoder wants more input before it could produce a frame. Readers should stop
    /// reading while this is false to keep memory bounded.
    pub fn wants_input(&self) -> bool {
        self.buffered() < MAX_BUFFERED
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Returns the next complete frame, `Ok(None)` when more bytes are needed, or an error for a
    /// malformed frame (the bad bytes are dropped so the next call resumes after them).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let p = self.pending();
        if p.len() < HEADER_LEN {
            // A partial header is only worth waiting for if it could still be a magic.
            let n = p.len().min(4);
            if p[..n] == MAGIC[..n] {
                return Ok(None);
            }
            let mut found = [0u8; 4];
            found[..n].copy_from_slice(&p[..n]);
            self.resync();
            return Err(DecodeError::BadMagic { found });
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&p[..HEADER_LEN]);
        if h[0..4] != MAGIC {
            let found = [h[0], h[1], h[2], h[3]];
            self.resync();
            return Err(DecodeError::BadMagic { found });
        }
        if h[4] != WIRE_VERSION {
            self.resync();
            return Err(DecodeError::BadVersion { found: h[4] });
        }
        let flags = u16::from_le_bytes([h[6], h[7]]);
        if flags != 0 {
            self.resync();
            return Err(DecodeError::BadFlags { flags });
        }
        let session = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        let len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        if len as usize > MAX_PAYLOAD {
            self.resync();
            return Err(DecodeError::Oversize { len });
        }
        let total = HEADER_LEN + len as usize;
        if p.len() < total {
            return Ok(None);
        }
        let result = match FrameType::from_u8(h[5]) {
            None => Err(DecodeError::UnknownType { ty: h[5], session }),
            Some(ty) => match Message::decode_payload(ty, &p[HEADER_LEN..total]) {
                Ok(message) => Ok(Some(Frame { session, message })),
                Err(source) => Err(DecodeError::Payload {
                    ty,
                    session,
                    source,
                }),
            },
        };
        self.consume(total);
        result
    }

    /// Call at end of stream: reports a frame cut short, if any bytes are left over.
    pub fn finish(&self) -> Result<(), DecodeError> {
        let p = self.pending();
        if p.is_empty() {
            return Ok(());
        }
        let need = if p.len() >= HEADER_LEN {
            HEADER_LEN + u32::from_le_bytes([p[12], p[13], p[14], p[15]]) as usize
        } else {
            HEADER_LEN
        };
        Err(DecodeError::Truncated {
            have: p.len(),
            need,
        })
    }

    /// Drops at least one byte, then everything up to the next possible magic.
    fn resync(&mut self) {
        let p = self.pending();
        let skip = p
            .iter()
            .enumerate()
            .skip(1)
            .find(|&(i, &b)| {
                if b != MAGIC[0] {
                    return false;
                }
                let rest = &p[i..];
                let n = rest.len().min(4);
                rest[..n] == MAGIC[..n]
            })
            .map(|(i, _)| i)
            .unwrap_or(p.len());
        self.consume(skip.max(1).min(p.len().max(1)));
    }
}
