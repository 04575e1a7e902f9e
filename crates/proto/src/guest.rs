//! The guest contract: kernel command-line parameters the host (VM platform) passes and the agent
//! reads from /proc/cmdline. Both sides use these names and this parser so they cannot drift.

/// Char device carrying strata-proto, e.g. `/dev/ttyS1` (UML `ssl1=fd:IN,fd:OUT`) or a vsock shim.
pub const PARAM_CHANNEL: &str = "strata.channel";
/// Block device holding the image's read-only root filesystem.
pub const PARAM_LOWER: &str = "strata.lower";
/// Filesystem type of the lower disk: `ext4` or `erofs`.
pub const PARAM_LOWERFS: &str = "strata.lowerfs";
/// Optional writable ext4 block device for the overlay upper/work dirs.
pub const PARAM_UPPER: &str = "strata.upper";
/// Size of the tmpfs upper when no upper disk is given (tmpfs `size=` syntax, e.g. `512m`).
pub const PARAM_UPPERSIZE: &str = "strata.uppersize";
/// `1`: the lower disk is itself writable (e.g. a UML copy-on-write ubd) and is the root, no overlay.
pub const PARAM_ROOTRW: &str = "strata.rootrw";
/// `1`: the agent logs to the console.
pub const PARAM_DEBUG: &str = "strata.debug";
/// How the agent ends the VM: `poweroff` (default; UML) or `reboot` (a machine without ACPI
/// power-off, e.g. QEMU microvm run with `-no-reboot`, where the reset ends the monitor).
pub const PARAM_HALT: &str = "strata.halt";

/// Whether `cmdline` asks the agent to end the VM with a reboot ([`PARAM_HALT`]`=reboot`).
pub fn halt_by_reboot(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .any(|w| w.strip_prefix(PARAM_HALT).and_then(|r| r.strip_prefix('=')) == Some("reboot"))
}

/// A pooled VM's rehearsal disk (ext4, read-only, strata's own): the agent runs one start on it
/// before its Hello (crates/agent/src/rehearsal.rs).
pub const PARAM_REHEARSE: &str = "strata.rehearse";

/// Filesystem of the image's lower disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LowerFs {
    #[default]
    Ext4,
    Erofs,
}

impl LowerFs {
    /// The name mount(2) expects.
    pub fn as_str(self) -> &'static str {
        match self {
            LowerFs::Ext4 => "ext4",
            LowerFs::Erofs => "erofs",
        }
    }
}

/// The parsed guest parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestParams {
    pub channel: Option<String>,
    pub lower: Option<String>,
    pub lowerfs: LowerFs,
    pub upper: Option<String>,
    pub upper_size: Option<String>,
    pub root_rw: bool,
    pub debug: bool,
    pub rehearse: Option<String>,
}

/// A malformed guest parameter.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamError {
    /// A device parameter is not an absolute path under /dev without `..`.
    #[error("{param}={value:?}: expected a device path under /dev/ (no '..', no spaces)")]
    Device { param: &'static str, value: String },
    /// The lower filesystem type is not supported.
    #[error("{PARAM_LOWERFS}={0:?}: expected ext4 or erofs")]
    LowerFs(String),
    /// A size is not in tmpfs `size=` syntax.
    #[error("{PARAM_UPPERSIZE}={0:?}: expected a size like 512m, 2g or 50%")]
    Size(String),
    /// A flag is not 0 or 1.
    #[error("{param}={value:?}: expected 0 or 1")]
    Flag { param: &'static str, value: String },
}

fn device(param: &'static str, value: &str) -> Result<String, ParamError> {
    let ok = value.starts_with("/dev/")
        && value.len() > 5
        && value.len() < 256
        && !value.split('/').any(|c| c == "..")
        && value.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if ok {
        Ok(value.to_string())
    } else {
        Err(ParamError::Device {
            param,
            value: value.to_string(),
        })
    }
}

fn flag(param: &'static str, value: &str) -> Result<bool, ParamError> {
    match value {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(ParamError::Flag {
            param,
            value: value.to_string(),
        }),
    }
}

fn size(value: &str) -> Result<String, ParamError> {
    let digits = value.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
    let suffix_len = value.len() - digits.len();
    if !digits.is_empty()
        && digits.len() <= 20
        && suffix_len <= 1
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        Ok(value.to_string())
    } else {
        Err(ParamError::Size(value.to_string()))
    }
}

