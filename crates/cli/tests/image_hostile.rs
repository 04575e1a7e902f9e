//! End-to-end: hostile archives and layers are refused with a clear error, nothing is written
//! outside the store, and the store is byte-for-byte what it was before (as root).

mod image_common;

use std::path::Path;

use image_common::{gzip, oci_archive, sha256, RawTar, TestStore};

/// Loads an archive with the given layers (blob, claimed diffID) into a store holding the
/// default image and checks the refusal and that the store did not change.
fn refused(
    layers: &[(Vec<u8>, String)],
    tamper: impl FnOnce(&mut std::collections::BTreeMap<String, Vec<u8>>),
    needle: &str,
) {
    let s = TestStore::new();
    s.ok(&["image", "build-default"]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("hostile.tar");
    oci_archive(&archive, "hostile:v1", layers, tamper);
    let before = s.listing();
    let err = s.fails(&["load", "-i", archive.to_str().unwrap()]);
    assert!(err.contains(needle), "error does not say {needle:?}: {err}");
    assert!(err.starts_with("strata: error: load "), "{err}");
    let after = s.listing();
    assert_eq!(before, after, "a refused load changed the store");
    let err = s.fails(&["inspect", "hostile:v1"]);
    assert!(err.contains("not found"), "{err}");
}

fn plain(tar: Vec<u8>) -> (Vec<u8>, String) {
    let d = sha256(&tar);
    (tar, d)
}

#[test]
fn path_traversal() {
    let name = format!("strata-escape-{}", std::process::id());
    let layer = RawTar::new()
        .file("ok", b"1")
        .file(&format!("../../../../../../tmp/{name}"), b"pwned")
        .finish();
    refused(&[plain(layer)], |_| {}, "`..`");
    assert!(!Path::new("/tmp").join(&name).exists());
}

#[test]
fn absolute_path() {
    let name = format!("/tmp/strata-absolute-{}", std::process::id());
    refused(
        &[plain(RawTar::new().file(&name, b"pwned").finish())],
        |_| {},
        "absolute path",
    );
    assert!(!Path::new(&name).exists());
}

#[test]
fn symlink_escape_then_write_through_it() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();
    let layer = RawTar::new()
        .symlink("evil", &target)
        .file("evil/pwned", b"pwned")
        .finish();
    refused(&[plain(layer)], |_| {}, "symlink evil");
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "a file was written through the symlink"
    );
    // The same through a relative link climbing out.
    let layer = RawTar::new()
        .symlink("up", "../../../../../..")
        .file("up/tmp/pwned", b"x")
        .finish();
    refused(&[plain(layer)], |_| {}, "symlink up");
}

#[test]
fn hardlink_to_outside() {
    refused(
        &[plain(
            RawTar::new()
                .hardlink("passwd", "../../../../../etc/passwd")
                .finish(),
        )],
        |_| {},
        "`..`",
    );
    refused(
        &[plain(
            RawTar::new().hardlink("passwd", "/etc/passwd").finish(),
        )],
        |_| {},
        "absolute path",
    );
    let layer = RawTar::new()
        .symlink("etc", "/etc")
        .hardlink("passwd", "etc/passwd")
        .finish();
    refused(&[plain(layer)], |_| {}, "symlink etc");
}

#[test]
fn bad_blob_digest() {
    let (tar, diff) = plain(RawTar::new().file("a", b"1").finish());
    let digest = sha256(&tar);
    refused(
        &[(tar, diff)],
        |blobs| {
            blobs.insert(digest, RawTar::new().file("a", b"2").finish());
        },
        "digest mismatch",
    );
}

#[test]
fn truncated_gzip_layer() {
    let tar = RawTar::new().file("big", &vec![42u8; 200_000]).finish();
    let diff = sha256(&tar);
    let gz = gzip(&tar);
    let cut = gz[..gz.len() / 2].to_vec();
    refused(&[(cut, diff)], |_| {}, "truncated or corrupt");
}

#[test]
fn wrong_diff_id() {
    let tar = RawTar::new().file("a", b"1").finish();
    let lie = sha256(b"something else");
    refused(&[(gzip(&tar), lie)], |_| {}, "digest mismatch");
}

