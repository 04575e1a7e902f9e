//! Applying resources to cgroup v1 hierarchies (also the v1 half of hybrid hosts),
//! file by file as runc's `libcontainer/cgroups/fs` does.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, LinuxThrottleDevice};
use serde::{Deserialize, Serialize};

use super::devices;
use super::files::{self, write};
use super::resources::{self, BlockIo, Cpu, Memory};
use super::CgroupError;

/// The container's directory in one v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Dir {
    /// Controllers of this hierarchy (`cpu`, `cpuacct`, ... or `name=systemd`).
    pub controllers: Vec<String>,
    /// Where the hierarchy is mounted.
    pub mountpoint: PathBuf,
    /// The container's cgroup directory in it.
    pub path: PathBuf,
}

/// The container's directory in the hierarchy holding `controller`.
pub(crate) fn dir<'a>(dirs: &'a [V1Dir], controller: &str) -> Option<&'a Path> {
    dirs.iter()
        .find(|d| d.controllers.iter().any(|c| c == controller))
        .map(|d| d.path.as_path())
}

fn need<'a>(
    dirs: &'a [V1Dir],
    controller: &'static str,
    resource: &'static str,
) -> Result<&'a Path, CgroupError> {
    dir(dirs, controller).ok_or(CgroupError::ControllerMissing {
        resource,
        controller,
        detail: "no cgroup v1 hierarchy for it in /proc/self/mountinfo",
    })
}

/// Writes every resource set in `r`. Unset and zero values are not written.
pub(crate) fn apply(dirs: &[V1Dir], r: &LinuxResources) -> Result<(), CgroupError> {
    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(CgroupError::InvalidResource {
            resource: "unified",
            reason: "linux.resources.unified holds cgroup v2 files, but this host's controllers are cgroup v1".into(),
        });
    }
    if let Some(m) = Memory::from(r) {
        memory(need(dirs, "memory", "memory")?, &m)?;
    }
    if let Some(c) = Cpu::from(r) {
        cpu(need(dirs, "cpu", "cpu")?, &c)?;
    }
    let (cpus, mems) = resources::cpuset(r);
    if cpus.is_some() || mems.is_some() {
        let d = need(dirs, "cpuset", "cpuset")?;
        if let Some(c) = cpus {
            write(d, "cpuset.cpus", c)?;
        }
        if let Some(m) = mems {
            write(d, "cpuset.mems", m)?;
        }
    }
    if let Some(limit) = resources::pids_limit(r) {
        write(need(dirs, "pids", "pids.limit")?, "pids.max", &limit)?;
    }
    if let Some(b) = BlockIo::from(r) {
        blkio(need(dirs, "blkio", "blockIO")?, &b)?;
    }
    if let Some(limits) = r.hugepage_limits().as_ref().filter(|l| !l.is_empty()) {
        let d = need(dirs, "hugetlb", "hugepageLimits")?;
        for l in limits {
            write(
                d,
                &format!("hugetlb.{}.limit_in_bytes", l.page_size()),
                &l.limit().to_string(),
            )?;
        }
    }
    if let Some(net) = r.network().as_ref() {
        if let Some(id) = net.class_id().filter(|id| *id != 0) {
            write(
                need(dirs, "net_cls", "network.classID")?,
                "net_cls.classid",
                &id.to_string(),
            )?;
        }
        if let Some(prios) = net.priorities().as_ref().filter(|p| !p.is_empty()) {
            let d = need(dirs, "net_prio", "network.priorities")?;
            for p in prios {
                write(
                    d,
                    "net_prio.ifpriomap",
                    &format!("{} {}", p.name(), p.priority()),
                )?;
            }
        }
    }
    if let Some(rdma) = r.rdma().as_ref().filter(|m| !m.is_empty()) {
        let d = need(dirs, "rdma", "rdma")?;
        for (dev, l) in rdma {
            let mut line = dev.clone();
            if let Some(h) = l.hca_handles() {
                line += &format!(" hca_handle={h}");
            }
            if let Some(o) = l.hca_objects() {
                line += &format!(" hca_object={o}");
            }
            write(d, "rdma.max", &line)?;
        }
    }
    if let Some(rules) = r.devices().as_ref() {
        let rules = devices::parse_rules(rules)?;
        let d = dir(dirs, "devices").ok_or(CgroupError::MandatoryControllerMissing {
            controller: "devices",
        })?;
        // runc's order: deny everything, then replay the rules in order (engines'
        // lists usually start with that deny-all already: don't write it twice).
        let starts_with_deny_all = rules
            .first()
            .is_some_and(|r| !r.allow && r.v1_line() == "a");
        let mut writes: Vec<(&str, String)> = Vec::with_capacity(rules.len() + 1);
        if !starts_with_deny_all {
            writes.push(("devices.deny", "a".into()));
        }
        for rule in &rules {
            let file = if rule.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            writes.push((file, rule.v1_line()));
        }
        // In order, one open per run of rules for the same file (usually: deny all, then
        // every allow rule through one fd).
        for run in writes.chunk_by(|a, b| a.0 == b.0) {
            let lines: Vec<&str> = run.iter().map(|(_, l)| l.as_str()).collect();
            files::write_each(d, run[0].0, &lines)?;
        }
    }
    Ok(())
}

