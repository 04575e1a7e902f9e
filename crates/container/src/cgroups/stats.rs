//! Usage statistics in the shape of runc's `events --stats` `data` object
//! (`libcontainer/cgroups/stats.go` → `types/events.go`), read from v1 or v2 files.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::files::{parse_flat_keyed, read_optional, read_u64_optional};
use super::CgroupError;

/// runc `events --stats` data.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub cpu: Cpu,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
}

/// CPU usage and throttling.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// CPU time in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

/// CFS bandwidth throttling counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Throttling {
    #[serde(skip_serializing_if = "is_zero")]
    pub periods: u64,
    #[serde(rename = "throttledPeriods", skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    #[serde(rename = "throttledTime", skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

/// Memory usage; limits of `u64::MAX` mean unlimited, as in runc.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Memory {
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

/// One memory counter.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

/// Number of tasks and their limit (0 = unlimited).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Pids {
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

/// Block I/O counters per device.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Blkio {
    #[serde(
        rename = "ioServiceBytesRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(rename = "ioServicedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

/// One device counter.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// USER_HZ: the unit of cpuacct.stat.
const CLOCK_TICKS: u64 = 100;

fn get(pairs: &[(String, u64)], key: &str) -> u64 {
    pairs.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
}

fn limit(v: Option<u64>) -> u64 {
    v.unwrap_or(0)
}

/// v1 `blkio.throttle.io_service*_recursive`: `8:0 Read 4096` lines (and a `Total` line).
pub(crate) fn parse_v1_blkio(content: &str) -> Vec<BlkioEntry> {
    content
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, op, value) = (f.next()?, f.next()?, f.next()?);
            let (major, minor) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                op: op.to_owned(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// v2 `io.stat`: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 ...` into runc's entries.
pub(crate) fn parse_io_stat(content: &str) -> (Vec<BlkioEntry>, Vec<BlkioEntry>) {
    let (mut bytes, mut ios) = (Vec::new(), Vec::new());
    for l in content.lines() {
        let mut f = l.split_whitespace();
        let Some((major, minor)) = f.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse() else { continue };
            let (list, op) = match k {
                "rbytes" => (&mut bytes, "Read"),
                "wbytes" => (&mut bytes, "Write"),
                "rios" => (&mut ios, "Read"),
                "wios" => (&mut ios, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.to_owned(),
                value,
            });
        }
    }
    (bytes, ios)
}

/// Collects v1 statistics; hierarchies that are not mounted leave their part empty.
pub(crate) fn v1(
    cpu: Option<&Path>,
    cpuacct: Option<&Path>,
    memory: Option<&Path>,
    pids: Option<&Path>,
    blkio: Option<&Path>,
) -> Result<Stats, CgroupError> {
    let mut s = Stats::default();
    if let Some(d) = cpuacct {
        s.cpu.usage.total = read_u64_optional(d, "cpuacct.usage")?.unwrap_or(0);
        if let Some(per) = read_optional(d, "cpuacct.usage_percpu")? {
            s.cpu.usage.percpu = per
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
        }
        if let Some(stat) = read_optional(d, "cpuacct.stat")? {
            let kv = parse_flat_keyed(&stat);
            s.cpu.usage.user = get(&kv, "user") * 1_000_000_000 / CLOCK_TICKS;
            s.cpu.usage.kernel = get(&kv, "system") * 1_000_000_000 / CLOCK_TICKS;
        }
    }
    if let Some(d) = cpu {
        if let Some(stat) = read_optional(d, "cpu.stat")? {
            let kv = parse_flat_keyed(&stat);
            s.cpu.throttling = Throttling {
                periods: get(&kv, "nr_periods"),
                throttled_periods: get(&kv, "nr_throttled"),
                throttled_time: get(&kv, "throttled_time"),
            };
        }
    }
    if let Some(d) = memory {
        let entry = |prefix: &str| -> Result<MemoryEntry, CgroupError> {
            Ok(MemoryEntry {
                limit: limit(read_u64_optional(d, &format!("{prefix}.limit_in_bytes"))?),
                usage: read_u64_optional(d, &format!("{prefix}.usage_in_bytes"))?.unwrap_or(0),
                max: read_u64_optional(d, &format!("{prefix}.max_usage_in_bytes"))?.unwrap_or(0),
                failcnt: read_u64_optional(d, &format!("{prefix}.failcnt"))?.unwrap_or(0),
            })
        };
        s.memory.usage = entry("memory")?;
        s.memory.swap = entry("memory.memsw")?;
        s.memory.kernel = entry("memory.kmem")?;
        if let Some(stat) = read_optional(d, "memory.stat")? {
            s.memory.raw = parse_flat_keyed(&stat).into_iter().collect();
            s.memory.cache = s.memory.raw.get("cache").copied().unwrap_or(0);
        }
    }
    if let Some(d) = pids {
        s.pids.current = read_u64_optional(d, "pids.current")?.unwrap_or(0);
        s.pids.limit = read_u64_optional(d, "pids.max")?
            .filter(|v| *v != u64::MAX)
            .unwrap_or(0);
    }
    if let Some(d) = blkio {
        if let Some(c) = read_optional(d, "blkio.throttle.io_service_bytes_recursive")? {
            s.blkio.io_service_bytes_recursive = parse_v1_blkio(&c);
        }
        if let Some(c) = read_optional(d, "blkio.throttle.io_serviced_recursive")? {
            s.blkio.io_serviced_recursive = parse_v1_blkio(&c);
        }
    }
    Ok(s)
}

