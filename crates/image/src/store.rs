//! The content-addressed image store.
//!
//! ```text
//! <root>/blobs/sha256/<hex>     manifests, configs, layer blobs (verified sha256)
//! <root>/layers/sha256/<hex>/   layers unpacked once per diffID (overlay lowerdirs)
//! <root>/layers/tree/<hex>      the tree digest of each unpacked layer ([`crate::tree`])
//! <root>/images.json            name:tag → manifest digest
//! <root>/holds/<id>             manifest digests in use by containers (kept by prune)
//! <root>/lock                   shared by imports, exclusive for prune
//! <root>/locks/layers.lock      one unpacker at a time (held until the import commits)
//! <root>/tmp/                   staging of imports in progress
//! ```
//!
//! Imports stage everything (blobs, unpacked layers) under `tmp/` and only move it into place in
//! [`Transaction::commit`], so a failed import (bad digest, corrupt layer, full disk) leaves the
//! store exactly as it was. A killed import leaves its staging directory, which the next import
//! that finds no other one running removes (and `image prune` does).
//!
//! Stored blobs and layers are checked against their digests before an import reuses them: a
//! corrupt one is fetched or unpacked again and replaced at commit, so loading or pulling an
//! image again repairs it. [`Store::verify`] checks every image on request.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::image::{self, Image};
use crate::progress::{Progress, ProgressReader};
use crate::reference;
use crate::sys::{self, FileLock};
use crate::unpack;

/// Manifests and configs larger than this are refused (they are JSON documents of a few KiB).
pub(crate) const MAX_JSON: u64 = 16 << 20;

/// Where images live by default.
pub const DEFAULT_ROOT: &str = "/var/lib/strata";

/// An opened image store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// One entry of `images.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    manifest: String,
    /// Unix seconds when the name was (re)tagged.
    tagged: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, IndexEntry>,
}

/// A row of `strata images`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// `repo:tag`, or None for an untagged image.
    pub name: Option<String>,
    pub manifest_digest: String,
    /// The config digest (Docker's image ID).
    pub id: String,
    pub created: Option<String>,
    /// Sum of the layer blob sizes.
    pub size: u64,
    /// Why the image's manifest or config cannot be read (a corrupt blob), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// What [`Store::verify`] found for one image.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// `repo:tag`, or the manifest digest of an untagged image.
    pub name: String,
    pub manifest: String,
    /// How many digests were checked (manifest, config, layer blobs, unpacked layers).
    pub checked: u32,
    /// Each corrupt or missing part; empty when the image is intact.
    pub problems: Vec<String>,
}

/// An unpacked layer against its recorded tree digest.
enum LayerState {
    Intact,
    /// No digest recorded (unpacked by an older strata): the current one.
    Unrecorded(Digest),
    Changed {
        recorded: Digest,
        actual: Digest,
    },
    Missing,
}

/// What `image prune` removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneStats {
    pub blobs: u64,
    pub layers: u64,
    pub bytes: u64,
    /// Images whose manifest or config could not be read: their layers are unknown, so no blob or
    /// layer was removed (a re-pull or `strata image verify` repairs them; prune again after).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<String>,
}

