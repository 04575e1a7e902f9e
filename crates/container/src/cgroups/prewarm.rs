//! Starts the kernel's cgroup-attach grace period early, so a later attach of a container's
//! init waits less for it.
//!
//! Moving a process between cgroups (a write to `cgroup.procs`, v1 or v2) takes the global
//! `cgroup_threadgroup_rwsem` for writing, and the first writer after a quiet spell waits for a
//! full RCU grace period (`rcu_sync_enter`: ~8-12 ms on this host, more than the rest of a
//! container start). Writers arriving while that grace period runs, or within one grace period
//! after the last writer, do not wait for a new one. [`start`] starts a helper that writes "0"
//! to the `cgroup.procs` of its own cgroup: a move to where it already is, which changes
//! nothing but starts the grace period while the caller does its other set-up work. When no
//! grace period is needed the helper's write returns at once. The helper never blocks the
//! caller and ignores every error.
//!
//! Used by `strata-oci create/run/exec` and the `strata` commands that start containers, first
//! thing (before the CVE-2019-5736 re-exec). Measured (bench/oci-run-notes.md): a cold
//! `strata-oci run` (the first after a pause) 18.4 → 13.9 ms, a cold `strata run --rm` 29 →
//! 20 ms; back-to-back runs, which often find the grace period already passed, gain less.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// Stack of the helper: it only makes a few raw syscalls.
const HELPER_STACK: usize = 16 * 1024;

/// Starts the helper (see the module doc) and returns its pid (None if there is no cgroup file
/// to write or clone failed). The helper exits by itself; it is reaped by whoever waits for any
/// child (`launch::wait_forwarding`) or, after the caller exits, by its reaper.
///
/// The helper shares our memory (`CLONE_VM`, like posix_spawn's child) instead of being a fork:
/// no page tables to copy and no copy-on-write faults in the caller afterwards, which made a
/// forked helper cost ~0.3 ms on a 2 ms start. It runs on its own stack and only makes raw
/// syscalls (rustix, one inline `syscall`: no errno, no allocation, no lock), so it cannot
/// disturb the caller; it first closes its copies of the caller's fds; and
/// when the caller execs (the CVE-2019-5736 re-exec) the helper keeps the old memory alive
/// until it exits.
pub fn start() -> Option<i32> {
    STARTED.store(true, std::sync::atomic::Ordering::Relaxed);
    // One read (proc files report size 0: read_to_string alone would grow from 32 bytes).
    let mut own = String::with_capacity(4096);
    std::io::Read::read_to_string(
        &mut std::fs::File::open("/proc/self/cgroup").ok()?,
        &mut own,
    )
    .ok()?;
    let file = CString::new(own_procs_file(&own)?).ok()?;
    // Leaked on purpose: the helper reads the path and runs on the stack after we return, and
    // possibly after this image is gone (an exec keeps the memory mapped for the helper).
    let path: &'static CStr = Box::leak(file.into_boxed_c_str());
    let stack: &'static mut [u8] = Box::leak(vec![0u8; HELPER_STACK].into_boxed_slice());
    let top = stack.as_mut_ptr_range().end as usize & !0xf;
    // SAFETY: clone with CLONE_VM and a stack of our own that nothing else uses; the child runs
    // `helper` (raw syscalls only, see above) and exits when it returns; SIGCHLD makes it an
    // ordinary child for waitpid.
    let pid = unsafe {
        libc::clone(
            helper,
            top as *mut c_void,
            libc::CLONE_VM | libc::SIGCHLD,
            path.as_ptr() as *mut c_void,
        )
    };
    (pid > 0).then_some(pid)
}

/// Whether this process (or the one it was forked from) called [`start`].
static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`start`] was called in this process (or before the fork that made it): a caller
/// that skipped it early, because it might not move anything, can start it once it knows.
pub fn started() -> bool {
    STARTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The helper: writes "0" (= the writer) to the `cgroup.procs` of its own cgroup.
extern "C" fn helper(arg: *mut c_void) -> c_int {
    // Our copies of the caller's fds (an engine's pipes, sockets) must not keep them open
    // after the caller is done with them.
    close_all_fds();
    // SAFETY: `arg` is the leaked, NUL-terminated path passed by `start`.
    let path = unsafe { CStr::from_ptr(arg as *const c_char) };
    use rustix::fs::{Mode, OFlags};
    if let Ok(fd) = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()) {
        let _ = rustix::io::write(&fd, b"0");
    }
    0
}

/// `close_range(0, ~0, 0)` as a raw syscall: the libc wrapper would write errno, which lives in
/// the memory the helper shares with the caller.
#[cfg(target_arch = "x86_64")]
fn close_all_fds() {
    // SAFETY: the close_range syscall with integer arguments only; it reads and writes none of
    // our memory; rcx and r11 are clobbered by `syscall`.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") libc::SYS_close_range => _,
            in("rdi") 0usize,
            in("rsi") u32::MAX as usize,
            in("rdx") 0usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
}

/// Elsewhere the fds stay until the helper exits (a grace period at most).
#[cfg(not(target_arch = "x86_64"))]
fn close_all_fds() {}

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
        let pid = start().expect("clone the helper");
        let mut status = 0;
        // SAFETY: reaping the helper we just started, by its pid.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
    }
}
