//! cgroups for containers: v1, v2 and the hybrid layout (v1 controllers plus a
//! cgroup2 mount at /sys/fs/cgroup/unified), behind one type.
//!
//! CONTRACT used by the rest of strata-container (keep these signatures stable):
//!
//! ```ignore
//! let cg = Cgroup::resolve(spec_cgroups_path, container_id)?;   // detect layout, compute paths; creates nothing
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
