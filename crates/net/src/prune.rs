//! Leak reconciliation: what a crashed owner (kill -9 of strata, the keeper or the VM monitor)
//! left behind is found from strata's own state and undone through the plugins' DEL:
//!
//! 1. attachment records whose owner process is gone → DEL (removes the veth, the lease, the
//!    masquerade, port-mapping and firewall rules) → the namespace strata made for it is unmounted;
//! 2. host-local leases with no record (a crash before the record was written cannot happen —
//!    the record comes first — but a record lost by hand can) → DEL with a prevResult made from
//!    the lease;
//! 3. namespaces under `<state>/netns` whose owner is gone and that no record uses → unmounted.
//!
//! This is the CNI 1.1 GC's job, done here because the plugins shipped (1.1.1) predate GC.

use std::path::PathBuf;

use serde::Serialize;

use crate::cni::{self, Invocation};
use crate::record::leases;
use crate::{lock, Error, Networks, Owner};

/// What a prune did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// `network/container` attachments undone because their owner is gone.
    pub detached: Vec<String>,
    /// `network/address` leases released that had no attachment record.
    pub leases_released: Vec<String>,
    /// Published-port rules removed that no attachment owned.
    pub rules_removed: Vec<String>,
    /// Network namespaces unmounted.
    pub netns_removed: Vec<PathBuf>,
    /// `network/slot` pre-attached namespaces ended (left unfinished by a killed filler).
    pub pool_slots_removed: Vec<String>,
    /// Unused networks removed (by [`Networks::prune`]).
    pub networks_removed: Vec<String>,
    /// What could not be undone, with the cause (the rest was still done).
    pub errors: Vec<String>,
}

impl Networks {
    /// Finds and removes what dead owners left behind (see the module doc). Safe to run at any
    /// time: live attachments are not touched.
    pub fn reconcile(&self) -> Result<PruneReport, Error> {
        let _l = lock::exclusive(&self.lock_path())?;
        let mut rep = PruneReport::default();
        let netns_dir = self.netns_dir();

        // 1. Records of dead owners.
        for r in self.records(None)? {
            // A live releaser is DELeting it already (network::release in strata-engine).
            if r.live() {
                continue;
            }
            match self.undo_record(&r) {
                Ok(()) => rep
                    .detached
                    .push(format!("{}/{}", r.network, r.container_id)),
                Err(e) => rep.errors.push(format!(
                    "detaching {} from {:?}: {e}",
                    r.container_id, r.network
                )),
            }
        }

        // 1b. Pool slots a killed filler left unfinished, or a killed claimer handed over.
        let records = self.records(None)?;
        let (slots_undone, slot_errors) = self.reconcile_pools(&records);
        rep.pool_slots_removed = slots_undone;
        rep.errors.extend(slot_errors);

        // 2. Leases without a record (a pool slot's record counts).
        for net in self.list()? {
            for (ip, id, ifname) in leases(&net.lease_dir()) {
                if records
                    .iter()
                    .any(|r| r.network == net.name && r.cni_container_id() == id)
                    || self
                        .slots(&net.name)
                        .iter()
                        .any(|(_, s)| s.container_id == id)
                {
                    continue;
                }
                let ifname = if ifname.is_empty() {
                    "eth0".to_string()
                } else {
                    ifname
                };
                let prev = self.lease_result(&net.name, &net.conflist, &id, &ifname);
                let ns = netns_dir.join(&id);
                let ns_alive = crate::record::validate_container_id(&id).is_ok()
                    && crate::netns::is_mounted(&ns);
                let rc = serde_json::Map::new();
                let inv = Invocation {
                    container_id: &id,
                    netns: ns_alive.then_some(ns.as_path()),
                    ifname: &ifname,
                    args: &[],
                    runtime_config: &rc,
                };
                match cni::del(
                    &self.cfg.plugins,
                    &crate::rules::plugin_conflist(&net.conflist),
                    prev.as_ref(),
                    &inv,
                ) {
                    Ok(()) => rep.leases_released.push(format!("{}/{ip}", net.name)),
                    Err(e) => rep.errors.push(format!(
                        "releasing lease {ip} of {id} on {:?}: {e}",
                        net.name
                    )),
                }
            }
        }

        // 2b. Published-port rules of containers without a record (a record lost by hand).
        let records = self.records(None)?;
        for net in self.list()? {
            let keep: Vec<String> = records
                .iter()
                .filter(|r| r.network == net.name)
                .map(|r| r.container_id.clone())
                .collect();
            rep.rules_removed
                .extend(crate::rules::remove_stray_ports(&net, &keep));
        }

        // The network-wide rules are checked again by the next attach of each network.
        crate::rules::forget_markers(&self.cfg.state_dir);

        // 3. Namespaces of dead owners that no record uses.
        if let Ok(rd) = std::fs::read_dir(&netns_dir) {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".owner") || crate::record::validate_container_id(&name).is_err()
                {
                    continue;
                }
                let owner: Option<Owner> = std::fs::read(netns_dir.join(format!("{name}.owner")))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                if owner.is_some_and(|o| o.alive()) || records.iter().any(|r| r.netns == e.path()) {
                    continue;
                }
                match self.remove_netns(&name) {
                    Ok(()) => rep.netns_removed.push(e.path()),
                    Err(e) => rep.errors.push(e.to_string()),
                }
            }
        }
        drop(_l);
        if !rep.detached.is_empty() {
            if let Err(e) = self.refresh_hosts("") {
                rep.errors
                    .push(format!("rewriting members' /etc/hosts: {e}"));
            }
        }
        Ok(rep)
    }

    /// `network prune`: [`Networks::reconcile`], then removes every network other than the
    /// default one that has no attachment left and is not in `keep` (the networks stopped
    /// containers join again when they start).
    pub fn prune(&self, keep: &[String]) -> Result<PruneReport, Error> {
        let mut rep = self.reconcile()?;
        for net in self.list()? {
            if net.name == crate::config::DEFAULT_NETWORK
                || keep.contains(&net.name)
                || !self.records(Some(&net.name))?.is_empty()
            {
                continue;
            }
            match self.remove(&net.name) {
                Ok(()) => rep.networks_removed.push(net.name),
                Err(Error::InUse { .. }) => {}
                Err(e) => rep
                    .errors
                    .push(format!("removing network {:?}: {e}", net.name)),
            }
        }
        Ok(rep)
    }
}
