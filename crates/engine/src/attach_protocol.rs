//! The attach protocol between a detached container's monitor and `strata attach` clients.
//!
//! The monitor (monitor.rs) holds the workload's stdio; while the workload runs it listens on
//! `<container dir>/attach.sock` (0600, reached through the directory's fd: the store path can
//! be longer than a socket address allows). Both directions carry frames: a kind byte, a
//! little-endian u32 length, the payload. The client sends stdin bytes and window sizes; the
//! monitor sends stdout, stderr and, last, the exit code. Any number of clients may attach;
//! each gets all output from the moment it connected (earlier output is in `strata logs`).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The socket's name in the container directory.
pub const SOCKET: &str = "attach.sock";

/// Client → monitor: bytes for the workload's stdin.
pub const STDIN: u8 = 0;
/// Client → monitor: the terminal's size (rows, columns as two little-endian u16).
pub const RESIZE: u8 = 1;
/// Monitor → client: workload output.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// Monitor → client: the workload's exit code (little-endian i32); the last frame.
pub const EXIT: u8 = 3;

/// Largest payload either side accepts; the peer is dropped past it.
pub const MAX_FRAME: usize = 64 * 1024;
/// Output queued for a client that does not read; it is dropped past this (the log keeps all).
pub const MAX_QUEUED: usize = 4 << 20;

/// One frame.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + payload.len());
    v.push(kind);
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// A peer announced a frame larger than [`MAX_FRAME`] (nothing sane does: the connection is
/// dropped).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("attach frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
pub struct FrameTooLarge(pub usize);

/// Takes the first complete frame off `buf`.
pub fn take_frame(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, FrameTooLarge> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameTooLarge(len));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let kind = buf[0];
    let payload = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some((kind, payload)))
}

/// The socket's address through an fd of the container directory.
pub fn socket_path(dir: BorrowedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()))
}

pub fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_hostile_lengths_are_refused() {
        let mut b = frame(STDOUT, b"hello");
        b.extend_from_slice(&frame(EXIT, &7i32.to_le_bytes()));
        b.extend_from_slice(&frame(STDERR, b"part")[..6]);
        assert_eq!(take_frame(&mut b), Ok(Some((STDOUT, b"hello".to_vec()))));
        assert_eq!(
            take_frame(&mut b),
            Ok(Some((EXIT, 7i32.to_le_bytes().to_vec())))
        );
        assert_eq!(take_frame(&mut b), Ok(None));
        let mut huge = vec![STDIN];
        huge.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert_eq!(take_frame(&mut huge), Err(FrameTooLarge(MAX_FRAME + 1)));
        // Random bytes never panic and never yield a frame past the limit.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut v: Vec<u8> = (0..(seed % 64) as usize)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            while let Ok(Some((_, p))) = take_frame(&mut v) {
                assert!(p.len() <= MAX_FRAME);
            }
        }
    }
}
