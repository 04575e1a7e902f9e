//! VMs made from an OCI bundle for a container engine (strata-oci's VM path): a bundle whose
//! config.json carries `dev.strata.isolation=vm` (or any bundle when `STRATA_ISOLATION=vm` or
//! strata-oci's `--vm` is given) runs in a VM instead of a container.
//!
//! [`create`] builds a disk of the bundle's rootfs and forks the per-VM keeper (vm_keeper.rs),
//! which boots the VM, joins the VM's cgroups, sends config.json and holds the workload; the
//! keeper's pid goes to the pid file and exits with the workload's exit code, so engines reap it
//! as they reap runc's init. [`start`], [`kill`] and [`exec`] are requests to the keeper over
//! `<root>/vm/<id>/keeper.sock`; [`state`] reads the keeper's state file and the VM's freezer;
//! `pause`/`resume` ([`set_paused`]) freeze and thaw the VM's cgroup (guest kernel, its host
//! helpers and the keeper), [`update`] sets the limits of that cgroup; [`delete`] kills what is
//! left and removes the cgroups and the state. strata-oci (crates/cli/src/oci/vm.rs) parses and prints.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::vm_backend::{exec_via_keeper, KeeperExecError};
use crate::vm_keeper::{self, KeeperState, Request, VmSpec};

/// What `create` takes from strata-oci's flags.
#[derive(Debug, Clone, Default)]
pub struct BundleCreate {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// What `exec` takes from strata-oci's flags.
#[derive(Debug, Clone, Default)]
pub struct BundleExec {
    /// A process.json to run (else the container's process with `command`).
    pub process_file: Option<PathBuf>,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// `uid[:gid]`.
    pub user: Option<String>,
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
}

/// The annotation that selects the isolation of a bundle.
pub const ISOLATION_ANNOTATION: &str = "dev.strata.isolation";
/// The VM platform of a bundle (`auto`, `uml`, `qemu`); overrides `STRATA_VM_PLATFORM`.
pub const PLATFORM_ANNOTATION: &str = "dev.strata.vm.platform";
/// `strata-oci state`: the VM's start phases (`jail=3.1ms ... total=210.4ms`, start_phases.rs).
pub const START_PHASES_ANNOTATION: &str = "dev.strata.vm.start-phases";

/// The keeper's state directory of VM `id`.
pub fn state_dir(root: &Path, id: &str) -> PathBuf {
    root.join("vm").join(id)
}

/// Whether the VM is paused (its cgroup frozen).
pub fn frozen(st: &KeeperState) -> bool {
    st.cgroup.as_ref().is_some_and(|cg| cg.is_frozen())
}

/// The VM's cgroup, as its keeper recorded it.
pub fn vm_cgroup(st: &KeeperState) -> Result<&strata_vmm::cgroup::VmCgroup> {
    st.cgroup
        .as_ref()
        .context("the VM's state records no cgroup (made by an older strata-oci: delete it and create it again)")
}

/// Whether a bundle runs in a VM.
pub fn wants_vm(bundle: &Path, flag: bool) -> bool {
    if flag || std::env::var("STRATA_ISOLATION").is_ok_and(|v| v == "vm") {
        return true;
    }
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["annotations"][ISOLATION_ANNOTATION] == "vm")
}

/// Whether `id` is a VM made by [`create`] (its state exists).
pub fn exists(root: &Path, id: &str) -> bool {
    state_dir(root, id).join("state.json").exists()
}

/// Releases a held workload (`start`).
pub fn start(root: &Path, id: &str) -> Result<()> {
    // A frozen keeper could not answer.
    if running_vm(root, id).is_ok_and(|st| frozen(&st)) {
        bail!("cannot start container {id}: it is paused (resume it first)");
    }
    vm_keeper::simple_request(&state_dir(root, id), &Request::Start)
        .map_err(|e| anyhow::anyhow!("start VM {id}: {e}"))
}

/// Signals the workload (`kill`); SIGKILL of a VM whose workload has not started ends the VM.
pub fn kill(root: &Path, id: &str, sig: Signal) -> Result<()> {
    let dir = state_dir(root, id);
    let st = vm_keeper::load_state(&dir).context("read VM state")?;
    if !vm_keeper::alive(st.keeper_pid) || st.status == "stopped" {
        bail!("container not running");
    }
    if frozen(&st) {
        kill_paused(&dir, &st, sig)?;
    } else if st.status == "created" && matches!(sig, Signal::SIGKILL) {
        // Nothing runs yet: end the VM itself.
        vm_keeper::destroy_vm_only(&dir);
    } else {
        vm_keeper::simple_request(&dir, &Request::Kill { signal: sig as i32 })
            .map_err(|e| anyhow::anyhow!("kill VM {id}: {e}"))?;
    }
    Ok(())
}

