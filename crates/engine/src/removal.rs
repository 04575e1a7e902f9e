//! The end of a container: the one removal path every step uses (a failed `run`, `--rm`,
//! `strata rm`) and [`settle`], which a process that ran a workload calls once it exited.

use strata_image::rootfs::ContainerRootfs;

use crate::paths::Paths;
use crate::records::{self, Containers, Record, State};
use crate::{isolation, network};

/// The end of a container this process ran (foreground `run` or the monitor): removed with
/// `--rm`, else recorded as exited with `code`.
/// The network attachments are released off this path (network::release): the caller exits
/// as soon as the rest is done.
pub fn settle(paths: &Paths, containers: &Containers, rec: &mut Record, code: i32) {
    if rec.auto_remove {
        remove(paths, containers, rec, true);
    } else {
        network::release(paths, &rec.id, &containers.dir(&rec.id));
        rec.state = State::Exited;
        rec.exit_code = Some(code);
        rec.pid = None;
        rec.finished = Some(records::now());
        let _ = containers.save(rec);
    }
}

/// Removes everything a container has: workload and runtime state, overlay mount, image
/// hold, name and directory. Idempotent; every step runs even if an earlier one failed.
pub fn remove_all(paths: &Paths, containers: &Containers, rec: &Record) {
    remove(paths, containers, rec, false);
}

/// [`remove_all`]; `release_network`: the network DEL runs detached (network::release).
fn remove(paths: &Paths, containers: &Containers, rec: &Record, release_network: bool) {
    if let Ok(b) = isolation::backend(&rec.isolation, &paths.root) {
        b.delete(&rec.id);
    }
    remove_shared_cgroup_parent();
    let dir = containers.dir(&rec.id);
    if release_network {
        network::release(paths, &rec.id, &dir);
    } else {
        network::down(paths, &rec.id, &dir);
    }
    if let Err(e) = ContainerRootfs::open(&dir).remove() {
        tracing::warn!("remove container {}: {e}", rec.id);
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Ok(store) = strata_image::Store::open(&paths.store) {
        let _ = store.release(&rec.id);
    }
    containers.release_name(&rec.id, &rec.name);
}

/// Containers live in `/strata/<id>` cgroups (container_backend.rs); the last one out removes
/// the shared `strata` parent in every hierarchy. While another container uses it the kernel
/// refuses the rmdir (EBUSY), and a container being created makes it again (the cgroups module
/// re-creates a parent that vanished).
fn remove_shared_cgroup_parent() {
    let probe = std::path::Path::new("/strata/_");
    if let Ok(cg) = strata_container::cgroups::Cgroup::resolve(Some(probe), "_") {
        for dir in cg.paths() {
            if let Some(parent) = dir.parent().filter(|p| p.ends_with("strata")) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}
