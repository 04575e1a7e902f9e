//! Persistent network namespaces: a fresh namespace bind-mounted on a file (what `ip netns add`
//! does, but under strata's own state directory), so the namespace outlives the process that made
//! it and a crashed owner's namespace can still be found, DELeted and removed by `prune`.

use std::fs;
use std::io;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Creates a new network namespace with its loopback up and bind-mounts it on `path` (a new file).
pub fn create(path: &Path) -> io::Result<()> {
    new_mount_point(path)?;
    let target = path.to_path_buf();
    // unshare() affects only the calling thread: a short-lived thread makes the namespace, pins it
    // with the bind mount and exits, leaving this process's own namespace alone.
    let made = std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        loopback_up()?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")));
    if let Err(e) = made {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Binds the namespace mounted at `source` on `path` (a new file): a second name for it.
pub fn bind(source: &Path, path: &Path) -> io::Result<()> {
    new_mount_point(path)?;
    if let Err(e) = mount(
        Some(source),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = fs::remove_file(path);
        return Err(e.into());
    }
    Ok(())
}

/// A new empty file (and its directory) to mount a namespace on.
fn new_mount_point(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map(drop)
}

/// Brings `lo` up in the calling thread's network namespace (one ioctl; the loopback CNI plugin
/// would cost a process).
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: fd is a valid socket and req a valid ifreq naming "lo".
    let mut rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
    if rc == 0 {
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above.
        rc = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
    }
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(())
}

/// True when `path` is a mounted network namespace (an nsfs bind mount).
pub fn is_mounted(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(s) => s.filesystem_type().0 == NSFS_MAGIC,
        Err(_) => false,
    }
}

const NSFS_MAGIC: libc::__fsword_t = 0x6e73_6673;

/// Unmounts and removes a namespace file made by [`create`]; a missing file is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    if is_mounted(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
