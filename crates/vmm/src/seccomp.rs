//! The guest kernel process's system-call filter: a deny list installed by the jail just before
//! it executes the UML kernel (inherited by every helper process UML forks).
//!
//! UML itself needs ordinary process syscalls (ptrace, mmap, clone of helpers, signals, I/O), so
//! an allow list would be fragile across kernel versions; instead the calls a compromised kernel
//! process could use to widen its reach or attack the host kernel are refused: new namespaces
//! (including user namespaces, which would give it capabilities again), mounts, kernel keyrings,
//! BPF, perf, userfaultfd, io_uring, module and kexec loading, handle-based opens. Guest system
//! calls never reach this filter: UML intercepts them with PTRACE_SYSEMU before seccomp runs.

/// A classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
pub(crate) struct SockFprog {
    pub len: u16,
    pub filter: *const SockFilter,
}

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20)
const BPF_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LOW: u32 = 16;

/// clone() flags that create namespaces.
const CLONE_NS_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

/// System calls refused with EPERM.
pub(crate) const DENIED: &[libc::c_long] = &[
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_fanotify_init,
    libc::SYS_syslog,
    libc::SYS_iopl,
    libc::SYS_ioperm,
];

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// The filter program (x86_64; any other architecture's system calls kill the process).
pub(crate) fn filter() -> Vec<SockFilter> {
    let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
        // The x32 ABI aliases every call under another number: refuse it wholesale.
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, eperm),
    ];
    for &nr in DENIED {
        p.push(jump(BPF_JEQ_K, nr as u32, 0, 1));
        p.push(stmt(BPF_RET_K, eperm));
    }
    // clone3 passes its flags in memory the filter cannot read: ENOSYS makes libc fall back to
    // clone, whose flags it can.
    p.push(jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    p.push(jump(BPF_JEQ_K, libc::SYS_clone as u32, 0, 3));
    p.push(stmt(BPF_LD_W_ABS, OFF_ARG0_LOW));
    p.push(jump(BPF_JSET_K, CLONE_NS_FLAGS, 0, 1));
    p.push(stmt(BPF_RET_K, eperm));
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p
}

/// A tiny classic-BPF interpreter for the instructions `filter` uses, so tests can check the
/// program's verdicts without installing it.
#[cfg(test)]
fn run(p: &[SockFilter], arch: u32, nr: u32, arg0: u64) -> u32 {
    let mut pc = 0usize;
    let mut a = 0u32;
    loop {
        let i = p[pc];
        match i.code {
            BPF_LD_W_ABS => {
                a = match i.k {
                    OFF_NR => nr,
                    OFF_ARCH => arch,
                    OFF_ARG0_LOW => arg0 as u32,
                    _ => panic!("load at {}", i.k),
                };
                pc += 1;
            }
            BPF_JEQ_K | BPF_JGE_K | BPF_JSET_K => {
                let t = match i.code {
                    BPF_JEQ_K => a == i.k,
                    BPF_JGE_K => a >= i.k,
                    _ => a & i.k != 0,
                };
                pc += 1 + usize::from(if t { i.jt } else { i.jf });
            }
            BPF_RET_K => return i.k,
            c => panic!("opcode {c:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: u32 = SECCOMP_RET_ALLOW;
    const EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn verdicts() {
        let p = filter();
        assert!(p.len() < 4096);
        let x86 = AUDIT_ARCH_X86_64;
        for nr in [
            libc::SYS_read,
            libc::SYS_mmap,
            libc::SYS_ptrace,
            libc::SYS_wait4,
            libc::SYS_execve,
        ] {
            assert_eq!(run(&p, x86, nr as u32, 0), ALLOW, "{nr}");
        }
        for &nr in DENIED {
            assert_eq!(run(&p, x86, nr as u32, 0), EPERM, "{nr}");
        }
        let clone = libc::SYS_clone as u32;
        let thread = (libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD) as u64;
        assert_eq!(run(&p, x86, clone, thread), ALLOW);
        assert_eq!(
            run(&p, x86, clone, thread | libc::CLONE_NEWUSER as u64),
            EPERM
        );
        assert_eq!(run(&p, x86, clone, libc::CLONE_NEWNS as u64), EPERM);
        assert_eq!(
            run(&p, x86, libc::SYS_clone3 as u32, 0),
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(
            run(&p, x86, X32_SYSCALL_BIT | libc::SYS_read as u32, 0),
            EPERM
        );
        assert_eq!(
            run(&p, 0x4000_0003, libc::SYS_read as u32, 0),
            SECCOMP_RET_KILL_PROCESS
        );
    }
}
