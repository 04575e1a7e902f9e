//! The VM's cgroup: a memory and pids limit around the guest kernel process and everything it
//! forks. Minimal on purpose (create, limits, join, usage, remove) for v1, hybrid and v2 hosts;
//! it can move onto strata-container's `Cgroup` once that one is complete.

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

    #[test]
    fn quota() {
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(2.0), 200_000);
        assert_eq!(cpu_quota_us(0.0001), 1000);
    }
}
