//! The digest of an unpacked layer tree, so a layer changed on disk (bit rot, a stray write, a
//! file removed by hand) is found by `strata image verify` and replaced by the next load or pull.
//!
//! A layer's diffID hashes the tar it came from, which cannot be recomputed from the unpacked
//! files; this digest hashes the files themselves, recorded when the layer is unpacked. It covers
//! every entry, in byte order of its path: the path, its type, permission bits, owner, and
//! xattrs (overlay's opaque marker included); for files their size, mtime and content, for
//! symlinks the target, for device nodes (overlay whiteouts) the device number. Directory
//! mtimes are left out: they are metadata nobody reads through an overlay.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Computes the tree digest of the directory `root` (never following symlinks).
pub fn digest(root: &Path) -> io::Result<Digest> {
    let mut h = Sha256::new();
    h.update(b"strata-layer-tree-v1\0");
    let mut buf = vec![0u8; 256 * 1024];
    entry(&mut h, root, b".", &mut buf)?;
    Ok(Digest::from_sha256(&h.finalize()))
}

fn entry(h: &mut Sha256, path: &Path, rel: &[u8], buf: &mut [u8]) -> io::Result<()> {
    let m = fs::symlink_metadata(path)?;
    let ft = m.file_type();
    let kind: u8 = if ft.is_dir() {
        b'd'
    } else if ft.is_file() {
        b'f'
    } else if ft.is_symlink() {
        b'l'
    } else if ft.is_char_device() {
        b'c'
    } else if ft.is_block_device() {
        b'b'
    } else if ft.is_fifo() {
        b'p'
    } else {
        b's'
    };
    field(h, rel);
    h.update([kind]);
    h.update((m.mode() & 0o7777).to_le_bytes());
    h.update(m.uid().to_le_bytes());
    h.update(m.gid().to_le_bytes());
    for (k, v) in xattrs(path)? {
        field(h, &k);
        field(h, &v);
    }
    h.update(b"\0end-xattrs\0");
    match kind {
        b'f' => {
            h.update(m.len().to_le_bytes());
            h.update(m.mtime().to_le_bytes());
            let mut f = File::open(path)?;
            let mut n = 0u64;
            loop {
                let r = match f.read(buf) {
                    Ok(0) => break,
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                h.update(&buf[..r]);
                n += r as u64;
            }
            // A file that grows or shrinks while it is hashed does not get a digest.
            if n != m.len() {
                return Err(io::Error::other(format!(
                    "{} changed size while it was hashed",
                    path.display()
                )));
            }
        }
        b'l' => {
            h.update(m.mtime().to_le_bytes());
            field(h, fs::read_link(path)?.as_os_str().as_bytes());
        }
        b'c' | b'b' => h.update(m.rdev().to_le_bytes()),
        b'd' => {
            let mut names: Vec<Vec<u8>> = fs::read_dir(path)?
                .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                .collect::<io::Result<_>>()?;
            names.sort();
            h.update((names.len() as u64).to_le_bytes());
            for n in names {
                let mut r = rel.to_vec();
                r.push(b'/');
                r.extend_from_slice(&n);
                entry(h, &path.join(std::ffi::OsStr::from_bytes(&n)), &r, buf)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A length-prefixed field, so no two different trees hash the same byte stream.
fn field(h: &mut Sha256, b: &[u8]) {
    h.update((b.len() as u64).to_le_bytes());
    h.update(b);
}

/// The xattrs of `path` itself (not of a symlink's target), sorted by name.
fn xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let names = retry_sized(|buf| {
        // SAFETY: c is a valid C string; buf is a writable buffer of the given length.
        unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    })?;
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).expect("split at NUL");
        let value = retry_sized(|buf| {
            // SAFETY: valid C strings; buf is writable for its length.
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
        })?;
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// Calls a size-probing xattr syscall: first for the size, then with a buffer that large
/// (again when the value grew in between).
fn retry_sized(mut call: impl FnMut(&mut [u8]) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let n = call(&mut []);
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOTSUP) | Some(libc::ENODATA) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; n as usize];
        let m = call(&mut buf);
        if m >= 0 {
            buf.truncate(m as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("bin")).unwrap();
        fs::write(d.path().join("bin/sh"), b"#!shell").unwrap();
        fs::write(d.path().join("a"), b"hello").unwrap();
        std::os::unix::fs::symlink("/bin/sh", d.path().join("link")).unwrap();
        d
    }

    fn same_mtime(f: &Path) -> std::time::SystemTime {
        fs::metadata(f).unwrap().modified().unwrap()
    }

    #[test]
    fn any_change_changes_the_digest() {
        let d = tree();
        let p = d.path();
        let base = digest(p).unwrap();
        assert_eq!(digest(p).unwrap(), base, "not deterministic");
        type Change = Box<dyn Fn(&Path)>;
        let changes: Vec<(&str, Change, Change)> = vec![
            (
                "one byte of content",
                Box::new(|p: &Path| {
                    let t = same_mtime(&p.join("a"));
                    fs::write(p.join("a"), b"hellO").unwrap();
                    File::options()
                        .write(true)
                        .open(p.join("a"))
                        .unwrap()
                        .set_modified(t)
                        .unwrap();
                }),
                Box::new(|p: &Path| {
                    let t = same_mtime(&p.join("a"));
                    fs::write(p.join("a"), b"hello").unwrap();
                    File::options()
                        .write(true)
                        .open(p.join("a"))
                        .unwrap()
                        .set_modified(t)
                        .unwrap();
                }),
            ),
            (
                "mode",
                Box::new(|p: &Path| {
                    fs::set_permissions(p.join("bin/sh"), fs::Permissions::from_mode(0o4755))
                        .unwrap()
                }),
                Box::new(|p: &Path| {
                    fs::set_permissions(p.join("bin/sh"), fs::Permissions::from_mode(0o644))
                        .unwrap()
                }),
            ),
            (
                "a new file",
                Box::new(|p: &Path| fs::write(p.join("bin/x"), b"").unwrap()),
                Box::new(|p: &Path| fs::remove_file(p.join("bin/x")).unwrap()),
            ),
            (
                "a symlink target",
                Box::new(|p: &Path| {
                    fs::remove_file(p.join("link")).unwrap();
                    std::os::unix::fs::symlink("/bin/sH", p.join("link")).unwrap();
                }),
                Box::new(|p: &Path| {
                    fs::remove_file(p.join("link")).unwrap();
                    std::os::unix::fs::symlink("/bin/sh", p.join("link")).unwrap();
                }),
            ),
        ];
        for (what, change, undo) in changes {
            let before = digest(p).unwrap();
            change(p);
            assert_ne!(digest(p).unwrap(), before, "{what} went unnoticed");
            undo(p);
        }
        // A file moved to another directory with the same bytes.
        let before = digest(p).unwrap();
        fs::rename(p.join("a"), p.join("bin/a")).unwrap();
        assert_ne!(digest(p).unwrap(), before);
    }
}
