//! Applying resources to a cgroup v2 directory, as runc's `libcontainer/cgroups/fs2`.

use std::path::Path;

use oci_spec::runtime::{LinuxResources, LinuxThrottleDevice};

use super::convert;
use super::devices;
use super::files::{self, write};
use super::resources::{self, BlockIo, Cpu, Memory};
use super::{bpf, CgroupError};

/// A write whose file is missing means the controller is not enabled for this
/// cgroup; name the controller instead of the file.
fn write_ctl(
    d: &Path,
    controller: &'static str,
    resource: &'static str,
    file: &str,
    value: &str,
) -> Result<(), CgroupError> {
    match write(d, file, value) {
        Err(CgroupError::Write { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Err(CgroupError::ControllerMissing {
                resource,
                controller,
                detail: "not listed in the parent's cgroup.subtree_control (cgroup2)",
            })
        }
        other => other,
    }
}

/// Writes every resource set in `r` to the v2 directory `d`.
pub(crate) fn apply(d: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(m) = Memory::from(r) {
        memory(d, &m)?;
    }
    if let Some(c) = Cpu::from(r) {
        cpu(d, &c)?;
    }
    let (cpus, mems) = resources::cpuset(r);
    if let Some(c) = cpus {
        write_ctl(d, "cpuset", "cpu.cpus", "cpuset.cpus", c)?;
    }
    if let Some(m) = mems {
        write_ctl(d, "cpuset", "cpu.mems", "cpuset.mems", m)?;
    }
    if let Some(limit) = resources::pids_limit(r) {
        write_ctl(d, "pids", "pids.limit", "pids.max", &limit)?;
    }
    if let Some(b) = BlockIo::from(r) {
        io(d, &b)?;
    }
    if let Some(limits) = r.hugepage_limits().as_ref().filter(|l| !l.is_empty()) {
        for l in limits {
            let limit = if l.limit() < 0 {
                "max".to_owned()
            } else {
                l.limit().to_string()
            };
            write_ctl(
                d,
                "hugetlb",
                "hugepageLimits",
                &format!("hugetlb.{}.max", l.page_size()),
                &limit,
            )?;
        }
    }
    if let Some(net) = r.network().as_ref() {
        if net.class_id().is_some_and(|c| c != 0)
            || net.priorities().as_ref().is_some_and(|p| !p.is_empty())
        {
            return Err(CgroupError::ControllerMissing {
                resource: "network",
                controller: "net_cls/net_prio",
                detail: "cgroup v2 has no net_cls or net_prio controller",
            });
        }
    }
    if let Some(rdma) = r.rdma().as_ref().filter(|m| !m.is_empty()) {
        for (dev, l) in rdma {
            let mut line = dev.clone();
            if let Some(h) = l.hca_handles() {
                line += &format!(" hca_handle={h}");
            }
            if let Some(o) = l.hca_objects() {
                line += &format!(" hca_object={o}");
            }
            write_ctl(d, "rdma", "rdma", "rdma.max", &line)?;
        }
    }
    if let Some(unified) = r.unified().as_ref() {
        for (file, value) in unified {
            if file.contains('/') || file.starts_with('.') || file.is_empty() {
                return Err(CgroupError::InvalidResource {
                    resource: "unified",
                    reason: format!("{file:?} is not a cgroup file name"),
                });
            }
            write(d, file, value)?;
        }
    }
    if let Some(rules) = r.devices().as_ref() {
        let rules = devices::parse_rules(rules)?;
        bpf::apply_device_filter(d, &devices::program(&rules))?;
    }
    Ok(())
}

fn memory(d: &Path, m: &Memory) -> Result<(), CgroupError> {
    let swap = convert::memory_swap_to_v2(m.swap, m.limit)?;
    let mut swap_str = convert::v2_limit(swap);
    if swap_str.is_none() && swap == 0 && m.swap > 0 {
        // memory == memory+swap: no swap at all.
        swap_str = Some("0".to_owned());
    }
    if let Some(s) = swap_str {
        match write(d, "memory.swap.max", &s) {
            // Without swap accounting, "no swap" and "unlimited swap" are what we have anyway.
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT)
                    && (s == "max" || s == "0")
                    && d.join("memory.max").exists() => {}
            Err(e) => return Err(e),
            Ok(()) => {}
        }
    }
    if let Some(v) = convert::v2_limit(m.limit) {
        write_ctl(d, "memory", "memory.limit", "memory.max", &v)?;
    }
    if let Some(v) = convert::v2_limit(m.reservation) {
        write_ctl(d, "memory", "memory.reservation", "memory.low", &v)?;
    }
    if m.disable_oom_killer || m.swappiness.is_some() {
        tracing::warn!(cgroup = %d.display(), "memory.disableOOMKiller and memory.swappiness have no cgroup v2 equivalent; ignored");
    }
    Ok(())
}

