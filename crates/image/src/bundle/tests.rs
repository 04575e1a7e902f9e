//! generate_config against real images in a temporary store (builds need /bin/busybox).

use super::*;
use crate::digest::Digest;
use crate::store::Store;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    (d, s)
}

/// An image: the default busybox layer, plus an upper layer from `upper` (a tar), with `config`
/// as the image's `config` object.
fn custom_image(s: &Store, upper: Option<Vec<u8>>, config: serde_json::Value) -> Image {
    let base = s.resolve("busybox").unwrap();
    let base_blob = Digest::parse(base.manifest().layers()[0].digest().as_ref()).unwrap();
    let mut diff_ids: Vec<String> = base.config().rootfs().diff_ids().clone();
    let mut tx = s.begin().unwrap();
    let mut layers = vec![(base_blob, base.manifest().layers()[0].size())];
    if let Some(t) = upper {
        let d = tx.put_bytes(&t).unwrap();
        diff_ids.push(d.to_string());
        layers.push((d, t.len() as u64));
    }
    let cfg = json!({"architecture": "amd64", "os": "linux", "config": config, "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let cd = tx.put_bytes(&serde_json::to_vec(&cfg).unwrap()).unwrap();
    let md = crate::import::synthesize_manifest(&mut tx, &cd, &layers).unwrap();
    crate::import::import_manifest(&mut tx, &md, &mut StagedForTest, &crate::NoProgress).unwrap();
    tx.tag("custom:1", &md).unwrap();
    tx.commit().unwrap();
    s.resolve("custom:1").unwrap()
}

struct StagedForTest;
impl crate::import::BlobSource for StagedForTest {
    fn fetch(
        &mut self,
        tx: &mut crate::Transaction<'_>,
        d: &Digest,
        _: Option<u64>,
        _: &dyn crate::Progress,
    ) -> Result<()> {
        assert!(tx.has_blob(d).unwrap());
        Ok(())
    }
}

fn opts() -> RunOptions {
    RunOptions {
        rootfs: "/run/x/rootfs".into(),
        ..Default::default()
    }
}

#[test]
fn busybox_defaults_are_dockers() {
    let (_d, s) = store();
    let img = s.resolve("busybox").unwrap();
    let spec = generate_config(
        &img,
        &RunOptions {
            hostname: Some("h1".into()),
            ..opts()
        },
    )
    .unwrap();
    let v = serde_json::to_value(&spec).unwrap();
    let p = &v["process"];
    assert_eq!(p["args"], json!(["sh"]));
    assert_eq!(p["cwd"], "/");
    assert_eq!(
        (p["user"]["uid"].as_u64(), p["user"]["gid"].as_u64()),
        (Some(0), Some(0))
    );
    let env: Vec<&str> = p["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"HOME=/root")
            && env.contains(&"HOSTNAME=h1")
            && env.iter().any(|e| e.starts_with("PATH=")),
        "{env:?}"
    );
    assert_eq!(
        p["capabilities"]["bounding"].as_array().unwrap().len(),
        DEFAULT_CAPS.len()
    );
    assert_eq!(v["hostname"], "h1");
    assert_eq!(v["root"]["path"], "/run/x/rootfs");
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
    assert!(v["linux"]["maskedPaths"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "/proc/kcore"));
    assert!(v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["destination"] == "/dev/shm"));
    assert!(v["annotations"]["org.opencontainers.image.digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
}

#[test]
fn users_resolve_through_the_image() {
    let (_d, s) = store();
    let img = s.resolve("busybox").unwrap();
    let u = |spec: &str| {
        generate_config(
            &img,
            &RunOptions {
                user: Some(spec.into()),
                ..opts()
            },
        )
    };
    let v = serde_json::to_value(u("user").unwrap()).unwrap();
    assert_eq!(
        (
            v["process"]["user"]["uid"].as_u64(),
            v["process"]["user"]["gid"].as_u64()
        ),
        (Some(1000), Some(1000))
    );
    assert!(v["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "HOME=/home/user"));
    let v = serde_json::to_value(u("nobody:user").unwrap()).unwrap();
    assert_eq!(
        (
            v["process"]["user"]["uid"].as_u64(),
            v["process"]["user"]["gid"].as_u64()
        ),
        (Some(65534), Some(1000))
    );
    let e = u("ghost").unwrap_err().to_string();
    assert!(
        e.contains("user \"ghost\" not found in the image's /etc/passwd"),
        "{e}"
    );
    assert!(u("root:nogroup")
        .unwrap_err()
        .to_string()
        .contains("/etc/group"));
}

#[test]
fn image_config_and_overrides() {
    let (_d, s) = store();
    let img = custom_image(
        &s,
        None,
        json!({"Entrypoint": ["/bin/echo"], "Cmd": ["hi"], "User": "user", "WorkingDir": "/tmp", "Env": ["A=1", "PATH=/bin"], "Labels": {"org.example": "yes"}}),
    );
    let v = serde_json::to_value(generate_config(&img, &opts()).unwrap()).unwrap();
    assert_eq!(v["process"]["args"], json!(["/bin/echo", "hi"]));
    assert_eq!(v["process"]["cwd"], "/tmp");
    assert_eq!(v["process"]["user"]["uid"], 1000);
    assert!(v["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "PATH=/bin"));
    assert_eq!(v["annotations"]["org.example"], "yes");
    // CMD override keeps the entrypoint; --entrypoint drops the image Cmd; -e overrides Env.
    let o = RunOptions {
        cmd: vec!["bye".into()],
        env: vec!["A=2".into()],
        workdir: Some("/".into()),
        ..opts()
    };
    let v = serde_json::to_value(generate_config(&img, &o).unwrap()).unwrap();
    assert_eq!(v["process"]["args"], json!(["/bin/echo", "bye"]));
    assert_eq!(v["process"]["cwd"], "/");
    let env = v["process"]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "A=2") && !env.iter().any(|e| e == "A=1"));
    let o = RunOptions {
        entrypoint: Some(vec!["/bin/true".into()]),
        ..opts()
    };
    assert_eq!(
        serde_json::to_value(generate_config(&img, &o).unwrap()).unwrap()["process"]["args"],
        json!(["/bin/true"])
    );
    let o = RunOptions {
        entrypoint: Some(vec![]),
        ..opts()
    };
    assert!(generate_config(&img, &o)
        .unwrap_err()
        .to_string()
        .contains("no command"));
    let o = RunOptions {
        workdir: Some("rel".into()),
        ..opts()
    };
    assert!(generate_config(&img, &o).is_err());
}

#[test]
fn whiteout_in_upper_layer_hides_passwd() {
    let (_d, s) = store();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_mtime(0);
    b.append_data(&mut h, "etc/.wh.passwd", std::io::empty())
        .unwrap();
    let img = custom_image(&s, Some(b.into_inner().unwrap()), json!({"Cmd": ["sh"]}));
    assert_eq!(img.layers().len(), 2);
    assert_eq!(read_image_file(&img, "etc/passwd").unwrap(), None);
    assert!(read_image_file(&img, "etc/group").unwrap().is_some());
    let e = generate_config(
        &img,
        &RunOptions {
            user: Some("user".into()),
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::UnknownUser { .. }), "{e}");
    // Numeric users still work without passwd.
    generate_config(
        &img,
        &RunOptions {
            user: Some("1000:1000".into()),
            ..opts()
        },
    )
    .unwrap();
}
