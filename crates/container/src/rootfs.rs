//! The container's root filesystem: the rootfs bind mount, every `mounts` entry, /dev,
//! sysctls, readonly and masked paths, then pivot_root (or MS_MOVE + chroot).
//!
//! Runs in the container's init, inside its new mount namespace, before pivot. Every target is
//! opened inside the rootfs with `resolve` (RESOLVE_IN_ROOT) and mounted through
//! /proc/self/fd/N, so symlinks in the image cannot redirect a mount onto the host.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::mounts::{parse_options, propagation_flag};
use crate::resolve::{self, fd_path};

/// A rootfs step failed; names the step and the path.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{step} {path}: {source}")]
    Sys {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("rootfs {0}: not a directory (check root.path in config.json)")]
    NotDir(PathBuf),
    /// The runtime did not report the container's cgroup directories created.
    #[error("mount cgroup: waiting for the runtime to create the cgroups: {0}")]
    CgroupsNotCreated(String),
}

fn err(step: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(nix::Error) -> RootfsError {
    let path = path.into();
    move |source| RootfsError::Sys { step, path, source }
}

/// What the rootfs set-up needs besides the spec.
pub struct RootfsContext<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// The rootfs directory, opened by init before it took its user namespace's ids (the
    /// mapped root may not be allowed to walk the host path of a bundle in a 0700 directory).
    pub rootfs_dir: BorrowedFd<'a>,
    pub bundle: &'a Path,
    /// Host directories of the container's cgroup, per hierarchy mount point name.
    pub cgroup_dirs: &'a [(String, PathBuf)],
    /// Whether the container has its own cgroup namespace.
    pub cgroup_ns: bool,
    /// In a user namespace: device nodes are bind-mounted from the host (mknod is refused).
    pub user_ns: bool,
    /// Waits until the runtime created the container's cgroup directories (it does so while
    /// we mount): called before a `cgroup` mount binds them.
    pub cgroups_created: &'a dyn Fn() -> Result<(), RootfsError>,
}

/// Prepares everything under the rootfs, up to (not including) pivot. Returns an fd of the
/// rootfs mount.
pub fn prepare(ctx: &RootfsContext) -> Result<OwnedFd, RootfsError> {
    let linux = ctx.spec.linux().as_ref();
    // Nothing we mount may propagate back to the host, and pivot_root refuses shared mounts
    // (the new root, its parent, the old root's parent) and a bind needs a bindable source:
    // everything is a slave of the host until pivot_root; linux.rootfsPropagation is applied
    // to the new root after it (`enter`), as runc does.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("make / propagation", "/"))?;
    let root = bind_rootfs(ctx.rootfs_dir, ctx.rootfs)?;

    let mounts = ctx.spec.mounts().as_deref().unwrap_or_default();
    for m in mounts {
        mount_entry(ctx, root.as_fd(), m)?;
    }
    let dev_is_bind = mounts.iter().any(|m| {
        m.destination() == Path::new("/dev")
            && parse_options(m.options().as_deref().unwrap_or_default()).bind
    });
    // Like runc: nodes get their exact mode from mknod itself (no chmod after each); the umask
    // is restored at once (the workload's is set in process.rs).
    let umask = ZeroUmask::new();
    if !dev_is_bind {
        create_default_devices(root.as_fd(), ctx.user_ns)?;
    }
    for d in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        create_device(root.as_fd(), d, ctx.user_ns)?;
    }
    drop(umask);
    Ok(root)
}

/// Binds the rootfs onto itself (recursively) by its fd, never by path, and returns the root
/// of that new mount: `open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)` + `move_mount` onto the
/// directory. The fd is what `enter` pivots into.
fn bind_rootfs(dir: BorrowedFd, rootfs: &Path) -> Result<OwnedFd, RootfsError> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let st = nix::sys::stat::fstat(dir.as_raw_fd()).map_err(err("stat rootfs", rootfs))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Err(RootfsError::NotDir(rootfs.to_path_buf()));
    }
    // SAFETY: open_tree on an fd we hold with an empty C string and AT_EMPTY_PATH; it returns
    // a new fd (a detached recursive bind of the rootfs) that we own.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE
                | AT_RECURSIVE
                | libc::O_CLOEXEC as libc::c_uint
                | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(err("bind mount rootfs", rootfs)(nix::Error::last()));
    }
    // SAFETY: a new fd we own.
    let tree = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(tree as RawFd) };
    // SAFETY: move_mount between two fds we hold, with empty C strings and *_EMPTY_PATH.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(err("bind mount rootfs", rootfs)(nix::Error::last()));
    }
    Ok(tree)
}

