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

use crate::config::Network;
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
        Some(NetRules {
            // iptables chain names are at most 28 bytes.
            masq: format!("STRATA-MASQ-{}", &h[..12]),
            fwd: format!("STRATA-FWD-{}", &h[..12]),
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
        format!(
            "*nat\n:{m} - [0:0]\n-A {m} -d {s} -j RETURN\n-A {m} -d 224.0.0.0/4 -j RETURN\n-A {m} -j MASQUERADE\n-A POSTROUTING {}\nCOMMIT\n\
             *filter\n:{f} - [0:0]\n-A {f} -s {s} -j ACCEPT\n-A {f} -d {s} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT\n-I FORWARD 1 {}\nCOMMIT\n",
            q(self.masq_jump()),
            q(self.fwd_jump())
        )
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
    for (table, parent, jump, chain) in [
        ("nat", "POSTROUTING", r.masq_jump(), &r.masq),
        ("filter", "FORWARD", r.fwd_jump(), &r.fwd),
    ] {
        for _ in 0..16 {
            if iptables(&["-t", table, "-D", parent], &jump).is_err() {
                break;
            }
        }
        let _ = iptables(&["-t", table, "-F", chain], &[]);
        let _ = iptables(&["-t", table, "-X", chain], &[]);
    }
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