/// Removes the VM (`delete`): refused while it runs unless `force`.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let dir = state_dir(root, id);
    let st = vm_keeper::load_state(&dir).unwrap_or_default();
    if vm_keeper::alive(st.keeper_pid) && st.status == "running" && !force {
        let what = if frozen(&st) { "paused" } else { "running" };
        bail!("cannot delete container {id} that is not stopped: {what} (use --force)");
    }
    vm_keeper::destroy(&dir);
    Ok(())
}

/// Freezes (`pause`) or thaws (`resume`) the VM's cgroup.
pub fn set_paused(root: &Path, id: &str, paused: bool) -> Result<()> {
    let st = running_vm(root, id)?;
    match (paused, frozen(&st)) {
        (true, true) => bail!("container {id} is already paused"),
        (false, false) => bail!("container {id} is not paused"),
        _ => {}
    }
    let what = if paused { "pause" } else { "resume" };
    vm_cgroup(&st)?
        .set_frozen(paused)
        .with_context(|| format!("{what} VM {id}"))
}

/// Host pids of the VM (`ps`).
pub fn pids(root: &Path, id: &str) -> Vec<i32> {
    vm_keeper::pids(&state_dir(root, id))
}

/// The statistics of a running VM's cgroup (one `events` sample).
pub fn stats(root: &Path, id: &str) -> Result<strata_container::cgroups::Stats> {
    let st = running_vm(root, id)?;
    vm_cgroup(&st)?
        .cgroup()
        .stats()
        .with_context(|| format!("read the statistics of VM {id}"))
}

/// Adds what the VM path offers to `strata-oci features`.
pub fn advertise(features: &mut serde_json::Value) {
    let platforms: Vec<&str> = strata_vmm::platforms()
        .iter()
        .filter(|p| p.check().is_ok())
        .map(|p| p.name())
        .collect();
    features["annotations"][ISOLATION_ANNOTATION] = serde_json::json!("container|vm");
    features["annotations"]["dev.strata.vm.platforms"] = serde_json::json!(platforms.join(","));
    features["annotations"][PLATFORM_ANNOTATION] = serde_json::json!("auto|uml|qemu");
}

/// The state of a VM that is created, running or paused; an error saying so otherwise.
pub fn running_vm(root: &Path, id: &str) -> Result<KeeperState> {
    let st = vm_keeper::load_state(&state_dir(root, id)).context("read VM state")?;
    if !vm_keeper::alive(st.keeper_pid) || !matches!(st.status.as_str(), "created" | "running") {
        bail!("container {id} is not running");
    }
    Ok(st)
}

/// `update` of a VM: the memory limit becomes the limit of the VM's host cgroup (guest memory it
/// touched, UML's own overhead and the keeper). The guest keeps the RAM it booted with (UML
/// cannot resize it): a guest that needs more host memory than the new limit is reclaimed into
/// swap where there is some, and OOM-killed as a whole otherwise. Other resources are not
/// applied to VMs (the VM's pids and CPU limits are fixed at boot; docs/engines.md).
pub fn update(root: &Path, id: &str, r: &oci_spec::runtime::LinuxResources) -> Result<()> {
    let st = running_vm(root, id)?;
    // CPU, pids and block I/O apply to the VM's host processes as to a container's; memory has
    // its own rules below (the guest keeps the RAM it booted with).
    let mut rest = r.clone();
    rest.set_memory(None);
    rest.set_devices(None);
    vm_cgroup(&st)?
        .cgroup()
        .update(&rest)
        .with_context(|| format!("update VM {id}"))?;
    let Some(limit) = r.memory().as_ref().and_then(|m| m.limit()) else {
        return Ok(());
    };
    let bytes = match limit {
        -1 => None,
        l if l > 0 => Some(l as u64),
        l => bail!("invalid memory limit {l}: give bytes > 0, or -1 for unlimited"),
    };
    vm_cgroup(&st)?
        .set_memory_limit(bytes)
        .with_context(|| format!("update VM {id}"))
}

/// `kill` of a paused VM: its keeper is frozen and cannot answer. SIGKILL ends the VM at once
/// (and thaws it, so the killed tasks can die, as runc does); the signals the keeper forwards
/// to the workload are queued on the keeper and delivered when the VM is resumed.
fn kill_paused(dir: &Path, st: &KeeperState, sig: Signal) -> Result<()> {
    use nix::sys::signal::Signal::*;
    match sig {
        SIGKILL => {
            vm_keeper::destroy_vm_only(dir);
            Ok(())
        }
        SIGHUP | SIGINT | SIGQUIT | SIGTERM | SIGUSR1 | SIGUSR2 => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(st.keeper_pid), sig)
                .context("signal the VM keeper")
        }
        other => bail!(
            "the VM is paused: {other} cannot be queued for its workload; resume it first (or send SIGKILL)"
        ),
    }
}

