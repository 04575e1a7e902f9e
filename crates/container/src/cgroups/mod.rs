//! cgroups for containers: v1, v2 and the hybrid layout (v1 controllers plus a
//! cgroup2 mount at /sys/fs/cgroup/unified), behind one type.
//!
//! CONTRACT used by the rest of strata-container (keep these signatures stable):
//!
//! ```ignore
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

mod error;
mod mountinfo;

pub use error::CgroupError;
pub use mountinfo::Layout;

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

/// One cgroup of a container, spread over every hierarchy of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// Which cgroup layout the host has.
    pub layout: Layout,
    /// v1 hierarchies (one per mount; co-mounted controllers share one entry).
    /// Empty on a pure v2 host.
    #[serde(default)]
    pub v1: Vec<V1Dir>,
    /// The directory in the cgroup2 hierarchy: the whole cgroup on v2, the
    /// process-tracking twin on hybrid hosts, `None` on pure v1.
    #[serde(default)]
    pub unified: Option<PathBuf>,
    /// Directories `create` made, parents before children; `destroy` removes them in reverse.
    #[serde(default)]
    pub created: Vec<PathBuf>,
}

/// The container's directory in one v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Dir {
    /// Controllers of this hierarchy (`cpu`, `cpuacct`, ... or `name=systemd`).
    pub controllers: Vec<String>,
    /// Absolute path of the container's cgroup directory in that hierarchy.
    pub path: PathBuf,
}

/// runc `events --stats` shaped statistics (the `data` object).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {}

impl Cgroup {
    /// Works out where the container's cgroup lives in every hierarchy, the way runc
    /// interprets `cgroupsPath`. Reads only /proc/self/mountinfo and /proc/self/cgroup;
    /// creates nothing.
    pub fn resolve(cgroups_path: Option<&Path>, container_id: &str) -> Result<Cgroup, CgroupError> {
        let _ = (cgroups_path, container_id);
        Err(CgroupError::NotImplemented("resolve"))
    }

    /// Creates the cgroup directories and applies `resources`; on failure removes
    /// whatever it created.
    pub fn create(&mut self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let _ = resources;
        Err(CgroupError::NotImplemented("create"))
    }

    /// Moves `pid` (a process, with all its threads) into the cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        let _ = pid;
        Err(CgroupError::NotImplemented("add_process"))
    }

    /// Applies new resource limits (`strata-oci update`); zero values mean "unchanged" as in runc.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let _ = resources;
        Err(CgroupError::NotImplemented("update"))
    }

    /// Freezes every process of the cgroup and waits until the kernel reports it frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        Err(CgroupError::NotImplemented("freeze"))
    }

    /// Thaws the cgroup.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        Err(CgroupError::NotImplemented("thaw"))
    }

    /// Whether the cgroup is currently frozen.
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        Err(CgroupError::NotImplemented("is_frozen"))
    }

    /// Every pid in the cgroup, including its sub-cgroups.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        Err(CgroupError::NotImplemented("pids"))
    }

    /// Usage statistics shaped like runc's `events --stats` data.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        Err(CgroupError::NotImplemented("stats"))
    }

    /// Removes every directory `create` made, leaf first, retrying briefly while
    /// exiting tasks still hold them (EBUSY). Never removes pre-existing parents.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        Err(CgroupError::NotImplemented("destroy"))
    }
}
