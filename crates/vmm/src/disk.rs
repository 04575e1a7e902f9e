//! VM root disks: a filesystem image built from an image's layers, once per image, cached by a
//! key the caller gives (the image digest). It may move to strata-image, which owns the store.
//!
//! Several layer directories are merged by a read-only overlayfs mounted in a private mount
//! namespace of the mkfs process (overlay-style whiteouts, as the container runtime uses the same
//! layers), so no mount is ever visible on the host and none can be left behind. The image is
//! built under a temporary name and renamed into place: readers see a complete image or none.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::cache_file;
use crate::error::{Result, VmmError};

/// The filesystem of a VM disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DiskFormat {
    /// ext4 without a journal (`mkfs.ext4 -d`): readable by every guest kernel, also Debian's.
    Ext4,
    /// erofs (`mkfs.erofs`), uncompressed: read-only by design, compact metadata.
    Erofs,
    /// erofs with lz4hc compression: smallest, costs CPU at build and read time.
    ErofsLz4,
}

impl DiskFormat {
    /// The filesystem type the guest mounts (`strata.lowerfs=`).
    pub fn fs_type(self) -> &'static str {
        match self {
            DiskFormat::Ext4 => "ext4",
            DiskFormat::Erofs | DiskFormat::ErofsLz4 => "erofs",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            DiskFormat::Ext4 => "ext4",
            DiskFormat::Erofs => "erofs",
            DiskFormat::ErofsLz4 => "lz4.erofs",
        }
    }
}

/// The format strata uses for image disks (chosen with the numbers in docs/benchmarks.md:
/// ext4 builds as fast as erofs, and Debian's UML kernel has erofs only as a module).
pub const DEFAULT_FORMAT: DiskFormat = DiskFormat::Ext4;

fn disk_err(path: &Path, step: &'static str, detail: impl ToString) -> VmmError {
    VmmError::Disk {
        path: path.to_path_buf(),
        step,
        detail: detail.to_string(),
    }
}

/// Checks a cache key (an image digest such as `sha256:ab12…`) and turns it into a file name.
pub(crate) fn key_file_name(key: &str) -> Result<String> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !ok {
        return Err(VmmError::InvalidConfig(format!(
            "disk cache key {key:?} must be 1-200 characters of [A-Za-z0-9_.:-] (an image digest)"
        )));
    }
    Ok(key.replace(':', "-"))
}

/// The path the disk for `key` has (or will have) in `cache_dir`.
pub fn disk_path(cache_dir: &Path, key: &str, format: DiskFormat) -> Result<PathBuf> {
    Ok(cache_dir.join(format!("{}.{}", key_file_name(key)?, format.suffix())))
}

/// `mkfs.ext4` with the options of every strata disk (no journal: the disks are rebuilt, not
/// recovered; no resize inode: they never grow; 4 KiB blocks; nothing reserved), labelled
/// `label`; the caller adds the source tree and the image.
pub(crate) fn mkfs_ext4(label: &str) -> Command {
    let mut c = Command::new("mkfs.ext4");
    c.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-m",
        "0",
        "-O",
        "^has_journal,^resize_inode",
        "-L",
        label,
    ]);
    c
}