fn memory(d: &Path, m: &Memory) -> Result<(), CgroupError> {
    const LIMIT: &str = "memory.limit_in_bytes";
    const SWAP: &str = "memory.memsw.limit_in_bytes";
    let mut swap = m.swap;
    let has_memsw = || d.join(SWAP).exists();
    // Unlimited memory with swap unset means unlimited swap too (runc).
    if m.limit == -1 && swap == 0 && has_memsw() {
        swap = -1;
    }
    if swap != 0 && !has_memsw() {
        // Without swap accounting, memory == memory+swap (or -1) asks for nothing
        // the kernel could enforce differently; anything else cannot be honoured.
        if swap == m.limit || swap == -1 {
            swap = 0;
        } else {
            return Err(CgroupError::ControllerMissing {
                resource: "memory.swap",
                controller: "memory",
                detail: "memory.memsw.limit_in_bytes is absent: the kernel runs without swap accounting (boot with swapaccount=1), so only swap == limit can be honoured",
            });
        }
    }
    let set_swap = |v: i64| {
        if v != 0 {
            write(d, SWAP, &v.to_string())
        } else {
            Ok(())
        }
    };
    let set_limit = |v: i64| {
        if v != 0 {
            write(d, LIMIT, &v.to_string())
        } else {
            Ok(())
        }
    };
    // The kernel requires limit <= memsw at all times, so the write order depends on
    // whether the new swap limit is above the current memory limit.
    let mut swap_first = false;
    if m.limit != 0 && swap != 0 {
        let cur = files::parse_u64(d, LIMIT, &files::read(d, LIMIT)?)?;
        swap_first = swap == -1 || cur < swap as u64;
    }
    if swap_first {
        set_swap(swap)?;
        set_limit(m.limit)?;
    } else {
        set_limit(m.limit)?;
        set_swap(swap)?;
    }
    if m.reservation != 0 {
        write(d, "memory.soft_limit_in_bytes", &m.reservation.to_string())?;
    }
    if m.disable_oom_killer {
        write(d, "memory.oom_control", "1")?;
    }
    if let Some(s) = m.swappiness {
        if s > 100 {
            return Err(CgroupError::InvalidResource {
                resource: "memory.swappiness",
                reason: format!("{s} is above 100"),
            });
        }
        write(d, "memory.swappiness", &s.to_string())?;
    }
    Ok(())
}

fn cpu(d: &Path, c: &Cpu) -> Result<(), CgroupError> {
    if c.shares != 0 {
        write(d, "cpu.shares", &c.shares.to_string())?;
        // The kernel clamps silently; runc reports it, so do we.
        let got = files::parse_u64(d, "cpu.shares", &files::read(d, "cpu.shares")?)?;
        if got != c.shares {
            let bound = if c.shares > got { "maximum" } else { "minimum" };
            return Err(CgroupError::InvalidResource {
                resource: "cpu.shares",
                reason: format!(
                    "{} is out of range: the {bound} allowed cpu-shares is {got}",
                    c.shares
                ),
            });
        }
    }
    let mut period_pending = false;
    if c.period != 0 {
        match write(d, "cpu.cfs_period_us", &c.period.to_string()) {
            Ok(()) => {}
            // A smaller period can exceed the parent's quota/period ratio until the
            // quota is lowered too; retry after writing the quota (runc does the same).
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) && c.quota != 0 =>
            {
                period_pending = true
            }
            Err(e) => return Err(e),
        }
    }
    if c.quota != 0 {
        write(d, "cpu.cfs_quota_us", &c.quota.to_string())?;
        if period_pending {
            write(d, "cpu.cfs_period_us", &c.period.to_string())?;
        }
    }
    if let Some(b) = c.burst {
        write(d, "cpu.cfs_burst_us", &b.to_string())?;
    }
    if c.rt_period != 0 {
        write(d, "cpu.rt_period_us", &c.rt_period.to_string())?;
    }
    if c.rt_runtime != 0 {
        write(d, "cpu.rt_runtime_us", &c.rt_runtime.to_string())?;
    }
    if let Some(idle) = c.idle {
        write(d, "cpu.idle", &idle.to_string())?;
    }
    Ok(())
}

