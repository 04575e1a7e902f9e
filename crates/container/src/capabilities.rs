//! The five capability sets of `process.capabilities`.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability as Cap, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

/// Capability errors.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("capabilities: unknown capability {0}")]
    Unknown(String),
    #[error("capabilities: set {set} : {msg}")]
    Set { set: &'static str, msg: String },
}

/// Converts an oci-spec capability set into the `caps` crate's.
pub fn convert(set: Option<&Capabilities>) -> Result<CapsHashSet, CapsError> {
    let mut out = HashSet::new();
    for c in set.into_iter().flatten() {
        let name = format!("CAP_{c}");
        out.insert(Cap::from_str(&name).map_err(|_| CapsError::Unknown(name))?);
    }
    Ok(out)
}

/// Parses a `CAP_X` name (for `exec --cap`).
pub fn parse_name(name: &str) -> Result<Cap, CapsError> {
    let n = name.to_ascii_uppercase();
    let n = if n.starts_with("CAP_") {
        n
    } else {
        format!("CAP_{n}")
    };
    Cap::from_str(&n).map_err(|_| CapsError::Unknown(name.to_string()))
}

fn set_err(set: &'static str) -> impl Fn(caps::errors::CapsError) -> CapsError {
    move |e| CapsError::Set {
        set,
        msg: e.to_string(),
    }
}

/// The sets resolved to `caps` types, ready to apply.
#[derive(Debug, Clone, Default)]
pub struct CapSets {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

impl CapSets {
    /// Resolves the spec's sets (missing sets are empty, as in runc).
    pub fn from_spec(c: Option<&LinuxCapabilities>) -> Result<CapSets, CapsError> {
        let Some(c) = c else {
            return Ok(CapSets::default());
        };
        Ok(CapSets {
            bounding: convert(c.bounding().as_ref())?,
            effective: convert(c.effective().as_ref())?,
            permitted: convert(c.permitted().as_ref())?,
            inheritable: convert(c.inheritable().as_ref())?,
            ambient: convert(c.ambient().as_ref())?,
        })
    }

    /// Drops every capability outside the bounding set (needs CAP_SETPCAP: do it while root).
    pub fn apply_bounding(&self) -> Result<(), CapsError> {
        for c in caps::all() {
            if !self.bounding.contains(&c) {
                match caps::drop(None, CapSet::Bounding, c) {
                    Ok(()) => {}
                    // Capabilities newer than the running kernel do not exist to drop.
                    Err(_) if !caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) => {}
                    Err(e) => return Err(set_err("bounding")(e)),
                }
            }
        }
        Ok(())
    }

    /// Sets effective, permitted, inheritable and ambient (after the uid change, which ran
    /// with PR_SET_KEEPCAPS so the permitted set survived it).
    pub fn apply_rest(&self) -> Result<(), CapsError> {
        // E must stay a subset of P at every capset call: clear E first, set P, then E.
        caps::clear(None, CapSet::Effective).map_err(set_err("effective"))?;
        caps::set(None, CapSet::Permitted, &self.permitted).map_err(set_err("permitted"))?;
        caps::set(None, CapSet::Inheritable, &self.inheritable).map_err(set_err("inheritable"))?;
        caps::set(None, CapSet::Effective, &self.effective).map_err(set_err("effective"))?;
        caps::clear(None, CapSet::Ambient).map_err(set_err("ambient"))?;
        for c in &self.ambient {
            // runc skips ambient capabilities the kernel refuses (not in P and I).
            let _ = caps::raise(None, CapSet::Ambient, *c);
        }
        Ok(())
    }
}
