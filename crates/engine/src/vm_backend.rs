//! The VM isolation backend: `run --vm` turns the image into a cached root disk
//! (ext4, built once per image digest) and `<container dir>/vm.json`; `start` hands the same
//! config.json the container path generated to a per-VM keeper (vm_keeper.rs) that boots the
//! guest and relays the workload. Volumes are block devices (docs/security.md).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use oci_spec::runtime::Process;
use strata_vmm::DiskFormat;

use crate::backend::{Backend, StartError, Stdio};
use crate::options;
use crate::vm_keeper::{self, Request, VmSpec, VolumeDisk};

/// Default guest memory when `--memory` is not given.
pub const DEFAULT_MEMORY_MIB: u32 = 128;

/// VMs whose keepers keep their state under `<root>/vm/<id>`.
pub struct VmBackend {
    root: PathBuf,
}

impl VmBackend {
    pub fn new(runtime_root: &Path) -> VmBackend {
        VmBackend {
            root: runtime_root.join("vm"),
        }
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
}

/// A user-given path, absolute (the keeper runs elsewhere, later).
fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))
}

/// What `prepare` needs from the user's flags.
pub struct VmOptions<'a> {
    pub platform: &'a str,
    pub memory: Option<&'a str>,
    pub cpus: Option<f64>,
    pub tty: bool,
    /// `--kernel`, `--initrd` (qemu).
    pub kernel: Option<&'a Path>,
    pub initrd: Option<&'a Path>,
    /// `--network bridge|NAME`: the guest gets a NIC joined to the container's namespace.
    pub network: Option<&'a str>,
}

/// Makes the VM half of a container directory: the image's root disk (cached under
/// `<store>/vm/disks` by image digest), volume disks and `vm.json`. Fails early, before anything
/// boots, when no platform is usable or a flag cannot be honoured.
pub fn prepare(
    store: &Path,
    image: &strata_image::Image,
    dir: &Path,
    mounts: &[oci_spec::runtime::Mount],
    o: &VmOptions,
) -> anyhow::Result<()> {
    let platform = vm_keeper::select_platform(o.platform).map_err(anyhow::Error::msg)?;
    let memory_mib = match o.memory {
        None => DEFAULT_MEMORY_MIB,
        Some(m) => {
            let bytes = options::parse_size(m).context("--memory")?;
            let mib = (bytes >> 20).max(1);
            // Measured: a 32 MiB UML guest sometimes dies in early boot (devtmpfs allocation).
            if mib < 64 {
                bail!("--memory {m}: a VM needs at least 64m (the guest kernel and agent live in it too)");
            }
            u32::try_from(mib).context("--memory is too large")?
        }
    };
    let vcpus = match o.cpus {
        None => 1,
        Some(c) => c.ceil().max(1.0) as u32,
    };
    if vcpus > 1 && platform.name() == "uml" {
        bail!("--cpus {}: the uml platform runs uniprocessor guests; use --cpus 1 or less, or --platform qemu", o.cpus.unwrap_or(1.0));
    }
    if (o.kernel.is_some() || o.initrd.is_some()) && platform.name() != "qemu" {
        bail!(
            "--kernel/--initrd: only the qemu platform boots a kernel you bring (the {} platform \
             needs its own kind of kernel); add --platform qemu",
            platform.name()
        );
    }
    if o.initrd.is_some() && o.kernel.is_none() {
        bail!("--initrd needs --kernel: the initrd belongs to the kernel you bring");
    }
    for (what, p) in [("--kernel", o.kernel), ("--initrd", o.initrd)] {
        if let Some(p) = p {
            if !p.is_file() {
                bail!("{what} {}: no such file", p.display());
            }
        }
    }
    platform
        .precheck(
            vcpus,
            memory_mib,
            o.kernel,
            o.initrd.is_some(),
            o.network.is_some(),
        )
        .map_err(|e| anyhow::anyhow!("--platform {}: {e}", platform.name()))?;
    let cache = store.join("vm");
    let disk = strata_vmm::build_disk(
        image.layers(),
        DiskFormat::Ext4,
        &cache.join("disks"),
        &image.digest().to_string(),
    )
    .context("build the VM root disk")?;
    let mut volumes = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        if m.typ().as_deref() != Some("bind") {
            continue;
        }
        let Some(src) = m.source() else { continue };
        let ro = m
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "ro"));
        let dest = m.destination().to_string_lossy().into_owned();
        let meta = std::fs::metadata(src).with_context(|| format!("volume {}", src.display()))?;
        if meta.is_dir() {
            if !ro {
                bail!(
                    "-v {}:{dest}: a VM reaches host data through block devices, not a directory share; share the directory read-only (:ro, copied into a disk at start) or pass a filesystem image file for a writable volume (mkfs.ext4 -q FILE 64M)",
                    src.display()
                );
            }
            let img = dir.join(format!("volume-{i}.ext4"));
            snapshot_dir(src, &img)?;
            volumes.push(VolumeDisk {
                path: img,
                destination: dest,
                read_only: true,
                snapshot: true,
            });
        } else if meta.is_file() {
            volumes.push(VolumeDisk {
                path: src.to_path_buf(),
                destination: dest,
                read_only: ro,
                snapshot: false,
            });
        } else {
            bail!(
                "-v {}: a VM volume is a directory (:ro) or a filesystem image file",
                src.display()
            );
        }
    }
    let spec = VmSpec {
        // Resolved now: the keeper does not probe every platform again.
        platform: platform.name().to_string(),
        kernel: o.kernel.map(absolute).transpose()?,
        initrd: o.initrd.map(absolute).transpose()?,
        disk,
        volumes,
        memory_mib,
        vcpus,
        cache_dir: cache.join("cache"),
        tty: o.tty,
        // `strata run --vm`: strata's own /strata-vm/<id>.
        cgroups_path: None,
    };
    let p = dir.join("vm.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&spec)?)
        .with_context(|| format!("write {}", p.display()))
}

