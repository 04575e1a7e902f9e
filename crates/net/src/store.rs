//! The set of networks: create, list, inspect, remove, the default network on first use.
//!
//! Layout: `<config_dir>/<name>.conflist` (the networks); under `<state_dir>` (tmpfs /run, so a
//! reboot forgets every attachment along with the namespaces they were in): `ipam/<name>/`
//! (host-local leases), `attachments/<name>/<container>.json` (attachment records), `netns/`
//! (namespaces made by [`Networks::create_netns`]), `lock` (shared by attach/detach, exclusive
//! for create/rm/prune), `ports.lock`, `hosts.lock`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::cni::Plugins;
use crate::config::{self, Network, DEFAULT_NETWORK};
use crate::record::{validate_container_id, AttachmentRecord};
use crate::{lock, Error};

/// Where networks live and what the default network looks like.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Conflists (default /etc/strata/net.d).
    pub config_dir: PathBuf,
    /// Leases, attachment records, namespaces, locks (default /run/strata/net).
    pub state_dir: PathBuf,
    /// CNI plugin directories.
    pub plugins: Plugins,
    /// Subnet of the default `bridge` network, used when it is created on first use.
    pub default_subnet: Ipv4Net,
    /// Bridge device of the default network (default `strata0`).
    pub default_bridge: String,
    /// Pool that `network create` without `--subnet` takes /24s from.
    pub pool: Ipv4Net,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            config_dir: PathBuf::from("/etc/strata/net.d"),
            state_dir: PathBuf::from("/run/strata/net"),
            plugins: Plugins::default(),
            default_subnet: "10.87.0.0/16".parse().expect("valid"),
            default_bridge: "strata0".into(),
            pool: "10.90.0.0/16".parse().expect("valid"),
        }
    }
}

/// What `network create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Network name.
    pub name: String,
    /// Subnet; `None` = the first free /24 of the pool.
    pub subnet: Option<Ipv4Net>,
    /// Gateway; `None` = the subnet's first address.
    pub gateway: Option<Ipv4Addr>,
    /// Pre-attached namespaces to keep ready (see [`crate::pool`]); `None` =
    /// [`crate::config::DEFAULT_POOL`].
    pub pool: Option<u32>,
}

/// `network inspect`: the network and its members.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkInfo {
    /// Name.
    pub name: String,
    /// Driver (`bridge` for strata's own; the first plugin's type otherwise).
    pub driver: String,
    /// Bridge device.
    pub bridge: Option<String>,
    /// Subnet.
    pub subnet: Option<String>,
    /// Gateway.
    pub gateway: Option<String>,
    /// The conflist file.
    pub config_file: PathBuf,
    /// Attached containers.
    pub containers: Vec<AttachmentRecord>,
    /// Pre-attached namespaces (see [`crate::pool`]).
    pub pool: crate::config::PoolStatus,
}

/// The networks of one config directory and state directory.
#[derive(Debug, Clone)]
pub struct Networks {
    pub(crate) cfg: NetConfig,
}

impl Networks {
    /// Networks as `cfg` places them.
    pub fn new(cfg: NetConfig) -> Networks {
        Networks { cfg }
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.cfg.state_dir.join("lock")
    }

    pub(crate) fn lease_root(&self) -> PathBuf {
        self.cfg.state_dir.join("ipam")
    }

    fn conflist_path(&self, name: &str) -> PathBuf {
        self.cfg.config_dir.join(format!("{name}.conflist"))
    }

