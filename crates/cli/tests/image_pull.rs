//! End-to-end: `strata pull` from a registry served on this machine by Debian's docker-registry,
//! filled by skopeo with an image made from the default image (as root, no outside network).

mod image_common;
mod pty;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use image_common::{run, Registry, TestStore};
use pty::Terminal;

/// An OCI layout with the busybox image under tag `t` and a multi-platform index under `multi`.
fn layout(dir: &Path) -> String {
    let source = TestStore::new();
    source.ok(&["image", "build-default"]);
    let layer = source.layer_dirs("busybox")[0].clone();
    let lay = dir.join("layout").display().to_string();
    run("umoci", &["init", "--layout", &lay]);
    run("umoci", &["new", "--image", &format!("{lay}:t")]);
    run(
        "umoci",
        &[
            "insert",
            "--image",
            &format!("{lay}:t"),
            &format!("{}/", layer.display()),
            "/",
        ],
    );
    run(
        "umoci",
        &[
            "config",
            "--image",
            &format!("{lay}:t"),
            "--config.cmd",
            "sh",
            "--config.label",
            "pulled=yes",
        ],
    );
    // Wrap the manifest in an index listing an arm64 decoy first and linux/amd64 second.
    let index_path = dir.join("layout/index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let m = index["manifests"][0].clone();
    let mut decoy = m.clone();
    decoy["platform"] = serde_json::json!({"architecture": "arm64", "os": "linux"});
    decoy.as_object_mut().unwrap().remove("annotations");
    let mut amd = m.clone();
    amd["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    amd.as_object_mut().unwrap().remove("annotations");
    let inner = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [decoy, amd]})).unwrap();
    let inner_digest = image_common::sha256(&inner);
    std::fs::write(
        dir.join("layout/blobs/sha256")
            .join(inner_digest.trim_start_matches("sha256:")),
        &inner,
    )
    .unwrap();
    index["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": inner_digest, "size": inner.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}));
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    lay
}

#[test]
fn pulls_from_a_loopback_registry() {
    let fixtures = tempfile::tempdir().unwrap();
    let lay = layout(fixtures.path());
    let reg = Registry::start("127.0.0.1");
    reg.push(&lay, "t", "test/pull:v1", &[]);
    reg.push(&lay, "multi", "test/multi:v1", &["--all"]);

    let s = TestStore::new();
    let name = format!("{}/test/pull:v1", reg.addr);
    let out = s.ok(&["pull", &name]);
    assert!(out.starts_with(&format!("Pulled {name} (sha256:")), "{out}");
    let inspect = s.inspect(&name);
    assert_eq!(inspect["Config"]["Labels"]["pulled"], "yes");
    let layers = s.layer_dirs(&name);
    assert_eq!(
        std::fs::read(layers[0].join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );

    // A manifest list resolves to the linux/amd64 image: the same manifest as above.
    let multi = format!("{}/test/multi:v1", reg.addr);
    s.ok(&["pull", &multi]);
    assert_eq!(s.inspect(&multi)["Digest"], inspect["Digest"]);
    // Pulling again is a no-op on disk (blobs and layers already there).
    let before = s.listing();
    s.ok(&["pull", &name]);
    let after = s.listing();
    assert!(after
        .iter()
        .all(|(k, v)| k.ends_with("images.json") || before.get(k) == Some(v)));

    let err = s.fails(&["pull", &format!("{}/test/nosuch:v1", reg.addr)]);
    assert!(err.contains("pull ") && err.contains("nosuch"), "{err}");
    assert_eq!(std::fs::read_dir(s.path().join("tmp")).unwrap().count(), 0);
}

/// Plain HTTP is refused for a registry that is not on loopback unless --insecure is given.
#[test]
fn plain_http_needs_loopback_or_insecure() {
    let Some(ip) = non_loopback_ip() else {
        strata_testkit::skip_or_fail("no non-loopback IPv4 address on this host (hostname -I)");
        return;
    };
    let fixtures = tempfile::tempdir().unwrap();
    let lay = layout(fixtures.path());
    let reg = Registry::start(&ip);
    reg.push(&lay, "t", "test/remote:v1", &[]);
    let s = TestStore::new();
    s.ok(&["images"]);
    let name = format!("{}/test/remote:v1", reg.addr);
    let before = s.listing();
    s.fails(&["pull", &name]);
    assert_eq!(before, s.listing(), "a refused pull changed the store");
    s.ok(&["pull", "--insecure", &name]);
    s.inspect(&name);
}

fn non_loopback_ip() -> Option<String> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
}

/// Runs `cmd` with `input` on stdin (passwords go there, never into argv); returns the output.
fn with_stdin(mut c: Command, input: &[u8]) -> std::process::Output {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn strata(s: &TestStore) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    c.arg("--store")
        .arg(s.path())
        .arg("--quiet")
        .env_remove("STRATA_STORE")
        .env_remove("REGISTRY_AUTH_FILE");
    c
}

