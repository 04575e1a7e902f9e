//! Empty qcow2 overlays: the `qemu` platform's copy-on-write layer over a shared read-only base
//! (the counterpart of UML's COW files in [`crate::cow`]). Guest writes land in the overlay; the
//! base is opened read-only by every VM. Written here instead of running `qemu-img` (one process
//! less on the start path, no qemu-utils dependency).
//!
//! Layout (qcow2 version 2, 64 KiB clusters): cluster 0 the header, the backing-format header
//! extension (`raw`) and the backing file name; cluster 1 the refcount table; cluster 2 its one
//! refcount block (16-bit refcounts for clusters 0-3); cluster 3 the L1 table (all zero: nothing
//! allocated, every read goes to the backing file). QEMU grows the file as the guest writes.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// One L2 table (CLUSTER / 8 entries) maps this many bytes.
const L2_COVERS: u64 = CLUSTER * (CLUSTER / 8);
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;

/// The first cluster and the whole-file length of an empty overlay of a `size`-byte disk whose
/// backing file is `backing` (as QEMU will see it, e.g. the path inside the jail).
pub(crate) fn image(backing: &str, size: u64) -> io::Result<(Vec<u8>, u64)> {
    let l1_entries = size.div_ceil(L2_COVERS);
    if size == 0 || l1_entries * 8 > CLUSTER || backing.is_empty() || backing.len() > 1023 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot make a qcow2 overlay of {size} bytes over {backing:?}"),
        ));
    }
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&2u32.to_be_bytes()); // version
    let ext_len = 8 + 8; // one extension ("raw" padded to 8) ...
    let ext_end = 72 + ext_len + 8; // ... then the end-of-extensions marker
    h.extend_from_slice(&(ext_end as u64).to_be_bytes()); // backing_file_offset
    h.extend_from_slice(&(backing.len() as u32).to_be_bytes());
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
    h.extend_from_slice(&(l1_entries as u32).to_be_bytes()); // l1_size
    h.extend_from_slice(&(3 * CLUSTER).to_be_bytes()); // l1_table_offset
    h.extend_from_slice(&CLUSTER.to_be_bytes()); // refcount_table_offset
    h.extend_from_slice(&1u32.to_be_bytes()); // refcount_table_clusters
    h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    debug_assert_eq!(h.len(), 72);
    h.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
    h.extend_from_slice(&3u32.to_be_bytes());
    h.extend_from_slice(b"raw\0\0\0\0\0");
    h.extend_from_slice(&[0u8; 8]); // end of extensions
    h.extend_from_slice(backing.as_bytes());
    let mut first = vec![0u8; 3 * CLUSTER as usize];
    first[..h.len()].copy_from_slice(&h);
    // Refcount table: block 0 at cluster 2.
    let rt = CLUSTER as usize;
    first[rt..rt + 8].copy_from_slice(&(2 * CLUSTER).to_be_bytes());
    // Refcount block: clusters 0..=3 are in use once.
    let rb = 2 * CLUSTER as usize;
    for i in 0..4 {
        first[rb + 2 * i..rb + 2 * i + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok((first, 4 * CLUSTER))
}

/// Creates (replacing any existing file) an empty overlay at `path` over `base`, which QEMU will
/// open as `backing`. Mode 0600; the caller hands it to the VM's uid.
pub(crate) fn create(path: &Path, base: &Path, backing: &str) -> io::Result<File> {
    let size = std::fs::metadata(base)?.len();
    let (data, len) = image(backing, size)?;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(&data)?;
    f.set_len(len)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be32(b: &[u8], o: usize) -> u32 {
        u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn be64(b: &[u8], o: usize) -> u64 {
        u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn header_fields() {
        let (d, len) = image("/disk0", 3 << 30).unwrap();
        assert_eq!(&d[..4], b"QFI\xfb");
        assert_eq!(be32(&d, 4), 2);
        let off = be64(&d, 8) as usize;
        let n = be32(&d, 16) as usize;
        assert_eq!(&d[off..off + n], b"/disk0");
        assert_eq!(be64(&d, 24), 3 << 30);
        assert_eq!(be32(&d, 36), 6); // 3 GiB / 512 MiB per L2 table
        assert_eq!(be64(&d, 40), 3 * CLUSTER);
        assert_eq!(len, 4 * CLUSTER);
        assert_eq!(be32(&d, 72), EXT_BACKING_FORMAT);
        assert_eq!(&d[80..83], b"raw");
    }

    #[test]
    fn refuses_impossible_sizes() {
        assert!(image("/d", 0).is_err());
        assert!(image("", 1 << 20).is_err());
        assert!(image("/d", u64::MAX).is_err());
    }
}
