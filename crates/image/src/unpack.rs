//! Safe layer unpacking: the hostile-input boundary of strata-image.
//!
//! A layer tar comes from whoever built the image. Every entry is created relative to the layer's
//! root directory fd, walking parent directories one component at a time with
//! `O_NOFOLLOW|O_DIRECTORY`, so an entry can never reach outside the root: `..` components and
//! absolute paths are refused lexically, and a path through a symlink (planted by an earlier entry)
//! or a hardlink whose target is outside the layer is refused by the walk. Nothing is ever opened
//! by following a symlink.
//!
//! Docker/OCI whiteouts become overlayfs whiteouts because unpacked layers are used directly as
//! overlay lowerdirs: `.wh.NAME` → a 0:0 character device `NAME`, `.wh..wh..opq` → the
//! `trusted.overlay.opaque=y` xattr on the directory.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::error::{Error, Result};
use crate::sys;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
/// Longest accepted entry path: the kernel limits each syscall to PATH_MAX, and deeper trees
/// are only a way to exhaust resources.
const MAX_PATH: usize = 4096;

/// What an unpack did.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpacks an uncompressed tar stream into the directory open as `root`.
///
/// On error the directory may hold a partial tree: callers unpack into a temporary directory and
/// rename it into place only on success. The whole stream is consumed (so a digest computed by a
/// wrapping reader covers trailing padding too).
pub fn unpack_tar<R: Read>(reader: R, root: BorrowedFd<'_>) -> Result<UnpackStats> {
    let read = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let mut archive = tar::Archive::new(Counting {
        inner: reader,
        read: read.clone(),
    });
    let mut stats = UnpackStats::default();
    let mut dir_times: Vec<(Vec<Vec<u8>>, i64)> = Vec::new();
    // Where the previous entry's data ended (stream offset).
    let mut data_end = 0u64;
    let entries = archive.entries().map_err(corrupt)?;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) if ends_in_final_padding(data_end, read.get()) => {
                // umoci (0.4) ends a layer right after the last file's data, without the
                // padding to 512 bytes or the end-of-archive blocks; Docker, Podman and GNU tar
                // accept that, so do we. The data itself was complete (checked below).
                tracing::debug!(error = %e, "layer tar ends without final padding");
                break;
            }
            Err(e) => return Err(corrupt(e)),
        };
        data_end = entry.raw_file_position() + entry.size();
        stats.entries += 1;
        let raw_path = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw_path).into_owned();
        let refuse = |reason: &str| Error::UnsafeEntry {
            entry: display.clone(),
            reason: reason.to_string(),
        };
        let comps = clean_path(&raw_path).map_err(&refuse)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        // The layer root itself ("./"): only its metadata applies.
        let Some((name, parents)) = comps.split_last() else {
            let meta = Meta::from_entry(&mut entry).map_err(corrupt)?;
            if kind.is_dir() {
                apply_meta(root, b".", &meta, false)
                    .map_err(|e| io_refuse(&display, "set metadata", e))?;
                dir_times.push((Vec::new(), meta.mtime));
            }
            continue;
        };
        let parent = walk(root, parents, true, &display)?;
        let parent = parent.as_fd();

        // Whiteouts.
        if name.as_slice() == OPAQUE_WHITEOUT {
            let fd = sys::openat(parent, b".", libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|e| io_refuse(&display, "open directory", e))?;
            sys::setxattr_opath(fd.as_fd(), b"trusted.overlay.opaque", b"y")
                .map_err(|e| io_refuse(&display, "mark directory opaque", e))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless for overlay.
                continue;
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(refuse("whiteout names no file"));
            }
            remove_existing(parent, hidden, &display)?;
            sys::mknodat(parent, hidden, libc::S_IFCHR, 0)
                .map_err(|e| io_refuse(&display, "create whiteout", e))?;
            continue;
        }

        let meta = Meta::from_entry(&mut entry).map_err(corrupt)?;
        if kind.is_dir() {
            match sys::mkdirat(parent, name, 0o700) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let st =
                        sys::fstatat(parent, name).map_err(|e| io_refuse(&display, "stat", e))?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                        remove_existing(parent, name, &display)?;
                        sys::mkdirat(parent, name, 0o700)
                            .map_err(|e| io_refuse(&display, "create directory", e))?;
                    }
                }
                Err(e) => return Err(io_refuse(&display, "create directory", e)),
            }
            apply_meta(parent, name, &meta, false)
                .map_err(|e| io_refuse(&display, "set metadata", e))?;
            dir_times.push((comps.clone(), meta.mtime));
            continue;
        }

        remove_existing(parent, name, &display)?;
        if kind.is_file() || kind == tar::EntryType::Continuous || kind == tar::EntryType::GNUSparse
        {
            let fd = sys::openat(
                parent,
                name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            )
            .map_err(|e| io_refuse(&display, "create file", e))?;
            let mut file = std::fs::File::from(fd);
            let n = copy(&mut entry, &mut file).map_err(|e| match e {
                CopyError::Read(e) => corrupt(e),
                CopyError::Write(e) => io_refuse(&display, "write file", e),
            })?;
            if n != entry.size() {
                return Err(corrupt(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{display}: the stream ends after {n} of its {} bytes",
                        entry.size()
                    ),
                )));
            }
            stats.bytes += n;
            apply_meta_fd(file.as_fd(), &meta)
                .map_err(|e| io_refuse(&display, "set metadata", e))?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| refuse("symlink without a target"))?;
            if target.is_empty() {
                return Err(refuse("symlink with an empty target"));
            }
            sys::symlinkat(&target, parent, name)
                .map_err(|e| io_refuse(&display, "create symlink", e))?;
            apply_meta(parent, name, &meta, true)
                .map_err(|e| io_refuse(&display, "set metadata", e))?;
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| refuse("hardlink without a target"))?;
            let tcomps =
                clean_path(&target).map_err(|r| refuse(&format!("hardlink target: {r}")))?;
            let Some((tname, tparents)) = tcomps.split_last() else {
                return Err(refuse("hardlink to the layer root"));
            };
            let tparent = walk(root, tparents, false, &display)?;
            sys::linkat(tparent.as_fd(), tname, parent, name).map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOENT) {
                    refuse("hardlink target does not exist in this layer")
                } else {
                    io_refuse(&display, "create hardlink", e)
                }
            })?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let fmt = if kind.is_character_special() {
                libc::S_IFCHR
            } else if kind.is_block_special() {
                libc::S_IFBLK
            } else {
                libc::S_IFIFO
            };
            let major = entry.header().device_major().ok().flatten().unwrap_or(0);
            let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
            let dev = libc::makedev(major, minor);
            sys::mknodat(parent, name, fmt | 0o600, dev)
                .map_err(|e| io_refuse(&display, "create device node", e))?;
            apply_meta(parent, name, &meta, false)
                .map_err(|e| io_refuse(&display, "set metadata", e))?;
        } else {
            return Err(refuse(&format!("unsupported tar entry type {:?}", kind)));
        }
    }
    // Drain trailing blocks so a digest over the stream covers everything.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(corrupt)?;

    // Directory mtimes last: creating children changed them.
    for (comps, mtime) in dir_times {
        let (dir, name): (OwnedFd, &[u8]) = match comps.split_last() {
            None => (
                sys::openat(root, b".", libc::O_PATH | libc::O_DIRECTORY, 0)
                    .map_err(|e| io_refuse(".", "open", e))?,
                b".",
            ),
            Some((name, parents)) => (walk(root, parents, false, "")?, name.as_slice()),
        };
        sys::lutimensat(dir.as_fd(), name, mtime, 0)
            .map_err(|e| io_refuse(&String::from_utf8_lossy(name), "set mtime", e))?;
    }
    Ok(stats)
}