    /// Every network, sorted by name. Unreadable files are skipped with their error collected in
    /// the second list, so one broken file does not hide the others.
    pub fn list_with_errors(&self) -> Result<(Vec<Network>, Vec<Error>), Error> {
        let dir = &self.cfg.config_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()))
            }
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let (mut nets, mut errs) = (Vec::new(), Vec::new());
        for e in entries {
            let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("conflist") {
                continue;
            }
            match Network::load(&p) {
                Ok(n) => nets.push(n),
                Err(err) => errs.push(err),
            }
        }
        nets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((nets, errs))
    }

    /// Every readable network, sorted by name.
    pub fn list(&self) -> Result<Vec<Network>, Error> {
        Ok(self.list_with_errors()?.0)
    }

    /// The network `name`; `bridge` is created on first use.
    pub fn get(&self, name: &str) -> Result<Network, Error> {
        if name == DEFAULT_NETWORK {
            return self.ensure_default();
        }
        self.find(name)
    }

    fn find(&self, name: &str) -> Result<Network, Error> {
        config::validate_name(name)?;
        let p = self.conflist_path(name);
        if p.exists() {
            let n = Network::load(&p)?;
            if n.name != name {
                return Err(Error::Config(format!(
                    "{} names network {:?}, not {name:?}",
                    p.display(),
                    n.name
                )));
            }
            return Ok(n);
        }
        // A conflist under another file name (written by hand or by another tool).
        self.list()?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::UnknownNetwork(name.to_string()))
    }

    /// The default `bridge` network, created with the configured subnet if it does not exist.
    pub fn ensure_default(&self) -> Result<Network, Error> {
        if let Ok(n) = self.find(DEFAULT_NETWORK) {
            return Ok(n);
        }
        let _l = lock::exclusive(&self.lock_path())?;
        if let Ok(n) = self.find(DEFAULT_NETWORK) {
            return Ok(n);
        }
        let req = CreateRequest {
            name: DEFAULT_NETWORK.into(),
            subnet: Some(self.cfg.default_subnet),
            gateway: None,
            pool: None,
        };
        self.create_locked(&req, true)
    }

    /// Creates a bridge network. Refuses bad names, existing names, subnets that overlap another
    /// network or a route of the host, and gateways outside the subnet.
    pub fn create(&self, req: &CreateRequest) -> Result<Network, Error> {
        config::validate_name(&req.name)?;
        if req.name == DEFAULT_NETWORK {
            return Err(Error::InvalidName(format!(
                "{DEFAULT_NETWORK:?} is the default network, created on first use (its subnet is configurable)"
            )));
        }
        let _l = lock::exclusive(&self.lock_path())?;
        self.create_locked(req, false)
    }

    fn create_locked(&self, req: &CreateRequest, default: bool) -> Result<Network, Error> {
        if !default {
            config::validate_name(&req.name)?;
        }
        let existing = self.list()?;
        if existing.iter().any(|n| n.name == req.name) {
            return Err(Error::Exists(req.name.clone()));
        }
        let bridge = if default {
            self.cfg.default_bridge.clone()
        } else {
            config::bridge_name(&req.name)
        };
        let taken: Vec<(String, Ipv4Net)> = existing
            .iter()
            .filter_map(|n| n.subnet().map(|s| (format!("network {:?}", n.name), s)))
            .chain(
                config::host_routes()
                    .into_iter()
                    // A route on our own bridge is the network itself (or its leftover).
                    .filter(|(dev, _)| *dev != bridge)
                    .map(|(dev, s)| (format!("the host's route via {dev}"), s)),
            )
            .collect();
        let subnet = match req.subnet {
            Some(s) => {
                let s = s.trunc();
                if s.prefix_len() > 30 || s.prefix_len() < 8 {
                    return Err(Error::Subnet(format!(
                        "subnet {s} must have a prefix length from /8 to /30"
                    )));
                }
                if let Some((who, other)) = taken.iter().find(|(_, t)| config::overlaps(s, *t)) {
                    return Err(Error::Subnet(format!(
                        "subnet {s} overlaps {other} of {who}; choose another --subnet"
                    )));
                }
                s
            }
            None => self
                .cfg
                .pool
                .subnets(24)
                .map_err(|_| Error::Subnet(format!("pool {} cannot hold a /24", self.cfg.pool)))?
                .find(|s| !taken.iter().any(|(_, t)| config::overlaps(*s, *t)))
                .ok_or_else(|| {
                    Error::Subnet(format!(
                        "no free /24 left in {}; give --subnet",
                        self.cfg.pool
                    ))
                })?,
        };
        let gateway = match req.gateway {
            Some(g) => {
                if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
                    return Err(Error::Subnet(format!(
                        "gateway {g} is not a host address of subnet {subnet}"
                    )));
                }
                g
            }
            None => subnet.hosts().next().expect("a /30 or larger has hosts"),
        };
        let pool = req.pool.unwrap_or(crate::config::DEFAULT_POOL);
        if pool > crate::config::MAX_POOL {
            return Err(Error::Invalid(format!(
                "--pool {pool}: at most {} pre-attached namespaces per network",
                crate::config::MAX_POOL
            )));
        }
        let mut conflist =
            config::bridge_conflist(&req.name, &bridge, subnet, gateway, &self.lease_root());
        conflist["strata"]["pool"] = serde_json::json!(pool);
        let path = self.conflist_path(&req.name);
        let dir = &self.cfg.config_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = dir.join(format!(".{}.tmp", req.name));
        let text = serde_json::to_string_pretty(&conflist).expect("JSON serializes") + "\n";
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(format!("writing {}", path.display()), e)
            })?;
        let net = Network {
            name: req.name.clone(),
            path,
            conflist,
        };
        if let Err(e) = crate::rules::ensure(&self.cfg.state_dir, &net) {
            let _ = crate::rules::remove(&self.cfg.state_dir, &net);
            let _ = std::fs::remove_file(&net.path);
            return Err(e);
        }
        Ok(net)
    }

    /// The network and its members.
    pub fn inspect(&self, name: &str) -> Result<NetworkInfo, Error> {
        let n = self.find(name)?;
        let containers = self.records(Some(&n.name))?;
        let driver = if n.bridge().is_some() {
            "bridge".to_string()
        } else {
            n.conflist["plugins"][0]["type"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        Ok(NetworkInfo {
            name: n.name.clone(),
            driver,
            bridge: n.bridge().map(String::from),
            subnet: n.subnet().map(|s| s.to_string()),
            gateway: n.gateway().map(|g| g.to_string()),
            config_file: n.path.clone(),
            containers,
            pool: self.pool_status(&n.name)?,
        })
    }

    /// Removes a network: refused while a live container is attached; members whose owner died
    /// are detached first. Takes the bridge device, the leases and the config with it.
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        let n = self.find(name)?;
        let _l = lock::exclusive(&self.lock_path())?;
        let records = self.records(Some(&n.name))?;
        let live: Vec<String> = records
            .iter()
            .filter(|r| r.owner.alive())
            .map(|r| r.container_id.clone())
            .collect();
        if !live.is_empty() {
            return Err(Error::InUse {
                network: n.name.clone(),
                members: live,
            });
        }
        for r in &records {
            self.undo_record(r)?;
        }
        self.drain_pool(&n.name)?;
        crate::rules::remove(&self.cfg.state_dir, &n)?;
        if let Some(bridge) = n.bridge() {
            delete_link(bridge)?;
        }
        let leases = n.lease_dir();
        if leases.starts_with(self.lease_root()) {
            remove_dir_all_if_exists(&leases)?;
        }
        remove_dir_all_if_exists(&self.records_dir(&n.name))?;
        std::fs::remove_file(&n.path)
            .map_err(|e| Error::io(format!("removing {}", n.path.display()), e))
    }

    /// A new network namespace for `container_id` under the state directory, owned by `owner`
    /// (prune removes it once the owner is gone and no attachment uses it).
    pub fn create_netns(&self, container_id: &str, owner: crate::Owner) -> Result<PathBuf, Error> {
        self.owned_netns(container_id, owner, |path| {
            crate::netns::create(path)
                .map_err(|e| Error::io(format!("creating network namespace {}", path.display()), e))
        })
    }

    /// `container_id`'s namespace file bound to the namespace at `source` (a pool slot's), owned
    /// by `owner` as [`Networks::create_netns`] makes it.
    pub(crate) fn bind_netns(
        &self,
        container_id: &str,
        owner: crate::Owner,
        source: &Path,
    ) -> Result<PathBuf, Error> {
        self.owned_netns(container_id, owner, |path| {
            crate::netns::bind(source, path).map_err(|e| {
                Error::io(
                    format!(
                        "binding network namespace {} at {}",
                        source.display(),
                        path.display()
                    ),
                    e,
                )
            })
        })
    }

    /// `<netns dir>/<container_id>` made by `make`, with its `.owner` file written first.
    fn owned_netns(
        &self,
        container_id: &str,
        owner: crate::Owner,
        make: impl FnOnce(&Path) -> Result<(), Error>,
    ) -> Result<PathBuf, Error> {
        validate_container_id(container_id)?;
        let dir = self.netns_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let owner_file = dir.join(format!("{container_id}.owner"));
        let path = dir.join(container_id);
        std::fs::write(&owner_file, serde_json::to_vec(&owner).expect("serializes"))
            .map_err(|e| Error::io(format!("writing {}", owner_file.display()), e))?;
        if let Err(e) = make(&path) {
            let _ = std::fs::remove_file(&owner_file);
            return Err(e);
        }
        Ok(path)
    }

    /// Unmounts and removes a namespace made by [`Networks::create_netns`].
    pub fn remove_netns(&self, container_id: &str) -> Result<(), Error> {
        validate_container_id(container_id)?;
        let path = self.netns_dir().join(container_id);
        crate::netns::remove(&path)
            .map_err(|e| Error::io(format!("removing network namespace {}", path.display()), e))?;
        let owner = self.netns_dir().join(format!("{container_id}.owner"));
        match std::fs::remove_file(&owner) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", owner.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Where [`Networks::create_netns`] (or a pooled attach) puts `container_id`'s namespace.
    pub fn netns_dir_of(&self, container_id: &str) -> PathBuf {
        self.netns_dir().join(container_id)
    }

    pub(crate) fn netns_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("netns")
    }
}

fn remove_dir_all_if_exists(p: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", p.display()), e))
        }
        _ => Ok(()),
    }
}

/// Deletes a network device if it exists (iproute2; the CNI bridge plugin never removes its bridge).
pub(crate) fn delete_link(dev: &str) -> Result<(), Error> {
    if !Path::new("/sys/class/net").join(dev).exists() {
        return Ok(());
    }
    let out = Command::new("ip")
        .args(["link", "delete", dev])
        .output()
        .map_err(|e| {
            Error::Command(format!(
                "running `ip link delete {dev}`: {e} (install iproute2)"
            ))
        })?;
    if !out.status.success() && Path::new("/sys/class/net").join(dev).exists() {
        return Err(Error::Command(format!(
            "`ip link delete {dev}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
