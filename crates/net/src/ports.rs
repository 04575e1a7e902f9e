//! `-p [HOSTIP:][HOSTPORT:]PORT[/tcp|udp]` and the image's `EXPOSE` keys: user-controlled text,
//! parsed strictly (ASCII digits only, no signs, no ranges, bounded length) into [`PortSpec`].
//! Fuzz target: crates/net/fuzz (publish).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// Longest `-p` value accepted; a real one is under 60 characters.
const MAX_LEN: usize = 128;

/// Transport protocol of a published port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as CNI's portmap plugin and Docker spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `-p` request: which host address and port forward to which port of the instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PortSpec {
    /// Host address to listen on; `None` = every address of the host.
    pub host_ip: Option<IpAddr>,
    /// Host port; `None` = pick a free one (`-p PORT`, `HOSTIP::PORT`, `-P`).
    pub host_port: Option<u16>,
    /// Port inside the instance (never 0).
    pub container_port: u16,
    /// tcp or udp.
    pub protocol: Protocol,
}

/// Why a `-p` value or an `EXPOSE` key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port mapping {input:?}: {reason} (expected [HOSTIP:]HOSTPORT:PORT[/tcp|udp], e.g. -p 8080:80 or -p 127.0.0.1:8080:80/tcp)")]
pub struct PortParseError {
    /// The value as given (cut to a printable length).
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(input: &str, reason: impl Into<String>) -> PortParseError {
    let input: String = input.chars().take(MAX_LEN).collect();
    PortParseError {
        input,
        reason: reason.into(),
    }
}

/// A port number: 1 to 5 ASCII digits, 1..=65535 (`+80`, ` 80`, `0x50`, `80-90` are refused).
fn port(input: &str, s: &str, what: &str) -> Result<u16, PortParseError> {
    if s.is_empty() {
        return Err(err(input, format!("the {what} is missing")));
    }
    if s.contains('-')
        && s.split('-')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(err(
            input,
            "port ranges are not supported; publish each port with its own -p",
        ));
    }
    if s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(
            input,
            format!("the {what} {s:?} is not a number from 1 to 65535"),
        ));
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(err(
            input,
            format!("the {what} {s:?} is not a number from 1 to 65535"),
        )),
    }
}

fn protocol(input: &str, s: &str) -> Result<Protocol, PortParseError> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "" => Err(err(input, "the protocol after '/' is missing")),
        other => Err(err(
            input,
            format!("protocol {other:?} is not supported (tcp or udp)"),
        )),
    }
}

fn host_ip(input: &str, s: &str) -> Result<IpAddr, PortParseError> {
    if s.is_empty() {
        return Err(err(input, "the host IP before ':' is empty"));
    }
    s.parse::<IpAddr>()
        .map_err(|_| err(input, format!("{s:?} is not an IP address")))
}

impl PortSpec {
    /// Parses one `-p` value: `PORT`, `HOSTPORT:PORT`, `HOSTIP:HOSTPORT:PORT`, `HOSTIP::PORT`,
    /// `[IPV6]:HOSTPORT:PORT`, each with an optional `/tcp` or `/udp`.
    pub fn parse(input: &str) -> Result<PortSpec, PortParseError> {
        if input.is_empty() {
            return Err(err(input, "it is empty"));
        }
        if input.len() > MAX_LEN {
            return Err(err(
                input,
                format!("it is longer than {MAX_LEN} characters"),
            ));
        }
        if let Some(c) = input
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return Err(err(input, format!("it contains {c:?}")));
        }
        let (addr, proto) = match input.rsplit_once('/') {
            Some((a, p)) => (a, protocol(input, p)?),
            None => (input, Protocol::Tcp),
        };
        let (host_ip, rest): (Option<IpAddr>, &str) = if let Some(v6) = addr.strip_prefix('[') {
            let (ip, rest) = v6
                .split_once(']')
                .ok_or_else(|| err(input, "an IPv6 host address misses its ']'"))?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| err(input, format!("{ip:?} is not an IPv6 address")))?;
            let rest = rest
                .strip_prefix(':')
                .ok_or_else(|| err(input, "':' must follow the ']' of the host address"))?;
            if rest.split(':').count() != 2 {
                return Err(err(input, "after [HOSTIP]: comes HOSTPORT:PORT (or :PORT)"));
            }
            (Some(IpAddr::V6(ip)), rest)
        } else {
            let parts: Vec<&str> = addr.split(':').collect();
            match parts.len() {
                1 | 2 => (None, addr),
                3 => {
                    let ip = host_ip(input, parts[0])?;
                    (Some(ip), &addr[parts[0].len() + 1..])
                }
                _ => {
                    return Err(err(
                        input,
                        "too many ':' (write an IPv6 host address in brackets: [::1]:8080:80)",
                    ))
                }
            }
        };
        let (host_port, container_port) = match rest.split_once(':') {
            None => (None, port(input, rest, "container port")?),
            Some(("", c)) if host_ip.is_some() => (None, port(input, c, "container port")?),
            Some((h, c)) => (
                Some(port(input, h, "host port")?),
                port(input, c, "container port")?,
            ),
        };
        Ok(PortSpec {
            host_ip,
            host_port,
            container_port,
            protocol: proto,
        })
    }

    /// A mapping for one `EXPOSE` key of an image config (`80/tcp`, `53/udp`, `8080`) with a host
    /// port to be picked, as `-P` publishes them.
    pub fn from_exposed(key: &str) -> Result<PortSpec, PortParseError> {
        let (p, proto) = match key.split_once('/') {
            Some((p, proto)) => (p, protocol(key, proto)?),
            None => (key, Protocol::Tcp),
        };
        Ok(PortSpec {
            host_ip: None,
            host_port: None,
            container_port: port(key, p, "exposed port")?,
            protocol: proto,
        })
    }
}

