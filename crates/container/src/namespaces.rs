//! Which namespaces a container creates and which it joins, and joining them in the order
//! runc's nsexec uses (user first, so the rest are joined with the user namespace's rights).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{Linux, LinuxNamespaceType};

/// The namespace part of a container's start.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Namespaces created by clone(2) (everything new except cgroup and time).
    pub clone_flags: CloneFlags,
    /// A new cgroup namespace, unshared by the child once it is inside its cgroup.
    pub new_cgroup: bool,
    /// A new time namespace, unshared before the clone (it applies to children only).
    pub new_time: bool,
    /// A new user namespace (the parent writes the id maps).
    pub new_user: bool,
    /// A new mount namespace.
    pub new_mount: bool,
    /// Existing namespaces to join, in join order.
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
}

/// Errors joining namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("open {kind} namespace {path}: {source}")]
    Open {
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("join (setns) {kind} namespace {path}: {source}")]
    Join {
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn join_rank(t: LinuxNamespaceType) -> u8 {
    match t {
        LinuxNamespaceType::User => 0,
        LinuxNamespaceType::Ipc => 1,
        LinuxNamespaceType::Uts => 2,
        LinuxNamespaceType::Network => 3,
        LinuxNamespaceType::Pid => 4,
        LinuxNamespaceType::Cgroup => 5,
        LinuxNamespaceType::Time => 6,
        // Last: after it, host paths no longer resolve (the fds are opened before anyway).
        LinuxNamespaceType::Mount => 7,
    }
}

/// The clone/setns flag of a namespace type.
pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

impl Plan {
    /// Builds the plan from `linux.namespaces`.
    pub fn from_spec(linux: Option<&Linux>) -> Plan {
        let mut plan = Plan {
            clone_flags: CloneFlags::empty(),
            new_cgroup: false,
            new_time: false,
            new_user: false,
            new_mount: false,
            join: Vec::new(),
        };
        let nss = linux.and_then(|l| l.namespaces().as_ref());
        for ns in nss.into_iter().flatten() {
            match ns.path() {
                Some(p) => plan.join.push((ns.typ(), p.clone())),
                None => match ns.typ() {
                    LinuxNamespaceType::Cgroup => plan.new_cgroup = true,
                    LinuxNamespaceType::Time => plan.new_time = true,
                    t => {
                        plan.clone_flags |= flag(t);
                        plan.new_user |= t == LinuxNamespaceType::User;
                        plan.new_mount |= t == LinuxNamespaceType::Mount;
                    }
                },
            }
        }
        plan.join.sort_by_key(|(t, _)| join_rank(*t));
        plan
    }
}

/// Opens every namespace to join first (paths may vanish once the mount namespace changes),
/// then setns(2)s into them in order.
pub fn join(list: &[(LinuxNamespaceType, PathBuf)]) -> Result<(), NamespaceError> {
    let mut fds: Vec<(LinuxNamespaceType, &Path, OwnedFd)> = Vec::with_capacity(list.len());
    for (t, p) in list {
        let f = std::fs::File::open(p).map_err(|source| NamespaceError::Open {
            kind: crate::spec::ns_name(*t),
            path: p.clone(),
            source,
        })?;
        fds.push((*t, p, f.into()));
    }
    for (t, p, fd) in &fds {
        nix::sched::setns(fd.as_fd(), flag(*t)).map_err(|source| NamespaceError::Join {
            kind: crate::spec::ns_name(*t),
            path: p.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_orders_user_first_and_splits_cgroup_time() {
        let linux: Linux = serde_json::from_value(serde_json::json!({
            "namespaces": [
                {"type": "mount", "path": "/proc/1/ns/mnt"},
                {"type": "pid"},
                {"type": "network", "path": "/proc/1/ns/net"},
                {"type": "user", "path": "/proc/1/ns/user"},
                {"type": "cgroup"},
                {"type": "time"}
            ]
        }))
        .unwrap();
        let p = Plan::from_spec(Some(&linux));
        let order: Vec<_> = p.join.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            order,
            vec![
                LinuxNamespaceType::User,
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Mount
            ]
        );
        assert_eq!(p.clone_flags, CloneFlags::CLONE_NEWPID);
        assert!(p.new_cgroup && p.new_time && !p.new_user && !p.new_mount);
    }
}