/// Builds the disk image of `layers` (bottom first; one entry may be an already merged rootfs)
/// unless the cache already has it, and returns its path (`<cache_dir>/<key>.<format>`,
/// world-readable, never modified afterwards).
pub fn build_disk(
    layers: &[PathBuf],
    format: DiskFormat,
    cache_dir: &Path,
    key: &str,
) -> Result<PathBuf> {
    let out = disk_path(cache_dir, key, format)?;
    if out.is_file() {
        return Ok(out);
    }
    if layers.is_empty() {
        return Err(VmmError::InvalidConfig(
            "a disk image needs at least one layer directory".into(),
        ));
    }
    for l in layers {
        if !l.is_dir() {
            return Err(disk_err(
                &out,
                "read layers",
                format!("{} is not a directory", l.display()),
            ));
        }
    }
    std::fs::create_dir_all(cache_dir)
        .map_err(|e| disk_err(cache_dir, "create cache directory", e))?;
    let tmp = cache_dir.join(format!(
        ".tmp-{}-{}",
        out.file_name().unwrap_or_default().to_string_lossy(),
        cache_file::unique()
    ));
    let merge_dir = cache_dir.join(format!(".merge-{}", cache_file::unique()));
    let result = build_into(layers, format, &tmp, &merge_dir, &out);
    let _ = std::fs::remove_dir(&merge_dir);
    match result {
        Ok(()) => {
            std::fs::rename(&tmp, &out).map_err(|e| disk_err(&out, "rename into place", e))?;
            cache_file::sync_dir(cache_dir);
            Ok(out)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn build_into(
    layers: &[PathBuf],
    format: DiskFormat,
    tmp: &Path,
    merge_dir: &Path,
    out: &Path,
) -> Result<()> {
    // A single layer is used as it is; several are merged by an overlay only the mkfs sees.
    let (source, overlay) = if layers.len() == 1 {
        (layers[0].clone(), None)
    } else {
        std::fs::create_dir(merge_dir).map_err(|e| disk_err(out, "create merge directory", e))?;
        let lower = layers
            .iter()
            .rev()
            .map(|l| {
                let s = l.to_string_lossy();
                if s.contains(':') || s.contains(',') {
                    Err(disk_err(
                        out,
                        "merge layers",
                        format!("layer path {s} contains ':' or ','"),
                    ))
                } else {
                    Ok(s.into_owned())
                }
            })
            .collect::<Result<Vec<_>>>()?
            .join(":");
        let opts = format!("lowerdir={lower}");
        if opts.len() > 4000 {
            return Err(disk_err(
                out,
                "merge layers",
                "too many layers for one overlay mount option",
            ));
        }
        (merge_dir.to_path_buf(), Some(opts))
    };

    let mut cmd = match format {
        DiskFormat::Ext4 => {
            let (bytes, inodes) =
                tree_usage(layers).map_err(|e| disk_err(out, "measure layers", e))?;
            // Room for metadata (inode tables, directories, extent blocks): measured sizes fit
            // with 15% + 256 bytes per inode + 4 MiB.
            let size = (bytes + bytes / 7 + inodes * 256 + (4 << 20)).div_ceil(1 << 20) << 20;
            let f = cache_file::create_new(tmp, 0o644).map_err(|e| disk_err(tmp, "create", e))?;
            f.set_len(size).map_err(|e| disk_err(tmp, "size", e))?;
            drop(f);
            let mut c = mkfs_ext4("strata");
            c.arg("-N")
                .arg((inodes + inodes / 10 + 64).to_string())
                .arg("-d")
                .arg(&source)
                .arg(tmp);
            c
        }
        DiskFormat::Erofs | DiskFormat::ErofsLz4 => {
            let mut c = Command::new("mkfs.erofs");
            c.arg("--quiet");
            if format == DiskFormat::ErofsLz4 {
                c.arg("-zlz4hc");
            }
            // A fixed uuid keeps the image the same for the same layers.
            c.args(["-U", "00000000-0000-0000-0000-000000000000"])
                .arg(tmp)
                .arg(&source);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let step = if format == DiskFormat::Ext4 {
        "mkfs.ext4"
    } else {
        "mkfs.erofs"
    };
    if let Some(opts) = overlay {
        let target = CString::new(merge_dir.as_os_str().as_bytes())
            .map_err(|e| disk_err(out, "merge layers", e))?;
        let opts = CString::new(opts).map_err(|e| disk_err(out, "merge layers", e))?;
        let overlay = CString::new("overlay").unwrap_or_default();
        let slash = CString::new("/").unwrap_or_default();
        // SAFETY: runs in the forked child before exec; only system calls on data prepared above.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        slash.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        overlay.as_ptr(),
                        target.as_ptr(),
                        overlay.as_ptr(),
                        libc::MS_RDONLY,
                        opts.as_ptr().cast(),
                    ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let output = cmd.output().map_err(|e| {
        disk_err(
            out,
            step,
            format!("cannot run it: {e} (scripts/deps.sh installs it)"),
        )
    })?;
    if !output.status.success() {
        return Err(disk_err(
            out,
            step,
            format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    let f = std::fs::File::open(tmp).map_err(|e| disk_err(tmp, "open", e))?;
    f.sync_all().map_err(|e| disk_err(tmp, "fsync", e))?;
    Ok(())
}

/// Apparent bytes and inode count of the trees (hard links counted once per tree).
fn tree_usage(dirs: &[PathBuf]) -> io::Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    for d in dirs {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![d.clone()];
        while let Some(p) = stack.pop() {
            let meta = std::fs::symlink_metadata(&p)?;
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            inodes += 1;
            // Whole blocks: small files take one 4 KiB block each in ext4.
            bytes += meta.len().div_ceil(4096) * 4096;
            if meta.is_dir() {
                for e in std::fs::read_dir(&p)? {
                    stack.push(e?.path());
                }
            }
        }
    }
    Ok((bytes, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key_file_name("sha256:ab12").unwrap(), "sha256-ab12");
        for bad in ["", "../x", "a/b", ".x", "a b", "a\0b", &"x".repeat(201)] {
            assert!(key_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usage_counts_blocks_and_inodes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"x").unwrap();
        std::fs::create_dir(d.path().join("s")).unwrap();
        std::fs::write(d.path().join("s/b"), vec![0u8; 5000]).unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("a2")).unwrap();
        let (bytes, inodes) = tree_usage(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(inodes, 4); // root, a (once), s, s/b
        assert!(bytes >= 4096 + 8192);
    }
}
