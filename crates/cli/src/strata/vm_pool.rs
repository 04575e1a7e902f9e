//! `strata vm pool [--size N] [--platform P] [--memory M]`: the warm VM pool (engine/src/vm_pool.rs).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::global_args::Global;

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Show the warm VM pools, or size one: `--size N` keeps N pre-booted VMs of a platform and
    /// memory size ready for `strata run --vm` (0, the default, drains it)
    Pool(PoolArgs),
}

#[derive(Args, Debug)]
pub struct PoolArgs {
    /// Number of idle pre-booted VMs to keep (0 drains the pool)
    #[arg(long, allow_hyphen_values = true)]
    pub size: Option<String>,
    /// VM platform of the pool (uml or qemu)
    #[arg(long, default_value = "uml")]
    pub platform: String,
    /// Guest memory of the pooled VMs (as `run --vm --memory`; a run takes a pooled VM of the
    /// same size)
    #[arg(long)]
    pub memory: Option<String>,
    /// Return at once instead of waiting until the pool is full
    #[arg(long)]
    pub no_wait: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

fn parse_count(s: &str) -> anyhow::Result<u32> {
    let n: i64 = s.trim().parse().with_context(|| {
        format!(
            "--size {s:?}: not a whole number (use 0 to {})",
            strata_engine::vm_pool::MAX_SIZE
        )
    })?;
    if n < 0 {
        bail!("--size {n}: a pool cannot be negative (0 drains it)");
    }
    if n > i64::from(strata_engine::vm_pool::MAX_SIZE) {
        bail!(
            "--size {n}: at most {} pooled VMs per platform and memory size",
            strata_engine::vm_pool::MAX_SIZE
        );
    }
    Ok(n as u32)
}

fn memory_mib(m: Option<&str>) -> anyhow::Result<u32> {
    let Some(m) = m else {
        return Ok(strata_engine::vm_backend::DEFAULT_MEMORY_MIB);
    };
    let bytes = strata_engine::options::parse_size(m).context("--memory")?;
    if bytes < 64 << 20 {
        bail!("--memory {m}: a VM needs at least 64m");
    }
    u32::try_from(bytes >> 20).context("--memory is too large")
}

pub fn vm(g: &Global, c: VmCommand) -> anyhow::Result<()> {
    let VmCommand::Pool(a) = c;
    let pools = match &a.size {
        Some(s) => {
            let size = parse_count(s)?;
            let mem = memory_mib(a.memory.as_deref())?;
            let wait = (!a.no_wait).then_some(Duration::from_secs(120));
            vec![strata_engine::vm_pool::set_size(
                &g.root,
                &g.store,
                &a.platform,
                mem,
                size,
                wait,
            )?]
        }
        None => strata_engine::vm_pool::status(&g.root),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&pools)?);
        return Ok(());
    }
    if pools.is_empty() {
        println!("no warm VM pool (strata vm pool --size N starts one)");
        return Ok(());
    }
    println!(
        "{:<9} {:>7} {:>5} {:>6} {:>8}  IDLE MEMORY PER VM (VM + KEEPER)",
        "PLATFORM", "MEMORY", "SIZE", "READY", "BOOTING"
    );
    let avg_mib = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1048576.0;
    for p in &pools {
        let mem = if p.idle_memory_bytes.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{:.1} MiB + {:.1} MiB",
                avg_mib(&p.idle_memory_bytes),
                avg_mib(&p.keeper_memory_bytes)
            )
        };
        println!(
            "{:<9} {:>6}m {:>5} {:>6} {:>8}  {}",
            p.platform, p.memory_mib, p.size, p.ready, p.booting, mem
        );
        if let Some(e) = &p.last_error {
            println!("  last error: {}", e.trim());
        }
    }
    Ok(())
}
