//! The typed channel between the runtime and the processes it starts (init, exec, the
//! namespace-joining intermediate): one `Message` per SOCK_SEQPACKET datagram, never ad-hoc bytes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};

/// Everything that crosses the channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// runtime → init, twice: first "your cgroup directories exist" (the init waits for it only
    /// before it binds them into its rootfs), then "uid/gid maps are written and you are in your
    /// cgroups" (see init.rs step 1); runtime → exec'd process: go on.
    Proceed,
    /// intermediate → runtime: the pid (in the runtime's pid namespace) of the process it cloned.
    ChildPid(i32),
    /// child → runtime: mounts are done, run the prestart/createRuntime hooks now.
    HooksRequest,
    /// runtime → child: the runtime's hooks ran; go on to pivot_root.
    HooksDone,
    /// child → runtime: set-up is done; the process is about to wait for `start` (or exec).
    Ready,
    /// child → runtime: a step failed; the runtime reports it and cleans up.
    Failed(String),
    /// init → runtime (`run` only): the CLOCK_REALTIME nanoseconds read right before execve of
    /// the workload; the channel's close by that execve confirms it took effect.
    Exec(u64),
}

/// Channel errors.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel: {0}")]
    Sys(#[from] nix::Error),
    #[error("channel: malformed message: {0}")]
    Decode(String),
    #[error("channel: peer closed before sending a message")]
    Closed,
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// Creates a connected pair (close-on-exec, so a successful exec closes the child's end).
pub fn pair() -> Result<(Channel, Channel), ChannelError> {
    let (a, b) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    /// Sends one message.
    pub fn send(&self, m: &Message) -> Result<(), ChannelError> {
        let buf = serde_json::to_vec(m).map_err(|e| ChannelError::Decode(e.to_string()))?;
        loop {
            match socket::send(self.fd.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL) {
                Err(nix::Error::EINTR) => continue,
                // Refused by something else than the peer: a seccomp profile (recorded from an
                // application, say) that allows write(2) but not sendto(2). write sends the same
                // datagram; a closed peer's EPIPE was answered above, without a SIGPIPE.
                Err(e)
                    if !matches!(
                        e,
                        nix::Error::EPIPE | nix::Error::ECONNRESET | nix::Error::EAGAIN
                    ) =>
                {
                    return nix::unistd::write(&self.fd, &buf)
                        .map(|_| ())
                        .map_err(|_| e.into());
                }
                r => return r.map(|_| ()).map_err(Into::into),
            }
        }
    }

    /// Receives one message; `Ok(None)` when the peer closed its end (e.g. it exec'd).
    pub fn recv(&self) -> Result<Option<Message>, ChannelError> {
        let mut buf = [0u8; 8192];
        let n = loop {
            match socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(nix::Error::EINTR) => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        decode(&buf[..n]).map(Some)
    }

    /// Receives one message, treating a closed peer as an error.
    pub fn expect(&self) -> Result<Message, ChannelError> {
        self.recv()?.ok_or(ChannelError::Closed)
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Decodes one datagram.
pub fn decode(b: &[u8]) -> Result<Message, ChannelError> {
    serde_json::from_slice(b).map_err(|e| ChannelError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_close() {
        let (a, b) = pair().unwrap();
        for m in [
            Message::Proceed,
            Message::ChildPid(42),
            Message::Ready,
            Message::HooksRequest,
            Message::HooksDone,
            Message::Exec(1_700_000_000_000_000_000),
            Message::Failed("x".into()),
        ] {
            a.send(&m).unwrap();
            assert_eq!(b.expect().unwrap(), m);
        }
        drop(a);
        assert!(b.recv().unwrap().is_none());
        assert!(decode(b"garbage").is_err());
        assert!(decode(b"{\"ChildPid\":\"x\"}").is_err());
    }
}
