//! The VM's cgroup: a memory, pids and CPU limit around the guest kernel process and everything
//! it forks, and a freezer for pause. It is strata-container's [`Cgroup`] (v1, hybrid and v2
//! layouts, runc's interpretation of `cgroupsPath`) with a VM's resources: the cgroup an engine
//! chose for the container (config.json's `linux.cgroupsPath`) when there is one, strata's own
//! `/strata-vm/<id>` otherwise.
//!
//! A [`VmCgroup`] is serializable: the process that booted the VM records it (the keeper's state
//! file), and the commands that come later from other processes (`strata-oci
//! pause/resume/update/delete`) load it and act on exactly those directories.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};
use serde::{Deserialize, Serialize};
use strata_container::cgroups::{Cgroup, CgroupError};

use crate::error::{Result, VmmError};

/// Memory use of a VM's host processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes charged to the VM's cgroup now (guest memory it touched plus host-side overhead).
    pub current_bytes: u64,
    /// The peak of `current_bytes`.
    pub peak_bytes: u64,
    /// The cgroup's memory limit.
    pub limit_bytes: u64,
}

/// Parent of the VM cgroups strata names itself (no `cgroupsPath`); the last VM out removes it.
const DEFAULT_PARENT: &str = "strata-vm";

/// How long removal waits for killed tasks to leave the cgroup.
const SETTLE: Duration = Duration::from_secs(10);
/// How long the cgroup2 half of a re-label waits for exiting processes to leave the old
/// directory (the pool keeper runs it while the workload runs; the removal takes what is left).
const MOVE_SETTLE: Duration = Duration::from_millis(200);

const CPU_PERIOD_US: u64 = 100_000;

/// One VM's cgroup, in every hierarchy of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmCgroup {
    /// The VM's id (for errors).
    id: String,
    cgroup: Cgroup,
    /// Whether it is strata's default `/strata-vm/<id>` (never true for an engine's path): only
    /// then is the shared parent removed when it is left empty.
    #[serde(default)]
    default_parent: bool,
    /// cgroup2 directories re-labelled by [`VmCgroup::relabel`] whose processes have not moved
    /// yet (old, new): [`VmCgroup::finish_relabel`] moves them; removal removes both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    moving: Vec<(PathBuf, PathBuf)>,
}

fn op_err(id: &str, step: &'static str, source: CgroupError) -> VmmError {
    VmmError::VmCgroup {
        id: id.to_string(),
        step,
        source,
    }
}

/// The resources of a VM's cgroup: the memory limit (`None`: unlimited), and at boot the pids
/// limit and CPU quota.
fn resources(
    memory_bytes: Option<u64>,
    pids_max: Option<u64>,
    cpus: Option<f64>,
) -> Result<LinuxResources> {
    let invalid = |e: oci_spec::OciSpecError| VmmError::InvalidConfig(format!("VM cgroup: {e}"));
    let limit = memory_bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let mut r = LinuxResourcesBuilder::default().memory(
        LinuxMemoryBuilder::default()
            .limit(limit)
            .build()
            .map_err(invalid)?,
    );
    if let Some(p) = pids_max {
        r = r.pids(
            LinuxPidsBuilder::default()
                .limit(i64::try_from(p).unwrap_or(i64::MAX))
                .build()
                .map_err(invalid)?,
        );
    }
    if let Some(c) = cpus {
        r = r.cpu(
            LinuxCpuBuilder::default()
                .quota(cpu_quota_us(c) as i64)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(invalid)?,
        );
    }
    r.build().map_err(invalid)
}

/// Moves a cgroup2 directory's processes into a new sibling `to` with the same limits, then
/// removes `from`. (Memory charged before the move stays with `from` until reclaimed: cgroup2
/// does not move charges.)
/// The first half of moving a cgroup2 directory: the new one, with the old one's limits.
fn make_cgroup2_like(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for f in [
        "memory.max",
        "memory.swap.max",
        "memory.high",
        "pids.max",
        "cpu.max",
    ] {
        if let Ok(v) = std::fs::read_to_string(from.join(f)) {
            let _ = std::fs::write(to.join(f), v.trim());
        }
    }
    Ok(())
}

