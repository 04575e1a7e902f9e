//! Hot-adding a disk to a running UML VM (the warm pool's hand-over): the disk's files are
//! bound into the VM's jail, then the guest kernel is told to attach them through its management
//! console (mconsole, `config ubdN=COW,BASE`).
//!
//! The jail's mount namespace is private (nothing propagates into it), so a forked child enters
//! it with setns(2) and moves detached bind mounts of the files (made with open_tree(2) in the
//! host's namespace, read-only for the base) onto empty files in the jail's private `/tmp`. The
//! same child talks to the console socket, whose path (`/tmp/<umid>/mconsole`) and the child's
//! own reply socket resolve inside the jail. Only root reaches either: the socket lives in the
//! jail's /tmp, and the guest's own processes cannot reach host sockets at all.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::error::{Result, VmmError};

/// The UML instance id strata gives every VM (`umid=`): the console socket is then at
/// `/tmp/vm/mconsole` in the jail (`uml_dir=/tmp`; each jail has its own /tmp).
pub const UMID: &str = "vm";
const MCONSOLE_SOCKET: &str = "/tmp/vm/mconsole";
const REPLY_SOCKET: &str = "/tmp/.hotplug.sock";
const MCONSOLE_MAGIC: u32 = 0xcafe_babe;
const MCONSOLE_VERSION: u32 = 2;
const MCONSOLE_MAX_DATA: usize = 512;

/// The names a hot-added disk `index` has inside the jail: its base and its COW file.
pub fn jail_names(index: usize) -> (String, String) {
    (format!("/tmp/disk{index}"), format!("/tmp/disk{index}.cow"))
}

/// The mconsole request `config ubdN=...` as bytes (`struct mconsole_request`, host order).
fn request(command: &str) -> Result<Vec<u8>> {
    if command.len() >= MCONSOLE_MAX_DATA {
        return Err(VmmError::InvalidConfig(format!(
            "mconsole command too long ({} bytes)",
            command.len()
        )));
    }
    let mut b = Vec::with_capacity(12 + MCONSOLE_MAX_DATA);
    b.extend_from_slice(&MCONSOLE_MAGIC.to_ne_bytes());
    b.extend_from_slice(&MCONSOLE_VERSION.to_ne_bytes());
    b.extend_from_slice(&(command.len() as u32).to_ne_bytes());
    b.extend_from_slice(command.as_bytes());
    b.resize(12 + MCONSOLE_MAX_DATA, 0);
    Ok(b)
}

fn os_err(step: &str, e: std::io::Error) -> VmmError {
    VmmError::Jail {
        step: format!("hot-add disk: {step}"),
        source: e,
    }
}

