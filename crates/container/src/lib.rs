//! strata-container: the Linux container runtime behind `strata-oci` and `strata run`.
//!
//! A library crate: it never prints and never exits; binaries are thin.

pub mod cgroups;
pub mod seccomp;
pub mod hooks;
