//! UML copy-on-write files (`ubdN=cow,base`), created on the host before boot.
//!
//! UML creates a missing COW file itself, but inside the jail that would land on the jail's
//! throw-away tmpfs. Creating it here puts it at the caller's path, owned by the VM's uid, and
//! records the base under the path the jailed kernel sees. The format is UML's version 3 header
//! (arch/um/drivers/cow_user.c): big-endian fields, then a bitmap of written sectors, then data.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

const COW_MAGIC: u32 = 0x4f4f_4f4d; // "MOOO"
const COW_VERSION: u32 = 3;
const PATH_LEN: usize = 4096;
const SECTOR_SIZE: u32 = 512;
/// UML uses the page size as alignment for the files it creates.
const ALIGNMENT: u32 = 4096;
/// magic, version, mtime, size (u64), sectorsize, alignment, cow_format, backing path.
const HEADER_LEN: usize = 4 + 4 + 4 + 8 + 4 + 4 + 4 + PATH_LEN;

/// Encodes the COW header for a base of `size` bytes modified at `mtime` (seconds), known to the
/// guest kernel as `backing_path`.
pub(crate) fn header(backing_path: &str, mtime: i64, size: u64) -> io::Result<Vec<u8>> {
    if backing_path.len() >= PATH_LEN
        || !backing_path.starts_with('/')
        || backing_path.contains('\0')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("backing path {backing_path:?} must be absolute, without NUL, shorter than {PATH_LEN}"),
        ));
    }
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&COW_MAGIC.to_be_bytes());
    h.extend_from_slice(&COW_VERSION.to_be_bytes());
    // The v3 header keeps 32 bits of mtime; UML compares it the same truncated way.
    h.extend_from_slice(&(mtime as u32).to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&SECTOR_SIZE.to_be_bytes());
    h.extend_from_slice(&ALIGNMENT.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.extend_from_slice(backing_path.as_bytes());
    h.resize(HEADER_LEN, 0);
    Ok(h)
}

/// Total length of a fresh COW file for a base of `size` bytes: header, bitmap, then room for
/// every sector (sparse: nothing is allocated until the guest writes).
pub(crate) fn file_len(size: u64) -> u64 {
    let align = u64::from(ALIGNMENT);
    let bitmap_offset = (HEADER_LEN as u64).div_ceil(align) * align;
    let bitmap_len = size.div_ceil(u64::from(SECTOR_SIZE)).div_ceil(8);
    let data_offset = (bitmap_offset + bitmap_len).div_ceil(align) * align;
    data_offset + size
}

/// Creates (replacing) the COW file `cow` over the host file `base`, which the guest kernel will
/// open as `backing_path`.
pub(crate) fn create(cow: &Path, base: &Path, backing_path: &str) -> io::Result<File> {
    let meta = std::fs::metadata(base)?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the base of a COW disk must be a regular file",
        ));
    }
    let header = header(backing_path, meta.mtime(), meta.len())?;
    match std::fs::remove_file(cow) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(cow)?;
    f.write_all(&header)?;
    f.set_len(file_len(meta.len()))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_uml() {
        let h = header("/disk0", 0x1234_5678_9abc, 1 << 20).unwrap();
        assert_eq!(h.len(), 4128);
        assert_eq!(&h[0..4], b"OOOM");
        assert_eq!(&h[4..8], &[0, 0, 0, 3]);
        assert_eq!(&h[8..12], &0x5678_9abcu32.to_be_bytes());
        assert_eq!(&h[12..20], &(1u64 << 20).to_be_bytes());
        assert_eq!(&h[20..24], &512u32.to_be_bytes());
        assert_eq!(&h[24..28], &4096u32.to_be_bytes());
        assert_eq!(&h[28..32], &[0; 4]);
        assert_eq!(&h[32..38], b"/disk0");
        assert!(h[38..].iter().all(|&b| b == 0));
    }

    #[test]
    fn header_refuses_bad_paths() {
        assert!(header("relative", 0, 0).is_err());
        assert!(header(&format!("/{}", "a".repeat(4096)), 0, 0).is_err());
        assert!(header("/a\0b", 0, 0).is_err());
    }

    #[test]
    fn sizes() {
        // 1 MiB base: 2048 sectors → 256-byte bitmap at 8192 → data at 12288.
        assert_eq!(file_len(1 << 20), 12288 + (1 << 20));
        assert_eq!(file_len(0), 8192);
    }

    #[test]
    fn create_replaces_and_is_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::write(&base, vec![7u8; 4096]).unwrap();
        let cow = dir.path().join("cow");
        std::fs::write(&cow, b"old").unwrap();
        create(&cow, &base, "/d0").unwrap();
        let data = std::fs::read(&cow).unwrap();
        assert_eq!(data.len() as u64, file_len(4096));
        assert_eq!(&data[0..4], b"OOOM");
        assert!(
            create(&cow, dir.path(), "/d0").is_err(),
            "a directory is not a base"
        );
    }
}