/// The `state` of every VM under `root` (for `list`), in id order; unreadable entries skipped.
pub fn states(root: &Path) -> Vec<serde_json::Value> {
    let mut ids: Vec<String> = std::fs::read_dir(root.join("vm"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("state.json").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.iter().filter_map(|id| state(root, id).ok()).collect()
}

/// The OCI state of a VM container; `pid` is the keeper's (it exits with the workload).
pub fn state(root: &Path, id: &str) -> Result<serde_json::Value> {
    let st = vm_keeper::load_state(&state_dir(root, id)).context("read VM state")?;
    let status = if !vm_keeper::alive(st.keeper_pid) {
        "stopped"
    } else {
        match st.status.as_str() {
            "creating" => "creating",
            "created" | "running" if frozen(&st) => "paused",
            "created" => "created",
            "running" => "running",
            _ => "stopped",
        }
    };
    let mut annotations = std::fs::read(st.bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| v["annotations"].clone())
        .unwrap_or(serde_json::Value::Null);
    // Where the VM's start went (start_phases.rs), as one line.
    if let Some(p) = &st.start_phases {
        if annotations.is_null() {
            annotations = serde_json::json!({});
        }
        if let Some(map) = annotations.as_object_mut() {
            map.insert(START_PHASES_ANNOTATION.into(), p.summary().into());
        }
    }
    Ok(serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": status,
        "pid": if status == "stopped" { 0 } else { st.keeper_pid },
        "bundle": st.bundle,
        "rootfs": st.bundle.join("rootfs"),
        "created": st.created,
        "annotations": annotations,
        "owner": "root",
    }))
}

/// `create` (hold: the workload waits for [`start`]) or `run` of a VM from an OCI bundle: a disk
/// of the bundle's rootfs in the state directory, a host pty whose master goes to
/// `console_socket` when config.json asks for a terminal, the keeper launched (it outlives us)
/// and its pid written to `pid_file`. Returns the keeper's pid; on failure nothing is left.
pub fn create(root: &Path, id: &str, c: &BundleCreate, hold: bool) -> Result<i32> {
    let dir = state_dir(root, id);
    if dir.exists() || root.join(id).exists() {
        bail!("container with id {} already exists", id);
    }
    let bundle = std::fs::canonicalize(&c.bundle)
        .with_context(|| format!("bundle {}", c.bundle.display()))?;
    let cfg_path = bundle.join("config.json");
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&cfg_path).with_context(|| format!("read {}", cfg_path.display()))?,
    )
    .with_context(|| format!("parse {}", cfg_path.display()))?;
    let rootfs = match config["root"]["path"].as_str() {
        Some(p) if p.starts_with('/') => PathBuf::from(p),
        Some(p) => bundle.join(p),
        None => bail!("{}: root.path is missing", cfg_path.display()),
    };
    let result = (|| -> Result<i32> {
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // The bundle's rootfs becomes this VM's disk (engines give every container its own
        // rootfs, so there is nothing to share; it lives and dies with the state).
        let key = format!(
            "rootfs-{}",
            id.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(64)
                .collect::<String>()
        );
        let disk = strata_vmm::build_disk(
            std::slice::from_ref(&rootfs),
            strata_vmm::DiskFormat::Ext4,
            &dir,
            &key,
        )
        .context("build the VM disk from the bundle's rootfs")?;
        let memory_mib = config["linux"]["resources"]["memory"]["limit"]
            .as_i64()
            .filter(|l| *l > 0)
            .map(|l| ((l >> 20) as u32).max(32))
            .unwrap_or(128);
        let tty = config["process"]["terminal"] == true;
        let spec = VmSpec {
            // The bundle's annotation, else the environment (an engine's runtime config).
            platform: config["annotations"][PLATFORM_ANNOTATION]
                .as_str()
                .map(str::to_string)
                .or_else(|| std::env::var("STRATA_VM_PLATFORM").ok())
                .unwrap_or_else(|| "auto".into()),
            kernel: None,
            initrd: None,
            disk,
            volumes: Vec::new(),
            memory_mib,
            vcpus: 1,
            cache_dir: root.join("vm").join(".cache"),
            tty,
            // The VM's host processes go where the engine wants the container's (runc's
            // interpretation of the path; the container id when there is none).
            cgroups_path: Some(PathBuf::from(
                config["linux"]["cgroupsPath"]
                    .as_str()
                    .filter(|p| !p.is_empty())
                    .map_or_else(|| format!("/{}", id), str::to_string),
            )),
        };
        // With a terminal, the engine gets the master of a host pty whose slave the keeper
        // relays to the guest's own pty.
        let pty = if tty {
            let sock = c
                .console_socket
                .as_ref()
                .context("process.terminal is true: --console-socket is required")?;
            // Sized as config.json asks (the keeper starts the guest's pty at this size; the
            // engine resizes the master later and the keeper follows).
            let size = &config["process"]["consoleSize"];
            let ws = nix::pty::Winsize {
                ws_row: size["height"].as_u64().unwrap_or(0).min(u16::MAX.into()) as u16,
                ws_col: size["width"].as_u64().unwrap_or(0).min(u16::MAX.into()) as u16,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let p = nix::pty::openpty(Some(&ws), None).context("allocate a pty")?;
            let s = strata_container::console::connect_socket(sock)?;
            strata_container::console::send_master(s.as_fd(), p.master.as_fd())?;
            Some(p.slave)
        } else {
            None
        };
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        let (i, o, e) = match &pty {
            Some(s) => (s.as_fd(), s.as_fd(), s.as_fd()),
            None => (stdin.as_fd(), stdout.as_fd(), stderr.as_fd()),
        };
        // config.json asks for a new network namespace (no path): the keeper gets one, as runc's
        // init would, for an engine to configure between create and start.
        let own_netns = config["linux"]["namespaces"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["type"] == "network"))
            && vm_keeper::netns_path(&config).is_none();
        let pid = vm_keeper::launch(vm_keeper::Launch {
            id,
            state_dir: &dir,
            bundle: &bundle,
            spec: &spec,
            config,
            hold,
            die_with_parent: false,
            own_netns,
            stdin: i,
            stdout: o,
            stderr: e,
        })
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        if let Some(p) = &c.pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(pid)
    })();
    if result.is_err() {
        vm_keeper::destroy(&dir);
    }
    result
}

