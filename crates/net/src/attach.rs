//! A network namespace joins a network: ADD through the network's plugins, with `-p` mappings
//! for portmap and an optional fixed address for host-local; DEL undoes it; CHECK verifies it.
//!
//! Every attachment has a record (`<state>/attachments/<network>/<container>.json`) written
//! *before* ADD runs and removed only after DEL succeeded, so a crash at any point leaves a record
//! that `prune` can finish: the record holds the conflist as used, the ADD result (for DEL's
//! prevResult), the namespace and the owner process.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::{json, Value};

use crate::cni::{self, AddResult, Dns, Invocation};
use crate::names::{self, HostEntry};
use crate::ports::{PortSpec, Protocol};
use crate::record::{validate_container_id, write_record, AttachmentRecord, PublishedPort};
use crate::{lock, Error, Networks, Owner};

/// How long an attach or detach waits for another process's DEL of the same attachment.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What joining a network takes.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    /// Network name (`bridge` = the default network, created on first use).
    pub network: String,
    /// Container (or VM) id: CNI_CONTAINERID and the record's name.
    pub container_id: String,
    /// The network namespace to attach (a bind-mounted namespace file or /proc/PID/ns/net).
    pub netns: PathBuf,
    /// Interface name inside the namespace.
    pub ifname: String,
    /// The process whose life the attachment lasts.
    pub owner: Owner,
    /// A fixed address (`--ip`); `None` = the next free one.
    pub ip: Option<Ipv4Addr>,
    /// `-p` / `-P` mappings.
    pub ports: Vec<PortSpec>,
    /// Host name, written as this member's own line of its /etc/hosts.
    pub hostname: Option<String>,
    /// Names other members resolve this one by (container name, `--network-alias`es).
    pub names: Vec<String>,
    /// This member's /etc/hosts (a host file bind-mounted into it), kept current; `None` = none.
    pub hosts_file: Option<PathBuf>,
}

impl AttachRequest {
    /// A request with `eth0`, no ports and no names.
    pub fn new(network: &str, container_id: &str, netns: &Path, owner: Owner) -> AttachRequest {
        AttachRequest {
            network: network.into(),
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            owner,
            ip: None,
            ports: Vec::new(),
            hostname: None,
            names: Vec::new(),
            hosts_file: None,
        }
    }
}

/// What the member got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// Network name.
    pub network: String,
    /// Interface inside the namespace.
    pub ifname: String,
    /// Address with prefix length.
    pub address: Ipv4Net,
    /// Gateway.
    pub gateway: Option<Ipv4Addr>,
    /// MAC address of the interface.
    pub mac: String,
    /// DNS for the member's resolv.conf (see [`names::render_resolv_conf`]).
    pub dns: Dns,
    /// Published ports.
    pub ports: Vec<PublishedPort>,
}

fn validate_ifname(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(format!(
            "invalid interface name {name:?}: 1-15 letters, digits, '_', '.' or '-'"
        )))
    }
}

/// True when two host bindings of one protocol and port would collide.
fn same_binding(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
        _ => true,
    }
}

/// Whether a host process holds the port (the DNAT rule would silently shadow it).
fn host_port_free(ip: Option<IpAddr>, port: u16, proto: Protocol) -> bool {
    let addr = SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port);
    match proto {
        Protocol::Tcp => TcpListener::bind(addr).is_ok(),
        Protocol::Udp => UdpSocket::bind(addr).is_ok(),
    }
}

/// A free host port, from the kernel's ephemeral range.
fn pick_port(
    ip: Option<IpAddr>,
    proto: Protocol,
    taken: &BTreeSet<(Protocol, u16)>,
) -> Result<u16, Error> {
    let addr = SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), 0);
    for _ in 0..64 {
        let port = match proto {
            Protocol::Tcp => TcpListener::bind(addr).and_then(|l| l.local_addr()),
            Protocol::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
        }
        .map_err(|e| {
            Error::PortInUse(format!(
                "cannot find a free {proto} port on {}: {e}",
                addr.ip()
            ))
        })?
        .port();
        if !taken.contains(&(proto, port)) {
            return Ok(port);
        }
    }
    Err(Error::PortInUse(format!(
        "cannot find a free {proto} port on {}",
        addr.ip()
    )))
}

