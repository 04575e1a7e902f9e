//! Container root filesystems: overlayfs with the image's layers as lowerdirs and a
//! per-container upper/work dir.
//!
//! Layers are passed with the `lowerdir+` option of the new mount API (fsopen/fsconfig, Linux
//! 6.8+), one layer per call, so the page-size limit of mount(2)'s option string never caps the
//! number of layers; older kernels fall back to one `lowerdir=` string.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::image::Image;

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Mounts overlayfs at `target`: `lowers` bottom layer first (as [`Image::layers`] returns
/// them), `upper` receives the container's writes, `work` is overlay's scratch dir on the same
/// filesystem as `upper`. All four directories must exist.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let fail = |reason: String| Error::Mount {
        target: target.to_path_buf(),
        reason,
    };
    if lowers.is_empty() {
        return Err(fail("the image has no layers".into()));
    }
    match mount_new_api(lowers, upper, work, target) {
        Ok(()) => Ok(()),
        Err(NewApi::Unsupported) => mount_classic(lowers, upper, work, target).map_err(fail),
        Err(NewApi::Failed(reason)) => Err(fail(reason)),
    }
}

enum NewApi {
    /// fsopen or `lowerdir+` is not available on this kernel.
    Unsupported,
    Failed(String),
}

fn cpath(p: &Path) -> Result<CString, NewApi> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| NewApi::Failed(format!("{} contains a NUL byte", p.display())))
}

fn mount_new_api(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), NewApi> {
    let name = CString::new("overlay").expect("static string");
    // SAFETY: name is a valid C string; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS) => Err(NewApi::Unsupported),
            _ => Err(NewApi::Failed(format!("fsopen(overlay): {e}"))),
        };
    }
    // SAFETY: fd was just returned by fsopen and nothing else owns it.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let set = |key: &str, value: &Path| -> Result<(), NewApi> {
        let k = CString::new(key).expect("static key");
        let v = cpath(value)?;
        // SAFETY: fs is a live fs-context fd; key and value are valid C strings.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if key == "lowerdir+"
                && e.raw_os_error() == Some(libc::EINVAL)
                && context_log(&fs).contains("Unknown parameter")
            {
                return Err(NewApi::Unsupported);
            }
            return Err(NewApi::Failed(format!(
                "{key}={}: {e} {}",
                value.display(),
                context_log(&fs)
            )));
        }
        Ok(())
    };
    // overlay stacks `lowerdir+` entries top first.
    for l in lowers.iter().rev() {
        set("lowerdir+", l)?;
    }
    set("upperdir", upper)?;
    set("workdir", work)?;
    // SAFETY: live fs-context fd; null key/value are what FSCONFIG_CMD_CREATE takes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(NewApi::Failed(format!(
            "create overlay: {e} {}",
            context_log(&fs)
        )));
    }
    // SAFETY: live fs-context fd; the returned mount fd is owned below.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if m < 0 {
        return Err(NewApi::Failed(format!(
            "fsmount: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: m was just returned by fsmount.
    let mnt = unsafe { OwnedFd::from_raw_fd(m as i32) };
    let t = cpath(target)?;
    let empty = CString::new("").expect("static string");
    // SAFETY: live mount fd, valid C strings; attaches the detached mount at target.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(NewApi::Failed(format!(
            "move_mount to {}: {}",
            target.display(),
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Messages the kernel queued on an fs context (why a parameter was rejected).
fn context_log(fs: &OwnedFd) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 512];
    for _ in 0..16 {
        // SAFETY: reading into a stack buffer of the given length from a live fd.
        let n = unsafe { libc::read(fs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.push_str(&format!(
            "({})",
            String::from_utf8_lossy(&buf[..n as usize]).trim()
        ));
    }
    out
}

fn mount_classic(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::result::Result<(), String> {
    let esc = |p: &Path| {
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace(':', "\\:")
            .replace(',', "\\,")
    };
    let lower = lowers
        .iter()
        .rev()
        .map(|p| esc(p))
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        esc(upper),
        esc(work)
    );
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    if data.len() >= page {
        return Err(format!(
            "{} layers need {} bytes of mount options, over this kernel's {page}-byte limit (Linux 6.8+ has no such limit)",
            lowers.len(),
            data.len()
        ));
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| format!("mount: {e}"))
}

/// Unmounts `target` (lazily when it is busy). Not mounted is not an error.
pub fn unmount(target: &Path) -> Result<()> {
    use nix::mount::{umount2, MntFlags};
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            umount2(target, MntFlags::MNT_DETACH).ctx("unmount (lazy)", target)
        }
        Err(e) => Err(e).ctx("unmount", target),
    }
}

/// A container's root filesystem: `<dir>/rootfs` (merged), `<dir>/upper`, `<dir>/work`.
#[derive(Debug)]
pub struct ContainerRootfs {
    dir: PathBuf,
}

impl ContainerRootfs {
    /// Creates the directories under `dir` and mounts the image's layers at `<dir>/rootfs`.
    pub fn create(image: &Image, dir: &Path) -> Result<ContainerRootfs> {
        for sub in ["", "upper", "work", "rootfs"] {
            let p = dir.join(sub);
            std::fs::DirBuilder::new()
                .mode(0o755)
                .recursive(true)
                .create(&p)
                .ctx("create rootfs directory", &p)?;
        }
        let r = ContainerRootfs {
            dir: dir.to_path_buf(),
        };
        mount_overlay(
            image.layers(),
            &dir.join("upper"),
            &dir.join("work"),
            &r.path(),
        )?;
        Ok(r)
    }

    /// Reattaches to an existing rootfs directory (e.g. from `strata rm` in another process).
    pub fn open(dir: &Path) -> ContainerRootfs {
        ContainerRootfs {
            dir: dir.to_path_buf(),
        }
    }

    /// The merged root filesystem (the bundle's `root.path`).
    pub fn path(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The directory holding rootfs, upper and work.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmounts the rootfs and removes the directory with the container's writes.
    pub fn remove(self) -> Result<()> {
        unmount(&self.path())?;
        crate::store::remove_tree(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mounting needs root (the test suite runs as root).
    #[test]
    fn overlay_of_many_long_layers_with_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let mut lowers = Vec::new();
        // 100 layers with 80-character names: ~9 KB of lowerdir options, over the page limit.
        for i in 0..100 {
            let l = t.path().join(format!("{i:03}-{}", "l".repeat(76)));
            std::fs::create_dir(&l).unwrap();
            std::fs::write(l.join(format!("f{i}")), format!("{i}")).unwrap();
            std::fs::write(l.join("top"), format!("{i}")).unwrap();
            lowers.push(l);
        }
        // Layer 99 (top) deletes f5 with an overlay whiteout and makes d opaque.
        std::fs::create_dir(lowers[0].join("d")).unwrap();
        std::fs::write(lowers[0].join("d/hidden"), "x").unwrap();
        std::fs::create_dir(lowers[99].join("d")).unwrap();
        let c = CString::new(lowers[99].join("f5").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) }, 0);
        let d = CString::new(lowers[99].join("d").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings and value.
        assert_eq!(
            unsafe {
                libc::setxattr(
                    d.as_ptr(),
                    c"trusted.overlay.opaque".as_ptr(),
                    b"y".as_ptr().cast(),
                    1,
                    0,
                )
            },
            0
        );
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = unmount(&self.0);
            }
        }
        let _guard = Unmount(t.path().join("ctr/rootfs"));
        let rootfs = ContainerRootfs::create_from_dirs(&lowers, &t.path().join("ctr")).unwrap();
        let m = rootfs.path();
        assert_eq!(std::fs::read_to_string(m.join("top")).unwrap(), "99");
        assert_eq!(std::fs::read_to_string(m.join("f0")).unwrap(), "0");
        assert!(!m.join("f5").exists(), "whiteout did not hide f5");
        assert!(
            !m.join("d/hidden").exists(),
            "opaque dir did not hide lower content"
        );
        std::fs::write(m.join("new"), "w").unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("ctr/upper/new")).unwrap(),
            "w"
        );
        assert!(!lowers[99].join("new").exists());
        rootfs.remove().unwrap();
        assert!(!t.path().join("ctr").exists());
    }
}

