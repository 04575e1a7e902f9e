//! strata's networks for containers and VMs, on the field's dataplane: the standard CNI plugins
//! (bridge + host-local, portmap, firewall) driven through their JSON protocol. Why CNI and not
//! netavark, how names resolve and what `prune` reconciles: docs/networking.md.
//!
//! - [`config`]: networks as ordinary conflists (create/ls/inspect/rm in [`Networks`]);
//! - [`attach`]: a network namespace joins a network (ADD/CHECK/DEL) and gets an address,
//!   gateway, DNS and published ports; members' /etc/hosts are kept current ([`names`]);
//! - [`ports`]: the `-p` parser; [`netns`]: persistent namespaces; [`prune`]: leak reconciliation.
//!
//! A library: it never prints or exits; every failure is an [`Error`] saying what and why.

pub mod attach;
pub mod cni;
pub mod config;
mod lock;
pub mod names;
pub mod netns;
pub mod owner;
pub mod pool;
pub mod ports;
pub mod prune;
pub mod record;
mod rules;
mod store;

pub use attach::{AttachRequest, Attachment};
pub use config::Network;
pub use config::PoolStatus;
pub use owner::Owner;
pub use ports::{PortSpec, Protocol};
pub use prune::PruneReport;
pub use record::{AttachmentRecord, PublishedPort};
pub use store::{CreateRequest, NetConfig, NetworkInfo, Networks};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on which path.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A network config file is unusable.
    #[error("{0}")]
    Config(String),
    /// A network, container, alias or interface name is not acceptable.
    #[error("{0}")]
    InvalidName(String),
    /// No network of that name.
    #[error("network {0:?} not found (list networks with `strata network ls`, create one with `strata network create {0}`)")]
    UnknownNetwork(String),
    /// A network of that name exists already.
    #[error("network {0:?} already exists (remove it with `strata network rm {0}` or choose another name)")]
    Exists(String),
    /// The requested subnet is not usable.
    #[error("{0}")]
    Subnet(String),
    /// The network has live members.
    #[error("network {network:?} is in use by {members} (stop or disconnect them first)", members = members.join(", "))]
    InUse {
        /// Network name.
        network: String,
        /// Container ids attached to it.
        members: Vec<String>,
    },
    /// A request field is wrong (address outside the subnet, bad interface name...).
    #[error("{0}")]
    Invalid(String),
    /// A `-p` value does not parse.
    #[error(transparent)]
    Port(#[from] ports::PortParseError),
    /// A host port is taken.
    #[error("{0}")]
    PortInUse(String),
    /// The container is attached to that network already.
    #[error("container {container:?} is already attached to network {network:?}")]
    AlreadyAttached {
        /// Network name.
        network: String,
        /// Container id.
        container: String,
    },
    /// The container is not attached to that network.
    #[error("container {container:?} is not attached to network {network:?}")]
    NotAttached {
        /// Network name.
        network: String,
        /// Container id.
        container: String,
    },
    /// A CNI plugin failed.
    #[error(transparent)]
    Cni(#[from] cni::CniError),
    /// An external command (iproute2) failed.
    #[error("{0}")]
    Command(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
