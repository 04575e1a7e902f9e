//! The VM's cgroup: a memory and pids limit around the guest kernel process and everything it
//! forks, and a freezer for pause. Minimal on purpose (create, limits, join, usage, freeze,
//! remove) for v1, hybrid and v2 hosts; it can move onto strata-container's `Cgroup` once that
//! one is complete.
//!
//! [`VmCgroup`] belongs to the process that booted the VM. The free functions below work on the
//! directories a VM's state recorded ([`crate::Vm::cgroup_dirs`]), for the commands that come
//! later from other processes (`strata-oci pause/resume/update/delete`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Result, VmmError};

const ROOT: &str = "/sys/fs/cgroup";
/// Parent of every VM cgroup (never removed: other VMs share it).
const PARENT: &str = "strata-vm";

/// One VM's cgroup directories.
#[derive(Debug)]
pub(crate) struct VmCgroup {
    /// The memory-controller directory (usage is read here).
    memory: PathBuf,
    /// v1: one directory per controller; v2: the single directory.
    dirs: Vec<PathBuf>,
    v2: bool,
}

fn cg_err(path: &Path, step: &'static str, source: io::Error) -> VmmError {
    VmmError::Cgroup {
        path: path.to_path_buf(),
        step,
        source,
    }
}

fn write(path: &Path, value: &str, step: &'static str) -> Result<()> {
    fs::write(path, value).map_err(|e| cg_err(path, step, e))
}