impl fmt::Display for PortSpec {
    /// The canonical `-p` form, which [`PortSpec::parse`] reads back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        match (self.host_port, self.host_ip) {
            (Some(h), _) => write!(f, "{h}:")?,
            (None, Some(_)) => write!(f, ":")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.container_port, self.protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> PortSpec {
        PortSpec::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn accepted_forms() {
        let p = ok("8080:80");
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.protocol),
            (None, Some(8080), 80, Protocol::Tcp)
        );
        let p = ok("127.0.0.1:8080:80/udp");
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (Some(8080), 80, Protocol::Udp)
        );
        let p = ok("80");
        assert_eq!((p.host_port, p.container_port), (None, 80));
        let p = ok("10.0.0.1::53/udp");
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (None, 53, Protocol::Udp)
        );
        let p = ok("[::1]:8080:80");
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        assert_eq!(ok("[fe80::1]::80").host_port, None);
        assert_eq!(ok("65535:1").host_port, Some(65535));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "8080:80",
            "127.0.0.1:8080:80/udp",
            "80",
            "10.0.0.1::53/udp",
            "[::1]:8080:80",
            "[::]::9/tcp",
        ] {
            let p = ok(s);
            assert_eq!(ok(&p.to_string()), p, "{s}");
        }
    }

    #[test]
    fn hostile_input_is_refused_with_a_reason() {
        let long = "1".repeat(4096);
        let cases = [
            "",
            ":",
            "::",
            ":::",
            "/",
            "/tcp",
            "80/",
            "80/sctp",
            "80/TCP",
            "0",
            "0:80",
            "80:0",
            "65536:80",
            "80:65536",
            "99999999999999999999:80",
            "+80",
            "-80",
            "80:+80",
            " 80",
            "80 ",
            "8 0",
            "80\n",
            "80\0",
            "0x50",
            "８０",
            "٨٠",
            "8000-8010:80",
            "80-81",
            "a:b",
            "1.2.3.4:80",
            "1.2.3.4:80:81:82",
            "1.2.3.4.5:80:80",
            ":80:80",
            "[::1:80:80",
            "[::1]80:80",
            "[::1]:80",
            "[1.2.3.4]:80:80",
            "[::1]:80:80:80",
            "localhost:80:80",
            "80/tcp/udp",
            "80//tcp",
            "1:2:3:4:5:6:7:8",
            "::1:80:80",
            &long,
        ];
        for c in cases {
            match PortSpec::parse(c) {
                Err(e) => {
                    assert!(!e.reason.is_empty());
                    assert!(e.input.len() <= MAX_LEN * 4, "error echoes a bounded input");
                }
                Ok(p) => panic!("{c:?} was accepted as {p:?}"),
            }
        }
    }

    #[test]
    fn ranges_get_their_own_message() {
        let e = PortSpec::parse("8000-8010:80").unwrap_err();
        assert!(e.reason.contains("ranges"), "{e}");
    }

    #[test]
    fn exposed_keys() {
        assert_eq!(PortSpec::from_exposed("80/tcp").unwrap().container_port, 80);
        assert_eq!(
            PortSpec::from_exposed("53/udp").unwrap().protocol,
            Protocol::Udp
        );
        assert_eq!(
            PortSpec::from_exposed("8080").unwrap().protocol,
            Protocol::Tcp
        );
        for bad in ["", "/tcp", "0/tcp", "80/icmp", "x"] {
            assert!(PortSpec::from_exposed(bad).is_err(), "{bad}");
        }
    }

    /// Every string over a small alphabet up to length 6: parse never panics, and what it accepts
    /// prints back to itself (the fuzz target's property, exhaustively on short inputs).
    #[test]
    fn exhaustive_short_inputs() {
        let alphabet = [b'0', b'1', b'9', b':', b'/', b't', b'[', b']', b'.', b'-'];
        let mut buf = Vec::new();
        fn walk(buf: &mut Vec<u8>, alphabet: &[u8], depth: usize) {
            let s = std::str::from_utf8(buf).unwrap();
            if let Ok(p) = PortSpec::parse(s) {
                assert_ne!(p.container_port, 0);
                assert_eq!(PortSpec::parse(&p.to_string()), Ok(p.clone()), "{s:?}");
            }
            if depth == 0 {
                return;
            }
            for &c in alphabet {
                buf.push(c);
                walk(buf, alphabet, depth - 1);
                buf.pop();
            }
        }
        walk(&mut buf, &alphabet, 6);
    }
}
