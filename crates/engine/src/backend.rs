//! The isolation seam: one small trait, [`Backend`], implemented by containers
//! (container_backend.rs) and VMs (vm_backend.rs); isolation.rs picks one by name. The
//! lifecycle steps (run, monitor, exec, stop, ps, ...) only talk to the trait.
//!
//! Contract: `start` runs the workload of an OCI bundle with the given stdio and returns the
//! host pid of a process that is a child of the caller and exits with the workload's exit
//! code (the container init; for a VM, the VM's leader process). `exec` does the same for an
//! extra process. The caller reaps both.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::Signal;
use oci_spec::runtime::Process;

/// The three fds a workload gets as stdin, stdout and stderr.
#[derive(Clone, Copy)]
pub struct Stdio<'a> {
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// Starting a workload failed. `code` is what `strata run` exits with: 127 when the command
/// does not exist, 126 when it cannot be executed, 125 for any other set-up failure (Docker's
/// convention).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    pub code: i32,
    pub message: String,
}

/// An isolation backend: how a bundle becomes running processes.
pub trait Backend {
    /// What `ps` shows in the ISOLATION column.
    fn isolation(&self) -> &'static str;
    /// Runs the bundle's process; returns the host pid of our child that exits with it.
    fn start(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<i32, StartError>;
    /// Sends a signal to the workload.
    fn kill(&self, id: &str, sig: Signal) -> anyhow::Result<()>;
    /// Runs another process in the running workload's environment; returns the pid of our
    /// child that exits with it.
    fn exec(&self, id: &str, process: &Process, stdio: Stdio) -> Result<i32, StartError>;
    /// `start` on a terminal the backend allocates in the workload's own environment (so it is
    /// the workload's controlling terminal); returns the pid and the pty master. `Ok(None)`:
    /// no such terminal here, the caller passes a host pty slave as stdio to `start` instead.
    fn start_with_terminal(
        &self,
        _id: &str,
        _bundle: &Path,
    ) -> Result<Option<(i32, OwnedFd)>, StartError> {
        Ok(None)
    }
    /// `exec` on a terminal, as [`Backend::start_with_terminal`].
    fn exec_with_terminal(
        &self,
        _id: &str,
        _process: &Process,
    ) -> Result<Option<(i32, OwnedFd)>, StartError> {
        Ok(None)
    }
    /// Host pids of every process of the workload.
    fn pids(&self, id: &str) -> anyhow::Result<Vec<i32>>;
    /// Resource usage as JSON (cpu, memory, pids).
    fn stats(&self, id: &str) -> anyhow::Result<serde_json::Value>;
    /// Whether the workload is running.
    fn running(&self, id: &str) -> bool;
    /// RFC 3339 time at which the workload's execve took effect, as the runtime (container) or
    /// the guest agent (VM, stamped on the host when the agent's reply arrives) reported it.
    fn exec_time(&self, _id: &str) -> Option<String> {
        None
    }
    /// What `strata inspect` shows about how the instance runs beyond the record (a VM's
    /// platform and accelerator), while its runtime state exists.
    fn details(&self, _id: &str) -> Option<serde_json::Value> {
        None
    }
    /// Kills whatever is left and removes the runtime state (idempotent).
    fn delete(&self, id: &str);
}
