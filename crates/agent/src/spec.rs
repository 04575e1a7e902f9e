//! The subset of the OCI runtime spec (config.json) that makes sense inside a VM, parsed and
//! validated. The document comes from the host, but it is user-authored, so every field is
//! checked here, before anything is mounted or executed.

use serde::Deserialize;

/// The parts of config.json the agent applies.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Only `readonly` applies: the guest builds the rootfs from its disks, not from `path`.
    #[serde(default)]
    pub root: Option<Root>,
    /// Only the `dev.strata.net.*` keys are read (crate::net, by the agent); others may hold
    /// anything.
    #[serde(default)]
    pub annotations: serde_json::Value,
}

/// The OCI `root` object.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Root {
    #[serde(default)]
    pub readonly: bool,
}

/// An OCI `process` object (also the payload of an exec request).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "root_dir")]
    pub cwd: String,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
}

fn root_dir() -> String {
    "/".to_string()
}

/// Initial pty size.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct ConsoleSize {
    pub height: u16,
    pub width: u16,
}

/// Numeric identity of the process (OCI `user`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    #[serde(default)]
    pub umask: Option<u32>,
}

/// One `process.rlimits` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

/// One `mounts` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// What is wrong with a config.json or process object.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("config is not a valid OCI document: {0}")]
    Json(String),
    #[error("config has no process: the VM needs a process to run")]
    NoProcess,
    #[error("process.args is empty: give the command to run")]
    NoArgs,
    #[error("{field} contains a NUL byte")]
    Nul { field: &'static str },
    #[error("process.env entry {0:?} is not KEY=VALUE")]
    Env(String),
    #[error("{field} {value:?} must be an absolute path without '..'")]
    Path { field: &'static str, value: String },
    #[error("process.rlimits: unknown limit {0:?}")]
    RlimitKind(String),
    #[error("process.rlimits: {0} has soft limit above hard limit")]
    RlimitOrder(String),
    #[error("hostname {0:?} is not a valid host name (1-64 bytes, no '/' or NUL)")]
    Hostname(String),
    #[error("process.user.umask {0:#o} is out of range")]
    Umask(u32),
}

/// Maps an OCI rlimit name to the Linux resource number.
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// Whether `p` is absolute and has no `..` component.
pub fn is_clean_absolute(p: &str) -> bool {
    p.starts_with('/') && !p.split('/').any(|c| c == "..") && !p.contains('\0')
}

impl Spec {
    /// Parses and validates a config.json value.
    pub fn from_value(v: serde_json::Value) -> Result<Spec, SpecError> {
        let spec: Spec = serde_json::from_value(v).map_err(|e| SpecError::Json(e.to_string()))?;
        spec.process
            .as_ref()
            .ok_or(SpecError::NoProcess)?
            .validate()?;
        if let Some(h) = &spec.hostname {
            if h.is_empty() || h.len() > 64 || h.contains(['/', '\0']) {
                return Err(SpecError::Hostname(h.clone()));
            }
        }
        for m in &spec.mounts {
            if !is_clean_absolute(&m.destination) {
                return Err(SpecError::Path {
                    field: "mounts[].destination",
                    value: m.destination.clone(),
                });
            }
            let nul = m.source.as_deref().unwrap_or("").contains('\0')
                || m.kind.as_deref().unwrap_or("").contains('\0')
                || m.options.iter().any(|o| o.contains('\0'));
            if nul {
                return Err(SpecError::Nul { field: "mounts[]" });
            }
        }
        Ok(spec)
    }
}

impl Process {
    /// Parses and validates an OCI process object (an exec request).
    pub fn from_value(v: serde_json::Value) -> Result<Process, SpecError> {
        let p: Process = serde_json::from_value(v).map_err(|e| SpecError::Json(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err(SpecError::NoArgs);
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err(SpecError::Nul {
                field: "process.args",
            });
        }
        for e in &self.env {
            if e.contains('\0') {
                return Err(SpecError::Nul {
                    field: "process.env",
                });
            }
            if !e.contains('=') || e.starts_with('=') {
                return Err(SpecError::Env(e.clone()));
            }
        }
        if !is_clean_absolute(&self.cwd) {
            return Err(SpecError::Path {
                field: "process.cwd",
                value: self.cwd.clone(),
            });
        }
        for r in &self.rlimits {
            if rlimit_resource(&r.kind).is_none() {
                return Err(SpecError::RlimitKind(r.kind.clone()));
            }
            if r.soft > r.hard {
                return Err(SpecError::RlimitOrder(r.kind.clone()));
            }
        }
        if let Some(m) = self.user.umask {
            if m > 0o777 {
                return Err(SpecError::Umask(m));
            }
        }
        Ok(())
    }

    /// The value of `key` in the process environment.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find_map(|e| {
            let (k, v) = e.split_once('=')?;
            (k == key).then_some(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn docker_and_containerd_fixtures_parse() {
        for f in ["docker-config.json", "containerd-config.json"] {
            let path = std::path::Path::new("/work/shared/fixtures").join(f);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let spec = Spec::from_value(v).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(!spec.process.unwrap().args.is_empty());
            assert!(spec.mounts.iter().any(|m| m.destination == "/proc"));
        }
    }

    #[test]
    fn minimal_process_gets_defaults() {
        let p = Process::from_value(json!({"args": ["true"]})).unwrap();
        assert_eq!(p.cwd, "/");
        assert_eq!((p.user.uid, p.user.gid), (0, 0));
        assert!(!p.terminal);
    }

    #[test]
    fn hostile_processes_are_refused() {
        let cases = [
            json!({}),
            json!({"args": []}),
            json!({"args": [""]}),
            json!({"args": ["a\u{0}b"]}),
            json!({"args": ["sh"], "env": ["NOVALUE"]}),
            json!({"args": ["sh"], "env": ["=x"]}),
            json!({"args": ["sh"], "env": ["A=\u{0}"]}),
            json!({"args": ["sh"], "cwd": "relative"}),
            json!({"args": ["sh"], "cwd": "/a/../../etc"}),
            json!({"args": ["sh"], "rlimits": [{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]}),
            json!({"args": ["sh"], "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 2}]}),
            json!({"args": ["sh"], "user": {"uid": -1}}),
            json!({"args": ["sh"], "user": {"uid": 0, "umask": 4096}}),
            json!({"args": "sh"}),
            json!([1, 2]),
        ];
        for c in cases {
            assert!(Process::from_value(c.clone()).is_err(), "accepted {c}");
        }
    }

    #[test]
    fn hostile_specs_are_refused() {
        let ok = json!({"args": ["sh"]});
        let cases = [
            json!({}),
            json!({"process": ok, "hostname": ""}),
            json!({"process": ok, "hostname": "a/b"}),
            json!({"process": ok, "hostname": "x".repeat(65)}),
            json!({"process": ok, "mounts": [{"destination": "proc"}]}),
            json!({"process": ok, "mounts": [{"destination": "/a/../.."}]}),
            json!({"process": ok, "mounts": [{"destination": "/a", "source": "x\u{0}"}]}),
            json!({"process": ok, "mounts": "nope"}),
        ];
        for c in cases {
            assert!(Spec::from_value(c.clone()).is_err(), "accepted {c}");
        }
    }

    #[test]
    fn env_lookup_takes_the_last_value() {
        let p = Process::from_value(json!({"args": ["sh"], "env": ["PATH=/a", "X=1", "PATH=/b"]}))
            .unwrap();
        assert_eq!(p.env_var("PATH"), Some("/b"));
        assert_eq!(p.env_var("Y"), None);
    }
}
