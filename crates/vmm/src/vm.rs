//! A running VM: its host process, the strata-proto channel, and its clean-up.

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;

use crate::cgroup::{MemoryStats, VmCgroup};
use crate::error::{Result, VmmError};

/// A booted VM. Dropping it kills the VM (use [`Vm::wait`] to let it finish).
#[derive(Debug)]
pub struct Vm {
    pub(crate) platform: &'static str,
    pub(crate) pid: i32,
    pub(crate) channel: Option<UnixStream>,
    pub(crate) cgroup: Option<VmCgroup>,
    /// Directories to remove after the VM is reaped (the jail mount point, then the runtime dir
    /// if it is empty).
    pub(crate) cleanup_dirs: Vec<PathBuf>,
    pub(crate) status: Option<ExitStatus>,
    pub(crate) uid: u32,
    /// `kvm`/`tcg` on qemu.
    pub(crate) accelerator: Option<&'static str>,
    /// The monitor's own stderr (a memfd QEMU writes to), for [`Vm::report`].
    pub(crate) stderr: Option<std::fs::File>,
    /// The console log, for [`Vm::report`].
    pub(crate) console_log: Option<PathBuf>,
    /// What the guest's NIC took over from the VM's network namespace.
    pub(crate) nic: Option<crate::GuestNic>,
    /// The namespace and tap of a NIC whose take-over waits for [`Vm::take_over_network`]
    /// ([`crate::VmConfig::network_at_start`]).
    pub(crate) deferred_nic: Option<(PathBuf, String)>,
    /// The host end of QEMU's QMP monitor socket ([`crate::VmConfig::hot_root`]).
    pub(crate) qmp: Option<UnixStream>,
}

