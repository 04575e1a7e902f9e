//! The life of an existing container: start (under a new monitor), stop, kill, rm and wait. The
//! user CLI runs these per container and reports each result.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use crate::paths::Paths;
use crate::records::{pid_alive, Containers, Record, State};
use crate::{isolation, monitor, removal};

/// Starts a created or exited container under a new monitor; returns once it runs.
pub fn start(paths: &Paths, containers: &Containers, rec: Record) -> anyhow::Result<()> {
    if rec.live_state() == State::Running {
        bail!("container {} is already running", rec.name);
    }
    let backend = isolation::backend(&rec.isolation, &paths.root)?;
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
        remount_rootfs(paths, containers, &rec)?;
    }
    monitor::spawn(paths, containers, rec)
}

/// Mounts the overlay again if it is gone (a reboot unmounts it; upper/ keeps the writes).
fn remount_rootfs(paths: &Paths, containers: &Containers, rec: &Record) -> anyhow::Result<()> {
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
    let image = paths
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

/// SIGTERM, then SIGKILL after `grace`; returns once the exit is recorded.
pub fn stop(
    paths: &Paths,
    containers: &Containers,
    rec: &Record,
    grace: Duration,
) -> anyhow::Result<()> {
    if rec.live_state() != State::Running {
        return Ok(());
    }
    let backend = isolation::backend(&rec.isolation, &paths.root)?;
    let _ = signal_once_started(backend.as_ref(), containers, rec, Signal::SIGTERM);
    if !wait_exited(containers, rec, grace) {
        let _ = signal_once_started(backend.as_ref(), containers, rec, Signal::SIGKILL);
        if !wait_exited(containers, rec, Duration::from_secs(10)) {
            bail!("container {} did not exit after SIGKILL", rec.name);
        }
    }
    Ok(())
}

/// Stops a container (as [`stop`]) and starts it again under a new monitor.
pub fn restart(
    paths: &Paths,
    containers: &Containers,
    rec: &Record,
    grace: Duration,
) -> anyhow::Result<()> {
    stop(paths, containers, rec, grace)?;
    start(paths, containers, containers.load(&rec.id)?)
}

/// Waits until the container's monitor recorded its exit (or is gone), at most `limit`.
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

/// Sends `sig` to a running container's workload.
pub fn kill(paths: &Paths, rec: &Record, sig: Signal) -> anyhow::Result<()> {
    if rec.live_state() != State::Running {
        bail!(
            "container {} is not running (start it with `strata start {}`)",
            rec.name,
            rec.name
        );
    }
    let backend = isolation::backend(&rec.isolation, &paths.root)?;
    signal_once_started(backend.as_ref(), &Containers::new(&paths.store), rec, sig)
}

/// Sends `sig` through the backend. A foreground `strata run` records the container as
/// running before its runtime has made it (one record write less on the start path): while that process lives and the runtime
/// does not know the container yet, it is still starting, so this waits for it rather than say
/// "not running" about a container `ps` lists as up.
fn signal_once_started(
    backend: &dyn crate::Backend,
    containers: &Containers,
    rec: &Record,
    sig: Signal,
) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let err = match backend.kill(&rec.id, sig) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let still_starting = containers
            .load(&rec.id)
            .is_ok_and(|r| r.live_state() == State::Running && r.pid.is_none());
        if !still_starting || t.elapsed() >= STARTING_LIMIT {
            return Err(err);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long `kill` waits for a container that is still starting.
const STARTING_LIMIT: Duration = Duration::from_secs(30);

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

/// Removes a container; a running one only with `force` (killed first, its monitor given the
/// time to reap it and finish).
pub fn remove(
    paths: &Paths,
    containers: &Containers,
    rec: &Record,
    force: bool,
) -> anyhow::Result<()> {
    if rec.live_state() == State::Running {
        if !force {
            bail!(
                "container {} is running: stop it first (`strata stop {}`) or use `strata rm -f`",
                rec.name,
                rec.name
            );
        }
        let backend = isolation::backend(&rec.isolation, &paths.root)?;
        let _ = backend.kill(&rec.id, Signal::SIGKILL);
        // Let the monitor reap it and finish (it may remove an --rm container itself).
        let t = Instant::now();
        while rec.monitor_pid.is_some_and(pid_alive) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    removal::remove_all(paths, containers, rec);
    Ok(())
}

/// Waits until a started container exited; its exit code (255 when none was recorded). `key`
/// is how the user named it, for the errors.
pub fn wait(containers: &Containers, rec: &Record, key: &str) -> anyhow::Result<i32> {
    loop {
        let r = match containers.load(&rec.id) {
            Ok(r) => r,
            Err(_) => bail!("container {key} was removed before it exited"),
        };
        if r.live_state() != State::Running && r.state != State::Created {
            return Ok(r.exit_code.unwrap_or(255));
        }
        if r.state == State::Created {
            bail!("container {key} was never started: start it with `strata start {key}`");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The exit code of a container whose monitor went away before telling an attach client: from
/// its record, once the monitor wrote it (at most 10 s; 0 when it never does).
pub fn recorded_exit_code(containers: &Containers, id: &str) -> i32 {
    let t = Instant::now();
    loop {
        match containers.load(id) {
            Ok(r) if r.live_state() != State::Running => return r.exit_code.unwrap_or(0),
            Ok(_) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => return 0,
        }
    }
}
