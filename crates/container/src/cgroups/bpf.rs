//! The bpf(2) calls behind the v2 device filter: load a BPF_PROG_TYPE_CGROUP_DEVICE
//! program, attach it to a cgroup directory, and detach the programs it replaces.
//! No libbpf: the attr structs below are the kernel's `union bpf_attr` members.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::devices::Insn;
use super::CgroupError;

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly initialised repr(C) prefix of `union bpf_attr`
    // for `cmd`, and we pass its exact size; the kernel zero-extends the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_from(r: libc::c_long) -> OwnedFd {
    // SAFETY: bpf(2) returned a fresh file descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

/// Loads `insns` as a device-cgroup program.
fn load(insns: &[Insn], dir: &Path) -> Result<OwnedFd, CgroupError> {
    let license = CString::new("Apache-2.0").expect("no NUL in literal");
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"strata_device");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr)
        .map(fd_from)
        .map_err(|source| CgroupError::Bpf {
            step: "BPF_PROG_LOAD",
            path: dir.to_path_buf(),
            source,
        })
}

/// Ids of the device programs attached directly to the cgroup.
fn attached(cgroup: &OwnedFd, dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr).map_err(|source| CgroupError::Bpf {
        step: "BPF_PROG_QUERY",
        path: dir.to_path_buf(),
        source,
    })?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// Attaches `insns` to the cgroup directory `dir` and then detaches the device
/// programs that were there before, so an update never leaves a moment with no filter.
pub(crate) fn apply_device_filter(dir: &Path, insns: &[Insn]) -> Result<(), CgroupError> {
    let cgroup: OwnedFd = std::fs::File::open(dir)
        .map_err(|source| CgroupError::Bpf {
            step: "open cgroup directory",
            path: dir.to_path_buf(),
            source,
        })?
        .into();
    let old = attached(&cgroup, dir)?;
    let prog = load(insns, dir)?;
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|source| CgroupError::Bpf {
        step: "BPF_PROG_ATTACH",
        path: dir.to_path_buf(),
        source,
    })?;
    for id in old {
        let mut get = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        let old_prog = match bpf(BPF_PROG_GET_FD_BY_ID, &mut get) {
            Ok(fd) => fd_from(fd),
            // Detached concurrently: nothing to do.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(source) => {
                return Err(CgroupError::Bpf {
                    step: "BPF_PROG_GET_FD_BY_ID",
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        let mut attr = AttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: old_prog.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        bpf(BPF_PROG_DETACH, &mut attr).map_err(|source| CgroupError::Bpf {
            step: "BPF_PROG_DETACH",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// How many device programs are attached to `dir` (for tests and diagnostics).
pub fn attached_device_programs(dir: &Path) -> Result<usize, CgroupError> {
    let cgroup: OwnedFd = std::fs::File::open(dir)
        .map_err(|source| CgroupError::Bpf {
            step: "open cgroup directory",
            path: dir.to_path_buf(),
            source,
        })?
        .into();
    Ok(attached(&cgroup, dir)?.len())
}
