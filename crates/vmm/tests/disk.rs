//! VM disk images from layer directories (as root: the multi-layer merge mounts an overlay in a
//! private mount namespace).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use strata_vmm::{build_disk, DiskFormat, VmmError};

/// `debugfs -R "ls -p DIR"` names of an ext4 image directory.
fn ext4_ls(img: &Path, dir: &str) -> Vec<String> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("ls -p {dir}")])
        .arg(img)
        .output()
        .unwrap();
    // Lines look like /ino/mode/uid/gid/name/size/
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect();
    names.sort();
    names
}

fn ext4_cat(img: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn whiteout(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mknod with a valid C path; a 0/0 character device is overlayfs's whiteout.
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) },
        0
    );
}

#[test]
fn layers_are_merged_with_whiteouts_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let l1 = dir.path().join("l1");
    let l2 = dir.path().join("l2");
    std::fs::create_dir_all(l1.join("etc")).unwrap();
    std::fs::create_dir_all(l2.join("etc")).unwrap();
    std::fs::write(l1.join("etc/keep"), "keep").unwrap();
    std::fs::write(l1.join("etc/gone"), "gone").unwrap();
    std::fs::write(l1.join("etc/changed"), "old").unwrap();
    std::fs::write(l2.join("etc/changed"), "new").unwrap();
    std::fs::write(l2.join("etc/added"), "added").unwrap();
    whiteout(&l2.join("etc/gone"));
    let cache = dir.path().join("cache");

    let img = build_disk(
        &[l1.clone(), l2.clone()],
        DiskFormat::Ext4,
        &cache,
        "sha256:abc",
    )
    .unwrap();
    assert_eq!(img, cache.join("sha256-abc.ext4"));
    assert_eq!(ext4_ls(&img, "/etc"), ["added", "changed", "keep"]);
    assert_eq!(ext4_cat(&img, "/etc/changed"), "new");
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Only the image is left in the cache; no mount is left anywhere.
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dir.path().display().to_string()));

    // Cached: a second call returns the same file without rebuilding it.
    let before = std::fs::metadata(&img).unwrap().modified().unwrap();
    std::fs::write(l2.join("etc/late"), "late").unwrap();
    let again = build_disk(&[l1, l2], DiskFormat::Ext4, &cache, "sha256:abc").unwrap();
    assert_eq!(again, img);
    assert_eq!(std::fs::metadata(&img).unwrap().modified().unwrap(), before);
}

#[test]
fn erofs_images_build() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for format in [DiskFormat::Erofs, DiskFormat::ErofsLz4] {
        let img = build_disk(
            std::slice::from_ref(&root),
            format,
            &dir.path().join("cache"),
            "k",
        )
        .unwrap();
        let data = std::fs::read(&img).unwrap();
        // erofs superblock magic at 1024.
        assert_eq!(
            &data[1024..1028],
            &0xe0f5_e1e2u32.to_le_bytes(),
            "{format:?}"
        );
    }
    let plain = std::fs::metadata(dir.path().join("cache/k.erofs"))
        .unwrap()
        .len();
    let lz4 = std::fs::metadata(dir.path().join("cache/k.lz4.erofs"))
        .unwrap()
        .len();
    assert!(lz4 < plain, "lz4 {lz4} >= plain {plain}");
}

#[test]
fn bad_input_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let err = build_disk(&[dir.path().join("missing")], DiskFormat::Ext4, &cache, "k").unwrap_err();
    assert!(
        matches!(err, VmmError::Disk { .. }) && err.to_string().contains("missing"),
        "{err}"
    );
    assert!(matches!(
        build_disk(&[], DiskFormat::Ext4, &cache, "k"),
        Err(VmmError::InvalidConfig(_))
    ));
    assert!(matches!(
        build_disk(
            &[dir.path().to_path_buf()],
            DiskFormat::Ext4,
            &cache,
            "../escape"
        ),
        Err(VmmError::InvalidConfig(_))
    ));
    assert!(!cache.exists() || std::fs::read_dir(&cache).unwrap().next().is_none());
}
