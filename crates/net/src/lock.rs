//! flock(2) guards on files under the state directory.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::Error;

/// A held lock; released on drop (when the file closes).
pub(crate) struct Lock(#[allow(dead_code)] File);

fn take(path: &Path, op: libc::c_int) -> Result<Lock, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening lock {}", path.display()), e))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(Lock(f));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io(format!("locking {}", path.display()), e));
        }
    }
}

/// Exclusive lock (network create/rm, prune, port allocation, hosts files).
pub(crate) fn exclusive(path: &Path) -> Result<Lock, Error> {
    take(path, libc::LOCK_EX)
}

/// Shared lock (attach/detach run concurrently with each other, not with rm/prune).
pub(crate) fn shared(path: &Path) -> Result<Lock, Error> {
    take(path, libc::LOCK_SH)
}

/// Exclusive lock if nobody holds it; `None` when another process does.
pub(crate) fn try_exclusive(path: &Path) -> Result<Option<Lock>, Error> {
    match take(path, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(l) => Ok(Some(l)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::WouldBlock => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
