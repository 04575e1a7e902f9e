//! strata-image: the image store, import and pull, safe layer unpacking, and the two things a
//! backend needs to run an image: an overlay root filesystem ([`rootfs`]) and an OCI runtime
//! config.json ([`bundle`]).
//!
//! ```no_run
//! let store = strata_image::Store::open(strata_image::Store::default_root())?;
//! let image = store.resolve("busybox")?;
//! let lowerdirs = image.layers(); // bottom first
//! # Ok::<(), strata_image::Error>(())
//! ```

pub mod auth;
pub mod bundle;
pub mod compression;
pub mod default_image;
pub mod digest;
mod error;
pub mod image;
pub mod import;
pub mod passwd;
pub mod progress;
#[cfg(feature = "pull")]
pub mod pull;
pub mod quote;
pub mod reference;
mod resolve;
pub mod rootfs;
mod store;
mod sys;
pub mod tree;
pub mod unpack;

pub use digest::Digest;
pub use error::{Error, Result};
pub use image::Image;
pub use progress::{NoProgress, Progress};
pub use store::{ImageSummary, PruneStats, Store, Transaction, VerifyReport, DEFAULT_ROOT};