impl Store {
    /// The store root from `STRATA_STORE`, or /var/lib/strata.
    pub fn default_root() -> PathBuf {
        std::env::var_os("STRATA_STORE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for d in [
            "blobs/sha256",
            "layers/sha256",
            "layers/tree",
            "holds",
            "locks",
            "tmp",
        ] {
            let p = root.join(d);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .ctx("create store directory", &p)?;
        }
        // Only root may enter the store: unpacked layers hold the images' setuid binaries, which
        // host users must not reach (CVE-2021-41091 in Docker). Overlay resolves lowerdirs with
        // the mounter's credentials, so containers do not need the path to be traversable.
        fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .ctx("chmod store directory", &root)?;
        // Lock files exist from the start so a failed import leaves no new file behind.
        for f in ["lock", "locks/index.lock", "locks/layers.lock"] {
            let p = root.join(f);
            if !p.exists() {
                File::create(&p).ctx("create lock file", &p)?;
            }
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a blob (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Path of an unpacked layer, by diffID (whether or not it exists).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    /// Where the tree digest of an unpacked layer is recorded.
    fn tree_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/tree").join(diff_id.hex())
    }

    /// Whether the stored blob `d` exists and hashes to its name.
    fn blob_intact(&self, d: &Digest) -> Result<Option<bool>> {
        let p = self.blob_path(d);
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("open blob", p),
        };
        let mut r = HashingReader::new(io::BufReader::with_capacity(256 * 1024, f));
        io::copy(&mut r, &mut io::sink()).ctx("read blob", &p)?;
        Ok(Some(r.finish().0 == *d))
    }

    /// The state of an unpacked layer against its recorded tree digest.
    fn layer_state(&self, diff_id: &Digest) -> Result<LayerState> {
        let p = self.layer_path(diff_id);
        if !p.is_dir() {
            return Ok(LayerState::Missing);
        }
        let actual = crate::tree::digest(&p).ctx("hash unpacked layer", &p)?;
        let recorded = fs::read_to_string(self.tree_path(diff_id))
            .ok()
            .and_then(|s| Digest::parse(s.trim()).ok());
        Ok(match recorded {
            None => LayerState::Unrecorded(actual),
            Some(r) if r == actual => LayerState::Intact,
            Some(r) => LayerState::Changed {
                recorded: r,
                actual,
            },
        })
    }

    /// Checks every stored image (or the one `name` resolves to) against its digests: manifest,
    /// config, layer blobs and unpacked layers. A layer unpacked before tree digests existed
    /// gets its digest recorded now.
    pub fn verify(&self, name: Option<&str>) -> Result<Vec<VerifyReport>> {
        let _lock = self.store_lock(false)?;
        let mut images: Vec<(String, Digest)> = Vec::new();
        match name {
            Some(n) => {
                let (key, d) = self.find(n)?;
                images.push((key, d));
            }
            None => {
                for (k, e) in &self.read_index()?.images {
                    images.push((k.clone(), Digest::parse(&e.manifest)?));
                }
            }
        }
        let mut out = Vec::new();
        let mut layers_checked: BTreeMap<Digest, Option<String>> = BTreeMap::new();
        for (name, md) in images {
            let mut problems = Vec::new();
            let mut checked = 0u32;
            let (manifest, cd) = match image::read_manifest(self, &md) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("manifest: {e}"));
                    out.push(VerifyReport {
                        name,
                        manifest: md.to_string(),
                        checked,
                        problems,
                    });
                    continue;
                }
            };
            checked += 1;
            let diff_ids = match image::read_config(self, &cd) {
                Ok(c) => c.rootfs().diff_ids().clone(),
                Err(e) => {
                    problems.push(format!("config: {e}"));
                    Vec::new()
                }
            };
            checked += 1;
            for l in manifest.layers() {
                let d = Digest::parse(l.digest().as_ref())?;
                checked += 1;
                match self.blob_intact(&d)? {
                    Some(true) => {}
                    Some(false) => problems.push(format!(
                        "layer blob {d} does not hash to its digest (corrupt)"
                    )),
                    None => problems.push(format!("layer blob {d} is missing")),
                }
            }
            for diff in &diff_ids {
                let d = Digest::parse(diff)?;
                checked += 1;
                let verdict = match layers_checked.get(&d) {
                    Some(v) => v.clone(),
                    None => {
                        let v = match self.layer_state(&d)? {
                            LayerState::Intact => None,
                            LayerState::Unrecorded(t) => {
                                write_atomic(
                                    &self.tree_path(&d),
                                    format!("{t}\n").as_bytes(),
                                )?;
                                None
                            }
                            LayerState::Changed { recorded, actual } => Some(format!(
                                "unpacked layer {d} changed on disk (tree digest {actual}, recorded {recorded})"
                            )),
                            LayerState::Missing => {
                                Some(format!("unpacked layer {d} is missing"))
                            }
                        };
                        layers_checked.insert(d.clone(), v.clone());
                        v
                    }
                };
                problems.extend(verdict);
            }
            out.push(VerifyReport {
                name,
                manifest: md.to_string(),
                checked,
                problems,
            });
        }
        Ok(out)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn read_index(&self) -> Result<Index> {
        let p = self.index_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|error| Error::Json {
                what: p.display().to_string(),
                error,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(e).ctx("read image index", p),
        }
    }

    /// Writes the index atomically (temp file, fsync, rename, fsync dir).
    fn write_index(&self, index: &Index) -> Result<()> {
        let p = self.index_path();
        let bytes = serde_json::to_vec_pretty(index).map_err(|error| Error::Json {
            what: "image index".into(),
            error,
        })?;
        write_atomic(&p, &bytes)
    }

    /// Runs `f` on the index under the index lock and writes the result.
    fn update_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let lp = self.root.join("locks/index.lock");
        let _lock = FileLock::acquire(&lp, true).ctx("lock image index", &lp)?;
        let mut index = self.read_index()?;
        let r = f(&mut index)?;
        self.write_index(&index)?;
        Ok(r)
    }

    pub(crate) fn store_lock(&self, exclusive: bool) -> Result<FileLock> {
        let p = self.root.join("lock");
        FileLock::acquire(&p, exclusive).ctx("lock store", p)
    }

    /// Reads a JSON blob (manifest, config) from the store, verifying its digest.
    pub(crate) fn read_json_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        read_verified(&self.blob_path(d), d)
    }

    /// The index key and manifest digest an image name resolves to, without reading the image
    /// (so a damaged one can still be named).
    fn find(&self, name: &str) -> Result<(String, Digest)> {
        let index = self.read_index()?;
        if let Ok(key) = reference::normalize(name) {
            if let Some(e) = index.images.get(&key) {
                return Ok((key, Digest::parse(&e.manifest)?));
            }
        }
        let hexpart = name.strip_prefix("sha256:").unwrap_or(name);
        if hexpart.len() >= 4 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<(&String, &IndexEntry)> = index
                .images
                .iter()
                .filter(|(_, e)| {
                    e.manifest
                        .strip_prefix("sha256:")
                        .unwrap_or("")
                        .starts_with(hexpart)
                })
                .collect();
            if let [(k, e)] = hits.as_slice() {
                return Ok(((*k).clone(), Digest::parse(&e.manifest)?));
            }
        }
        // ID prefixes need the config: resolve the usual way.
        let img = self.resolve_existing(name)?;
        let key = img
            .name()
            .map(str::to_string)
            .unwrap_or_else(|| img.digest().to_string());
        Ok((key, img.digest().clone()))
    }

    /// Finds an image that is in the store (resolve.rs adds the default image).
    pub(crate) fn resolve_existing(&self, name: &str) -> Result<Image> {
        let index = self.read_index()?;
        let key = reference::normalize(name)?;
        if let Some(e) = index.images.get(&key) {
            let d = Digest::parse(&e.manifest)?;
            return Image::load(self, Some(key), d);
        }
        // A digest or an ID prefix (at least 4 hex characters, like docker).
        let hexpart = name.strip_prefix("sha256:").unwrap_or(name);
        if hexpart.len() >= 4 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found: Option<(Option<String>, Digest)> = None;
            for (n, e) in &index.images {
                let d = Digest::parse(&e.manifest)?;
                let id = image::config_digest_of(self, &d).ok();
                let hit = d.hex().starts_with(hexpart)
                    || id.as_ref().is_some_and(|id| id.hex().starts_with(hexpart));
                if hit {
                    match &found {
                        Some((_, prev)) if *prev != d => {
                            return Err(Error::Ambiguous {
                                image: name.into(),
                                reason: "the prefix matches several images; type more of the ID"
                                    .into(),
                            })
                        }
                        _ => {
                            found = Some((
                                if n.starts_with("sha256:") {
                                    None
                                } else {
                                    Some(n.clone())
                                },
                                d,
                            ))
                        }
                    }
                }
            }
            if let Some((n, d)) = found {
                return Image::load(self, n, d);
            }
        }
        Err(Error::ImageNotFound(name.to_string()))
    }

    /// All images, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for (name, e) in &index.images {
            let d = Digest::parse(&e.manifest)?;
            let name = if name.starts_with("sha256:") {
                None
            } else {
                Some(name.clone())
            };
            // A damaged image is listed (with what is wrong) rather than hiding the others.
            let read = image::read_manifest(self, &d).and_then(|(m, cd)| {
                let c = image::read_config(self, &cd)?;
                Ok((m, cd, c))
            });
            out.push(match read {
                Ok((manifest, config_digest, config)) => ImageSummary {
                    name,
                    manifest_digest: d.to_string(),
                    id: config_digest.to_string(),
                    created: config.created().clone(),
                    size: manifest.layers().iter().map(|l| l.size()).sum(),
                    damaged: None,
                },
                Err(e) => ImageSummary {
                    name,
                    manifest_digest: d.to_string(),
                    id: d.to_string(),
                    created: None,
                    size: 0,
                    damaged: Some(format!(
                        "{e}; `strata image verify` checks it, loading or pulling it again repairs it"
                    )),
                },
            });
        }
        Ok(out)
    }

    /// Removes a name (`strata rmi`). Blobs and layers stay until `image prune`. An untagged
    /// image can be removed by ID prefix. Returns the manifest digest the name pointed to.
    pub fn remove(&self, name: &str) -> Result<Digest> {
        let img = self.resolve_existing(name)?;
        let key = img
            .name()
            .map(str::to_string)
            .unwrap_or_else(|| img.digest().to_string());
        self.update_index(|index| {
            index
                .images
                .remove(&key)
                .ok_or_else(|| Error::ImageNotFound(name.to_string()))?;
            Ok(())
        })?;
        Ok(img.digest().clone())
    }

    /// Tags an existing manifest with a name.
    pub fn tag(&self, name: &str, manifest: &Digest) -> Result<()> {
        let key = reference::normalize(name)?;
        if !self.blob_path(manifest).exists() {
            return Err(Error::MissingBlob(manifest.to_string()));
        }
        self.update_index(|index| {
            index.images.insert(
                key,
                IndexEntry {
                    manifest: manifest.to_string(),
                    tagged: now(),
                },
            );
            Ok(())
        })
    }

    /// Records that `holder` (a container id) uses `image`, so `image prune` keeps its layers
    /// even after `rmi`.
    pub fn hold(&self, holder: &str, image: &Image) -> Result<()> {
        let p = self.hold_path(holder)?;
        write_atomic(&p, image.digest().as_str().as_bytes())
    }

    /// Drops a hold taken with [`Store::hold`].
    pub fn release(&self, holder: &str) -> Result<()> {
        let p = self.hold_path(holder)?;
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).ctx("remove hold", p),
            _ => Ok(()),
        }
    }

    fn hold_path(&self, holder: &str) -> Result<PathBuf> {
        if holder.is_empty()
            || holder.len() > 128
            || !holder
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            || holder.starts_with('.')
        {
            return Err(Error::BadReference {
                reference: holder.into(),
                reason: "holder ids are [A-Za-z0-9_.-]".into(),
            });
        }
        Ok(self.root.join("holds").join(holder))
    }

    /// Removes blobs and layers no tagged or held image references, and leftovers of
    /// interrupted imports. Waits for imports in progress.
    pub fn prune(&self) -> Result<PruneStats> {
        let _lock = self.store_lock(true)?;
        let mut manifests: BTreeSet<Digest> = BTreeSet::new();
        for e in self.read_index()?.images.values() {
            manifests.insert(Digest::parse(&e.manifest)?);
        }
        let holds = self.root.join("holds");
        for ent in fs::read_dir(&holds).ctx("list holds", &holds)? {
            let ent = ent.ctx("list holds", &holds)?;
            if let Ok(s) = fs::read_to_string(ent.path()) {
                if let Ok(d) = Digest::parse(s.trim()) {
                    manifests.insert(d);
                }
            }
        }
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        let mut layers: BTreeSet<String> = BTreeSet::new();
        let mut stats = PruneStats::default();
        for m in &manifests {
            blobs.insert(m.hex().to_string());
            let Ok((manifest, config_digest)) = image::read_manifest(self, m) else {
                stats.damaged.push(m.to_string());
                continue;
            };
            blobs.insert(config_digest.hex().to_string());
            for l in manifest.layers() {
                blobs.insert(
                    l.digest()
                        .to_string()
                        .trim_start_matches("sha256:")
                        .to_string(),
                );
            }
            match image::read_config(self, &config_digest) {
                Ok(config) => {
                    for d in config.rootfs().diff_ids() {
                        layers.insert(d.trim_start_matches("sha256:").to_string());
                    }
                }
                Err(_) => stats.damaged.push(m.to_string()),
            }
        }
        self.sweep_stray_temp_files()?;
        let tmp = self.root.join("tmp");
        for ent in fs::read_dir(&tmp).ctx("list staging", &tmp)? {
            let ent = ent.ctx("list staging", &tmp)?;
            remove_tree(&ent.path())?;
        }
        if !stats.damaged.is_empty() {
            // Which layers a damaged image needs is unknown: removing any could lose one it
            // still uses, so nothing goes until it is repaired.
            tracing::warn!(images = ?stats.damaged, "prune kept every blob and layer: an image is damaged");
            return Ok(stats);
        }
        let bdir = self.root.join("blobs/sha256");
        for ent in fs::read_dir(&bdir).ctx("list blobs", &bdir)? {
            let ent = ent.ctx("list blobs", &bdir)?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if !blobs.contains(&name) {
                let size = ent.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(ent.path()).ctx("remove blob", ent.path())?;
                stats.blobs += 1;
                stats.bytes += size;
            }
        }
        let ldir = self.root.join("layers/sha256");
        for ent in fs::read_dir(&ldir).ctx("list layers", &ldir)? {
            let ent = ent.ctx("list layers", &ldir)?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if !layers.contains(&name) {
                stats.bytes += du(&ent.path());
                remove_tree(&ent.path())?;
                stats.layers += 1;
            }
        }
        let tdir = self.root.join("layers/tree");
        for ent in fs::read_dir(&tdir).ctx("list layer digests", &tdir)? {
            let ent = ent.ctx("list layer digests", &tdir)?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if !layers.contains(&name) {
                fs::remove_file(ent.path()).ctx("remove layer digest", ent.path())?;
            }
        }
        Ok(stats)
    }

    /// Removes the temp files of atomic writes (`.tmp*` beside images.json, layer digests and
    /// holds) that a kill between create and rename left. Index and hold writes do not take the
    /// store lock, so only files older than a minute go (a live write takes milliseconds).
    fn sweep_stray_temp_files(&self) -> Result<()> {
        let stale = |m: &fs::Metadata| {
            m.is_file()
                && m.modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() >= 60)
        };
        for dir in [
            self.root.clone(),
            self.root.join("layers/tree"),
            self.root.join("holds"),
        ] {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for ent in rd.flatten() {
                let name = ent.file_name();
                if name.to_string_lossy().starts_with(".tmp")
                    && ent.metadata().is_ok_and(|m| stale(&m))
                {
                    tracing::info!(file = %ent.path().display(), "removing what a killed write left");
                    fs::remove_file(ent.path()).ctx("remove", ent.path())?;
                }
            }
        }
        Ok(())
    }

    /// Starts an import: everything it adds is staged until [`Transaction::commit`].
    pub fn begin(&self) -> Result<Transaction<'_>> {
        let tmp = self.root.join("tmp");
        // Every import holds the store lock shared for its whole life: when it can be taken
        // exclusively, no import is running and whatever is staged was left by a killed one.
        let lp = self.root.join("lock");
        if let Some(lock) = FileLock::try_acquire(&lp, true).ctx("lock store", &lp)? {
            for ent in fs::read_dir(&tmp).ctx("list staging", &tmp)? {
                let ent = ent.ctx("list staging", &tmp)?;
                tracing::info!(dir = %ent.path().display(), "removing what a killed import staged");
                remove_tree(&ent.path())?;
            }
            self.sweep_stray_temp_files()?;
            drop(lock);
        }
        let lock = self.store_lock(false)?;
        let dir = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&tmp)
            .ctx("create staging directory", &tmp)?;
        for d in ["blobs", "layers"] {
            fs::create_dir(dir.path().join(d)).ctx("create staging directory", dir.path())?;
        }
        Ok(Transaction {
            store: self,
            dir,
            _lock: lock,
            blobs: BTreeSet::new(),
            layers: Vec::new(),
            layers_lock: None,
            tags: Vec::new(),
            manifests: Vec::new(),
            intact_blobs: BTreeSet::new(),
            replace_blobs: BTreeSet::new(),
            trees: BTreeMap::new(),
            replace_layers: BTreeSet::new(),
        })
    }
}

