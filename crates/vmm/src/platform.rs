//! The platform-neutral VM interface: a [`Platform`] boots a [`VmConfig`] into a running [`Vm`].
//! The platforms themselves, by name, are in platforms.rs.

use std::path::PathBuf;

use crate::error::{Result, Unavailable, VmmError};
use crate::vm::Vm;

/// One block device of a VM, in the order the guest sees them (index 0 is the first disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The host file holding the disk image.
    pub path: PathBuf,
    /// A copy-on-write file layered over `path`: guest writes land here and `path` is never
    /// written (it may be shared by many VMs). It is created fresh at boot; an existing file is
    /// replaced.
    pub cow: Option<PathBuf>,
    /// Expose the disk read-only to the guest (ignored with `cow`, which is writable).
    pub read_only: bool,
}

/// Where the guest kernel's console output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Console {
    /// Discarded.
    #[default]
    Null,
    /// Appended to this host file (kernel messages and the guest's console).
    File(PathBuf),
}

/// Everything needed to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// A unique id (container id); names the VM's cgroup when `cgroups_path` is unset.
    /// `[A-Za-z0-9_.-]`, ≤ 64 bytes.
    pub id: String,
    /// Where the VM's host processes are confined, as runc interprets config.json's
    /// `linux.cgroupsPath` (absolute: from each hierarchy's root; relative: under the caller's
    /// own cgroup). `None`: strata's `/strata-vm/<id>`.
    pub cgroups_path: Option<PathBuf>,
    /// The guest kernel (for UML, the `linux` executable).
    pub kernel: PathBuf,
    /// An initramfs (newc cpio) the kernel unpacks as its first root, e.g. the agent's
    /// ([`crate::initramfs`]).
    pub initrd: Option<PathBuf>,
    /// The guest path of PID 1: passed as `rdinit=` with an initrd, `init=` otherwise.
    pub init: Option<String>,
    /// Guest memory.
    pub memory_mib: u32,
    /// Virtual CPUs (UML 6.1 is uniprocessor: only 1).
    pub vcpus: u32,
    /// A CPU time limit for the VM's host processes, in CPUs (`--cpus 0.5`), as a cgroup quota.
    pub cpu_limit: Option<f64>,
    /// Block devices, in guest order.
    pub disks: Vec<Disk>,
    /// Extra kernel parameters (e.g. the guest contract from [`crate::GuestContract`]), placed
    /// before `init=` so that the kernel, not init, receives them.
    pub kernel_params: Vec<String>,
    /// Where the console goes.
    pub console: Console,
    /// A network namespace prepared for the VM (by strata's CNI attachment or an engine): the
    /// guest gets one NIC that takes over that namespace's interface (address, MAC, routes;
    /// see netns_tap.rs). None: the guest has only its loopback.
    pub network: Option<PathBuf>,
    /// The namespace in `network` is configured after boot (an engine's CNI ADD between
    /// `create` and `start`, as containerd's `ctr run --cni` does): the guest boots with its
    /// NIC on a tap of that namespace, unconnected, and [`crate::Vm::take_over_network`] joins
    /// it to the namespace's interface later. Only on platforms whose
    /// [`Platform::nic_at_start`] is true.
    pub network_at_start: bool,
    /// A host directory private to this VM (e.g. `/run/strata/vm/<id>`); created if missing. The
    /// jail's root mount point lives here; it is removed again when the VM is reaped.
    pub runtime_dir: PathBuf,
    /// Boot with a placeholder root disk (disk 0, no `disks`) that the image replaces later
    /// (qemu: the warm pool, [`crate::qemu_hotplug`]); the VM then has a QMP monitor
    /// ([`crate::Vm::take_qmp`]). Only the qemu platform has this.
    pub hot_root: bool,
    /// A pooled VM's rehearsal disk ([`crate::rehearsal`]): read-only, the guest's second block
    /// device after the placeholder root. Only with `hot_root` (the qemu platform).
    pub rehearsal_disk: Option<PathBuf>,
}

impl VmConfig {
    /// A configuration with defaults (128 MiB, 1 vCPU, no disks, console discarded).
    pub fn new(
        id: impl Into<String>,
        kernel: impl Into<PathBuf>,
        runtime_dir: impl Into<PathBuf>,
    ) -> Self {
        VmConfig {
            id: id.into(),
            cgroups_path: None,
            kernel: kernel.into(),
            initrd: None,
            init: None,
            memory_mib: 128,
            vcpus: 1,
            cpu_limit: None,
            disks: Vec::new(),
            kernel_params: Vec::new(),
            console: Console::Null,
            network: None,
            network_at_start: false,
            runtime_dir: runtime_dir.into(),
            hot_root: false,
            rehearsal_disk: None,
        }
    }

