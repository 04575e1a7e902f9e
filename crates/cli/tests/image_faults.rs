//! End-to-end: the image store under faults (as root). A full disk and SIGKILL during pull, load
//! and unpack cost no stored image and list no half image, and the store works afterwards; a
//! corrupt blob or unpacked layer is found by `strata image verify` and repaired by loading or
//! pulling again; concurrent pulls of one image store it once. docs/reliability.md sums these up.

mod image_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use image_common::{gzip, oci_archive, sha256, RawTar, Registry, TestStore};

/// A tmpfs of `size` mounted on the store's directory, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(s: &TestStore, size: &str) -> SmallDisk {
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(s.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount a tmpfs on {}", s.path().display());
        SmallDisk(s.path().to_path_buf())
    }

    fn grow(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount {}", self.0.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Deterministic incompressible bytes (xorshift), so a layer's size on disk is what we ask.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// An oci-archive at `path` named `name` with one layer holding `file` of `data`, gzip'd or not.
fn archive(path: &Path, name: &str, file: &str, data: &[u8], compress: bool) {
    let tar = RawTar::new().file(file, data).finish();
    let diff = sha256(&tar);
    let blob = if compress { gzip(&tar) } else { tar };
    oci_archive(path, name, &[(blob, diff)], |_| {});
}

/// Everything of the store but the staging area (what a failed or killed import may not touch),
/// without the mtimes of files strata writes itself (a repaired blob is a new file with the same
/// bytes); the files of unpacked layers keep theirs (they come from the image).
fn stored(s: &TestStore) -> BTreeMap<PathBuf, String> {
    s.listing()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("tmp"))
        .map(|(k, v)| {
            if k.starts_with("layers/sha256") || !v.starts_with("file ") {
                return (k, v);
            }
            let mut f: Vec<&str> = v.split(' ').collect();
            f.remove(4);
            (k, f.join(" "))
        })
        .collect()
}

/// Image names `strata images` lists.
fn names(s: &TestStore) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&s.ok(&["images", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap_or("<none>").to_string())
        .collect()
}

