//! End-to-end: images made by umoci and skopeo (offline) from the default image, loaded in every
//! format strata accepts (as root).

mod image_common;

use std::path::Path;

use image_common::{run, TestStore};

/// An OCI layout made by umoci from the default image's layer, plus archives of it made by skopeo.
struct Fixtures {
    dir: tempfile::TempDir,
}

impl Fixtures {
    fn new(source: &TestStore) -> Fixtures {
        source.ok(&["image", "build-default"]);
        let layer = source.layer_dirs("busybox")[0].clone();
        let dir = tempfile::Builder::new()
            .prefix("strata-image-fixtures-")
            .tempdir()
            .unwrap();
        let lay = dir.path().join("layout");
        let lay_s = lay.to_str().unwrap();
        run("umoci", &["init", "--layout", lay_s]);
        run("umoci", &["new", "--image", &format!("{lay_s}:t")]);
        run(
            "umoci",
            &[
                "insert",
                "--image",
                &format!("{lay_s}:t"),
                &format!("{}/", layer.display()),
                "/",
            ],
        );
        run(
            "umoci",
            &[
                "config",
                "--image",
                &format!("{lay_s}:t"),
                "--config.cmd",
                "sh",
                "--config.env",
                "PATH=/bin:/usr/bin",
                "--config.label",
                "org.example=yes",
            ],
        );
        Fixtures { dir }
    }

    fn layout(&self) -> String {
        self.dir.path().join("layout").display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn check_busybox_image(s: &TestStore, name: &str) {
    let inspect = s.inspect(name);
    assert_eq!(
        inspect["Config"]["Cmd"],
        serde_json::json!(["sh"]),
        "{inspect}"
    );
    let layers = s.layer_dirs(name);
    assert_eq!(layers.len(), 1);
    assert_eq!(
        std::fs::read(layers[0].join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        std::fs::read_link(layers[0].join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(std::fs::read_to_string(layers[0].join("etc/passwd"))
        .unwrap()
        .contains(":1000:1000:"));
}

#[test]
fn loads_oci_archive_docker_archive_and_layouts() {
    let source = TestStore::new();
    let f = Fixtures::new(&source);
    let oci_archive = f.path("oci.tar");
    let docker_archive = f.path("docker.tar");
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            &format!("oci:{}:t", f.layout()),
            &format!("oci-archive:{oci_archive}:test/oci:v1"),
        ],
    );
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            &format!("oci:{}:t", f.layout()),
            &format!("docker-archive:{docker_archive}:test/docker:v1"),
        ],
    );

    let s = TestStore::new();
    assert_eq!(
        s.ok(&["load", "-i", &oci_archive]).trim(),
        "Loaded image: test/oci:v1"
    );
    check_busybox_image(&s, "test/oci:v1");
    assert_eq!(
        s.inspect("test/oci:v1")["Config"]["Labels"]["org.example"],
        "yes"
    );
    assert_eq!(
        s.ok(&["load", "-i", &docker_archive]).trim(),
        "Loaded image: test/docker:v1"
    );
    check_busybox_image(&s, "test/docker:v1");
    // The OCI layout directory itself; its ref name is a bare tag, so name it.
    assert_eq!(
        s.ok(&["load", "-i", &f.layout(), "--tag", "test/layout"])
            .trim(),
        "Loaded image: test/layout:latest"
    );
    check_busybox_image(&s, "test/layout");
    let images: serde_json::Value = serde_json::from_str(&s.ok(&["images", "--json"])).unwrap();
    let names: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["test/docker:v1", "test/layout:latest", "test/oci:v1"]
    );
    // oci-archive and layout share the gzip layer; the docker archive has the same diffID
    // (uncompressed blob): one unpacked layer for all three.
    assert_eq!(
        std::fs::read_dir(s.path().join("layers/sha256"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(std::fs::read_dir(s.path().join("tmp")).unwrap().count(), 0);

    // Loading again changes nothing on disk but the index timestamps.
    let before = s.listing();
    s.ok(&["load", "-i", &oci_archive]);
    let after = s.listing();
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v) && !k.ends_with("images.json"))
        .collect();
    assert!(changed.is_empty(), "reloading changed {changed:?}");
}

#[test]
fn loads_zstd_layers() {
    let source = TestStore::new();
    let f = Fixtures::new(&source);
    let zlay = f.path("zstd-layout");
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            "--dest-compress-format",
            "zstd",
            "--dest-compress",
            &format!("oci:{}:t", f.layout()),
            &format!("oci:{zlay}:test/zstd:v1"),
        ],
    );
    let s = TestStore::new();
    s.ok(&["load", "-i", &zlay]);
    let inspect = s.inspect("test/zstd:v1");
    assert_eq!(
        inspect["Manifest"]["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "{inspect}"
    );
    check_busybox_image(&s, "test/zstd:v1");
}

#[test]
fn imports_plain_rootfs_tarballs() {
    let source = TestStore::new();
    source.ok(&["image", "build-default"]);
    let layer = source.layer_dirs("busybox")[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let tgz = dir.path().join("rootfs.tar.gz");
    run(
        "tar",
        &[
            "-C",
            layer.to_str().unwrap(),
            "-czf",
            tgz.to_str().unwrap(),
            ".",
        ],
    );
    let s = TestStore::new();
    let digest = s.ok(&["import", tgz.to_str().unwrap(), "myroot:1"]);
    assert!(digest.starts_with("sha256:"), "{digest}");
    let layers = s.layer_dirs("myroot:1");
    assert_eq!(
        std::fs::read(layers[0].join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert!(s.inspect("myroot:1")["Config"]["Env"][0]
        .as_str()
        .unwrap()
        .starts_with("PATH="));
}

/// `umoci insert` of single host files and symlinks as extra layers: umoci 0.4 ends such a
/// layer right after the file's data (no padding, no end-of-archive blocks), which once failed
/// with "unexpected EOF during skip". Loaded from the layout and from both archive formats, the
/// files are in the right layers with the right content.
#[test]
fn loads_umoci_layers_of_single_host_files() {
    let source = TestStore::new();
    let f = Fixtures::new(&source);
    let host = f.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("note"), b"hi\n").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", host.join("link")).unwrap();
    for (src, dst) in [("link", "/hostlink"), ("note", "/note")] {
        run(
            "umoci",
            &[
                "insert",
                "--image",
                &format!("{}:t", f.layout()),
                host.join(src).to_str().unwrap(),
                dst,
            ],
        );
    }
    let oci_archive = f.path("oci.tar");
    let docker_archive = f.path("docker.tar");
    for dest in [
        format!("oci-archive:{oci_archive}:test/oci:v1"),
        format!("docker-archive:{docker_archive}:test/docker:v1"),
    ] {
        run(
            "skopeo",
            &["copy", "-q", &format!("oci:{}:t", f.layout()), &dest],
        );
    }
    let s = TestStore::new();
    for (src, name) in [
        (f.layout(), "test/layout"),
        (oci_archive, "test/oci:v1"),
        (docker_archive, "test/docker:v1"),
    ] {
        let mut args = vec!["load", "-i", &src];
        if name == "test/layout" {
            args.extend(["--tag", name]);
        }
        s.ok(&args);
        let layers = s.layer_dirs(name);
        assert_eq!(layers.len(), 3, "{name}");
        assert_eq!(
            std::fs::read_link(layers[1].join("hostlink")).unwrap(),
            Path::new("/etc/hostname"),
            "{name}"
        );
        assert_eq!(
            std::fs::read(layers[2].join("note")).unwrap(),
            b"hi\n",
            "{name}"
        );
    }
}
