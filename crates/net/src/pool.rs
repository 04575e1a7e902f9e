//! Pre-attached namespaces: the network half of a warm start. A network whose conflist asks for
//! a pool (`"strata": {"pool": N}`, `strata network create --pool N`, 2 by default) keeps up to N
//! namespaces that have been through ADD already (veth on the bridge, address leased, routes set)
//! and nothing else. [`Networks::attach_new_netns`] takes one instead of making a namespace and
//! running the plugins (about 15 ms of bridge and host-local processes here), so joining a
//! network costs a few file operations on the start path; a detached filler
//! ([`Networks::fill_pool`]) makes the next ones off that path.
//!
//! Layout: `<state>/pool/<network>/<slot>.json` is a slot's record (an [`AttachmentRecord`] whose
//! `container_id` is the slot id and whose `owner` is the filler that made it; `result` is set
//! once ADD succeeded: only then is the slot ready), `<slot>.ns` its namespace,
//! `filling` the filler at work, `fill.lock` the lock that keeps it alone.
//!
//! A slot serves one member only: the member's attachment record takes the slot's ADD result and
//! names the slot as its `cni_id`, and the slot's record goes, under the ports lock that every
//! claim holds. The member's DEL (with the slot id as CNI_CONTAINERID) ends the slot with it.
//! `network rm` DELs the ready slots; `prune` finishes what a killed filler or claimer left.

use std::path::{Path, PathBuf};

use crate::cni::{self, Invocation};
use crate::record::AttachmentRecord;
use crate::{lock, Error, Network, Networks, Owner};

pub use crate::config::{PoolStatus, DEFAULT_POOL, MAX_POOL};

fn read_slot(path: &Path) -> Option<AttachmentRecord> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn new_slot_id() -> Result<String, Error> {
    let mut b = [0u8; 8];
    getrandom(&mut b)?;
    Ok(format!("pool-{}", hex::encode(b)))
}

