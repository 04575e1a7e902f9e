//! The VM jail: confines the guest kernel process the way Firecracker's jailer confines its VMM.
//!
//! A UML kernel is an ordinary host process with the privileges of whoever starts it, and a guest
//! that compromises it gets those privileges. So it starts in fresh pid, mount, ipc, net and uts
//! namespaces; its root is a small tmpfs holding only bind mounts of the files the VM
//! needs (kernel, disks, initrd) plus a private /tmp for the guest memory file; it joins its
//! cgroup, sets rlimits, drops every capability and switches to an unprivileged uid with
//! no_new_privs and a seccomp deny list (crate::seccomp) before it executes the kernel.
//! Nothing of the host's file tree is reachable.
//!
//! The child is created with a raw `clone` (fork semantics plus new namespaces) and becomes PID 1
//! of the jail: after the last jail step it forks the kernel process (PID 2) and only reaps. When
//! the kernel exits, PID 1 exits with its status (128 + signal if it was killed), which ends every
//! helper the kernel forked; killing PID 1 kills the whole VM. The kernel must not be PID 1
//! itself: a panicking UML kernel aborts with `kill(getpid(), SIGABRT)` in a loop, and a pid
//! namespace's init ignores that signal, so a guest panic (e.g. its init exiting) would spin at
//! 100 % CPU forever instead of ending the VM. The jail has its own session, so the kernel's
//! `kill(0, SIGTERM)` on panic reaches nothing outside it.
//!
//! The caller may be multi-threaded, so the child only makes system calls on data prepared before
//! the clone: no allocation, no locks. A failing step reports (step, errno) on a close-on-exec pipe.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::error::{Result, VmmError};

/// A host file made visible in the jail's root under `name`.
#[derive(Debug, Clone)]
pub(crate) struct JailFile {
    pub host: PathBuf,
    /// A relative path in the jail (`linux`, `lib64/ld-linux-x86-64.so.2`).
    pub name: String,
    pub writable: bool,
    pub executable: bool,
    /// A device node (allowed to act as one: no `nodev` on its bind mount).
    pub device: bool,
}

/// Everything the jailed child needs.
#[derive(Debug)]
pub(crate) struct JailSpec {
    /// An empty host directory: the jail's tmpfs root is mounted on it (only inside the jail).
    pub root: PathBuf,
    pub files: Vec<JailFile>,
    /// Size of the jail's /tmp, which holds the guest memory file.
    pub tmp_bytes: u64,
    pub uid: u32,
    pub gid: u32,
    /// The program to run (a path inside the jail) and its argv/env.
    pub exe: String,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    /// (host fd, fd number in the child): at least 0, 1 and 2.
    pub fds: Vec<(RawFd, RawFd)>,
    /// `cgroup.procs` files the child joins by writing "0".
    pub cgroup_procs: Vec<File>,
    /// (resource, soft = hard limit).
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// Pin the VM's host processes (the child and everything it forks) to this CPU.
    pub cpu: Option<usize>,
}

/// Steps of the child, in order; the index travels over the error pipe.
const STEPS: &[&str] = &[
    "make mounts private",
    "mount jail tmpfs",
    "create bind target",
    "bind mount",
    "remount bind",
    "create /tmp",
    "mount /tmp tmpfs",
    "chdir jail root",
    "pivot_root",
    "detach old root",
    "chdir /",
    "remount root read-only",
    "join cgroup",
    "setrlimit",
    "dup2",
    "close_range",
    "drop capability bounding set",
    "setgroups",
    "setresgid",
    "setresuid",
    "clear ambient capabilities",
    "capset",
    "no_new_privs",
    "execve",
    "sethostname",
    "create directory",
    "install seccomp filter",
    "setsid",
    "fork the kernel process",
    "pin to one CPU",
    "set the parent-death signal",
];

const S_PRIVATE: u32 = 0;
const S_ROOT_TMPFS: u32 = 1;
const S_TARGET: u32 = 2;
const S_BIND: u32 = 3;
const S_REMOUNT: u32 = 4;
const S_MKDIR_TMP: u32 = 5;
const S_TMP_TMPFS: u32 = 6;
const S_CHDIR_ROOT: u32 = 7;
const S_PIVOT: u32 = 8;
const S_DETACH: u32 = 9;
const S_CHDIR_SLASH: u32 = 10;
const S_ROOT_RO: u32 = 11;
const S_CGROUP: u32 = 12;
const S_RLIMIT: u32 = 13;
const S_DUP2: u32 = 14;
const S_CLOSE_RANGE: u32 = 15;
const S_BOUNDING: u32 = 16;
const S_SETGROUPS: u32 = 17;
const S_SETRESGID: u32 = 18;
const S_SETRESUID: u32 = 19;
const S_AMBIENT: u32 = 20;
const S_CAPSET: u32 = 21;
const S_NNP: u32 = 22;
const S_EXEC: u32 = 23;
const S_HOSTNAME: u32 = 24;
const S_MKDIR: u32 = 25;
const S_SECCOMP: u32 = 26;
const S_SETSID: u32 = 27;
const S_FORK: u32 = 28;
const S_AFFINITY: u32 = 29;
const S_PDEATHSIG: u32 = 30;