impl Vm {
    /// The platform that runs it (`uml`, `kvm`).
    pub fn platform(&self) -> &'static str {
        self.platform
    }

    /// How guest code runs (`kvm` or `tcg` on qemu; None on uml, whose guest runs as host code).
    pub fn accelerator(&self) -> Option<&'static str> {
        self.accelerator
    }

    /// What the VM's host side said, for an error message when the VM failed or hung: the
    /// monitor's stderr (QEMU) and the last lines of the console log. Empty when there is none.
    pub fn report(&self) -> String {
        use std::io::{Read, Seek};
        let mut out = String::new();
        if let Some(f) = &self.stderr {
            let mut text = String::new();
            let mut f = f;
            if f.seek(std::io::SeekFrom::Start(0)).is_ok()
                && f.take(64 << 10).read_to_string(&mut text).is_ok()
                && !text.trim().is_empty()
            {
                out.push_str(&format!("{} stderr: {}", self.platform, tail(&text, 20)));
            }
        }
        if let Some(p) = &self.console_log {
            if let Ok(text) = std::fs::read(p) {
                let text = String::from_utf8_lossy(&text);
                if !text.trim().is_empty() {
                    if !out.is_empty() {
                        out.push_str("; ");
                    }
                    // A panic's first line says why; the trace after it is long.
                    let from = text
                        .rfind("Kernel panic")
                        .map(|i| text[..i].rfind('\n').map_or(0, |n| n + 1));
                    let shown = match from {
                        None => tail(&text, 20),
                        Some(f) => text[f..].lines().take(20).collect::<Vec<_>>().join("\n"),
                    };
                    out.push_str(&format!("console ({}): {shown}", p.display()));
                }
            }
        }
        out
    }

    /// The host pid of the VM's leader process: the jail's reaper, PID 1 of the VM's pid namespace,
    /// whose child is the UML kernel. Killing it ends every process of the VM.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The interface the guest's NIC took over in its network namespace (its address, routes and
    /// MAC are the guest's to configure), None without [`crate::VmConfig::network`].
    pub fn nic(&self) -> Option<&crate::GuestNic> {
        self.nic.as_ref()
    }

    /// Whether the guest booted with a NIC whose take-over waits for
    /// [`Vm::take_over_network`].
    pub fn nic_deferred(&self) -> bool {
        self.deferred_nic.is_some() && self.nic.is_none()
    }

    /// The second half of [`crate::VmConfig::network_at_start`]: joins the guest's NIC to the
    /// interface its namespace has now (tc mirred both ways, netns_tap.rs) and returns what the
    /// guest takes over (the caller gives it to the guest's agent). None when the namespace
    /// still has no interface with an IPv4 address: the guest's NIC stays unconnected. Errors
    /// name the namespace and the step; the VM is left as it was (the caller ends it).
    pub fn take_over_network(&mut self) -> Result<Option<&crate::GuestNic>> {
        if self.nic.is_none() {
            if let Some((ns, tap)) = &self.deferred_nic {
                self.nic = crate::netns_tap::take_over(ns, tap)?;
            }
        }
        Ok(self.nic.as_ref())
    }

    /// The unprivileged host uid the VM runs as.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The host end of the strata-proto channel (a stream socket); None once taken.
    pub fn channel(&self) -> Option<&UnixStream> {
        self.channel.as_ref()
    }

    /// Takes the host end of the channel (e.g. to hand it to a strata-proto client thread).
    pub fn take_channel(&mut self) -> Option<UnixStream> {
        self.channel.take()
    }

    /// Takes the host end of the QMP monitor of a VM booted with [`crate::VmConfig::hot_root`]
    /// (QEMU's greeting is waiting in it: [`crate::qmp::Qmp::handshake`]).
    pub fn take_qmp(&mut self) -> Option<UnixStream> {
        self.qmp.take()
    }

    /// The VM's cgroup directories, one per hierarchy (empty if it has none).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup
            .as_ref()
            .map(VmCgroup::paths)
            .unwrap_or_default()
    }

    /// The VM's cgroup, to record for later commands (pause, update, removal).
    pub fn cgroup(&self) -> Option<&VmCgroup> {
        self.cgroup.as_ref()
    }

    /// Re-labels the VM's cgroup to `new_id` (see [`VmCgroup::relabel`]).
    pub fn relabel(&mut self, new_id: &str) -> Result<()> {
        match self.cgroup.as_mut() {
            Some(cg) => cg.relabel(new_id),
            None => Ok(()),
        }
    }

    /// Finishes a re-label (see [`VmCgroup::finish_relabel`]).
    pub fn finish_relabel(&mut self) -> Result<()> {
        match self.cgroup.as_mut() {
            Some(cg) => cg.finish_relabel(),
            None => Ok(()),
        }
    }

    /// Memory charged to the VM, from its cgroup.
    pub fn memory(&self) -> Result<MemoryStats> {
        let cg = self.cgroup.as_ref().ok_or_else(|| VmmError::Process {
            pid: self.pid,
            step: "read memory statistics",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "the VM has no cgroup"),
        })?;
        cg.memory()
    }

    /// Waits for the VM to end and cleans up after it. The guest kernel's own status says
    /// nothing about the workload (UML always exits 0): the workload's status travels over the
    /// channel.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child; `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(VmmError::Process {
                    pid: self.pid,
                    step: "wait",
                    source: e,
                });
            }
        }
        let s = ExitStatus::from_raw(status);
        self.status = Some(s);
        self.cleanup()?;
        Ok(s)
    }

    /// The VM's status if it has ended (then cleaned up), None while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut status = 0;
        // SAFETY: non-blocking wait for our own child.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            return Err(VmmError::Process {
                pid: self.pid,
                step: "wait",
                source: std::io::Error::last_os_error(),
            });
        }
        let s = ExitStatus::from_raw(status);
        self.status = Some(s);
        self.cleanup()?;
        Ok(Some(s))
    }

    /// Kills the VM at once (SIGKILL to its PID 1 ends its whole pid namespace), waits for it and
    /// cleans up. Killing an ended VM is not an error.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if self.status.is_none() {
            // SAFETY: signalling our own, not yet reaped, child (its pid cannot be reused).
            let r = unsafe { libc::kill(self.pid, libc::SIGKILL) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(VmmError::Process {
                        pid: self.pid,
                        step: "kill",
                        source: e,
                    });
                }
            }
        }
        self.wait()
    }

    fn cleanup(&mut self) -> Result<()> {
        self.channel = None;
        if let Some(cg) = self.cgroup.take() {
            cg.destroy()?;
        }
        for dir in std::mem::take(&mut self.cleanup_dirs) {
            // Only empty directories: the jail's mounts lived in its own namespace and are gone.
            let _ = std::fs::remove_dir(&dir);
        }
        Ok(())
    }
}

/// The last `n` lines of `text`, trimmed.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Err(e) = self.kill() {
                tracing::warn!(pid = self.pid, error = %e, "could not stop VM on drop");
            }
        }
    }
}
