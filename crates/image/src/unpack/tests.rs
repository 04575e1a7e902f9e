//! Hostile and ordinary layer tars, generated here, through the real unpacker (needs root for
//! chown, device nodes and trusted.* xattrs; the test suite runs as root).

use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

/// A raw tar writer: lets tests write names `tar::Builder` refuses (`..`, absolute paths).
struct RawTar(Vec<u8>);

impl RawTar {
    fn new() -> Self {
        RawTar(Vec::new())
    }
    fn entry(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
        mode: u32,
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        {
            let raw = h.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0, pad));
        self
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, "", data, 0o644)
    }
    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Directory, "", b"", 0o755)
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Symlink, target, b"", 0o777)
    }
    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Link, target, b"", 0o644)
    }
    fn finish(&mut self) -> Vec<u8> {
        let mut v = self.0.clone();
        v.extend(std::iter::repeat_n(0, 1024));
        v
    }
}

fn unpack_into(dir: &Path, data: &[u8]) -> Result<UnpackStats> {
    let fd = sys::open_dir(dir).unwrap();
    unpack_tar(data, fd.as_fd())
}

fn refused(data: &[u8], needle: &str) {
    match fuzz_unpack(data) {
        Err(e @ Error::UnsafeEntry { .. }) => {
            assert!(e.to_string().contains(needle), "error {e} lacks {needle:?}")
        }
        other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn refuses_dotdot() {
    refused(&RawTar::new().file("../escape", b"x").finish(), "`..`");
    refused(&RawTar::new().file("a/../../escape", b"x").finish(), "`..`");
}

#[test]
fn refuses_absolute_paths() {
    refused(
        &RawTar::new()
            .file("/tmp/strata-absolute-escape", b"x")
            .finish(),
        "absolute",
    );
    assert!(!Path::new("/tmp/strata-absolute-escape").exists());
}

#[test]
fn refuses_writing_through_a_symlink() {
    let t = RawTar::new()
        .symlink("evil", "../beside")
        .file("evil/file", b"owned")
        .finish();
    refused(&t, "symlink evil");
    let t = RawTar::new().symlink("evil", "/").dir("evil/etc").finish();
    refused(&t, "symlink evil");
    // A symlink deeper in the path.
    let t = RawTar::new()
        .dir("a")
        .symlink("a/b", "/etc")
        .file("a/b/passwd", b"x")
        .finish();
    refused(&t, "symlink a/b");
}

#[test]
fn refuses_hardlinks_outside() {
    refused(
        &RawTar::new().hardlink("h", "../beside/file").finish(),
        "`..`",
    );
    refused(
        &RawTar::new().hardlink("h", "/etc/passwd").finish(),
        "absolute",
    );
    let t = RawTar::new()
        .symlink("s", "../beside")
        .hardlink("h", "s/file")
        .finish();
    refused(&t, "symlink s");
    refused(
        &RawTar::new().hardlink("h", "missing").finish(),
        "does not exist",
    );
}

#[test]
fn symlink_replaced_file_is_not_followed() {
    // A regular file entry over an earlier symlink must replace the link, not write through it.
    let t = RawTar::new()
        .symlink("f", "../beside/file")
        .file("f", b"new")
        .finish();
    fuzz_unpack(&t).unwrap();
}

/// umoci 0.4 ends a layer right after the last file's data: no padding, no end blocks (Docker,
/// Podman and GNU tar accept it). Only the missing zeros are forgiven: a stream that stops
/// inside the data, or inside a header, is still refused.
#[test]
fn a_stream_ending_right_after_the_last_file_is_complete() {
    let mut t = RawTar::new();
    t.dir("d").file("d/a", b"first").file("last", b"hi\n");
    let padded = t.0.clone();
    let unpadded = &padded[..padded.len() - (512 - 3)];
    for (what, data) in [
        ("no padding", unpadded.to_vec()),
        ("half the padding", padded[..padded.len() - 200].to_vec()),
        ("padding, no end blocks", padded.clone()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let stats = unpack_into(dir.path(), &data).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(stats.entries, 3, "{what}");
        assert_eq!(std::fs::read(dir.path().join("last")).unwrap(), b"hi\n");
        assert_eq!(std::fs::read(dir.path().join("d/a")).unwrap(), b"first");
    }
    // The last file's data cut short, a header cut short: refused.
    for cut in [unpadded.len() - 1, unpadded.len() - 3, 512 + 100] {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            matches!(
                unpack_into(dir.path(), &unpadded[..cut]),
                Err(Error::BadLayer { .. })
            ),
            "cut at {cut} accepted"
        );
    }
    // Gzip over the unpadded stream (what umoci writes) as well.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, unpadded).unwrap();
    fuzz_unpack(&gz.finish().unwrap()).unwrap();
}

#[test]
fn truncated_and_corrupt_streams_are_errors() {
    let good = RawTar::new().file("a", &[7u8; 5000]).finish();
    for cut in [100, 512, 700, 3000] {
        assert!(
            matches!(fuzz_unpack(&good[..cut]), Err(Error::BadLayer { .. })),
            "cut at {cut} accepted"
        );
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &good).unwrap();
    let gz = gz.finish().unwrap();
    assert!(matches!(
        fuzz_unpack(&gz[..gz.len() / 2]),
        Err(Error::BadLayer { .. })
    ));
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n / 2] ^= 0xff;
    assert!(fuzz_unpack(&bad).is_err());
}

#[test]
fn unpacks_every_entry_kind_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = hdr();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o750);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_234_567_890);
    b.append_data(&mut h, "d/", std::io::empty()).unwrap();
    let mut h = hdr();
    h.set_mode(0o4755);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_111_111_111);
    h.set_size(5);
    b.append_data(&mut h, "d/suid", &b"hello"[..]).unwrap();
    let mut h = hdr();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mtime(1_000_000_000);
    b.append_link(&mut h, "d/link", "/absolute/target").unwrap();
    let mut h = hdr();
    h.set_entry_type(tar::EntryType::Link);
    b.append_link(&mut h, "hard", "d/suid").unwrap();
    let mut h = hdr();
    h.set_entry_type(tar::EntryType::Char);
    h.set_mode(0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "null", std::io::empty()).unwrap();
    let mut h = hdr();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_mode(0o600);
    b.append_data(&mut h, "fifo", std::io::empty()).unwrap();
    // Whiteouts and an opaque directory.
    let mut h = hdr();
    h.set_size(0);
    b.append_data(&mut h, "d/.wh.gone", std::io::empty())
        .unwrap();
    let mut h = hdr();
    h.set_size(0);
    b.append_data(&mut h, "opaque/.wh..wh..opq", std::io::empty())
        .unwrap();
    // A PAX xattr.
    let mut h = hdr();
    h.set_size(1);
    h.set_mode(0o644);
    b.append_pax_extensions([
        ("SCHILY.xattr.user.strata", &b"yes"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
    ])
    .unwrap();
    b.append_data(&mut h, "xattr", &b"x"[..]).unwrap();
    // Implicit parent directories.
    let mut h = hdr();
    h.set_size(1);
    h.set_mode(0o600);
    b.append_data(&mut h, "implicit/deep/file", &b"y"[..])
        .unwrap();
    let data = b.into_inner().unwrap();

    unpack_into(dir.path(), &data).unwrap();
    let p = dir.path();
    let m = std::fs::metadata(p.join("d/suid")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o4755, 1000, 1000, 1_111_111_111)
    );
    assert_eq!(std::fs::read(p.join("d/suid")).unwrap(), b"hello");
    let m = std::fs::metadata(p.join("d")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o750, 1000, 1001, 1_234_567_890)
    );
    assert_eq!(
        std::fs::read_link(p.join("d/link")).unwrap(),
        Path::new("/absolute/target")
    );
    assert_eq!(
        std::fs::symlink_metadata(p.join("d/link")).unwrap().mtime(),
        1_000_000_000
    );
    assert_eq!(
        std::fs::metadata(p.join("hard")).unwrap().ino(),
        std::fs::metadata(p.join("d/suid")).unwrap().ino()
    );
    let m = std::fs::symlink_metadata(p.join("null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), libc::makedev(1, 3));
    assert!(std::fs::symlink_metadata(p.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let wh = std::fs::symlink_metadata(p.join("d/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is not a 0:0 char device"
    );
    assert!(!p.join("d/.wh.gone").exists());
    assert_eq!(
        xattr(&p.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!p.join("opaque/.wh..wh..opq").exists());
    assert_eq!(
        xattr(&p.join("xattr"), "user.strata").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        xattr(&p.join("xattr"), "trusted.overlay.redirect"),
        None,
        "overlay xattrs from a layer must be dropped"
    );
    assert_eq!(
        std::fs::metadata(p.join("implicit/deep"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
}

fn hdr() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mode(0o644);
    h
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let cp = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str())).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let n =
        unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        None
    } else {
        buf.truncate(n as usize);
        Some(buf)
    }
}

/// The stable counterpart of the cargo-fuzz target: the same entry point over generated hostile
/// tars and mutations of them (deterministic pseudo-random bytes, no external corpus needed).
#[test]
fn fuzz_corpus_stays_confined() {
    let seeds = vec![
        RawTar::new()
            .file("a", b"1")
            .dir("d")
            .symlink("d/l", "..")
            .hardlink("h", "a")
            .finish(),
        RawTar::new().symlink("x", "/").file("x/y", b"1").finish(),
        RawTar::new()
            .file(".wh..wh..opq", b"")
            .file("d/.wh.x", b"")
            .file("d/.wh..", b"")
            .finish(),
        RawTar::new()
            .dir("a")
            .file("a", b"replace dir")
            .file("a/b", b"")
            .finish(),
        RawTar::new()
            .hardlink("a", "a")
            .symlink("b", "b")
            .file("b/c", b"")
            .finish(),
    ];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for seed in &seeds {
        let _ = fuzz_unpack(seed);
        for _ in 0..60 {
            let mut m = seed.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            if next() % 4 == 0 {
                let cut = (next() as usize) % m.len();
                m.truncate(cut);
            }
            let _ = fuzz_unpack(&m);
        }
    }
}
