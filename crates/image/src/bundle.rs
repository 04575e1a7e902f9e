//! OCI runtime config.json from an image config and run options, with Docker's defaults.
//!
//! Independent of the isolation backend: the container runtime and the VM agent receive the
//! same Spec.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::json;

use crate::error::{Error, Result};
use crate::image::Image;
use crate::passwd;
use crate::sys;

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths Docker hides from containers.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The container's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// A fresh, empty network namespace (loopback only).
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

/// Host files bind-mounted over the container's /etc/hostname, /etc/hosts, /etc/resolv.conf.
#[derive(Debug, Clone)]
pub struct EtcFiles {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

/// What `strata run` (or the VM layer) asks for on top of the image config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `root.path` of the bundle (e.g. [`crate::rootfs::ContainerRootfs::path`]).
    pub rootfs: PathBuf,
    /// `--entrypoint` (an empty vector clears the image's entrypoint).
    pub entrypoint: Option<Vec<String>>,
    /// The command after the image name; empty keeps the image's Cmd.
    pub cmd: Vec<String>,
    /// `-e K=V` / `--env-file` entries, applied over the image's Env (`K` alone unsets nothing
    /// and is ignored, as the caller resolves it from its own environment).
    pub env: Vec<String>,
    /// `-w`
    pub workdir: Option<String>,
    /// `-u user[:group]`
    pub user: Option<String>,
    /// `--hostname` (also sets HOSTNAME in the environment).
    pub hostname: Option<String>,
    /// `-t`
    pub tty: bool,
    /// `--read-only`
    pub read_only: bool,
    pub network: Network,
    /// /etc files to bind-mount; None leaves the image's own files.
    pub etc_files: Option<EtcFiles>,
    /// Extra mounts (volumes, tmpfs) as OCI mount objects.
    pub mounts: Vec<oci_spec::runtime::Mount>,
    /// Extra annotations (over the image's labels).
    pub annotations: BTreeMap<String, String>,
    /// `linux.cgroupsPath`
    pub cgroups_path: Option<String>,
    /// `linux.resources` (memory, cpu, pids limits) built by the caller.
    pub resources: Option<oci_spec::runtime::LinuxResources>,
}

/// Builds the runtime spec for running `image` with `opts`.
pub fn generate_config(image: &Image, opts: &RunOptions) -> Result<Spec> {
    let empty = oci_spec::image::Config::default();
    let ic = image.config().config().as_ref().unwrap_or(&empty);

    // Docker: --entrypoint replaces the entrypoint and drops the image's Cmd.
    let entrypoint = match &opts.entrypoint {
        Some(e) => e.clone(),
        None => ic.entrypoint().clone().unwrap_or_default(),
    };
    let cmd = if !opts.cmd.is_empty() {
        opts.cmd.clone()
    } else if opts.entrypoint.is_some() {
        Vec::new()
    } else {
        ic.cmd().clone().unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(Error::Bundle(
            "no command to run: the image has no Entrypoint or Cmd, give one after the image name"
                .into(),
        ));
    }

    let cwd = opts
        .workdir
        .clone()
        .or_else(|| ic.working_dir().clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(Error::Bundle(format!(
            "working directory {cwd:?} is not absolute"
        )));
    }

    let user_spec = opts
        .user
        .clone()
        .or_else(|| ic.user().clone().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "0".into());
    let user = resolve_user(image, &user_spec)?;

    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: &str| {
        let Some((k, _)) = kv.split_once('=') else {
            return;
        };
        env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k));
        env.push(kv.to_string());
    };
    set(DEFAULT_PATH);
    for e in ic.env().iter().flatten() {
        set(e);
    }
    if let Some(h) = &opts.hostname {
        set(&format!("HOSTNAME={h}"));
    }
    if opts.tty {
        set("TERM=xterm");
    }
    for e in &opts.env {
        set(e);
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            user.home
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "/".into())
        ));
    }

    let mut gids = vec![user.gid];
    gids.extend(
        user.additional_gids
            .iter()
            .copied()
            .filter(|g| *g != user.gid),
    );
    let caps = DEFAULT_CAPS;

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]}),
    ];
    if let Some(f) = &opts.etc_files {
        for (dest, src) in [
            ("/etc/resolv.conf", &f.resolv_conf),
            ("/etc/hostname", &f.hostname),
            ("/etc/hosts", &f.hosts),
        ] {
            mounts.push(json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate"]}));
        }
    }
    for m in &opts.mounts {
        mounts.push(serde_json::to_value(m).map_err(|e| Error::Bundle(format!("mount: {e}")))?);
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if opts.network == Network::None {
        namespaces.push(json!({"type": "network"}));
    }

    let mut annotations: BTreeMap<String, String> = ic
        .labels()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    annotations.extend(opts.annotations.clone());
    if let Some(n) = image.name() {
        annotations.insert("org.opencontainers.image.ref.name".into(), n.to_string());
    }
    annotations.insert(
        "org.opencontainers.image.digest".into(),
        image.digest().to_string(),
    );

    let devices = json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
        {"allow": true, "type": "c", "major": 136, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
        {"allow": false, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
    ]);
    let mut resources = match &opts.resources {
        Some(r) => serde_json::to_value(r).map_err(|e| Error::Bundle(format!("resources: {e}")))?,
        None => json!({}),
    };
    resources["devices"] = devices;

    let mut linux = json!({
        "namespaces": namespaces,
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
        "resources": resources,
    });
    if opts.network == Network::None {
        // Docker's defaults; with the host network these sysctls would change the host.
        linux["sysctl"] = json!({"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"});
    }
    if let Some(c) = &opts.cgroups_path {
        linux["cgroupsPath"] = json!(c);
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": opts.tty,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": gids},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false,
            "oomScoreAdj": 0,
        },
        "root": {"path": opts.rootfs, "readonly": opts.read_only},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    });
    if let Some(h) = &opts.hostname {
        spec["hostname"] = json!(h);
    }
    serde_json::from_value(spec)
        .map_err(|e| Error::Bundle(format!("the generated spec does not parse: {e}")))
}

