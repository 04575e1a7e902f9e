//! Errors of strata-image: each variant names the step that failed and the path, digest or name involved.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while storing, importing, unpacking or using an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the message (not a `source`), so `{:#}` chains do not repeat it.
    // Fields that may hold untrusted bytes are shown through `q` (escaped, cut short).
    #[error("{step} {}: {}{}", q(.path.display()), q(.error), full_disk_hint(.error))]
    Io {
        step: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error(
        "image {} not found: load it with `strata load -i FILE` or pull it with `strata pull {}`",
        q(.0),
        q(.0)
    )]
    ImageNotFound(String),
    #[error("invalid image reference \"{}\": {}", q(.reference), q(.reason))]
    BadReference { reference: String, reason: String },
    #[error("invalid digest \"{}\": expected sha256:<64 lowercase hex digits>", q(.digest))]
    BadDigest { digest: String },
    #[error("digest mismatch for {}: expected {expected}, content hashes to {actual} (the file is corrupt or was tampered with)", q(.what))]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {}: expected {expected} bytes, got {actual}", q(.what))]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {} is not in the store or the archive", q(.0))]
    MissingBlob(String),
    #[error("layer tar entry \"{}\" refused: {}", q(.entry), q(.reason))]
    UnsafeEntry { entry: String, reason: String },
    #[error("layer {}: {}", q(.layer), q(.reason))]
    BadLayer { layer: String, reason: String },
    #[error("{}: invalid JSON: {}", q(.what), q(.error))]
    Json {
        what: String,
        error: serde_json::Error,
    },
    #[error("{}: unsupported archive: {}", q(.path.display()), q(.reason))]
    UnsupportedArchive { path: PathBuf, reason: String },
    #[error("{}: unsupported media type {}", q(.what), q(.media_type))]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{}", q(.0))]
    BadManifest(String),
    #[error("user \"{}\" not found in the image's {file}", q(.user))]
    UnknownUser { user: String, file: &'static str },
    #[error("image {} is ambiguous: {}", q(.image), q(.reason))]
    Ambiguous { image: String, reason: String },
    #[error("mount overlay at {target}: {reason}")]
    Mount { target: PathBuf, reason: String },
    #[error("build the default busybox image: {0}")]
    DefaultImage(String),
    #[error("pull {}: {}", q(.reference), q(.reason))]
    Pull { reference: String, reason: String },
    #[error("registry {} requires credentials", q(.registry))]
    AuthRequired { registry: String },
    #[error("registry {} refused the credentials of user \"{}\" (from {})", q(.registry), q(.user), q(.source_name))]
    AuthRefused {
        registry: String,
        user: String,
        /// Where the credentials came from: a file, or the command line.
        source_name: String,
    },
    #[error("credentials file {}: {}", q(.path.display()), q(.reason))]
    Credentials { path: PathBuf, reason: String },
    #[error("generate config.json: {}", q(.0))]
    Bundle(String),
}

/// Every field that can hold bytes from an image, an archive, a registry or a parser error is
/// shown through this: escaped and cut short ([`crate::quote`]).
fn q(field: impl std::fmt::Display) -> String {
    crate::quote::untrusted_str(&field.to_string())
}

/// What to do about a full disk or quota, which otherwise reads as a bare errno.
fn full_disk_hint(e: &io::Error) -> &'static str {
    // Kinds, not errno: tempfile wraps its errors (adding the path), which keeps only the kind.
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            ": the filesystem is full (free space, or remove unused images with `strata rmi` and `strata image prune`, and try again)"
        }
        _ => "",
    }
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
