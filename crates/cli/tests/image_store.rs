//! End-to-end: the default busybox image, listing, inspect, rmi, prune, concurrency (as root).

mod image_common;

use std::os::unix::fs::PermissionsExt;

use image_common::TestStore;

#[test]
fn default_image_is_deterministic_and_complete() {
    let s = TestStore::new();
    let first = s.ok(&["image", "build-default"]);
    let second = s.ok(&["image", "build-default"]);
    assert_eq!(
        first, second,
        "building the default image twice gave different digests"
    );
    let other = TestStore::new();
    assert_eq!(
        other.ok(&["image", "build-default"]),
        first,
        "the digest differs between stores"
    );

    let out = s.ok(&["images"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("busybox") && l.contains("latest")),
        "images output: {out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["images", "--format", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["name"], "busybox:latest");
    let json2: serde_json::Value = serde_json::from_str(&s.ok(&["images", "--json"])).unwrap();
    assert_eq!(json, json2);

    let inspect = s.inspect("busybox");
    assert_eq!(inspect["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert!(inspect["Config"]["Env"][0]
        .as_str()
        .unwrap()
        .starts_with("PATH="));
    let layers = s.layer_dirs("busybox");
    assert_eq!(layers.len(), 1);
    let root = &layers[0];
    assert!(root.starts_with(s.path()));
    assert_eq!(
        std::fs::read(root.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap().to_str(),
        Some("/bin/busybox")
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("root:x:0:0:")
            && passwd.contains("nobody:x:65534:")
            && passwd.contains(":1000:1000:"),
        "{passwd}"
    );
    assert!(std::fs::read_to_string(root.join("etc/group"))
        .unwrap()
        .contains(":1000:"));
    assert_eq!(
        std::fs::metadata(root.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    // The same image is found by ID prefix and by the long name.
    let id = inspect["Id"].as_str().unwrap();
    assert_eq!(s.inspect(&id[7..19])["Id"], inspect["Id"]);
    assert_eq!(
        s.inspect("docker.io/library/busybox:latest")["Id"],
        inspect["Id"]
    );
}

#[test]
fn busybox_is_built_on_first_use() {
    let s = TestStore::new();
    let inspect = s.inspect("busybox");
    assert_eq!(inspect["RepoTags"], serde_json::json!(["busybox:latest"]));
}

#[test]
fn unknown_image_says_how_to_get_it() {
    let s = TestStore::new();
    let err = s.fails(&["inspect", "nosuchimage:v1"]);
    assert!(
        err.contains("image nosuchimage:v1 not found")
            && err.contains("strata load -i")
            && err.contains("strata pull nosuchimage:v1"),
        "{err}"
    );
    let err = s.fails(&["rmi", "nosuchimage"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn rmi_then_prune_empties_the_store() {
    let s = TestStore::new();
    s.ok(&["image", "build-default"]);
    let layer = s.layer_dirs("busybox")[0].clone();
    // Prune keeps what is referenced.
    let out = s.ok(&["image", "prune", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (st["blobs"].as_u64(), st["layers"].as_u64()),
        (Some(0), Some(0)),
        "{out}"
    );
    assert!(layer.is_dir());

    let out = s.ok(&["rmi", "busybox"]);
    assert!(out.contains("Untagged: busybox"), "{out}");
    assert_eq!(s.ok(&["images", "-q"]), "");
    let out = s.ok(&["image", "prune", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (st["blobs"].as_u64(), st["layers"].as_u64()),
        (Some(3), Some(1)),
        "{out}"
    );
    assert!(!layer.exists());
    assert_eq!(
        std::fs::read_dir(s.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(s.path().join("layers/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn concurrent_builds_share_one_layer() {
    let s = TestStore::new();
    let bin = env!("CARGO_BIN_EXE_strata");
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(bin)
                .arg("--store")
                .arg(s.path())
                .args(["--quiet", "image", "build-default"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        std::fs::read_dir(s.path().join("layers/sha256"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(s.path().join("tmp")).unwrap().count(),
        0,
        "staging left behind"
    );
    assert_eq!(s.layer_dirs("busybox").len(), 1);
}

/// Unpacked layers hold images' setuid binaries: host users must not reach them.
#[test]
fn store_is_root_only() {
    let s = TestStore::new();
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    s.ok(&["image", "build-default"]);
    assert_eq!(
        std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let busybox = s.layer_dirs("busybox")[0].join("bin/busybox");
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "cat"])
        .arg(&busybox)
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "uid 1000 could read {}",
        busybox.display()
    );
}
