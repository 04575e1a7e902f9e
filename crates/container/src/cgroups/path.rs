//! Where a container's cgroup lives in each hierarchy, as runc interprets
//! `linux.cgroupsPath`:
//! - absolute: relative to the root of every hierarchy;
//! - relative: under the runtime's own cgroup (from /proc/self/cgroup) in v1 and
//!   hybrid hierarchies, and under the *parent* of the own cgroup on pure v2 (runc does
//!   this because the own cgroup already holds processes, and v2 forbids enabling
//!   controllers for children of a cgroup with processes);
//! - missing: `/<container id>`.

use std::path::{Path, PathBuf};

use super::CgroupError;

/// Lexically cleans a cgroup path like runc's `utils.CleanPath`: `..` cannot climb
/// above the root, `.` and duplicate slashes vanish. Returns the components.
pub(crate) fn clean_components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// The cgroup path inside each hierarchy, before it is anchored: whether it is
/// absolute, and its cleaned components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inner {
    pub absolute: bool,
    pub components: Vec<String>,
}

/// Turns the spec's `cgroupsPath` (or its absence) into an [`Inner`] path.
pub(crate) fn inner_path(
    cgroups_path: Option<&Path>,
    container_id: &str,
) -> Result<Inner, CgroupError> {
    let (text, absolute) = match cgroups_path {
        Some(p) if !p.as_os_str().is_empty() => {
            let text = p.to_str().ok_or_else(|| CgroupError::InvalidName {
                name: p.to_string_lossy().into_owned(),
                reason: "cgroupsPath is not valid UTF-8",
            })?;
            (text.to_owned(), p.is_absolute())
        }
        _ => {
            if container_id.is_empty()
                || container_id.contains('/')
                || container_id == "."
                || container_id == ".."
            {
                return Err(CgroupError::InvalidName {
                    name: container_id.to_owned(),
                    reason: "without cgroupsPath the container id names the cgroup, so it must be a non-empty name without '/'",
                });
            }
            (format!("/{container_id}"), true)
        }
    };
    let components: Vec<String> = clean_components(&text)
        .into_iter()
        .map(str::to_owned)
        .collect();
    if components.is_empty() {
        return Err(CgroupError::InvalidName {
            name: text,
            reason: "cgroupsPath names the root of the hierarchy; a container needs its own cgroup",
        });
    }
    if let Some(bad) = components.iter().find(|c| c.contains('\0')) {
        return Err(CgroupError::InvalidName {
            name: bad.clone(),
            reason: "cgroup names cannot contain NUL bytes",
        });
    }
    Ok(Inner {
        absolute,
        components,
    })
}

/// Anchors `inner` in one hierarchy mounted at `mountpoint` whose mount root is
/// `mount_root`; `own` is the runtime's own cgroup in it (needed only for relative paths).
pub(crate) fn anchor(
    mountpoint: &Path,
    mount_root: &str,
    own: Option<&str>,
    inner: &Inner,
) -> Option<PathBuf> {
    let mut dir = mountpoint.to_path_buf();
    if !inner.absolute {
        let own = own?;
        // The own cgroup is given relative to the hierarchy root; the mount may
        // show only a subtree of it (`root` field of mountinfo), so strip that.
        let rel = match own.strip_prefix(mount_root.trim_end_matches('/')) {
            Some(rest) if mount_root != "/" => rest,
            _ => own,
        };
        for c in clean_components(rel) {
            dir.push(c);
        }
    }
    for c in &inner.components {
        dir.push(c);
    }
    Some(dir)
}

/// The parent of a cgroup path (`/a/b` → `/a`, `/` → `/`), as runc's v2 relative rule uses.
pub(crate) fn parent_cgroup(own: &str) -> String {
    let comps = clean_components(own);
    let n = comps.len().saturating_sub(1);
    format!("/{}", comps[..n].join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(p: Option<&str>, id: &str) -> Inner {
        inner_path(p.map(Path::new), id).unwrap()
    }

    #[test]
    fn missing_path_is_slash_id() {
        assert_eq!(
            inner(None, "abc"),
            Inner {
                absolute: true,
                components: vec!["abc".into()]
            }
        );
        assert_eq!(
            inner(Some(""), "abc"),
            Inner {
                absolute: true,
                components: vec!["abc".into()]
            }
        );
    }

    #[test]
    fn bad_ids_without_path_are_rejected() {
        for id in ["", "..", ".", "a/b"] {
            assert!(inner_path(None, id).is_err(), "{id:?}");
        }
        assert!(inner_path(Some(Path::new("/")), "x").is_err());
        assert!(inner_path(Some(Path::new("/..")), "x").is_err());
    }

    #[test]
    fn dotdot_cannot_escape_the_root() {
        assert_eq!(inner(Some("/../../etc/x"), "i").components, ["etc", "x"]);
        assert_eq!(
            inner(Some("a/./b//../c"), "i"),
            Inner {
                absolute: false,
                components: vec!["a".into(), "c".into()]
            }
        );
    }

    #[test]
    fn absolute_is_under_each_mountpoint() {
        let i = inner(Some("/docker/abc"), "x");
        assert_eq!(
            anchor(
                Path::new("/sys/fs/cgroup/cpu,cpuacct"),
                "/",
                Some("/user.slice"),
                &i
            )
            .unwrap(),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/docker/abc")
        );
        // The mount root does not matter for absolute paths (runc joins mountpoint and path).
        assert_eq!(
            anchor(Path::new("/sys/fs/cgroup/memory"), "/process_api", None, &i).unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory/docker/abc")
        );
    }

    #[test]
    fn relative_is_under_own_cgroup() {
        let i = inner(Some("strata/abc"), "x");
        assert_eq!(
            anchor(
                Path::new("/sys/fs/cgroup/memory"),
                "/",
                Some("/process_api/cc5a"),
                &i
            )
            .unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/cc5a/strata/abc")
        );
        // A mount of a subtree: the own path is relative to the hierarchy root.
        assert_eq!(
            anchor(
                Path::new("/sys/fs/cgroup"),
                "/kubepods/pod1",
                Some("/kubepods/pod1/c1"),
                &i
            )
            .unwrap(),
            PathBuf::from("/sys/fs/cgroup/c1/strata/abc")
        );
        assert!(anchor(Path::new("/sys/fs/cgroup"), "/", None, &i).is_none());
    }

    #[test]
    fn v2_parent_rule() {
        assert_eq!(
            parent_cgroup("/user.slice/user-0.slice/session-1.scope"),
            "/user.slice/user-0.slice"
        );
        assert_eq!(parent_cgroup("/"), "/");
        assert_eq!(parent_cgroup("/init.scope"), "/");
    }
}
