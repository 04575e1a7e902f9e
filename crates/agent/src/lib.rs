//! strata-agent: PID 1 of a strata guest. It mounts the guest's basic filesystems, assembles the
//! container rootfs, and runs the OCI process and exec requests the host sends over strata-proto,
//! relaying stdio, signals, window sizes and exit codes. The same loop runs on a host without a
//! VM (`--no-pid1`), which is how the integration tests drive it.

pub mod agent;
pub mod channel;
pub mod guest;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod process;
pub mod rehearsal;
pub mod spec;

pub use agent::{Agent, AgentError, Mode, Outcome};
