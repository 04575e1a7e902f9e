//! Network definitions: ordinary CNI conflists (bridge + host-local, portmap, firewall) under the
//! config directory, one `<name>.conflist` per network, readable by containerd's `ctr run --cni`,
//! nerdctl or Podman's CNI mode as they are. What strata needs from a conflist (bridge device,
//! subnet, gateway, lease directory) is read back from the plugin entries, so a conflist written by
//! hand or by another tool works too.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cni::CNI_VERSION;
use crate::Error;

/// Pool size of networks made without `--pool`.
pub const DEFAULT_POOL: u32 = 2;

/// Largest pool a network may ask for.
pub const MAX_POOL: u32 = 32;

/// What a network's pool holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStatus {
    /// Slots the network asks for.
    pub size: u32,
    /// Slots ready to be taken.
    pub ready: u32,
    /// Slots whose ADD is still running (or whose filler was killed: the next filler's or
    /// prune's work).
    pub filling: u32,
}

impl Network {
    /// How many pre-attached namespaces the network keeps (0 = none; conflists not made by
    /// strata have no pool).
    pub fn pool_size(&self) -> u32 {
        self.conflist["strata"]["pool"]
            .as_u64()
            .map_or(0, |n| n.min(MAX_POOL as u64) as u32)
    }
}

/// Names `--network` takes that are not networks.
pub const RESERVED: [&str; 3] = ["none", "host", "container"];

/// The default network's name.
pub const DEFAULT_NETWORK: &str = "bridge";

/// A network: its conflist and what strata reads from it.
#[derive(Debug, Clone)]
pub struct Network {
    /// Network name (the conflist's `name`).
    pub name: String,
    /// The conflist file.
    pub path: PathBuf,
    /// The conflist itself.
    pub conflist: Value,
}

impl Network {
    /// Reads and checks `<dir>/<name>.conflist`.
    pub fn load(path: &Path) -> Result<Network, Error> {
        let text = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading network config {}", path.display()), e))?;
        let conflist: Value = serde_json::from_slice(&text).map_err(|e| {
            Error::Config(format!(
                "network config {} is not JSON: {e}",
                path.display()
            ))
        })?;
        let name = conflist
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if validate_name(&name).is_err() {
            return Err(Error::Config(format!(
                "network config {} has no valid \"name\"",
                path.display()
            )));
        }
        if conflist
            .get("plugins")
            .and_then(Value::as_array)
            .filter(|p| !p.is_empty())
            .is_none()
        {
            return Err(Error::Config(format!(
                "network config {} has no \"plugins\" list",
                path.display()
            )));
        }
        Ok(Network {
            name,
            path: path.to_path_buf(),
            conflist,
        })
    }

    fn plugin(&self, ty: &str) -> Option<&Value> {
        self.conflist["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["type"] == ty)
    }

    /// The Linux bridge device of a bridge network.
    pub fn bridge(&self) -> Option<&str> {
        self.plugin("bridge")?.get("bridge")?.as_str()
    }

    fn range(&self) -> Option<&Value> {
        let ipam = self.plugin("bridge")?.get("ipam")?;
        match ipam.get("ranges") {
            Some(r) => r.get(0)?.get(0),
            None => Some(ipam),
        }
    }

    /// The IPv4 subnet host-local hands addresses from.
    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.range()?
            .get("subnet")?
            .as_str()?
            .parse::<Ipv4Net>()
            .ok()
            .map(|n| n.trunc())
    }

    /// The gateway (host-local's default: the subnet's first address).
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        match self.range()?.get("gateway").and_then(Value::as_str) {
            Some(g) => g.parse().ok(),
            None => self.subnet().and_then(|s| s.hosts().next()),
        }
    }

    /// Where host-local keeps this network's leases (`<dataDir>/<name>`).
    pub fn lease_dir(&self) -> PathBuf {
        let data = self
            .plugin("bridge")
            .and_then(|b| b.get("ipam")?.get("dataDir")?.as_str());
        Path::new(data.unwrap_or("/var/lib/cni/networks")).join(&self.name)
    }

    /// True when the conflist publishes ports (a portmap plugin with the capability).
    pub fn publishes_ports(&self) -> bool {
        self.plugin("portmap")
            .is_some_and(|p| p["capabilities"]["portMappings"] == true)
    }
}