/// Splits a tar path into safe components: "" and "." dropped; ".." and absolute paths refused.
pub fn clean_path(raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, &'static str> {
    if raw.is_empty() {
        return Err("empty path");
    }
    if raw.len() > MAX_PATH {
        return Err("path longer than 4096 bytes");
    }
    if raw.contains(&0) {
        return Err("path contains a NUL byte");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains a `..` component (escapes the layer root)"),
            c => out.push(c.to_vec()),
        }
    }
    // "/" alone names the layer root (umoci writes it); any other absolute path is refused
    // rather than silently re-rooted.
    if raw[0] == b'/' && !out.is_empty() {
        return Err("absolute path");
    }
    Ok(out)
}

/// Opens the directory `comps` below `root`, one component at a time, never following symlinks;
/// missing directories are created (mode 0755) when `create` is set.
fn walk(root: BorrowedFd<'_>, comps: &[Vec<u8>], create: bool, entry: &str) -> Result<OwnedFd> {
    let mut cur = sys::openat(root, b".", libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(|e| io_refuse(entry, "open layer root", e))?;
    for (i, c) in comps.iter().enumerate() {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let next = match sys::openat(cur.as_fd(), c, flags, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                match sys::mkdirat(cur.as_fd(), c, 0o755) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(io_refuse(entry, "create parent directory", e)),
                }
                sys::openat(cur.as_fd(), c, flags, 0)
                    .map_err(|e| io_refuse(entry, "open parent directory", e))?
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
                let so_far = comps[..=i]
                    .iter()
                    .map(|c| String::from_utf8_lossy(c))
                    .collect::<Vec<_>>()
                    .join("/");
                let is_link = sys::fstatat(cur.as_fd(), c)
                    .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
                    .unwrap_or(false);
                let reason = if is_link {
                    format!("path goes through the symlink {so_far} (could escape the layer root)")
                } else {
                    format!("{so_far} is not a directory")
                };
                return Err(Error::UnsafeEntry {
                    entry: entry.to_string(),
                    reason,
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let so_far = comps[..=i]
                    .iter()
                    .map(|c| String::from_utf8_lossy(c))
                    .collect::<Vec<_>>()
                    .join("/");
                return Err(Error::UnsafeEntry {
                    entry: entry.to_string(),
                    reason: format!("{so_far} does not exist in this layer"),
                });
            }
            Err(e) => return Err(io_refuse(entry, "open parent directory", e)),
        };
        cur = next;
    }
    Ok(cur)
}

/// Removes whatever `name` is in `parent` so a later entry can replace it (tar semantics: the last
/// entry wins). Non-empty directories are not replaced by non-directories.
fn remove_existing(parent: BorrowedFd<'_>, name: &[u8], entry: &str) -> Result<()> {
    let st = match sys::fstatat(parent, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(io_refuse(entry, "stat", e)),
    };
    let flags = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        libc::AT_REMOVEDIR
    } else {
        0
    };
    sys::unlinkat(parent, name, flags).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTEMPTY) {
            Error::UnsafeEntry {
                entry: entry.to_string(),
                reason: "replaces a non-empty directory".into(),
            }
        } else {
            io_refuse(entry, "replace existing entry", e)
        }
    })
}

