//! Importing images: oci-archive, docker-archive, OCI layout directories and plain rootfs tarballs.
//!
//! Archives are read as a stream: blobs go straight into the import's staging area (verified
//! against their `blobs/sha256/<hex>` names), the small JSON documents are kept in memory, and
//! nothing is extracted to disk by path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, MediaType};
use serde::Deserialize;

use crate::compression::Compression;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{parse_config, parse_manifest};
use crate::progress::{Progress, ProgressReader};
use crate::store::{Store, Transaction, MAX_JSON};

/// Where the blobs of an image come from while it is imported.
pub(crate) trait BlobSource {
    /// Makes sure blob `d` (of `size` bytes, when known) is staged or stored in `tx`.
    fn fetch(
        &mut self,
        tx: &mut Transaction<'_>,
        d: &Digest,
        size: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<()>;
}

/// Blobs already staged (a streamed archive).
struct Staged;
impl BlobSource for Staged {
    fn fetch(
        &mut self,
        tx: &mut Transaction<'_>,
        d: &Digest,
        _size: Option<u64>,
        _p: &dyn Progress,
    ) -> Result<()> {
        if tx.has_blob(d)? {
            Ok(())
        } else {
            Err(Error::MissingBlob(d.to_string()))
        }
    }
}

/// Blobs in an OCI layout directory.
struct LayoutDir<'a>(&'a Path);
impl BlobSource for LayoutDir<'_> {
    fn fetch(
        &mut self,
        tx: &mut Transaction<'_>,
        d: &Digest,
        size: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<()> {
        if tx.has_blob(d)? {
            return Ok(());
        }
        let p = self.0.join("blobs/sha256").join(d.hex());
        let f = File::open(&p)
            .map_err(|_| Error::MissingBlob(format!("{d} ({} does not exist)", p.display())))?;
        let total = f.metadata().map(|m| m.len()).ok();
        let step = format!("copy {}", d.short());
        progress.begin(&step, total);
        tx.put_blob_verified(
            ProgressReader { inner: f, progress },
            d,
            size,
            &p.display().to_string(),
        )?;
        progress.end(&step);
        Ok(())
    }
}

/// Loads every image of an archive or layout at `path` (`strata load -i`); returns the names
/// (or IDs of untagged images) loaded. `tag` names the image when the archive holds exactly one.
pub fn load(
    store: &Store,
    path: &Path,
    tag: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let mut tx = store.begin()?;
    let meta = std::fs::metadata(path).ctx("open archive", path)?;
    let names = if meta.is_dir() {
        load_layout_dir(&mut tx, path, tag, progress)?
    } else {
        load_archive(&mut tx, path, tag, progress)?
    };
    tx.commit()?;
    Ok(names)
}

fn load_layout_dir(
    tx: &mut Transaction<'_>,
    dir: &Path,
    tag: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let ip = dir.join("index.json");
    let bytes = read_small(&ip)?;
    let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|error| Error::Json {
        what: ip.display().to_string(),
        error,
    })?;
    let mut src = LayoutDir(dir);
    import_index(tx, &index, &mut src, tag, progress, dir)
}

fn read_small(p: &Path) -> Result<Vec<u8>> {
    let f = File::open(p).ctx("open", p)?;
    let mut b = Vec::new();
    f.take(MAX_JSON + 1).read_to_end(&mut b).ctx("read", p)?;
    if b.len() as u64 > MAX_JSON {
        return Err(Error::BadManifest(format!(
            "{}: larger than {MAX_JSON} bytes",
            p.display()
        )));
    }
    Ok(b)
}

