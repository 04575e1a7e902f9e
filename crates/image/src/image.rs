//! A stored image: its manifest, its config and its unpacked layers.

use std::path::PathBuf;

use oci_spec::image::{ImageConfiguration, ImageManifest};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Where images are read from: the blobs and unpacked layers of a store (store.rs implements
/// it for `Store`).
pub(crate) trait StoredImages {
    /// A JSON blob (manifest, config), its digest verified.
    fn read_json_blob(&self, d: &Digest) -> Result<Vec<u8>>;
    /// The directory of an unpacked layer, by its diff id.
    fn layer_path(&self, diff_id: &Digest) -> PathBuf;
}

/// An image in the store, ready to be turned into a root filesystem and a config.json.
#[derive(Debug, Clone)]
pub struct Image {
    name: Option<String>,
    digest: Digest,
    config_digest: Digest,
    manifest: ImageManifest,
    config: ImageConfiguration,
    layers: Vec<PathBuf>,
}

impl Image {
    /// Loads the image whose manifest is `digest`; every layer must be unpacked.
    pub(crate) fn load(
        store: &impl StoredImages,
        name: Option<String>,
        digest: Digest,
    ) -> Result<Image> {
        let (manifest, config_digest) = read_manifest(store, &digest)?;
        let config = read_config(store, &config_digest)?;
        let mut layers = Vec::new();
        for d in config.rootfs().diff_ids() {
            let d = Digest::parse(d)?;
            let p = store.layer_path(&d);
            if !p.is_dir() {
                return Err(Error::BadManifest(format!(
                    "image {}: layer {d} is not unpacked in the store (removed by hand?): load or pull the image again",
                    name.as_deref().unwrap_or(digest.as_str())
                )));
            }
            layers.push(p);
        }
        Ok(Image {
            name,
            digest,
            config_digest,
            manifest,
            config,
            layers,
        })
    }

    /// The `repo:tag` this image was resolved by, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The manifest digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The config digest (Docker's image ID).
    pub fn id(&self) -> &Digest {
        &self.config_digest
    }

    pub fn manifest(&self) -> &ImageManifest {
        &self.manifest
    }

    /// The image config (Entrypoint, Cmd, Env, User, WorkingDir, Labels...).
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }

    /// Unpacked layer directories, bottom layer first.
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }
}

/// Reads and validates a manifest blob; returns it with its config digest.
pub(crate) fn read_manifest(
    store: &impl StoredImages,
    d: &Digest,
) -> Result<(ImageManifest, Digest)> {
    let bytes = store.read_json_blob(d)?;
    parse_manifest(&bytes, d.as_str())
}

pub(crate) fn parse_manifest(bytes: &[u8], what: &str) -> Result<(ImageManifest, Digest)> {
    let m: ImageManifest = serde_json::from_slice(bytes).map_err(|error| Error::Json {
        what: format!("manifest {what}"),
        error,
    })?;
    let cd = Digest::parse(m.config().digest().as_ref())?;
    for l in m.layers() {
        Digest::parse(l.digest().as_ref())?;
    }
    Ok((m, cd))
}

pub(crate) fn read_config(store: &impl StoredImages, d: &Digest) -> Result<ImageConfiguration> {
    let bytes = store.read_json_blob(d)?;
    parse_config(&bytes, d.as_str())
}

pub(crate) fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfiguration> {
    let c: ImageConfiguration = serde_json::from_slice(bytes).map_err(|error| Error::Json {
        what: format!("image config {what}"),
        error,
    })?;
    for d in c.rootfs().diff_ids() {
        Digest::parse(d)?;
    }
    Ok(c)
}

pub(crate) fn config_digest_of(store: &impl StoredImages, manifest: &Digest) -> Result<Digest> {
    Ok(read_manifest(store, manifest)?.1)
}