/// Data of one bind mount, as C strings prepared before the clone.
struct PreparedFile {
    host: CString,
    target: CString,
    flags: libc::c_ulong,
}

/// Everything the child touches, prepared in the parent.
struct Prepared {
    root: CString,
    root_opts: CString,
    tmp: CString,
    tmp_opts: CString,
    /// Directories to create in the jail root before the bind targets, parents first.
    dirs: Vec<CString>,
    files: Vec<PreparedFile>,
    exe: CString,
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
    /// Source fds already moved above every target number.
    fds: Vec<(RawFd, RawFd)>,
    max_target: RawFd,
    cgroup_fds: Vec<RawFd>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    cpu: Option<libc::cpu_set_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    slash: CString,
    dot: CString,
    tmpfs: CString,
    hostname: CString,
    seccomp: Vec<crate::seccomp::SockFilter>,
}

fn cstring(what: &str, bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| VmmError::InvalidConfig(format!("{what} contains a NUL byte")))
}

fn jail_err(step: &str, source: io::Error) -> VmmError {
    VmmError::Jail {
        step: step.to_string(),
        source,
    }
}

/// Starts `spec.exe` in the jail; returns the child's host pid once it has executed the program
/// (every jail step succeeded) or the step that failed.
pub(crate) fn spawn(spec: &JailSpec) -> Result<i32> {
    // Duplicate the child's fds above every target number, so that the child's dup2 calls cannot
    // overwrite a source that is still needed. They are close-on-exec and closed on return.
    let max_target = spec.fds.iter().map(|&(_, t)| t).max().unwrap_or(2).max(2);
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut fds = Vec::new();
    for &(src, target) in &spec.fds {
        // SAFETY: F_DUPFD_CLOEXEC on a caller-provided fd returns a new fd we own (or -1).
        let dup = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, max_target + 1) };
        if dup < 0 {
            return Err(jail_err(
                "duplicate fd for the child",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `dup` is a fresh fd owned by nobody else.
        held.push(unsafe { OwnedFd::from_raw_fd(dup) });
        fds.push((dup, target));
    }

    let mut files = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for f in &spec.files {
        let parts: Vec<&str> = f.name.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
            || parts[0] == "tmp"
        {
            return Err(VmmError::InvalidConfig(format!(
                "jail file name {:?} is not a plain relative path",
                f.name
            )));
        }
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
        if !f.device {
            flags |= libc::MS_NODEV;
        }
        if !f.writable {
            flags |= libc::MS_RDONLY;
        }
        if !f.executable {
            flags |= libc::MS_NOEXEC;
        }
        files.push(PreparedFile {
            host: cstring("host path", f.host.as_os_str().as_bytes())?,
            target: cstring("jail path", spec.root.join(&f.name).as_os_str().as_bytes())?,
            flags,
        });
    }
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstring("kernel argument", a.as_bytes()))
        .collect::<Result<_>>()?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|a| cstring("environment", a.as_bytes()))
        .collect::<Result<_>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let prepared = Prepared {
        root: cstring("jail root", spec.root.as_os_str().as_bytes())?,
        // One inode per bind target and directory (QEMU needs ~50 libraries), plus slack.
        root_opts: cstring(
            "options",
            format!(
                "size=256k,nr_inodes={},mode=0755",
                spec.files.len() + dirs.len() + 16
            )
            .as_bytes(),
        )?,
        tmp: cstring("jail tmp", spec.root.join("tmp").as_os_str().as_bytes())?,
        tmp_opts: cstring(
            "options",
            format!(
                "size={},nr_inodes=64,mode=0700,uid={},gid={}",
                spec.tmp_bytes, spec.uid, spec.gid
            )
            .as_bytes(),
        )?,
        dirs: dirs
            .iter()
            .map(|d| cstring("jail directory", spec.root.join(d).as_os_str().as_bytes()))
            .collect::<Result<_>>()?,
        files,
        exe: cstring("executable", spec.exe.as_bytes())?,
        _argv: argv,
        _env: env,
        argv_ptrs,
        env_ptrs,
        fds,
        max_target,
        cgroup_fds: spec.cgroup_procs.iter().map(|f| f.as_raw_fd()).collect(),
        rlimits: spec
            .rlimits
            .iter()
            .map(|&(r, v)| {
                (
                    r,
                    libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    },
                )
            })
            .collect(),
        cpu: spec.cpu.map(|cpu| {
            // SAFETY: cpu_set_t is a plain bit array; CPU_ZERO/CPU_SET only write into it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_ZERO(&mut set);
                libc::CPU_SET(cpu, &mut set);
                set
            }
        }),
        uid: spec.uid,
        gid: spec.gid,
        slash: cstring("/", b"/")?,
        dot: cstring(".", b".")?,
        tmpfs: cstring("tmpfs", b"tmpfs")?,
        hostname: cstring("hostname", b"strata-vm")?,
        seccomp: crate::seccomp::filter(),
    };

    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array we pass.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(jail_err("create error pipe", io::Error::last_os_error()));
    }
    // Keep the pipe above the targets as well.
    // SAFETY: fcntl dups our own pipe fds; the originals are closed right after.
    let (rd, wr) = unsafe {
        let rd = libc::fcntl(pipe[0], libc::F_DUPFD_CLOEXEC, max_target + 1);
        let wr = libc::fcntl(pipe[1], libc::F_DUPFD_CLOEXEC, max_target + 1);
        libc::close(pipe[0]);
        libc::close(pipe[1]);
        (rd, wr)
    };
    if rd < 0 || wr < 0 {
        return Err(jail_err("create error pipe", io::Error::last_os_error()));
    }
    // SAFETY: both are fresh fds we own.
    let (rd, wr) = unsafe { (File::from_raw_fd(rd), OwnedFd::from_raw_fd(wr)) };

    let flags = libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::SIGCHLD;
    // SAFETY: a raw clone without CLONE_VM and without a new stack behaves like fork(): the child
    // gets a copy of our memory and continues here. It only runs `child`, which makes system
    // calls on `prepared` (already allocated) and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(jail_err("clone namespaces", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: we are the freshly cloned child; see `child`.
        unsafe { child(&prepared, wr.as_raw_fd()) }
    }
    let pid = pid as i32;
    drop(wr);
    drop(held);

    let mut report = [0u8; 8];
    let mut rd = rd;
    let mut got = 0;
    while got < report.len() {
        match rd.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                reap(pid);
                return Err(jail_err("read child status", e));
            }
        }
    }
    if got == 0 {
        return Ok(pid); // the pipe closed on exec: every step succeeded
    }
    reap(pid);
    if got != report.len() {
        return Err(jail_err(
            "read child status",
            io::Error::from(io::ErrorKind::UnexpectedEof),
        ));
    }
    let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    let step = STEPS.get(step).copied().unwrap_or("unknown step");
    Err(jail_err(step, io::Error::from_raw_os_error(errno)))
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        while libc::waitpid(pid, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    }
}

