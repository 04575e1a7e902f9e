//! A cheap CVE-2019-5736 defence: run the runtime from a READ-ONLY bind mount of its own binary
//! in a private mount namespace, instead of copying it into a sealed memfd (`exe_clone`).
//!
//! Whatever reaches the binary through `/proc/<pid>/exe` (or `map_files`) gets the path of that
//! mount, so opening it for writing fails with EROFS; the container cannot remount it (the mount
//! lives in the runtime's namespace, not the container's). This is runc 1.2's approach. It costs
//! an unshare, two mounts and one execve from the page cache, where the memfd copy of a 5 MiB
//! binary cost ~10-20 ms per command here (see docs/benchmarks.md, oci-run). If any step fails
//! (no CAP_SYS_ADMIN, a deleted binary...), it falls back to `exe_clone`.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// The binary could not be protected either way.
#[derive(Debug, thiserror::Error)]
pub enum ExeGuardError {
    #[error("protect the runtime binary (read-only bind mount: {bind}; memfd copy: {memfd})")]
    Failed { bind: String, memfd: String },
}

/// Whether /proc/self/exe sits on a read-only mount (then writes through it fail already).
pub fn exe_is_readonly() -> bool {
    nix::sys::statvfs::statvfs("/proc/self/exe")
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// Makes sure the runtime runs from a binary that cannot be opened for writing through
/// /proc/<pid>/exe. Re-executes itself (same argv and environment) when needed; returns once
/// the process is protected. Call first thing in commands that enter a container.
pub fn protect_runtime_binary() -> Result<(), ExeGuardError> {
    if exe_is_readonly() || crate::exe_clone::is_cloned_binary() {
        return Ok(());
    }
    let bind = match std::fs::read_link("/proc/self/exe") {
        Ok(exe) => ro_bind_reexec(&exe),
        Err(e) => format!("read /proc/self/exe: {e}"),
    };
    tracing::debug!(error = %bind, "read-only bind of the runtime binary failed; copying it into a memfd");
    crate::exe_clone::ensure_cloned_binary().map_err(|e| ExeGuardError::Failed {
        bind,
        memfd: e.to_string(),
    })
}

/// Returns only on failure (the message); on success the process image is replaced.
fn ro_bind_reexec(exe: &Path) -> String {
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
    let cs = |v: Vec<u8>| CString::new(v).ok();
    let args: Option<Vec<CString>> = std::env::args_os()
        .map(|a: OsString| cs(a.into_vec()))
        .collect();
    let env: Option<Vec<CString>> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            cs(kv)
        })
        .collect();
    let (Some(args), Some(env)) = (args, env) else {
        return "argv or environment has a NUL byte".into();
    };
    let e = nix::unistd::execve(&path, &args, &env).unwrap_err();
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
