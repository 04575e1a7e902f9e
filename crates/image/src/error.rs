//! Errors of strata-image: each variant names the step that failed and the path, digest or name involved.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while storing, importing, unpacking or using an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the message (not a `source`), so `{:#}` chains do not repeat it.
    #[error("{step} {path}: {error}")]
    Io {
        step: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error(
        "image {0} not found: load it with `strata load -i FILE` or pull it with `strata pull {0}`"
    )]
    ImageNotFound(String),
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("invalid digest {digest:?}: expected sha256:<64 lowercase hex digits>")]
    BadDigest { digest: String },
    #[error("digest mismatch for {what}: expected {expected}, content hashes to {actual} (the file is corrupt or was tampered with)")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is not in the store or the archive")]
    MissingBlob(String),
    #[error("layer tar entry {entry:?} refused: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    #[error("layer {layer}: {reason}")]
    BadLayer { layer: String, reason: String },
    #[error("{what}: invalid JSON: {error}")]
    Json {
        what: String,
        error: serde_json::Error,
    },
    #[error("{path}: unsupported archive: {reason}")]
    UnsupportedArchive { path: PathBuf, reason: String },
    #[error("{what}: unsupported media type {media_type}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{0}")]
    BadManifest(String),
    #[error("user {user:?} not found in the image's {file}")]
    UnknownUser { user: String, file: &'static str },
    #[error("image {image} is ambiguous: {reason}")]
    Ambiguous { image: String, reason: String },
    #[error("mount overlay at {target}: {reason}")]
    Mount { target: PathBuf, reason: String },
    #[error("build the default busybox image: {0}")]
    DefaultImage(String),
    #[error("pull {reference}: {reason}")]
    Pull { reference: String, reason: String },
    #[error("registry {registry} requires credentials")]
    AuthRequired { registry: String },
    #[error("registry {registry} refused the credentials of user {user:?} (from {source_name})")]
    AuthRefused {
        registry: String,
        user: String,
        /// Where the credentials came from: a file, or the command line.
        source_name: String,
    },
    #[error("credentials file {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
    #[error("generate config.json: {0}")]
    Bundle(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for mapping an io::Error to [`Error::Io`] with a step and a path.
pub(crate) trait IoContext<T> {
    fn ctx(self, step: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, step: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            step,
            path: path.into(),
            error: source,
        })
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, step: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::Io {
            step,
            path: path.into(),
            error: io::Error::from_raw_os_error(e as i32),
        })
    }
}
