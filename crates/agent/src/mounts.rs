//! Mounting: option parsing, safe resolution of destinations inside the rootfs, and the
//! config.json `mounts` list applied the way that makes sense in a VM.

use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::spec::{is_clean_absolute, Mount};

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount {kind} {source_path:?} on {target}: {errno}{hint}")]
    Mount {
        kind: String,
        source_path: String,
        target: PathBuf,
        errno: Errno,
        hint: &'static str,
    },
    #[error("cannot create mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount destination {dest:?} escapes the rootfs or has too many symlinks")]
    Resolve { dest: String },
}

/// Mount flags and filesystem data split out of an OCI options list.
#[derive(Debug, PartialEq)]
pub struct Options {
    pub flags: MsFlags,
    pub data: Vec<String>,
    pub bind: bool,
    pub recursive: bool,
}

/// Splits OCI mount options into flags and data. Propagation options are dropped: every
/// mount in the guest is private to it anyway.
pub fn parse_options(opts: &[String]) -> Options {
    let mut o = Options {
        flags: MsFlags::empty(),
        data: Vec::new(),
        bind: false,
        recursive: false,
    };
    for opt in opts {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                continue;
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" | "defaults" => continue,
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    o
}

/// Resolves `dest` (absolute, as seen by the workload) to a host path under `root`, following
/// symlinks the way the workload would see them but never leaving `root`.
pub fn resolve_in_root(root: &Path, dest: &str) -> Result<PathBuf, MountError> {
    let err = || MountError::Resolve {
        dest: dest.to_string(),
    };
    let mut parts: Vec<String> = Vec::new();
    let mut pending: Vec<String> = dest.split('/').rev().map(str::to_string).collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let candidate: PathBuf = root.join(parts.iter().collect::<PathBuf>()).join(&c);
        match std::fs::read_link(&candidate) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    return Err(err());
                }
                if target.is_absolute() {
                    parts.clear();
                }
                for comp in target.components().rev() {
                    match comp {
                        Component::Normal(s) => pending.push(s.to_string_lossy().into_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Err(_) => parts.push(c),
        }
    }
    let out = root.join(parts.iter().collect::<PathBuf>());
    if !out.starts_with(root) {
        return Err(err());
    }
    Ok(out)
}

/// mount(2) with an error naming everything involved.
pub fn mount(
    source: &str,
    target: &Path,
    kind: &str,
    flags: MsFlags,
    data: &str,
) -> Result<(), MountError> {
    let data_opt = if data.is_empty() { None } else { Some(data) };
    nix::mount::mount(Some(source), target, Some(kind), flags, data_opt).map_err(|errno| {
        MountError::Mount {
            kind: kind.to_string(),
            source_path: source.to_string(),
            target: target.to_path_buf(),
            errno,
            hint: match errno {
                Errno::ENODEV => {
                    " (the guest kernel lacks this filesystem: build it in, not as a module)"
                }
                Errno::ENOENT => " (the source or mount point does not exist)",
                _ => "",
            },
        }
    })
}

fn ensure_dir(path: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(path).map_err(|source| MountError::MountPoint {
        path: path.to_path_buf(),
        source,
    })
}

fn ensure_file(path: &Path) -> Result<(), MountError> {
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        ensure_dir(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|source| MountError::MountPoint {
            path: path.to_path_buf(),
            source,
        })
}

/// Applies config.json `mounts` inside `root`. Returns warnings for mounts skipped because they
/// mean nothing in a VM (host paths that do not exist in the guest, cgroup mounts the guest
/// kernel cannot provide).
pub fn apply_mounts(root: &Path, mounts: &[Mount]) -> Result<Vec<String>, MountError> {
    let mut warnings = Vec::new();
    let mut dev_mounted = false;
    for m in mounts {
        let target = resolve_in_root(root, &m.destination)?;
        let opts = parse_options(&m.options);
        let data = opts.data.join(",");
        let kind = m
            .kind
            .as_deref()
            .unwrap_or(if opts.bind { "bind" } else { "none" });
        let source = m.source.as_deref().unwrap_or(kind);
        match kind {
            // The guest has real devices: give the workload devtmpfs rather than an empty tmpfs.
            "tmpfs" if m.destination.trim_end_matches('/') == "/dev" => {
                ensure_dir(&target)?;
                mount(
                    "devtmpfs",
                    &target,
                    "devtmpfs",
                    opts.flags - MsFlags::MS_NODEV,
                    "",
                )?;
                dev_mounted = true;
            }
            // Ptys are allocated by the agent in the guest's devpts: share that instance.
            "devpts" => {
                ensure_dir(&target)?;
                mount(
                    "/dev/pts",
                    &target,
                    "",
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    "",
                )?;
            }
            "cgroup" | "cgroup2" => {
                ensure_dir(&target)?;
                if let Err(e) = mount("cgroup2", &target, "cgroup2", opts.flags, "") {
                    warnings.push(format!("skipped cgroup mount: {e}"));
                }
            }
            "mqueue" => {
                ensure_dir(&target)?;
                if let Err(e) = mount("mqueue", &target, "mqueue", opts.flags, "") {
                    warnings.push(format!("skipped mqueue mount: {e}"));
                }
            }
            _ if opts.bind || kind == "bind" => {
                // Bind sources are guest paths; a host path (Docker's resolv.conf, hostname,
                // hosts) that does not exist in the guest is skipped with a warning.
                let src = Path::new(source);
                if !is_clean_absolute(source) || !src.exists() {
                    warnings.push(format!(
                        "skipped bind mount of {source:?} on {}: the source does not exist in the guest",
                        m.destination
                    ));
                    continue;
                }
                if src.is_dir() {
                    ensure_dir(&target)?;
                } else {
                    ensure_file(&target)?;
                }
                let mut f = MsFlags::MS_BIND;
                if opts.recursive {
                    f |= MsFlags::MS_REC;
                }
                mount(source, &target, "", f, "")?;
                if !(opts.flags & !MsFlags::MS_REC).is_empty() {
                    mount(
                        "",
                        &target,
                        "",
                        opts.flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                        "",
                    )?;
                }
            }
            _ => {
                ensure_dir(&target)?;
                mount(source, &target, kind, opts.flags, &data)?;
            }
        }
    }
    if !dev_mounted {
        // Without a /dev mount the workload would lack /dev/null and friends.
        let dev = root.join("dev");
        ensure_dir(&dev)?;
        mount("devtmpfs", &dev, "devtmpfs", MsFlags::MS_NOSUID, "")?;
        let pts = dev.join("pts");
        ensure_dir(&pts)?;
        mount("/dev/pts", &pts, "", MsFlags::MS_BIND, "")?;
    }
    Ok(warnings)
}

/// Makes the container rootfs read-only (OCI `root.readonly`) without touching the mounts on it.
pub fn remount_readonly(root: &Path) -> Result<(), MountError> {
    // A recursive bind of the root onto itself (keeping the mounts on it) gives a mount whose
    // flags can change independently of the overlay underneath.
    mount(
        &root.to_string_lossy(),
        root,
        "",
        MsFlags::MS_BIND | MsFlags::MS_REC,
        "",
    )?;
    mount(
        "",
        root,
        "",
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let o = parse_options(
            &[
                "nosuid",
                "noexec",
                "mode=755",
                "size=65536k",
                "ro",
                "rprivate",
            ]
            .map(String::from),
        );
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        let o = parse_options(&["rbind", "ro", "rw"].map(String::from));
        assert!(o.bind && o.recursive && o.flags.is_empty());
    }

    #[test]
    fn resolution_never_leaves_the_root() {
        let dir = std::env::temp_dir().join(format!("strata-agent-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", dir.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", dir.join("up")).unwrap();
        std::os::unix::fs::symlink("loop", dir.join("loop")).unwrap();
        assert_eq!(
            resolve_in_root(&dir, "/var/run/x").unwrap(),
            dir.join("run/x")
        );
        assert_eq!(
            resolve_in_root(&dir, "/up/passwd").unwrap(),
            dir.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(&dir, "/../../proc").unwrap(),
            dir.join("proc")
        );
        assert!(resolve_in_root(&dir, "/loop/x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
