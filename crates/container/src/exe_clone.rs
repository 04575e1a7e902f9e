//! CVE-2019-5736: the container must never be able to reach the host runtime binary for writing
//! through /proc/<pid>/exe.
//!
//! The attack: a container replaces its entrypoint with `#!/proc/self/exe`. When the runtime's
//! init (or the process `exec` starts after setns) executes it, the kernel resolves the
//! interpreter in the runtime process itself, so the container's process starts running the
//! runtime binary; another container process opens /proc/<pid>/exe and, once the runtime exits,
//! rewrites the host's runtime binary. No amount of "exec the workload directly" avoids that:
//! /proc/self/exe is resolved during the exec, while the process image is still the runtime's.
//!
//! The defence (crun's and runc's): `strata-oci` re-executes itself from a sealed memfd copy of
//! its binary before it does anything that enters a container, so every process it creates has
//! a sealed anonymous file as /proc/self/exe. Writing through it fails (F_SEAL_WRITE) and would
//! not touch the host binary anyway. The numbers behind this choice are in docs/security.md.
//!
//! Also here: [`set_dumpable`], which the runtime uses while it holds host resources inside the
//! container's namespaces (setns for `exec`): a non-dumpable process's /proc/<pid> entries
//! (fd, exe, environ, mem) are not accessible to the container's processes, and it cannot be
//! ptrace-attached by them.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

