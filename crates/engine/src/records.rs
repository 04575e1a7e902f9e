//! The container records under the store: `<store>/containers/<id>/` holds the bundle
//! (config.json), the overlay rootfs (rootfs/, upper/, work/), the /etc files, the log file and
//! `record.json` (name, image, command, state, exit code). Names are symlinks
//! `<store>/containers/.names/<name>` → id, created atomically so two `run --name` cannot both
//! win, and looked up without scanning the store.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Where a container is in its life, as `ps` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Set up (rootfs, bundle), workload not started.
    Created,
    Running,
    Exited,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Created => "created",
            State::Running => "running",
            State::Exited => "exited",
        })
    }
}

/// `record.json`: what strata knows about a container beyond the runtime state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// Manifest digest of the image.
    pub image_digest: String,
    /// The process args.
    pub command: Vec<String>,
    /// RFC 3339.
    pub created: String,
    pub state: State,
    #[serde(default)]
    pub started: Option<String>,
    #[serde(default)]
    pub finished: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The process holding the container's stdio and reaping it (monitor, or the foreground
    /// `strata run`).
    #[serde(default)]
    pub monitor_pid: Option<i32>,
    /// Host pid of the workload while running.
    #[serde(default)]
    pub pid: Option<i32>,
    /// "container" or "vm".
    pub isolation: String,
    /// `--rm`: removed when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// `-t`
    #[serde(default)]
    pub tty: bool,
    /// `-i`: a detached container's stdin stays open (never written, never closed) while it
    /// runs, as with `docker run -di`.
    #[serde(default)]
    pub interactive: bool,
}

/// The container area of a store.
#[derive(Debug, Clone)]
pub struct Containers {
    root: PathBuf,
}

/// Short form of an id (12 hex characters, like docker).
pub fn short(id: &str) -> &str {
    // `get`: an id read back from disk (a name link's target) is not trusted to be ASCII.
    id.get(..12).unwrap_or(id)
}

/// A new random 64-hex id.
pub fn new_id() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("read /dev/urandom for a container id")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A docker-like generated name: adjective_noun plus a few random hex digits to avoid clashes.
pub fn generated_name(id: &str) -> String {
    const ADJ: &[&str] = &[
        "brave", "calm", "eager", "fond", "keen", "lucid", "merry", "noble", "quiet", "swift",
        "tidy", "vivid", "witty", "zen", "bold", "deft",
    ];
    const NOUN: &[&str] = &[
        "basalt", "chalk", "flint", "gneiss", "granite", "marble", "quartz", "schist", "shale",
        "slate", "tuff", "jasper", "onyx", "opal", "agate", "mica",
    ];
    let b = u8::from_str_radix(&id[..2], 16).unwrap_or(0);
    format!(
        "{}_{}_{}",
        ADJ[(b >> 4) as usize],
        NOUN[(b & 15) as usize],
        &id[2..10]
    )
}

/// Validates a `--name` (docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if !ok {
        bail!("invalid container name {name:?}: use letters, digits, '_', '.', '-' (starting with a letter or digit)");
    }
    Ok(())
}

fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Containers {
    /// The container area of the store at `store`.
    pub fn new(store: &Path) -> Containers {
        Containers {
            root: store.join("containers"),
        }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn names(&self) -> PathBuf {
        self.root.join(".names")
    }

    /// Creates the container's directory and claims its name; fails if the name is taken.
    pub fn reserve(&self, id: &str, name: &str) -> anyhow::Result<PathBuf> {
        validate_name(name)?;
        let names = self.names();
        std::fs::create_dir_all(&names).with_context(|| format!("create {}", names.display()))?;
        let link = names.join(name);
        match std::os::unix::fs::symlink(id, &link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_link(&link)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !owner.is_empty() && !self.dir(&owner).join("record.json").exists() {
                    // A stale name of a container that is gone: take it over.
                    let _ = std::fs::remove_file(&link);
                    return self.reserve(id, name);
                }
                bail!(
                    "the container name {name:?} is already in use by container {}: remove it with `strata rm {name}` or choose another --name",
                    short(&owner)
                );
            }
            Err(e) => return Err(e).with_context(|| format!("claim name {}", link.display())),
        }
        let dir = self.dir(id);
        if let Err(e) = std::fs::create_dir(&dir) {
            let _ = std::fs::remove_file(&link);
            return Err(e).with_context(|| format!("create {}", dir.display()));
        }
        Ok(dir)
    }

    /// Releases a name (if it still points at `id`).
    pub fn release_name(&self, id: &str, name: &str) {
        let link = self.names().join(name);
        if std::fs::read_link(&link).is_ok_and(|t| t.as_os_str() == id) {
            let _ = std::fs::remove_file(&link);
        }
    }

    /// Writes the record (temp file + rename: readers never see half a record; no fsync, the
    /// record is re-derivable state and fsync would dominate `run --rm` time).
    pub fn save(&self, rec: &Record) -> anyhow::Result<()> {
        let dir = self.dir(&rec.id);
        let tmp = dir.join(".record.json.tmp");
        let path = dir.join("record.json");
        std::fs::write(&tmp, serde_json::to_vec_pretty(rec)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
    }

    /// Reads a record by full id.
    pub fn load(&self, id: &str) -> anyhow::Result<Record> {
        let path = self.dir(id).join("record.json");
        let b = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&b).with_context(|| format!("parse {}", path.display()))
    }

    /// Finds a container by name, full id or unique id prefix.
    pub fn find(&self, key: &str) -> anyhow::Result<Record> {
        if is_full_id(key) && self.dir(key).join("record.json").exists() {
            return self.load(key);
        }
        if validate_name(key).is_ok() {
            if let Ok(id) = std::fs::read_link(self.names().join(key)) {
                if let Ok(r) = self.load(&id.to_string_lossy()) {
                    return Ok(r);
                }
            }
        }
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<String> = self
                .ids()?
                .into_iter()
                .filter(|i| i.starts_with(key))
                .collect();
            match hits.len() {
                1 => return self.load(&hits[0]),
                0 => {}
                _ => bail!("container id prefix {key:?} is ambiguous: type more of the id"),
            }
        }
        bail!("no such container: {key} (list them with `strata ps -a`)")
    }

    /// Every container id (directories with a record).
    pub fn ids(&self) -> anyhow::Result<Vec<String>> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("list {}", self.root.display())),
        };
        Ok(rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_full_id(n))
            .collect())
    }

    /// Every record, newest first.
    pub fn all(&self) -> anyhow::Result<Vec<Record>> {
        let mut v: Vec<Record> = self
            .ids()?
            .iter()
            .filter_map(|i| self.load(i).ok())
            .collect();
        v.sort_by(|a, b| b.created.cmp(&a.created));
        Ok(v)
    }

    /// The log file of a container.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("container.log")
    }
}

/// Whether a process is alive (signal 0; EPERM counts as alive).
pub fn pid_alive(pid: i32) -> bool {
    pid > 0
        && !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::Error::ESRCH)
        )
        && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|c| c == "Z"))
        })
        .unwrap_or(false)
}

impl Record {
    /// The state with a dead monitor taken into account (a monitor killed by the OOM killer or
    /// a reboot leaves "running" behind).
    pub fn live_state(&self) -> State {
        match (self.state, self.monitor_pid) {
            (State::Running, Some(m)) if !pid_alive(m) => State::Exited,
            (s, _) => s,
        }
    }
}

/// Now as RFC 3339.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_of_odd_strings_do_not_panic() {
        assert_eq!(short(&"a".repeat(64)), "aaaaaaaaaaaa");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("ééééééééé"), "éééééé");
        assert_eq!(short("aaaaaaaaaaaé"), "aaaaaaaaaaaé");
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("web-1.a_b").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", "../x", &"a".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reserve_refuses_a_taken_name_and_find_resolves_prefixes() {
        let t = tempfile::tempdir().unwrap();
        let c = Containers::new(t.path());
        let a = "a".repeat(64);
        let b = format!("ab{}", "0".repeat(62));
        c.reserve(&a, "one").unwrap();
        let rec = |id: &str, name: &str| Record {
            id: id.into(),
            name: name.into(),
            image: "busybox".into(),
            image_digest: String::new(),
            command: vec![],
            created: now(),
            state: State::Created,
            started: None,
            finished: None,
            exit_code: None,
            monitor_pid: None,
            pid: None,
            isolation: "container".into(),
            auto_remove: false,
            tty: false,
            interactive: false,
        };
        c.save(&rec(&a, "one")).unwrap();
        let e = c.reserve(&b, "one").unwrap_err().to_string();
        assert!(e.contains("already in use"), "{e}");
        c.reserve(&b, "two").unwrap();
        c.save(&rec(&b, "two")).unwrap();
        assert_eq!(c.find("one").unwrap().id, a);
        assert_eq!(c.find("ab").unwrap().id, b);
        assert!(c.find("a").unwrap_err().to_string().contains("ambiguous"));
        assert!(c.find("nope").unwrap_err().to_string().contains("no such"));
    }
}
