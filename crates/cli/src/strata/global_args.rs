//! The options every `strata` command takes (store, runtime root, quiet).

use std::path::PathBuf;

use clap::Args;

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Image and container store
    #[arg(long, global = true, env = "STRATA_STORE", default_value = strata_image::DEFAULT_ROOT)]
    pub store: PathBuf,
    /// No progress output
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Runtime state of running containers
    #[arg(long, global = true, env = "STRATA_ROOT", default_value = strata_container::DEFAULT_ROOT)]
    pub root: PathBuf,
}

impl Global {
    /// Opens the image store.
    pub fn image_store(&self) -> anyhow::Result<strata_image::Store> {
        Ok(strata_image::Store::open(&self.store)?)
    }

    /// The engine's view of the two roots.
    pub fn paths(&self) -> strata_engine::Paths {
        strata_engine::Paths {
            store: self.store.clone(),
            root: self.root.clone(),
        }
    }
}
