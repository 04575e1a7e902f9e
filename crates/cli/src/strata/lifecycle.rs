//! start, stop, kill, restart, rm, wait: each container in turn through strata-engine's
//! lifecycle.rs, its name printed when done, each failure reported.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use strata_engine::lifecycle;

use super::global_args::Global;

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Containers (name, id or id prefix)
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL
    #[arg(short = 't', long, default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal (name like TERM or SIGTERM, or number)
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill a running container first
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Runs `f` on every container, reporting each failure and failing at the end if any did.
fn each(names: &[String], mut f: impl FnMut(&str) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut failed = 0;
    for n in names {
        if let Err(e) = f(n) {
            eprintln!("strata: error: {n}: {e:#}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} containers failed", names.len());
    }
    Ok(())
}

pub fn start(g: &Global, a: StartArgs) -> anyhow::Result<()> {
    let paths = g.paths();
    let containers = paths.containers();
    each(&a.containers, |n| {
        lifecycle::start(&paths, &containers, containers.find(n)?)?;
        println!("{n}");
        Ok(())
    })
}

pub fn stop(g: &Global, a: StopArgs) -> anyhow::Result<()> {
    let paths = g.paths();
    let containers = paths.containers();
    each(&a.containers, |n| {
        let rec = containers.find(n)?;
        lifecycle::stop(&paths, &containers, &rec, Duration::from_secs(a.time))?;
        println!("{n}");
        Ok(())
    })
}

pub fn kill(g: &Global, a: KillArgs) -> anyhow::Result<()> {
    let sig = lifecycle::parse_signal(&a.signal)?;
    let paths = g.paths();
    let containers = paths.containers();
    each(&a.containers, |n| {
        lifecycle::kill(&paths, &containers.find(n)?, sig)?;
        println!("{n}");
        Ok(())
    })
}

pub fn restart(g: &Global, a: StopArgs) -> anyhow::Result<()> {
    let paths = g.paths();
    let containers = paths.containers();
    each(&a.containers, |n| {
        let rec = containers.find(n)?;
        lifecycle::restart(&paths, &containers, &rec, Duration::from_secs(a.time))?;
        println!("{n}");
        Ok(())
    })
}

pub fn rm(g: &Global, a: RmArgs) -> anyhow::Result<()> {
    let paths = g.paths();
    let containers = paths.containers();
    each(&a.containers, |n| {
        lifecycle::remove(&paths, &containers, &containers.find(n)?, a.force)?;
        println!("{n}");
        Ok(())
    })
}

pub fn wait(g: &Global, a: WaitArgs) -> anyhow::Result<()> {
    let containers = g.paths().containers();
    each(&a.containers, |n| {
        let code = lifecycle::wait(&containers, &containers.find(n)?, n)?;
        println!("{code}");
        Ok(())
    })
}