/// Docker's `manifest.json` entry.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn load_archive(
    tx: &mut Transaction<'_>,
    path: &Path,
    tag: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let file = File::open(path).ctx("open archive", path)?;
    let total = file.metadata().map(|m| m.len()).ok();
    let step = format!(
        "read {}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    progress.begin(&step, total);
    let (_, reader) = crate::compression::decompress(ProgressReader {
        inner: file,
        progress,
    })
    .ctx("read archive", path)?;
    let unsupported = |reason: String| Error::UnsupportedArchive {
        path: path.to_path_buf(),
        reason,
    };

    let mut archive = tar::Archive::new(reader);
    let mut docs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Other files (docker-archive layer tars and configs), staged under their computed digest.
    let mut files: BTreeMap<String, Digest> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| unsupported(format!("not a tar archive: {e}")))?;
    for (seen, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| {
            unsupported(if seen == 0 {
                format!("not a tar archive (strata loads oci-archive and docker-archive tars, plain or gzip/zstd compressed, and OCI layout directories): {e}")
            } else {
                format!("truncated or corrupt tar: {e}")
            })
        })?;
        let name = clean(&entry.path_bytes());
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            // Old `docker save` links duplicate layers to one copy.
            if let Some(t) = entry.link_name_bytes() {
                let target = if kind.is_symlink() {
                    join_rel(&name, &clean(&t))
                } else {
                    clean(&t)
                };
                links.insert(name, target);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let d = Digest::parse(&format!("sha256:{hex}"))?;
            if !tx.has_blob(&d)? {
                let size = entry.size();
                tx.put_blob_verified(
                    &mut entry,
                    &d,
                    Some(size),
                    &format!("{} in {}", name, path.display()),
                )?;
            }
        } else if matches!(
            name.as_str(),
            "index.json" | "manifest.json" | "oci-layout" | "repositories"
        ) {
            let mut b = Vec::new();
            (&mut entry)
                .take(MAX_JSON + 1)
                .read_to_end(&mut b)
                .map_err(|e| unsupported(format!("{name}: {e}")))?;
            if b.len() as u64 > MAX_JSON {
                return Err(unsupported(format!("{name} larger than {MAX_JSON} bytes")));
            }
            docs.insert(name, b);
        } else {
            let (d, _) = tx.put_blob(&mut entry)?;
            files.insert(name, d);
        }
    }
    progress.end(&step);

    if let Some(b) = docs.get("index.json") {
        let index: ImageIndex = serde_json::from_slice(b).map_err(|error| Error::Json {
            what: format!("index.json in {}", path.display()),
            error,
        })?;
        let names = import_index(tx, &index, &mut Staged, tag, progress, path)?;
        let keep = referenced_blobs(tx)?;
        tx.discard_blobs_except(&keep);
        return Ok(names);
    }
    let Some(b) = docs.get("manifest.json") else {
        return Err(unsupported(
            "neither index.json (oci-archive) nor manifest.json (docker-archive) found".into(),
        ));
    };
    let manifests: Vec<DockerManifest> =
        serde_json::from_slice(b).map_err(|error| Error::Json {
            what: format!("manifest.json in {}", path.display()),
            error,
        })?;
    if tag.is_some() && manifests.len() != 1 {
        return Err(unsupported(format!(
            "--tag needs an archive with one image, this one has {}",
            manifests.len()
        )));
    }
    let lookup = |p: &str| -> Result<Digest> {
        let mut p = clean(p.as_bytes());
        for _ in 0..8 {
            match links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        if let Some(hex) = p.strip_prefix("blobs/sha256/") {
            return Digest::parse(&format!("sha256:{hex}"));
        }
        files.get(&p).cloned().ok_or_else(|| {
            Error::MissingBlob(format!(
                "{p} (named in manifest.json) is not in {}",
                path.display()
            ))
        })
    };
    let mut names = Vec::new();
    let mut keep = BTreeSet::new();
    for m in &manifests {
        let config_digest = lookup(&m.config)?;
        let mut layers = Vec::new();
        for l in &m.layers {
            let d = lookup(l)?;
            let size = std::fs::metadata(tx.blob_path(&d)?)
                .map(|m| m.len())
                .unwrap_or(0);
            layers.push((d, size));
        }
        let manifest_digest = synthesize_manifest(tx, &config_digest, &layers)?;
        import_manifest(tx, &manifest_digest, &mut Staged, progress)?;
        keep.insert(manifest_digest.clone());
        keep.insert(config_digest);
        keep.extend(layers.into_iter().map(|(d, _)| d));
        let tags: Vec<String> = match tag {
            Some(t) => vec![t.to_string()],
            None => m.repo_tags.clone().unwrap_or_default(),
        };
        if tags.is_empty() {
            tx.tag_untagged(&manifest_digest);
            names.push(manifest_digest.to_string());
        }
        for t in tags {
            tx.tag(&t, &manifest_digest)?;
            names.push(crate::reference::normalize(&t)?);
        }
    }
    tx.discard_blobs_except(&keep);
    Ok(names)
}

/// Blobs referenced by the manifests imported so far in this transaction.
fn referenced_blobs(tx: &Transaction<'_>) -> Result<BTreeSet<Digest>> {
    let mut keep = BTreeSet::new();
    for m in tx.imported_manifests() {
        let (manifest, cd) = parse_manifest(&tx.read_json_blob(&m)?, m.as_str())?;
        keep.insert(m.clone());
        keep.insert(cd);
        for l in manifest.layers() {
            keep.insert(Digest::parse(l.digest().as_ref())?);
        }
    }
    Ok(keep)
}

