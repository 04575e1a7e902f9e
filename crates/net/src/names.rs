//! Name resolution on a network: each member's /etc/hosts lists itself and every other member of
//! its networks (name, `--network-alias`es), kept current as members come and go; /etc/resolv.conf
//! is the host's, as Docker writes both. Why /etc/hosts and not a DNS server: docs/networking.md.

use std::io::{Seek, Write};
use std::net::Ipv4Addr;
use std::path::Path;

use crate::cni::Dns;
use crate::Error;

/// Checks a name or alias that goes into other members' /etc/hosts: a host name of 1-253
/// characters (`[A-Za-z0-9_.-]`, starting with a letter or digit).
pub fn validate_host_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(Error::InvalidName(format!(
            "invalid name or network alias {:?}: use letters, digits, '_', '.' or '-', starting with a letter or digit",
            name.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

/// One line of /etc/hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// Address.
    pub ip: Ipv4Addr,
    /// Names (first is canonical).
    pub names: Vec<String>,
}

/// /etc/hosts as Docker writes it (localhost and the IPv6 lines), then the member's own address
/// with its host name, then its peers.
pub fn render_hosts(own: Option<&HostEntry>, peers: &[HostEntry]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for e in own.into_iter().chain(peers) {
        if e.names.is_empty() {
            continue;
        }
        s.push_str(&format!("{}\t{}\n", e.ip, e.names.join(" ")));
    }
    s
}

/// Writes `content` into an existing file in place (truncate + write, same inode): the file is
/// bind-mounted into a running container, where a rename would not show.
///
/// `create`: make the file when missing. Only for the member being attached: a peer's file that
/// is gone belongs to a container being removed, and re-creating it would race that removal
/// (its directory's removal then fails and a half-removed container stays listed).
pub fn write_in_place(path: &Path, content: &str, create: bool) -> Result<(), Error> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let r = f
        .set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| f.write_all(content.as_bytes()));
    r.map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The DNS settings a bridge-network member gets: the host's /etc/resolv.conf (`host`) without its
/// loopback name servers, which the member's own namespace cannot reach; Docker's fallback
/// (8.8.8.8, 8.8.4.4) when none is left. The CNI result's DNS, when the conflist set one, wins.
pub fn dns_for_member(host: &str, cni: &Dns) -> Dns {
    if !cni.nameservers.is_empty() {
        return cni.clone();
    }
    let mut d = Dns::default();
    for line in host.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => {
                if let Some(ns) = f.next() {
                    let loopback = ns
                        .parse::<std::net::IpAddr>()
                        .map(|a| a.is_loopback())
                        .unwrap_or(true);
                    if !loopback {
                        d.nameservers.push(ns.to_string());
                    }
                }
            }
            Some("search") | Some("domain") => d.search = f.map(String::from).collect(),
            Some("options") => d.options.extend(f.map(String::from)),
            _ => {}
        }
    }
    if d.nameservers.is_empty() {
        d.nameservers = vec!["8.8.8.8".into(), "8.8.4.4".into()];
    }
    d
}

/// resolv.conf text for `dns`.
pub fn render_resolv_conf(dns: &Dns) -> String {
    let mut s = String::new();
    if !dns.search.is_empty() {
        s.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    for ns in &dns.nameservers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

#[cfg(test)]
mod tests {

    /// A peer's hosts file that is gone (its container is being removed) is not made again:
    /// that raced the container's directory removal and left it listed (seen in the soak).
    #[test]
    fn a_missing_peer_hosts_file_is_not_recreated() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        assert!(write_in_place(&p, "x\n", false).is_err());
        assert!(!p.exists());
        write_in_place(&p, "own\n", true).unwrap();
        write_in_place(&p, "peer\n", false).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "peer\n");
    }
    use super::*;

    #[test]
    fn hosts_lists_self_then_peers() {
        let own = HostEntry {
            ip: "10.1.0.2".parse().unwrap(),
            names: vec!["abc".into()],
        };
        let peers = [HostEntry {
            ip: "10.1.0.3".parse().unwrap(),
            names: vec!["web".into(), "www".into()],
        }];
        let h = render_hosts(Some(&own), &peers);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"));
        assert!(h.ends_with("10.1.0.2\tabc\n10.1.0.3\tweb www\n"), "{h}");
    }

    #[test]
    fn names_cannot_inject_lines() {
        for bad in ["", "a b", "a\n10.0.0.1 evil", "#x", "a\tb", "-a", "ä"] {
            assert!(validate_host_name(bad).is_err(), "{bad:?}");
        }
        validate_host_name("web-1.example").unwrap();
    }

    #[test]
    fn resolv_drops_loopback_servers() {
        let host = "# x\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch a.example b.example\noptions edns0\n";
        let d = dns_for_member(host, &Dns::default());
        assert_eq!(d.nameservers, vec!["192.0.2.1"]);
        assert_eq!(
            render_resolv_conf(&d),
            "search a.example b.example\nnameserver 192.0.2.1\noptions edns0\n"
        );
        let d = dns_for_member("nameserver 127.0.0.53\nnameserver ::1\n", &Dns::default());
        assert_eq!(d.nameservers, vec!["8.8.8.8", "8.8.4.4"]);
    }
}