fn write_pid_file(p: &Path, pid: i32) -> Result<()> {
    let tmp = p.with_extension("strata-tmp");
    std::fs::write(&tmp, pid.to_string()).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, p).with_context(|| format!("write {}", p.display()))
}

/// `exec` in a running VM: the process from `process_file` or the container's own with
/// `command`, the flags applied, run through the keeper on our stdio (or a pty whose master goes
/// to `console_socket`). Returns the pid of our child that exits with the process's code.
pub fn exec(root: &Path, id: &str, a: &BundleExec) -> Result<i32> {
    let dir = state_dir(root, id);
    let st = vm_keeper::load_state(&dir).context("read VM state")?;
    if st.status != "running" || !vm_keeper::alive(st.keeper_pid) {
        bail!("cannot exec in a stopped container");
    }
    if frozen(&st) {
        bail!("cannot exec in a paused container (resume it first)");
    }
    let mut process: serde_json::Value = match &a.process_file {
        Some(p) => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("read process file {}", p.display()))?,
        )
        .with_context(|| format!("parse process file {}", p.display()))?,
        None => {
            if a.command.is_empty() {
                bail!("exec: give a command to run or --process FILE");
            }
            let cfg: serde_json::Value =
                serde_json::from_slice(&std::fs::read(st.bundle.join("config.json"))?)?;
            let mut p = cfg["process"].clone();
            p["args"] = serde_json::json!(a.command);
            p
        }
    };
    if !a.env.is_empty() {
        let mut env: Vec<serde_json::Value> =
            process["env"].as_array().cloned().unwrap_or_default();
        env.extend(a.env.iter().map(|e| serde_json::json!(e)));
        process["env"] = serde_json::json!(env);
    }
    if let Some(c) = &a.cwd {
        process["cwd"] = serde_json::json!(c);
    }
    if let Some(u) = &a.user {
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (u.parse::<u32>()?, g.parse::<u32>()?),
            None => (u.parse::<u32>().context("--user takes uid[:gid]")?, 0),
        };
        process["user"]["uid"] = serde_json::json!(uid);
        process["user"]["gid"] = serde_json::json!(gid);
    }
    let tty = a.tty || process["terminal"] == true;
    process["terminal"] = serde_json::json!(tty);
    let pty = if tty {
        let sock = a
            .console_socket
            .as_ref()
            .context("a terminal needs --console-socket")?;
        let p = nix::pty::openpty(None, None).context("allocate a pty")?;
        let s = strata_container::console::connect_socket(sock)?;
        strata_container::console::send_master(s.as_fd(), p.master.as_fd())?;
        Some(p.slave)
    } else {
        None
    };
    let fds = match &pty {
        Some(s) => [s.as_raw_fd(); 3],
        None => [0, 1, 2],
    };
    let pid = exec_via_keeper(&dir, process, tty, fds).map_err(|e| match e {
        KeeperExecError::Unreachable(m) => anyhow::anyhow!("{m}"),
        KeeperExecError::Refused(e) => anyhow::anyhow!("exec failed: {}", e.message),
    })?;
    if let Some(p) = &a.pid_file {
        write_pid_file(p, pid)?;
    }
    Ok(pid)
}