/// What failed while cloning or re-executing the runtime binary.
#[derive(Debug, thiserror::Error)]
pub enum ExeCloneError {
    /// A step failed.
    #[error("runtime binary clone (CVE-2019-5736 defence): {step} failed: {source}")]
    Sys {
        /// The step.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn sys(step: &'static str) -> impl FnOnce(io::Error) -> ExeCloneError {
    move |source| ExeCloneError::Sys { step, source }
}

/// The seals that make the copy immutable.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
/// memfd_create's MFD_EXEC (Linux 6.3+): executable even under vm.memfd_noexec=1.
const MFD_EXEC: libc::c_uint = 0x0010;

/// Whether this process already runs from a sealed copy (its /proc/self/exe is a sealed memfd).
pub fn is_cloned_binary() -> bool {
    let Ok(exe) = File::open("/proc/self/exe") else {
        return false;
    };
    // SAFETY: F_GET_SEALS on an fd we own; regular files answer EINVAL.
    let seals = unsafe { libc::fcntl(exe.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & SEALS == SEALS
}

/// A sealed, executable memfd holding a copy of `binary`.
pub fn sealed_copy(binary: &Path) -> Result<OwnedFd, ExeCloneError> {
    let mut src = File::open(binary).map_err(sys("open the runtime binary"))?;
    let name = c"strata-oci";
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a valid C string; try MFD_EXEC first, older kernels reject it.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), base | MFD_EXEC) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    if fd < 0 {
        return Err(sys("memfd_create")(io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut dst = File::from(memfd);
    // io::copy uses copy_file_range/sendfile: an in-kernel copy from the page cache.
    io::copy(&mut src, &mut dst).map_err(sys("copy the runtime binary into the memfd"))?;
    // SAFETY: F_ADD_SEALS on our memfd.
    if unsafe { libc::fcntl(dst.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(sys("seal the memfd")(io::Error::last_os_error()));
    }
    Ok(OwnedFd::from(dst))
}

/// Makes sure the process runs from a sealed copy of its binary: if it does not yet, re-executes
/// itself from one with the same arguments and environment (this call then never returns).
/// Call it first thing in `strata-oci` for the commands that enter a container.
pub fn ensure_cloned_binary() -> Result<(), ExeCloneError> {
    if is_cloned_binary() {
        return Ok(());
    }
    let memfd = sealed_copy(Path::new("/proc/self/exe"))?;
    let exec = ExecArgs::of_this_process()
        .map_err(|_| sys("collect argv and environment")(io::ErrorKind::InvalidInput.into()))?;
    Err(sys("execveat the sealed copy")(exec.execveat(&memfd)))
}

/// argv and environment of this process, for a re-exec of itself (here and in `exe_guard`).
pub(crate) struct ExecArgs {
    pub(crate) args: Vec<CString>,
    pub(crate) env: Vec<CString>,
}

impl ExecArgs {
    /// This process's argv and environment; fails when one has a NUL byte.
    pub(crate) fn of_this_process() -> Result<ExecArgs, &'static str> {
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
        match (args, env) {
            (Some(args), Some(env)) => Ok(ExecArgs { args, env }),
            _ => Err("argv or environment has a NUL byte"),
        }
    }

    /// Executes the file `fd` refers to with these arguments; returns only on failure.
    pub(crate) fn execveat(&self, fd: &OwnedFd) -> io::Error {
        let mut argv: Vec<*const libc::c_char> = self.args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: argv and envp are NULL-terminated arrays of valid C strings that outlive the
        // call; execveat with AT_EMPTY_PATH executes the file the fd refers to. It only returns
        // on failure.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd.as_raw_fd(),
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        io::Error::last_os_error()
    }
}

/// Sets or clears the dumpable flag of the calling process (PR_SET_DUMPABLE).
pub fn set_dumpable(dumpable: bool) -> Result<(), ExeCloneError> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, dumpable as libc::c_ulong, 0, 0, 0) } < 0 {
        return Err(sys("prctl(PR_SET_DUMPABLE)")(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    const CHILD_ENV: &str = "STRATA_TEST_EXE_CLONE_CHILD";

    /// Runs the ignored helper test `test` of this binary in a child process with `env` set
    /// (the helper re-executes itself, which the test process must not); returns the child's
    /// stdout and its `RESULT ` line.
    pub(crate) fn run_child(test: &str, env: &str) -> (String, String) {
        let me = std::env::current_exe().unwrap();
        let out = Command::new(&me)
            .args([
                "--ignored",
                "--exact",
                test,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(env, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("RESULT "))
            .unwrap_or_else(|| panic!("no result: {text} {}", String::from_utf8_lossy(&out.stderr)))
            .to_string();
        (text, line)
    }

    #[test]
    fn a_sealed_copy_cannot_be_written_or_resized() {
        let fd = sealed_copy(Path::new("/bin/true")).unwrap();
        let mut f = File::from(fd);
        let e = f.write_all(b"\x7fELF-overwritten").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(f.set_len(1).is_err());
        assert_eq!(
            f.metadata().unwrap().len(),
            std::fs::metadata("/bin/true").unwrap().len()
        );
    }

    /// Runs in a child process started by the test below: re-executes the test binary from a
    /// sealed memfd and reports what /proc/self/exe is afterwards.
    #[test]
    #[ignore = "helper: run by runs_from_a_sealed_copy_after_ensure_cloned_binary"]
    fn reexec_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        if !is_cloned_binary() {
            println!("BEFORE cloned=false");
        }
        ensure_cloned_binary().unwrap();
        // Only the re-executed process gets here.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let write = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/self/exe")
            .and_then(|mut f| f.write_all(b"x"));
        println!(
            "RESULT cloned={} exe={} write_refused={}",
            is_cloned_binary(),
            exe.display(),
            write.is_err()
        );
    }

    #[test]
    fn runs_from_a_sealed_copy_after_ensure_cloned_binary() {
        let me = std::env::current_exe().unwrap();
        let mtime_before = std::fs::metadata(&me).unwrap().mtime();
        let (text, line) = run_child("exe_clone::tests::reexec_child", CHILD_ENV);
        assert!(text.contains("BEFORE cloned=false"), "{text}");
        assert!(line.contains("RESULT cloned=true"), "{line}");
        assert!(line.contains("exe=/memfd:strata-oci"), "{line}");
        assert!(line.contains("write_refused=true"), "{line}");
        assert_eq!(std::fs::metadata(&me).unwrap().mtime(), mtime_before);
    }

    #[test]
    fn dumpable_can_be_cleared_and_restored() {
        // In a child, so the test process keeps its own flag.
        // SAFETY: raw prctl calls in the child, then _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = set_dumpable(false).is_ok()
                // SAFETY: prctl read.
                && unsafe { libc::prctl(libc::PR_GET_DUMPABLE) } == 0
                && set_dumpable(true).is_ok()
                // SAFETY: prctl read.
                && unsafe { libc::prctl(libc::PR_GET_DUMPABLE) } == 1;
            // SAFETY: leaving the child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
