//! File-descriptor hygiene before exec, and the working directory check (CVE-2024-21626).
//!
//! Only stdio, the socket-activation fds (LISTEN_FDS) and `--preserve-fds` reach the workload:
//! every other fd is marked close-on-exec before the seccomp filter goes in (no profile has to
//! allow close_range), so the runtime can keep using its own fds (sync pipes, the exec-failure
//! channel) up to the exec itself. runc's CVE-2024-21626
//! leaked an fd to the host's /sys/fs/cgroup into the container, and `process.cwd` of
//! `/proc/self/fd/N` turned it into a working directory outside the rootfs; closing fds alone is
//! not enough because they are still open when the init chdirs, so the cwd is also verified
//! after chdir.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What failed while preparing fds or the working directory.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    /// A preserved fd is not open in the runtime.
    #[error("--preserve-fds/LISTEN_FDS: fd {fd} is not open in the runtime ({source}); pass only fds the runtime inherits")]
    NotOpen {
        /// The fd.
        fd: RawFd,
        /// The error.
        source: io::Error,
    },
    /// An fd operation failed.
    #[error("fds: {step} failed: {source}")]
    Sys {
        /// The step.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
    /// `process.cwd` could not be entered.
    #[error("process.cwd {path}: chdir failed: {source}; the directory must exist in the rootfs")]
    Chdir {
        /// The cwd.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The working directory ended up outside the container's root.
    #[error("process.cwd {path}: resolves outside the container's root filesystem ({actual}); refusing to start (CVE-2024-21626)")]
    CwdOutsideRoot {
        /// The requested cwd.
        path: PathBuf,
        /// What getcwd reported.
        actual: String,
    },
    /// `process.cwd` is not absolute.
    #[error("process.cwd {0}: must be an absolute path")]
    CwdNotAbsolute(PathBuf),
}

/// How many socket-activation fds the runtime itself received (systemd's `LISTEN_PID` equal to
/// our pid and `LISTEN_FDS=n`): those are fds 3..3+n, passed on to the container like runc does.
pub fn listen_fds_from_env() -> u32 {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !ours {
        return 0;
    }
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        // A count that cannot be real (beyond RLIMIT_NOFILE on any sane host) is ignored.
        .filter(|n| *n <= 65_536)
        .unwrap_or(0)
}

/// The environment entries runc adds to the container process when it passes socket-activation
/// fds: `LISTEN_FDS=n` and `LISTEN_PID=1` (the process is pid 1 of its pid namespace).
pub fn listen_env(listen_fds: u32) -> Vec<String> {
    if listen_fds == 0 {
        return Vec::new();
    }
    vec![
        format!("LISTEN_FDS={listen_fds}"),
        "LISTEN_PID=1".to_string(),
    ]
}

/// Adds the socket-activation entries to `env`, replacing any LISTEN_FDS/LISTEN_PID already there.
pub fn apply_listen_env(env: &mut Vec<String>, listen_fds: u32) {
    if listen_fds == 0 {
        return;
    }
    env.retain(|e| !e.starts_with("LISTEN_FDS=") && !e.starts_with("LISTEN_PID="));
    env.extend(listen_env(listen_fds));
}

/// Prepares the fd table right before exec: fds 3..3+`extra` (LISTEN_FDS then --preserve-fds)
/// are kept and made inheritable; every fd from 3+`extra` up is marked close-on-exec.
///
/// Makes raw syscalls only (no allocation on success), so it is safe in a cloned child.
pub fn prepare_exec_fds(extra: u32) -> Result<(), FdError> {
    let first_closed = 3u32.saturating_add(extra);
    for fd in 3..first_closed {
        let fd = fd as RawFd;
        // SAFETY: F_GETFD/F_SETFD on an fd number; EBADF is reported, nothing is dereferenced.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(FdError::NotOpen {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(FdError::Sys {
                step: "clear FD_CLOEXEC on a preserved fd",
                source: io::Error::last_os_error(),
            });
        }
    }
    mark_cloexec_from(first_closed as RawFd)
}

