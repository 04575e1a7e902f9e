//! The network-wide iptables rules of strata's bridge networks: one masquerade chain (what the
//! bridge plugin's `ipMasq` installs per container) and one forward-accept chain (what the
//! firewall plugin installs per container), made once when the network is created instead of on
//! every start and stop. The plugins fork `iptables` several times per rule and per container
//! (bench/net-dataplane.sh: bridge's ipMasq and firewall are most of an attach without `-p`);
//! rules that name the subnet instead of each address do the same for every member.
//!
//! Written with one `iptables-restore --noflush` (one process, applied atomically) and checked
//! with one `iptables -C`; a marker under the state directory (tmpfs: gone after a reboot, like
//! the rules) lets an attach skip even that. Removed with the network.
//!
//! nat:    POSTROUTING -s SUBNET -j STRATA-MASQ-<h>   (RETURN for SUBNET and multicast, else MASQUERADE)
//! filter: FORWARD (first) -j STRATA-FWD-<h>          (ACCEPT from SUBNET; to SUBNET when
//!         RELATED, ESTABLISHED or DNAT — replies and published ports, as the firewall plugin)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use serde_json::Value;

use crate::config::Network;
use crate::record::PublishedPort;
use crate::{lock, Error};

/// The chains and match of one network's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetRules {
    /// nat chain.
    pub masq: String,
    /// filter chain.
    pub fwd: String,
    /// The subnet (CIDR).
    pub subnet: String,
    /// nat chain of the published ports' DNAT rules (one per port, added and removed with
    /// the attachment) when strata publishes ports itself instead of portmap.
    pub dnat: Option<String>,
    /// nat chain that masquerades DNATed connections from the host's loopback and hairpin ones.
    pub hairpin: String,
    /// The bridge device.
    pub bridge: String,
    /// Comment on the jumps: names the network.
    pub comment: String,
}

impl NetRules {
    /// The rules of `net` when its conflist asks strata for them (`"strata": {"networkRules":
    /// true}`, what [`crate::config::bridge_conflist`] writes); `None` for other conflists.
    pub fn of(net: &Network) -> Option<NetRules> {
        if net.conflist["strata"]["networkRules"] != true {
            return None;
        }
        let subnet = net.subnet()?.to_string();
        let h = hex::encode(Sha256::digest(format!("{}\n{subnet}", net.name)));
        let ports = net.conflist["strata"]["ports"] == true;
        Some(NetRules {
            // iptables chain names are at most 28 bytes.
            masq: format!("STRATA-MASQ-{}", &h[..12]),
            fwd: format!("STRATA-FWD-{}", &h[..12]),
            dnat: ports.then(|| format!("STRATA-DN-{}", &h[..12])),
            hairpin: format!("STRATA-HP-{}", &h[..12]),
            bridge: net.bridge()?.to_string(),
            subnet,
            comment: format!("strata network {}", net.name),
        })
    }

    fn masq_jump(&self) -> Vec<String> {
        self.jump(&["-s", &self.subnet], &self.masq)
    }

    fn fwd_jump(&self) -> Vec<String> {
        self.jump(&[], &self.fwd)
    }

    fn dnat_jump(&self, chain: &str) -> Vec<String> {
        self.jump(&["-m", "addrtype", "--dst-type", "LOCAL"], chain)
    }

    fn hairpin_jump(&self) -> Vec<String> {
        self.jump(
            &["-o", &self.bridge, "-m", "conntrack", "--ctstate", "DNAT"],
            &self.hairpin,
        )
    }

    fn jump(&self, m: &[&str], chain: &str) -> Vec<String> {
        let mut v: Vec<String> = m.iter().map(|s| s.to_string()).collect();
        v.extend(
            ["-m", "comment", "--comment", &self.comment, "-j", chain]
                .iter()
                .map(|s| s.to_string()),
        );
        v
    }

