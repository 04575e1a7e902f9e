//! cgroups for containers: v1, v2 and the hybrid layout (v1 controllers plus a
//! cgroup2 mount at /sys/fs/cgroup/unified), behind one type.
//!
//! CONTRACT used by the rest of strata-container (keep these signatures stable):
//!
//! ```text
//! let mut cg = Cgroup::resolve(spec_cgroups_path, container_id)?; // detect layout, compute paths; creates nothing
//! cg.create(resources)?;           // mkdir in every controller/hierarchy, apply resources; on error removes what it made
//! cg.add_process(pid)?;            // move pid into the cgroup(s) (cgroup.procs)
//! cg.update(&resources)?;          // `strata-oci update`
//! cg.freeze()?; cg.thaw()?;        // pause/resume; cg.is_frozen()?
//! cg.pids()?;                      // every pid in the cgroup (for ps, kill --all)
//! cg.stats()?;                     // runc `events --stats` shaped data (serde::Serialize)
//! cg.destroy()?;                   // remove every directory created (retries while tasks exit)
//! // persisted in the container state file and re-loaded by later commands:
//! let saved = serde_json::to_value(&cg)?; let cg: Cgroup = serde_json::from_value(saved)?;
//! ```
//!
//! `create` takes `&mut self` because it records which directories it made, so that
//! `destroy` (possibly in a later process, after reloading from state.json) removes
//! exactly those and never a pre-existing parent.
//!
//! Layouts: on v1 and hybrid hosts resources go to the v1 controllers (as runc's
//! cgroupfs driver does); on hybrid hosts the same path is also created in the
//! cgroup2 hierarchy and the process joined there, for process tracking. On v2 the
//! single cgroup2 directory carries everything, devices included (an eBPF program).

mod bpf;
mod convert;
mod devices;
mod error;
mod files;
mod freezer;
mod fuzz;
mod mountinfo;
mod path;
pub mod prewarm;
mod resources;
mod stats;
mod v1;
mod v2;

pub use bpf::attached_device_programs;
pub use devices::with_runc_default_devices;
pub use error::CgroupError;
#[doc(hidden)]
pub use fuzz::fuzz_one;
pub use mountinfo::Layout;
pub use stats::{Blkio, BlkioEntry, Cpu, CpuUsage, Memory, MemoryEntry, Pids, Stats, Throttling};
pub use v1::V1Dir;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

const MOUNTINFO: &str = "/proc/self/mountinfo";
const PROC_CGROUP: &str = "/proc/self/cgroup";

/// One cgroup of a container, spread over every hierarchy of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
///
/// The fields are public for reading (e.g. to mount the container's cgroups);
/// change them only through the methods.
pub struct Cgroup {
    /// The host's cgroup layout.
    pub layout: Layout,
    /// v1 hierarchies (one per mount; co-mounted controllers share one entry).
    #[serde(default)]
    pub v1: Vec<V1Dir>,
    /// The cgroup2 directory: the whole cgroup on v2, the process-tracking twin on
    /// hybrid hosts, absent on pure v1.
    #[serde(default)]
    pub unified: Option<PathBuf>,
    /// Where the cgroup2 hierarchy of `unified` is mounted.
    #[serde(default)]
    pub unified_mountpoint: Option<PathBuf>,
    /// Directories `create` made, parents before children.
    #[serde(default)]
    pub created: Vec<PathBuf>,
}

fn read_proc(path: &str) -> Result<String, CgroupError> {
    let err = |source| CgroupError::ReadProc {
        path: path.into(),
        source,
    };
    // proc files report size 0, so read_to_string would start with a 32-byte buffer and
    // double it: 8 read(2) calls for a 3 KB mountinfo. One buffer that usually fits it all.
    let mut s = String::with_capacity(16 * 1024);
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut s))
        .map_err(err)?;
    Ok(s)
}

impl Cgroup {
    /// Works out where the container's cgroup lives in every hierarchy, the way runc
    /// interprets `cgroupsPath` (absolute: under each hierarchy's root; relative:
    /// under the runtime's own cgroup; `None`: `/<container_id>`). Reads only
    /// /proc/self/mountinfo (and /proc/self/cgroup for relative paths); creates nothing.
    pub fn resolve(cgroups_path: Option<&Path>, container_id: &str) -> Result<Cgroup, CgroupError> {
        let mountinfo = read_proc(MOUNTINFO)?;
        let inner = path::inner_path(cgroups_path, container_id)?;
        let own = if inner.absolute {
            None
        } else {
            Some(read_proc(PROC_CGROUP)?)
        };
        Self::resolve_from(&mountinfo, own.as_deref(), &inner)
    }

