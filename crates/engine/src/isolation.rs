//! The backend for an isolation name, as record.json and config.json's
//! `dev.strata.isolation` annotation spell it.

use std::path::Path;

use crate::backend::Backend;
use crate::container_backend::ContainerBackend;
use crate::vm_backend::VmBackend;

/// The backend for an isolation name ("container" or "vm").
pub fn backend(isolation: &str, runtime_root: &Path) -> anyhow::Result<Box<dyn Backend>> {
    match isolation {
        "container" => Ok(Box::new(ContainerBackend::new(runtime_root))),
        "vm" => Ok(Box::new(VmBackend::new(runtime_root))),
        other => anyhow::bail!("isolation {other:?} is not supported by this strata build"),
    }
}
