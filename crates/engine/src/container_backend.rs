//! Containers as an isolation [`Backend`]: strata-container's `Runtime` called in-process (no
//! strata-oci exec), the pty allocated inside the container for `-t` (runc's console-socket
//! protocol), and Docker's exit codes for start failures.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::Signal;
use oci_spec::runtime::Process;
use strata_container::{ContainerError, CreateOptions, ExecOptions, Runtime};

use crate::backend::{Backend, StartError, Stdio};
use crate::config_json;
use crate::pty;

/// Containers through strata-container's runtime, called in-process (no strata-oci exec).
pub struct ContainerBackend {
    runtime: Runtime,
    root: std::path::PathBuf,
}

impl ContainerBackend {
    /// Containers whose runtime state lives under `runtime_root`.
    pub fn new(runtime_root: &Path) -> ContainerBackend {
        ContainerBackend {
            runtime: Runtime::new(runtime_root),
            root: runtime_root.to_path_buf(),
        }
    }
}

impl Backend for ContainerBackend {
    fn isolation(&self) -> &'static str {
        "container"
    }

    fn start(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<i32, StartError> {
        let opts = CreateOptions {
            bundle: bundle.to_path_buf(),
            ..Default::default()
        };
        with_stdio(stdio, || self.runtime.run(id, &opts, true)).map_err(start_error)??;
        // The state file, not `state()`: a workload that already exited reports pid 0 there.
        let rec = strata_container::state::load(&self.root.join(id))
            .map_err(|e| start_error(e.into()))?;
        Ok(rec.pid)
    }

    fn kill(&self, id: &str, sig: Signal) -> anyhow::Result<()> {
        match self.runtime.kill(id, sig, false) {
            Err(ContainerError::NotRunning) | Err(ContainerError::NotExist(_)) => {
                anyhow::bail!("the container is not running")
            }
            r => Ok(r?),
        }
    }

    fn exec(&self, id: &str, process: &Process, stdio: Stdio) -> Result<i32, StartError> {
        let opts = ExecOptions {
            detach: true,
            ..Default::default()
        };
        with_stdio(stdio, || self.runtime.exec(id, process, &opts))
            .map_err(start_error)?
            .map_err(|e| start_error(e.into()))
    }

    fn start_with_terminal(
        &self,
        id: &str,
        bundle: &Path,
    ) -> Result<Option<(i32, OwnedFd)>, StartError> {
        // The runtime allocates the pty inside the container (runc's console-socket protocol)
        // when process.terminal is set; a host pty bound at /dev/console is not needed then.
        // The pty starts at our terminal's size (process.consoleSize): the workload may ask
        // for it before we could resize.
        let size = pty::size(std::io::stdin().as_fd());
        config_json::set_terminal(bundle, size).map_err(start_error)?;
        let (listener, sock) = self.console_listener(id)?;
        let opts = CreateOptions {
            bundle: bundle.to_path_buf(),
            console_socket: Some(sock.clone()),
            ..Default::default()
        };
        let run = self.runtime.run(id, &opts, true);
        let _ = std::fs::remove_file(&sock);
        run?;
        // init connected and sent the master before reporting ready: this does not block.
        let (master, _) = strata_container::console::accept_master(&listener)
            .map_err(|e| start_error(e.into()))?;
        let rec = strata_container::state::load(&self.root.join(id))
            .map_err(|e| start_error(e.into()))?;
        Ok(Some((rec.pid, master)))
    }

    fn exec_with_terminal(
        &self,
        id: &str,
        process: &Process,
    ) -> Result<Option<(i32, OwnedFd)>, StartError> {
        let mut process = process.clone();
        process.set_terminal(Some(true));
        if let Some((rows, cols)) = pty::size(std::io::stdin().as_fd()) {
            process.set_console_size(Some(
                oci_spec::runtime::BoxBuilder::default()
                    .height(rows as u64)
                    .width(cols as u64)
                    .build()
                    .map_err(|e| start_error(e.into()))?,
            ));
        }
        let (listener, sock) = self.console_listener(id)?;
        let opts = ExecOptions {
            detach: true,
            console_socket: Some(sock.clone()),
            ..Default::default()
        };
        let pid = self.runtime.exec(id, &process, &opts);
        let _ = std::fs::remove_file(&sock);
        let pid = pid?;
        let (master, _) = strata_container::console::accept_master(&listener)
            .map_err(|e| start_error(e.into()))?;
        Ok(Some((pid, master)))
    }

    fn pids(&self, id: &str) -> anyhow::Result<Vec<i32>> {
        Ok(self.runtime.pids(id)?)
    }

    fn exec_time(&self, id: &str) -> Option<String> {
        strata_container::state::load(&self.root.join(id))
            .ok()
            .and_then(|r| r.started)
    }

    fn stats(&self, id: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::to_value(self.runtime.stats(id)?)?)
    }

    fn running(&self, id: &str) -> bool {
        self.runtime.state(id).is_ok_and(|s| {
            matches!(
                s.status,
                strata_container::state::Status::Running | strata_container::state::Status::Paused
            )
        })
    }

    fn delete(&self, id: &str) {
        if let Err(ContainerError::NotExist(_)) = self.runtime.delete(id, true) {
            // A `strata run` killed between making the container's cgroup and saving the
            // runtime state leaves an unrecorded cgroup (and state directory) behind: they are
            // at the paths strata gives every container, so remove them by those.
            remove_unrecorded_cgroups(id);
            let _ = std::fs::remove_dir_all(self.root.join(id));
        }
    }
}