/// The second half: every process from `from` into `to`, then `from` goes. A process that is
/// exiting is no longer listed but still keeps `from` busy for a moment (EBUSY): the move and
/// the removal are retried for up to [`MOVE_SETTLE`]. On failure nothing is undone: the processes
/// moved so far stay in `to` (the same limits), the rest in `from`, and the caller keeps
/// `from` for the VM's removal.
fn move_cgroup2_processes(from: &Path, to: &Path) -> std::io::Result<()> {
    let procs = to.join("cgroup.procs");
    let t = Instant::now();
    loop {
        // New processes may appear while moving (UML forks its helpers): until none is left.
        for _ in 0..100 {
            let pids = std::fs::read_to_string(from.join("cgroup.procs"))?;
            if pids.trim().is_empty() {
                break;
            }
            for pid in pids.lines() {
                let _ = std::fs::write(&procs, pid);
            }
        }
        match std::fs::remove_dir(from) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && t.elapsed() < MOVE_SETTLE => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => return r,
        }
    }
}

impl VmCgroup {
    /// Creates the VM's cgroup at `cgroups_path` (runc's interpretation; `None`:
    /// `/strata-vm/<id>`) with a memory limit, a pids limit and, with `cpus`, a CPU time quota
    /// (in CPUs, e.g. 0.5). On failure removes what it made.
    pub(crate) fn create(
        id: &str,
        cgroups_path: Option<&Path>,
        memory_bytes: u64,
        pids_max: u64,
        cpus: Option<f64>,
    ) -> Result<VmCgroup> {
        let default_path;
        let (path, default_parent) = match cgroups_path {
            Some(p) if !p.as_os_str().is_empty() => (p, false),
            _ => {
                default_path = PathBuf::from(format!("/{DEFAULT_PARENT}/{id}"));
                (default_path.as_path(), true)
            }
        };
        let mut cgroup =
            Cgroup::resolve(Some(path), id).map_err(|e| op_err(id, "resolve the cgroup", e))?;
        let r = resources(Some(memory_bytes), Some(pids_max), cpus)?;
        cgroup
            .create(Some(&r))
            .map_err(|e| op_err(id, "create the cgroup", e))?;
        Ok(VmCgroup {
            id: id.to_string(),
            cgroup,
            default_parent,
            moving: Vec::new(),
        })
    }