    /// Checks what every platform requires; platforms add their own limits.
    pub fn validate(&self) -> Result<()> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && !self.id.starts_with('.');
        if !id_ok {
            return Err(VmmError::InvalidConfig(format!(
                "VM id {:?} must be 1-64 characters of [A-Za-z0-9_.-], not starting with '.'",
                self.id
            )));
        }
        if self.memory_mib < 16 {
            return Err(VmmError::InvalidConfig(format!(
                "memory {} MiB is too small: a guest needs at least 16 MiB",
                self.memory_mib
            )));
        }
        if let Some(c) = self.cpu_limit {
            if !(c.is_finite() && (0.01..=1024.0).contains(&c)) {
                return Err(VmmError::InvalidConfig(format!(
                    "CPU limit {c} must be between 0.01 and 1024 CPUs"
                )));
            }
        }
        if self.vcpus == 0 {
            return Err(VmmError::InvalidConfig(
                "a VM needs at least one vCPU".into(),
            ));
        }
        for param in &self.kernel_params {
            if param.is_empty() || param.bytes().any(|b| b.is_ascii_whitespace() || b == 0) {
                return Err(VmmError::InvalidConfig(format!(
                    "kernel parameter {param:?} is empty or contains whitespace/NUL: pass one parameter per entry"
                )));
            }
        }
        if let Some(init) = &self.init {
            if !init.starts_with('/') || init.bytes().any(|b| b.is_ascii_whitespace() || b == 0) {
                return Err(VmmError::InvalidConfig(format!(
                    "init {init:?} must be an absolute guest path without whitespace"
                )));
            }
        }
        Ok(())
    }
}

/// A way of running VMs on this host.
pub trait Platform: Send + Sync {
    /// `uml`, `qemu` or `kvm`.
    fn name(&self) -> &'static str;
    /// Whether `--platform auto` may pick it when it is available (qemu only with KVM: under
    /// software emulation UML starts faster).
    fn preferred(&self) -> bool {
        true
    }
    /// How guest code runs, for platforms that have a choice (`kvm` or `tcg` for qemu).
    fn accelerator(&self) -> Option<&'static str> {
        None
    }
    /// Checks, before a front end creates anything, what `boot` will refuse later: vCPUs and
    /// memory beyond the host, an unusable `kernel` (None: the platform's default). `user_initrd`:
    /// the user brings an initrd (which may carry the kernel's modules). `network`: the VM joins
    /// a network (the kernel needs a NIC).
    fn precheck(
        &self,
        _vcpus: u32,
        _memory_mib: u32,
        _kernel: Option<&std::path::Path>,
        _user_initrd: bool,
        _network: bool,
    ) -> Result<()> {
        Ok(())
    }
    /// Whether `boot` honours [`VmConfig::network_at_start`] (a NIC whose namespace is
    /// configured after boot).
    fn nic_at_start(&self) -> bool {
        false
    }
    /// Whether this host can run the platform, and if not, exactly why.
    fn check(&self) -> Result<(), Unavailable>;
    /// Boots a VM; returns once the guest kernel process is running.
    fn boot(&self, config: &VmConfig) -> Result<Vm>;
    /// The guest device name of disk `index` (`/dev/ubda` on UML, `/dev/vda` on KVM).
    fn disk_device(&self, index: usize) -> String;
    /// The guest device carrying the strata-proto channel (`/dev/ttyS1` on UML).
    fn channel_device(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig::new("vm-1", "/k", "/run/x")
    }

    #[test]
    fn validate_accepts_defaults() {
        config().validate().unwrap();
    }

    #[test]
    fn validate_refuses_bad_ids_params_and_sizes() {
        for id in ["", "../x", "a b", ".hidden", &"x".repeat(65)] {
            let mut c = config();
            c.id = id.to_string();
            assert!(c.validate().is_err(), "{id:?}");
        }
        let mut c = config();
        c.kernel_params = vec!["a b".into()];
        assert!(c.validate().is_err());
        let mut c = config();
        c.kernel_params = vec!["".into()];
        assert!(c.validate().is_err());
        let mut c = config();
        c.memory_mib = 1;
        assert!(c.validate().is_err());
        let mut c = config();
        c.vcpus = 0;
        assert!(c.validate().is_err());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 5000.0] {
            let mut c = config();
            c.cpu_limit = Some(bad);
            assert!(c.validate().is_err(), "{bad}");
        }
        let mut c = config();
        c.init = Some("relative".into());
        assert!(c.validate().is_err());
    }
}