/// A umask of 0 while it lives (single-threaded init); the previous one is restored on drop.
struct ZeroUmask(Mode);

impl ZeroUmask {
    fn new() -> ZeroUmask {
        ZeroUmask(nix::sys::stat::umask(Mode::empty()))
    }
}

impl Drop for ZeroUmask {
    fn drop(&mut self) {
        nix::sys::stat::umask(self.0);
    }
}

fn mount_entry(ctx: &RootfsContext, root: BorrowedFd, m: &Mount) -> Result<(), RootfsError> {
    let dest = m.destination();
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.bind { "bind" } else { "none" });
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(ctx, root, m, &opts);
    }
    if opts.bind {
        let src = m.source().clone().unwrap_or_default();
        let src = if src.is_absolute() {
            src
        } else {
            ctx.bundle.join(src)
        };
        let meta = std::fs::metadata(&src).map_err(|e| {
            err("stat bind source", &src)(nix::Error::from_raw(
                e.raw_os_error().unwrap_or(libc::EIO),
            ))
        })?;
        let target = if meta.is_dir() {
            resolve::mkdir_all(root, dest, 0o755)
        } else {
            resolve::create_file(root, dest)
        }
        .map_err(err("create mount target", dest))?;
        let bind = opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
        mount(
            Some(&src),
            fd_path(&target).as_str(),
            None::<&str>,
            bind,
            None::<&str>,
        )
        .map_err(err("bind mount", dest))?;
        let rest = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            remount(root, dest, rest)?;
        }
    } else {
        let target =
            resolve::mkdir_all(root, dest, 0o755).map_err(err("create mount target", dest))?;
        let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        let r = mount(
            Some(&src),
            fd_path(&target).as_str(),
            Some(typ),
            opts.flags,
            data,
        );
        match r {
            Ok(()) => {}
            // sysfs can only be mounted by the owner of the network namespace: like runc,
            // fall back to a recursive read-only bind of the host's /sys.
            Err(nix::Error::EPERM) if typ == "sysfs" => {
                mount(
                    Some("/sys"),
                    fd_path(&target).as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(err("bind mount /sys", dest))?;
                remount(root, dest, opts.flags | MsFlags::MS_RDONLY)?;
            }
            Err(e) => return Err(err("mount", dest)(e)),
        }
    }
    for p in &opts.propagation {
        let t = resolve::open_path(root, dest).map_err(err("reopen mount", dest))?;
        mount(
            None::<&str>,
            fd_path(&t).as_str(),
            None::<&str>,
            *p,
            None::<&str>,
        )
        .map_err(err("set mount propagation", dest))?;
    }
    Ok(())
}

/// Flags that a remount in a user namespace must keep (they are locked on the source).
fn locked_flags(path: &str) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            out |= b;
        }
    }
    out
}

/// Remounts the (bind) mount now at `dest` with `flags` (ro, nosuid...).
fn remount(root: BorrowedFd, dest: &Path, flags: MsFlags) -> Result<(), RootfsError> {
    // Reopen: the fd used for the first mount still points at the covered directory.
    let t = resolve::open_path(root, dest).map_err(err("reopen mount", dest))?;
    remount_at(&fd_path(&t), dest, flags)
}