    fn resolve_from(
        mountinfo: &str,
        proc_cgroup: Option<&str>,
        inner: &path::Inner,
    ) -> Result<Cgroup, CgroupError> {
        let mounts = mountinfo::parse_mountinfo(mountinfo)?;
        let layout = mounts.layout()?;
        let own = proc_cgroup
            .map(mountinfo::parse_proc_cgroup)
            .transpose()?
            .unwrap_or_default();
        let mut v1 = Vec::with_capacity(mounts.v1.len());
        for m in &mounts.v1 {
            let own_path = if inner.absolute {
                None
            } else {
                own.v1_path(&m.controllers[0])
            };
            let dir = path::anchor(&m.mountpoint, &m.root, own_path, inner).ok_or_else(|| {
                CgroupError::NoOwnCgroup {
                    hierarchy: m.controllers.join(","),
                }
            })?;
            v1.push(V1Dir {
                controllers: m.controllers.clone(),
                mountpoint: m.mountpoint.clone(),
                path: dir,
            });
        }
        if layout != Layout::V2 && v1::dir(&v1, "devices").is_none() {
            return Err(CgroupError::MandatoryControllerMissing {
                controller: "devices",
            });
        }
        let (unified, unified_mountpoint) = match &mounts.v2 {
            None => (None, None),
            Some(m) => {
                let own_path = match (&own.v2, layout) {
                    _ if inner.absolute => None,
                    // v2: the own cgroup holds processes, so runc goes one level up.
                    (Some(p), Layout::V2) => Some(path::parent_cgroup(p)),
                    (Some(p), _) => Some(p.clone()),
                    (None, _) => None,
                };
                let dir = path::anchor(&m.mountpoint, &m.root, own_path.as_deref(), inner)
                    .ok_or_else(|| CgroupError::NoOwnCgroup {
                        hierarchy: "cgroup2".into(),
                    })?;
                (Some(dir), Some(m.mountpoint.clone()))
            }
        };
        Ok(Cgroup {
            layout,
            v1,
            unified,
            unified_mountpoint,
            created: Vec::new(),
        })
    }

    /// A pure-v2 cgroup at `path` inside the cgroup2 hierarchy mounted at
    /// `mountpoint`, for cgroup2 mounts that `resolve` would not pick as the
    /// container hierarchy (e.g. /sys/fs/cgroup/unified on a hybrid host).
    pub fn v2_at(mountpoint: &Path, path: &Path) -> Result<Cgroup, CgroupError> {
        if !path.starts_with(mountpoint) || path == mountpoint {
            return Err(CgroupError::InvalidName {
                name: path.display().to_string(),
                reason: "a v2 cgroup must be a directory below the cgroup2 mountpoint",
            });
        }
        Ok(Cgroup {
            layout: Layout::V2,
            v1: Vec::new(),
            unified: Some(path.to_path_buf()),
            unified_mountpoint: Some(mountpoint.to_path_buf()),
            created: Vec::new(),
        })
    }

    /// The host's cgroup layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The container's directory in the v1 hierarchy holding `controller`
    /// (`memory`, `cpu`, `name=systemd`...).
    pub fn v1_path(&self, controller: &str) -> Option<&Path> {
        v1::dir(&self.v1, controller)
    }

