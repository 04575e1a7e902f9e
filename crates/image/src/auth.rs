//! Registry credentials. `strata login` keeps them in `<store>/auth.json` (mode 0600, Docker's
//! format: `{"auths": {"REGISTRY": {"auth": base64("user:password")}}}`); a pull also finds
//! the ones Podman (`auth.json`) and Docker (`config.json`) wrote. Passwords never appear in
//! errors, logs or `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::{Error, IoContext, Result};

/// The file `strata login` writes, under the store.
pub const FILE: &str = "auth.json";
/// Auth files larger than this are not credential files.
const MAX_FILE: u64 = 1 << 20;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// `USER:PASSWORD` (the password may contain ':'); None without a ':' or a user.
    pub fn parse(s: &str) -> Option<Credentials> {
        let (u, p) = s.split_once(':')?;
        (!u.is_empty()).then(|| Credentials {
            username: u.to_string(),
            password: p.to_string(),
        })
    }

    fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password))
    }

    fn decode(auth: &str) -> Option<Credentials> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        Credentials::parse(std::str::from_utf8(&raw).ok()?)
    }
}

/// Credentials found for a registry, and the file they came from.
#[derive(Debug, Clone)]
pub struct Found {
    pub credentials: Credentials,
    pub source: PathBuf,
}

/// The form registries are compared in: no scheme, no path, lower case, Docker Hub's aliases
/// as `docker.io` (Docker writes `https://index.docker.io/v1/`).
pub fn registry_key(registry: &str) -> String {
    let s = registry.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or("").to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// The auth.json of the store at `store_root`.
pub fn store_file(store_root: &Path) -> PathBuf {
    store_root.join(FILE)
}

/// Podman's and Docker's credential files, in the order they are consulted.
fn foreign_files() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut v = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        v.push(f);
    }
    if let Some(d) = env("XDG_RUNTIME_DIR") {
        v.push(d.join("containers/auth.json"));
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    v.push(PathBuf::from(format!("/run/containers/{uid}/auth.json")));
    let home = env("HOME");
    if let Some(h) = &home {
        v.push(h.join(".config/containers/auth.json"));
    }
    match env("DOCKER_CONFIG") {
        Some(d) => v.push(d.join("config.json")),
        None => {
            if let Some(h) = &home {
                v.push(h.join(".docker/config.json"));
            }
        }
    }
    v
}

/// An auth file: `auths` by registry; other fields (credential helpers...) kept as they are.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

fn read_file(path: &Path) -> Result<Option<AuthFile>> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx("open credentials", path),
    };
    let mut b = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut b)
        .ctx("read credentials", path)?;
    if b.len() as u64 > MAX_FILE {
        return Err(Error::Credentials {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_FILE} bytes"),
        });
    }
    serde_json::from_slice(&b)
        .map(Some)
        .map_err(|e| Error::Credentials {
            path: path.to_path_buf(),
            reason: format!("not a credentials file ({e}); fix or remove it"),
        })
}

fn find_in(file: &AuthFile, registry: &str) -> Option<Credentials> {
    let key = registry_key(registry);
    file.auths
        .iter()
        .filter(|(k, _)| registry_key(k) == key)
        .find_map(|(_, e)| e.auth.as_deref().and_then(Credentials::decode))
}

/// Credentials for `registry`: strata's own file first, then Podman's and Docker's. A broken
/// file of our own is an error; a broken foreign one is skipped with a warning (it is theirs).
pub fn lookup(store_root: &Path, registry: &str) -> Result<Option<Found>> {
    let own = store_file(store_root);
    if let Some(f) = read_file(&own)? {
        if let Some(c) = find_in(&f, registry) {
            return Ok(Some(Found {
                credentials: c,
                source: own,
            }));
        }
    }
    for path in foreign_files() {
        match read_file(&path) {
            Ok(Some(f)) => {
                if let Some(c) = find_in(&f, registry) {
                    return Ok(Some(Found {
                        credentials: c,
                        source: path,
                    }));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "credentials file skipped"),
        }
    }
    Ok(None)
}

/// Stores credentials for `registry` in the store's auth.json (replacing older ones).
pub fn save(store_root: &Path, registry: &str, c: &Credentials) -> Result<()> {
    let path = store_file(store_root);
    let _lock = lock(store_root)?;
    let mut f = read_file(&path)?.unwrap_or_default();
    let key = registry_key(registry);
    f.auths.retain(|k, _| registry_key(k) != key);
    f.auths.insert(
        key,
        Entry {
            auth: Some(c.encode()),
            other: BTreeMap::new(),
        },
    );
    write_file(&path, &f)
}

/// Removes the credentials of `registry` from the store's auth.json; false if it had none.
pub fn remove(store_root: &Path, registry: &str) -> Result<bool> {
    let path = store_file(store_root);
    let _lock = lock(store_root)?;
    let Some(mut f) = read_file(&path)? else {
        return Ok(false);
    };
    let key = registry_key(registry);
    let before = f.auths.len();
    f.auths.retain(|k, _| registry_key(k) != key);
    if f.auths.len() == before {
        return Ok(false);
    }
    write_file(&path, &f)?;
    Ok(true)
}

/// Serializes concurrent logins and logouts (each rewrites the whole file).
fn lock(store_root: &Path) -> Result<std::fs::File> {
    let p = store_root.join("locks/auth.lock");
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).ctx("create", d)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .ctx("open", &p)?;
    // SAFETY: flock on an fd we own; released when the file is dropped.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } < 0 {
        return Err(std::io::Error::last_os_error()).ctx("lock", &p);
    }
    Ok(f)
}

