//! A cheap CVE-2019-5736 defence: run the runtime from a READ-ONLY mount of its own binary
//! instead of copying it into a sealed memfd (`exe_clone`).
//!
//! Whatever reaches the binary through `/proc/<pid>/exe` (or `map_files`) gets the path of that
//! mount, so opening it for writing fails with EROFS. Three ways, cheapest first:
//!
//! 1. A detached read-only clone of the binary's mount (`open_tree(OPEN_TREE_CLONE)` +
//!    `mount_setattr(MOUNT_ATTR_RDONLY)`, Linux 5.12+), executed through its fd with
//!    `execveat`. No mount namespace is created or touched: the clone exists only while the fd
//!    or the process image references it. The fd is close-on-exec, so the clone's anonymous
//!    mount namespace is dissolved by the exec, before the new image runs: from then on nobody
//!    can change its flags (mount_setattr refuses a mount that is neither attached in the
//!    caller's namespace nor in a live anonymous one), and the container never sees it at all.
//!    It costs two syscalls besides the exec itself, and it leaves the host's mounts alone, so
//!    the `strata` CLI (whose overlay mounts must stay visible on the host) can use it too.
//! 2. `strata-oci` only, on older kernels: runc 1.2's scheme, a read-only bind of the binary
//!    onto itself in a private mount namespace (the container cannot remount it: the mount
//!    lives in the runtime's namespace, not the container's).
//! 3. Otherwise `exe_clone`'s sealed memfd copy (~10-20 ms for a 6-15 MiB binary here, see
//!    docs/benchmarks.md).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::exe_clone::ExecArgs;

/// The binary could not be protected either way.
#[derive(Debug, thiserror::Error)]
pub enum ExeGuardError {
    #[error("protect the runtime binary (read-only mount: {bind}; memfd copy: {memfd})")]
    Failed { bind: String, memfd: String },
}

/// Which fallbacks a caller accepts after the detached read-only clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// A private mount namespace, then the memfd copy (`strata-oci`: its own mounts are the
    /// container's, made in the container's namespace).
    PrivateNamespace,
    /// Only the memfd copy (the `strata` CLI: the overlay rootfs it mounts must stay visible
    /// on the host, so it must not move into a private mount namespace).
    Memfd,
}

