//! The VM platforms of this build, by name and in order of preference, and which one a host can
//! use. `uml` (User-Mode Linux) works everywhere; `kvm` needs hardware virtualization and our
//! monitor.

use crate::error::{Result, Unavailable, VmmError};
use crate::kvm::KvmPlatform;
use crate::platform::Platform;
use crate::uml::UmlPlatform;

/// Every platform strata knows, in order of preference.
pub fn platforms() -> Vec<Box<dyn Platform>> {
    vec![Box::new(KvmPlatform::new()), Box::new(UmlPlatform::new())]
}

/// The platform named `name` (`--platform uml|kvm`), whether or not it is available.
pub fn platform(name: &str) -> Result<Box<dyn Platform>> {
    platforms()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            VmmError::InvalidConfig(format!("unknown VM platform {name:?}: use uml or kvm"))
        })
}

/// Picks the best available platform: kvm where hardware virtualization and the KVM monitor
/// exist, uml otherwise. Errors list why each platform is unavailable.
pub fn detect() -> Result<Box<dyn Platform>, Vec<Unavailable>> {
    let mut why = Vec::new();
    for p in platforms() {
        match p.check() {
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
        let line = match p.check() {
            Ok(()) if chosen == Some(p.name()) => format!("  {}: available (default)\n", p.name()),
            Ok(()) => format!("  {}: available\n", p.name()),
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
        assert!(text.contains("Guest kernels:"), "{text}");
    }

    #[test]
    fn unknown_platform_is_an_error() {
        assert!(platform("xen").is_err());
        assert_eq!(platform("uml").unwrap().name(), "uml");
    }
}