/// An import in progress. Dropping it without `commit` discards everything it staged.
pub struct Transaction<'s> {
    store: &'s Store,
    dir: tempfile::TempDir,
    _lock: FileLock,
    blobs: BTreeSet<Digest>,
    /// Layers unpacked into staging.
    layers: Vec<Digest>,
    /// Held from the first unpack until commit, so two imports never unpack the same layer
    /// twice (a single lock: several per-layer locks taken in any order could deadlock).
    layers_lock: Option<FileLock>,
    tags: Vec<(String, Digest)>,
    manifests: Vec<Digest>,
    /// Stored blobs checked against their digest by this import.
    intact_blobs: BTreeSet<Digest>,
    /// Stored blobs found corrupt: the staged copy replaces them at commit.
    replace_blobs: BTreeSet<Digest>,
    /// Tree digests to record at commit, by diffID.
    trees: BTreeMap<Digest, Digest>,
    /// Stored layers found changed: the staged unpack replaces them at commit.
    replace_layers: BTreeSet<Digest>,
}

impl image::StoredImages for Store {
    fn read_json_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        Store::read_json_blob(self, d)
    }

    fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        Store::layer_path(self, diff_id)
    }
}

impl<'s> Transaction<'s> {
    /// Records that a manifest was fully imported (config fetched, layers unpacked).
    pub(crate) fn note_manifest(&mut self, d: &Digest) {
        if !self.manifests.contains(d) {
            self.manifests.push(d.clone());
        }
    }