/// Picks the images of an OCI index (linux/amd64 from nested indexes) and imports them.
fn import_index(
    tx: &mut Transaction<'_>,
    index: &ImageIndex,
    src: &mut dyn BlobSource,
    tag: Option<&str>,
    progress: &dyn Progress,
    origin: &Path,
) -> Result<Vec<String>> {
    let mut images: Vec<(Digest, Option<String>)> = Vec::new();
    for desc in index.manifests() {
        let name = desc.annotations().as_ref().and_then(|a| {
            a.get("io.containerd.image.name").cloned().or_else(|| {
                a.get("org.opencontainers.image.ref.name")
                    .filter(|n| n.contains(':') || n.contains('/'))
                    .cloned()
            })
        });
        let d = Digest::parse(desc.digest().as_ref())?;
        match desc.media_type() {
            MediaType::ImageIndex => {
                src.fetch(tx, &d, Some(desc.size()), progress)?;
                let nested: ImageIndex =
                    serde_json::from_slice(&tx.read_json_blob(&d)?).map_err(|error| {
                        Error::Json {
                            what: format!("index {d}"),
                            error,
                        }
                    })?;
                let m = pick_platform(nested.manifests()).ok_or_else(|| {
                    Error::BadManifest(format!(
                        "index {d} in {} has no linux/amd64 image",
                        origin.display()
                    ))
                })?;
                images.push((Digest::parse(m.digest().as_ref())?, name));
            }
            MediaType::ImageManifest => images.push((d, name)),
            MediaType::Other(t) if t == "application/vnd.docker.distribution.manifest.v2+json" => {
                images.push((d, name))
            }
            MediaType::Other(t)
                if t == "application/vnd.docker.distribution.manifest.list.v2+json" =>
            {
                src.fetch(tx, &d, Some(desc.size()), progress)?;
                let nested: ImageIndex =
                    serde_json::from_slice(&tx.read_json_blob(&d)?).map_err(|error| {
                        Error::Json {
                            what: format!("index {d}"),
                            error,
                        }
                    })?;
                let m = pick_platform(nested.manifests()).ok_or_else(|| {
                    Error::BadManifest(format!("index {d} has no linux/amd64 image"))
                })?;
                images.push((Digest::parse(m.digest().as_ref())?, name));
            }
            other => tracing::debug!(media_type = %other, "skipping index entry"),
        }
    }
    if images.is_empty() {
        return Err(Error::UnsupportedArchive {
            path: origin.to_path_buf(),
            reason: "the index lists no image manifest".into(),
        });
    }
    if tag.is_some() && images.len() != 1 {
        return Err(Error::UnsupportedArchive {
            path: origin.to_path_buf(),
            reason: format!(
                "--tag needs an archive with one image, this one has {}",
                images.len()
            ),
        });
    }
    let mut names = Vec::new();
    for (d, name) in images {
        src.fetch(tx, &d, None, progress)?;
        import_manifest(tx, &d, src, progress)?;
        match tag.map(str::to_string).or(name) {
            Some(n) => {
                tx.tag(&n, &d)?;
                names.push(crate::reference::normalize(&n)?);
            }
            None => {
                tx.tag_untagged(&d);
                names.push(d.to_string());
            }
        }
    }
    Ok(names)
}

/// The linux/amd64 entry of an index (or its only entry when none says its platform).
pub(crate) fn pick_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests
        .iter()
        .find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
            })
        })
        .or_else(|| {
            if manifests.len() == 1 && manifests[0].platform().is_none() {
                manifests.first()
            } else {
                None
            }
        })
}