fn staging(s: &TestStore) -> Vec<PathBuf> {
    std::fs::read_dir(s.path().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// A full disk while a load stages blobs, while a layer is unpacked and while a pull downloads:
/// each fails saying the disk is full, the store is exactly what it was, and once there is
/// space the same load and pull succeed and every image verifies.
#[test]
fn full_disk_during_load_unpack_and_pull_costs_nothing() {
    let fixtures = tempfile::tempdir().unwrap();
    let big = fixtures.path().join("big.tar");
    archive(&big, "test/big:v1", "noise", &noise(10 << 20, 1), false);
    let bomb = fixtures.path().join("bomb.tar");
    archive(&bomb, "test/bomb:v1", "zeros", &vec![0u8; 10 << 20], true);
    let reg = Registry::start("127.0.0.1");
    reg.push_from(
        &format!("oci-archive:{}", big.display()),
        "test/big:v1",
        &[],
    );
    let remote = format!("{}/test/big:v1", reg.addr);

    let s = TestStore::new();
    let disk = SmallDisk::mount(&s, "8m");
    s.ok(&["image", "build-default"]);
    let busybox = s.ok(&["image", "verify", "busybox"]);
    assert!(busybox.starts_with("OK busybox:latest"), "{busybox}");
    let before = stored(&s);

    for (what, args) in [
        (
            "load (blob staging)",
            vec!["load", "-i", big.to_str().unwrap()],
        ),
        ("load (unpack)", vec!["load", "-i", bomb.to_str().unwrap()]),
        ("pull", vec!["pull", remote.as_str()]),
    ] {
        let err = s.fails(&args);
        assert!(
            err.contains("No space left on device") && err.contains("the filesystem is full"),
            "{what}: {err}"
        );
        assert_eq!(
            before,
            stored(&s),
            "{what}: a failed import changed the store"
        );
        assert!(staging(&s).is_empty(), "{what}: staging left behind");
        assert_eq!(names(&s), ["busybox:latest"], "{what}");
        s.ok(&["image", "verify"]);
    }

    disk.grow("64m");
    s.ok(&["load", "-i", big.to_str().unwrap()]);
    s.ok(&["load", "-i", bomb.to_str().unwrap()]);
    s.ok(&["pull", &remote]);
    let out = s.ok(&["image", "verify"]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("OK ")).count(),
        4,
        "{out}"
    );
    assert_eq!(
        std::fs::read(s.layer_dirs("busybox")[0].join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
}

/// Runs `strata ARGS` and SIGKILLs it once `ready` says the import reached the step to cut
/// short. Returns whether it was killed (false: it finished first).
fn kill_when(s: &TestStore, args: &[&str], ready: impl Fn(&TestStore) -> bool) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--store")
        .arg(s.path())
        .arg("--quiet")
        .args(args)
        .env_remove("STRATA_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if ready(s) {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "strata {args:?} hangs");
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Whether some import's staging has a blob over 1 MiB written (partly or fully).
fn big_blob_staged(s: &TestStore) -> bool {
    staging(s).iter().any(|d| {
        std::fs::read_dir(d.join("blobs")).is_ok_and(|r| {
            r.flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 1 << 20))
        })
    })
}

/// Whether some import's staging has begun unpacking a layer.
fn unpacking(s: &TestStore) -> bool {
    staging(s)
        .iter()
        .any(|d| std::fs::read_dir(d.join("layers")).is_ok_and(|mut r| r.next().is_some()))
}

/// SIGKILL while a load writes a blob, while it unpacks a layer and while a pull downloads:
/// the earlier image stays intact, no half image is listed, the staging left by the killed
/// process is removed by the next import, and the same load and pull then succeed.
#[test]
fn sigkill_during_load_unpack_and_pull_costs_nothing() {
    let fixtures = tempfile::tempdir().unwrap();
    let big = fixtures.path().join("big.tar");
    archive(&big, "test/big:v1", "noise", &noise(48 << 20, 2), false);
    let reg = Registry::start("127.0.0.1");
    reg.push_from(
        &format!("oci-archive:{}", big.display()),
        "test/remote:v1",
        &[],
    );
    let remote = format!("{}/test/remote:v1", reg.addr);
    let big = big.to_str().unwrap();

    let s = TestStore::new();
    s.ok(&["image", "build-default"]);
    let before = stored(&s);
    type Step = fn(&TestStore) -> bool;
    let cases: [(&str, Vec<&str>, Step); 3] = [
        (
            "load, writing a blob",
            vec!["load", "-i", big],
            big_blob_staged,
        ),
        ("load, unpacking", vec!["load", "-i", big], unpacking),
        ("pull, downloading", vec!["pull", &remote], big_blob_staged),
    ];
    for (what, args, step) in cases {
        assert!(
            kill_when(&s, &args, step),
            "{what}: finished before it could be killed"
        );
        assert_eq!(
            before,
            stored(&s),
            "{what}: the killed import changed the store"
        );
        assert_eq!(
            names(&s),
            ["busybox:latest"],
            "{what}: a half image is listed"
        );
        s.ok(&["image", "verify"]);
        assert!(
            !staging(&s).is_empty(),
            "{what}: the kill left no staging (too late?)"
        );
    }
    // The next import finds no other one running and removes what the killed ones staged.
    s.ok(&["load", "-i", big]);
    assert!(
        staging(&s).is_empty(),
        "staging of killed imports left behind"
    );
    s.ok(&["pull", &remote]);
    let out = s.ok(&["image", "verify"]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("OK ")).count(),
        3,
        "{out}"
    );
}

/// Flips one byte in the middle of a file.
fn flip(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x40;
    std::fs::write(p, b).unwrap();
}

/// A corrupt layer blob, a changed or missing file of an unpacked layer and a corrupt config are
/// each found by `strata image verify` (non-zero exit, naming the part) and repaired by loading
/// or pulling the image again.
#[test]
fn corruption_is_found_and_repaired_by_load_and_pull() {
    let fixtures = tempfile::tempdir().unwrap();
    let arch = fixtures.path().join("img.tar");
    let tar = RawTar::new()
        .file("bin/tool", &noise(64 << 10, 3))
        .file("etc/conf", b"setting=1\n")
        .finish();
    let diff = sha256(&tar);
    let blob = gzip(&tar);
    let layer_blob = sha256(&blob);
    oci_archive(&arch, "test/img:v1", &[(blob, diff.clone())], |_| {});
    let arch = arch.to_str().unwrap();
    let reg = Registry::start("127.0.0.1");
    reg.push_from(&format!("oci-archive:{arch}"), "test/img:v1", &[]);
    let remote = format!("{}/test/img:v1", reg.addr);

    for how in ["load", "pull"] {
        let s = TestStore::new();
        let (name, again): (&str, Vec<&str>) = match how {
            "load" => ("test/img:v1", vec!["load", "-i", arch]),
            _ => (remote.as_str(), vec!["pull", remote.as_str()]),
        };
        s.ok(&again);
        s.ok(&["image", "verify", name]);
        let good = stored(&s);
        let blob_path = s.path().join("blobs/sha256").join(&layer_blob[7..]);
        let layer = s.path().join("layers/sha256").join(&diff[7..]);
        let config = s.inspect(name)["Manifest"]["config"]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let config_path = s.path().join("blobs/sha256").join(&config[7..]);

        type Damage<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
        let damages: [Damage; 5] = [
            (
                "layer blob",
                Box::new(|| flip(&blob_path)),
                "does not hash to its digest",
            ),
            (
                "file in the unpacked layer",
                Box::new(|| flip(&layer.join("bin/tool"))),
                "changed on disk",
            ),
            (
                "file removed from the unpacked layer",
                Box::new(|| std::fs::remove_file(layer.join("etc/conf")).unwrap()),
                "changed on disk",
            ),
            (
                "unpacked layer removed",
                Box::new(|| std::fs::remove_dir_all(&layer).unwrap()),
                "is missing",
            ),
            (
                "config blob",
                Box::new(|| flip(&config_path)),
                "config: digest mismatch",
            ),
        ];
        for (what, damage, needle) in damages {
            damage();
            let o = s.strata(&["image", "verify", name]);
            let (out, err) = (
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
            );
            assert!(!o.status.success(), "{how}, {what}: verify passed: {out}");
            assert!(
                out.contains(&format!("DAMAGED {name}")) && out.contains(needle),
                "{how}, {what}: {out}"
            );
            assert!(
                err.contains("load or pull it again to repair it"),
                "{how}, {what}: {err}"
            );
            // All images at once too; listing still works (a damaged image is shown as such).
            assert!(!s.strata(&["image", "verify"]).status.success());
            assert_eq!(names(&s), [name], "{how}, {what}");
            if what == "config blob" {
                // The table marks it, and prune keeps its layer (it used to remove it: the
                // image's layers are unknown while its config is damaged).
                let o = s.strata(&["images"]);
                let table = String::from_utf8_lossy(&o.stdout);
                assert!(table.contains("DAMAGED"), "{how}: images: {table}");
                let o = s.strata(&["image", "prune"]);
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(o.status.success(), "{how}: prune: {err}");
                assert!(
                    err.contains("kept every blob and layer"),
                    "{how}: prune: {err}"
                );
                assert!(
                    layer.join("bin/tool").exists(),
                    "{how}: prune removed the layer"
                );
            }
            s.ok(&again);
            s.ok(&["image", "verify", name]);
            let now = stored(&s);
            let differs: Vec<_> = good
                .iter()
                .filter(|(k, v)| !k.ends_with("images.json") && now.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .collect();
            assert!(
                differs.is_empty(),
                "{how}, {what}: not repaired: {differs:?}"
            );
        }
    }
}

/// Five `strata pull`s of one image at once from a loopback registry: all succeed and the store
/// holds it once (one name, three blobs, one unpacked layer, nothing staged).
#[test]
fn five_concurrent_pulls_store_the_image_once() {
    let fixtures = tempfile::tempdir().unwrap();
    let arch = fixtures.path().join("img.tar");
    archive(&arch, "test/c:v1", "noise", &noise(8 << 20, 4), true);
    let reg = Registry::start("127.0.0.1");
    reg.push_from(&format!("oci-archive:{}", arch.display()), "test/c:v1", &[]);
    let remote = format!("{}/test/c:v1", reg.addr);
    let s = TestStore::new();
    s.ok(&["images"]);
    let children: Vec<_> = (0..5)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_strata"))
                .arg("--store")
                .arg(s.path())
                .args(["--quiet", "pull", &remote])
                .env_remove("STRATA_STORE")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut digests = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        digests.push(String::from_utf8_lossy(&o.stdout).into_owned());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    let count = |d: &str| std::fs::read_dir(s.path().join(d)).unwrap().count();
    assert_eq!(
        count("blobs/sha256"),
        3,
        "manifest, config and layer, once each"
    );
    assert_eq!(count("layers/sha256"), 1);
    assert_eq!(count("layers/tree"), 1);
    assert_eq!(count("tmp"), 0, "staging left behind");
    assert_eq!(names(&s), [remote]);
    s.ok(&["image", "verify"]);
}