/// Ownership, mode, mtime and xattrs of an entry as recorded in the tar.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn from_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
        let h = entry.header();
        let uid = u32::try_from(h.uid()?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "uid out of range"))?;
        let gid = u32::try_from(h.gid()?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "gid out of range"))?;
        let mode = h.mode()? & 0o7777;
        let mtime = i64::try_from(h.mtime()?).unwrap_or(0);
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    // Overlay's own xattrs would let a layer redirect lookups or fake opaque dirs
                    // through a channel the whiteout conversion does not control.
                    if name.starts_with(b"trusted.overlay.") {
                        tracing::warn!(name = %crate::quote::untrusted(name), "ignoring overlay xattr in layer");
                        continue;
                    }
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }
}

/// Applies ownership, mode, xattrs and (except for directories, done at the end) mtime by name.
fn apply_meta(parent: BorrowedFd<'_>, name: &[u8], meta: &Meta, symlink: bool) -> io::Result<()> {
    sys::lchownat(parent, name, meta.uid, meta.gid)?;
    if !symlink {
        // After chown: chown clears setuid/setgid bits.
        sys::fchmodat(parent, name, meta.mode)?;
        if !meta.xattrs.is_empty() {
            let fd = sys::openat(parent, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
            for (k, v) in &meta.xattrs {
                set_xattr_lenient(|| sys::setxattr_opath(fd.as_fd(), k, v), k)?;
            }
        }
    }
    sys::lutimensat(parent, name, meta.mtime, 0)
}

/// The same for a regular file through its open fd.
fn apply_meta_fd(fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: raw is a live fd borrowed for this call.
    if unsafe { libc::fchown(raw, meta.uid, meta.gid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fchmod(raw, meta.mode) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // xattrs after chown: chown drops security.capability.
    for (k, v) in &meta.xattrs {
        set_xattr_lenient(|| sys::fsetxattr(fd, k, v), k)?;
    }
    let ts = [
        libc::timespec {
            tv_sec: meta.mtime,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: meta.mtime,
            tv_nsec: 0,
        },
    ];
    // SAFETY: live fd and a pointer to two timespecs.
    if unsafe { libc::futimens(raw, ts.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// xattrs the host filesystem cannot hold (e.g. security.selinux without SELinux) are skipped
/// with a warning; any other failure is an error.
fn set_xattr_lenient(f: impl FnOnce() -> io::Result<()>, name: &[u8]) -> io::Result<()> {
    match f() {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
            ) =>
        {
            tracing::warn!(name = %crate::quote::untrusted(name), error = %e, "xattr not supported here, skipped");
            Ok(())
        }
        r => r,
    }
}

/// Counts the bytes read from the layer stream (the tar reader does not say where it is).
struct Counting<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Whether a stream that failed after `read` bytes ended inside the padding that should follow
/// the previous entry's data (ending at `data_end`): every byte of data arrived, only zeros are
/// missing. Anything shorter or longer is a truncated or corrupt stream.
fn ends_in_final_padding(data_end: u64, read: u64) -> bool {
    (data_end..data_end.next_multiple_of(512)).contains(&read)
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies an entry's data, telling a corrupt stream (read side) from a full disk (write side).
fn copy(r: &mut impl Read, w: &mut impl Write) -> std::result::Result<u64, CopyError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..k]).map_err(CopyError::Write)?;
        n += k as u64;
    }
}

fn corrupt(e: io::Error) -> Error {
    Error::BadLayer {
        layer: "tar stream".into(),
        reason: format!("truncated or corrupt: {e}"),
    }
}

/// A syscall on an entry failed (a full disk, a missing capability): not the entry's fault.
fn io_refuse(entry: &str, step: &'static str, e: io::Error) -> Error {
    Error::Io {
        step,
        path: format!("layer entry {entry}").into(),
        error: e,
    }
}

#[cfg(test)]
mod tests;

/// Fuzzing entry point (cargo-fuzz target and the stable corpus test): unpacks `data` (plain,
/// gzip or zstd tar) into a fresh directory and panics if anything was created or changed
/// outside it. Errors are the expected outcome for hostile input.
#[doc(hidden)]
pub fn fuzz_unpack(data: &[u8]) -> Result<UnpackStats> {
    let outer = tempfile::tempdir().expect("create temp dir");
    let root = outer.path().join("root");
    let beside = outer.path().join("beside");
    std::fs::create_dir(&root).expect("create root");
    std::fs::create_dir(&beside).expect("create beside");
    std::fs::write(beside.join("file"), b"x").expect("create file");
    let fd = sys::open_dir(&root).expect("open root");
    let result = crate::compression::decompress(data)
        .map_err(corrupt)
        .and_then(|(_, r)| unpack_tar(r, fd.as_fd()));
    let names: Vec<_> = std::fs::read_dir(outer.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "unpack created {names:?} beside the layer root"
    );
    let inside: Vec<_> = std::fs::read_dir(&beside)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        inside.len(),
        1,
        "unpack wrote into a sibling directory: {inside:?}"
    );
    assert_eq!(
        std::fs::read(beside.join("file")).expect("read"),
        b"x",
        "unpack changed a file outside the root"
    );
    result
}
