//! A normalised view of `LinuxResources` with runc's meaning of "unset": runc's
//! `update --resources` decodes into zero values, and its cgroup managers skip zero
//! fields, so 0 and absent both mean "leave this setting alone".

use oci_spec::runtime::{LinuxBlockIo, LinuxResources, LinuxThrottleDevice, LinuxWeightDevice};

/// The memory settings that are set.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Memory {
    pub limit: i64,
    pub reservation: i64,
    pub swap: i64,
    /// `None` when unset (absent, or -1 read as u64).
    pub swappiness: Option<u64>,
    pub disable_oom_killer: bool,
}

impl Memory {
    pub fn from(r: &LinuxResources) -> Option<Memory> {
        let m = r.memory().as_ref()?;
        let mem = Memory {
            limit: m.limit().unwrap_or(0),
            reservation: m.reservation().unwrap_or(0),
            swap: m.swap().unwrap_or(0),
            swappiness: m.swappiness().filter(|s| *s as i64 != -1),
            disable_oom_killer: m.disable_oom_killer().unwrap_or(false),
        };
        let any = mem.limit != 0
            || mem.reservation != 0
            || mem.swap != 0
            || mem.swappiness.is_some()
            || mem.disable_oom_killer;
        any.then_some(mem)
    }
}

/// The cpu-controller settings that are set.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Cpu {
    pub shares: u64,
    pub quota: i64,
    pub period: u64,
    pub rt_runtime: i64,
    pub rt_period: u64,
    pub idle: Option<i64>,
    pub burst: Option<u64>,
}

impl Cpu {
    pub fn from(r: &LinuxResources) -> Option<Cpu> {
        let c = r.cpu().as_ref()?;
        let cpu = Cpu {
            shares: c.shares().unwrap_or(0),
            quota: c.quota().unwrap_or(0),
            period: c.period().unwrap_or(0),
            rt_runtime: c.realtime_runtime().unwrap_or(0),
            rt_period: c.realtime_period().unwrap_or(0),
            idle: c.idle(),
            burst: c.burst(),
        };
        let any = cpu.shares != 0
            || cpu.quota != 0
            || cpu.period != 0
            || cpu.rt_runtime != 0
            || cpu.rt_period != 0
            || cpu.idle.is_some()
            || cpu.burst.is_some();
        any.then_some(cpu)
    }
}

/// cpuset.cpus / cpuset.mems when given (non-empty).
pub(crate) fn cpuset(r: &LinuxResources) -> (Option<&str>, Option<&str>) {
    let Some(c) = r.cpu().as_ref() else {
        return (None, None);
    };
    fn nonempty(s: &Option<String>) -> Option<&str> {
        s.as_deref().filter(|s| !s.trim().is_empty())
    }
    (nonempty(c.cpus()), nonempty(c.mems()))
}

/// pids.max when set: `Some("max")` for negative values.
pub(crate) fn pids_limit(r: &LinuxResources) -> Option<String> {
    match r.pids().as_ref()?.limit() {
        0 => None,
        l if l < 0 => Some("max".to_owned()),
        l => Some(l.to_string()),
    }
}

/// The block-io settings that are set.
pub(crate) struct BlockIo<'a> {
    pub weight: u16,
    pub leaf_weight: u16,
    pub weight_devices: &'a [LinuxWeightDevice],
    pub read_bps: &'a [LinuxThrottleDevice],
    pub write_bps: &'a [LinuxThrottleDevice],
    pub read_iops: &'a [LinuxThrottleDevice],
    pub write_iops: &'a [LinuxThrottleDevice],
}

impl<'a> BlockIo<'a> {
    pub fn from(r: &'a LinuxResources) -> Option<BlockIo<'a>> {
        let b: &LinuxBlockIo = r.block_io().as_ref()?;
        let slice = |v: &'a Option<Vec<LinuxThrottleDevice>>| v.as_deref().unwrap_or(&[]);
        let io = BlockIo {
            weight: b.weight().unwrap_or(0),
            leaf_weight: b.leaf_weight().unwrap_or(0),
            weight_devices: b.weight_device().as_deref().unwrap_or(&[]),
            read_bps: slice(b.throttle_read_bps_device()),
            write_bps: slice(b.throttle_write_bps_device()),
            read_iops: slice(b.throttle_read_iops_device()),
            write_iops: slice(b.throttle_write_iops_device()),
        };
        let any = io.weight != 0
            || io.leaf_weight != 0
            || !io.weight_devices.is_empty()
            || !io.read_bps.is_empty()
            || !io.write_bps.is_empty()
            || !io.read_iops.is_empty()
            || !io.write_iops.is_empty();
        any.then_some(io)
    }
}