/// Reports `step` and errno on the error pipe and exits the child.
///
/// # Safety
/// Only for the cloned child.
unsafe fn fail(err_fd: RawFd, step: u32) -> ! {
    let errno = *libc::__errno_location();
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&step.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(err_fd, buf.as_ptr().cast(), buf.len());
    libc::_exit(127)
}

/// The jailed child: every jail step, then execve. Never returns.
///
/// # Safety
/// Must only run in the child of `spawn`'s clone, with `p` prepared by the parent. It only makes
/// async-signal-safe system calls and does not allocate.
unsafe fn child(p: &Prepared, err: RawFd) -> ! {
    macro_rules! check {
        ($call:expr, $step:expr) => {
            if $call < 0 {
                fail(err, $step)
            }
        };
    }
    let null = std::ptr::null::<libc::c_char>();
    let nullv = std::ptr::null::<libc::c_void>();

    // Nothing done here may propagate back to the host's mount namespace.
    check!(
        libc::mount(
            null,
            p.slash.as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            nullv
        ),
        S_PRIVATE
    );
    check!(
        libc::mount(
            p.tmpfs.as_ptr(),
            p.root.as_ptr(),
            p.tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            p.root_opts.as_ptr().cast()
        ),
        S_ROOT_TMPFS
    );
    for d in &p.dirs {
        check!(libc::mkdir(d.as_ptr(), 0o755), S_MKDIR);
    }
    for f in &p.files {
        let fd = libc::open(
            f.target.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        );
        check!(fd, S_TARGET);
        libc::close(fd);
        check!(
            libc::mount(
                f.host.as_ptr(),
                f.target.as_ptr(),
                null,
                libc::MS_BIND,
                nullv
            ),
            S_BIND
        );
        check!(
            libc::mount(null, f.target.as_ptr(), null, f.flags, nullv),
            S_REMOUNT
        );
    }
    check!(libc::mkdir(p.tmp.as_ptr(), 0o700), S_MKDIR_TMP);
    // Not noexec: UML maps guest memory from a file here with PROT_EXEC.
    check!(
        libc::mount(
            p.tmpfs.as_ptr(),
            p.tmp.as_ptr(),
            p.tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            p.tmp_opts.as_ptr().cast()
        ),
        S_TMP_TMPFS
    );
    check!(libc::chdir(p.root.as_ptr()), S_CHDIR_ROOT);
    // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only the jail.
    check!(
        libc::syscall(libc::SYS_pivot_root, p.dot.as_ptr(), p.dot.as_ptr()) as libc::c_int,
        S_PIVOT
    );
    check!(libc::umount2(p.dot.as_ptr(), libc::MNT_DETACH), S_DETACH);
    check!(libc::chdir(p.slash.as_ptr()), S_CHDIR_SLASH);
    check!(
        libc::mount(
            null,
            p.slash.as_ptr(),
            null,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            nullv
        ),
        S_ROOT_RO
    );
    check!(
        libc::sethostname(p.hostname.as_ptr(), p.hostname.as_bytes().len()),
        S_HOSTNAME
    );
    check!(libc::setsid(), S_SETSID);
    let zero = b"0";
    for &fd in &p.cgroup_fds {
        check!(
            libc::write(fd, zero.as_ptr().cast(), 1) as libc::c_int,
            S_CGROUP
        );
    }
    for (resource, limit) in &p.rlimits {
        check!(libc::setrlimit(*resource, limit), S_RLIMIT);
    }
    // After the cgroup join (a cpuset there would reset the mask); inherited by every process
    // the kernel forks.
    if let Some(set) = &p.cpu {
        check!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set),
            S_AFFINITY
        );
    }
    for &(src, target) in &p.fds {
        check!(libc::dup2(src, target), S_DUP2);
    }
    // Everything else the parent had open must not reach the kernel process.
    check!(
        libc::syscall(
            libc::SYS_close_range,
            (p.max_target + 1) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC
        ) as libc::c_int,
        S_CLOSE_RANGE
    );
    for cap in 0..64 {
        if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0
            && *libc::__errno_location() != libc::EINVAL
        {
            fail(err, S_BOUNDING);
        }
    }
    // Raw system calls: glibc's wrappers would try to synchronise credentials across threads it
    // still believes exist (the parent's), which are not in this child, and hang.
    check!(
        libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) as libc::c_int,
        S_SETGROUPS
    );
    check!(
        libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) as libc::c_int,
        S_SETRESGID
    );
    check!(
        libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) as libc::c_int,
        S_SETRESUID
    );
    check!(
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0
        ),
        S_AMBIENT
    );
    // setresuid to a non-zero uid already cleared the permitted and effective sets; make sure.
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    check!(
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr()
        ) as libc::c_int,
        S_CAPSET
    );
    check!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), S_NNP);
    // The VM dies with the process that started it (its keeper, or a pooled VM's pool keeper):
    // a VM nobody keeps cannot be reached, stopped or cleaned up by anyone. After the last
    // change of credentials, which clears it. As PID 1 of the jail's pid namespace, our death
    // ends the kernel process and everything else in the jail. (Were the spawner killed
    // between the clone and this call, the VM would outlive it: the next sweep of its state
    // removes it, as before.)
    check!(
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
        S_PDEATHSIG
    );
    // Last, so that none of the steps above needs a denied call.
    let prog = crate::seccomp::SockFprog {
        len: p.seccomp.len() as u16,
        filter: p.seccomp.as_ptr(),
    };
    const SECCOMP_MODE_FILTER: libc::c_ulong = 2;
    check!(
        libc::prctl(
            libc::PR_SET_SECCOMP,
            SECCOMP_MODE_FILTER,
            &prog as *const crate::seccomp::SockFprog,
            0,
            0
        ),
        S_SECCOMP
    );
    // A raw fork: glibc's fork() would run atfork handlers that take locks the parent's other
    // threads may have held at the clone.
    let kernel = libc::syscall(
        libc::SYS_clone,
        libc::SIGCHLD as libc::c_ulong,
        0usize,
        0usize,
        0usize,
        0usize,
    ) as libc::pid_t;
    check!(kernel, S_FORK);
    if kernel == 0 {
        libc::execve(p.exe.as_ptr(), p.argv_ptrs.as_ptr(), p.env_ptrs.as_ptr());
        fail(err, S_EXEC)
    }
    reaper(kernel)
}

