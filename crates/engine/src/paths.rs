//! Where an engine keeps things: the image and container store (`--store`) and the runtime
//! state of running workloads (`--root`).

use std::path::PathBuf;

use crate::records::Containers;

/// The two roots every lifecycle step works under.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Images (strata-image's store) and containers (`<store>/containers`).
    pub store: PathBuf,
    /// Runtime state while workloads run: the container runtime's `<root>/<id>`, the VM
    /// keepers' `<root>/vm/<id>`.
    pub root: PathBuf,
}

impl Paths {
    /// Opens the image store.
    pub fn image_store(&self) -> anyhow::Result<strata_image::Store> {
        Ok(strata_image::Store::open(&self.store)?)
    }

    /// The container records of the store.
    pub fn containers(&self) -> Containers {
        Containers::new(&self.store)
    }
}
