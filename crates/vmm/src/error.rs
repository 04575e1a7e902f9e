//! Errors of strata-vmm: each variant names the step that failed and the path or id involved.

use std::io;
use std::path::PathBuf;

/// Why a platform cannot run VMs on this host (shown by `strata info`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{platform} is unavailable: {reason}")]
pub struct Unavailable {
    /// The platform's name (`uml`, `kvm`).
    pub platform: &'static str,
    /// What is missing and, where possible, what to do about it.
    pub reason: String,
}

/// Everything that can go wrong while preparing, booting or managing a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The platform cannot run here.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),

    /// Handing a root disk to a running VM (the warm pool's hand-over) failed at a step.
    #[error("hot-add the root disk: {0}")]
    HotAdd(String),

    /// The VM configuration is invalid; the message says what to change.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),

    /// A file the VM needs (kernel, disk, initrd) is missing or unusable.
    #[error("{what} {path}: {source}")]
    File {
        /// Which file it is (e.g. "kernel", "disk 0").
        what: String,
        /// Its host path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Creating the copy-on-write file over a read-only base failed.
    #[error("creating copy-on-write file {cow} over {base}: {source}")]
    Cow {
        /// The COW file.
        cow: PathBuf,
        /// Its read-only base.
        base: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// A step of the VM jail (namespaces, mounts, privilege drop) failed.
    #[error("jail step '{step}' failed: {source}")]
    Jail {
        /// The step, e.g. "pivot_root" or "setresuid".
        step: String,
        /// The errno reported by the jailed child, or a host-side error.
        source: io::Error,
    },

    /// Creating or configuring the VM's cgroup failed.
    #[error("cgroup {path}: {step}: {source}")]
    Cgroup {
        /// The cgroup directory or control file.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The underlying error.
        source: io::Error,
    },

    /// An operation on the VM's cgroup failed (strata-container's cgroups say which file).
    #[error("VM {id}: {step}: {source}")]
    VmCgroup {
        /// The VM's id.
        id: String,
        /// What was being done.
        step: &'static str,
        /// The underlying error.
        source: strata_container::cgroups::CgroupError,
    },

    /// Waiting for, signalling or querying the VM process failed.
    #[error("VM process {pid}: {step}: {source}")]
    Process {
        /// The VM's host pid.
        pid: i32,
        /// What was being done.
        step: &'static str,
        /// The underlying error.
        source: io::Error,
    },

    /// Building a VM disk image failed.
    #[error("building disk image {path}: {step}: {detail}")]
    Disk {
        /// The image being built.
        path: PathBuf,
        /// The step (e.g. "mkfs.ext4").
        step: &'static str,
        /// What went wrong (stderr of the tool, or the I/O error).
        detail: String,
    },

    /// Building the guest kernel failed (see the log it names).
    #[error("building the guest kernel: {0}")]
    KernelBuild(String),
    /// Joining the VM's NIC to its network namespace failed.
    #[error("VM network namespace {netns}: {step}: {source}")]
    Network {
        netns: PathBuf,
        step: String,
        source: io::Error,
    },
}

impl VmmError {
    pub(crate) fn file(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        VmmError::File {
            what: what.into(),
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = VmmError> = std::result::Result<T, E>;