    /// The container's directory in the cgroup2 hierarchy, if one is mounted.
    pub fn unified_path(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// Every directory of the container's cgroup, one per hierarchy.
    pub fn paths(&self) -> Vec<&Path> {
        self.v1
            .iter()
            .map(|d| d.path.as_path())
            .chain(self.unified_path())
            .collect()
    }

    /// Creates the cgroup directories and applies `resources`; on failure removes
    /// whatever it created.
    pub fn create(&mut self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let cpuset = resources.map_or((None, None), resources::cpuset);
        let result = self.create_dirs(cpuset).and_then(|()| match resources {
            Some(r) => self.apply(r),
            None => Ok(()),
        });
        if let Err(e) = result {
            if let Err(cleanup) = self.remove_created() {
                tracing::warn!(error = %cleanup, "cgroup rollback after a failed create left directories behind");
            }
            return Err(e);
        }
        tracing::debug!(paths = ?self.paths(), created = self.created.len(), "cgroup created");
        Ok(())
    }

    fn create_dirs(&mut self, cpuset: (Option<&str>, Option<&str>)) -> Result<(), CgroupError> {
        let mut created = std::mem::take(&mut self.created);
        let result = (|| {
            for d in &self.v1 {
                let first_new = created.len();
                mkdir_tracked(&d.path, &d.mountpoint, &mut created)?;
                if d.controllers.iter().any(|c| c == "cpuset") {
                    // A new v1 cpuset has no cpus and mems: no task could join it.
                    cpuset_inherit(&d.path, &created[first_new..], cpuset)?;
                }
            }
            if let (Some(path), Some(mountpoint)) = (&self.unified, &self.unified_mountpoint) {
                let first_new = created.len();
                mkdir_tracked(path, mountpoint, &mut created)?;
                if self.layout == Layout::V2 && first_new < created.len() {
                    let available = v2::available_controllers(mountpoint)?;
                    // Enable controllers from the root down to the leaf's parent.
                    let mut dir = mountpoint.clone();
                    for c in path
                        .strip_prefix(mountpoint)
                        .unwrap_or(Path::new(""))
                        .components()
                    {
                        v2::enable_controllers(&dir, &available);
                        dir.push(c);
                    }
                }
            }
            Ok(())
        })();
        self.created = created;
        result
    }

    fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        match self.layout {
            Layout::V1 | Layout::Hybrid => v1::apply(&self.v1, r),
            Layout::V2 => v2::apply(self.v2_dir("apply resources")?, r),
        }
    }

    fn v2_dir(&self, operation: &'static str) -> Result<&Path, CgroupError> {
        self.unified_path().ok_or(CgroupError::NoHierarchy {
            operation,
            controller: "cgroup2",
        })
    }

