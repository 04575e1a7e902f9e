//! The rehearsal: a pooled VM's agent runs one start of its own before its Hello, on a small
//! read-only disk of strata's (the rehearsal disk: the agent binary and the mount points, no
//! workload data), so that the guest kernel's paths a start takes (the first ext4 mount, the
//! container mounts, the loopback link, clone/execve/exit/wait) have run once before a workload
//! arrives.
//!
//! Why: under QEMU with TCG every guest instruction is translated before it runs, and a pooled
//! VM that has only booted has never executed those paths; the first start paid their
//! translation (docs/benchmarks.md, "The qemu pool's rehearsal": Create took 44.5 ms before,
//! 18.1 ms after, medians). The translations are of the kernel's text, at the same guest
//! addresses for every later start, so the workload's start reuses them.
//!
//! The rehearsal leaves nothing a workload sees: every mount is detached afterwards, the
//! rehearsal process has exited and been reaped, and the disk's device node is removed (the
//! workload's /dev is the same devtmpfs). The loopback link stays up (every start brings it up).
//! A rehearsal that fails is reported as a warning after the Hello: the VM still serves, only
//! slower.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::process::{spawn, SpawnRequest};
use crate::spec::Spec;

/// Where the rehearsal disk is mounted.
pub const ROOT: &str = "/run/strata-rehearsal";
/// The program the rehearsal runs, on the rehearsal disk (the agent itself, static).
pub const PROGRAM: &str = "/strata-agent";
/// What [`PROGRAM`] is run with; it prints its version and exits.
pub const ARG: &str = "--version";

/// The mounts of a `strata run` container (crates/image/src/bundle.rs), which a start applies.
const SPEC: &str = r#"{
  "process": {"args": ["/strata-agent", "--version"], "cwd": "/", "env": ["PATH=/"]},
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]}
  ]
}"#;

/// Runs the rehearsal on the ext4 disk `dev` (waiting up to `device_within` for its node) and
/// returns how long it took. Whatever happens, nothing of it stays mounted and the device node
/// is removed.
pub fn rehearse(dev: &str, device_within: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    let result = run(dev, device_within);
    // MNT_DETACH takes the whole tree under the root with it (the container mounts too).
    let detached = match umount2(ROOT, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(format!("unmount {ROOT}: {e}")),
    };
    let hidden = match std::fs::remove_file(dev) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove the rehearsal disk's node {dev}: {e}")),
    };
    result.and(detached).and(hidden).map(|()| t0.elapsed())
}

fn run(dev: &str, device_within: Duration) -> Result<(), String> {
    if !crate::channel::wait_for_device(Path::new(dev), device_within) {
        return Err(format!(
            "the rehearsal disk {dev} did not appear within {device_within:?}"
        ));
    }
    let root = Path::new(ROOT);
    std::fs::create_dir_all(root).map_err(|e| format!("create {ROOT}: {e}"))?;
    mount(
        Some(dev),
        root,
        Some("ext4"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("mount the rehearsal disk {dev} (ext4) on {ROOT}: {e}"))?;
    let spec = Spec::from_value(serde_json::from_str(SPEC).map_err(|e| e.to_string())?)
        .map_err(|e| format!("the rehearsal's config: {e}"))?;
    crate::mounts::apply_mounts(root, &spec.mounts)
        .map_err(|e| format!("the rehearsal's container mounts: {e}"))?;
    crate::net::loopback_up().map_err(|e| format!("bring lo up: {e}"))?;
    let process = spec
        .process
        .as_ref()
        .ok_or("the rehearsal's config has no process")?;
    let child = match spawn(&SpawnRequest {
        process,
        tty: false,
        stdin: false,
        root: Some(root),
    }) {
        Ok(c) => c,
        Err(e) => {
            if let crate::process::SpawnError::Child { pid, .. } = &e {
                // It exited (127) by itself: reap it here, the agent's loop has not begun.
                // SAFETY: waitpid on our own child; no memory is passed.
                unsafe { libc::waitpid(*pid, std::ptr::null_mut(), 0) };
            }
            return Err(format!("start {PROGRAM} {ARG} in the rehearsal root: {e}"));
        }
    };
    let mut status = 0;
    // SAFETY: waitpid writes the status into a local integer; the child is ours.
    let waited = unsafe { libc::waitpid(child.pid, &mut status, 0) };
    if waited != child.pid {
        return Err(format!(
            "wait for the rehearsal process {}: {}",
            child.pid,
            nix::errno::Errno::last()
        ));
    }
    let code = crate::process::exit_status(status).map(|s| (s.code, s.signal));
    // The child has exited: its output is all in the pipe.
    let mut out = String::new();
    let _ = std::fs::File::from(child.stdout).read_to_string(&mut out);
    if code != Some((0, None)) || !out.starts_with("strata-agent ") {
        return Err(format!(
            "{PROGRAM} {ARG} in the rehearsal root ended with {code:?} and printed {:?}",
            out.chars().take(200).collect::<String>()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rehearsal_config_is_a_valid_spec_with_the_run_mounts() {
        let spec = Spec::from_value(serde_json::from_str(SPEC).unwrap()).unwrap();
        let p = spec.process.unwrap();
        assert_eq!(p.args, [PROGRAM, ARG]);
        let dests: Vec<&str> = spec.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/sys",
                "/sys/fs/cgroup",
                "/dev/mqueue",
                "/dev/shm"
            ]
        );
    }

    #[test]
    fn a_missing_disk_fails_with_its_name_and_leaves_nothing_mounted() {
        let dev = "/dev/strata-no-such-rehearsal-disk";
        let e = rehearse(dev, Duration::from_millis(20)).unwrap_err();
        assert!(e.contains(dev) && e.contains("did not appear"), "{e}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(ROOT), "{mounts}");
    }
}