impl Networks {
    pub(crate) fn records_dir(&self, network: &str) -> PathBuf {
        self.cfg.state_dir.join("attachments").join(network)
    }

    fn record_path(&self, network: &str, container_id: &str) -> PathBuf {
        self.records_dir(network)
            .join(format!("{container_id}.json"))
    }

    /// Attachment records of one network, or of all.
    pub fn records(&self, network: Option<&str>) -> Result<Vec<AttachmentRecord>, Error> {
        let root = self.cfg.state_dir.join("attachments");
        let dirs: Vec<PathBuf> = match network {
            Some(n) => vec![root.join(n)],
            None => match std::fs::read_dir(&root) {
                Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
                Err(_) => Vec::new(),
            },
        };
        let mut out = Vec::new();
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let p = e.path();
                if p.extension().and_then(|x| x.to_str()) != Some("json") {
                    continue;
                }
                let text = match std::fs::read(&p) {
                    Ok(t) => t,
                    // Detached (by a concurrent detach or prune) since the listing.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
                };
                let r: AttachmentRecord = serde_json::from_slice(&text).map_err(|e| {
                    Error::Config(format!("attachment record {} is damaged: {e}", p.display()))
                })?;
                out.push(r);
            }
        }
        out.sort_by(|a, b| (&a.network, &a.container_id).cmp(&(&b.network, &b.container_id)));
        Ok(out)
    }

    /// The record of one attachment.
    pub fn record(&self, network: &str, container_id: &str) -> Result<AttachmentRecord, Error> {
        let p = self.record_path(network, container_id);
        let text = std::fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotAttached {
                network: network.into(),
                container: container_id.into(),
            },
            _ => Error::io(format!("reading {}", p.display()), e),
        })?;
        serde_json::from_slice(&text).map_err(|e| {
            Error::Config(format!("attachment record {} is damaged: {e}", p.display()))
        })
    }

    /// Attaches `req.netns` to the network and returns what the member got. On any failure
    /// nothing is left: no record, no lease, no interface, no NAT rule.
    pub fn attach(&self, req: &AttachRequest) -> Result<Attachment, Error> {
        if !crate::netns::is_mounted(&req.netns) && !req.netns.starts_with("/proc") {
            return Err(Error::Invalid(format!(
                "{} is not a network namespace",
                req.netns.display()
            )));
        }
        let net = self.validated(req)?;
        Ok(self
            .attach_with(req, &net, false)?
            .expect("no pool: always attaches"))
    }

    /// Makes the member's namespace at `req.netns` (which must be
    /// `<state>/netns/<container id>`, as [`Networks::create_netns`] makes it) and attaches it:
    /// from the network's pool of pre-attached namespaces when it has a ready one (see
    /// [`crate::pool`]; no plugin runs), else through a new namespace and ADD. `--ip` and
    /// interfaces other than eth0 always take the second way. On any failure nothing is left.
    pub fn attach_new_netns(&self, req: &AttachRequest) -> Result<Attachment, Error> {
        let net = self.validated(req)?;
        if req.netns != self.netns_dir().join(&req.container_id) {
            return Err(Error::Invalid(format!(
                "{} is not where strata keeps the namespace of {}",
                req.netns.display(),
                req.container_id
            )));
        }
        if net.pool_size() > 0 && req.ip.is_none() && req.ifname == "eth0" {
            if let Some(a) = self.attach_with(req, &net, true)? {
                return Ok(a);
            }
        }
        self.create_netns(&req.container_id, req.owner)?;
        self.attach_with(req, &net, false)
            .map(|a| a.expect("no pool: always attaches"))
            .inspect_err(|_| {
                let _ = self.remove_netns(&req.container_id);
            })
    }

    fn validated(&self, req: &AttachRequest) -> Result<crate::Network, Error> {
        validate_container_id(&req.container_id)?;
        validate_ifname(&req.ifname)?;
        for n in req.names.iter().chain(&req.hostname) {
            names::validate_host_name(n)?;
        }
        let net = self.get(&req.network)?;
        if !req.ports.is_empty() && !net.publishes_ports() {
            return Err(Error::Invalid(format!(
                "network {:?} has no portmap plugin with the portMappings capability; it cannot publish ports",
                net.name
            )));
        }
        if let Some(ip) = req.ip {
            let Some(subnet) = net.subnet() else {
                return Err(Error::Invalid(format!(
                    "network {:?} has no subnet to take --ip {ip} from",
                    net.name
                )));
            };
            if !subnet.contains(&ip)
                || ip == subnet.network()
                || ip == subnet.broadcast()
                || Some(ip) == net.gateway()
            {
                return Err(Error::Invalid(format!(
                    "--ip {ip} is not a free host address of network {:?} (subnet {subnet}, gateway {})",
                    net.name,
                    net.gateway().map(|g| g.to_string()).unwrap_or_default()
                )));
            }
        }
        if let Some(p) = req
            .ports
            .iter()
            .find(|p| p.host_ip.is_some_and(|ip| ip.is_ipv6()))
        {
            return Err(Error::Invalid(format!(
                "cannot publish on host address {}: strata's networks are IPv4 only; give an IPv4 host address or none",
                p.host_ip.expect("checked")
            )));
        }
        Ok(net)
    }

    /// The attach itself; `pooled`: take a ready slot of the network's pool instead of running
    /// ADD on `req.netns`, and bind its namespace at `req.netns` (`None` when no slot is ready).
    fn attach_with(
        &self,
        req: &AttachRequest,
        net: &crate::Network,
        pooled: bool,
    ) -> Result<Option<Attachment>, Error> {
        let _shared = lock::shared(&self.lock_path())?;
        crate::rules::ensure(&self.cfg.state_dir, net)?;
        let dir = self.records_dir(&net.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let path = self.record_path(&net.name, &req.container_id);

        // Ports are chosen and the record claimed under one lock, so two attaches cannot take the
        // same host port (or the same record).
        let mut record = {
            let _ports = lock::exclusive(&self.cfg.state_dir.join("ports.lock"))?;
            if path.exists() {
                return Err(Error::AlreadyAttached {
                    network: net.name.clone(),
                    container: req.container_id.clone(),
                });
            }
            let others = self.finish_ended_holders(self.records(None)?, &req.ports)?;
            let ports = self.resolve_ports(&req.ports, &others)?;
            let mut record = AttachmentRecord {
                network: net.name.clone(),
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
                netns: req.netns.clone(),
                owner: req.owner,
                requested_ip: req.ip,
                ports,
                hostname: req.hostname.clone(),
                names: req.names.clone(),
                hosts_file: req.hosts_file.clone(),
                conflist: net.conflist.clone(),
                result: None,
                release: None,
                cni_id: None,
            };
            if pooled {
                // Still under the ports lock: no other claim can take the same slot. The
                // member's record (naming the slot) is written before the slot's goes, so a
                // crash in between leaves a slot that prune knows is taken.
                let Some((slot_path, slot)) = self.take_ready_slot(net) else {
                    return Ok(None);
                };
                record.netns = slot.netns.clone();
                record.conflist = slot.conflist.clone();
                record.result = slot.result.clone();
                record.cni_id = Some(slot.container_id.clone());
                write_record(&path, &record)?;
                let _ = std::fs::remove_file(&slot_path);
            } else {
                write_record(&path, &record)?;
            }
            record
        };
        if pooled {
            return self.finish_pooled(req, net, record).map(Some);
        }

        let rc = record.runtime_config();
        let args = record.args();
        let inv = Invocation {
            container_id: &record.container_id,
            netns: Some(&record.netns),
            ifname: &record.ifname,
            args: &args,
            runtime_config: &rc,
        };
        let added = cni::add(
            &self.cfg.plugins,
            &crate::rules::plugin_conflist(&record.conflist),
            &inv,
        );
        let (raw, typed) = match added {
            Ok(r) => r,
            Err(e) => {
                // cni::add has DELeted what it did; the record goes too.
                let _ = std::fs::remove_file(&path);
                return Err(e.into());
            }
        };
        record.result = Some(raw);
        if let Err(e) = write_record(&path, &record) {
            let _ = cni::del(
                &self.cfg.plugins,
                &crate::rules::plugin_conflist(&record.conflist),
                record.result.as_ref(),
                &inv,
            );
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.publish_and_name(net, &record, &typed).map(Some)
    }

    /// A pooled attach after the claim: the member's namespace file is bound to the slot's
    /// namespace, then ports and names as for any member.
    fn finish_pooled(
        &self,
        req: &AttachRequest,
        net: &crate::Network,
        record: AttachmentRecord,
    ) -> Result<Attachment, Error> {
        let typed = match record.typed() {
            Some(t) => t,
            None => {
                let _ = self.undo_record(&record);
                return Err(Error::Invalid(format!(
                    "pool slot {} of network {:?} has an unreadable ADD result",
                    record.cni_container_id(),
                    net.name
                )));
            }
        };
        if let Err(e) = self.bind_netns(&req.container_id, req.owner, &record.netns) {
            let _ = self.undo_record(&record);
            return Err(e);
        }
        self.publish_and_name(net, &record, &typed)
            .inspect_err(|_| {
                let _ = self.remove_netns(&req.container_id);
            })
    }

    /// What every attach ends with: the member's address, its published ports and the /etc/hosts
    /// of its peers and itself. On failure the attachment is undone.
    fn publish_and_name(
        &self,
        net: &crate::Network,
        record: &AttachmentRecord,
        typed: &AddResult,
    ) -> Result<Attachment, Error> {
        let attachment = match to_attachment(record, typed) {
            Ok(a) => a,
            Err(e) => {
                let _ = self.undo_record(record);
                return Err(e);
            }
        };
        if let Err(e) = crate::rules::publish(
            net,
            &record.container_id,
            attachment.address.addr(),
            &record.ports,
        ) {
            let _ = self.undo_record(record);
            return Err(e);
        }
        if let Err(e) = self.refresh_hosts(&record.container_id) {
            let _ = self.undo_record(record);
            return Err(e);
        }
        Ok(attachment)
    }

    /// Attachments whose workload ended but whose DEL has not finished yet (it runs after the
    /// owner exited, see [`Networks::begin_release`]) still hold their host ports. A request
    /// for one of those ports must not fail because of that (`run --rm -p 8080:80` twice in a
    /// row): it waits for the releasing process, or DELs the attachment itself when nobody
    /// releases it any more (its owner and releaser were killed). Returns the records left.
    /// Called with the ports lock held, so two attaches never DEL the same record.
    fn finish_ended_holders(
        &self,
        others: Vec<AttachmentRecord>,
        specs: &[PortSpec],
    ) -> Result<Vec<AttachmentRecord>, Error> {
        let wanted = |r: &AttachmentRecord| {
            r.ports.iter().any(|p| {
                specs.iter().any(|s| {
                    s.host_port == Some(p.host_port)
                        && s.protocol == p.protocol
                        && same_binding(p.host_ip, s.host_ip)
                })
            })
        };
        let mut out = Vec::with_capacity(others.len());
        for r in others {
            if r.owner.alive() || !wanted(&r) {
                out.push(r);
                continue;
            }
            if self.wait_for_release(&r) {
                continue;
            }
            if r.live() {
                out.push(r); // its releaser is still at work after the wait: a real conflict
                continue;
            }
            self.undo_record(&r)?;
            if r.netns.starts_with(self.netns_dir()) || r.cni_id.is_some() {
                // The namespace strata made for it goes too (its owner is dead).
                let _ = self.remove_netns(&r.container_id);
            }
        }
        Ok(out)
    }

    /// Waits (bounded) while the releasing process of `r` runs and its record exists; true when
    /// the record is gone.
    fn wait_for_release(&self, r: &AttachmentRecord) -> bool {
        let path = self.record_path(&r.network, &r.container_id);
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        while r.release.is_some_and(|o| o.alive()) && std::time::Instant::now() < deadline {
            if !path.exists() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        !path.exists()
    }

    /// Hands the DEL of `container_id`'s attachments to `releaser` (the process that will run
    /// [`Networks::detach_all`] after the workload ended, off the exit path of the one that ran
    /// it). Until it is done, an attach that wants the same host ports and a detach of the same
    /// container wait for it rather than DEL the attachment a second time; if it is killed, the
    /// record is an ordinary leftover of dead processes for [`Networks::reconcile`] (prune) or
    /// for the next attach that needs its ports. Returns how many attachments were handed over.
    pub fn begin_release(&self, container_id: &str, releaser: Owner) -> Result<usize, Error> {
        validate_container_id(container_id)?;
        let _shared = lock::shared(&self.lock_path())?;
        let _ports = lock::exclusive(&self.cfg.state_dir.join("ports.lock"))?;
        let mut n = 0;
        for mut r in self
            .records(None)?
            .into_iter()
            .filter(|r| r.container_id == container_id)
        {
            r.release = Some(releaser);
            write_record(&self.record_path(&r.network, &r.container_id), &r)?;
            n += 1;
        }
        Ok(n)
    }

    /// Resolves `-p` requests: refuses ports another attachment publishes or a host process
    /// holds, picks free ports where none was given.
    fn resolve_ports(
        &self,
        specs: &[PortSpec],
        others: &[AttachmentRecord],
    ) -> Result<Vec<PublishedPort>, Error> {
        let mut out: Vec<PublishedPort> = Vec::new();
        let mut taken: BTreeSet<(Protocol, u16)> = BTreeSet::new();
        for r in others {
            for p in &r.ports {
                taken.insert((p.protocol, p.host_port));
            }
        }
        for s in specs {
            if out.iter().any(|p| {
                p.container_port == s.container_port
                    && p.protocol == s.protocol
                    && s.host_port.is_none()
            }) {
                continue; // -P and -p both asking for a random port of the same container port.
            }
            let host_port = match s.host_port {
                Some(h) => {
                    if let Some(r) = others.iter().find(|r| {
                        r.ports.iter().any(|p| {
                            p.protocol == s.protocol
                                && p.host_port == h
                                && same_binding(p.host_ip, s.host_ip)
                        })
                    }) {
                        return Err(Error::PortInUse(format!(
                            "host port {h}/{} is already published by container {} on network {:?}",
                            s.protocol, r.container_id, r.network
                        )));
                    }
                    if out.iter().any(|p| {
                        p.protocol == s.protocol
                            && p.host_port == h
                            && same_binding(p.host_ip, s.host_ip)
                    }) {
                        return Err(Error::PortInUse(format!(
                            "host port {h}/{} is published twice",
                            s.protocol
                        )));
                    }
                    if !host_port_free(s.host_ip, h, s.protocol) {
                        return Err(Error::PortInUse(format!(
                            "host port {h}/{} is already in use on the host{} (a process listens on it); choose another -p",
                            s.protocol,
                            s.host_ip.map(|ip| format!(" address {ip}")).unwrap_or_default()
                        )));
                    }
                    h
                }
                None => pick_port(s.host_ip, s.protocol, &taken)?,
            };
            taken.insert((s.protocol, host_port));
            out.push(PublishedPort {
                host_ip: s.host_ip,
                host_port,
                container_port: s.container_port,
                protocol: s.protocol,
            });
        }
        Ok(out)
    }

    /// Verifies an attachment (CNI CHECK through the whole list).
    pub fn check(&self, network: &str, container_id: &str) -> Result<(), Error> {
        let r = self.record(network, container_id)?;
        let Some(prev) = r.result.as_ref() else {
            return Err(Error::Invalid(format!(
                "attachment of {container_id} to {network:?} never completed; run prune"
            )));
        };
        let (rc, args) = (r.runtime_config(), r.args());
        let inv = Invocation {
            container_id: r.cni_container_id(),
            netns: Some(&r.netns),
            ifname: &r.ifname,
            args: &args,
            runtime_config: &rc,
        };
        cni::check(
            &self.cfg.plugins,
            &crate::rules::plugin_conflist(&r.conflist),
            prev,
            &inv,
        )
        .map_err(Error::from)
    }

    /// Detaches a member (CNI DEL); the record goes only when DEL succeeded, so a failure is
    /// retried by the next detach or prune.
    pub fn detach(&self, network: &str, container_id: &str) -> Result<(), Error> {
        validate_container_id(container_id)?;
        let _shared = lock::shared(&self.lock_path())?;
        let r = self.record(network, container_id)?;
        if r.release.is_some_and(|o| o != Owner::current()) && self.wait_for_release(&r) {
            return Ok(()); // its releaser did it
        }
        self.undo_record(&r)?;
        self.refresh_hosts(container_id)
    }

    /// Detaches `container_id` from every network it is on.
    pub fn detach_all(&self, container_id: &str) -> Result<(), Error> {
        let mut first = None;
        for r in self
            .records(None)?
            .into_iter()
            .filter(|r| r.container_id == container_id)
        {
            if let Err(e) = self.detach(&r.network, container_id) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// DEL for a record (with its result as prevResult, or one made from its lease when ADD never
    /// finished), then the record goes. The namespace is passed only while it still exists.
    pub(crate) fn undo_record(&self, r: &AttachmentRecord) -> Result<(), Error> {
        self.del_record(r)?;
        if r.cni_id.is_some() {
            // The pool slot's namespace the member took (its own namespace file, bound to the
            // same namespace, is the caller's to remove).
            crate::netns::remove(&r.netns)
                .map_err(|e| Error::io(format!("removing {}", r.netns.display()), e))?;
        }
        let p = self.record_path(&r.network, &r.container_id);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", p.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// DEL of what `r` describes: strata's port rules, then the plugins.
    pub(crate) fn del_record(&self, r: &AttachmentRecord) -> Result<(), Error> {
        let netns_alive = crate::netns::is_mounted(&r.netns);
        let prev = r.result.clone().or_else(|| {
            self.lease_result(&r.network, &r.conflist, r.cni_container_id(), &r.ifname)
        });
        let (rc, args) = (r.runtime_config(), r.args());
        let inv = Invocation {
            container_id: r.cni_container_id(),
            netns: netns_alive.then_some(r.netns.as_path()),
            ifname: &r.ifname,
            args: &args,
            runtime_config: &rc,
        };
        // strata's own DNAT rules of the published ports first (portmap's go with its DEL).
        let unpublished = match r.address() {
            Some(a) => crate::rules::publish_undo(r, a.addr()),
            None => Ok(()),
        };
        cni::del(
            &self.cfg.plugins,
            &crate::rules::plugin_conflist(&r.conflist),
            prev.as_ref(),
            &inv,
        )?;
        unpublished
    }

    /// A minimal prevResult from host-local's lease of `container_id` (for DEL after a crash
    /// between ADD and the record update: portmap and firewall find their rules by address).
    pub(crate) fn lease_result(
        &self,
        network: &str,
        conflist: &Value,
        container_id: &str,
        ifname: &str,
    ) -> Option<Value> {
        let net = crate::Network {
            name: network.into(),
            path: PathBuf::new(),
            conflist: conflist.clone(),
        };
        let prefix = net.subnet()?.prefix_len();
        let ip = crate::record::leases(&net.lease_dir())
            .into_iter()
            .find(|(_, id, ifn)| id == container_id && (ifn.is_empty() || ifn == ifname))?
            .0;
        Some(json!({
            "cniVersion": cni::CNI_VERSION,
            "interfaces": [{"name": ifname, "sandbox": ""}],
            "ips": [{"interface": 0, "address": format!("{ip}/{prefix}")}],
        }))
    }

    /// Rewrites the /etc/hosts of `container_id` and of every member that shares a network with
    /// it. Peers whose file is gone are skipped (prune handles them).
    pub(crate) fn refresh_hosts(&self, container_id: &str) -> Result<(), Error> {
        let _hosts = lock::exclusive(&self.cfg.state_dir.join("hosts.lock"))?;
        let all: Vec<AttachmentRecord> = self
            .records(None)?
            .into_iter()
            .filter(|r| r.result.is_some())
            .collect();
        let nets_of = |id: &str| -> BTreeSet<&str> {
            all.iter()
                .filter(|r| r.container_id == id)
                .map(|r| r.network.as_str())
                .collect()
        };
        // After a detach the container has no records left to say who its peers were, so every
        // member with a hosts file is rewritten (a few small writes per attach).
        let mut done = BTreeSet::new();
        let targets: Vec<&AttachmentRecord> = all
            .iter()
            .filter(|r| r.hosts_file.is_some() && done.insert(r.container_id.as_str()))
            .collect();
        for t in targets {
            let hosts_file = t.hosts_file.as_ref().expect("filtered");
            let mine = nets_of(&t.container_id);
            let own = t.address().map(|a| {
                let mut names: Vec<String> = t.hostname.iter().cloned().collect();
                names.extend(
                    t.names
                        .iter()
                        .filter(|n| Some(*n) != t.hostname.as_ref())
                        .cloned(),
                );
                HostEntry {
                    ip: a.addr(),
                    names,
                }
            });
            let mut seen = BTreeSet::new();
            let peers: Vec<HostEntry> = all
                .iter()
                .filter(|r| r.container_id != t.container_id && mine.contains(r.network.as_str()))
                .filter_map(|r| {
                    Some(HostEntry {
                        ip: r.address()?.addr(),
                        names: r.names.clone(),
                    })
                })
                .filter(|e| seen.insert((e.ip, e.names.clone())))
                .collect();
            let text = names::render_hosts(own.as_ref(), &peers);
            match names::write_in_place(hosts_file, &text, t.container_id == container_id) {
                Ok(()) => {}
                Err(e) if t.container_id == container_id => return Err(e),
                Err(_) => {}
            }
        }
        Ok(())
    }
}

fn to_attachment(r: &AttachmentRecord, typed: &AddResult) -> Result<Attachment, Error> {
    let ip = typed
        .ips
        .iter()
        .find(|i| i.address.parse::<Ipv4Net>().is_ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "network {:?} gave {} no IPv4 address",
                r.network, r.container_id
            ))
        })?;
    let address: Ipv4Net = ip.address.parse().expect("checked");
    let gateway = ip.gateway.as_deref().and_then(|g| g.parse().ok());
    let mac = ip
        .interface
        .and_then(|i| typed.interfaces.get(i))
        .or_else(|| {
            typed
                .interfaces
                .iter()
                .find(|i| i.name == r.ifname && !i.sandbox.is_empty())
        })
        .map(|i| i.mac.clone())
        .unwrap_or_default();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    Ok(Attachment {
        network: r.network.clone(),
        ifname: r.ifname.clone(),
        address,
        gateway,
        mac,
        dns: names::dns_for_member(&host_resolv, &typed.dns),
        ports: r.ports.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_ifnames() {
        validate_container_id("abc-1.2_3").unwrap();
        for bad in ["", "../x", "a/b", ".x", "a b", &"a".repeat(129)] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        validate_ifname("eth0").unwrap();
        for bad in ["", ".", "..", "a/b", "sixteen-chars-xx", "a b"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bindings_collide_on_wildcards() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(same_binding(None, Some(a)));
        assert!(same_binding(Some(a), Some(a)));
        assert!(!same_binding(Some(a), Some(b)));
        assert!(same_binding(Some("0.0.0.0".parse().unwrap()), Some(b)));
    }

    #[test]
    fn port_display() {
        let p = PublishedPort {
            host_ip: None,
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!(p.to_string(), "80/tcp -> 0.0.0.0:8080");
    }
}
