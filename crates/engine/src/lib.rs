//! strata-engine: the life of an instance (a container or a VM) for both command lines,
//! `strata` and `strata-oci`. The front ends parse arguments, call these steps and render what
//! they return; nothing here prints or exits (forked helper processes — the monitor, the VM
//! keeper — end with `_exit`, as a fork must).
//!
//! The path of `strata run`, step by step (docs/architecture.md draws it):
//! [`run::prepare`] (image → container directory: overlay rootfs or VM disk, /etc files,
//! config.json, [`records::Record`]) → [`isolation::backend`] picks the [`backend::Backend`]
//! ([`container_backend`] or [`vm_backend`], which forks the [`vm_keeper`]) → the workload runs
//! in the foreground ([`run::foreground`], output through [`relay`] or [`terminal_relay`]) or
//! under a [`monitor`] (log, [`attach_server`]) → [`removal::settle`] records its exit or
//! removes it. [`lifecycle`] holds start/stop/kill/rm/wait of existing containers, [`exec`]
//! another process in one.
//!
//! strata-oci runs containers through strata-container's `Runtime` directly (runc's lifecycle
//! is the runtime's) and VMs made from an engine's bundle through [`oci_vm`], which uses the
//! same [`vm_keeper`].

pub mod attach_protocol;
pub mod attach_server;
pub mod backend;
pub mod config_json;
pub mod container_backend;
pub mod container_log;
pub mod exec;
pub mod isolation;
pub mod lifecycle;
pub mod monitor;
pub mod network;
pub mod oci_vm;
pub mod options;
pub mod paths;
pub mod pty;
pub mod reap;
pub mod records;
pub mod relay;
pub mod removal;
pub mod run;
pub mod start_phases;
pub mod start_warnings;
pub mod terminal_relay;
pub mod vm_backend;
pub mod vm_keeper;
pub mod vm_pool;

pub use backend::{Backend, StartError, Stdio};
pub use paths::Paths;