/// Imports one image manifest whose blob is already staged: fetches config and layers, checks
/// them against each other and unpacks the layers.
pub(crate) fn import_manifest(
    tx: &mut Transaction<'_>,
    d: &Digest,
    src: &mut dyn BlobSource,
    progress: &dyn Progress,
) -> Result<()> {
    let (manifest, cd) = parse_manifest(&tx.read_json_blob(d)?, d.as_str())?;
    src.fetch(tx, &cd, Some(manifest.config().size()), progress)?;
    let config = parse_config(&tx.read_json_blob(&cd)?, cd.as_str())?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::BadManifest(format!(
            "image {d}: the manifest lists {} layers but the config {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    for (l, diff) in manifest.layers().iter().zip(diff_ids) {
        let mt = l.media_type().to_string();
        let is_layer = matches!(
            l.media_type(),
            MediaType::ImageLayer
                | MediaType::ImageLayerGzip
                | MediaType::ImageLayerZstd
                | MediaType::ImageLayerNonDistributable
                | MediaType::ImageLayerNonDistributableGzip
                | MediaType::ImageLayerNonDistributableZstd
        ) || mt.starts_with("application/vnd.docker.image.rootfs.");
        if !is_layer {
            return Err(Error::UnsupportedMediaType {
                what: format!("layer {} of image {d}", l.digest()),
                media_type: mt,
            });
        }
        let ld = Digest::parse(l.digest().as_ref())?;
        src.fetch(tx, &ld, Some(l.size()), progress)?;
        let actual = std::fs::metadata(tx.blob_path(&ld)?)
            .map(|m| m.len())
            .unwrap_or(0);
        if actual != l.size() {
            return Err(Error::SizeMismatch {
                what: format!("layer {ld}"),
                expected: l.size(),
                actual,
            });
        }
        tx.unpack_layer(&ld, &Digest::parse(diff)?, progress)?;
    }
    tx.note_manifest(d);
    Ok(())
}

/// Writes an OCI manifest for a config and layer blobs (docker-archive, rootfs import, default
/// image). Deterministic: the same inputs give the same digest.
pub(crate) fn synthesize_manifest(
    tx: &mut Transaction<'_>,
    config: &Digest,
    layers: &[(Digest, u64)],
) -> Result<Digest> {
    let config_size = std::fs::metadata(tx.blob_path(config)?)
        .map(|m| m.len())
        .unwrap_or(0);
    let mut ls = Vec::new();
    for (d, size) in layers {
        let mut head = [0u8; 4];
        let n = File::open(tx.blob_path(d)?)
            .and_then(|mut f| f.read(&mut head))
            .ctx("read layer blob", tx.blob_path(d)?)?;
        let mt = match Compression::detect(&head[..n]) {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        };
        ls.push(serde_json::json!({"mediaType": mt, "digest": d.as_str(), "size": size}));
    }
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.as_str(), "size": config_size},
        "layers": ls,
    });
    let bytes = serde_json::to_vec(&m).map_err(|error| Error::Json {
        what: "manifest".into(),
        error,
    })?;
    tx.put_bytes(&bytes)
}

/// Imports a single-layer image from a layer blob already staged: writes config and manifest.
pub(crate) fn single_layer_image(
    tx: &mut Transaction<'_>,
    layer: &Digest,
    config: serde_json::Value,
    progress: &dyn Progress,
) -> Result<Digest> {
    let path = tx.blob_path(layer)?;
    let size = std::fs::metadata(&path)
        .ctx("stat layer blob", &path)?
        .len();
    // Unpacking computes the diffID; import_manifest then finds the layer already staged.
    let diff_id = tx.unpack_layer_unknown(layer, progress)?;
    let mut config = config;
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": [diff_id.as_str()]});
    let bytes = serde_json::to_vec(&config).map_err(|error| Error::Json {
        what: "image config".into(),
        error,
    })?;
    let cd = tx.put_bytes(&bytes)?;
    let md = synthesize_manifest(tx, &cd, &[(layer.clone(), size)])?;
    import_manifest(tx, &md, &mut Staged, progress)?;
    Ok(md)
}

/// `strata import FILE NAME`: a plain rootfs tarball (optionally gzip/zstd) as a one-layer image.
pub fn import_rootfs(
    store: &Store,
    path: &Path,
    name: &str,
    progress: &dyn Progress,
) -> Result<Digest> {
    let key = crate::reference::normalize(name)?;
    let mut tx = store.begin()?;
    let f = File::open(path).ctx("open rootfs tarball", path)?;
    let total = f.metadata().map(|m| m.len()).ok();
    let step = format!("read {}", path.display());
    progress.begin(&step, total);
    let (layer, _) = tx.put_blob(ProgressReader { inner: f, progress })?;
    progress.end(&step);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
    });
    let md = single_layer_image(&mut tx, &layer, config, progress)?;
    tx.tag(&key, &md)?;
    tx.commit()?;
    Ok(md)
}

/// Normalizes an archive path: "./a//b" → "a/b".
fn clean(p: &[u8]) -> String {
    String::from_utf8_lossy(p)
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Resolves a relative symlink target against the link's directory, lexically.
fn join_rel(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}
