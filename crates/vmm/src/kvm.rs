//! The `kvm` platform: our KVM microVM monitor. The monitor itself is a later issue; this module
//! already answers precisely whether and why this host could not use it.

use std::path::Path;

use crate::error::{Result, Unavailable, VmmError};
use crate::platform::{Platform, VmConfig};
use crate::vm::Vm;

/// Whether strata contains a KVM monitor yet.
const MONITOR_BUILT: bool = false;

/// The `kvm` platform.
#[derive(Debug, Default)]
pub struct KvmPlatform;

impl KvmPlatform {
    /// The platform (nothing is probed until [`Platform::check`]).
    pub fn new() -> Self {
        KvmPlatform
    }
}

/// What the host offers for KVM, gathered from /dev/kvm, /proc/cpuinfo and /sys/module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvmHost {
    pub dev_kvm: bool,
    pub vmx_or_svm: bool,
    pub pvm: bool,
}

impl KvmHost {
    fn probe() -> KvmHost {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        KvmHost {
            dev_kvm: Path::new("/dev/kvm").exists(),
            vmx_or_svm: cpu_has_virtualization(&cpuinfo),
            pvm: Path::new("/sys/module/kvm_pvm").exists(),
        }
    }
}

/// Whether any `flags` line of /proc/cpuinfo lists `vmx` (Intel VT-x) or `svm` (AMD-V).
pub(crate) fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == "flags"))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The reason the kvm platform cannot run on a host like `host`, or None if it can.
pub(crate) fn unavailable_reason(host: KvmHost, monitor_built: bool) -> Option<String> {
    if !host.dev_kvm {
        return Some(
            "/dev/kvm does not exist: the host kernel has no KVM (load kvm_intel/kvm_amd)".into(),
        );
    }
    if !host.vmx_or_svm {
        let backend = if host.pvm {
            "/dev/kvm is a paravirtual (PVM) backend"
        } else {
            "/dev/kvm exists but the CPU"
        };
        return Some(format!(
            "{backend} without VMX/SVM (no vmx/svm flag in /proc/cpuinfo); stock guest kernels \
             run only under instruction emulation here and cannot reach user space"
        ));
    }
    if !monitor_built {
        return Some(
            "this strata build has no KVM monitor yet (User-Mode Linux is used instead)".into(),
        );
    }
    None
}

impl Platform for KvmPlatform {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn check(&self) -> Result<(), Unavailable> {
        match unavailable_reason(KvmHost::probe(), MONITOR_BUILT) {
            None => Ok(()),
            Some(reason) => Err(Unavailable {
                platform: "kvm",
                reason,
            }),
        }
    }

    fn boot(&self, _config: &VmConfig) -> Result<Vm> {
        self.check()?;
        Err(VmmError::Unavailable(Unavailable {
            platform: "kvm",
            reason: "the KVM monitor is not implemented".into(),
        }))
    }

    fn disk_device(&self, index: usize) -> String {
        format!("/dev/vd{}", disk_letters(index))
    }

    fn channel_device(&self) -> &'static str {
        "vsock"
    }
}

/// Linux block-device suffixes: 0 → a, 25 → z, 26 → aa (the kernel's `sd_format_disk_name`).
pub(crate) fn disk_letters(index: usize) -> String {
    let mut n = index + 1;
    let mut out = Vec::new();
    while n > 0 {
        n -= 1;
        out.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_flags() {
        assert!(cpu_has_virtualization(
            "processor : 0\nflags\t\t: fpu vmx sse\n"
        ));
        assert!(cpu_has_virtualization("flags : svm\n"));
        assert!(!cpu_has_virtualization("flags : fpu hypervisor sse vmxx\n"));
        assert!(!cpu_has_virtualization("model name : vmx svm\n"));
        assert!(!cpu_has_virtualization(""));
    }

    #[test]
    fn reasons_name_the_missing_piece() {
        let h = |dev_kvm, vmx_or_svm, pvm| KvmHost {
            dev_kvm,
            vmx_or_svm,
            pvm,
        };
        assert!(unavailable_reason(h(false, true, false), true)
            .unwrap()
            .contains("does not exist"));
        let pvm = unavailable_reason(h(true, false, true), true).unwrap();
        assert!(
            pvm.contains("paravirtual (PVM)") && pvm.contains("VMX/SVM"),
            "{pvm}"
        );
        assert!(unavailable_reason(h(true, true, false), false)
            .unwrap()
            .contains("no KVM monitor"));
        assert_eq!(unavailable_reason(h(true, true, false), true), None);
    }

    #[test]
    fn this_host_reports_why() {
        // On every host this build reports kvm unavailable (no monitor yet), with a reason.
        let err = KvmPlatform::new().check().unwrap_err();
        assert!(!err.reason.is_empty());
    }

    #[test]
    fn letters() {
        assert_eq!(disk_letters(0), "a");
        assert_eq!(disk_letters(25), "z");
        assert_eq!(disk_letters(26), "aa");
        assert_eq!(disk_letters(27), "ab");
    }
}
