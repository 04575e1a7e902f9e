//! config.json: parsing and validation of the OCI runtime spec.
//!
//! The bundle's config.json is user-controlled input: everything the rest of the runtime
//! relies on (absolute paths, one namespace per type, a usable process) is checked here, once,
//! so later steps can assume a sane spec and errors name the offending field.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Largest config.json accepted (dockerd's are ~20 KiB; a hostile one must not exhaust memory).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// What is wrong with a bundle's config.json.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("read {path}: {source}; is the bundle directory right (--bundle)?")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: config.json larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("parse config.json: {0}")]
    Parse(String),
    #[error("invalid config.json: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

/// Reads and validates `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    parse(&read(bundle)?)
}

/// The bytes of `<bundle>/config.json` (size-checked, not parsed).
pub fn read(bundle: &Path) -> Result<Vec<u8>, SpecError> {
    let path = bundle.join("config.json");
    let meta = std::fs::metadata(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(SpecError::TooLarge { path });
    }
    std::fs::read(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })
}

/// Parses and validates config.json bytes (the fuzzing entry point).
pub fn parse(bytes: &[u8]) -> Result<Spec, SpecError> {
    let spec: Spec = serde_json::from_slice(bytes).map_err(|e| SpecError::Parse(e.to_string()))?;
    validate(&spec)?;
    Ok(spec)
}

/// Checks the invariants the runtime relies on.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root: missing (the bundle's rootfs directory, e.g. \"rootfs\")"))?;
    if root.path().as_os_str().is_empty() {
        return Err(invalid("root.path: empty"));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process: missing (what to run in the container)"))?;
    let args = process.args().as_deref().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(invalid(
            "process.args: empty (give at least the program to run)",
        ));
    }
    for a in args {
        no_nul("process.args", a)?;
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(format!(
            "process.cwd: {:?} is not an absolute path",
            process.cwd()
        )));
    }
    no_nul("process.cwd", &process.cwd().to_string_lossy())?;
    for e in process.env().as_deref().unwrap_or_default() {
        no_nul("process.env", e)?;
        if !e.contains('=') {
            return Err(invalid(format!("process.env: {e:?} is not KEY=VALUE")));
        }
    }
    if let Some(rlimits) = process.rlimits() {
        let mut seen = HashSet::new();
        for r in rlimits {
            if !seen.insert(format!("{:?}", r.typ())) {
                return Err(invalid(format!(
                    "process.rlimits: {:?} given twice",
                    r.typ()
                )));
            }
            if r.soft() > r.hard() {
                return Err(invalid(format!(
                    "process.rlimits: {:?} soft limit {} above hard limit {}",
                    r.typ(),
                    r.soft(),
                    r.hard()
                )));
            }
        }
    }
    if let Some(h) = spec.hostname() {
        no_nul("hostname", h)?;
        if h.len() > 64 {
            return Err(invalid("hostname: longer than 64 bytes"));
        }
    }
    if let Some(h) = spec.domainname() {
        no_nul("domainname", h)?;
        if h.len() > 64 {
            return Err(invalid("domainname: longer than 64 bytes"));
        }
    }
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let d = m.destination();
        if !d.is_absolute() {
            return Err(invalid(format!(
                "mounts: destination {d:?} is not an absolute path"
            )));
        }
        no_nul("mounts.destination", &d.to_string_lossy())?;
        if let Some(opts) = m.options() {
            for o in opts {
                no_nul("mounts.options", o)?;
            }
        }
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let mut seen = HashSet::new();
    for ns in namespaces {
        if !seen.insert(ns.typ()) {
            return Err(invalid(format!(
                "linux.namespaces: {} namespace listed twice",
                ns_name(ns.typ())
            )));
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(invalid(format!(
                    "linux.namespaces: {} path {p:?} is not absolute",
                    ns_name(ns.typ())
                )));
            }
        }
    }
    let has_userns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    let maps = linux.uid_mappings().as_deref().unwrap_or_default().len()
        + linux.gid_mappings().as_deref().unwrap_or_default().len();
    let new_userns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    if maps > 0 && !has_userns {
        return Err(invalid(
            "linux.uidMappings/gidMappings given without a user namespace in linux.namespaces",
        ));
    }
    if new_userns
        && (linux
            .uid_mappings()
            .as_deref()
            .unwrap_or_default()
            .is_empty()
            || linux
                .gid_mappings()
                .as_deref()
                .unwrap_or_default()
                .is_empty())
    {
        return Err(invalid(
            "linux.namespaces: a new user namespace needs linux.uidMappings and linux.gidMappings",
        ));
    }
    for m in linux
        .uid_mappings()
        .iter()
        .flatten()
        .chain(linux.gid_mappings().iter().flatten())
    {
        if m.size() == 0 {
            return Err(invalid("linux.uidMappings/gidMappings: size 0"));
        }
    }
    if let Some(sysctl) = linux.sysctl() {
        for (k, v) in sysctl {
            if k.is_empty()
                || k.contains("..")
                || k.starts_with(['/', '.'])
                || k.contains('\0')
                || v.contains('\0')
            {
                return Err(invalid(format!("linux.sysctl: bad key {k:?}")));
            }
        }
    }
    for p in linux
        .masked_paths()
        .iter()
        .flatten()
        .chain(linux.readonly_paths().iter().flatten())
    {
        if !p.starts_with('/') {
            return Err(invalid(format!(
                "linux.maskedPaths/readonlyPaths: {p:?} is not an absolute path"
            )));
        }
        no_nul("linux.maskedPaths/readonlyPaths", p)?;
    }
    for d in linux.devices().as_deref().unwrap_or_default() {
        if !d.path().is_absolute() {
            return Err(invalid(format!(
                "linux.devices: path {:?} is not absolute",
                d.path()
            )));
        }
        if d.path().components().any(|c| c == Component::ParentDir) {
            return Err(invalid(format!(
                "linux.devices: path {:?} contains \"..\"",
                d.path()
            )));
        }
    }
    if let Some(p) = linux.rootfs_propagation() {
        if !p.is_empty() && crate::mounts::propagation_flag(p).is_none() {
            return Err(invalid(format!(
                "linux.rootfsPropagation: unknown mode {p:?} (shared, slave, private, unbindable, rshared, rslave, rprivate, runbindable)"
            )));
        }
    }
    if let Some(cg) = linux.cgroups_path() {
        if cg.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(format!(
                "linux.cgroupsPath: {cg:?} contains \"..\""
            )));
        }
    }
    Ok(())
}