    /// The `iptables-restore --noflush` input that installs everything (a declared chain that
    /// exists is flushed and refilled, so a half-made set is repaired).
    pub fn restore_input(&self) -> String {
        let q = |v: Vec<String>| {
            v.iter()
                .map(|a| {
                    if a.contains(' ') {
                        format!("\"{a}\"")
                    } else {
                        a.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (m, f, s) = (&self.masq, &self.fwd, &self.subnet);
        let mut nat = format!(
            "*nat\n:{m} - [0:0]\n-A {m} -d {s} -j RETURN\n-A {m} -d 224.0.0.0/4 -j RETURN\n-A {m} -j MASQUERADE\n-A POSTROUTING {}\n",
            q(self.masq_jump())
        );
        if let Some(d) = &self.dnat {
            // Published ports: DNAT for the host's own addresses (from outside and from the host
            // itself), masquerade for connections from the host's loopback (the bridge needs
            // route_localnet, set per attach) and for hairpin ones (a member through its own
            // or a peer's published port), as portmap's `snat` does.
            let hp = &self.hairpin;
            nat.push_str(&format!(
                ":{d} - [0:0]\n:{hp} - [0:0]\n-A {hp} -s 127.0.0.0/8 -j MASQUERADE\n-A {hp} -s {s} -j MASQUERADE\n\
                 -A PREROUTING {}\n-A OUTPUT {}\n-A POSTROUTING {}\n",
                q(self.dnat_jump(d)),
                q(self.dnat_jump(d)),
                q(self.hairpin_jump())
            ));
        }
        format!(
            "{nat}COMMIT\n*filter\n:{f} - [0:0]\n-A {f} -s {s} -j ACCEPT\n-A {f} -d {s} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT\n-I FORWARD 1 {}\nCOMMIT\n",
            q(self.fwd_jump())
        )
    }

    /// The DNAT rules of one attachment's published ports (`op`: `-A` or `-D`), as
    /// `iptables-restore` lines; the comment names the container.
    fn port_lines(
        &self,
        op: &str,
        container_id: &str,
        addr: std::net::Ipv4Addr,
        ports: &[PublishedPort],
    ) -> Vec<String> {
        let Some(d) = &self.dnat else {
            return Vec::new();
        };
        ports
            .iter()
            .map(|p| {
                let dst = match p.host_ip {
                    Some(ip) if !ip.is_unspecified() => format!("-d {ip}/32 "),
                    _ => String::new(),
                };
                let proto = p.protocol.as_str();
                format!(
                    "{op} {d} {dst}-p {proto} -m {proto} --dport {} -m comment --comment strata-port:{container_id} -j DNAT --to-destination {addr}:{}",
                    p.host_port, p.container_port
                )
            })
            .collect()
    }
}

fn marker(state_dir: &Path, net: &Network) -> PathBuf {
    state_dir.join("rules").join(&net.name)
}

/// Makes sure `net`'s rules are in place (nothing for a conflist that does not ask for them).
/// Cheap when this state directory already installed them since boot.
pub(crate) fn ensure(state_dir: &Path, net: &Network) -> Result<(), Error> {
    let Some(r) = NetRules::of(net) else {
        return Ok(());
    };
    let mark = marker(state_dir, net);
    if std::fs::read_to_string(&mark).is_ok_and(|m| m == r.subnet) {
        return Ok(());
    }
    let _l = lock::exclusive(&state_dir.join("rules.lock"))?;
    let present = iptables(&["-t", "nat", "-C", "POSTROUTING"], &r.masq_jump()).is_ok()
        && iptables(&["-t", "filter", "-C", "FORWARD"], &r.fwd_jump()).is_ok();
    if !present {
        remove_rules(&r);
        restore(&r.restore_input())?;
    }
    if let Some(d) = mark.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
    }
    std::fs::write(&mark, &r.subnet)
        .map_err(|e| Error::io(format!("writing {}", mark.display()), e))
}

/// Forgets which networks' rules were seen in place, so the next attach checks them again
/// (`iptables -C`) and puts back what someone removed (prune runs this).
pub(crate) fn forget_markers(state_dir: &Path) {
    let _ = std::fs::remove_dir_all(state_dir.join("rules"));
}

/// Removes `net`'s rules and the marker (nothing for a conflist without them). Every step runs;
/// an error says what is left.
pub(crate) fn remove(state_dir: &Path, net: &Network) -> Result<(), Error> {
    let Some(r) = NetRules::of(net) else {
        return Ok(());
    };
    let _l = lock::exclusive(&state_dir.join("rules.lock"))?;
    let _ = std::fs::remove_file(marker(state_dir, net));
    remove_rules(&r);
    let left: Vec<&str> = [("nat", &r.masq), ("filter", &r.fwd)]
        .into_iter()
        .filter(|(t, c)| iptables(&["-t", t, "-S", c], &[]).is_ok())
        .map(|(_, c)| c.as_str())
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::Command(format!(
            "removing the iptables chains {} of network {:?} failed (`iptables -S` shows them; remove them by hand)",
            left.join(", "),
            net.name
        )))
    }
}

/// Deletes the jumps (every copy) and the chains; what is not there is skipped.
fn remove_rules(r: &NetRules) {
    let mut jumps = vec![
        ("nat", "POSTROUTING", r.masq_jump()),
        ("filter", "FORWARD", r.fwd_jump()),
    ];
    let mut chains = vec![("nat", r.masq.clone()), ("filter", r.fwd.clone())];
    if let Some(d) = &r.dnat {
        jumps.push(("nat", "PREROUTING", r.dnat_jump(d)));
        jumps.push(("nat", "OUTPUT", r.dnat_jump(d)));
        jumps.push(("nat", "POSTROUTING", r.hairpin_jump()));
        chains.push(("nat", d.clone()));
        chains.push(("nat", r.hairpin.clone()));
    }
    for (table, parent, jump) in jumps {
        for _ in 0..16 {
            if iptables(&["-t", table, "-D", parent], &jump).is_err() {
                break;
            }
        }
    }
    for (table, chain) in chains {
        let _ = iptables(&["-t", table, "-F", &chain], &[]);
        let _ = iptables(&["-t", table, "-X", &chain], &[]);
    }
}

/// The conflist as strata runs it: without portmap when strata publishes the ports itself
/// (the entry stays in the file for other CNI callers).
pub(crate) fn plugin_conflist(conflist: &Value) -> std::borrow::Cow<'_, Value> {
    if conflist["strata"]["ports"] != true {
        return std::borrow::Cow::Borrowed(conflist);
    }
    let mut c = conflist.clone();
    if let Some(list) = c["plugins"].as_array_mut() {
        list.retain(|p| p["type"] != "portmap");
    }
    std::borrow::Cow::Owned(c)
}