/// PID 1 of the jail once the kernel process runs: holds no file (so the channel and console
/// close when the kernel ends), reaps every child, and exits with the kernel's status.
///
/// # Safety
/// Only for the jail's PID 1, after the fork of the kernel process.
unsafe fn reaper(kernel: libc::pid_t) -> ! {
    libc::syscall(
        libc::SYS_close_range,
        0 as libc::c_uint,
        libc::c_uint::MAX,
        0,
    );
    loop {
        let mut status = 0;
        let pid = libc::waitpid(-1, &mut status, 0);
        if pid == kernel {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            libc::_exit(code)
        }
        if pid < 0 && *libc::__errno_location() != libc::EINTR {
            libc::_exit(127)
        }
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The CPU a single-CPU guest's host processes are pinned to: the one the caller runs on now
/// (where the scheduler just placed it, so a busy CPU is less likely), within the caller's
/// affinity; None when the caller may run on one CPU only (nothing to choose).
///
/// Why pin: a UML guest is one CPU whose kernel and user space are separate host processes
/// that hand control to each other over ptrace at every guest system call and page fault, and
/// never run at once. Left to the host scheduler they are spread over CPUs, and each hand-over
/// becomes a cross-CPU wake-up (an inter-processor interrupt, dear in a VM such as this host):
/// an exec of `true` into a UML VM took 11 or 19-25 ms depending on where they landed, pinned
/// 9-14 ms (docs/benchmarks.md, "Exec into a VM").
pub(crate) fn cpu_for_single_cpu_guest() -> Option<usize> {
    // SAFETY: sched_getaffinity writes into the zeroed set we own; CPU_* read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        if libc::CPU_COUNT(&set) < 2 {
            return None;
        }
        let now = libc::sched_getcpu();
        if now >= 0 && libc::CPU_ISSET(now as usize, &set) {
            return Some(now as usize);
        }
        (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set))
    }
}

