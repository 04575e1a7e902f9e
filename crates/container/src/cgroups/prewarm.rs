//! Starts the kernel's cgroup-attach grace period early, so a later attach of a container's
//! init waits less for it.
//!
//! Moving a process between cgroups (a write to `cgroup.procs`, v1 or v2) takes the global
//! `cgroup_threadgroup_rwsem` for writing, and the first writer after a quiet spell waits for a
//! full RCU grace period (`rcu_sync_enter`: ~8-12 ms on this host, more than the rest of a
//! container start). Writers arriving while that grace period runs, or within one grace period
//! after the last writer, do not wait for a new one. [`start`] forks a helper that writes "0"
//! to the `cgroup.procs` of its own cgroup: a move to where it already is, which changes
//! nothing but starts the grace period while the caller does its other set-up work. When no
//! grace period is needed the helper's write returns at once. The helper never blocks the
//! caller and ignores every error.
//!
//! Used by `strata-oci create/run/exec` and the `strata` commands that start containers, first
//! thing (before the CVE-2019-5736 re-exec). Measured (bench/oci-run-notes.md): a cold
//! `strata-oci run` (the first after a pause) 18.8 → 13.9 ms, a cold `strata run --rm` 29 →
//! 20 ms; back-to-back runs, which often find the grace period already passed, gain less.

use std::io::Write;

/// Forks the helper (see the module doc) and returns its pid (None if fork failed). The helper
/// exits by itself; it is reaped by whoever waits for any child (`launch::wait_forwarding`) or,
/// after the caller exits, by its reaper. Call it from a single-threaded process.
pub fn start() -> Option<i32> {
    // SAFETY: fork; the child only reads a proc file and writes a cgroup file (glibc keeps
    // malloc usable after fork) and leaves through _exit, running none of the parent's
    // destructors.
    match unsafe { libc::fork() } {
        0 => {
            move_self_in_place();
            // SAFETY: leaving the forked helper.
            unsafe { libc::_exit(0) }
        }
        pid if pid > 0 => Some(pid),
        _ => None,
    }
}

/// Writes "0" (= the writer) to the `cgroup.procs` of our own cgroup in one hierarchy.
fn move_self_in_place() {
    let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else {
        return;
    };
    if let Some(file) = own_procs_file(&own) {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .and_then(|mut f| f.write_all(b"0"));
    }
}

/// The `cgroup.procs` of our cgroup: a v1 `pids` or `memory` hierarchy when there is one (the
/// lock is global, any hierarchy will do), else cgroup2 (at /sys/fs/cgroup/unified on a hybrid
/// host, else at /sys/fs/cgroup).
fn own_procs_file(proc_self_cgroup: &str) -> Option<String> {
    let mut v2 = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            continue;
        }
        let path = path.trim_end_matches('/');
        if ctrls.split(',').any(|c| c == "pids" || c == "memory") {
            let first = ctrls.split(',').next().unwrap_or(ctrls);
            return Some(format!("/sys/fs/cgroup/{first}{path}/cgroup.procs"));
        }
        if ctrls.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    let path = v2?;
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|m| format!("{m}{path}/cgroup.procs"))
        .find(|f| std::path::Path::new(f).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_a_v1_hierarchy_then_cgroup2() {
        let hybrid = "12:pids:/user.slice\n11:cpu,cpuacct:/\n0::/user.slice/x\n";
        assert_eq!(
            own_procs_file(hybrid).as_deref(),
            Some("/sys/fs/cgroup/pids/user.slice/cgroup.procs")
        );
        let root = "3:memory:/\n";
        assert_eq!(
            own_procs_file(root).as_deref(),
            Some("/sys/fs/cgroup/memory/cgroup.procs")
        );
        // Odd or hostile lines are skipped, never followed out of the mount.
        for odd in ["", "garbage", "1:pids:relative", "::", "0::", "1:pids"] {
            assert!(!own_procs_file(odd).is_some_and(|f| f.contains("..")));
        }
        assert!(own_procs_file("1:pids:/a/../b").is_none());
    }

    #[test]
    fn the_helper_leaves_the_caller_where_it_was() {
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let pid = start().expect("fork");
        let mut status = 0;
        // SAFETY: reaping the helper we just forked, by its pid.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
    }
}