/// A detached bind mount of `path` (read-only unless `writable`; never exec, suid or devices).
fn detached_mount(path: &Path, writable: bool) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| VmmError::InvalidConfig(format!("{}: NUL in path", path.display())))?;
    // SAFETY: open_tree with a valid C string; the result is a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    } as RawFd;
    if fd < 0 {
        return Err(VmmError::file(
            "hot-added disk",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd was just returned by the kernel and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut attr = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;
    if !writable {
        attr |= libc::MOUNT_ATTR_RDONLY;
    }
    // struct mount_attr { u64 attr_set, attr_clr, propagation, userns_fd }
    let ma: [u64; 4] = [attr, 0, 0, 0];
    let empty = c"";
    // SAFETY: mount_setattr on our detached mount with a correctly sized struct mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            ma.as_ptr(),
            std::mem::size_of_val(&ma),
        )
    };
    if r < 0 {
        return Err(os_err("mount_setattr", std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Attaches `base` (read-only) with a new COW file `cow` (created here, owned by the VM's uid
/// `uid`) as ubd device `index` of the running UML VM whose leader is `vm_pid`. Returns once the
/// guest kernel has added the device (its /dev node exists then: devtmpfs creates it
/// synchronously).
pub fn hot_add_disk(vm_pid: i32, uid: u32, index: usize, base: &Path, cow: &Path) -> Result<()> {
    let (base_name, cow_name) = jail_names(index);
    let f = crate::cow::create(cow, base, &base_name).map_err(|source| VmmError::Cow {
        cow: cow.to_path_buf(),
        base: base.to_path_buf(),
        source,
    })?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(uid))
        .map_err(|e| VmmError::file("COW file", cow, e))?;
    drop(f);
    let command = format!("config ubd{index}={cow_name},{base_name}");
    let req = request(&command)?;
    let ns = File::open(format!("/proc/{vm_pid}/ns/mnt"))
        .map_err(|e| os_err("open the VM's mount namespace", e))?;
    let mounts = [
        (
            detached_mount(base, false)?,
            CString::new(base_name).unwrap(),
        ),
        (detached_mount(cow, true)?, CString::new(cow_name).unwrap()),
    ];
    let reply_path = CString::new(REPLY_SOCKET).unwrap();
    let (console_addr, console_len) = sockaddr(MCONSOLE_SOCKET);
    let (reply_addr, reply_len) = sockaddr(REPLY_SOCKET);
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 fills a two-element array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(os_err("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just made by pipe2 and are ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: the child makes only raw system calls on data prepared above and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the forked child; see child().
        unsafe {
            child(
                ns.as_raw_fd(),
                &mounts,
                &reply_path,
                (&reply_addr, reply_len),
                (&console_addr, console_len),
                &req,
                wr.as_raw_fd(),
            )
        }
    }
    drop(wr);
    let mut out = Vec::new();
    let _ = File::from(rd).take(4096).read_to_end(&mut out);
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !ok {
        let m = String::from_utf8_lossy(&out).trim().to_string();
        return Err(VmmError::InvalidConfig(format!(
            "hot-add disk {} as ubd{index} in VM {vm_pid}: {}",
            base.display(),
            if m.is_empty() {
                "the helper process died".to_string()
            } else {
                m
            }
        )));
    }
    Ok(())
}

fn sockaddr(path: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; all zero is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(path.as_bytes()) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
    (a, len as libc::socklen_t)
}

/// Writes `msg` and the errno to the parent and exits 1.
unsafe fn fail(out: RawFd, msg: &str) -> ! {
    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let _ = libc::write(out, msg.as_ptr().cast(), msg.len());
    // The errno in decimal, without allocating.
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut n = e.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let tag = b" (errno ";
    let _ = libc::write(out, tag.as_ptr().cast(), tag.len());
    let _ = libc::write(out, buf[i..].as_ptr().cast(), buf.len() - i);
    let _ = libc::write(out, b")".as_ptr().cast(), 1);
    libc::_exit(1)
}

/// # Safety
/// Only in the child forked by `hot_add_disk`: raw system calls, no allocation.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    ns: RawFd,
    mounts: &[(OwnedFd, CString)],
    reply_path: &CString,
    reply: (&libc::sockaddr_un, libc::socklen_t),
    console: (&libc::sockaddr_un, libc::socklen_t),
    req: &[u8],
    out: RawFd,
) -> ! {
    if libc::setns(ns, libc::CLONE_NEWNS) < 0 {
        fail(out, "enter the VM's mount namespace");
    }
    for (fd, target) in mounts {
        let t = libc::open(
            target.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        );
        if t < 0 {
            fail(out, "create the disk's mount point in the jail");
        }
        libc::close(t);
        let empty = c"";
        if libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        ) < 0
        {
            fail(out, "bind the disk into the jail");
        }
    }
    let s = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if s < 0 {
        fail(out, "mconsole socket");
    }
    libc::unlink(reply_path.as_ptr());
    if libc::bind(s, (reply.0 as *const libc::sockaddr_un).cast(), reply.1) < 0 {
        fail(out, "bind the mconsole reply socket");
    }
    // The guest kernel runs as the VM's unprivileged uid: it must be able to answer.
    libc::chmod(reply_path.as_ptr(), 0o666);
    let tv = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    libc::setsockopt(
        s,
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        (&tv as *const libc::timeval).cast(),
        std::mem::size_of::<libc::timeval>() as libc::socklen_t,
    );
    if libc::sendto(
        s,
        req.as_ptr().cast(),
        req.len(),
        0,
        (console.0 as *const libc::sockaddr_un).cast(),
        console.1,
    ) < 0
    {
        libc::unlink(reply_path.as_ptr());
        fail(
            out,
            "send to the guest kernel's management console (a kernel without CONFIG_MCONSOLE?)",
        );
    }
    let mut buf = [0u8; 12 + MCONSOLE_MAX_DATA];
    let n = libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), 0);
    libc::unlink(reply_path.as_ptr());
    if n < 0 {
        fail(out, "no answer from the guest kernel's management console");
    }
    let n = n as usize;
    // err word first; the text after the header is the kernel's reason.
    let err = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if n < 12 || err != 0 {
        let msg = b"the guest kernel refused the disk: ";
        libc::write(out, msg.as_ptr().cast(), msg.len());
        let end = buf[12..n.max(12)]
            .iter()
            .position(|&c| c == 0)
            .map_or(n.max(12), |p| 12 + p);
        libc::write(out, buf[12..end].as_ptr().cast(), end - 12);
        libc::_exit(1);
    }
    libc::_exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_versioned_and_bounded() {
        let r = request("config ubd0=/tmp/disk0.cow,/tmp/disk0").unwrap();
        assert_eq!(r.len(), 12 + MCONSOLE_MAX_DATA);
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()),
            MCONSOLE_MAGIC
        );
        assert_eq!(u32::from_ne_bytes(r[4..8].try_into().unwrap()), 2);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 37);
        assert!(request(&"x".repeat(512)).is_err());
    }
}
