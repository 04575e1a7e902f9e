//! start, stop, kill, restart, rm, wait — and the one removal path every command uses.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use nix::sys::signal::Signal;
use strata_image::rootfs::ContainerRootfs;

use super::containers::{pid_alive, Containers, Record, State};
use super::{instance, monitor, Global};

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
    let containers = Containers::new(&g.store);
    each(&a.containers, |n| {
        let rec = containers.find(n)?;
        start_one(g, &containers, rec)?;
        println!("{n}");
        Ok(())
    })
}

fn start_one(g: &Global, containers: &Containers, rec: Record) -> anyhow::Result<()> {
    if rec.live_state() == State::Running {
        bail!("container {} is already running", rec.name);
    }
    let backend = instance::backend(&rec.isolation, &g.root)?;
    if backend.running(&rec.id) {
        bail!(
            "container {} is still running without its monitor: remove it with `strata rm -f {}`",
            rec.name,
            rec.name
        );
    }
    // A previous run's leftovers (a monitor killed hard) must not block the new one.
    backend.delete(&rec.id);
    if rec.isolation == "container" {
        remount_rootfs(g, containers, &rec)?;
    }
    monitor::spawn(g, containers, rec)
}

/// Mounts the overlay again if it is gone (a reboot unmounts it; upper/ keeps the writes).
fn remount_rootfs(g: &Global, containers: &Containers, rec: &Record) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = containers.dir(&rec.id);
    let rootfs = dir.join("rootfs");
    let (Ok(d), Ok(r)) = (std::fs::metadata(&dir), std::fs::metadata(&rootfs)) else {
        bail!(
            "container {}: {} is missing; remove the container with `strata rm {}`",
            rec.name,
            rootfs.display(),
            rec.name
        );
    };
    if d.dev() != r.dev() {
        return Ok(());
    }
    let image = g
        .image_store()?
        .resolve(&rec.image_digest)
        .with_context(|| format!("container {}: remount its root filesystem", rec.name))?;
    strata_image::rootfs::mount_overlay(
        image.layers(),
        &dir.join("upper"),
        &dir.join("work"),
        &rootfs,
    )?;
    Ok(())
}

pub fn stop(g: &Global, a: StopArgs) -> anyhow::Result<()> {
    let containers = Containers::new(&g.store);
    each(&a.containers, |n| {
        let rec = containers.find(n)?;
        stop_one(g, &containers, &rec, Duration::from_secs(a.time))?;
        println!("{n}");
        Ok(())
    })
}

/// SIGTERM, then SIGKILL after `grace`; returns once the exit is recorded.
fn stop_one(
    g: &Global,
    containers: &Containers,
    rec: &Record,
    grace: Duration,
) -> anyhow::Result<()> {
    if rec.live_state() != State::Running {
        return Ok(());
    }
    let backend = instance::backend(&rec.isolation, &g.root)?;
    let _ = backend.kill(&rec.id, Signal::SIGTERM);
    if !wait_exited(containers, rec, grace) {
        let _ = backend.kill(&rec.id, Signal::SIGKILL);
        if !wait_exited(containers, rec, Duration::from_secs(10)) {
            bail!("container {} did not exit after SIGKILL", rec.name);
        }
    }
    Ok(())
}

/// Waits until the container's monitor recorded its exit (or is gone).
fn wait_exited(containers: &Containers, rec: &Record, limit: Duration) -> bool {
    let t = Instant::now();
    loop {
        match containers.load(&rec.id) {
            Ok(r) if r.live_state() == State::Running => {}
            _ => return true,
        }
        if t.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn kill(g: &Global, a: KillArgs) -> anyhow::Result<()> {
    let sig = parse_signal(&a.signal)?;
    let containers = Containers::new(&g.store);
    each(&a.containers, |n| {
        let rec = containers.find(n)?;
        if rec.live_state() != State::Running {
            bail!(
                "container {} is not running (start it with `strata start {}`)",
                rec.name,
                rec.name
            );
        }
        instance::backend(&rec.isolation, &g.root)?.kill(&rec.id, sig)?;
        println!("{n}");
        Ok(())
    })
}

/// A signal by name (TERM, SIGTERM) or number.
pub fn parse_signal(s: &str) -> anyhow::Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("unknown signal number {n}"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow::anyhow!("unknown signal {s:?}: use a name like TERM or a number"))
}

pub fn restart(g: &Global, a: StopArgs) -> anyhow::Result<()> {
    let containers = Containers::new(&g.store);
    each(&a.containers, |n| {
        let rec = containers.find(n)?;
        stop_one(g, &containers, &rec, Duration::from_secs(a.time))?;
        start_one(g, &containers, containers.load(&rec.id)?)?;
        println!("{n}");
        Ok(())
    })
}

pub fn rm(g: &Global, a: RmArgs) -> anyhow::Result<()> {
    let containers = Containers::new(&g.store);
    each(&a.containers, |n| {
        let rec = containers.find(n)?;
        if rec.live_state() == State::Running {
            if !a.force {
                bail!(
                    "container {} is running: stop it first (`strata stop {}`) or use `strata rm -f`",
                    rec.name,
                    rec.name
                );
            }
            let backend = instance::backend(&rec.isolation, &g.root)?;
            let _ = backend.kill(&rec.id, Signal::SIGKILL);
            // Let the monitor reap it and finish (it may remove an --rm container itself).
            let t = Instant::now();
            while rec.monitor_pid.is_some_and(pid_alive) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        remove_all(g, &containers, &rec);
        println!("{n}");
        Ok(())
    })
}

pub fn wait(g: &Global, a: WaitArgs) -> anyhow::Result<()> {
    let containers = Containers::new(&g.store);
    each(&a.containers, |n| {
        let rec = containers.find(n)?;
        loop {
            let r = match containers.load(&rec.id) {
                Ok(r) => r,
                Err(_) => bail!("container {n} was removed before it exited"),
            };
            if r.live_state() != State::Running && r.state != State::Created {
                println!("{}", r.exit_code.unwrap_or(255));
                return Ok(());
            }
            if r.state == State::Created {
                bail!("container {n} was never started: start it with `strata start {n}`");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Removes everything a container has: workload and runtime state, overlay mount, image
/// hold, name and directory. Idempotent; every step runs even if an earlier one failed.
pub fn remove_all(g: &Global, containers: &Containers, rec: &Record) {
    if let Ok(b) = instance::backend(&rec.isolation, &g.root) {
        b.delete(&rec.id);
    }
    remove_shared_cgroup_parent();
    let dir = containers.dir(&rec.id);
    if let Err(e) = ContainerRootfs::open(&dir).remove() {
        tracing::warn!("remove container {}: {e}", rec.id);
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Ok(store) = strata_image::Store::open(&g.store) {
        let _ = store.release(&rec.id);
    }
    containers.release_name(&rec.id, &rec.name);
}

/// Containers live in `/strata/<id>` cgroups (run.rs); the last one out removes the shared
/// `strata` parent in every hierarchy. While another container uses it the kernel refuses the
/// rmdir (EBUSY), and a container being created makes it again (the cgroups module re-creates
/// a parent that vanished).
fn remove_shared_cgroup_parent() {
    let probe = std::path::Path::new("/strata/_");
    if let Ok(cg) = strata_container::cgroups::Cgroup::resolve(Some(probe), "_") {
        for dir in cg.paths() {
            if let Some(parent) = dir.parent().filter(|p| p.ends_with("strata")) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}