    /// Moves `pid` (a process, with all its threads) into the cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        if pid <= 0 {
            return Err(CgroupError::InvalidResource {
                resource: "pid",
                reason: format!("{pid} is not a process id"),
            });
        }
        let pid = pid.to_string();
        for dir in self.paths() {
            files::write(dir, "cgroup.procs", &pid)?;
        }
        Ok(())
    }

    /// Applies new resource limits (`strata-oci update`); zero values mean "unchanged" as in runc.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        self.apply(resources)
    }

    /// Freezes every process of the cgroup and waits until the kernel reports it frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        match self.layout {
            Layout::V2 => freezer::freeze_v2(self.v2_dir("freeze")?),
            _ => freezer::freeze_v1(self.freezer_v1("freeze")?),
        }
    }

    /// Thaws the cgroup.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        match self.layout {
            Layout::V2 => freezer::thaw_v2(self.v2_dir("thaw")?),
            _ => freezer::thaw_v1(self.freezer_v1("thaw")?),
        }
    }

    /// Whether the cgroup is currently (fully) frozen.
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match self.layout {
            Layout::V2 => freezer::is_frozen_v2(self.v2_dir("read the freezer state")?),
            _ => freezer::is_frozen_v1(self.freezer_v1("read the freezer state")?),
        }
    }

    fn freezer_v1(&self, operation: &'static str) -> Result<&Path, CgroupError> {
        self.v1_path("freezer").ok_or(CgroupError::NoHierarchy {
            operation,
            controller: "freezer",
        })
    }

    /// Every pid in the cgroup, including its sub-cgroups, sorted.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = match self.layout {
            Layout::V2 => self.v2_dir("list processes")?,
            _ => ["pids", "freezer", "devices", "memory"]
                .iter()
                .find_map(|c| self.v1_path(c))
                .or_else(|| self.v1.first().map(|d| d.path.as_path()))
                .ok_or(CgroupError::NoHierarchy {
                    operation: "list processes",
                    controller: "any v1",
                })?,
        };
        let mut pids = Vec::new();
        collect_pids(dir, &mut pids)?;
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Usage statistics shaped like runc's `events --stats` data.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        match self.layout {
            Layout::V2 => stats::v2(self.v2_dir("read statistics")?),
            _ => stats::v1(
                self.v1_path("cpu"),
                self.v1_path("cpuacct"),
                self.v1_path("memory"),
                self.v1_path("pids"),
                self.v1_path("blkio"),
            ),
        }
    }

    /// Removes every directory `create` made, leaf first, retrying briefly while
    /// exiting tasks still hold them (EBUSY). Never removes pre-existing parents,
    /// and leaves a created parent alone once another container's cgroup lives in it.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        self.remove_created_dirs(&self.created)
    }

    fn remove_created(&mut self) -> Result<(), CgroupError> {
        let created = std::mem::take(&mut self.created);
        self.remove_created_dirs(&created)
    }

    fn remove_created_dirs(&self, created: &[PathBuf]) -> Result<(), CgroupError> {
        let leaves = self.paths();
        let deadline = Instant::now() + REMOVE_PATIENCE;
        let mut first_error = None;
        for dir in created.iter().rev() {
            let result = if leaves.contains(&dir.as_path()) {
                remove_tree(dir, deadline)
            } else {
                remove_parent(dir, deadline)
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Creates `dir` and any missing parents below `mountpoint`, recording each
/// directory it made (parents first). Tries the leaf first: usually only it is new.
fn mkdir_tracked(
    dir: &Path,
    mountpoint: &Path,
    created: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => {
            created.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir != mountpoint => {
            let parent = dir
                .parent()
                .filter(|p| p.starts_with(mountpoint))
                .ok_or_else(|| CgroupError::Mkdir {
                    path: dir.to_path_buf(),
                    source: e,
                })?;
            mkdir_tracked(parent, mountpoint, created)?;
            mkdir_tracked(dir, mountpoint, created)
        }
        Err(source) => Err(CgroupError::Mkdir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// A v1 cpuset directory starts with empty cpus and mems, and no task can join it
/// then: fill each directory we created with its parent's values (as runc does),
/// top-down, reading the first parent once. The leaf skips values the spec sets,
/// since `apply` writes them right after. A pre-existing leaf is filled only if empty.
fn cpuset_inherit(
    leaf: &Path,
    new_dirs: &[PathBuf],
    spec: (Option<&str>, Option<&str>),
) -> Result<(), CgroupError> {
    for (file, spec_value) in [("cpuset.cpus", spec.0), ("cpuset.mems", spec.1)] {
        let targets: Vec<&Path> = if new_dirs.is_empty() {
            if spec_value.is_some() || !files::read(leaf, file)?.trim().is_empty() {
                continue;
            }
            vec![leaf]
        } else {
            new_dirs
                .iter()
                .map(PathBuf::as_path)
                .filter(|d| !(spec_value.is_some() && *d == leaf))
                .collect()
        };
        let Some(parent) = targets.first().and_then(|d| d.parent()) else {
            continue;
        };
        let mut value = files::read(parent, file)?.trim().to_string();
        if value.is_empty() {
            // The parent is itself new and not filled yet (another container is creating it
            // right now, or made it and died): inherit from the nearest filled ancestor and
            // fill the empty ones on the way, as their creator would.
            let mut empty = vec![parent.to_path_buf()];
            let mut dir = parent;
            while let Some(up) = dir.parent().filter(|p| p.join(file).exists()) {
                let v = files::read(up, file)?.trim().to_string();
                if !v.is_empty() {
                    value = v;
                    break;
                }
                empty.push(up.to_path_buf());
                dir = up;
            }
            if value.is_empty() {
                // Nothing to inherit; joining will fail with ENOSPC and say why.
                continue;
            }
            for d in empty.iter().rev() {
                files::write(d, file, &value)?;
            }
        }
        for d in targets {
            files::write(d, file, &value)?;
        }
    }
    Ok(())
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    let procs = match files::read_optional(dir, "cgroup.procs")? {
        Some(p) => p,
        None => return Ok(()),
    };
    out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// How long `destroy` keeps retrying EBUSY over all directories together: enough
/// for killed tasks to finish exiting, short enough to fail fast on live ones.
const REMOVE_PATIENCE: Duration = Duration::from_secs(2);

/// rmdir with retries until `deadline`: a cgroup stays busy for a moment after its
/// last task exits.
fn rmdir_retrying(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    let mut delay = Duration::from_millis(1);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Removes a container's leaf cgroup and any sub-cgroups the container made in it.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    // Usually the leaf is empty and has no sub-cgroups: one rmdir, no directory walk (this
    // runs after every container, on the path of `run`'s exit). Busy (sub-cgroups, or tasks
    // still exiting): remove the sub-cgroups, then retry.
    match std::fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path(), deadline)?;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Remove {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    rmdir_retrying(dir, deadline)
}

/// Removes a parent directory we created, unless other cgroups now live in it.
fn remove_parent(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY)) => {
            let shared = std::fs::read_dir(dir)
                .map(|it| {
                    it.flatten()
                        .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                })
                .unwrap_or(false);
            if shared {
                tracing::debug!(path = %dir.display(), "cgroup parent still holds other cgroups; left in place");
                Ok(())
            } else {
                rmdir_retrying(dir, deadline)
            }
        }
        Err(source) => Err(CgroupError::Remove {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
