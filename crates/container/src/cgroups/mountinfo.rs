//! Detecting the cgroup layout from /proc/self/mountinfo.

use serde::{Deserialize, Serialize};

/// The cgroup layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Only v1 hierarchies.
    V1,
    /// A single cgroup2 hierarchy.
    V2,
    /// v1 controllers plus a controller-less cgroup2 mount (systemd's "hybrid").
    Hybrid,
}