#[test]
fn second_layer_fails_after_first_unpacked() {
    // The first layer is fine and gets unpacked; the second is hostile: nothing may stay.
    let good = plain(RawTar::new().file("good", b"1").finish());
    let bad = plain(RawTar::new().file("../bad", b"1").finish());
    refused(&[good, bad], |_| {}, "`..`");
}

/// A full disk in the middle of an import leaves the store as it was.
#[test]
fn full_disk_leaves_the_store_unchanged() {
    struct Tmpfs(std::path::PathBuf);
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let s = TestStore::new();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(s.path())
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs");
    let _guard = Tmpfs(s.path().to_path_buf());
    s.ok(&["images"]);
    let before = s.listing();
    // The busybox layer (2 MiB) fits once as a blob but not again unpacked.
    let err = s.fails(&["image", "build-default"]);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(before, s.listing(), "a failed import changed the store");
}

/// Writes an oci-archive whose single manifest is `manifest` (any JSON) next to `extra` blobs.
fn archive_with_manifest(path: &Path, manifest: &serde_json::Value, extra: &[Vec<u8>]) {
    let m = serde_json::to_vec(manifest).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha256(&m), "size": m.len(), "annotations": {"org.opencontainers.image.ref.name": "hostile:v1"}}]});
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("index.json".into(), &serde_json::to_vec(&index).unwrap());
    add(format!("blobs/sha256/{}", &sha256(&m)[7..]), &m);
    for e in extra {
        add(format!("blobs/sha256/{}", &sha256(e)[7..]), e);
    }
    b.finish().unwrap();
}

#[test]
fn hostile_manifests() {
    let s = TestStore::new();
    s.ok(&["image", "build-default"]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("m.tar");
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(b"a"), sha256(b"b")]}}))
    .unwrap();
    let cdesc = serde_json::json!({"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()});
    let layer = RawTar::new().file("a", b"1").finish();
    let ldesc = serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()});
    let cases = [
        // A digest that would be a path outside the blob directory.
        (
            serde_json::json!({"schemaVersion": 2, "config": cdesc, "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": "sha256:../../../../../../etc/passwd", "size": 1}]}),
            "Invalid encoded value",
        ),
        // Layer count and diff_ids disagree.
        (
            serde_json::json!({"schemaVersion": 2, "config": cdesc, "layers": [ldesc]}),
            "lists 1 layers but the config 2 diff_ids",
        ),
        // A layer that is not a layer.
        (
            serde_json::json!({"schemaVersion": 2, "config": cdesc, "layers": [{"mediaType": "application/x-evil", "digest": sha256(&layer), "size": layer.len()},
            {"mediaType": "application/x-evil", "digest": sha256(&layer), "size": layer.len()}]}),
            "unsupported media type",
        ),
        // A size that lies.
        (
            serde_json::json!({"schemaVersion": 2, "config": cdesc, "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": 7}, ldesc]}),
            "size mismatch",
        ),
        // Not a manifest at all.
        (
            serde_json::json!({"schemaVersion": 2, "config": 5}),
            "invalid JSON",
        ),
    ];
    for (manifest, needle) in cases {
        archive_with_manifest(&archive, &manifest, &[config.clone(), layer.clone()]);
        let before = s.listing();
        let err = s.fails(&["load", "-i", archive.to_str().unwrap()]);
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert_eq!(before, s.listing(), "store changed after {needle}");
    }
}

/// Whether `err` is safe to print on a terminal: UTF-8 with no control character but newlines,
/// no DEL, no C1 control, no bidi or zero-width character (non-ASCII only as letters/digits),
/// and short.
fn assert_inert(what: &str, err: &[u8]) {
    let s = std::str::from_utf8(err).unwrap_or_else(|_| panic!("{what}: not UTF-8: {err:?}"));
    let bad: Vec<char> = s
        .chars()
        .filter(|&c| {
            !(c == '\n' || (' '..='~').contains(&c) || (!c.is_ascii() && c.is_alphanumeric()))
        })
        .collect();
    assert!(bad.is_empty(), "{what}: raw {bad:?} in {s:?}");
    assert!(s.len() < 2000, "{what}: {} bytes of error: {s}", s.len());
}

