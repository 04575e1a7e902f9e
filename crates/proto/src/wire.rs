//! What the frame codec (frame.rs) and the message payloads (message.rs) both name: the frame
//! types on the wire and the payload limit.

/// Hard maximum payload size of any frame (control or data). Larger lengths are refused unread.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The frame types on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Error = 0x02,
    Shutdown = 0x03,
    LinkAck = 0x04,
    Create = 0x10,
    Created = 0x11,
    Start = 0x12,
    Started = 0x13,
    Exec = 0x14,
    NetFiles = 0x15,
    Stdin = 0x20,
    Stdout = 0x21,
    Stderr = 0x22,
    Close = 0x23,
    Credit = 0x24,
    Resize = 0x25,
    Signal = 0x26,
    Exit = 0x27,
    ExitAck = 0x28,
}

impl FrameType {
    /// Maps a wire byte to a frame type.
    pub fn from_u8(b: u8) -> Option<Self> {
        use FrameType::*;
        Some(match b {
            0x01 => Hello,
            0x02 => Error,
            0x03 => Shutdown,
            0x04 => LinkAck,
            0x10 => Create,
            0x11 => Created,
            0x12 => Start,
            0x13 => Started,
            0x14 => Exec,
            0x15 => NetFiles,
            0x20 => Stdin,
            0x21 => Stdout,
            0x22 => Stderr,
            0x23 => Close,
            0x24 => Credit,
            0x25 => Resize,
            0x26 => Signal,
            0x27 => Exit,
            0x28 => ExitAck,
            _ => return None,
        })
    }
}
