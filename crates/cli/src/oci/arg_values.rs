//! The values of runc's flags, parsed with runc's messages: signals, sizes, `update`'s
//! resources, `events --interval`.

use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxResources;

use crate::args;

/// A signal by name (KILL, SIGKILL, kill) or number.
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| anyhow!("unknown signal {s:?}"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    Signal::from_str(&name).map_err(|_| anyhow!("unknown signal {s:?}"))
}

/// Parses a memory size like runc/docker: bytes, or with a b/k/m/g/t suffix; -1 = unlimited.
pub fn parse_size(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid size {s:?}"))?;
    if n < 0.0 {
        bail!("invalid size {s:?}");
    }
    Ok((n * mul as f64) as i64)
}

/// The resources of an `update`: the --resources JSON, or the flags.
pub fn parse_resources(a: &args::UpdateArgs) -> Result<LinuxResources> {
    Ok(match &a.resources {
        Some(p) => {
            let mut b = Vec::new();
            if p == Path::new("-") {
                std::io::stdin()
                    .read_to_end(&mut b)
                    .context("read resources from stdin")?;
            } else {
                b = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
            }
            serde_json::from_slice(&b).context("parse resources JSON (a LinuxResources object)")?
        }
        None => {
            let mut v = serde_json::json!({});
            let mut set = |path: &[&str], val: serde_json::Value| {
                let mut cur = &mut v;
                for k in &path[..path.len() - 1] {
                    cur = cur
                        .as_object_mut()
                        .unwrap()
                        .entry(*k)
                        .or_insert(serde_json::json!({}));
                }
                cur[path[path.len() - 1]] = val;
            };
            if let Some(x) = &a.memory {
                set(&["memory", "limit"], parse_size(x)?.into());
            }
            if let Some(x) = &a.memory_reservation {
                set(&["memory", "reservation"], parse_size(x)?.into());
            }
            if let Some(x) = &a.memory_swap {
                set(&["memory", "swap"], parse_size(x)?.into());
            }
            if let Some(x) = a.cpu_share {
                set(&["cpu", "shares"], x.into());
            }
            if let Some(x) = a.cpu_quota {
                set(&["cpu", "quota"], x.into());
            }
            if let Some(x) = a.cpu_period {
                set(&["cpu", "period"], x.into());
            }
            if let Some(x) = a.cpu_rt_period {
                set(&["cpu", "realtimePeriod"], x.into());
            }
            if let Some(x) = a.cpu_rt_runtime {
                set(&["cpu", "realtimeRuntime"], x.into());
            }
            if let Some(x) = &a.cpuset_cpus {
                set(&["cpu", "cpus"], x.clone().into());
            }
            if let Some(x) = &a.cpuset_mems {
                set(&["cpu", "mems"], x.clone().into());
            }
            if let Some(x) = a.pids_limit {
                set(&["pids", "limit"], x.into());
            }
            if let Some(x) = a.blkio_weight {
                set(&["blockIO", "weight"], x.into());
            }
            serde_json::from_value(v)?
        }
    })
}

/// An `events --interval` (5s, 500ms, 1m; seconds without a unit).
pub fn parse_interval(s: &str) -> Result<std::time::Duration> {
    let t = s.trim();
    let (num, mul) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("invalid --interval {s:?} (e.g. 5s, 500ms)"))?;
    if n <= 0.0 {
        bail!("invalid --interval {s:?}: must be positive");
    }
    Ok(std::time::Duration::from_secs_f64(n * mul))
}
