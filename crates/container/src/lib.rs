//! strata-container: the Linux container runtime behind `strata-oci` and `strata run`.
//!
//! A library crate: it never prints and never exits; binaries are thin. The process-starting
//! calls (`Runtime::create`, `run`, `exec`) clone without exec'ing a new binary, so they must
//! be called from a single-threaded process (as `strata-oci` is).

pub mod capabilities;
pub mod cgroups;
pub mod channel;
pub mod container;
pub mod id;
pub mod init;
pub mod kill_point;
pub mod launch;
pub mod mounts;
pub mod namespaces;
pub mod process;
pub mod resolve;
pub mod rootfs;
pub mod spec;
pub mod state;

pub use container::{
    ContainerError, ContainerState, CreateOptions, ExecOptions, Runtime, DEFAULT_ROOT,
};
pub mod console;
pub mod exe_clone;
pub mod exe_guard;
pub mod fds;
pub mod hooks;
pub mod notify;
pub mod seccomp;
