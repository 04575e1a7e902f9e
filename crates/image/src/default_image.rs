//! The default image, built without network from Debian's busybox-static: `busybox:latest`.
//!
//! One layer (busybox, its applet symlinks, /etc/passwd and /etc/group with root, nobody and a
//! uid 1000 user, /tmp), written with fixed mtimes and ownership so the digest only depends on
//! the busybox binary.

use std::path::Path;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::store::Store;

/// The name the default image is stored under.
pub const NAME: &str = "busybox:latest";
/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// Fixed mtime of every entry: 2000-01-01T00:00:00Z.
const MTIME: u64 = 946_684_800;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nuser:x:1000:1000:user:/home/user:/bin/sh\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\nuser:x:1000:\n";

/// Whether `name` refers to the default image (`busybox`, `busybox:latest`).
pub fn is_default_name(name: &str) -> bool {
    crate::reference::normalize(name).is_ok_and(|n| n == NAME)
}

/// Builds the default image from `/bin/busybox` and tags it `busybox:latest`.
pub fn build(store: &Store, progress: &dyn Progress) -> Result<Digest> {
    build_from(store, Path::new(BUSYBOX), progress)
}

/// Builds the default image from a given busybox binary.
pub fn build_from(store: &Store, busybox: &Path, progress: &dyn Progress) -> Result<Digest> {
    let layer = layer_tar(busybox)?;
    let mut tx = store.begin()?;
    progress.begin("build busybox layer", Some(layer.len() as u64));
    let blob = tx.put_bytes(&layer)?;
    progress.advance(layer.len() as u64);
    progress.end("build busybox layer");
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2000-01-01T00:00:00Z",
        "config": {
            "Cmd": ["sh"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "history": [{"created": "2000-01-01T00:00:00Z", "created_by": "strata image build-default"}],
    });
    let md = crate::import::single_layer_image(&mut tx, &blob, config, progress)?;
    tx.tag(NAME, &md)?;
    tx.commit()?;
    Ok(md)
}

/// The layer as an uncompressed tar, deterministic for a given busybox binary.
fn layer_tar(busybox: &Path) -> Result<Vec<u8>> {
    let fail = |m: String| Error::DefaultImage(m);
    let bin = std::fs::read(busybox).map_err(|e| {
        fail(format!(
            "read {}: {e} (install Debian's busybox-static: apt-get install busybox-static)",
            busybox.display()
        ))
    })?;
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| fail(format!("run {} --list-full: {e}", busybox.display())))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{} --list-full failed: is it busybox-static?",
            busybox.display()
        )));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.contains("..") && l != "bin/busybox")
        .collect();
    applets.sort();
    applets.dedup();

    let mut b = tar::Builder::new(Vec::new());
    let dirs: &[(&str, u32)] = &[
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("home/user", 0o755),
        ("proc", 0o755),
        ("root", 0o700),
        ("sbin", 0o755),
        ("sys", 0o755),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("var", 0o755),
    ];
    let io = |e: std::io::Error| fail(format!("write layer tar: {e}"));
    for (d, mode) in dirs {
        let mut h = header(tar::EntryType::Directory, *mode, 0);
        if *d == "home/user" {
            h.set_uid(1000);
            h.set_gid(1000);
        }
        b.append_data(&mut h, format!("{d}/"), std::io::empty())
            .map_err(io)?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, bin.len() as u64);
    b.append_data(&mut h, "bin/busybox", bin.as_slice())
        .map_err(io)?;
    for (name, content) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let mut h = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        b.append_data(&mut h, name, content.as_bytes())
            .map_err(io)?;
    }
    for a in &applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, a, "/bin/busybox").map_err(io)?;
    }
    b.into_inner().map_err(io)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}
