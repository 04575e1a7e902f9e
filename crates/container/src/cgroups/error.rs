//! Errors of the cgroups module: each names the step and the path involved.

use std::io;
use std::path::PathBuf;

/// What went wrong while resolving, creating, configuring or removing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// /proc/self/mountinfo or /proc/self/cgroup could not be read.
    #[error("cgroups: reading {path}: {source}")]
    ReadProc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A line of /proc/self/mountinfo or /proc/self/cgroup is not in the kernel's format.
    #[error("cgroups: malformed line in {file}: {line:?}")]
    Malformed { file: &'static str, line: String },
    /// No cgroup filesystem is mounted at all.
    #[error("cgroups: no cgroup v1 or cgroup2 filesystem is mounted (see /proc/self/mountinfo); mount cgroup2 at /sys/fs/cgroup")]
    NoCgroupMounts,
    /// A controller runc treats as mandatory is missing (v1 `devices`).
    #[error("cgroups: the v1 {controller} controller is not mounted; it is required to confine device access")]
    MandatoryControllerMissing { controller: &'static str },
    /// The process's own cgroup for a hierarchy is missing from /proc/self/cgroup.
    #[error("cgroups: /proc/self/cgroup has no entry for the {hierarchy} hierarchy; cannot resolve a relative cgroupsPath")]
    NoOwnCgroup { hierarchy: String },
    /// `cgroupsPath` was not given and the container id cannot name a cgroup.
    #[error("cgroups: invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The spec asks for a resource whose controller is not available on this host.
    #[error("cgroups: cannot set {resource}: the {controller} controller is not available on this host ({detail}); remove the limit from the spec")]
    ControllerMissing {
        resource: &'static str,
        controller: &'static str,
        detail: &'static str,
    },
    /// A resource value that the kernel cannot take.
    #[error("cgroups: invalid {resource}: {reason}")]
    InvalidResource {
        resource: &'static str,
        reason: String,
    },
    /// Creating a cgroup directory failed.
    #[error("cgroups: creating {path}: {source}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing a cgroup file failed.
    #[error("cgroups: writing {value:?} to {path}: {source}{hint}")]
    Write {
        path: PathBuf,
        value: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    /// Reading a cgroup file failed.
    #[error("cgroups: reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A cgroup file held something we could not parse.
    #[error("cgroups: unexpected content in {path}: {content:?}")]
    Parse { path: PathBuf, content: String },
    /// Removing a cgroup directory failed (after retrying while tasks exit).
    #[error("cgroups: removing {path}: {source} (are processes still running in it?)")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The freezer did not reach the requested state in time.
    #[error("cgroups: {path} did not become {state} within {waited_ms} ms")]
    FreezeTimeout {
        path: PathBuf,
        state: &'static str,
        waited_ms: u64,
    },
    /// Loading or attaching the v2 device-filter eBPF program failed.
    #[error("cgroups: device filter: {step} on {path}: {source}")]
    Bpf {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The operation needs a hierarchy this cgroup does not have.
    #[error(
        "cgroups: {operation} needs the {controller} controller, which is not mounted on this host"
    )]
    NoHierarchy {
        operation: &'static str,
        controller: &'static str,
    },
}