    /// Gives a VM made under strata's default parent (`/strata-vm/<id>`) a new id: every
    /// hierarchy's directory is renamed to `/strata-vm/<new_id>` with its processes in it (the
    /// warm pool re-labels a pooled VM to the instance it is handed to). Only for the default
    /// parent: an engine's cgroupsPath is never renamed.
    pub fn relabel(&mut self, new_id: &str) -> Result<()> {
        if !self.default_parent {
            return Err(VmmError::InvalidConfig(format!(
                "VM {}: only a cgroup under /{DEFAULT_PARENT} can be re-labelled",
                self.id
            )));
        }
        let path = PathBuf::from(format!("/{DEFAULT_PARENT}/{new_id}"));
        let mut new = Cgroup::resolve(Some(&path), new_id)
            .map_err(|e| op_err(new_id, "resolve the cgroup", e))?;
        let old_paths = self.paths();
        let new_paths: Vec<PathBuf> = new.paths().into_iter().map(Path::to_path_buf).collect();
        if old_paths.len() != new_paths.len() {
            return Err(VmmError::InvalidConfig(format!(
                "VM {}: the host's cgroup hierarchies changed",
                self.id
            )));
        }
        let mut moving = Vec::new();
        for (i, (from, to)) in old_paths.iter().zip(&new_paths).enumerate() {
            // cgroup v1 renames a cgroup with its processes; cgroup2 refuses renames (EPERM):
            // there a new directory with the same limits is made now, and the processes move
            // into it in finish_relabel. Moving a process waits for the kernel's cgroup-attach
            // grace period (cgroups/prewarm.rs in strata-container: ~10 ms here) while holding
            // the cgroup lock, which a warm start's hand-over should not wait for.
            let moved = match std::fs::rename(from, to) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    make_cgroup2_like(from, to).map(|()| moving.push((from.clone(), to.clone())))
                }
                r => r,
            };
            if let Err(e) = moved {
                // Undo what was renamed or made: the cgroup stays whole under its old name.
                for (f, t) in old_paths.iter().zip(&new_paths).take(i) {
                    if moving.iter().any(|(_, m)| m == t) {
                        let _ = std::fs::remove_dir(t);
                    } else {
                        let _ = std::fs::rename(t, f);
                    }
                }
                return Err(VmmError::Cgroup {
                    path: from.clone(),
                    step: "rename",
                    source: e,
                });
            }
        }
        new.created = self
            .cgroup
            .created
            .iter()
            .map(|d| match old_paths.iter().position(|p| p == d) {
                Some(i) => new_paths[i].clone(),
                None => d.clone(),
            })
            .collect();
        self.cgroup = new;
        self.id = new_id.to_string();
        self.moving = moving;
        Ok(())
    }

    /// Moves the processes of the cgroup2 directories [`VmCgroup::relabel`] left under their
    /// old name into the new one and removes the old one. Until then the VM is accounted under
    /// the old name, with the same limits.
    pub fn finish_relabel(&mut self) -> Result<()> {
        let mut result = Ok(());
        for (from, to) in std::mem::take(&mut self.moving) {
            if let Err(e) = move_cgroup2_processes(&from, &to) {
                if result.is_ok() {
                    result = Err(VmmError::Cgroup {
                        path: from.clone(),
                        step: "move the processes to the re-labelled cgroup",
                        source: e,
                    });
                }
                // Still the VM's: a later finish_relabel or the removal takes it.
                self.moving.push((from, to));
            }
        }
        result
    }

    /// The `cgroup.procs` files of every hierarchy, opened for the jailed child to join by
    /// writing "0" before it execs the guest kernel.
    pub(crate) fn procs_files(&self) -> Result<Vec<File>> {
        self.cgroup
            .paths()
            .into_iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| VmmError::Cgroup {
                        path: p,
                        step: "open",
                        source: e,
                    })
            })
            .collect()
    }

    /// The cgroup's directory in every hierarchy.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.cgroup
            .paths()
            .into_iter()
            .map(Path::to_path_buf)
            .collect()
    }

    /// The underlying cgroup (e.g. for its statistics).
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Memory charged to the VM now, its peak and the limit (guest memory it touched plus
    /// host-side overhead).
    pub fn memory(&self) -> Result<MemoryStats> {
        let s = self
            .cgroup
            .stats()
            .map_err(|e| op_err(&self.id, "read memory statistics", e))?;
        Ok(MemoryStats {
            current_bytes: s.memory.usage.usage,
            peak_bytes: s.memory.usage.max,
            limit_bytes: s.memory.usage.limit,
        })
    }

    /// Whether the VM is frozen (paused). A cgroup that is gone is not frozen.
    pub fn is_frozen(&self) -> bool {
        self.cgroup.is_frozen().unwrap_or(false)
    }

    /// Freezes (`true`, pause) or thaws (`false`, resume) every host process of the VM, and
    /// waits until the kernel reports the new state. A freeze that does not complete is undone.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        if frozen {
            self.cgroup
                .freeze()
                .map_err(|e| op_err(&self.id, "freeze", e))
        } else {
            self.cgroup.thaw().map_err(|e| op_err(&self.id, "thaw", e))
        }
    }

    /// Sets the memory limit of the VM's host processes (`None`: unlimited). The guest keeps
    /// the memory it booted with; this caps what of it (plus the VM's host-side overhead) may be
    /// resident on the host.
    pub fn set_memory_limit(&self, bytes: Option<u64>) -> Result<()> {
        let r = resources(bytes, None, None)?;
        self.cgroup
            .update(&r)
            .map_err(|e| op_err(&self.id, "set the memory limit", e))
    }

    /// Moves process `pid` into the VM's cgroup (strata-oci's keeper: engines read a
    /// container's cgroups from the pid they were given).
    pub fn join(&self, pid: i32) -> Result<()> {
        self.cgroup
            .add_process(pid)
            .map_err(|e| op_err(&self.id, "join", e))
    }

    /// Moves process `pid` out of the VM's cgroup, to the root of each hierarchy, so that the
    /// cgroup can be removed while it lives on.
    pub fn leave(&self, pid: i32) -> Result<()> {
        let roots = self
            .cgroup
            .v1
            .iter()
            .map(|d| d.mountpoint.as_path())
            .chain(self.cgroup.unified_mountpoint.as_deref());
        for root in roots {
            let p = root.join("cgroup.procs");
            std::fs::write(&p, pid.to_string()).map_err(|e| VmmError::Cgroup {
                path: p,
                step: "leave",
                source: e,
            })?;
        }
        Ok(())
    }

    /// Removes the cgroup after the VM was reaped (its processes are gone; exiting ones are
    /// waited for briefly), then strata's shared `strata-vm` parent if it is left empty.
    pub(crate) fn destroy(&self) -> Result<()> {
        let mut result = self
            .cgroup
            .destroy()
            .map_err(|e| op_err(&self.id, "remove", e));
        // A re-label whose processes never moved (or not all): the old cgroup2 directory goes
        // too, once its exiting processes left it.
        for (from, _) in &self.moving {
            let t = Instant::now();
            let removed = loop {
                match std::fs::remove_dir(from) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && t.elapsed() < SETTLE => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break Ok(()),
                    r => break r,
                }
            };
            if let Err(e) = removed {
                if result.is_ok() {
                    result = Err(VmmError::Cgroup {
                        path: from.clone(),
                        step: "remove the cgroup's name before its re-label",
                        source: e,
                    });
                }
            }
        }
        self.remove_default_parent();
        result
    }

    /// Removes the VM's cgroup from outside the process that made it (its keeper may be gone):
    /// thaws it, kills what is still inside, waits for the tasks to leave and removes the
    /// directories strata made, then the shared `strata-vm` parent if it is empty. Removing a
    /// removed cgroup is fine.
    pub fn remove(&self) -> Result<()> {
        let id = &self.id;
        if self.is_frozen() {
            // Killed tasks of a frozen v1 cgroup only die once thawed.
            let _ = self.set_frozen(false);
        }
        let t = Instant::now();
        loop {
            let mut pids = match self.cgroup.pids() {
                Ok(p) => p,
                Err(e) if self.paths().iter().all(|p| !p.exists()) => {
                    tracing::debug!(error = %e, "VM cgroup already gone");
                    Vec::new()
                }
                Err(e) => return Err(op_err(id, "list processes", e)),
            };
            // Processes a re-label had not moved yet (cgroup2).
            for (from, _) in &self.moving {
                let listed = std::fs::read_to_string(from.join("cgroup.procs")).unwrap_or_default();
                pids.extend(listed.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
            pids.sort_unstable();
            pids.dedup();
            if pids.is_empty() {
                break;
            }
            if t.elapsed() > SETTLE {
                return Err(VmmError::Cgroup {
                    path: self.paths().into_iter().next().unwrap_or_default(),
                    step: "remove",
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("processes {pids:?} are still in it after SIGKILL"),
                    ),
                });
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid listed in the VM's own cgroup; no memory is
                // touched. Everything in it belongs to the VM being removed.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.destroy()
    }

    /// The last VM out removes strata's shared parent; while another VM uses it the kernel
    /// refuses (EBUSY), which is the answer we want. Never done for an engine's path.
    fn remove_default_parent(&self) {
        if !self.default_parent {
            return;
        }
        for dir in self.cgroup.paths() {
            if let Some(parent) = dir.parent().filter(|p| p.ends_with(DEFAULT_PARENT)) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// The CFS quota for `cpus` CPUs per period (at least 1 ms, the kernel's minimum).
fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root, which real cgroups need; false after a skip (a failure with STRATA_REQUIRE_E2E=1).
    #[track_caller]
    fn root() -> bool {
        strata_testkit::require(strata_testkit::is_root(), "needs root for cgroups")
    }

    /// A `sleep 1000` in the VM cgroup `cg`, and its pid (a failed join ends it and fails).
    fn sleeper_in(cg: &VmCgroup) -> (std::process::Child, i32) {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        if let Err(e) = cg.join(pid) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("join the VM cgroup: {e}");
        }
        (child, pid)
    }

    /// Removes the cgroup (and so kills the child) even when an assertion fails.
    struct Guard(VmCgroup);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.remove();
        }
    }

    /// What later commands do with a VM's recorded cgroup, on real cgroups (root only): a
    /// process joins, is frozen and thawed, the memory limit changes, and `remove` empties
    /// (SIGKILL) and removes the cgroup while the process still lives in it; the state survives
    /// a round trip through JSON (the keeper's state file).
    #[test]
    fn freeze_limit_join_and_remove_on_real_cgroups() {
        if !root() {
            return;
        }
        let id = format!("strata-cgtest-{}", std::process::id());
        let made = VmCgroup::create(&id, None, 256 << 20, 64, None).unwrap();
        let saved = serde_json::to_string(&made).unwrap();
        let cg: VmCgroup = serde_json::from_str(&saved).unwrap();
        assert_eq!(cg, made);
        let _guard = Guard(cg.clone());
        let dirs = cg.paths();
        assert!(dirs.iter().all(|d| d.ends_with(format!("strata-vm/{id}"))));
        assert_eq!(cg.memory().unwrap().limit_bytes, 256 << 20);
        let (mut child, pid) = sleeper_in(&cg);
        for d in &dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
            assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
        }
        if cg.cgroup().v1_path("freezer").is_some() || cg.cgroup().v1.is_empty() {
            assert!(!cg.is_frozen());
            cg.set_frozen(true).unwrap();
            assert!(cg.is_frozen());
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let state = stat.rsplit_once(')').unwrap().1.trim_start().chars().next();
            assert_ne!(state, Some('R'), "{stat}");
            cg.set_frozen(false).unwrap();
            assert!(!cg.is_frozen());
        }
        cg.set_memory_limit(Some(200 << 20)).unwrap();
        assert_eq!(cg.memory().unwrap().limit_bytes, 200 << 20);
        cg.set_memory_limit(None).unwrap();
        assert!(cg.memory().unwrap().limit_bytes > 1 << 40, "unlimited");
        // Frozen and occupied: remove thaws, kills and removes.
        let _ = cg.set_frozen(true);
        cg.remove().unwrap();
        for d in &dirs {
            assert!(!d.exists(), "{} left", d.display());
        }
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // Idempotent; a removed VM cgroup is not frozen and cannot take a limit.
        cg.remove().unwrap();
        assert!(!cg.is_frozen());
        let err = cg.set_memory_limit(Some(1 << 30)).unwrap_err().to_string();
        assert!(err.contains("set the memory limit"), "{err}");
    }

    /// The warm pool's re-label (root only): every hierarchy's directory gets the new name with
    /// the process still in it and the limits kept; the old name is gone; removal finds the new
    /// directories. An engine's path is never renamed.
    #[test]
    fn relabel_moves_the_cgroup_with_its_process_and_limits() {
        if !root() {
            return;
        }
        let id = format!("strata-cgpool-{}", std::process::id());
        let new_id = format!("strata-cgrelabel-{}", std::process::id());
        let mut cg = VmCgroup::create(&id, None, 256 << 20, 64, None).unwrap();
        let _guard = Guard(cg.clone());
        let old = cg.paths();
        let (mut child, pid) = sleeper_in(&cg);
        cg.relabel(&new_id).unwrap();
        let _guard2 = Guard(cg.clone());
        // cgroup2 cannot rename: its new directory exists with the limits, the process moves
        // in finish_relabel (not on the hand-over's path).
        for (from, to) in cg.moving.clone() {
            assert!(to.exists(), "{}", to.display());
            let procs = std::fs::read_to_string(from.join("cgroup.procs")).unwrap();
            assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
        }
        let v2 = cg.cgroup.unified_path().is_some();
        assert_eq!(!cg.moving.is_empty(), v2, "{:?}", cg.moving);
        cg.finish_relabel().unwrap();
        assert!(cg.moving.is_empty());
        let new = cg.paths();
        assert_eq!(new.len(), old.len());
        for (o, n) in old.iter().zip(&new) {
            assert!(!o.exists(), "{} still there", o.display());
            assert!(
                n.ends_with(format!("strata-vm/{new_id}")),
                "{}",
                n.display()
            );
            let procs = std::fs::read_to_string(n.join("cgroup.procs")).unwrap();
            assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
        }
        assert_eq!(cg.memory().unwrap().limit_bytes, 256 << 20);
        cg.remove().unwrap();
        for d in &new {
            assert!(!d.exists(), "{} left", d.display());
        }
        let _ = child.wait();
        let mut engine = VmCgroup::create(
            &id,
            Some(Path::new(&format!(
                "/strata-cgengine-{}",
                std::process::id()
            ))),
            256 << 20,
            64,
            None,
        )
        .unwrap();
        let _guard3 = Guard(engine.clone());
        assert!(engine.relabel(&new_id).is_err());
        engine.remove().unwrap();
    }

    /// A VM removed between the re-label and the move of its cgroup2 processes (its pool
    /// keeper killed in between) leaves neither directory.
    #[test]
    fn a_relabel_not_finished_is_removed_whole() {
        if !root() {
            return;
        }
        let id = format!("strata-cgpoolx-{}", std::process::id());
        let new_id = format!("strata-cgrelabelx-{}", std::process::id());
        let mut cg = VmCgroup::create(&id, None, 256 << 20, 64, None).unwrap();
        let _guard = Guard(cg.clone());
        let old = cg.paths();
        let (mut child, _) = sleeper_in(&cg);
        cg.relabel(&new_id).unwrap();
        // As the instance's keeper knows it: from the claim's answer.
        let recorded: VmCgroup =
            serde_json::from_str(&serde_json::to_string(&cg).unwrap()).unwrap();
        recorded.remove().unwrap();
        for d in old.iter().chain(&cg.paths()) {
            assert!(!d.exists(), "{} left", d.display());
        }
        let _ = child.wait();
    }

    /// A cgroup2 move that cannot finish (here the old directory is kept busy by a child
    /// directory) is an error that keeps the old directory the VM's: the processes moved so
    /// far stay in the new one, a later finish_relabel completes it, and the removal after a
    /// failed one removes both names.
    #[test]
    fn a_move_that_cannot_finish_keeps_the_old_name_for_the_removal() {
        if !root() {
            return;
        }
        let n = std::process::id();
        for finish_later in [true, false] {
            let id = format!("strata-cgpooly-{n}-{finish_later}");
            let new_id = format!("strata-cgrelabely-{n}-{finish_later}");
            let mut cg = VmCgroup::create(&id, None, 256 << 20, 64, None).unwrap();
            let _guard = Guard(cg.clone());
            let (mut child, pid) = sleeper_in(&cg);
            cg.relabel(&new_id).unwrap();
            let _guard2 = Guard(cg.clone());
            if !strata_testkit::require(!cg.moving.is_empty(), "needs a cgroup2 hierarchy") {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            let blockers: Vec<PathBuf> = cg
                .moving
                .iter()
                .map(|(from, _)| from.join("busy"))
                .collect();
            for b in &blockers {
                std::fs::create_dir(b).unwrap();
            }
            let err = cg.finish_relabel().unwrap_err().to_string();
            assert!(err.contains("move the processes"), "{err}");
            assert_eq!(cg.moving.len(), blockers.len(), "{:?}", cg.moving);
            for (from, to) in &cg.moving {
                assert!(from.exists(), "{}", from.display());
                let procs = std::fs::read_to_string(to.join("cgroup.procs")).unwrap();
                assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
            }
            let old: Vec<PathBuf> = cg.moving.iter().map(|(f, _)| f.clone()).collect();
            for b in &blockers {
                std::fs::remove_dir(b).unwrap();
            }
            if finish_later {
                cg.finish_relabel().unwrap();
                assert!(cg.moving.is_empty());
                for o in &old {
                    assert!(!o.exists(), "{} still there", o.display());
                }
            }
            cg.remove().unwrap();
            for d in old.iter().chain(&cg.paths()) {
                assert!(!d.exists(), "{} left", d.display());
            }
            let _ = child.wait();
        }
    }

    /// An engine's cgroupsPath is used as given (runc's interpretation), with the VM's limits;
    /// removing it leaves the engine's pre-existing parent alone.
    #[test]
    fn an_engine_path_is_used_and_its_parent_kept() {
        if !root() {
            return;
        }
        let n = std::process::id();
        let parent = format!("strata-cgtest-engine-{n}");
        let probe = Cgroup::resolve(Some(Path::new(&format!("/{parent}"))), "x").unwrap();
        // The engine made its parent before (as podman does with libpod_parent).
        let mut engine = probe.clone();
        engine.create(None).unwrap();
        struct Parent(Cgroup);
        impl Drop for Parent {
            fn drop(&mut self) {
                let _ = self.0.destroy();
            }
        }
        let _parent = Parent(engine);
        let path = PathBuf::from(format!("/{parent}/vm-{n}"));
        let cg = VmCgroup::create("vm", Some(&path), 300 << 20, 32, Some(0.5)).unwrap();
        let _guard = Guard(cg.clone());
        assert!(cg
            .paths()
            .iter()
            .all(|d| d.ends_with(format!("{parent}/vm-{n}"))));
        assert_eq!(cg.memory().unwrap().limit_bytes, 300 << 20);
        if let Some(d) = cg.cgroup().v1_path("pids") {
            assert_eq!(
                std::fs::read_to_string(d.join("pids.max")).unwrap().trim(),
                "32"
            );
        }
        if let Some(d) = cg.cgroup().v1_path("cpu") {
            let quota = std::fs::read_to_string(d.join("cpu.cfs_quota_us")).unwrap();
            assert_eq!(quota.trim(), "50000");
        }
        cg.remove().unwrap();
        for d in cg.paths() {
            assert!(!d.exists(), "{} left", d.display());
            assert!(d.parent().unwrap().is_dir(), "the engine's parent stays");
        }
    }

    #[test]
    fn quota() {
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.0001), 1000);
    }
}