/// Collects v2 statistics; files of controllers that are not enabled are skipped.
pub(crate) fn v2(d: &Path) -> Result<Stats, CgroupError> {
    let mut s = Stats::default();
    if let Some(stat) = read_optional(d, "cpu.stat")? {
        let kv = parse_flat_keyed(&stat);
        s.cpu.usage.total = get(&kv, "usage_usec") * 1000;
        s.cpu.usage.user = get(&kv, "user_usec") * 1000;
        s.cpu.usage.kernel = get(&kv, "system_usec") * 1000;
        s.cpu.throttling = Throttling {
            periods: get(&kv, "nr_periods"),
            throttled_periods: get(&kv, "nr_throttled"),
            throttled_time: get(&kv, "throttled_usec") * 1000,
        };
    }
    if let Some(current) = read_u64_optional(d, "memory.current")? {
        s.memory.usage = MemoryEntry {
            limit: limit(read_u64_optional(d, "memory.max")?),
            usage: current,
            max: read_u64_optional(d, "memory.peak")?.unwrap_or(0),
            failcnt: 0,
        };
        s.memory.swap = MemoryEntry {
            limit: limit(read_u64_optional(d, "memory.swap.max")?),
            usage: read_u64_optional(d, "memory.swap.current")?.unwrap_or(0),
            max: read_u64_optional(d, "memory.swap.peak")?.unwrap_or(0),
            failcnt: 0,
        };
        if let Some(stat) = read_optional(d, "memory.stat")? {
            s.memory.raw = parse_flat_keyed(&stat).into_iter().collect();
            s.memory.cache = s.memory.raw.get("file").copied().unwrap_or(0);
        }
    }
    s.pids.current = read_u64_optional(d, "pids.current")?.unwrap_or(0);
    s.pids.limit = read_u64_optional(d, "pids.max")?
        .filter(|v| *v != u64::MAX)
        .unwrap_or(0);
    if let Some(io) = read_optional(d, "io.stat")? {
        let (bytes, ios) = parse_io_stat(&io);
        s.blkio.io_service_bytes_recursive = bytes;
        s.blkio.io_serviced_recursive = ios;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_blkio_lines() {
        let e = parse_v1_blkio("8:0 Read 4096\n8:0 Write 0\nTotal 4096\n");
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0],
            BlkioEntry {
                major: 8,
                minor: 0,
                op: "Read".into(),
                value: 4096
            }
        );
    }

    #[test]
    fn v2_io_stat() {
        let (b, i) =
            parse_io_stat("254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\ngarbage\n");
        assert_eq!(
            b,
            vec![
                BlkioEntry {
                    major: 254,
                    minor: 0,
                    op: "Read".into(),
                    value: 10
                },
                BlkioEntry {
                    major: 254,
                    minor: 0,
                    op: "Write".into(),
                    value: 20
                },
            ]
        );
        assert_eq!(i.len(), 2);
    }

    #[test]
    fn json_shape_matches_runc() {
        let mut s = Stats::default();
        s.cpu.usage.total = 5;
        s.pids.current = 2;
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["cpu"]["usage"]["total"], 5);
        assert_eq!(v["cpu"]["usage"]["kernel"], 0);
        assert_eq!(v["pids"]["current"], 2);
        assert!(v["memory"]["usage"].get("limit").is_some());
        assert!(v["pids"].get("limit").is_none());
    }
}