fn cpu(d: &Path, c: &Cpu) -> Result<(), CgroupError> {
    if c.rt_runtime != 0 || c.rt_period != 0 {
        return Err(CgroupError::ControllerMissing {
            resource: "cpu.realtimeRuntime",
            controller: "cpu",
            detail: "cgroup v2 has no realtime scheduling limits",
        });
    }
    if c.shares != 0 {
        let weight = convert::cpu_shares_to_weight(c.shares);
        write_ctl(d, "cpu", "cpu.shares", "cpu.weight", &weight.to_string())?;
    }
    if c.quota != 0 || c.period != 0 {
        let mut max = if c.quota > 0 {
            c.quota.to_string()
        } else {
            "max".to_owned()
        };
        if c.period != 0 {
            max += &format!(" {}", c.period);
        }
        write_ctl(d, "cpu", "cpu.quota", "cpu.max", &max)?;
    }
    if let Some(b) = c.burst {
        write_ctl(d, "cpu", "cpu.burst", "cpu.max.burst", &b.to_string())?;
    }
    if let Some(idle) = c.idle {
        write_ctl(d, "cpu", "cpu.idle", "cpu.idle", &idle.to_string())?;
    }
    Ok(())
}

fn io(d: &Path, b: &BlockIo) -> Result<(), CgroupError> {
    // BFQ takes the blkio weight as is; otherwise io.weight with runc's conversion.
    let bfq = (b.weight != 0 || !b.weight_devices.is_empty()) && d.join("io.bfq.weight").exists();
    if b.weight != 0 {
        if bfq {
            write(d, "io.bfq.weight", &b.weight.to_string())?;
        } else {
            write_ctl(
                d,
                "io",
                "blockIO.weight",
                "io.weight",
                &convert::blkio_weight_to_io_weight(b.weight).to_string(),
            )?;
        }
    }
    for wd in b.weight_devices {
        if let Some(w) = wd.weight() {
            let (file, w) = if bfq {
                ("io.bfq.weight", u64::from(w))
            } else {
                ("io.weight", convert::blkio_weight_to_io_weight(w))
            };
            write_ctl(
                d,
                "io",
                "blockIO.weightDevice",
                file,
                &format!("{}:{} {}", wd.major(), wd.minor(), w),
            )?;
        }
    }
    let throttle = |key: &str, devs: &[LinuxThrottleDevice]| -> Result<(), CgroupError> {
        for t in devs {
            let rate = if t.rate() == 0 {
                "max".to_owned()
            } else {
                t.rate().to_string()
            };
            write_ctl(
                d,
                "io",
                "blockIO.throttle",
                "io.max",
                &format!("{}:{} {key}={rate}", t.major(), t.minor()),
            )?;
        }
        Ok(())
    };
    throttle("rbps", b.read_bps)?;
    throttle("wbps", b.write_bps)?;
    throttle("riops", b.read_iops)?;
    throttle("wiops", b.write_iops)?;
    Ok(())
}

/// Enables every controller the hierarchy offers for the children of `dir`
/// (runc's `CreateCgroupPath`); controllers that cannot be enabled are left out,
/// and a resource needing them fails later with a clear error.
pub(crate) fn enable_controllers(dir: &Path, available: &[String]) {
    if available.is_empty() {
        return;
    }
    let all = available
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    if write(dir, "cgroup.subtree_control", &all).is_err() {
        for c in available {
            let _ = write(dir, "cgroup.subtree_control", &format!("+{c}"));
        }
    }
}

