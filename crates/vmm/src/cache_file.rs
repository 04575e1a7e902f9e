//! The files of the VM caches (root disks, initramfs archives): created exclusively with their
//! mode, written atomically (temp file with a unique name, fsync, rename), so a crash or a
//! concurrent builder never leaves half a file under a cache key.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens a new file for writing with `mode` (used by the atomic writers).
pub(crate) fn create_new(path: &Path, mode: u32) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// A temp-name suffix no other process (pid) or earlier call (nanoseconds) of ours uses.
pub(crate) fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
}

/// Makes a rename in `dir` durable (best effort).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `data` to `path` atomically (temp file, fsync, rename) with `mode`.
pub(crate) fn write_atomic(path: &Path, mode: u32, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        unique()
    ));
    let result = (|| {
        let mut f = create_new(&tmp, mode)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    sync_dir(dir);
    result
}