/// Writes `spec` as `<dir>/config.json` atomically.
pub fn write_config(dir: &Path, spec: &Spec) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(spec)
        .map_err(|e| Error::Bundle(format!("serialize config.json: {e}")))?;
    crate::store::write_atomic(&dir.join("config.json"), &bytes)
}

/// Resolves a `--user` spec through the image's /etc/passwd and /etc/group.
pub fn resolve_user(image: &Image, spec: &str) -> Result<passwd::User> {
    let pw = read_image_file(image, "etc/passwd")?
        .map(|b| passwd::parse_passwd(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let gr = read_image_file(image, "etc/group")?
        .map(|b| passwd::parse_group(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    passwd::resolve(spec, &pw, &gr).map_err(|e| match e {
        passwd::UserError::UnknownUser(u) => Error::UnknownUser {
            user: u,
            file: "/etc/passwd",
        },
        passwd::UserError::UnknownGroup(g) => Error::UnknownUser {
            user: format!("group {g}"),
            file: "/etc/group",
        },
    })
}

/// Reads a file of the image's merged tree (top layer first, honouring whiteouts and opaque
/// directories), at most 1 MiB. Symlinks are not followed (the content is the image's, read by
/// the host): a symlinked /etc/passwd reads as absent.
pub fn read_image_file(image: &Image, rel: &str) -> Result<Option<Vec<u8>>> {
    let comps: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.is_empty() || comps.contains(&"..") {
        return Err(Error::Bundle(format!("bad image path {rel:?}")));
    }
    'layers: for layer in image.layers().iter().rev() {
        let Ok(mut dir) = sys::open_dir(layer) else {
            continue;
        };
        let (name, parents) = comps.split_last().expect("non-empty");
        for c in parents {
            match sys::openat(
                dir.as_fd(),
                c.as_bytes(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            ) {
                Ok(d) => {
                    let opaque = has_opaque_xattr(&d);
                    dir = d;
                    if opaque {
                        // Lower layers are hidden below this directory: only this layer counts.
                        return read_leaf(&dir, name);
                    }
                }
                Err(_) => {
                    if is_whiteout(&dir, c) {
                        return Ok(None);
                    }
                    continue 'layers;
                }
            }
        }
        match read_leaf(&dir, name)? {
            Some(b) => return Ok(Some(b)),
            None if is_whiteout(&dir, name)
                || sys::fstatat(dir.as_fd(), name.as_bytes()).is_ok() =>
            {
                return Ok(None)
            }
            None => continue,
        }
    }
    Ok(None)
}

fn read_leaf(dir: &std::os::fd::OwnedFd, name: &str) -> Result<Option<Vec<u8>>> {
    match sys::openat(
        dir.as_fd(),
        name.as_bytes(),
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    ) {
        Ok(fd) => {
            let st = sys::fstatat(dir.as_fd(), name.as_bytes()).map_err(|e| Error::Io {
                step: "stat image file",
                path: name.into(),
                error: e,
            })?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Ok(None);
            }
            let mut b = Vec::new();
            std::fs::File::from(fd)
                .take(1 << 20)
                .read_to_end(&mut b)
                .map_err(|e| Error::Io {
                    step: "read image file",
                    path: name.into(),
                    error: e,
                })?;
            Ok(Some(b))
        }
        Err(_) => Ok(None),
    }
}

fn is_whiteout(dir: &std::os::fd::OwnedFd, name: &str) -> bool {
    sys::fstatat(dir.as_fd(), name.as_bytes())
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0)
}

fn has_opaque_xattr(dir: &std::os::fd::OwnedFd) -> bool {
    let mut buf = [0u8; 4];
    // SAFETY: live fd, valid C string, buffer of the given length.
    let n = unsafe {
        libc::fgetxattr(
            std::os::fd::AsRawFd::as_raw_fd(dir),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

#[cfg(test)]
mod tests;
