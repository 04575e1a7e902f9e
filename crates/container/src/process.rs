//! The last steps before exec, shared by a container's init and by `exec`'d processes:
//! rlimits, user and groups, capabilities, no_new_privs, the PATH lookup and execve.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{PosixRlimitType, Process};

use crate::capabilities::CapSets;

/// The default PATH when process.env has none (runc's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A step of the process set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("setrlimit {0}: {1}")]
    Rlimit(String, nix::Error),
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Caps(#[from] crate::capabilities::CapsError),
    #[error("chdir to cwd ({0:?}) set in config.json failed: {1}")]
    Cwd(PathBuf, nix::Error),
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    #[error("exec: {0:?}: {1}")]
    Exec(String, nix::Error),
    /// args[0] names a path that cannot be executed, found before the workload's execve (as
    /// runc's and Docker's `exec: "/x": stat /x: no such file or directory`).
    #[error("exec: {name:?}: stat {name}: {}", .source.desc())]
    Stat {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0}: contains a NUL byte")]
    Nul(&'static str),
}

impl ProcessError {
    /// The exit status of a process whose exec failed, as shells and Docker report it: 127 when
    /// the program does not exist, 126 when it exists but cannot be executed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ProcessError::NotFound(_)
            | ProcessError::Exec(_, nix::Error::ENOENT | nix::Error::ENOTDIR)
            | ProcessError::Stat {
                source: nix::Error::ENOENT | nix::Error::ENOTDIR,
                ..
            } => 127,
            ProcessError::Exec(..) | ProcessError::Stat { .. } => 126,
            _ => 1,
        }
    }
}

fn sys(step: &'static str) -> impl Fn(nix::Error) -> ProcessError {
    move |source| ProcessError::Sys { step, source }
}

fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    (match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// Applies process.rlimits.
pub fn set_rlimits(p: &Process) -> Result<(), ProcessError> {
    for r in p.rlimits().iter().flatten() {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: setrlimit with a valid resource number and an initialised struct.
        let rc = unsafe { libc::setrlimit(rlimit_resource(r.typ()) as _, &lim) };
        if rc != 0 {
            return Err(ProcessError::Rlimit(
                format!("{:?}", r.typ()),
                nix::Error::last(),
            ));
        }
    }
    Ok(())
}

/// Writes process.oomScoreAdj to /proc/self/oom_score_adj.
pub fn set_oom_score_adj(p: &Process) -> Result<(), ProcessError> {
    if let Some(v) = p.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", v.to_string()).map_err(|e| {
            ProcessError::Sys {
                step: "write /proc/self/oom_score_adj",
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        })?;
    }
    Ok(())
}

/// Switches to process.user (groups, gid, uid, umask) keeping the permitted capabilities,
/// then applies the capability sets and no_new_privs.
pub fn set_identity(
    p: &Process,
    caps: &CapSets,
    in_user_ns_without_setgroups: bool,
) -> Result<(), ProcessError> {
    let u = p.user();
    caps.apply_bounding()?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(sys("prctl(PR_SET_KEEPCAPS)")(nix::Error::last()));
    }
    if !in_user_ns_without_setgroups {
        let groups: Vec<nix::unistd::Gid> = u
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups).map_err(sys("setgroups"))?;
    }
    let gid = nix::unistd::Gid::from_raw(u.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
    let uid = nix::unistd::Uid::from_raw(u.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    caps.apply_rest()?;
    if let Some(m) = u.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    } else {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    }
    if p.no_new_privileges().unwrap_or(false) {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(sys("prctl(PR_SET_NO_NEW_PRIVS)")(nix::Error::last()));
        }
    }
    Ok(())
}

/// chdir to process.cwd.
pub fn set_cwd(p: &Process) -> Result<(), ProcessError> {
    nix::unistd::chdir(p.cwd()).map_err(|e| ProcessError::Cwd(p.cwd().clone(), e))
}

/// A program resolved and ready for execve.
#[derive(Debug)]
pub struct Program {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(p) {
        Ok(m) => {
            m.is_file()
                && m.permissions().mode() & 0o111 != 0
                && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
        }
        Err(_) => false,
    }
}

/// Resolves args[0] like execvpe(3) on the PATH of process.env.
pub fn resolve_program(p: &Process) -> Result<Program, ProcessError> {
    let args = p.args().as_deref().unwrap_or_default();
    let name = args.first().cloned().unwrap_or_default();
    let env: Vec<&str> = p.env().iter().flatten().map(String::as_str).collect();
    let path = if name.contains('/') {
        // Checked now, so a missing or non-executable program fails `create` (or `run`) with
        // its cause instead of an init that dies at execve after reporting ready.
        let path = PathBuf::from(&name);
        let stat = |source| ProcessError::Stat {
            name: name.clone(),
            source,
        };
        let st = nix::sys::stat::stat(&path).map_err(stat)?;
        if nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
            == nix::sys::stat::SFlag::S_IFDIR
        {
            return Err(ProcessError::Exec(name.clone(), nix::Error::EACCES));
        }
        nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK)
            .map_err(|e| ProcessError::Exec(name.clone(), e))?;
        path
    } else {
        let search = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        search
            .split(':')
            .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(&name))
            .find(|c| executable(c))
            .ok_or_else(|| ProcessError::NotFound(name.clone()))?
    };
    let cs = |s: &[u8], what| CString::new(s).map_err(|_| ProcessError::Nul(what));
    Ok(Program {
        path: cs(path.as_os_str().as_bytes(), "process.args")?,
        args: args
            .iter()
            .map(|a| cs(a.as_bytes(), "process.args"))
            .collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|e| cs(e.as_bytes(), "process.env"))
            .collect::<Result<_, _>>()?,
    })
}

impl Program {
    /// execve; returns only on failure.
    pub fn exec(&self) -> ProcessError {
        let e = nix::unistd::execve(&self.path, &self.args, &self.env).unwrap_err();
        ProcessError::Exec(self.path.to_string_lossy().into_owned(), e)
    }
}
