//! The guest contract between strata-vmm and strata-agent: kernel command-line parameters the
//! agent reads from /proc/cmdline.
//!
//! | parameter | meaning |
//! |---|---|
//! | `strata.channel=DEV` | the character device carrying strata-proto (added by the platform; `/dev/ttyS1` on UML, a tty: the agent must put it in raw mode) |
//! | `strata.lower=DEV` | the image's read-only disk |
//! | `strata.lowerfs=ext4\|erofs` | its filesystem |
//! | `strata.upper=DEV` | optional writable ext4 disk for the overlay's upper layer (else a tmpfs upper) |
//! | `strata.rootrw=1` | the lower disk is a writable copy-on-write disk: mount it read-write as the root, no overlay |
//! | `strata.rehearse=DEV` | a pooled qemu VM's rehearsal disk (crate::rehearsal): the agent runs one start on it before its Hello |

use crate::disk::DiskFormat;

/// What the agent assembles the guest's root filesystem from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestContract {
    /// The image disk's guest device (e.g. `Platform::disk_device(0)`) and its format.
    pub lower: Option<(String, DiskFormat)>,
    /// A writable ext4 disk for the overlay's upper layer.
    pub upper: Option<String>,
    /// The lower disk is writable (a COW disk): use it as the root directly.
    pub rootrw: bool,
}

impl GuestContract {
    /// The kernel parameters (for `VmConfig::kernel_params`).
    pub fn kernel_params(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some((dev, format)) = &self.lower {
            p.push(format!("strata.lower={dev}"));
            p.push(format!("strata.lowerfs={}", format.fs_type()));
        }
        if let Some(dev) = &self.upper {
            p.push(format!("strata.upper={dev}"));
        }
        if self.rootrw {
            p.push("strata.rootrw=1".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        let c = GuestContract {
            lower: Some(("/dev/ubda".into(), DiskFormat::ErofsLz4)),
            upper: Some("/dev/ubdb".into()),
            rootrw: false,
        };
        assert_eq!(
            c.kernel_params(),
            [
                "strata.lower=/dev/ubda",
                "strata.lowerfs=erofs",
                "strata.upper=/dev/ubdb"
            ]
        );
        let c = GuestContract {
            lower: Some(("/dev/ubda".into(), DiskFormat::Ext4)),
            upper: None,
            rootrw: true,
        };
        assert_eq!(
            c.kernel_params(),
            [
                "strata.lower=/dev/ubda",
                "strata.lowerfs=ext4",
                "strata.rootrw=1"
            ]
        );
    }
}
