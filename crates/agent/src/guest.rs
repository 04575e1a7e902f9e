//! PID 1 duties in the guest: the basic filesystems, the container rootfs (overlay of the
//! image's read-only disk and a writable layer), and powering off.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use strata_proto::GuestParams;

use crate::mounts::{mount, MountError};

/// Where the agent assembles the container rootfs.
pub const ROOTFS: &str = "/run/strata/root";
const LOWER: &str = "/run/strata/lower";
const UPPER_DISK: &str = "/run/strata/upper";

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /tmp and /run. Failures are returned as
/// warnings: the agent must reach the handshake to report them.
pub fn mount_basics() -> Vec<String> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let table: [(&str, &str, &str, MsFlags, &str); 7] = [
        (
            "proc",
            "/proc",
            "proc",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            "",
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            nosuid_nodev | MsFlags::MS_NOEXEC,
            "",
        ),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            "mode=0755",
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "ptmxmode=0666,mode=0620,gid=5",
        ),
        ("shm", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777"),
        ("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777"),
        ("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755"),
    ];
    let mut warnings = Vec::new();
    for (src, target, kind, flags, data) in table {
        let t = Path::new(target);
        let _ = std::fs::create_dir_all(t);
        match mount(src, t, kind, flags, data) {
            Ok(()) => {}
            // The kernel may have mounted devtmpfs already (CONFIG_DEVTMPFS_MOUNT).
            Err(MountError::Mount {
                errno: nix::errno::Errno::EBUSY,
                ..
            }) => {}
            Err(e) => warnings.push(e.to_string()),
        }
    }
    warnings
}

/// Builds the container rootfs from the guest parameters and returns its path. Without
/// `strata.lower` the guest's own root is the container rootfs.
pub fn assemble_rootfs(p: &GuestParams) -> Result<PathBuf, MountError> {
    let Some(lower) = &p.lower else {
        return Ok(PathBuf::from("/"));
    };
    let dir = |d: &str| -> Result<PathBuf, MountError> {
        std::fs::create_dir_all(d).map_err(|source| MountError::MountPoint {
            path: d.into(),
            source,
        })?;
        Ok(PathBuf::from(d))
    };
    let root = dir(ROOTFS)?;
    let fs = p.lowerfs.as_str();
    // Block devices of drivers loaded as modules (a user's kernel) may still be probing.
    for dev in std::iter::once(lower).chain(p.upper.as_ref()) {
        crate::channel::wait_for_device(
            std::path::Path::new(dev),
            std::time::Duration::from_secs(10),
        );
    }
    if p.root_rw {
        mount(lower, &root, fs, MsFlags::empty(), "")?;
        return Ok(root);
    }
    let lower_dir = dir(LOWER)?;
    mount(lower, &lower_dir, fs, MsFlags::MS_RDONLY, "")?;
    let upper_disk = dir(UPPER_DISK)?;
    match &p.upper {
        Some(dev) => mount(dev, &upper_disk, "ext4", MsFlags::empty(), "")?,
        None => {
            let data = p
                .upper_size
                .as_ref()
                .map(|s| format!("size={s},mode=0755"))
                .unwrap_or("mode=0755".into());
            mount("tmpfs", &upper_disk, "tmpfs", MsFlags::empty(), &data)?;
        }
    }
    let upper = dir(&format!("{UPPER_DISK}/upper"))?;
    let work = dir(&format!("{UPPER_DISK}/work"))?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower_dir.display(),
        upper.display(),
        work.display()
    );
    mount("overlay", &root, "overlay", MsFlags::empty(), &data)?;
    Ok(root)
}

/// Sets the guest's host name (the whole VM is one UTS namespace).
pub fn set_hostname(name: &str) -> Result<(), nix::errno::Errno> {
    nix::unistd::sethostname(name)
}

/// Kills every process, unmounts the container rootfs stack (so an upper disk that is kept
/// between runs has a clean journal), flushes the disks and powers the guest off. On UML this
/// ends the kernel process; where the platform asks for it (`strata.halt=reboot`: QEMU microvm,
/// which has no ACPI power-off and runs with `-no-reboot`) the guest resets instead, which ends
/// QEMU.
pub fn power_off() -> ! {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let how = if strata_proto::halt_by_reboot(&cmdline) {
        libc::RB_AUTOBOOT
    } else {
        libc::RB_POWER_OFF
    };
    // SAFETY: kill(-1) from PID 1 signals every other process in the guest.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    reap_all(std::time::Duration::from_secs(2));
    unmount_rootfs();
    // SAFETY: sync and reboot take no pointers; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(how);
    }
    // PID 1 must not exit (the kernel would panic), so wait here if power-off failed.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Reaps children until none are left or `limit` passes (killed processes die asynchronously,
/// and a busy filesystem cannot be unmounted).
pub fn reap_all(limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        // SAFETY: waitpid with a null status pointer.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid < 0 {
            return; // ECHILD: nobody left
        }
        if pid == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Unmounts everything under /run/strata, innermost first.
fn unmount_rootfs() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|t| t.starts_with("/run/strata"))
        .map(|t| t.replace("\\040", " "))
        .collect();
    targets.reverse();
    for t in targets {
        if nix::mount::umount2(t.as_str(), nix::mount::MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(t.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