/// Copies a host directory into a fresh ext4 image (mkfs.ext4 -d), sized for its content.
fn snapshot_dir(src: &Path, img: &Path) -> anyhow::Result<()> {
    let du = std::process::Command::new("du")
        .args(["-sk", "--apparent-size"])
        .arg(src)
        .output()
        .context("run du")?;
    let kib: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let size_kib = (kib * 2 + 8192).max(8192);
    let out = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(src)
        .arg(img)
        .arg(format!("{size_kib}k"))
        .output()
        .context("run mkfs.ext4 (e2fsprogs)")?;
    if !out.status.success() {
        bail!(
            "copy volume {} into a disk: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // The jailed VM reads it as an unprivileged uid.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(img, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn start_error(e: vm_keeper::LaunchError) -> StartError {
    StartError {
        code: e.code,
        message: e.message,
    }
}

impl Backend for VmBackend {
    fn isolation(&self) -> &'static str {
        "vm"
    }

    fn start(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<i32, StartError> {
        let setup = |m: String| StartError {
            code: 125,
            message: m,
        };
        let read = |name: &str| -> Result<Vec<u8>, StartError> {
            let p = bundle.join(name);
            std::fs::read(&p).map_err(|e| setup(format!("read {}: {e}", p.display())))
        };
        let spec: VmSpec = serde_json::from_slice(&read("vm.json")?)
            .map_err(|e| setup(format!("parse vm.json: {e}")))?;
        let config: serde_json::Value = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| setup(format!("parse config.json: {e}")))?;
        let state_dir = self.state_dir(id);
        vm_keeper::launch(vm_keeper::Launch {
            id,
            state_dir: &state_dir,
            bundle,
            spec: &spec,
            config,
            hold: false,
            die_with_parent: true,
            own_netns: false,
            stdin: stdio.stdin,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
        })
        .map_err(start_error)
    }

    fn kill(&self, id: &str, sig: Signal) -> anyhow::Result<()> {
        vm_keeper::simple_request(&self.state_dir(id), &Request::Kill { signal: sig as i32 })
            .map_err(|e| anyhow::anyhow!("the container is not running: {e}"))
    }

    fn exec(&self, id: &str, process: &Process, stdio: Stdio) -> Result<i32, StartError> {
        let setup = |m: String| StartError {
            code: 125,
            message: m,
        };
        let tty = process.terminal().unwrap_or(false)
            // The CLI passes a host pty slave with terminal=false (see run.rs); a terminal on
            // all three fds means -t.
            || [stdio.stdin, stdio.stdout, stdio.stderr]
                .iter()
                .all(|f| nix::unistd::isatty(f.as_raw_fd()).unwrap_or(false))
                && stdio.stdin.as_raw_fd() != 0;
        let mut p = serde_json::to_value(process).map_err(|e| setup(e.to_string()))?;
        p["terminal"] = serde_json::json!(tty);
        exec_via_keeper(
            &self.state_dir(id),
            p,
            tty,
            [
                stdio.stdin.as_raw_fd(),
                stdio.stdout.as_raw_fd(),
                stdio.stderr.as_raw_fd(),
            ],
        )
        .map_err(StartError::from)
    }

    fn pids(&self, id: &str) -> anyhow::Result<Vec<i32>> {
        Ok(vm_keeper::pids(&self.state_dir(id)))
    }

    fn stats(&self, id: &str) -> anyhow::Result<serde_json::Value> {
        let st = vm_keeper::load_state(&self.state_dir(id)).context("the VM is not running")?;
        let read = |f: &str| -> Option<u64> {
            st.cgroup_dirs.iter().find_map(|d| {
                std::fs::read_to_string(d.join(f))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            })
        };
        // The same shape as the container stats; the limit is the guest's memory (what
        // --memory sized), the usage is what the VM's host processes are charged.
        Ok(serde_json::json!({
            "platform": st.platform,
            "accelerator": st.accelerator,
            "memory": {"usage": {
                "usage": read("memory.usage_in_bytes").or_else(|| read("memory.current")),
                "limit": u64::from(st.memory_mib) << 20,
            }},
            "pids": {"current": vm_keeper::pids(&self.state_dir(id)).len()},
        }))
    }

    fn details(&self, id: &str) -> Option<serde_json::Value> {
        let st = vm_keeper::load_state(&self.state_dir(id))?;
        Some(serde_json::json!({
            "Platform": st.platform,
            "Accelerator": st.accelerator,
            "MemoryMiB": st.memory_mib,
            // Taken from the warm pool (vm_pool.rs) rather than booted for this instance.
            "Warm": st.warm,
            "WarmFallback": st.warm_fallback,
            "StartPhases": st.start_phases,
        }))
    }

    fn running(&self, id: &str) -> bool {
        vm_keeper::load_state(&self.state_dir(id)).is_some_and(|s| {
            matches!(s.status.as_str(), "running" | "created") && vm_keeper::alive(s.keeper_pid)
        })
    }

    fn exec_time(&self, id: &str) -> Option<String> {
        vm_keeper::load_state(&self.state_dir(id)).and_then(|s| s.started)
    }

    fn delete(&self, id: &str) {
        vm_keeper::destroy(&self.state_dir(id));
    }
}

/// Why a process could not be started through a VM's keeper.
#[derive(Debug)]
pub enum KeeperExecError {
    /// The keeper could not be reached, did not answer, or we could not fork the waiter.
    Unreachable(String),
    /// The keeper (the guest agent) refused the process; the code follows Docker (127 not
    /// found, 126 not executable, 125 otherwise).
    Refused(StartError),
}

impl From<KeeperExecError> for StartError {
    fn from(e: KeeperExecError) -> StartError {
        match e {
            KeeperExecError::Unreachable(message) => StartError { code: 125, message },
            KeeperExecError::Refused(e) => e,
        }
    }
}

/// Runs `process` in the VM through its keeper: forks a small child that passes our stdio to the
/// keeper and exits with the process's exit code (the Backend contract: a child of ours).
pub fn exec_via_keeper(
    state_dir: &Path,
    process: serde_json::Value,
    tty: bool,
    fds: [i32; 3],
) -> Result<i32, KeeperExecError> {
    let setup = KeeperExecError::Unreachable;
    let mut conn =
        vm_keeper::request(state_dir, &Request::Exec { process, tty }, &fds).map_err(setup)?;
    let first = vm_keeper::answer(&mut conn).map_err(setup)?;
    if first["ok"] != true {
        let m = first["message"]
            .as_str()
            .unwrap_or("exec refused")
            .to_string();
        let code = if m.contains("not found") || m.contains("No such file") {
            127
        } else if m.contains("Permission denied") {
            126
        } else {
            125
        };
        return Err(KeeperExecError::Refused(StartError { code, message: m }));
    }
    // SAFETY: strata is single-threaded here; the child only reads one line and _exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| setup(format!("fork: {e}")))? {
        nix::unistd::ForkResult::Child => {
            let code = vm_keeper::answer(&mut conn)
                .ok()
                .and_then(|v| v["exit"].as_i64())
                .unwrap_or(255) as i32;
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_without_a_keeper_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let e = exec_via_keeper(
            t.path(),
            serde_json::json!({"args": ["true"]}),
            false,
            [0, 1, 2],
        )
        .unwrap_err();
        let KeeperExecError::Unreachable(m) = &e else {
            panic!("{e:?}")
        };
        assert!(m.contains("not running"), "{m}");
        assert_eq!(StartError::from(e).code, 125);
    }
}