/// The controllers the cgroup2 root offers.
pub(crate) fn available_controllers(mountpoint: &Path) -> Result<Vec<String>, CgroupError> {
    Ok(files::read(mountpoint, "cgroup.controllers")?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// The file-writing logic against a directory of plain files: this host's cgroup2
/// mount has no controllers, so these are the only checks of the v2 memory, cpu,
/// pids and io writes here (the device filter and freezer run on the real mount).
#[cfg(test)]
mod tests {
    use super::*;

    fn fake_cgroup(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        d
    }

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    fn get(d: &tempfile::TempDir, f: &str) -> String {
        std::fs::read_to_string(d.path().join(f)).unwrap()
    }

    const ALL: &[&str] = &[
        "memory.max",
        "memory.low",
        "memory.swap.max",
        "cpu.weight",
        "cpu.max",
        "pids.max",
        "io.weight",
        "io.max",
        "cpuset.cpus",
        "cpuset.mems",
    ];

    #[test]
    fn docker_like_resources() {
        let d = fake_cgroup(ALL);
        apply(
            d.path(),
            &res(r#"{"memory":{"limit":67108864,"reservation":1048576,"swap":134217728},"cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1"},"pids":{"limit":-1},"blockIO":{"weight":500}}"#),
        )
        .unwrap();
        assert_eq!(get(&d, "memory.max"), "67108864");
        assert_eq!(get(&d, "memory.low"), "1048576");
        assert_eq!(get(&d, "memory.swap.max"), "67108864");
        assert_eq!(get(&d, "cpu.weight"), "39");
        assert_eq!(get(&d, "cpu.max"), "50000 100000");
        assert_eq!(get(&d, "pids.max"), "max");
        assert_eq!(get(&d, "io.weight"), "4950");
        assert_eq!(get(&d, "cpuset.cpus"), "0-1");
        assert_eq!(get(&d, "cpuset.mems"), "", "unset values are not written");
    }

    #[test]
    fn zero_means_unchanged_and_swap_equal_to_limit_disables_swap() {
        let d = fake_cgroup(ALL);
        apply(d.path(), &res(r#"{"memory":{"limit":1000,"swap":1000,"reservation":0},"cpu":{"shares":0,"quota":0,"period":0},"pids":{"limit":0}}"#)).unwrap();
        assert_eq!(get(&d, "memory.swap.max"), "0");
        assert_eq!(get(&d, "memory.max"), "1000");
        for f in ["memory.low", "cpu.weight", "cpu.max", "pids.max"] {
            assert_eq!(get(&d, f), "", "{f}");
        }
        let d = fake_cgroup(ALL);
        apply(d.path(), &res(r#"{"cpu":{"quota":-1}}"#)).unwrap();
        assert_eq!(get(&d, "cpu.max"), "max");
        apply(d.path(), &res(r#"{"memory":{"limit":-1}}"#)).unwrap();
        assert_eq!(
            (
                get(&d, "memory.max").as_str(),
                get(&d, "memory.swap.max").as_str()
            ),
            ("max", "max")
        );
    }

    #[test]
    fn missing_controller_files_name_the_controller() {
        let d = fake_cgroup(&["memory.max"]);
        let err = apply(d.path(), &res(r#"{"pids":{"limit":10}}"#)).unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::ControllerMissing {
                    controller: "pids",
                    ..
                }
            ),
            "{err}"
        );
        let err = apply(
            d.path(),
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
        let err = apply(d.path(), &res(r#"{"network":{"classID":5}}"#)).unwrap_err();
        assert!(err.to_string().contains("net_cls"), "{err}");
        // Swap unset-able without swap accounting: "no swap" is fine, a real limit is not.
        apply(d.path(), &res(r#"{"memory":{"limit":1000,"swap":1000}}"#)).unwrap();
        assert!(apply(d.path(), &res(r#"{"memory":{"limit":1000,"swap":5000}}"#)).is_err());
        assert!(apply(d.path(), &res(r#"{"memory":{"limit":1000,"swap":500}}"#)).is_err());
    }

    #[test]
    fn unified_keys_are_file_names_only() {
        let d = fake_cgroup(&["memory.high"]);
        apply(d.path(), &res(r#"{"unified":{"memory.high":"5000"}}"#)).unwrap();
        assert_eq!(get(&d, "memory.high"), "5000");
        for bad in ["../x", "a/b", "", ".hidden"] {
            let json = format!(r#"{{"unified":{{"{bad}":"1"}}}}"#);
            assert!(apply(d.path(), &res(&json)).is_err(), "{bad}");
        }
    }
}