/// Marks every fd >= `first` close-on-exec (close_range(CLOSE_RANGE_CLOEXEC), Linux 5.11+,
/// falling back to walking /proc/self/fd whenever close_range fails).
pub fn mark_cloexec_from(first: RawFd) -> Result<(), FdError> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes flags of fds in the range; no memory is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // ENOSYS/EINVAL (kernels before 5.11) or EPERM/any errno a seccomp profile that does not
    // list close_range returns: walk /proc/self/fd instead, as runc does.
    for fd in open_fds()? {
        if fd >= first {
            // SAFETY: setting a flag on an fd number; EBADF (the dir fd itself, gone) is ignored.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// The fds open in this process, from /proc/self/fd (includes the fd used to read it).
pub fn open_fds() -> Result<Vec<RawFd>, FdError> {
    let rd = std::fs::read_dir("/proc/self/fd").map_err(|source| FdError::Sys {
        step: "read /proc/self/fd",
        source,
    })?;
    let mut fds: Vec<RawFd> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    fds.sort_unstable();
    Ok(fds)
}

/// Enters `process.cwd` inside the container (after pivot_root/chroot) and verifies that the
/// working directory really is inside the container's root: a leaked fd path such as
/// /proc/self/fd/7 would otherwise put the workload in a host directory.
pub fn chdir_verified(cwd: &Path) -> Result<(), FdError> {
    if !cwd.is_absolute() {
        return Err(FdError::CwdNotAbsolute(cwd.to_path_buf()));
    }
    let c = CString::new(cwd.as_os_str().as_bytes()).map_err(|_| FdError::Chdir {
        path: cwd.to_path_buf(),
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    // SAFETY: chdir with a valid C string.
    if unsafe { libc::chdir(c.as_ptr()) } < 0 {
        return Err(FdError::Chdir {
            path: cwd.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    verify_cwd_inside_root(cwd)
}

/// Fails unless the current directory is reachable from the current root. getcwd(2) fails with
/// ENOENT or returns a path starting with "(unreachable)" for a directory outside the root.
pub fn verify_cwd_inside_root(requested: &Path) -> Result<(), FdError> {
    let mut buf = [0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the raw getcwd syscall writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    let outside = |actual: String| FdError::CwdOutsideRoot {
        path: requested.to_path_buf(),
        actual,
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(outside(format!("getcwd: {e}")));
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let actual = String::from_utf8_lossy(&buf[..len]).into_owned();
    if !actual.starts_with('/') {
        return Err(outside(actual));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Runs `body` in a forked child and returns its exit code (raw syscalls only in the child).
    fn in_child(body: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child runs `body` and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = body();
            // SAFETY: leaving the child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child died: {status}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn only_stdio_and_preserved_fds_survive_exec() {
        // Open two files, dup them to fixed numbers so fds 3..=4 are the "preserved" ones and a
        // third stays as a leak candidate above them.
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<std::fs::File> = (0..3)
            .map(|i| std::fs::File::create(dir.path().join(format!("f{i}"))).unwrap())
            .collect();
        let out = dir.path().join("out");
        let sh = c"/bin/sh";
        let cmd = CString::new(format!("exec ls /proc/self/fd > {}", out.display())).unwrap();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let code = in_child(|| {
            // SAFETY: raw syscalls in the child: place the files at 100, 101 (preserved when
            // extra covers them) and 102 (must not leak).
            unsafe {
                for (i, fd) in raw.iter().enumerate() {
                    libc::dup2(*fd, 100 + i as RawFd);
                }
                // Make fd 3 and 4 the preserved pair; whatever else is open must not leak.
                libc::dup2(100, 3);
                libc::dup2(101, 4);
            }
            if prepare_exec_fds(2).is_err() {
                return 10;
            }
            let argv = [sh.as_ptr(), c"-c".as_ptr(), cmd.as_ptr(), std::ptr::null()];
            // SAFETY: a NULL-terminated argv of valid C strings; on success this never returns.
            unsafe { libc::execv(sh.as_ptr(), argv.as_ptr()) };
            11
        });
        assert_eq!(code, 0);
        let listed = std::fs::read_to_string(&out).unwrap();
        let fds: Vec<u32> = listed.lines().map(|l| l.parse().unwrap()).collect();
        // 0-2 stdio, 3-4 preserved, and one more: the fd `ls` opened on /proc/self/fd itself.
        assert_eq!(&fds[..5], &[0, 1, 2, 3, 4], "{listed}");
        assert!(fds.len() == 6 && fds[5] < 100, "leaked fds: {listed}");
    }

    #[test]
    fn a_preserved_fd_that_is_not_open_is_a_clear_error() {
        let code = in_child(|| {
            // SAFETY: closing fd numbers in the child.
            unsafe {
                libc::close(7);
                libc::dup2(1, 3);
                libc::dup2(1, 4);
                libc::dup2(1, 5);
                libc::dup2(1, 6);
            }
            match prepare_exec_fds(5) {
                Err(FdError::NotOpen { fd: 7, .. }) => 0,
                _ => 1,
            }
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn listen_env_matches_runc() {
        assert!(listen_env(0).is_empty());
        assert_eq!(listen_env(2), vec!["LISTEN_FDS=2", "LISTEN_PID=1"]);
        let mut env = vec!["PATH=/bin".to_string(), "LISTEN_FDS=9".to_string()];
        apply_listen_env(&mut env, 1);
        assert_eq!(env, vec!["PATH=/bin", "LISTEN_FDS=1", "LISTEN_PID=1"]);
    }

    #[test]
    fn a_cwd_reached_through_a_leaked_fd_is_refused() {
        // Simulate CVE-2024-21626: chroot into a directory, keep an fd to a directory outside
        // it, and ask for /proc/self/fd/N as cwd. Needs root (chroot); a plain chdir into a
        // dir inside the root must pass.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::create_dir_all(root.path().join("work")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root_c = CString::new(root.path().as_os_str().as_bytes()).unwrap();
        let proc_dir = CString::new(root.path().join("proc").as_os_str().as_bytes()).unwrap();
        // The "leaked" fd: a directory outside the future root, open without O_CLOEXEC.
        let leaked_fd = std::fs::File::open(outside.path()).unwrap();
        let leaked = PathBuf::from(format!("/proc/self/fd/{}", leaked_fd.as_raw_fd()));
        let code = in_child(|| {
            // SAFETY: raw syscalls in the child: private mount ns, /proc for the fd link,
            // chroot.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return 77; // not root: skipped below
                }
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                );
                if libc::mount(
                    c"proc".as_ptr(),
                    proc_dir.as_ptr(),
                    c"proc".as_ptr(),
                    0,
                    std::ptr::null(),
                ) != 0
                {
                    return 78;
                }
                if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return 79;
                }
                if chdir_verified(Path::new("/work")).is_err() {
                    return 2;
                }
                match chdir_verified(&leaked) {
                    Err(FdError::CwdOutsideRoot { .. }) => 0,
                    Ok(()) => 3,
                    Err(_) => 4,
                }
            }
        });
        if code == 77 {
            strata_testkit::skip_or_fail("needs root for unshare/chroot");
            return;
        }
        assert_eq!(code, 0);
    }

    #[test]
    fn a_relative_cwd_is_rejected() {
        let e = chdir_verified(Path::new("work")).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
    }
}