fn getrandom(buf: &mut [u8]) -> Result<(), Error> {
    // SAFETY: getrandom(2) writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(Error::io(
            "getrandom for a pool slot id",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A ready slot a member may take: ADD finished, its namespace still mounted, made from the
/// network's current conflist.
fn usable(net: &Network, r: &AttachmentRecord) -> bool {
    r.result.is_some() && crate::netns::is_mounted(&r.netns) && r.conflist == net.conflist
}

impl Networks {
    pub(crate) fn pool_dir(&self, network: &str) -> PathBuf {
        self.cfg.state_dir.join("pool").join(network)
    }

    /// The slot records of `network` (ready or filling), oldest name order.
    pub(crate) fn slots(&self, network: &str) -> Vec<(PathBuf, AttachmentRecord)> {
        let Ok(rd) = std::fs::read_dir(self.pool_dir(network)) else {
            return Vec::new();
        };
        let mut out: Vec<(PathBuf, AttachmentRecord)> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
            .filter_map(|p| read_slot(&p).map(|r| (p, r)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The pool of `network` as it is now.
    pub fn pool_status(&self, network: &str) -> Result<PoolStatus, Error> {
        let net = self.get(network)?;
        let slots = self.slots(&net.name);
        let ready = slots.iter().filter(|(_, r)| usable(&net, r)).count() as u32;
        let filling = slots.iter().filter(|(_, r)| r.result.is_none()).count() as u32;
        Ok(PoolStatus {
            size: net.pool_size(),
            ready,
            filling,
        })
    }

    /// True when `network` keeps a pool that has fewer slots than it asks for (ready, or being
    /// made by a live filler): a filler has work.
    pub fn pool_wants_fill(&self, network: &str) -> bool {
        let Ok(net) = self.get(network) else {
            return false;
        };
        let size = net.pool_size();
        let live = self
            .slots(&net.name)
            .iter()
            .filter(|(_, r)| usable(&net, r) || (r.result.is_none() && r.owner.alive()))
            .count();
        size > 0 && (live as u32) < size
    }

    /// Takes a ready slot of `net` for a member: returns its record and removes it from the pool
    /// (the caller has written the member's record naming it first, see [`crate::pool`]).
    /// Called with the ports lock held: two claims never take the same slot.
    pub(crate) fn take_ready_slot(&self, net: &Network) -> Option<(PathBuf, AttachmentRecord)> {
        self.slots(&net.name)
            .into_iter()
            .find(|(_, r)| usable(net, r))
    }

    /// Fills `network`'s pool up to its size, one slot at a time, and returns how many it made.
    /// Only one filler runs per network (a second returns 0 at once); it stops when the network
    /// is removed, and every slot is made under the network's shared lock, so `network rm` and
    /// `prune` see either no slot or a finished one. A killed filler leaves a slot without a
    /// result, which prune undoes. `at` is called with `"net:pool-filling"` between a slot's
    /// namespace and its ADD (the engine's kill point for the fault tests).
    pub fn fill_pool(&self, network: &str, at: &dyn Fn(&str)) -> Result<usize, Error> {
        if self.get(network)?.pool_size() == 0 {
            return Ok(0);
        }
        let dir = self.pool_dir(network);
        let Some(_fill) = lock::try_exclusive(&dir.join("fill.lock"))? else {
            return Ok(0);
        };
        let me = Owner::current();
        let marker = dir.join("filling");
        let _ = std::fs::write(&marker, serde_json::to_vec(&me).expect("serializes"));
        let mut made = 0;
        let mut swept = false;
        let result = loop {
            let _shared = lock::shared(&self.lock_path())?;
            let Ok(net) = self.get(network) else {
                break Ok(made); // removed meanwhile
            };
            if !swept {
                // Unfinished slots of a killed filler: only a filler makes slots and we hold
                // the fill lock, claims never take unfinished ones, prune needs the exclusive
                // lock: they are ours to end.
                // Ready slots made under another version of the conflist (edited by hand), or
                // whose namespace was unmounted behind our back, can never be taken: they go too.
                for (path, r) in self.slots(&net.name) {
                    let dead = r.result.is_none() && !r.owner.alive();
                    let stale = r.result.is_some() && !usable(&net, &r);
                    if dead || stale {
                        let _ = self.undo_slot(&path, &r);
                    }
                }
                swept = true;
            }
            if self.slots(&net.name).len() as u32 >= net.pool_size() {
                break Ok(made);
            }
            match self.add_slot(&net, me, at) {
                Ok(()) => made += 1,
                Err(e) => break Err(e),
            }
        };
        let _ = std::fs::remove_file(&marker);
        result
    }

    /// One slot: its record first (so a crash leaves something prune finds), then the
    /// namespace, then ADD; on failure nothing is left.
    fn add_slot(&self, net: &Network, me: Owner, at: &dyn Fn(&str)) -> Result<(), Error> {
        let dir = self.pool_dir(&net.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let id = new_slot_id()?;
        let path = dir.join(format!("{id}.json"));
        let mut r = AttachmentRecord {
            network: net.name.clone(),
            container_id: id.clone(),
            ifname: "eth0".into(),
            netns: dir.join(format!("{id}.ns")),
            owner: me,
            requested_ip: None,
            ports: Vec::new(),
            hostname: None,
            names: Vec::new(),
            hosts_file: None,
            conflist: net.conflist.clone(),
            result: None,
            release: None,
            cni_id: None,
        };
        crate::record::write_record(&path, &r)?;
        if let Err(e) = crate::netns::create(&r.netns) {
            let _ = std::fs::remove_file(&path);
            return Err(Error::io(
                format!("creating network namespace {}", r.netns.display()),
                e,
            ));
        }
        at("net:pool-filling");
        let (rc, args) = (r.runtime_config(), r.args());
        let inv = Invocation {
            container_id: &r.container_id,
            netns: Some(&r.netns),
            ifname: &r.ifname,
            args: &args,
            runtime_config: &rc,
        };
        let conflist = crate::rules::plugin_conflist(&r.conflist);
        match cni::add(&self.cfg.plugins, &conflist, &inv) {
            Ok((raw, _)) => r.result = Some(raw),
            Err(e) => {
                let _ = crate::netns::remove(&r.netns);
                let _ = std::fs::remove_file(&path);
                return Err(e.into());
            }
        }
        if let Err(e) = crate::record::write_record(&path, &r) {
            let _ = self.undo_slot(&path, &r);
            return Err(e);
        }
        Ok(())
    }

    /// DEL of a slot (its result, or one made from its lease if ADD never finished), then its
    /// namespace and record go.
    pub(crate) fn undo_slot(&self, path: &Path, r: &AttachmentRecord) -> Result<(), Error> {
        self.del_record(r)?;
        crate::netns::remove(&r.netns)
            .map_err(|e| Error::io(format!("removing {}", r.netns.display()), e))?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Ends every slot of `network` (`network rm`, with the exclusive lock held).
    pub(crate) fn drain_pool(&self, network: &str) -> Result<(), Error> {
        for (path, r) in self.slots(network) {
            self.undo_slot(&path, &r)?;
        }
        let dir = self.pool_dir(network);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", dir.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Prune's part (exclusive lock held, so no claim or filler step is in progress): slots a
    /// killed filler left unfinished and slots a killed claimer had already handed to a member
    /// (the member's record owns them now) go; ready slots stay. Returns `network/slot` of the
    /// slots undone, and errors.
    pub(crate) fn reconcile_pools(
        &self,
        records: &[AttachmentRecord],
    ) -> (Vec<String>, Vec<String>) {
        let (mut undone, mut errors) = (Vec::new(), Vec::new());
        let Ok(rd) = std::fs::read_dir(self.cfg.state_dir.join("pool")) else {
            return (undone, errors);
        };
        for net_dir in rd.filter_map(|e| e.ok()) {
            let network = net_dir.file_name().to_string_lossy().into_owned();
            let exists = self.get(&network).is_ok();
            for (path, r) in self.slots(&network) {
                if records
                    .iter()
                    .any(|m| m.cni_id.as_deref() == Some(&r.container_id))
                {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                let unfinished = r.result.is_none() && !r.owner.alive();
                if !unfinished && exists {
                    continue;
                }
                match self.undo_slot(&path, &r) {
                    Ok(()) => undone.push(format!("{network}/{}", r.container_id)),
                    Err(e) => errors.push(format!(
                        "ending pool slot {} of {network:?}: {e}",
                        r.container_id
                    )),
                }
            }
            // Namespaces without a record (a filler killed between its record's removal and
            // the namespace's, or a record removed by hand).
            if let Ok(rd) = std::fs::read_dir(net_dir.path()) {
                for e in rd.filter_map(|e| e.ok()) {
                    let p = e.path();
                    if p.extension().and_then(|x| x.to_str()) == Some("ns")
                        && !p.with_extension("json").exists()
                        && !records.iter().any(|m| m.netns == p)
                    {
                        if let Err(e) = crate::netns::remove(&p) {
                            errors.push(format!("removing {}: {e}", p.display()));
                        }
                    }
                }
            }
            if !exists {
                let _ = std::fs::remove_dir_all(net_dir.path());
            }
        }
        (undone, errors)
    }

    /// True while a filler of `network` runs.
    pub fn pool_filling(&self, network: &str) -> bool {
        std::fs::read(self.pool_dir(network).join("filling"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Owner>(&b).ok())
            .is_some_and(|o| o.alive())
    }
}