/// Written 0600 to a temp file, fsynced and renamed: never half a file, never readable by others.
fn write_file(path: &Path, f: &AuthFile) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let bytes = serde_json::to_vec_pretty(f).map_err(|e| Error::Credentials {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .ctx("create", &tmp)?;
    out.write_all(&bytes).ctx("write", &tmp)?;
    out.sync_all().ctx("fsync", &tmp)?;
    std::fs::rename(&tmp, path).ctx("replace", path)?;
    if let Some(d) = path.parent() {
        crate::sys::fsync_dir(d).ctx("fsync", d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn registry_keys_match_docker_and_podman_spellings() {
        assert_eq!(registry_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(
            registry_key("https://Example.com:443/v2/"),
            "example.com:443"
        );
        assert_eq!(registry_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_key("registry-1.docker.io"), "docker.io");
        assert_eq!(registry_key("quay.io/org"), "quay.io");
    }

    #[test]
    fn credentials_parse_and_never_show_the_password() {
        let c = Credentials::parse("u:p:w").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p:w"));
        assert!(Credentials::parse("nocolon").is_none());
        assert!(Credentials::parse(":x").is_none());
        assert!(!format!("{c:?}").contains("p:w"));
        assert_eq!(Credentials::decode(&c.encode()), Some(c));
        // Hostile auth values decode to nothing, never panic.
        for bad in ["", "!!!", "AAAA", "////", "dXNlcg==", "\u{1F600}", "YTo\n"] {
            let _ = Credentials::decode(bad);
        }
        assert_eq!(Credentials::decode("dXNlcg=="), None); // "user" without ':'
    }

    #[test]
    fn save_lookup_remove_round_trip_in_a_private_file() {
        let t = tempfile::tempdir().unwrap();
        let c = Credentials::parse("alice:s3cret").unwrap();
        save(t.path(), "127.0.0.1:5000", &c).unwrap();
        save(t.path(), "https://127.0.0.1:5000/", &c).unwrap();
        let meta = std::fs::metadata(store_file(t.path())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(store_file(t.path())).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(text.matches("127.0.0.1:5000").count(), 1, "{text}");
        let found = lookup(t.path(), "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(found.credentials, c);
        assert_eq!(found.source, store_file(t.path()));
        assert!(remove(t.path(), "127.0.0.1:5000").unwrap());
        assert!(!remove(t.path(), "127.0.0.1:5000").unwrap());
        // A broken file of our own is reported, not overwritten.
        std::fs::write(store_file(t.path()), b"{not json").unwrap();
        let e = save(t.path(), "r", &c).unwrap_err().to_string();
        assert!(e.contains("fix or remove"), "{e}");
        assert_eq!(std::fs::read(store_file(t.path())).unwrap(), b"{not json");
    }

    #[test]
    fn other_fields_of_the_file_are_kept() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            store_file(t.path()),
            br#"{"auths":{"a.example":{"auth":"eDp5","email":"e"}},"credHelpers":{"b":"x"}}"#,
        )
        .unwrap();
        save(t.path(), "c.example", &Credentials::parse("u:p").unwrap()).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store_file(t.path())).unwrap()).unwrap();
        assert_eq!(v["credHelpers"]["b"], "x");
        assert_eq!(v["auths"]["a.example"]["email"], "e");
        assert!(v["auths"]["c.example"]["auth"].is_string());
    }
}