#[cfg(test)]
mod image_tests {
    use super::*;

    #[test]
    fn busybox_image_mounts_and_cleans_up() {
        let t = tempfile::tempdir().unwrap();
        let store = crate::Store::open(t.path().join("store")).unwrap();
        let image = store.resolve("busybox").unwrap();
        let dir = t.path().join("containers/c1");
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = unmount(&self.0);
            }
        }
        let _guard = Unmount(dir.join("rootfs"));
        let r = ContainerRootfs::create(&image, &dir).unwrap();
        assert_eq!(
            std::fs::read(r.path().join("bin/busybox")).unwrap(),
            std::fs::read("/bin/busybox").unwrap()
        );
        std::fs::write(r.path().join("etc/passwd"), "changed").unwrap();
        // The layer is untouched: writes land in the container's upper dir.
        assert!(
            std::fs::read_to_string(image.layers()[0].join("etc/passwd"))
                .unwrap()
                .contains("root:x:0:0")
        );
        let reopened = ContainerRootfs::open(&dir);
        reopened.remove().unwrap();
        assert!(!dir.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.to_str().unwrap()), "mount left behind");
    }
}

#[cfg(test)]
impl ContainerRootfs {
    fn create_from_dirs(lowers: &[PathBuf], dir: &Path) -> Result<ContainerRootfs> {
        for sub in ["", "upper", "work", "rootfs"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let r = ContainerRootfs {
            dir: dir.to_path_buf(),
        };
        mount_overlay(lowers, &dir.join("upper"), &dir.join("work"), &r.path())?;
        Ok(r)
    }
}
