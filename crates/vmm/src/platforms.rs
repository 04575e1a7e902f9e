//! The VM platforms of this build, by name and in order of preference, and which one a host can
//! use. `uml` (User-Mode Linux) works everywhere; `qemu` (QEMU microvm) wherever QEMU is
//! installed, with KVM where the host has hardware virtualization and TCG otherwise; `kvm` (our
//! own monitor) needs hardware virtualization and the monitor (a later step).

use crate::error::{Result, Unavailable, VmmError};
use crate::kvm::KvmPlatform;
use crate::platform::Platform;
use crate::qemu::QemuPlatform;
use crate::uml::UmlPlatform;

/// Every platform strata knows, in order of preference.
pub fn platforms() -> Vec<Box<dyn Platform>> {
    vec![
        Box::new(KvmPlatform::new()),
        Box::new(QemuPlatform::new()),
        Box::new(UmlPlatform::new()),
    ]
}

/// The platform named `name` (`--platform uml|qemu|kvm`), whether or not it is available.
pub fn platform(name: &str) -> Result<Box<dyn Platform>> {
    platforms()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            VmmError::InvalidConfig(format!(
                "unknown VM platform {name:?}: use uml, qemu or kvm"
            ))
        })
}

/// Picks the best available platform: kvm where hardware virtualization and the KVM monitor
/// exist, then qemu with KVM, uml otherwise (qemu under TCG is only used when asked for). Errors
/// list why each platform is unavailable.
pub fn detect() -> Result<Box<dyn Platform>, Vec<Unavailable>> {
    let mut why = Vec::new();
    for p in platforms() {
        match p.check() {
            Ok(()) if !p.preferred() => {}
            Ok(()) => return Ok(p),
            Err(u) => why.push(u),
        }
    }
    Err(why)
}

/// Text for `strata info`: each platform, whether it is usable, and why not.
pub fn info() -> String {
    let mut out = String::from("VM platforms:\n");
    let chosen = detect().ok().map(|p| p.name());
    for p in platforms() {
        let accel = match p.accelerator() {
            Some(a) if p.name() == "qemu" => {
                format!(" (accelerator {a}: {})", crate::qemu::accelerator().1)
            }
            Some(a) => format!(" (accelerator {a})"),
            None => String::new(),
        };
        let line = match p.check() {
            Ok(()) if chosen == Some(p.name()) => {
                format!("  {}: available (default){accel}\n", p.name())
            }
            Ok(()) => format!("  {}: available{accel}\n", p.name()),
            Err(u) => format!("  {}: unavailable: {}\n", p.name(), u.reason),
        };
        out.push_str(&line);
    }
    out.push_str("Guest kernels:\n");
    for k in crate::kernel::list_kernels() {
        out.push_str(&format!(
            "  {} {} {} ({}, {} bytes)\n",
            k.platform,
            k.version,
            k.path.display(),
            k.source,
            k.size
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_explains_every_platform() {
        let text = info();
        assert!(text.contains("  kvm: unavailable: "), "{text}");
        assert!(text.contains("  uml: "), "{text}");
        assert!(text.contains("  qemu: "), "{text}");
        assert!(text.contains("Guest kernels:"), "{text}");
    }

    #[test]
    fn unknown_platform_is_an_error() {
        assert!(platform("xen").is_err());
        assert_eq!(platform("uml").unwrap().name(), "uml");
        assert_eq!(platform("qemu").unwrap().name(), "qemu");
    }
}