    /// Manifests imported so far.
    pub(crate) fn imported_manifests(&self) -> Vec<Digest> {
        self.manifests.clone()
    }

    /// Drops staged blobs not in `keep` (archive files no image references).
    pub(crate) fn discard_blobs_except(&mut self, keep: &BTreeSet<Digest>) {
        let drop: Vec<Digest> = self
            .blobs
            .iter()
            .filter(|d| !keep.contains(*d))
            .cloned()
            .collect();
        for d in drop {
            let _ = fs::remove_file(self.staged_blob(&d));
            self.blobs.remove(&d);
        }
    }

    pub fn store(&self) -> &'s Store {
        self.store
    }

    fn staged_blob(&self, d: &Digest) -> PathBuf {
        self.dir.path().join("blobs").join(d.hex())
    }

    /// Whether the blob is staged, or stored and intact (hashed once per import: a corrupt
    /// stored blob counts as absent, so the import fetches it again and replaces it).
    pub fn has_blob(&mut self, d: &Digest) -> Result<bool> {
        if self.blobs.contains(d) || self.intact_blobs.contains(d) {
            return Ok(true);
        }
        match self.store.blob_intact(d)? {
            Some(true) => {
                self.intact_blobs.insert(d.clone());
                Ok(true)
            }
            Some(false) => {
                tracing::warn!(blob = %d, "stored blob is corrupt: fetching it again");
                self.replace_blobs.insert(d.clone());
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Path to read a blob from (staged or stored).
    pub fn blob_path(&self, d: &Digest) -> Result<PathBuf> {
        if self.blobs.contains(d) {
            return Ok(self.staged_blob(d));
        }
        let p = self.store.blob_path(d);
        if p.exists() && !self.replace_blobs.contains(d) {
            Ok(p)
        } else {
            Err(Error::MissingBlob(d.to_string()))
        }
    }

    /// Reads a (small, JSON) blob, verifying its digest.
    pub fn read_json_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        read_verified(&self.blob_path(d)?, d)
    }

    /// Stages a blob from `reader`; its content must hash to `expected` (and have `size` bytes
    /// when given). The whole reader is consumed.
    pub fn put_blob_verified(
        &mut self,
        reader: impl Read,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<()> {
        let (d, n) = self.write_blob(reader, Some(expected))?;
        if d != *expected {
            // write_blob already removed the temp file.
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: expected.to_string(),
                actual: d.to_string(),
            });
        }
        if let Some(s) = size {
            if s != n {
                let _ = fs::remove_file(self.staged_blob(&d));
                self.blobs.remove(&d);
                return Err(Error::SizeMismatch {
                    what: what.to_string(),
                    expected: s,
                    actual: n,
                });
            }
        }
        Ok(())
    }

    /// Stages a blob whose digest is computed from its content.
    pub fn put_blob(&mut self, reader: impl Read) -> Result<(Digest, u64)> {
        self.write_blob(reader, None)
    }

    /// Stages a blob from memory.
    pub fn put_bytes(&mut self, bytes: &[u8]) -> Result<Digest> {
        Ok(self.write_blob(bytes, None)?.0)
    }

    fn write_blob(
        &mut self,
        mut reader: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64)> {
        let mut w = self.blob_writer()?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let what = expected
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "blob".into());
                    return Err(Error::Io {
                        step: "read blob (truncated or unreadable source)",
                        path: what.into(),
                        error: e,
                    });
                }
            };
            w.write(&buf[..n])?;
        }
        self.finish_blob(w, expected)
    }

    /// A writer for a blob that arrives in pieces (a registry download); finish it with
    /// [`Transaction::finish_blob`]. Dropping it discards the data.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let bdir = self.dir.path().join("blobs");
        let tmp = tempfile::NamedTempFile::new_in(&bdir).ctx("create blob temp file", &bdir)?;
        Ok(BlobWriter {
            w: HashingWriter::new(io::BufWriter::with_capacity(256 * 1024, tmp)),
            dir: bdir,
        })
    }

    /// Verifies (when `expected` is given), fsyncs and stages a blob written with a
    /// [`BlobWriter`]. Returns its digest and size; on a digest mismatch nothing is staged and
    /// the computed digest is returned for the caller's error.
    pub fn finish_blob(
        &mut self,
        w: BlobWriter,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64)> {
        let BlobWriter { w, dir } = w;
        let (bw, d, n) = w.finish();
        let tmp = bw
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx("write blob", &dir)?;
        if expected.is_some_and(|e| *e != d) {
            return Ok((d, n)); // the dropped temp file is removed
        }
        tmp.as_file().sync_all().ctx("fsync blob", tmp.path())?;
        let dest = self.staged_blob(&d);
        tmp.persist(&dest)
            .map_err(|e| e.error)
            .ctx("store blob", &dest)?;
        self.blobs.insert(d.clone());
        Ok((d, n))
    }

    /// Unpacks layer blob `blob` whose uncompressed tar must hash to `diff_id`, unless that layer
    /// is already unpacked in the store.
    pub fn unpack_layer(
        &mut self,
        blob: &Digest,
        diff_id: &Digest,
        progress: &dyn Progress,
    ) -> Result<()> {
        if self.layers.contains(diff_id) {
            return Ok(());
        }
        if self.layers_lock.is_none() {
            let lp = self.store.root.join("locks/layers.lock");
            self.layers_lock = Some(FileLock::acquire(&lp, true).ctx("lock layers", &lp)?);
        }
        match self.store.layer_state(diff_id)? {
            LayerState::Intact => return Ok(()),
            LayerState::Unrecorded(t) => {
                self.trees.insert(diff_id.clone(), t);
                return Ok(());
            }
            LayerState::Changed { recorded, actual } => {
                tracing::warn!(layer = %diff_id, %recorded, %actual, "unpacked layer changed on disk: unpacking it again");
                self.replace_layers.insert(diff_id.clone());
            }
            LayerState::Missing => {}
        }
        let dest = self.dir.path().join("layers").join(diff_id.hex());
        let actual = self.unpack_into(
            blob,
            &dest,
            &format!("unpack {}", diff_id.short()),
            progress,
        )?;
        if actual != *diff_id {
            return Err(Error::DigestMismatch {
                what: format!("uncompressed layer {blob}"),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        let tree = crate::tree::digest(&dest).ctx("hash unpacked layer", &dest)?;
        self.trees.insert(diff_id.clone(), tree);
        self.layers.push(diff_id.clone());
        Ok(())
    }

    /// Unpacks a layer blob whose diffID is not known yet (a rootfs tarball) in one pass:
    /// into a temporary directory, renamed after the diffID computed on the way.
    pub fn unpack_layer_unknown(
        &mut self,
        blob: &Digest,
        progress: &dyn Progress,
    ) -> Result<Digest> {
        if self.layers_lock.is_none() {
            let lp = self.store.root.join("locks/layers.lock");
            self.layers_lock = Some(FileLock::acquire(&lp, true).ctx("lock layers", &lp)?);
        }
        let tmp = self
            .dir
            .path()
            .join("layers")
            .join(format!("unknown-{}", blob.hex()));
        let diff_id =
            self.unpack_into(blob, &tmp, &format!("unpack {}", blob.short()), progress)?;
        if self.layers.contains(&diff_id) {
            remove_tree(&tmp)?;
            return Ok(diff_id);
        }
        let tree = crate::tree::digest(&tmp).ctx("hash unpacked layer", &tmp)?;
        match self.store.layer_state(&diff_id)? {
            LayerState::Intact => {
                remove_tree(&tmp)?;
                return Ok(diff_id);
            }
            LayerState::Unrecorded(t) => {
                remove_tree(&tmp)?;
                self.trees.insert(diff_id.clone(), t);
                return Ok(diff_id);
            }
            LayerState::Changed { .. } => {
                self.replace_layers.insert(diff_id.clone());
            }
            LayerState::Missing => {}
        }
        let dest = self.dir.path().join("layers").join(diff_id.hex());
        fs::rename(&tmp, &dest).ctx("rename unpacked layer", &dest)?;
        self.trees.insert(diff_id.clone(), tree);
        self.layers.push(diff_id.clone());
        Ok(diff_id)
    }

    /// Unpacks blob `blob` into the new directory `dest`; returns the uncompressed digest.
    fn unpack_into(
        &self,
        blob: &Digest,
        dest: &Path,
        step: &str,
        progress: &dyn Progress,
    ) -> Result<Digest> {
        let path = self.blob_path(blob)?;
        let file = File::open(&path).ctx("open layer blob", &path)?;
        let total = file.metadata().map(|m| m.len()).ok();
        progress.begin(step, total);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(dest)
            .ctx("create layer directory", dest)?;
        // mode() is filtered by umask: set it explicitly, the layer root must be traversable.
        fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .ctx("chmod layer directory", dest)?;
        let root = sys::open_dir(dest).ctx("open layer directory", dest)?;
        let (_, tar) = crate::compression::decompress(ProgressReader {
            inner: file,
            progress,
        })
        .ctx("read layer blob", &path)?;
        let mut hashed = HashingReader::new(tar);
        unpack::unpack_tar(&mut hashed, root.as_fd()).map_err(|e| match e {
            Error::BadLayer { reason, .. } => Error::BadLayer {
                layer: blob.to_string(),
                reason,
            },
            e => e,
        })?;
        // tar's reader may stop at the end-of-archive blocks: hash whatever follows too.
        io::copy(&mut hashed, &mut io::sink()).map_err(|e| Error::BadLayer {
            layer: blob.to_string(),
            reason: format!("truncated or corrupt: {e}"),
        })?;
        progress.end(step);
        Ok(hashed.finish().0)
    }

    /// Names `manifest` as `name` when the transaction commits.
    pub fn tag(&mut self, name: &str, manifest: &Digest) -> Result<()> {
        let key = reference::normalize(name)?;
        self.tags.push((key, manifest.clone()));
        Ok(())
    }

    /// Records an untagged image (shown as `<none>` and found by ID).
    pub fn tag_untagged(&mut self, manifest: &Digest) {
        self.tags.push((manifest.to_string(), manifest.clone()));
    }

    /// Moves staged blobs and layers into the store and updates the index.
    pub fn commit(self) -> Result<()> {
        let bdir = self.store.root.join("blobs/sha256");
        for d in &self.blobs {
            let from = self.staged_blob(d);
            let to = bdir.join(d.hex());
            // Content-addressed: an existing intact blob is the same bytes; keep it untouched.
            // A corrupt one is replaced (rename is atomic: readers see one or the other).
            let keep = !self.replace_blobs.contains(d)
                && (self.intact_blobs.contains(d) || self.store.blob_intact(d)? == Some(true));
            if !keep {
                fs::rename(&from, &to).ctx("move blob into store", &to)?;
            }
        }
        sys::fsync_dir(&bdir).ctx("fsync", &bdir)?;
        // Tree digests first: a layer is never published without its digest.
        for (d, t) in &self.trees {
            write_atomic(&self.store.tree_path(d), format!("{t}\n").as_bytes())?;
        }
        let ldir = self.store.root.join("layers/sha256");
        for d in &self.layers {
            let from = self.dir.path().join("layers").join(d.hex());
            let to = ldir.join(d.hex());
            // syncfs makes the unpacked files durable before the rename publishes them.
            if let Ok(f) = File::open(&from) {
                // SAFETY: f is a live fd for the call.
                unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
            }
            if !to.exists() {
                fs::rename(&from, &to).ctx("move layer into store", &to)?;
            } else if self.replace_layers.contains(d) {
                // Swap the good tree in atomically; the changed one leaves with the staging dir.
                sys::exchange(&from, &to).ctx("replace changed layer", &to)?;
            }
        }
        sys::fsync_dir(&ldir).ctx("fsync", &ldir)?;
        if !self.tags.is_empty() {
            let tags = &self.tags;
            self.store.update_index(|index| {
                for (name, d) in tags {
                    // Re-tagging a name drops the untagged placeholder of the same image.
                    index.images.retain(|k, e| {
                        !(k.starts_with("sha256:") && e.manifest == d.as_str() && k != name)
                    });
                    index.images.insert(
                        name.clone(),
                        IndexEntry {
                            manifest: d.to_string(),
                            tagged: now(),
                        },
                    );
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// A blob being written into an import's staging area.
pub struct BlobWriter {
    w: HashingWriter<io::BufWriter<tempfile::NamedTempFile>>,
    dir: PathBuf,
}

impl BlobWriter {
    /// Appends bytes (a full disk is reported with the staging path).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes).ctx("write blob", &self.dir)
    }
}

/// Reads a small blob and checks its digest.
pub(crate) fn read_verified(path: &Path, d: &Digest) -> Result<Vec<u8>> {
    let f = File::open(path).ctx("open blob", path)?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .ctx("read blob", path)?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(Error::BadManifest(format!(
            "{d}: JSON document larger than {MAX_JSON} bytes"
        )));
    }
    let actual = Digest::of(&bytes);
    if actual != *d {
        return Err(Error::DigestMismatch {
            what: path.display().to_string(),
            expected: d.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(bytes)
}

/// Writes a file atomically: temp file in the same directory, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).ctx("create temp file", dir)?;
    tmp.write_all(bytes).ctx("write", tmp.path())?;
    tmp.as_file().sync_all().ctx("fsync", tmp.path())?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .ctx("rename into place", path)?;
    sys::fsync_dir(dir).ctx("fsync", dir)?;
    Ok(())
}

/// Removes a directory tree without following symlinks (std's remove_dir_all is symlink-safe);
/// clears the immutable/append-only inode flags a hostile layer cannot set, but a chmod 000
/// directory from a layer is made writable first.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).ctx("stat", path),
        Ok(m) if !m.is_dir() => return fs::remove_file(path).ctx("remove", path),
        Ok(_) => {}
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx("remove directory tree", path),
    }
}

/// Disk usage of a tree in bytes (for prune statistics), not following symlinks.
fn du(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        total += m.blocks() * 512;
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_images_survive_rmi_and_prune() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let img = s.resolve_and_hold("busybox", "ctr-1").unwrap();
        s.remove("busybox").unwrap();
        let st = s.prune().unwrap();
        assert_eq!((st.blobs, st.layers), (0, 0));
        assert!(img.layers()[0].join("bin/busybox").exists());
        assert!(s.hold("../evil", &img).is_err());
        s.release("ctr-1").unwrap();
        s.release("ctr-1").unwrap();
        let st = s.prune().unwrap();
        assert_eq!((st.blobs, st.layers), (3, 1));
        assert!(!img.layers()[0].exists());
    }

    /// A named image whose config is damaged keeps its layers through prune (before, prune
    /// removed them: the image was lost until a re-pull), and prune says which image it kept for.
    #[test]
    fn prune_keeps_every_layer_while_an_image_is_damaged() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let img = s.resolve("busybox").unwrap();
        let (_, config) = image::read_manifest(&s, img.digest()).unwrap();
        fs::write(s.blob_path(&config), b"{\"not\": \"the config\"}").unwrap();
        // An unreferenced layer that prune would otherwise remove.
        let orphan = d.path().join("layers/sha256").join("ab".repeat(32));
        fs::create_dir_all(orphan.join("bin")).unwrap();
        let st = s.prune().unwrap();
        assert_eq!(st.damaged, vec![img.digest().to_string()]);
        assert_eq!((st.blobs, st.layers), (0, 0));
        assert!(img.layers()[0].join("bin/busybox").exists());
        assert!(orphan.exists());
    }

    /// The temp file of an atomic write that a kill left beside images.json goes with the next
    /// prune or import once it is stale; a fresh one (a write in progress) stays.
    #[test]
    fn stale_temp_files_of_killed_writes_are_swept() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let old = d.path().join(".tmpKilled");
        let fresh = d.path().join(".tmpLive");
        fs::write(&old, b"half an index").unwrap();
        fs::write(&fresh, b"a write in progress").unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        s.prune().unwrap();
        assert!(!old.exists());
        assert!(fresh.exists());
        let old2 = d.path().join("layers/tree/.tmpX");
        fs::write(&old2, b"x").unwrap();
        fs::File::options()
            .write(true)
            .open(&old2)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        drop(s.begin().unwrap());
        assert!(!old2.exists());
    }
}
