//! Detecting the cgroup layout from /proc/self/mountinfo and the process's own
//! cgroups from /proc/self/cgroup. Both are read once per `Cgroup::resolve`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::CgroupError;

/// The cgroup layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Only v1 hierarchies.
    V1,
    /// A single cgroup2 hierarchy.
    V2,
    /// v1 controllers plus a (usually controller-less) cgroup2 mount, systemd's "hybrid".
    Hybrid,
}

/// v1 controllers strata knows how to join; anything else in a mount's super
/// options (`rw`, `clone_children`, `release_agent=`...) is not a controller.
const V1_CONTROLLERS: &[&str] = &[
    "cpuset",
    "cpu",
    "cpuacct",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
    "name=systemd",
];

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// v1 controllers of the hierarchy (empty for cgroup2).
    pub controllers: Vec<String>,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Which cgroup of the hierarchy is the root of the mount (usually `/`).
    pub root: String,
}

/// Every cgroup hierarchy mounted in this mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mounts {
    pub v1: Vec<Mount>,
    pub v2: Option<Mount>,
}

impl Mounts {
    /// The layout these mounts make up.
    pub fn layout(&self) -> Result<Layout, CgroupError> {
        match (self.v1.is_empty(), self.v2.is_some()) {
            (true, true) => Ok(Layout::V2),
            (false, true) => Ok(Layout::Hybrid),
            (false, false) => Ok(Layout::V1),
            (true, false) => Err(CgroupError::NoCgroupMounts),
        }
    }
}

/// Undoes the octal escapes (`\040` for space...) the kernel uses in mountinfo paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                if v <= 255 {
                    out.push(v as u8);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Prefers mounts at the conventional places, so a stray bind mount elsewhere
/// (an image build, a test) never wins over /sys/fs/cgroup.
fn rank(mountpoint: &str) -> u8 {
    if mountpoint == "/sys/fs/cgroup" || mountpoint == "/sys/fs/cgroup/unified" {
        0
    } else if mountpoint.starts_with("/sys/fs/cgroup/") {
        1
    } else {
        2
    }
}

/// Parses /proc/self/mountinfo content into the cgroup hierarchies it mounts.
pub(crate) fn parse_mountinfo(content: &str) -> Result<Mounts, CgroupError> {
    let mut v1: Vec<(u8, Mount)> = Vec::new();
    let mut v2: Option<(u8, Mount)> = None;
    for line in content.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = || CgroupError::Malformed {
            file: "/proc/self/mountinfo",
            line: line.chars().take(200).collect(),
        };
        // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
        let (left, right) = line.split_once(" - ").ok_or_else(malformed)?;
        let mut right = right.split(' ');
        let fstype = right.next().ok_or_else(malformed)?;
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let _source = right.next().ok_or_else(malformed)?;
        let super_opts = right.next().unwrap_or("");
        let left: Vec<&str> = left.split(' ').collect();
        if left.len() < 6 {
            return Err(malformed());
        }
        let root = unescape(left[3]);
        let mountpoint = unescape(left[4]);
        let r = rank(&mountpoint);
        let mount = |controllers| Mount {
            controllers,
            mountpoint: PathBuf::from(&mountpoint),
            root: root.clone(),
        };
        if fstype == "cgroup2" {
            if !matches!(&v2, Some((best, _)) if *best <= r) {
                v2 = Some((r, mount(Vec::new())));
            }
            continue;
        }
        let controllers: Vec<String> = super_opts
            .split(',')
            .filter(|o| V1_CONTROLLERS.contains(o))
            .map(str::to_owned)
            .collect();
        if controllers.is_empty() {
            continue;
        }
        // The same hierarchy may be mounted twice; keep the best-placed mount.
        if let Some(existing) = v1.iter_mut().find(|(_, m)| m.controllers == controllers) {
            if r < existing.0 {
                *existing = (r, mount(controllers));
            }
            continue;
        }
        v1.push((r, mount(controllers)));
    }
    Ok(Mounts {
        v1: v1.into_iter().map(|(_, m)| m).collect(),
        v2: v2.map(|(_, m)| m),
    })
}

/// The process's own cgroup in each hierarchy, from /proc/self/cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OwnCgroups {
    /// (controllers of the hierarchy, path) for v1 lines.
    pub v1: Vec<(Vec<String>, String)>,
    /// The `0::/path` line.
    pub v2: Option<String>,
}

impl OwnCgroups {
    /// Own cgroup in the v1 hierarchy that holds `controller`.
    pub fn v1_path(&self, controller: &str) -> Option<&str> {
        self.v1
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == controller))
            .map(|(_, p)| p.as_str())
    }
}