/// Remounts the (bind) mount at the host path `p` (a /proc/self/fd path) that the container
/// sees at `dest`.
fn remount_at(p: &str, dest: &Path, flags: MsFlags) -> Result<(), RootfsError> {
    let flags = flags - MsFlags::MS_REC;
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    match mount(None::<&str>, p, None::<&str>, base | flags, None::<&str>) {
        Err(nix::Error::EPERM) => {
            let keep = locked_flags(p);
            mount(
                None::<&str>,
                p,
                None::<&str>,
                base | flags | keep,
                None::<&str>,
            )
            .map_err(err("remount", dest))
        }
        r => r.map_err(err("remount", dest)),
    }
}

/// A `cgroup` mount: with a cgroup namespace on a pure v2 host, a real cgroup2 mount;
/// otherwise (v1 and hybrid, like runc) a tmpfs holding a bind mount of the container's own
/// directory of every hierarchy.
fn mount_cgroup(
    ctx: &RootfsContext,
    root: BorrowedFd,
    m: &Mount,
    opts: &crate::mounts::MountOptions,
) -> Result<(), RootfsError> {
    let dest = m.destination();
    let target = resolve::mkdir_all(root, dest, 0o755).map_err(err("create mount target", dest))?;
    let flags = opts.flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    (ctx.cgroups_created)()?;
    let only_unified = ctx.cgroup_dirs.len() == 1 && ctx.cgroup_dirs[0].0.is_empty();
    if only_unified && ctx.cgroup_ns {
        return mount(
            Some("cgroup2"),
            fd_path(&target).as_str(),
            Some("cgroup2"),
            flags,
            None::<&str>,
        )
        .map_err(err("mount cgroup2", dest));
    }
    if only_unified {
        mount(
            Some(&ctx.cgroup_dirs[0].1),
            fd_path(&target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err("bind mount cgroup", dest))?;
        return remount(root, dest, flags);
    }
    mount(
        Some("tmpfs"),
        fd_path(&target).as_str(),
        Some("tmpfs"),
        (flags - MsFlags::MS_RDONLY) | MsFlags::MS_NOSUID,
        Some("mode=755"),
    )
    .map_err(err("mount cgroup tmpfs", dest))?;
    // The tmpfs is ours, new and empty, and nothing of the container runs yet: each hierarchy
    // is one name created and bound in it through the tmpfs's fd (3 syscalls a hierarchy, not
    // a resolve inside the root for each of mkdir, bind and remount).
    let tmpfs = resolve::open_path(root, dest).map_err(err("reopen mount", dest))?;
    let dir = fd_path(&tmpfs);
    for (name, host_dir) in ctx.cgroup_dirs {
        let sub = dest.join(name);
        let one_name = matches!(
            Path::new(name).components().collect::<Vec<_>>().as_slice(),
            [std::path::Component::Normal(_)]
        );
        if !one_name {
            return Err(err("create cgroup dir", &sub)(nix::Error::EINVAL));
        }
        nix::sys::stat::mkdirat(
            Some(tmpfs.as_raw_fd()),
            name.as_str(),
            Mode::from_bits_truncate(0o755),
        )
        .map_err(err("create cgroup dir", &sub))?;
        let p = format!("{dir}/{name}");
        mount(
            Some(host_dir),
            p.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err("bind mount cgroup", &sub))?;
        remount_at(&p, &sub, flags)?;
    }
    if opts.readonly {
        remount(root, dest, flags)?;
    }
    Ok(())
}

struct DefaultDevice {
    name: &'static str,
    major: u64,
    minor: u64,
}

const DEFAULT_DEVICES: [DefaultDevice; 6] = [
    DefaultDevice {
        name: "null",
        major: 1,
        minor: 3,
    },
    DefaultDevice {
        name: "zero",
        major: 1,
        minor: 5,
    },
    DefaultDevice {
        name: "full",
        major: 1,
        minor: 7,
    },
    DefaultDevice {
        name: "random",
        major: 1,
        minor: 8,
    },
    DefaultDevice {
        name: "urandom",
        major: 1,
        minor: 9,
    },
    DefaultDevice {
        name: "tty",
        major: 5,
        minor: 0,
    },
];

fn create_default_devices(root: BorrowedFd, user_ns: bool) -> Result<(), RootfsError> {
    let dev = resolve::mkdir_all(root, Path::new("/dev"), 0o755).map_err(err("create", "/dev"))?;
    if user_ns {
        for d in &DEFAULT_DEVICES {
            let path = Path::new("/dev").join(d.name);
            bind_host_node(root, &path)?;
        }
    } else {
        // One directory fd for all of them (they share /dev).
        let dirfd = open_dir(&dev).map_err(err("open device dir", "/dev"))?;
        for d in &DEFAULT_DEVICES {
            let path = Path::new("/dev").join(d.name);
            node_at(
                dirfd.as_fd(),
                std::ffi::OsStr::new(d.name),
                &path,
                SFlag::S_IFCHR,
                nix::sys::stat::makedev(d.major, d.minor),
                0o666,
                None,
            )?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        match nix::unistd::symlinkat(target, Some(dev.as_raw_fd()), link) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(err("symlink", Path::new("/dev").join(link))(e)),
        }
    }
    Ok(())
}

fn create_device(root: BorrowedFd, d: &LinuxDevice, user_ns: bool) -> Result<(), RootfsError> {
    let (kind, major, minor) = match d.typ() {
        LinuxDeviceType::B => (SFlag::S_IFBLK, d.major(), d.minor()),
        // A FIFO has no device number.
        LinuxDeviceType::P => (SFlag::S_IFIFO, 0, 0),
        _ => (SFlag::S_IFCHR, d.major(), d.minor()),
    };
    let owner = Some((d.uid().unwrap_or(0), d.gid().unwrap_or(0)));
    make_node(
        root,
        d.path(),
        kind,
        major as u64,
        minor as u64,
        d.file_mode().unwrap_or(0o666),
        owner,
        user_ns,
    )
}

#[allow(clippy::too_many_arguments)]
fn make_node(
    root: BorrowedFd,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    owner: Option<(u32, u32)>,
    user_ns: bool,
) -> Result<(), RootfsError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| err("device path", path)(nix::Error::EINVAL))?;
    let pfd = resolve::mkdir_all(root, parent, 0o755).map_err(err("create device dir", parent))?;
    // mknod of a FIFO needs no privilege, so a user namespace makes it too; device nodes are
    // bound from the host there.
    if user_ns && kind != SFlag::S_IFIFO {
        return bind_host_node(root, path);
    }
    let dirfd = open_dir(&pfd).map_err(err("open device dir", parent))?;
    let dev = nix::sys::stat::makedev(major, minor);
    node_at(dirfd.as_fd(), name, path, kind, dev, mode, owner)
}