/// Adds the DNAT rules of an attachment's published ports (one `iptables-restore`, applied
/// atomically) and lets the bridge route DNATed connections from the host's loopback. Nothing
/// for networks where portmap publishes them, or without ports.
pub(crate) fn publish(
    net: &Network,
    container_id: &str,
    addr: std::net::Ipv4Addr,
    ports: &[PublishedPort],
) -> Result<(), Error> {
    let Some(r) = NetRules::of(net).filter(|r| r.dnat.is_some()) else {
        return Ok(());
    };
    if ports.is_empty() {
        return Ok(());
    }
    let sysctl = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", r.bridge);
    if std::fs::read_to_string(&sysctl).map_or(true, |v| v.trim() != "1") {
        std::fs::write(&sysctl, "1").map_err(|e| Error::io(format!("writing {sysctl}"), e))?;
    }
    let lines = r.port_lines("-A", container_id, addr, ports);
    restore(&format!("*nat\n{}\nCOMMIT\n", lines.join("\n")))
}

/// Removes what [`publish`] added (rules already gone are skipped).
pub(crate) fn unpublish(
    net: &Network,
    container_id: &str,
    addr: std::net::Ipv4Addr,
    ports: &[PublishedPort],
) -> Result<(), Error> {
    let Some(r) = NetRules::of(net).filter(|r| r.dnat.is_some()) else {
        return Ok(());
    };
    if ports.is_empty() {
        return Ok(());
    }
    let lines = r.port_lines("-D", container_id, addr, ports);
    if restore(&format!("*nat\n{}\nCOMMIT\n", lines.join("\n"))).is_ok() {
        return Ok(());
    }
    // Some are gone already (restore is all or nothing): one at a time, missing ones skipped.
    let mut left = Vec::new();
    for l in lines {
        let args: Vec<String> = l.split_whitespace().map(String::from).collect();
        if iptables(&["-t", "nat"], &args).is_err()
            && iptables(&["-t", "nat", "-C"], &args[1..]).is_ok()
        {
            left.push(l);
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::Command(format!(
            "removing the published ports of {container_id} failed; left: {}",
            left.join("; ")
        )))
    }
}