impl GuestParams {
    /// Parses a kernel command line, ignoring words that are not `strata.*` parameters.
    pub fn parse(cmdline: &str) -> Result<Self, ParamError> {
        let mut p = GuestParams::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                PARAM_CHANNEL => p.channel = Some(device(PARAM_CHANNEL, value)?),
                PARAM_LOWER => p.lower = Some(device(PARAM_LOWER, value)?),
                PARAM_UPPER => p.upper = Some(device(PARAM_UPPER, value)?),
                PARAM_REHEARSE => p.rehearse = Some(device(PARAM_REHEARSE, value)?),
                PARAM_LOWERFS => {
                    p.lowerfs = match value {
                        "ext4" => LowerFs::Ext4,
                        "erofs" => LowerFs::Erofs,
                        _ => return Err(ParamError::LowerFs(value.to_string())),
                    }
                }
                PARAM_UPPERSIZE => p.upper_size = Some(size(value)?),
                PARAM_ROOTRW => p.root_rw = flag(PARAM_ROOTRW, value)?,
                PARAM_DEBUG => p.debug = flag(PARAM_DEBUG, value)?,
                _ => {}
            }
        }
        Ok(p)
    }

    /// Renders the parameters as kernel command-line words (the inverse of [`GuestParams::parse`]).
    pub fn to_cmdline(&self) -> String {
        let mut words = Vec::new();
        if let Some(c) = &self.channel {
            words.push(format!("{PARAM_CHANNEL}={c}"));
        }
        if let Some(l) = &self.lower {
            words.push(format!("{PARAM_LOWER}={l}"));
            words.push(format!("{PARAM_LOWERFS}={}", self.lowerfs.as_str()));
        }
        if let Some(u) = &self.upper {
            words.push(format!("{PARAM_UPPER}={u}"));
        }
        if let Some(s) = &self.upper_size {
            words.push(format!("{PARAM_UPPERSIZE}={s}"));
        }
        if self.root_rw {
            words.push(format!("{PARAM_ROOTRW}=1"));
        }
        if self.debug {
            words.push(format!("{PARAM_DEBUG}=1"));
        }
        if let Some(r) = &self.rehearse {
            words.push(format!("{PARAM_REHEARSE}={r}"));
        }
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_uml_command_line() {
        let p = GuestParams::parse(
            "mem=256M root=/dev/ubda init=/strata-agent strata.channel=/dev/ttyS1 strata.lower=/dev/ubdb \
             strata.lowerfs=erofs strata.upper=/dev/ubdc strata.debug=1 strata.rehearse=/dev/ubdd console=ttyS0",
        )
        .unwrap();
        assert_eq!(p.rehearse.as_deref(), Some("/dev/ubdd"));
        assert_eq!(p.channel.as_deref(), Some("/dev/ttyS1"));
        assert_eq!(p.lower.as_deref(), Some("/dev/ubdb"));
        assert_eq!(p.lowerfs, LowerFs::Erofs);
        assert_eq!(p.upper.as_deref(), Some("/dev/ubdc"));
        assert!(p.debug && !p.root_rw);
        assert_eq!(GuestParams::parse(&p.to_cmdline()).unwrap(), p);
        assert!(halt_by_reboot("console=ttyS0 strata.halt=reboot quiet"));
        assert!(!halt_by_reboot("strata.halt=poweroff"));
        assert!(!halt_by_reboot("xstrata.halt=reboot strata.haltx=reboot"));
    }

    #[test]
    fn refuses_hostile_values() {
        for bad in [
            "strata.channel=/dev/../etc/passwd",
            "strata.channel=ttyS1",
            "strata.lower=/dev/",
            "strata.lowerfs=xfs",
            "strata.uppersize=12x",
            "strata.uppersize=m",
            "strata.uppersize=1mm",
            "strata.rootrw=yes",
            "strata.debug=",
            "strata.upper=/dev/a,b",
            "strata.rehearse=/dev/../proc/self/mem",
            "strata.rehearse=vdb",
            "strata.rehearse=/dev/vd,b",
        ] {
            assert!(GuestParams::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            GuestParams::parse("strata.uppersize=50%")
                .unwrap()
                .upper_size
                .as_deref(),
            Some("50%")
        );
    }
}
