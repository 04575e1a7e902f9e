//! strata-vmm: runs a guest kernel as a VM behind one platform-neutral interface.
//!
//! - [`Platform`] (`uml`, `qemu`; `kvm` later) boots a [`VmConfig`] into a [`Vm`]; [`detect`] picks
//!   the best platform of this host and [`info`] explains the choice for `strata info`.
//! - On `qemu` ([`QemuPlatform`]) QEMU's microvm runs the guest kernel with KVM or TCG, confined
//!   by the same jail; disks are virtio-blk (qcow2 overlays over shared bases), the channel a
//!   virtio console (`/dev/hvc0`).
//! - On `uml` the guest kernel is a User-Mode Linux process confined by [`jail`](crate::jail):
//!   fresh pid/mount/ipc/net/uts namespaces (a reaper is PID 1, the kernel PID 2), a tmpfs root
//!   holding only its kernel, disks and initrd, its own cgroup, an unprivileged uid, no
//!   capabilities, no_new_privs.
//! - The agent reaches the guest in a tiny initramfs ([`initramfs::agent_initramfs`]) and runs as
//!   PID 1 via `rdinit=/strata-agent`; it reads the [`GuestContract`] from /proc/cmdline and talks
//!   strata-proto over the channel (`Vm::take_channel` on the host, `/dev/ttyS1` in a UML guest).
//! - Image disks come from [`disk::build_disk`]; guest kernels from [`kernel::list_kernels`]
//!   (scripts/build-guest-kernel.sh builds strata's own UML kernel).

mod cache_file;
pub mod cgroup;
pub mod contract;
mod cow;
pub mod disk;
mod error;
pub mod initramfs;
mod jail;
pub mod kernel;
mod kvm;
mod netns_tap;
mod platform;
mod platforms;
mod qcow2;
mod qemu;
pub mod qemu_hotplug;
pub mod qmp;
pub mod rehearsal;
mod seccomp;
mod uml;
pub mod uml_hotplug;
mod vm;

pub use cgroup::MemoryStats;
pub use contract::GuestContract;
pub use disk::{build_disk, DiskFormat};
pub use error::{Result, Unavailable, VmmError};
pub use kernel::{default_kernel, list_kernels, KernelInfo};
pub use kvm::KvmPlatform;
pub use netns_tap::{interface as netns_interface, tap_name, GuestNic};
pub use platform::{Console, Disk, Platform, VmConfig};
pub use platforms::{detect, info, platform, platforms};
pub use qemu::{
    accelerator, bzimage_release, Accel, QemuPlatform, CHANNEL_DEVICE as QEMU_CHANNEL_DEVICE,
};
pub use uml::{UmlPlatform, CHANNEL_DEVICE as UML_CHANNEL_DEVICE};
pub use vm::Vm;