fn blkio(d: &Path, b: &BlockIo) -> Result<(), CgroupError> {
    // CFQ exposes blkio.weight; with BFQ the file is blkio.bfq.weight.
    let write_weight = |base: &str, value: &str| match write(d, &format!("blkio.{base}"), value) {
        Err(CgroupError::Write { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            write(d, &format!("blkio.bfq.{base}"), value)
        }
        other => other,
    };
    if b.weight != 0 {
        write_weight("weight", &b.weight.to_string())?;
    }
    if b.leaf_weight != 0 {
        write(d, "blkio.leaf_weight", &b.leaf_weight.to_string())?;
    }
    for wd in b.weight_devices {
        if let Some(w) = wd.weight() {
            write_weight(
                "weight_device",
                &format!("{}:{} {}", wd.major(), wd.minor(), w),
            )?;
        }
        if let Some(w) = wd.leaf_weight() {
            write(
                d,
                "blkio.leaf_weight_device",
                &format!("{}:{} {}", wd.major(), wd.minor(), w),
            )?;
        }
    }
    let throttle = |file: &str, devs: &[LinuxThrottleDevice]| -> Result<(), CgroupError> {
        for t in devs {
            write(
                d,
                file,
                &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
            )?;
        }
        Ok(())
    };
    throttle("blkio.throttle.read_bps_device", b.read_bps)?;
    throttle("blkio.throttle.write_bps_device", b.write_bps)?;
    throttle("blkio.throttle.read_iops_device", b.read_iops)?;
    throttle("blkio.throttle.write_iops_device", b.write_iops)?;
    Ok(())
}

/// Write order and skipping logic against plain files (the real v1 files are
/// exercised by tests/cgroups_host.rs; these cover what this host cannot show,
/// such as a kernel without swap accounting).
#[cfg(test)]
mod tests {
    use super::*;

    fn fake(files: &[(&str, &str)]) -> (tempfile::TempDir, Vec<V1Dir>) {
        let d = tempfile::tempdir().unwrap();
        for (f, v) in files {
            std::fs::write(d.path().join(f), v).unwrap();
        }
        let dirs = ["memory", "cpu", "pids", "devices", "blkio"]
            .iter()
            .map(|c| V1Dir {
                controllers: vec![c.to_string()],
                mountpoint: PathBuf::from("/"),
                path: d.path().to_path_buf(),
            })
            .collect();
        (d, dirs)
    }

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn swap_without_swap_accounting() {
        let (d, dirs) = fake(&[("memory.limit_in_bytes", "9223372036854771712")]);
        apply(&dirs, &res(r#"{"memory":{"limit":1000,"swap":1000}}"#)).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("memory.limit_in_bytes")).unwrap(),
            "1000"
        );
        assert!(!d.path().join("memory.memsw.limit_in_bytes").exists());
        let err = apply(&dirs, &res(r#"{"memory":{"limit":1000,"swap":3000}}"#)).unwrap_err();
        assert!(err.to_string().contains("swapaccount"), "{err}");
    }

    #[test]
    fn hugetlb_missing_is_a_clear_error() {
        let (_d, dirs) = fake(&[]);
        let err = apply(
            &dirs,
            &res(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":1}]}"#),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::ControllerMissing {
                    controller: "hugetlb",
                    ..
                }
            ),
            "{err}"
        );
        let err = apply(&dirs, &res(r#"{"unified":{"memory.high":"1"}}"#)).unwrap_err();
        assert!(err.to_string().contains("cgroup v2"), "{err}");
    }

    #[test]
    fn blkio_weight_falls_back_to_bfq() {
        let (d, dirs) = fake(&[("blkio.bfq.weight", "")]);
        apply(&dirs, &res(r#"{"blockIO":{"weight":300}}"#)).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("blkio.bfq.weight")).unwrap(),
            "300"
        );
        assert!(!d.path().join("blkio.weight").exists());
    }
}
