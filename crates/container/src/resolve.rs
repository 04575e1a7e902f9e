//! Path resolution inside the container's rootfs that never leaves it.
//!
//! Every mount target, device node and masked/readonly path is opened with openat2(2) and
//! RESOLVE_IN_ROOT relative to an fd of the rootfs, so a symlink planted in the image (say
//! `/proc -> /etc` or `/dev/null -> /etc/shadow`) resolves inside the rootfs, never onto the
//! host. Mounts then target `/proc/self/fd/N` of the opened fd, not the path.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;

/// openat2(2) resolve flag: no crossing of mount points.
pub const RESOLVE_NO_XDEV: u64 = 0x01;
/// openat2(2) resolve flag: no /proc magic links.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// openat2(2) resolve flag: no symlink at all (implies RESOLVE_NO_MAGICLINKS).
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// openat2(2) resolve flag: the path must stay below the directory fd.
pub const RESOLVE_BENEATH: u64 = 0x08;
/// openat2(2) resolve flag: the directory fd is "/" for the lookup.
pub const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// The path relative to the rootfs (leading `/` and `.` removed; `..` stays, it is clamped by
/// RESOLVE_IN_ROOT at the root).
fn relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => out.push(".."),
            Component::Normal(n) => out.push(n),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS).
pub fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> Result<OwnedFd, Errno> {
    openat2(
        root,
        path,
        flags,
        mode,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
}

/// openat2(dir, path, flags | O_CLOEXEC, mode, resolve): `path` is taken relative to `dir`
/// (a leading `/` is dropped), `resolve` is a set of the `RESOLVE_*` flags above.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
    resolve: u64,
) -> Result<OwnedFd, Errno> {
    let root = dir;
    let rel = relative(path);
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve,
    };
    loop {
        // SAFETY: `c` is a valid NUL-terminated string and `how` a properly sized open_how that
        // both outlive the call; the returned fd is owned by nobody else.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            // SAFETY: openat2 returned a fresh fd that we now own.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as i32) });
        }
        match Errno::last() {
            Errno::EINTR | Errno::EAGAIN => continue,
            e => return Err(e),
        }
    }
}

/// Opens `path` inside the root as an O_PATH fd (following symlinks, contained).
pub fn open_path(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    open_in_root(root, path, libc::O_PATH, 0)
}

/// Creates every missing directory of `path` inside the root and returns an O_PATH fd of it.
/// A dangling symlink on the way is followed inside the root (its target is created there).
pub fn mkdir_all(root: BorrowedFd<'_>, path: &Path, mode: libc::mode_t) -> Result<OwnedFd, Errno> {
    mkdir_all_depth(root, path, mode, 0)
}

fn mkdir_all_depth(
    root: BorrowedFd<'_>,
    path: &Path,
    mode: libc::mode_t,
    depth: u32,
) -> Result<OwnedFd, Errno> {
    if depth > 40 {
        return Err(Errno::ELOOP);
    }
    match open_in_root(root, path, libc::O_PATH | libc::O_DIRECTORY, 0) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let rel = relative(path);
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(Errno::ENOENT);
    };
    let pfd = mkdir_all_depth(root, parent, mode, depth + 1)?;
    let cname = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: pfd is a valid directory fd, cname a valid C string.
    let r = unsafe { libc::mkdirat(pfd.as_raw_fd(), cname.as_ptr(), mode) };
    if r != 0 {
        let e = Errno::last();
        if e != Errno::EEXIST {
            return Err(e);
        }
        // EEXIST but not openable as a directory: a dangling symlink. Create its target,
        // interpreted inside the root like RESOLVE_IN_ROOT does.
        if let Ok(target) = nix::fcntl::readlinkat(Some(pfd.as_raw_fd()), name) {
            let target = Path::new(&target);
            let full = if target.is_absolute() {
                target.to_path_buf()
            } else {
                parent.join(target)
            };
            mkdir_all_depth(root, &full, mode, depth + 1)?;
        }
    }
    open_in_root(root, path, libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// Ensures a regular file exists at `path` inside the root (a bind-mount target for a file)
/// and returns an O_PATH fd of it.
pub fn create_file(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    match open_path(root, path) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = relative(path).parent() {
        mkdir_all(root, parent, 0o755)?;
    }
    let fd = open_in_root(root, path, libc::O_CREAT | libc::O_WRONLY, 0o644)?;
    drop(fd);
    open_path(root, path)
}

/// `/proc/self/fd/N`: the path through which mount(2) reaches an opened fd.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("evil")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", root.join("up")).unwrap();
        let rootfd = std::fs::File::open(root).unwrap();
        // /evil/x must be created as <root>/etc/x, never /etc/x on the host.
        let fd = mkdir_all(rootfd.as_fd(), Path::new("/evil/strata-test-x"), 0o755).unwrap();
        let real = std::fs::read_link(fd_path(&fd)).unwrap();
        assert_eq!(real, root.join("etc/strata-test-x"));
        assert!(!Path::new("/etc/strata-test-x").exists());
        let f = create_file(rootfd.as_fd(), Path::new("/up")).unwrap();
        assert_eq!(
            std::fs::read_link(fd_path(&f)).unwrap(),
            root.join("etc/passwd")
        );
        assert!(open_path(rootfd.as_fd(), Path::new("/../../nonexistent")).is_err());
        // A dangling absolute symlink: its target is created inside the root.
        std::os::unix::fs::symlink("/strata-dangling/x", root.join("dangle")).unwrap();
        let fd = mkdir_all(rootfd.as_fd(), Path::new("/dangle/sub"), 0o755).unwrap();
        assert_eq!(
            std::fs::read_link(fd_path(&fd)).unwrap(),
            root.join("strata-dangling/x/sub")
        );
        assert!(!Path::new("/strata-dangling").exists());
        // Symlink loops end with an error, not a hang.
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        assert!(mkdir_all(rootfd.as_fd(), Path::new("/loop1/x"), 0o755).is_err());
    }
}
