//! Helpers shared by the image end-to-end tests: a temporary store, running `strata`, a
//! byte-level listing of a store, and hand-made OCI archives.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// A store in a fresh temporary directory, removed on drop (even when the test fails).
pub struct TestStore {
    pub dir: tempfile::TempDir,
}

impl TestStore {
    pub fn new() -> TestStore {
        TestStore {
            dir: tempfile::Builder::new()
                .prefix("strata-image-test-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `strata --store <this store> --quiet ARGS...`.
    pub fn strata(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--store")
            .arg(self.path())
            .arg("--quiet")
            .args(args)
            .env_remove("STRATA_STORE")
            .output()
            .expect("run strata")
    }

    /// Runs strata and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.strata(args);
        assert!(
            o.status.success(),
            "strata {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8 stdout")
    }

    /// Runs strata and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.strata(args);
        assert!(
            !o.status.success(),
            "strata {args:?} succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// Every file of the store with type, mode, owner, size, content hash or link target
    /// (directory mtimes excluded: staging creates and removes temp dirs).
    pub fn listing(&self) -> BTreeMap<PathBuf, String> {
        listing(self.path())
    }

    /// `strata inspect` parsed.
    pub fn inspect(&self, image: &str) -> serde_json::Value {
        let out = self.ok(&["inspect", image]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
        v[0].clone()
    }

    /// The unpacked layer directories of an image, bottom first.
    pub fn layer_dirs(&self, image: &str) -> Vec<PathBuf> {
        self.inspect(image)["LayerDirs"]
            .as_array()
            .expect("LayerDirs")
            .iter()
            .map(|p| PathBuf::from(p.as_str().unwrap()))
            .collect()
    }
}

pub fn listing(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).expect("lstat");
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let ft = m.file_type();
        let desc = if ft.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
            format!("dir {:o} {}:{}", m.mode(), m.uid(), m.gid())
        } else if ft.is_symlink() {
            format!("link -> {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            let h = hex::encode(Sha256::digest(std::fs::read(&p).expect("read")));
            format!(
                "file {:o} {}:{} {} {} {}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime(),
                h
            )
        } else {
            format!("special {:o} {}", m.mode(), m.rdev())
        };
        out.insert(rel, desc);
    }
    out
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Builds an oci-archive (tar of an OCI layout) holding one image with the given layer blobs
/// (each: the blob bytes as stored, and the diffID to claim). `tamper` may rewrite the blob
/// map before it is written (to plant bad digests).
pub fn oci_archive(
    path: &Path,
    name: &str,
    layers: &[(Vec<u8>, String)],
    tamper: impl FnOnce(&mut BTreeMap<String, Vec<u8>>),
) {
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>()},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cd = sha256(&config);
    let mut ls = Vec::new();
    for (blob, _) in layers {
        let d = sha256(blob);
        let mt = if blob.starts_with(&[0x1f, 0x8b]) {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        ls.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
        blobs.insert(d, blob.clone());
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": ls,
    }))
    .unwrap();
    let md = sha256(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
                        "annotations": {"org.opencontainers.image.ref.name": name}}],
    }))
    .unwrap();
    blobs.insert(cd, config);
    blobs.insert(md, manifest);
    tamper(&mut blobs);
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (d, data) in &blobs {
        add(
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            data,
        );
    }
    b.finish().unwrap();
}

/// A raw tar writer that allows names `tar::Builder` refuses (`..`, absolute paths).
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    pub fn new() -> Self {
        RawTar(Vec::new())
    }
    pub fn entry(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        {
            let raw = h.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0
            .extend(std::iter::repeat_n(0, (512 - data.len() % 512) % 512));
        self
    }
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, "", data)
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Symlink, target, b"")
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Link, target, b"")
    }
    pub fn finish(&mut self) -> Vec<u8> {
        let mut v = self.0.clone();
        v.extend(std::iter::repeat_n(0, 1024));
        v
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut e, data).unwrap();
    e.finish().unwrap()
}

/// Runs a helper tool (skopeo, umoci) and asserts it succeeded.
pub fn run(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e} (scripts/deps.sh installs it)"));
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A docker-registry process with its own config, port and storage; killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(ip: &str) -> Registry {
        Registry::start_with_auth(ip, None)
    }

    /// With `htpasswd`: basic auth against that file (bcrypt entries).
    pub fn start_with_auth(ip: &str, htpasswd: Option<&Path>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("strata-registry-")
            .tempdir()
            .unwrap();
        let port = TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("{ip}:{port}");
        let config = dir.path().join("config.yml");
        let mut yml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some(h) = htpasswd {
            yml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                h.display()
            ));
        }
        std::fs::write(&config, yml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry (scripts/deps.sh installs it)");
        let r = Registry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !r.answers() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {}",
                r.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).as_bytes())
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
    }

    /// `skopeo copy` of the layout's `tag` to `repo` (`name:tag`) on this registry, over plain
    /// HTTP, with `extra` skopeo flags.
    pub fn push(&self, layout: &str, tag: &str, repo: &str, extra: &[&str]) {
        self.push_from(&format!("oci:{layout}:{tag}"), repo, extra)
    }

    /// `skopeo copy` of any skopeo source (`oci-archive:FILE`) to `repo` on this registry.
    pub fn push_from(&self, src: &str, repo: &str, extra: &[&str]) {
        let dest = format!("docker://{}/{repo}", self.addr);
        let mut args = vec!["copy", "-q", "--dest-tls-verify=false"];
        args.extend_from_slice(extra);
        args.extend([src, dest.as_str()]);
        run("skopeo", &args);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