/// A registry with htpasswd (bcrypt) auth: a pull without credentials is refused with how to
/// log in, wrong ones are refused without the password showing, --creds works, `login` checks
/// the password with the registry before storing it 0600, the pull then uses it, `logout`
/// forgets it, and a Podman auth file (REGISTRY_AUTH_FILE) is used too. A refused pull leaves
/// the store as it was.
#[test]
fn pulls_with_credentials() {
    const PASSWORD: &str = "s3cret-Pw";
    let fixtures = tempfile::tempdir().unwrap();
    let lay = layout(fixtures.path());
    let htpasswd = fixtures.path().join("htpasswd");
    let mut h = Command::new("htpasswd");
    h.args(["-iBc", htpasswd.to_str().unwrap(), "alice"]);
    let o = with_stdin(h, PASSWORD.as_bytes());
    assert!(
        o.status.success(),
        "htpasswd (apache2-utils, scripts/deps.sh): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let reg = Registry::start_with_auth("127.0.0.1", Some(&htpasswd));
    for repo in ["a", "b", "c"] {
        let creds = format!("alice:{PASSWORD}");
        reg.push(
            &lay,
            "t",
            &format!("test/{repo}:v1"),
            &["--dest-creds", &creds],
        );
    }
    let image = |repo: &str| format!("{}/test/{repo}:v1", reg.addr);
    let s = TestStore::new();
    s.ok(&["images"]);
    let before = s.listing();

    let err = s.fails(&["pull", &image("a")]);
    assert!(
        err.contains("requires credentials")
            && err.contains(&format!("strata login {}", reg.addr))
            && err.contains("--creds"),
        "{err}"
    );
    let err = s.fails(&["pull", "--creds", "alice:wrong-pw", &image("a")]);
    assert!(
        err.contains("refused the credentials of user \"alice\""),
        "{err}"
    );
    assert!(!err.contains("wrong-pw"), "the password was printed: {err}");
    assert_eq!(before, s.listing(), "a refused pull changed the store");
    s.ok(&["pull", "--creds", &format!("alice:{PASSWORD}"), &image("a")]);
    s.inspect(&image("a"));

    // login checks the password with the registry first: a wrong one stores nothing.
    let auth_file = s.path().join("auth.json");
    let login = |password: &[u8]| {
        let mut c = strata(&s);
        c.args([
            "login",
            "--username",
            "alice",
            "--password-stdin",
            &reg.addr,
        ]);
        with_stdin(c, password)
    };
    let o = login(b"wrong-pw\n");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refused") && !err.contains("wrong-pw"),
        "{err}"
    );
    assert!(!auth_file.exists());
    let o = login(format!("{PASSWORD}\n").as_bytes());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Login Succeeded\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&auth_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!std::fs::read_to_string(&auth_file)
        .unwrap()
        .contains(PASSWORD));
    s.ok(&["pull", &image("b")]);
    s.ok(&["logout", &reg.addr]);
    assert!(s
        .fails(&["pull", &image("c")])
        .contains("requires credentials"));

    // Without flags, login asks on its terminal and does not echo the password.
    let screen = login_on_a_terminal(&s, &reg.addr, "alice", PASSWORD);
    assert!(
        screen.contains("alice"),
        "the user name is echoed: {screen}"
    );
    assert!(
        !screen.contains(PASSWORD),
        "the password was echoed: {screen}"
    );
    assert!(screen.contains("Login Succeeded"), "{screen}");
    s.ok(&["pull", &image("c")]);
    s.ok(&["rmi", &image("c")]);
    s.ok(&["logout", &reg.addr]);

    // Podman's auth file, written by podman login.
    let podman_auth = fixtures.path().join("podman-auth.json");
    let mut p = Command::new("podman");
    p.args([
        "login",
        "--tls-verify=false",
        "--authfile",
        podman_auth.to_str().unwrap(),
        "--username",
        "alice",
        "--password-stdin",
        &reg.addr,
    ]);
    let o = with_stdin(p, PASSWORD.as_bytes());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut c = strata(&s);
    c.args(["pull", &image("c")])
        .env("REGISTRY_AUTH_FILE", &podman_auth);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_dir(s.path().join("tmp")).unwrap().count(), 0);
}

/// Runs `strata login REGISTRY` on a new pty (its controlling terminal), answers the prompts,
/// and returns everything the terminal showed.
fn login_on_a_terminal(s: &TestStore, registry: &str, user: &str, password: &str) -> String {
    let mut c = strata(s);
    c.args(["login", registry]);
    let (mut child, term) = Terminal::spawn(c, 24, 80);
    term.wait_for("Username: ");
    term.type_in(format!("{user}\n").as_bytes());
    term.wait_for("Password: ");
    term.type_in(format!("{password}\n").as_bytes());
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(status.success(), "{}", term.text());
    term.text()
}