/// Checks a network name: 1-64 of `[A-Za-z0-9_.-]`, starting with a letter or digit, not one of
/// the `--network` keywords.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 64 || !ok_chars || !ok_start {
        return Err(Error::InvalidName(format!(
            "invalid network name {:?}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
            name.chars().take(80).collect::<String>()
        )));
    }
    if RESERVED.contains(&name) {
        return Err(Error::InvalidName(format!(
            "{name:?} is a --network mode, not a network name; choose another name"
        )));
    }
    Ok(())
}

/// The bridge device of a user network: `st-` + 12 hex digits of the name's hash (device names
/// are at most 15 bytes). The default network's is configured (`NetConfig::default_bridge`).
pub fn bridge_name(network: &str) -> String {
    let h = Sha256::digest(network.as_bytes());
    format!("st-{}", &hex::encode(h)[..12])
}

/// The conflist of a new bridge network: bridge (gateway on the bridge, hairpin so a container
/// reaches itself through a published port) with host-local leases in `lease_root`, portmap for
/// `-p` (with SNAT so the host's loopback reaches published ports). Masquerading out and
/// accepting forwarded traffic (the bridge plugin's `ipMasq` and the firewall plugin, per
/// container, at every start and stop) are done once for the whole subnet by strata's network
/// rules (rules.rs), which `"strata": {"networkRules": true}` asks for. `"ports": true`: strata
/// publishes `-p` ports itself (one `iptables-restore` per attach, rules.rs) instead of running
/// portmap (a dozen `iptables` processes per attach and per detach); the portmap entry stays for
/// other CNI callers (libcni, Podman's CNI mode), which ignore the `strata` key.
pub fn bridge_conflist(
    name: &str,
    bridge: &str,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    lease_root: &Path,
) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet.to_string(), "gateway": gateway.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": lease_root.display().to_string()
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ],
        "strata": {"networkRules": true, "ports": true}
    })
}

/// IPv4 routes of the host's main table (from /proc/net/route), to refuse subnets the host
/// already reaches some other way. The default route is left out.
pub fn host_routes() -> Vec<(String, Ipv4Net)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    parse_proc_route(&text)
}

fn parse_proc_route(text: &str) -> Vec<(String, Ipv4Net)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dst), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        // /proc/net/route prints the addresses in host (little-endian) byte order.
        let dst = Ipv4Addr::from(u32::from_be(dst.to_le()));
        let mask = u32::from_be(mask.to_le());
        if mask == 0 {
            continue;
        }
        if let Ok(net) = Ipv4Net::new(dst, mask.count_ones() as u8) {
            out.push((f[0].to_string(), net));
        }
    }
    out
}

/// True when two subnets share an address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web", "my-net_1.2", "A9"] {
            validate_name(ok).unwrap();
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "-x",
            ".x",
            "_x",
            "a b",
            "a/b",
            "../x",
            "x\n",
            "none",
            "host",
            "container",
            "ä",
            &long,
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bridge_names_fit_a_device_name() {
        let b = bridge_name(&"x".repeat(64));
        assert!(b.len() <= 15, "{b}");
        assert_ne!(bridge_name("a"), bridge_name("b"));
    }

    #[test]
    fn conflist_reads_back() {
        let c = bridge_conflist(
            "n1",
            "st-1",
            "10.5.0.0/24".parse().unwrap(),
            "10.5.0.1".parse().unwrap(),
            Path::new("/x"),
        );
        let n = Network {
            name: "n1".into(),
            path: "/x/n1.conflist".into(),
            conflist: c,
        };
        assert_eq!(n.bridge(), Some("st-1"));
        assert_eq!(n.subnet(), Some("10.5.0.0/24".parse().unwrap()));
        assert_eq!(n.gateway(), Some("10.5.0.1".parse().unwrap()));
        assert_eq!(n.lease_dir(), Path::new("/x/n1"));
        assert!(n.publishes_ports());
    }

    #[test]
    fn proc_route() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                 eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 bad line\n";
        assert_eq!(
            parse_proc_route(t),
            vec![("eth0".to_string(), "192.0.2.0/24".parse().unwrap())]
        );
    }

    #[test]
    fn overlap() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(overlaps(n("10.0.0.0/16"), n("10.0.5.0/24")));
        assert!(overlaps(n("10.0.5.0/24"), n("10.0.0.0/16")));
        assert!(!overlaps(n("10.0.0.0/24"), n("10.0.1.0/24")));
    }
}