fn stderr_of(s: &TestStore, args: &[&str]) -> Vec<u8> {
    let o = s.strata(args);
    assert!(!o.status.success(), "strata {args:?} succeeded");
    o.stderr
}

/// `strata load -i` of random bytes (and of bytes made to look like a tar header with terminal
/// escapes in its name and checksum) says what is wrong without printing the file's bytes raw.
#[test]
fn load_of_random_bytes_quotes_them_escaped() {
    let s = TestStore::new();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("random.bin");
    let mut x: u64 = 0x2545f4914f6cdd1d;
    for seed in 0..20u64 {
        x ^= seed.wrapping_mul(0x9e3779b97f4a7c15);
        let mut v = Vec::with_capacity(1000);
        while v.len() < 1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push((x >> 32) as u8);
        }
        if seed == 0 {
            // A header-shaped start: the name and checksum fields hold escape sequences.
            let name = b"\x1b[2J\x1b]0;owned\x07\x9b31mX";
            v[..name.len()].copy_from_slice(name);
            v[148..156].copy_from_slice(b"\x1b[5m\x1b[0m");
            v[257..263].copy_from_slice(b"ustar\0");
        }
        std::fs::write(&f, &v).unwrap();
        let err = stderr_of(&s, &["load", "-i", f.to_str().unwrap()]);
        assert_inert(&format!("random file {seed}"), &err);
        let text = String::from_utf8_lossy(&err);
        assert!(
            text.starts_with("strata: error: load ") && text.contains("not a tar archive"),
            "{text}"
        );
    }
    assert_eq!(std::fs::read_dir(s.path().join("tmp")).unwrap().count(), 0);
}

/// Hostile tar entry names and manifest fields reach the error escaped and cut short.
#[test]
fn hostile_names_and_fields_are_quoted_escaped() {
    let s = TestStore::new();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    // A layer entry whose name carries escapes and climbs out of the layer.
    let name = "\x1b]0;pwned\x07\x1b[2J/../x";
    oci_archive(
        &archive,
        "hostile:v1",
        &[plain(RawTar::new().file(name, b"1").finish())],
        |_| {},
    );
    let err = stderr_of(&s, &["load", "-i", archive.to_str().unwrap()]);
    assert_inert("tar entry name", &err);
    let text = String::from_utf8_lossy(&err);
    assert!(
        text.contains("\\u{1b}]0;pwned\\u{7}") && text.contains("`..`"),
        "{text}"
    );

    // A media type of 100 KB with escapes.
    let layer = RawTar::new().file("a", b"1").finish();
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}}))
    .unwrap();
    let evil = format!("application/x-\x1b[31m{}", "\u{202e}A".repeat(50_000));
    let manifest = serde_json::json!({"schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": evil, "digest": sha256(&layer), "size": layer.len()}]});
    archive_with_manifest(&archive, &manifest, &[config, layer]);
    let err = stderr_of(&s, &["load", "-i", archive.to_str().unwrap()]);
    assert_inert("media type", &err);
    let text = String::from_utf8_lossy(&err);
    assert!(
        text.contains("unsupported media type application/x-\\u{1b}[31m\\u{202e}A")
            && text.contains("bytes)"),
        "{text}"
    );
}

/// A registry whose error response carries terminal escapes: `strata pull` quotes it escaped.
#[test]
fn registry_error_bodies_are_quoted_escaped() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let (status, body) = if first.starts_with("GET /v2/ ") {
                ("200 OK", "{}".to_string())
            } else {
                (
                    "404 Not Found",
                    "{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\",\"message\":\"\u{1b}[2J\u{1b}]0;owned\u{7}gone\"}]}".to_string(),
                )
            };
            let mut c = conn;
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let s = TestStore::new();
    let err = stderr_of(&s, &["pull", &format!("{addr}/evil/image:v1")]);
    assert_inert("registry error", &err);
    let text = String::from_utf8_lossy(&err);
    assert!(text.contains("pull ") && text.contains("gone"), "{text}");
}