fn no_nul(field: &str, s: &str) -> Result<(), SpecError> {
    if s.contains('\0') {
        return Err(invalid(format!("{field}: contains a NUL byte")));
    }
    Ok(())
}

/// The name config.json uses for a namespace type.
pub fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Time => "time",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "env": ["PATH=/bin"]},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    fn check(v: &serde_json::Value) -> Result<Spec, SpecError> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn accepts_minimal_and_engine_configs() {
        check(&base()).unwrap();
        for f in ["docker-config.json", "containerd-config.json"] {
            let p = Path::new("/work/shared/fixtures").join(f);
            if let Ok(b) = std::fs::read(&p) {
                parse(&b).unwrap_or_else(|e| panic!("{f}: {e}"));
            }
        }
    }

    /// A named edit that makes a config invalid.
    type Case = (&'static str, Box<dyn Fn(&mut serde_json::Value)>);

    #[test]
    fn rejects_hostile_configs() {
        let cases: Vec<Case> = vec![
            (
                "missing root",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("root");
                }),
            ),
            (
                "missing process",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("process");
                }),
            ),
            (
                "empty args",
                Box::new(|v| v["process"]["args"] = serde_json::json!([])),
            ),
            (
                "relative cwd",
                Box::new(|v| v["process"]["cwd"] = "tmp".into()),
            ),
            (
                "bad ns type",
                Box::new(|v| v["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}])),
            ),
            (
                "dup ns",
                Box::new(|v| {
                    v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "pid"}])
                }),
            ),
            (
                "relative ns path",
                Box::new(|v| {
                    v["linux"]["namespaces"] = serde_json::json!([{"type": "net", "path": "x/y"}])
                }),
            ),
            (
                "userns without maps",
                Box::new(|v| v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}])),
            ),
            (
                "maps without userns",
                Box::new(|v| {
                    v["linux"]["uidMappings"] =
                        serde_json::json!([{"containerID":0,"hostID":1000,"size":1}])
                }),
            ),
            (
                "relative mount dest",
                Box::new(|v| {
                    v["mounts"] = serde_json::json!([{"destination": "proc", "type": "proc", "source": "proc"}])
                }),
            ),
            (
                "relative masked",
                Box::new(|v| v["linux"]["maskedPaths"] = serde_json::json!(["proc/kcore"])),
            ),
            (
                "relative device",
                Box::new(|v| {
                    v["linux"]["devices"] =
                        serde_json::json!([{"path": "dev/x", "type": "c", "major": 1, "minor": 3}])
                }),
            ),
            (
                "dotdot device",
                Box::new(
                    |v| v["linux"]["devices"] = serde_json::json!([{"path": "/dev/../etc/x", "type": "c", "major": 1, "minor": 3}]),
                ),
            ),
            (
                "sysctl escape",
                Box::new(|v| v["linux"]["sysctl"] = serde_json::json!({"../../etc/passwd": "x"})),
            ),
            (
                "bad propagation",
                Box::new(|v| v["linux"]["rootfsPropagation"] = "sideways".into()),
            ),
            (
                "env without =",
                Box::new(|v| v["process"]["env"] = serde_json::json!(["PATH"])),
            ),
            (
                "nul in arg",
                Box::new(|v| v["process"]["args"] = serde_json::json!(["a\u{0}b"])),
            ),
            (
                "rlimit soft>hard",
                Box::new(|v| {
                    v["process"]["rlimits"] =
                        serde_json::json!([{"type":"RLIMIT_NOFILE","soft":10,"hard":5}])
                }),
            ),
            (
                "long hostname",
                Box::new(|v| v["hostname"] = "h".repeat(65).into()),
            ),
            (
                "cgroups dotdot",
                Box::new(|v| v["linux"]["cgroupsPath"] = "/a/../../b".into()),
            ),
            (
                "wrong type",
                Box::new(|v| v["process"]["args"] = "sh".into()),
            ),
        ];
        for (name, mutate) in cases {
            let mut v = base();
            mutate(&mut v);
            assert!(check(&v).is_err(), "{name}: accepted");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"{".to_vec(),
            b"null".to_vec(),
            b"[]".to_vec(),
            vec![0xff; 100],
            b"{\"root\":{\"path\":\"\"}}".to_vec(),
            "{\"process\":{\"args\":[\"x\"],\"cwd\":\"/\",\"user\":{\"uid\":-1}}}".into(),
            format!("{}{}", "[".repeat(10000), "]".repeat(10000)).into_bytes(),
        ];
        for i in inputs {
            let _ = parse(&i);
        }
        // Deterministic pseudo-random mutations of a valid config.
        let good = base().to_string().into_bytes();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut b = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            let _ = parse(&b);
        }
    }
}