/// `linux.cgroupsPath` of every container the strata CLI makes.
pub fn container_cgroups_path(id: &str) -> String {
    format!("/strata/{id}")
}

/// Kills what is left in a container's cgroups (its init dies with the runtime that was
/// building it, but only once the channel closes) and removes the leaf directories.
fn remove_unrecorded_cgroups(id: &str) {
    let path = container_cgroups_path(id);
    let Ok(cg) = strata_container::cgroups::Cgroup::resolve(Some(Path::new(&path)), id) else {
        return;
    };
    for _ in 0..50 {
        let mut left = false;
        for dir in cg.paths() {
            if !dir.exists() {
                continue;
            }
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: plain kill(2) of a pid read from the container's own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            left |= std::fs::remove_dir(dir).is_err() && dir.exists();
        }
        if !left {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl ContainerBackend {
    /// A listening console socket under the runtime root (short path: sun_path holds 108
    /// bytes), unique per process.
    fn console_listener(
        &self,
        id: &str,
    ) -> Result<(std::os::unix::net::UnixListener, std::path::PathBuf), StartError> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| start_error(anyhow::anyhow!("create {}: {e}", self.root.display())))?;
        let sock = self.root.join(format!(
            ".console-{}-{}",
            id.get(..12).unwrap_or(id),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&sock);
        let l = std::os::unix::net::UnixListener::bind(&sock)
            .map_err(|e| start_error(anyhow::anyhow!("console socket {}: {e}", sock.display())))?;
        Ok((l, sock))
    }
}

impl From<ContainerError> for StartError {
    fn from(e: ContainerError) -> StartError {
        start_error(e.into())
    }
}

/// Maps a start failure to Docker's exit codes by what the runtime reported.
fn start_error(e: anyhow::Error) -> StartError {
    let message = format!("{e:#}");
    // Only failures of the exec step itself ("exec: ...") are the command's fault; a missing
    // working directory or mount source is a set-up failure (125).
    let exec_step = message.contains("exec: ");
    let code = if message.contains("executable file not found")
        || (exec_step && message.contains("No such file or directory"))
    {
        127
    } else if exec_step
        && (message.contains("Permission denied") || message.contains("Exec format error"))
    {
        126
    } else {
        125
    };
    StartError { code, message }
}

/// Runs `f` with `stdio` on fds 0, 1 and 2 (what the cloned workload inherits), then puts the
/// caller's own stdio back. The caller is single-threaded (the runtime requires it).
fn with_stdio<T>(stdio: Stdio, f: impl FnOnce() -> T) -> Result<T, anyhow::Error> {
    let mut saved = Vec::new();
    for fd in 0..=2 {
        // SAFETY: F_DUPFD_CLOEXEC on a stdio fd; the result is a new fd we own (or -1 when the
        // fd is closed, which we restore as closed).
        let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        // SAFETY: d is a fresh fd from fcntl.
        saved.push((d >= 0).then(|| unsafe { OwnedFd::from_raw_fd(d) }));
    }
    let targets = [stdio.stdin, stdio.stdout, stdio.stderr];
    let mut result = Ok(());
    for (i, src) in targets.iter().enumerate() {
        // SAFETY: dup2 of a live fd onto a stdio number.
        if unsafe { libc::dup2(src.as_raw_fd(), i as i32) } < 0 {
            result = Err(std::io::Error::last_os_error());
            break;
        }
    }
    let out = result.map(|()| f());
    for (i, s) in saved.iter().enumerate() {
        match s {
            // SAFETY: dup2 of our saved copy back onto its stdio number.
            Some(s) => unsafe {
                libc::dup2(s.as_raw_fd(), i as i32);
            },
            // SAFETY: closing a stdio number that was closed before.
            None => unsafe {
                libc::close(i as i32);
            },
        }
    }
    Ok(out?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_map_to_docker_exit_codes() {
        let c = |m: &str| start_error(anyhow::anyhow!("{m}")).code;
        assert_eq!(
            c("unable to start container process: exec: \"nope\": executable file not found in $PATH"),
            127
        );
        assert_eq!(c("exec: \"/etc/passwd\": EACCES: Permission denied"), 126);
        assert_eq!(c("mount overlay: invalid argument"), 125);
        assert_eq!(
            c("chdir to cwd (\"/x\") set in config.json failed: ENOENT: No such file or directory"),
            125
        );
    }
}