/// A fresh unprivileged uid for one VM, from a range no login or container uid map uses, so
/// that two VMs (or a VM and any host process) never share an owner.
pub(crate) fn allocate_uid() -> u32 {
    const BASE: u32 = 2_100_000_000;
    let mut r = [0u8; 4];
    // SAFETY: getrandom fills the 4-byte buffer we pass.
    let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    let random = if n == 4 {
        u32::from_ne_bytes(r)
    } else {
        std::process::id()
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0))
    };
    BASE + random % (1 << 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_table_matches_constants() {
        assert_eq!(STEPS[S_EXEC as usize], "execve");
        assert_eq!(STEPS[S_HOSTNAME as usize], "sethostname");
        assert_eq!(STEPS[S_PIVOT as usize], "pivot_root");
        assert_eq!(STEPS[S_MKDIR as usize], "create directory");
        assert_eq!(STEPS[S_SECCOMP as usize], "install seccomp filter");
        assert_eq!(STEPS[S_FORK as usize], "fork the kernel process");
        assert_eq!(STEPS[S_AFFINITY as usize], "pin to one CPU");
        assert_eq!(STEPS[S_PDEATHSIG as usize], "set the parent-death signal");
        assert_eq!(STEPS.len(), S_PDEATHSIG as usize + 1);
    }

    #[test]
    fn a_single_cpu_guest_gets_a_cpu_the_caller_may_use_or_none_when_it_has_one() {
        std::thread::spawn(|| {
            // SAFETY: sched_getaffinity/sched_setaffinity on this test thread with a set we own.
            unsafe {
                let mut all: libc::cpu_set_t = std::mem::zeroed();
                let size = std::mem::size_of::<libc::cpu_set_t>();
                assert_eq!(libc::sched_getaffinity(0, size, &mut all), 0);
                let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                    .filter(|&c| libc::CPU_ISSET(c, &all))
                    .collect();
                match super::cpu_for_single_cpu_guest() {
                    Some(c) => assert!(allowed.len() > 1 && allowed.contains(&c), "{c}"),
                    None => assert_eq!(allowed.len(), 1),
                }
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(*allowed.last().unwrap(), &mut one);
                assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
                assert_eq!(super::cpu_for_single_cpu_guest(), None);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn uids_are_in_range() {
        for _ in 0..100 {
            let u = allocate_uid();
            assert!((2_100_000_000..2_100_000_000 + (1 << 24)).contains(&u));
        }
    }
}