impl VmCgroup {
    /// Creates `strata-vm/<id>` with a memory limit, a pids limit and, with `cpus`, a CPU time
    /// quota (in CPUs, e.g. 0.5). On failure removes what it made.
    pub(crate) fn create(
        id: &str,
        memory_bytes: u64,
        pids_max: u64,
        cpus: Option<f64>,
    ) -> Result<VmCgroup> {
        let root = Path::new(ROOT);
        let v2 = root.join("cgroup.controllers").exists();
        let cg = if v2 {
            let parent = root.join(PARENT);
            mkdir_parent(&parent)?;
            // Controllers must be enabled for the children of every level down to ours.
            let wanted = if cpus.is_some() {
                "+memory +pids +cpu"
            } else {
                "+memory +pids"
            };
            write(
                &root.join("cgroup.subtree_control"),
                wanted,
                "enable memory and pids controllers",
            )?;
            write(
                &parent.join("cgroup.subtree_control"),
                wanted,
                "enable memory and pids controllers",
            )?;
            let dir = parent.join(id);
            VmCgroup {
                memory: dir.clone(),
                dirs: vec![dir],
                v2,
            }
        } else {
            let memory = root.join("memory").join(PARENT).join(id);
            let pids = root.join("pids").join(PARENT).join(id);
            let mut dirs = vec![memory.clone(), pids];
            if cpus.is_some() {
                dirs.push(root.join("cpu").join(PARENT).join(id));
            }
            // The freezer is what pause/unpause use (v2 has cgroup.freeze in every directory).
            if root.join("freezer").is_dir() {
                dirs.push(root.join("freezer").join(PARENT).join(id));
            }
            VmCgroup { memory, dirs, v2 }
        };
        let mut made = Vec::new();
        let result = (|| {
            for dir in &cg.dirs {
                create_leaf(dir)?;
                made.push(dir.clone());
            }
            if cg.v2 {
                write(
                    &cg.dirs[0].join("memory.max"),
                    &memory_bytes.to_string(),
                    "set memory.max",
                )?;
                // Without swap limits the guest's memory file could be swapped out instead of
                // being limited.
                let swap = cg.dirs[0].join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0", "set memory.swap.max")?;
                }
                write(
                    &cg.dirs[0].join("pids.max"),
                    &pids_max.to_string(),
                    "set pids.max",
                )?;
                if let Some(quota) = cpus.map(cpu_quota_us) {
                    write(
                        &cg.dirs[0].join("cpu.max"),
                        &format!("{quota} {CPU_PERIOD_US}"),
                        "set cpu.max",
                    )?;
                }
            } else {
                write(
                    &cg.dirs[0].join("memory.limit_in_bytes"),
                    &memory_bytes.to_string(),
                    "set memory.limit_in_bytes",
                )?;
                write(
                    &cg.dirs[1].join("pids.max"),
                    &pids_max.to_string(),
                    "set pids.max",
                )?;
                if let Some(quota) = cpus.map(cpu_quota_us) {
                    write(
                        &cg.dirs[2].join("cpu.cfs_period_us"),
                        &CPU_PERIOD_US.to_string(),
                        "set cpu.cfs_period_us",
                    )?;
                    write(
                        &cg.dirs[2].join("cpu.cfs_quota_us"),
                        &quota.to_string(),
                        "set cpu.cfs_quota_us",
                    )?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            for dir in made.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
            return Err(e);
        }
        Ok(cg)
    }

    /// The `cgroup.procs` files, opened for the jailed child to join by writing "0".
    pub(crate) fn procs_files(&self) -> Result<Vec<File>> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| cg_err(&p, "open", e))
            })
            .collect()
    }

    /// Current memory charged to the VM (guest memory it touched plus host-side overhead).
    pub(crate) fn memory_usage(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        read_u64(&self.memory.join(file))
    }

    /// The peak of `memory_usage` since the VM started.
    pub(crate) fn memory_peak(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        read_u64(&self.memory.join(file))
    }

    /// The memory limit.
    pub(crate) fn memory_limit(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        read_u64(&self.memory.join(file))
    }

    /// Removes the directories (they must be empty: the VM has been reaped). Retries briefly
    /// while exiting tasks still hold them.
    pub(crate) fn destroy(&self) -> Result<()> {
        for dir in self.dirs.iter().rev() {
            let mut tries = 0;
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => return Err(cg_err(dir, "remove", e)),
                }
            }
        }
        // The last VM out removes the shared `strata-vm` parent; while another VM uses it the
        // kernel refuses (EBUSY), which is the answer we want.
        for dir in &self.dirs {
            if let Some(parent) = dir.parent().filter(|p| p.ends_with(PARENT)) {
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }

    /// The directories, for tests and diagnostics.
    pub(crate) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// How long pause, resume and removal wait for the kernel (a v1 freeze passes through FREEZING
/// while every task stops; exiting tasks leave a cgroup asynchronously).
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The freezer control file among a VM's directories: v1 `freezer.state` or v2 `cgroup.freeze`.
fn freezer_file(dirs: &[PathBuf]) -> Option<(PathBuf, bool)> {
    dirs.iter().find_map(|d| {
        let v1 = d.join("freezer.state");
        let v2 = d.join("cgroup.freeze");
        if v1.exists() {
            Some((v1, false))
        } else if v2.exists() {
            Some((v2, true))
        } else {
            None
        }
    })
}

fn missing(dirs: &[PathBuf], step: &'static str, what: &str) -> VmmError {
    cg_err(
        dirs.first()
            .map(PathBuf::as_path)
            .unwrap_or(Path::new(ROOT)),
        step,
        io::Error::new(io::ErrorKind::NotFound, what.to_string()),
    )
}

/// Whether the VM whose cgroup directories are `dirs` is frozen (paused).
pub fn is_frozen(dirs: &[PathBuf]) -> bool {
    match freezer_file(dirs) {
        Some((f, false)) => fs::read_to_string(f).is_ok_and(|s| s.trim() == "FROZEN"),
        Some((f, true)) => f
            .parent()
            .and_then(|d| fs::read_to_string(d.join("cgroup.events")).ok())
            .is_some_and(|e| e.lines().any(|l| l.trim() == "frozen 1")),
        None => false,
    }
}

/// Freezes (`true`, pause) or thaws (`false`, resume) every host process of a VM, and waits
/// until the kernel reports the new state. A freeze that does not complete is undone.
pub fn set_frozen(dirs: &[PathBuf], frozen: bool) -> Result<()> {
    let step = if frozen { "freeze" } else { "thaw" };
    let (file, v2) = freezer_file(dirs).ok_or_else(|| {
        missing(
            dirs,
            step,
            "the VM's cgroup has no freezer (mount the freezer controller or use cgroup v2)",
        )
    })?;
    let value = match (v2, frozen) {
        (false, true) => "FROZEN",
        (false, false) => "THAWED",
        (true, true) => "1",
        (true, false) => "0",
    };
    let t = std::time::Instant::now();
    loop {
        write(&file, value, step)?;
        if is_frozen(dirs) == frozen {
            return Ok(());
        }
        if t.elapsed() > SETTLE {
            if frozen {
                let _ = set_frozen(dirs, false);
            }
            return Err(cg_err(
                &file,
                step,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the VM's processes did not settle within {SETTLE:?}"),
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Sets the memory limit of a VM's host processes (`None`: unlimited). The guest keeps the
/// memory it booted with; this caps what of it (plus the VM's host-side overhead) may be
/// resident on the host.
pub fn set_memory_limit(dirs: &[PathBuf], bytes: Option<u64>) -> Result<()> {
    for d in dirs {
        let (file, unlimited) = if d.join("memory.limit_in_bytes").exists() {
            (d.join("memory.limit_in_bytes"), "-1")
        } else if d.join("memory.max").exists() {
            (d.join("memory.max"), "max")
        } else {
            continue;
        };
        let value = bytes.map_or(unlimited.to_string(), |b| b.to_string());
        return fs::write(&file, value).map_err(|e| {
            let step = if e.raw_os_error() == Some(libc::EBUSY) {
                "set the memory limit (the VM uses more than that now and the host cannot reclaim it)"
            } else {
                "set the memory limit"
            };
            cg_err(&file, step, e)
        });
    }
    Err(missing(
        dirs,
        "set the memory limit",
        "the VM's cgroup has no memory controller",
    ))
}

/// Moves process `pid` into the VM's cgroups (strata-oci's keeper: engines read a container's
/// cgroups from the pid they were given).
pub fn join(dirs: &[PathBuf], pid: i32) -> Result<()> {
    for d in dirs {
        write(&d.join("cgroup.procs"), &pid.to_string(), "join")?;
    }
    Ok(())
}

/// Moves process `pid` out of the VM's cgroups, to the root of each hierarchy, so that the
/// directories can be removed while it lives on.
pub fn leave(dirs: &[PathBuf], pid: i32) -> Result<()> {
    for d in dirs {
        // `<hierarchy>/strata-vm/<id>`: the hierarchy's root is two levels up.
        if let Some(root) = d.parent().and_then(Path::parent) {
            write(&root.join("cgroup.procs"), &pid.to_string(), "leave")?;
        }
    }
    Ok(())
}

/// Removes a VM's cgroup directories from outside the process that made them (its keeper may be
/// gone): thaws them, kills what is still inside, waits for the tasks to leave, removes the
/// directories, then the shared `strata-vm` parent if it is empty. Missing directories are fine.
pub fn remove(dirs: &[PathBuf]) -> Result<()> {
    if is_frozen(dirs) {
        // Killed tasks of a frozen v1 cgroup only die once thawed.
        let _ = set_frozen(dirs, false);
    }
    let t = std::time::Instant::now();
    for dir in dirs.iter().rev() {
        loop {
            let procs = match fs::read_to_string(dir.join("cgroup.procs")) {
                Ok(p) => p,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(cg_err(dir, "list processes", e)),
            };
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && t.elapsed() < SETTLE => {}
                    Err(e) => return Err(cg_err(dir, "remove", e)),
                }
            } else if t.elapsed() > SETTLE {
                return Err(cg_err(
                    dir,
                    "remove",
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("processes {pids:?} are still in it after SIGKILL"),
                    ),
                ));
            } else {
                for pid in pids {
                    // SAFETY: kill(2) with a pid listed in the VM's own cgroup; no memory is
                    // touched. Everything in it belongs to the VM being removed.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    for dir in dirs {
        if let Some(parent) = dir.parent().filter(|p| p.ends_with(PARENT)) {
            let _ = fs::remove_dir(parent);
        }
    }
    Ok(())
}

const CPU_PERIOD_US: u64 = 100_000;

/// The CFS quota for `cpus` CPUs per period (at least 1 ms, the kernel's minimum).
fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)
}

/// Creates `dir` and its parent; the parent may vanish in between (another VM's `destroy`
/// removes an empty `strata-vm`), so a missing parent is made again, a few times.
fn create_leaf(dir: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        if let Some(parent) = dir.parent() {
            mkdir_parent(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 10 => tries += 1,
            Err(e) => return Err(cg_err(dir, "create", e)),
        }
    }
}

fn mkdir_parent(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(cg_err(dir, "create parent", e)),
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The functions later commands use on a VM's recorded directories, on real cgroups (root
    /// only): a process joins, is frozen and thawed, the memory limit changes, and `remove`
    /// empties (SIGKILL) and removes the directories while the process still lives in them.
    #[test]
    fn freeze_limit_join_and_remove_on_real_cgroups() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root for cgroups");
            return;
        }
        let id = format!("strata-cgtest-{}", std::process::id());
        let cg = VmCgroup::create(&id, 256 << 20, 64, None).unwrap();
        let dirs = cg.dirs().to_vec();
        /// Removes the cgroups (and so kills the child) even when an assertion fails.
        struct Guard(Vec<PathBuf>);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = remove(&self.0);
            }
        }
        let _guard = Guard(dirs.clone());
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        if join(&dirs, pid).is_err() {
            let _ = child.kill();
        }
        let procs = fs::read_to_string(dirs[0].join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
        if freezer_file(&dirs).is_some() {
            assert!(!is_frozen(&dirs));
            set_frozen(&dirs, true).unwrap();
            assert!(is_frozen(&dirs));
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let state = stat.rsplit_once(')').unwrap().1.trim_start().chars().next();
            assert_ne!(state, Some('R'), "{stat}");
            set_frozen(&dirs, false).unwrap();
            assert!(!is_frozen(&dirs));
        }
        set_memory_limit(&dirs, Some(200 << 20)).unwrap();
        assert_eq!(cg.memory_limit(), Some(200 << 20));
        set_memory_limit(&dirs, None).unwrap();
        assert!(cg.memory_limit().unwrap() > 1 << 40, "unlimited");
        // Frozen and occupied: remove thaws, kills and removes.
        let _ = set_frozen(&dirs, true);
        remove(&dirs).unwrap();
        for d in &dirs {
            assert!(!d.exists(), "{} left", d.display());
        }
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // Idempotent; a VM without a freezer or memory directory gets a clear error.
        remove(&dirs).unwrap();
        let err = set_frozen(&dirs, true).unwrap_err().to_string();
        assert!(err.contains("no freezer"), "{err}");
        let err = set_memory_limit(&dirs, Some(1)).unwrap_err().to_string();
        assert!(err.contains("no memory controller"), "{err}");
    }

    #[test]
    fn quota() {
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.0001), 1000);
    }
}
