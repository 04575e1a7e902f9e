//! Errors of the cgroups module: each names the step and the path involved.

/// What went wrong while resolving, creating, configuring or removing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A part of the API that is not written yet.
    #[error("cgroups: {0} is not implemented yet")]
    NotImplemented(&'static str),
}
