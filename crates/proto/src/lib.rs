//! strata-proto: the protocol between the host and strata-agent (PID 1 in the guest).
//!
//! One byte stream (a UML serial line, vsock on KVM, a socketpair in tests) carries framed,
//! versioned, multiplexed sessions: the main process and any number of execs, each with
//! stdin/stdout/stderr, stdin close, window resize, signals and an exit status. Data streams are
//! flow-controlled by credit ([`INITIAL_WINDOW`]) so neither side buffers without bound, and every
//! frame is at most [`MAX_PAYLOAD`] bytes. The codec is synchronous and std-only so the agent
//! stays small.
//!
//! Conversation:
//! ```text
//!                                           agent Hello (its versions)   ◀──
//! host  Hello (chosen version) ▶ agent
//! host  Create{config} (s=1) ──▶            Created / Error (s=1)        ◀──
//! host  Start (s=1) ───────────▶            Started{pid} (s=1)           ◀──
//! host  Exec{process,tty} (s=N)▶            Started{pid} (s=N)           ◀──
//! host  Stdin/Close/Resize/Signal/Credit    Stdout/Stderr/Close/Credit    ◀──
//!                                           Exit{code} after output EOF   ◀──
//! host  ExitAck (s) ──────────▶ (after the main session's: sync, power off)
//! host  NetFiles{hosts,resolv} (s=0) ▶ (any time: a networked guest's /etc files changed)
//! ```
//! The host must never rely on EOF (a UML serial line turns it into a hangup that drops input):
//! everything, including stdin close, is a frame. The agent speaks first, because input sent
//! before the guest opens its end of a serial line is lost. On a tty channel the agent's Hello
//! carries a link window: the host keeps at most that many bytes unacknowledged (the agent
//! answers every read with `LinkAck`), because UML 6.1's serial driver never resumes input after
//! the guest tty's 4 KiB buffer throttles.

pub mod client;
pub mod frame;
pub mod guest;
pub mod message;
pub mod wire;

pub use client::{
    Client, ClientError, ExecHandle, OutputReader, Session, StdinWriter, MAIN_SESSION,
};
pub use frame::{
    DecodeError, Decoder, EncodeError, Frame, FrameType, DATA_CHUNK, HEADER_LEN, INITIAL_WINDOW,
    MAGIC, MAX_PAYLOAD, WIRE_VERSION,
};
pub use guest::{halt_by_reboot, GuestParams, LowerFs, ParamError};
pub use message::{
    CreateRequest, ErrorMsg, ExecRequest, ExitStatus, Hello, Message, NetFiles, PayloadError,
    StartRequest, Started, StdStream,
};

/// The protocol version negotiated in the handshake. 2: `StartRequest::stdin` (an agent of
/// version 1 refuses the field; a host and agent of different versions part at the hello with
/// an error naming both, so a pooled VM booted by an older agent falls back to a cold boot).
pub const PROTOCOL_VERSION: u32 = 2;

/// Fuzzing entry point: runs the decoder over `data` fed in chunks whose sizes come from the
/// input itself, checking that it never panics, never buffers beyond its bound, always makes
/// progress, and that every decoded frame re-encodes to something that decodes to itself.
pub fn fuzz_decode(data: &[u8]) {
    let mut dec = Decoder::new();
    let step = data.first().map(|b| (*b as usize % 61) + 1).unwrap_or(1);
    for chunk in data.chunks(step) {
        dec.push(chunk);
        loop {
            let before = dec.buffered();
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    let bytes = frame.encode().expect("a decoded frame re-encodes");
                    let mut d2 = Decoder::new();
                    d2.push(&bytes);
                    let again = d2
                        .next_frame()
                        .expect("re-encoded frame decodes")
                        .expect("complete");
                    assert_eq!(again, frame);
                }
                Ok(None) => break,
                Err(_) => assert!(
                    dec.buffered() < before,
                    "decoder made no progress on an error"
                ),
            }
        }
        assert!(dec.buffered() <= HEADER_LEN + MAX_PAYLOAD + 64 * 1024);
    }
    let _ = dec.finish();
}

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod tests;