/// Whether /proc/self/exe sits on a read-only mount (then writes through it fail already).
pub fn exe_is_readonly() -> bool {
    nix::sys::statvfs::statvfs("/proc/self/exe")
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// Whether this process already runs from a protected image (read-only mount or sealed copy).
pub fn is_protected() -> bool {
    exe_is_readonly() || crate::exe_clone::is_cloned_binary()
}

/// Makes sure the runtime runs from a binary that cannot be opened for writing through
/// /proc/<pid>/exe. Re-executes itself (same argv and environment) when needed; returns once
/// the process is protected. Call first thing in commands that enter a container.
pub fn protect_runtime_binary() -> Result<(), ExeGuardError> {
    protect_binary(Fallback::PrivateNamespace)
}

/// [`protect_runtime_binary`] with a choice of fallbacks.
pub fn protect_binary(fallback: Fallback) -> Result<(), ExeGuardError> {
    if is_protected() {
        return Ok(());
    }
    let exec = match ExecArgs::of_this_process() {
        Ok(a) => a,
        Err(e) => {
            return Err(ExeGuardError::Failed {
                bind: e.into(),
                memfd: "not tried".into(),
            })
        }
    };
    let mut bind = detached_ro_reexec(&exec);
    if fallback == Fallback::PrivateNamespace {
        bind = match std::fs::read_link("/proc/self/exe") {
            Ok(exe) => format!("{bind}; private bind: {}", ro_bind_reexec(&exe, &exec)),
            Err(e) => format!("{bind}; read /proc/self/exe: {e}"),
        };
    }
    tracing::debug!(error = %bind, "read-only mount of the runtime binary failed; copying it into a memfd");
    crate::exe_clone::ensure_cloned_binary().map_err(|e| ExeGuardError::Failed {
        bind,
        memfd: e.to_string(),
    })
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 1;

/// Way 1. Returns only on failure (the message); on success the process image is replaced.
fn detached_ro_reexec(exec: &ExecArgs) -> String {
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: open_tree with a valid C string; the kernel returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/proc/self/exe".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return err("open_tree(/proc/self/exe, OPEN_TREE_CLONE)");
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr on our detached tree's fd with a valid, correctly sized struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return err("mount_setattr(MOUNT_ATTR_RDONLY) on the detached clone");
    }
    let e = exec.execveat(&tree);
    format!("execveat the read-only clone: {e}")
}

/// Way 2. Returns only on failure (the message); on success the process image is replaced.
fn ro_bind_reexec(exe: &Path, exec: &ExecArgs) -> String {
    let step = |what: &str, e: nix::Error| format!("{what}: {e}");
    if !exe.is_absolute() || exe.to_string_lossy().ends_with(" (deleted)") {
        return format!("{} is not a usable path", exe.display());
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
        return step("unshare mount namespace", e);
    }
    // Nothing mounted here may propagate to the host.
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    ) {
        return step("make / rslave", e);
    }
    if let Err(e) = mount(Some(exe), exe, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
        return step("bind mount the binary", e);
    }
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(e) = mount(None::<&str>, exe, None::<&str>, ro, None::<&str>) {
        // Flags locked on the underlying mount (nosuid, nodev...) must be kept.
        let keep = locked(exe);
        if let Err(e2) = mount(None::<&str>, exe, None::<&str>, ro | keep, None::<&str>) {
            return format!("remount the binary read-only: {e} / {e2}");
        }
    }
    let path = match CString::new(exe.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(_) => return "binary path has a NUL byte".into(),
    };
    let e = nix::unistd::execve(&path, &exec.args, &exec.env).unwrap_err();
    step("execve the read-only binary", e)
}

fn locked(p: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(p) else {
        return MsFlags::empty();
    };
    let mut out = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if st.flags().contains(a) {
            out |= b;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const CHILD_ENV: &str = "STRATA_TEST_EXE_GUARD_CHILD";

    /// Runs in a child process started by the test below: protects itself and reports what
    /// /proc/self/exe is afterwards.
    #[test]
    #[ignore = "helper: run by reexecs_from_a_detached_readonly_mount"]
    fn guard_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        if !exe_is_readonly() {
            println!("BEFORE readonly=false");
        }
        protect_binary(Fallback::Memfd).unwrap();
        // Only the re-executed process gets here.
        let write = std::fs::OpenOptions::new()
            .append(true)
            .open("/proc/self/exe")
            .and_then(|mut f| f.write_all(b"x"));
        println!(
            "RESULT readonly={} memfd={} write_refused={}",
            exe_is_readonly(),
            crate::exe_clone::is_cloned_binary(),
            write.is_err()
        );
    }

    #[test]
    fn reexecs_from_a_detached_readonly_mount() {
        if !strata_testkit::require(
            strata_testkit::is_root(),
            "open_tree needs CAP_SYS_ADMIN (root)",
        ) {
            return;
        }
        let me = std::env::current_exe().unwrap();
        let (text, line) =
            crate::exe_clone::tests::run_child("exe_guard::tests::guard_child", CHILD_ENV);
        assert!(text.contains("BEFORE readonly=false"), "{text}");
        // Not the memfd fallback: the read-only mount itself.
        assert!(line.contains("readonly=true memfd=false"), "{line}");
        assert!(line.contains("write_refused=true"), "{line}");
        // Nothing was mounted in our (the host's) namespace.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let name = me.file_name().unwrap().to_str().unwrap();
        assert!(!mounts.contains(name), "{mounts}");
    }
}
