//! sd_notify passing (`NOTIFY_SOCKET`), as runc does it.
//!
//! When the runtime is started with NOTIFY_SOCKET (systemd's notify socket, e.g. from a
//! `Type=notify` unit running `podman run`), the container must be able to report READY=1, but
//! the host socket must not be exposed to it. runc's scheme, followed here:
//!
//! * `create`: a directory `<state dir>/notify` is bind-mounted read-only (nosuid, noexec, nodev)
//!   at /run/notify in the container, and the process gets `NOTIFY_SOCKET=/run/notify/notify.sock`;
//! * `start` (and `run`): the runtime binds a datagram socket at
//!   `<state dir>/notify/notify.sock` (mode 0777 so any container uid can send), starts the
//!   workload, then waits for a datagram with a `READY=` line, forwards it to the host socket
//!   followed by `MAINPID=<container pid>` so systemd watches the container's process, and
//!   returns. If the container's process exits first, it returns without notifying.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{Mount, Spec};

/// Where the socket appears inside the container.
pub const PATH_IN_CONTAINER: &str = "/run/notify/notify.sock";
const DIR_IN_CONTAINER: &str = "/run/notify";

/// What failed while relaying sd_notify messages.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A filesystem or socket step failed.
    #[error("NOTIFY_SOCKET: {step} {path}: {source}")]
    Io {
        /// The step.
        step: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The spec has no process to give the environment variable to.
    #[error("NOTIFY_SOCKET: config.json has no process")]
    NoProcess,
}

/// The host's notify socket and the container's relay socket for one container.
#[derive(Debug, Clone)]
pub struct NotifySocket {
    host: String,
    dir: PathBuf,
}

impl NotifySocket {
    /// From the runtime's own NOTIFY_SOCKET, if set and non-empty. `state_dir` is the
    /// container's state directory (`<root>/<id>`).
    pub fn from_env(state_dir: &Path) -> Option<NotifySocket> {
        let host = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())?;
        Some(NotifySocket::new(host, state_dir))
    }

    /// For a given host socket (a path, or `@name` for an abstract socket).
    pub fn new(host: impl Into<String>, state_dir: &Path) -> NotifySocket {
        NotifySocket {
            host: host.into(),
            dir: state_dir.join("notify"),
        }
    }

    /// The relay socket's path on the host.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("notify.sock")
    }

    /// The host socket the READY message goes to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The read-only bind mount of the relay directory into the container.
    pub fn mount(&self) -> Mount {
        let mut m = Mount::default();
        m.set_destination(PathBuf::from(DIR_IN_CONTAINER))
            .set_typ(Some("bind".into()))
            .set_source(Some(self.dir.clone()))
            .set_options(Some(
                ["bind", "nosuid", "noexec", "nodev", "ro"]
                    .map(String::from)
                    .to_vec(),
            ));
        m
    }

    /// Adds the mount and `NOTIFY_SOCKET=/run/notify/notify.sock` to the spec (at `create`).
    pub fn setup_spec(&self, spec: &mut Spec) -> Result<(), NotifyError> {
        let process = spec.process_mut().as_mut().ok_or(NotifyError::NoProcess)?;
        let env = process.env_mut().get_or_insert_with(Vec::new);
        env.retain(|e| !e.starts_with("NOTIFY_SOCKET="));
        env.push(format!("NOTIFY_SOCKET={PATH_IN_CONTAINER}"));
        spec.mounts_mut()
            .get_or_insert_with(Vec::new)
            .push(self.mount());
        Ok(())
    }

    /// Creates the relay directory (at `create`, before the mounts are made).
    pub fn create_dir(&self) -> Result<(), NotifyError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| NotifyError::Io {
            step: "create directory",
            path: self.dir.clone(),
            source,
        })?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755)).map_err(
            |source| NotifyError::Io {
                step: "chmod directory",
                path: self.dir.clone(),
                source,
            },
        )
    }

    /// Binds the relay socket (at `start`/`run`, before the workload is released), replacing a
    /// stale one.
    pub fn bind(&self) -> Result<UnixDatagram, NotifyError> {
        self.create_dir()?;
        let path = self.socket_path();
        let io_err = |step| {
            let path = path.clone();
            move |source| NotifyError::Io { step, path, source }
        };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove stale socket")(e))
            }
            _ => {}
        }
        let sock = UnixDatagram::bind(&path).map_err(io_err("bind"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .map_err(io_err("chmod socket"))?;
        Ok(sock)
    }

    /// Waits for `READY=` from the container and forwards it to the host socket with
    /// `MAINPID=<pid1>`. Returns whether READY was forwarded (false when `pid1` exited first).
    pub fn relay_ready(&self, sock: &UnixDatagram, pid1: i32) -> Result<bool, NotifyError> {
        self.relay_ready_as(sock, pid1, pid1)
    }

    /// [`relay_ready`](Self::relay_ready) waiting on `watch` (the container's process) but
    /// naming `main_pid` in `MAINPID=`: a foreground `run` reports itself, as runc does, since
    /// it stays alive as long as the container and systemd must watch it.
    pub fn relay_ready_as(
        &self,
        sock: &UnixDatagram,
        watch: i32,
        main_pid: i32,
    ) -> Result<bool, NotifyError> {
        let pid1 = watch;
        let path = self.socket_path();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|source| NotifyError::Io {
                step: "set timeout on",
                path: path.clone(),
                source,
            })?;
        let mut buf = [0u8; 4096];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    if let Some(line) = ready_line(&buf[..n]) {
                        self.send_host(line, main_pid)?;
                        return Ok(true);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if !Path::new(&format!("/proc/{pid1}")).exists() {
                        return Ok(false);
                    }
                }
                Err(source) => {
                    return Err(NotifyError::Io {
                        step: "receive on",
                        path,
                        source,
                    })
                }
            }
        }
    }

    fn send_host(&self, ready: &[u8], pid1: i32) -> Result<(), NotifyError> {
        let host_path = PathBuf::from(&self.host);
        let err = |step| {
            let path = host_path.clone();
            move |source| NotifyError::Io { step, path, source }
        };
        let client = UnixDatagram::unbound().map_err(err("create a socket for"))?;
        let addr = host_addr(&self.host).map_err(err("address"))?;
        let mut msg = ready.to_vec();
        msg.push(b'\n');
        client
            .send_to_addr(&msg, &addr)
            .map_err(err("send READY to"))?;
        client
            .send_to_addr(format!("MAINPID={pid1}\n").as_bytes(), &addr)
            .map_err(err("send MAINPID to"))?;
        Ok(())
    }
}