/// [`unpublish`] for an attachment record (its network as the record used it).
pub(crate) fn publish_undo(
    r: &crate::record::AttachmentRecord,
    addr: std::net::Ipv4Addr,
) -> Result<(), Error> {
    let net = Network {
        name: r.network.clone(),
        path: PathBuf::new(),
        conflist: r.conflist.clone(),
    };
    unpublish(&net, &r.container_id, addr, &r.ports)
}

/// DNAT rules in `net`'s chain whose container is not in `keep` (leftovers of attachments
/// whose record was lost), removed; returns what was removed.
pub(crate) fn remove_stray_ports(net: &Network, keep: &[String]) -> Vec<String> {
    let Some(d) = NetRules::of(net).and_then(|r| r.dnat) else {
        return Vec::new();
    };
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", &d])
        .output()
    else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        // `iptables -S` quotes the comment; strata's have no spaces, so words split cleanly.
        let args: Vec<String> = l
            .split_whitespace()
            .map(|w| w.trim_matches('"').to_string())
            .collect();
        let Some(id) = args.iter().find_map(|w| w.strip_prefix("strata-port:")) else {
            continue;
        };
        if keep.iter().any(|k| k == id) || !l.starts_with("-A ") {
            continue;
        }
        let mut del = args.clone();
        del[0] = "-D".into();
        if iptables(&["-t", "nat"], &del).is_ok() {
            removed.push(format!("{}: {}", net.name, l));
        }
    }
    removed
}

fn iptables(args: &[&str], more: &[String]) -> Result<(), Error> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .args(more)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command(format!("running iptables: {e} (install iptables)")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn restore(input: &str) -> Result<(), Error> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Command(format!("running iptables-restore: {e} (install iptables)")))?;
    let _ = child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes());
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Command(format!("running iptables-restore: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command(format!(
            "installing the network's iptables rules failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net(conflist: serde_json::Value) -> Network {
        Network {
            name: "n1".into(),
            path: PathBuf::from("/x/n1.conflist"),
            conflist,
        }
    }

    #[test]
    fn only_conflists_that_ask_get_rules() {
        let mut c = crate::config::bridge_conflist(
            "n1",
            "st-1",
            "10.5.0.0/24".parse().unwrap(),
            "10.5.0.1".parse().unwrap(),
            Path::new("/x"),
        );
        let r = NetRules::of(&net(c.clone())).expect("strata's own conflist");
        assert!(r.masq.len() <= 28 && r.fwd.len() <= 28, "{r:?}");
        assert_eq!(r.subnet, "10.5.0.0/24");
        let input = r.restore_input();
        assert!(input.contains("-A POSTROUTING -s 10.5.0.0/24 -m comment --comment \"strata network n1\" -j STRATA-MASQ-"), "{input}");
        assert!(input.contains("-I FORWARD 1 -m comment"), "{input}");
        assert_eq!(input.matches("COMMIT").count(), 2);
        c["strata"] = json!({});
        assert!(NetRules::of(&net(c)).is_none());
        assert!(NetRules::of(&net(json!({"name": "n1", "plugins": []}))).is_none());
    }
}