/// Parses /proc/self/cgroup content.
pub(crate) fn parse_proc_cgroup(content: &str) -> Result<OwnCgroups, CgroupError> {
    let mut own = OwnCgroups::default();
    for line in content.lines() {
        if line.is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CgroupError::Malformed {
                file: "/proc/self/cgroup",
                line: line.chars().take(200).collect(),
            });
        };
        if controllers.is_empty() {
            own.v2 = Some(path.to_owned());
        } else {
            own.v1.push((
                controllers.split(',').map(str::to_owned).collect(),
                path.to_owned(),
            ));
        }
    }
    Ok(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine: separate v1 controllers plus cgroup2 at /sys/fs/cgroup/unified.
    pub(crate) const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd v1 host: cpu,cpuacct and net_cls,net_prio co-mounted.
    const V1: &str = "\
25 18 0:21 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:22 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:26 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,net_cls,net_prio
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,devices
";

    /// A pure v2 host (and a stray second cgroup2 mount that must not win).
    const V2: &str = "\
26 18 0:23 / /tmp/some\\040dir rw - cgroup2 cgroup2 rw
27 18 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_layout_with_separate_controllers() {
        let m = parse_mountinfo(HYBRID).unwrap();
        assert_eq!(m.layout().unwrap(), Layout::Hybrid);
        assert_eq!(m.v1.len(), 9);
        let cpu = m.v1.iter().find(|h| h.controllers == ["cpu"]).unwrap();
        assert_eq!(cpu.mountpoint, PathBuf::from("/sys/fs/cgroup/cpu"));
        let sd =
            m.v1.iter()
                .find(|h| h.controllers == ["name=systemd"])
                .unwrap();
        assert_eq!(sd.mountpoint, PathBuf::from("/sys/fs/cgroup/systemd"));
        assert_eq!(
            m.v2.unwrap().mountpoint,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn v1_layout_with_comounted_controllers() {
        let m = parse_mountinfo(V1).unwrap();
        assert_eq!(m.layout().unwrap(), Layout::V1);
        let cpu =
            m.v1.iter()
                .find(|h| h.controllers.contains(&"cpuacct".to_string()))
                .unwrap();
        assert_eq!(cpu.controllers, ["cpu", "cpuacct"]);
        assert_eq!(cpu.mountpoint, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        let sd =
            m.v1.iter()
                .find(|h| h.controllers == ["name=systemd"])
                .unwrap();
        assert_eq!(sd.mountpoint, PathBuf::from("/sys/fs/cgroup/systemd"));
        assert!(m.v2.is_none());
    }

    #[test]
    fn v2_layout_prefers_sys_fs_cgroup() {
        let m = parse_mountinfo(V2).unwrap();
        assert_eq!(m.layout().unwrap(), Layout::V2);
        assert_eq!(m.v2.unwrap().mountpoint, PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn mountpoint_escapes_are_decoded() {
        let m =
            parse_mountinfo("26 18 0:23 /a\\040b /tmp/x\\040y rw - cgroup2 cgroup2 rw\n").unwrap();
        let v2 = m.v2.unwrap();
        assert_eq!(v2.mountpoint, PathBuf::from("/tmp/x y"));
        assert_eq!(v2.root, "/a b");
    }

    #[test]
    fn no_cgroup_mounts_is_an_error() {
        let m = parse_mountinfo("23 1 0:21 / /sys rw - sysfs sysfs rw\n").unwrap();
        assert!(matches!(m.layout(), Err(CgroupError::NoCgroupMounts)));
    }

    #[test]
    fn hostile_mountinfo_lines_do_not_panic() {
        for line in [
            "",
            "-",
            " - cgroup",
            "1 2 3 - cgroup2",
            "a - cgroup2 x y",
            "\\",
            "1 2 3 4 \\07 6 - cgroup x rw,cpu",
            "\\777 \\7",
        ] {
            let _ = parse_mountinfo(line);
            let _ = parse_proc_cgroup(line);
        }
        assert!(parse_mountinfo("1 2 3 - cgroup2 c rw").is_err());
    }

    #[test]
    fn proc_self_cgroup_hybrid() {
        let own = parse_proc_cgroup("9:name=systemd:/\n4:memory:/process_api/cc5a\n1:cpu,cpuacct:/user.slice\n0::/init.scope\n").unwrap();
        assert_eq!(own.v1_path("memory"), Some("/process_api/cc5a"));
        assert_eq!(own.v1_path("cpuacct"), Some("/user.slice"));
        assert_eq!(own.v1_path("name=systemd"), Some("/"));
        assert_eq!(own.v2.as_deref(), Some("/init.scope"));
        assert!(parse_proc_cgroup("garbage\n").is_err());
    }
}