/// The first `READY=` line of a datagram (runc only forwards READY).
pub fn ready_line(datagram: &[u8]) -> Option<&[u8]> {
    datagram
        .split(|b| *b == b'\n')
        .find(|l| l.starts_with(b"READY="))
}

fn host_addr(host: &str) -> io::Result<SocketAddr> {
    if let Some(name) = host.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_are_found_in_multi_line_datagrams() {
        assert_eq!(
            ready_line(b"STATUS=starting\nREADY=1\n"),
            Some(&b"READY=1"[..])
        );
        assert_eq!(ready_line(b"STATUS=starting"), None);
        assert_eq!(ready_line(b""), None);
        assert_eq!(ready_line(b"XREADY=1"), None);
    }

    #[test]
    fn the_spec_gets_a_read_only_bind_and_the_env() {
        let dir = tempfile::tempdir().unwrap();
        let n = NotifySocket::new("/run/systemd/notify", dir.path());
        let mut spec = Spec::default();
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_env(Some(vec!["NOTIFY_SOCKET=/host".into(), "A=1".into()]));
        n.setup_spec(&mut spec).unwrap();
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env, vec!["A=1", "NOTIFY_SOCKET=/run/notify/notify.sock"]);
        let m = spec.mounts().as_ref().unwrap().last().unwrap().clone();
        assert_eq!(m.destination(), Path::new("/run/notify"));
        assert_eq!(
            m.source().as_deref(),
            Some(dir.path().join("notify").as_path())
        );
        assert!(m.options().as_ref().unwrap().contains(&"ro".to_string()));
    }

    #[test]
    fn ready_is_relayed_with_the_main_pid() {
        let dir = tempfile::tempdir().unwrap();
        let host_path = dir.path().join("host.sock");
        let host = UnixDatagram::bind(&host_path).unwrap();
        let n = NotifySocket::new(host_path.to_str().unwrap(), &dir.path().join("state"));
        let relay = n.bind().unwrap();
        let mode = std::fs::metadata(n.socket_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o777);
        // The "container" sends a status first, then READY.
        let c = UnixDatagram::unbound().unwrap();
        c.send_to(b"STATUS=warming up", n.socket_path()).unwrap();
        c.send_to(b"STATUS=done\nREADY=1", n.socket_path()).unwrap();
        let me = std::process::id() as i32;
        assert!(n.relay_ready(&relay, me).unwrap());
        let mut buf = [0u8; 256];
        let k = host.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1\n");
        let k = host.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], format!("MAINPID={me}\n").as_bytes());
    }

    #[test]
    fn an_exited_container_ends_the_wait_without_notifying() {
        let dir = tempfile::tempdir().unwrap();
        let n = NotifySocket::new("@strata-test-never", dir.path());
        let relay = n.bind().unwrap();
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!n.relay_ready(&relay, pid).unwrap());
    }

    #[test]
    fn abstract_host_sockets_are_supported() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("strata-notify-test-{}", std::process::id());
        let host =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let n = NotifySocket::new(format!("@{name}"), dir.path());
        n.send_host(b"READY=1", 7).unwrap();
        let mut buf = [0u8; 64];
        let k = host.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1\n");
    }
}