/// In a user namespace mknod is not allowed: binds the host's node, as runc does.
fn bind_host_node(root: BorrowedFd, path: &Path) -> Result<(), RootfsError> {
    let target = resolve::create_file(root, path).map_err(err("create device target", path))?;
    mount(
        Some(path),
        fd_path(&target).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err("bind mount device", path))
}

/// Reopens an O_PATH directory fd for real (O_PATH fds cannot be used as *at() dirfds for
/// mknod).
fn open_dir(pfd: &OwnedFd) -> Result<OwnedFd, nix::Error> {
    let dirfd = nix::fcntl::open(
        fd_path(pfd).as_str(),
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_RDONLY,
        Mode::empty(),
    )?;
    // SAFETY: open returned a fresh fd we own.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dirfd) })
}

/// Replaces `name` in `dir` (the container's `path`) with a new node. The caller set the
/// umask to 0 (`ZeroUmask`), so mknod gives it exactly `mode`.
fn node_at(
    dir: BorrowedFd,
    name: &std::ffi::OsStr,
    path: &Path,
    kind: SFlag,
    dev: libc::dev_t,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), RootfsError> {
    let _ = nix::unistd::unlinkat(
        Some(dir.as_raw_fd()),
        name,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    nix::sys::stat::mknodat(
        Some(dir.as_raw_fd()),
        name,
        kind,
        Mode::from_bits_truncate(mode),
        dev,
    )
    .map_err(err("mknod", path))?;
    if let Some((uid, gid)) = owner {
        nix::unistd::fchownat(
            Some(dir.as_raw_fd()),
            name,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(err("chown device", path))?;
    }
    Ok(())
}

/// Writes linux.sysctl through the container's /proc/sys (so net.* lands in its network
/// namespace).
pub fn set_sysctls(root: BorrowedFd, spec: &Spec) -> Result<(), RootfsError> {
    let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) else {
        return Ok(());
    };
    for (k, v) in sysctl {
        let path = Path::new("/proc/sys").join(k.replace('.', "/"));
        let fd = resolve::open_in_root(root, &path, libc::O_WRONLY | libc::O_TRUNC, 0)
            .map_err(err("open sysctl", &path))?;
        nix::unistd::write(&fd, v.as_bytes()).map_err(err("write sysctl", &path))?;
    }
    Ok(())
}

/// Bind-mounts every linux.readonlyPaths entry read-only onto itself.
pub fn readonly_paths(root: BorrowedFd, spec: &Spec) -> Result<(), RootfsError> {
    for p in spec
        .linux()
        .as_ref()
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        let fd = match resolve::open_path(root, path) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => continue,
            Err(e) => return Err(err("open readonly path", path)(e)),
        };
        mount(
            Some(fd_path(&fd).as_str()),
            fd_path(&fd).as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err("bind readonly path", path))?;
        remount(
            root,
            path,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    Ok(())
}

/// Hides every linux.maskedPaths entry: /dev/null (of the host, opened before any container
/// path is trusted) over files, an empty read-only tmpfs over directories.
pub fn masked_paths(
    root: BorrowedFd,
    spec: &Spec,
    host_null: BorrowedFd,
) -> Result<(), RootfsError> {
    let null = format!("/proc/self/fd/{}", host_null.as_raw_fd());
    for p in spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        let fd = match resolve::open_path(root, path) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => continue,
            Err(e) => return Err(err("open masked path", path)(e)),
        };
        let is_dir = nix::sys::stat::fstat(fd.as_raw_fd())
            .map(|s| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
            .unwrap_or(false);
        let r = if is_dir {
            mount(
                Some("tmpfs"),
                fd_path(&fd).as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some(null.as_str()),
                fd_path(&fd).as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(err("mask path", path))?;
    }
    Ok(())
}

/// linux.rootfsPropagation as mount flags (`None`: runc's default, the rslave set before
/// pivot_root stays).
pub fn root_propagation(spec: &Spec) -> Option<MsFlags> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
}

/// Makes the rootfs the process's root: pivot_root(".", ".") then a lazy unmount of the old
/// root stacked on top, or with `no_pivot` MS_MOVE + chroot (for ramfs roots); then gives the
/// new root linux.rootfsPropagation (`propagation`): a shared root is a new peer group of the
/// container's own, not the host's.
pub fn enter(
    root: BorrowedFd,
    rootfs: &Path,
    no_pivot: bool,
    propagation: Option<MsFlags>,
) -> Result<(), RootfsError> {
    nix::unistd::fchdir(root.as_raw_fd()).map_err(err("chdir", rootfs))?;
    if no_pivot {
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(err("move rootfs to /", rootfs))?;
        nix::unistd::chroot(".").map_err(err("chroot", rootfs))?;
    } else {
        nix::unistd::pivot_root(".", ".").map_err(err("pivot_root", rootfs))?;
        // The old root is now mounted on top of "/": keep its unmount from propagating to
        // the host, then detach it.
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err("make old root slave", "/"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(err("unmount old root", "/"))?;
    }
    nix::unistd::chdir("/").map_err(err("chdir", "/"))?;
    if let Some(flags) = propagation {
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .map_err(err("set linux.rootfsPropagation on", "/"))?;
    }
    Ok(())
}

/// Remounts "/" read-only (root.readonly).
pub fn readonly_root() -> Result<(), RootfsError> {
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    match mount(None::<&str>, "/", None::<&str>, base, None::<&str>) {
        Err(nix::Error::EPERM) => mount(
            None::<&str>,
            "/",
            None::<&str>,
            base | locked_flags("/"),
            None::<&str>,
        )
        .map_err(err("remount / read-only", "/")),
        r => r.map_err(err("remount / read-only", "/")),
    }
}
