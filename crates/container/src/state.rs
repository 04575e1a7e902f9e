//! The on-disk record of a container under `--root`: `<root>/<id>/state.json` (written
//! atomically), the per-container lock, and the live status derived from the init process.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file `start` opens to release a created container's init.
pub const EXEC_FIFO: &str = "exec.fifo";
const STATE_FILE: &str = "state.json";
/// The bundle's config.json as `create` read it.
pub const CONFIG_FILE: &str = "config.json";
const LOCK_FILE: &str = "lock";

/// Container status as the OCI spec (plus runc's `paused`) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// Host pid of the container's init.
    pub pid: i32,
    /// Start time of `pid` (clock ticks since boot, /proc/pid/stat field 22): a recycled pid
    /// has another start time, so it is never mistaken for the container.
    pub pid_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The container's cgroups, as `cgroups::Cgroup` serializes itself.
    pub cgroup: serde_json::Value,
    /// Whether the container has its own user namespace (exec must join it first).
    #[serde(default)]
    pub user_ns: bool,
    /// Uid that created the container.
    #[serde(default)]
    pub owner: u32,
    /// RFC 3339 time at which the workload's execve took effect, as the runtime saw it (the
    /// init's close-on-exec channel closed). Recorded by `run`; `None` for `create`+`start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Why the init failed between `start` releasing it and the workload's execve (the init
    /// wrote it to exec.fifo; `start` records it here for `state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// State-file errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt state file: {msg}; remove the directory if the container is gone")]
    Corrupt { path: PathBuf, msg: String },
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { step, path, source }
}

/// Writes `dir/state.json` atomically (temp file, fsync, rename).
pub fn save(dir: &Path, rec: &Record) -> Result<(), StateError> {
    save_with(dir, rec, true)
}

/// Writes `dir/state.json` atomically; `durable` adds the fsync (skipped by a foreground `run`,
/// whose state lives only as long as the command: an fsync there costs milliseconds on disk).
pub fn save_with(dir: &Path, rec: &Record, durable: bool) -> Result<(), StateError> {
    let tmp = dir.join(".state.json.tmp");
    let path = dir.join(STATE_FILE);
    let data = serde_json::to_vec(rec).map_err(|e| StateError::Corrupt {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&data).map_err(io("write", &tmp))?;
    if durable {
        f.sync_all().map_err(io("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    Ok(())
}

/// Reads `dir/state.json`.
pub fn load(dir: &Path) -> Result<Record, StateError> {
    let path = dir.join(STATE_FILE);
    let b = std::fs::read(&path).map_err(io("read", &path))?;
    serde_json::from_slice(&b).map_err(|e| StateError::Corrupt {
        path,
        msg: e.to_string(),
    })
}

/// An exclusive flock on `<dir>/lock`, held while a command changes the container.
#[derive(Debug)]
pub struct Lock {
    file: File,
}

impl Lock {
    /// The fd of the lock file (children must close it, see `InitConfig::lock_fd`).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// Takes the container's lock (blocking while another command holds it).
pub fn lock(dir: &Path) -> Result<Lock, StateError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open lock", &path))?;
    loop {
        // SAFETY: flock on an fd we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if r == 0 {
            return Ok(Lock { file });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(io("flock", &path)(e));
        }
    }
}

/// The start time (field 22 of /proc/pid/stat) of a live, non-zombie process.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// Parses /proc/pid/stat: `None` for a zombie or dead process, else its start time.
pub fn parse_stat(s: &str) -> Option<u64> {
    // comm may contain spaces and parentheses: the state follows the LAST ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After ')' come fields 3.. ; field 22 is the 20th of them (state is field 3).
    fields.nth(18)?.parse().ok()
}

/// Whether the record's init process is alive (same pid AND same start time).
pub fn init_alive(rec: &Record) -> bool {
    rec.pid > 0 && start_time(rec.pid) == Some(rec.pid_start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let s = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99887 20";
        assert_eq!(parse_stat(s), Some(99887));
        let z = "1234 (x) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99887 20";
        assert_eq!(parse_stat(z), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
        let me = start_time(std::process::id() as i32).unwrap();
        assert!(me > 0);
    }

    #[test]
    fn atomic_save_load() {
        let d = tempfile::tempdir().unwrap();
        let rec = Record {
            id: "x".into(),
            pid: 1,
            pid_start_time: 2,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "now".into(),
            annotations: HashMap::new(),
            cgroup: serde_json::Value::Null,
            user_ns: false,
            owner: 0,
            started: Some("2026-01-01T00:00:00.000000001Z".into()),
            error: None,
        };
        save(d.path(), &rec).unwrap();
        assert_eq!(load(d.path()).unwrap().started, rec.started);
        assert_eq!(load(d.path()).unwrap().pid_start_time, 2);
        std::fs::write(d.path().join(STATE_FILE), b"{").unwrap();
        assert!(matches!(load(d.path()), Err(StateError::Corrupt { .. })));
        let _l = lock(d.path()).unwrap();
    }
}
