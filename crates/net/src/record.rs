//! What an attachment leaves on disk: its record (`<state>/attachments/<network>/<id>.json`) and
//! host-local's lease files; read by attach, detach, inspect and prune.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::cni::AddResult;
use crate::ports::Protocol;
use crate::{Error, Owner};

/// A published port as set up (the host port chosen when the request left it open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// Host address (`None` = all).
    pub host_ip: Option<IpAddr>,
    /// Host port.
    pub host_port: u16,
    /// Port inside the instance.
    pub container_port: u16,
    /// tcp or udp.
    pub protocol: Protocol,
}

impl std::fmt::Display for PublishedPort {
    /// `strata port`'s form: `80/tcp -> 0.0.0.0:8080`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        write!(
            f,
            "{}/{} -> {}",
            self.container_port,
            self.protocol,
            SocketAddr::new(ip, self.host_port)
        )
    }
}

/// The persistent record of one attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// Network name.
    pub network: String,
    /// Container id.
    pub container_id: String,
    /// Interface inside the namespace.
    pub ifname: String,
    /// The namespace.
    pub netns: PathBuf,
    /// The owner process.
    pub owner: Owner,
    /// Requested fixed address.
    pub requested_ip: Option<Ipv4Addr>,
    /// Published ports.
    pub ports: Vec<PublishedPort>,
    /// Host name.
    pub hostname: Option<String>,
    /// Names peers resolve this member by.
    pub names: Vec<String>,
    /// The member's /etc/hosts, kept current.
    pub hosts_file: Option<PathBuf>,
    /// The conflist as it was used (DEL needs the same config even if the network changed).
    pub conflist: Value,
    /// ADD's result; `None` while ADD runs (or if it crashed).
    pub result: Option<Value>,
    /// The process that took over the DEL once the owner's workload ended (see
    /// [`crate::Networks::begin_release`]); while it runs, others wait for it instead of
    /// DELeting the same attachment at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Owner>,
    /// The CNI_CONTAINERID the plugins know this attachment by, when it is not `container_id`:
    /// the pool slot whose pre-attached namespace the member took (see [`crate::pool`]). DEL,
    /// CHECK and the lease lookup use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_id: Option<String>,
}

impl AttachmentRecord {
    /// The id the plugins (and host-local's lease) know this attachment by.
    pub fn cni_container_id(&self) -> &str {
        self.cni_id.as_deref().unwrap_or(&self.container_id)
    }

    pub(crate) fn typed(&self) -> Option<AddResult> {
        serde_json::from_value(self.result.clone()?).ok()
    }

    /// The address assigned (first IPv4 of the result).
    pub fn address(&self) -> Option<Ipv4Net> {
        self.typed()?
            .ips
            .iter()
            .find_map(|i| i.address.parse::<Ipv4Net>().ok())
    }

    pub(crate) fn runtime_config(&self) -> Map<String, Value> {
        let mut rc = Map::new();
        let maps: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut m = json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol.as_str()});
                if let Some(ip) = p.host_ip {
                    m["hostIP"] = json!(ip.to_string());
                }
                m
            })
            .collect();
        rc.insert("portMappings".into(), Value::Array(maps));
        rc
    }

    /// True while the owner or the process releasing the attachment runs.
    pub fn live(&self) -> bool {
        self.owner.alive() || self.release.is_some_and(|r| r.alive())
    }

    pub(crate) fn args(&self) -> Vec<(String, String)> {
        self.requested_ip
            .map(|ip| vec![("IP".to_string(), ip.to_string())])
            .unwrap_or_default()
    }
}

/// Writes a record atomically (temp file + rename): an attachment's, or a pool slot's.
pub(crate) fn write_record(path: &Path, r: &AttachmentRecord) -> Result<(), Error> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(r).expect("serializes"))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("writing record {}", path.display()), e)
        })
}

/// Container ids: 1-128 of `[A-Za-z0-9_.-]`, starting with a letter or digit (they name files).
pub fn validate_container_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(format!(
            "invalid container id {:?}: 1-128 letters, digits, '_', '.' or '-'",
            id.chars().take(140).collect::<String>()
        )))
    }
}

/// host-local's leases in `dir`: (address, container id, interface). The files are named by
/// address and hold `ID\r\nIFNAME`; `lock` and `last_reserved_ip.*` are not leases.
pub(crate) fn leases(dir: &Path) -> Vec<(Ipv4Addr, String, String)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let Some(ip) = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut lines = text.lines().map(|l| l.trim_end_matches('\r').trim());
        let id = lines.next().unwrap_or_default().to_string();
        let ifname = lines.next().unwrap_or_default().to_string();
        if !id.is_empty() {
            out.push((ip, id, ifname));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("10.1.0.2"), "abc\r\neth0").unwrap();
        std::fs::write(d.path().join("10.1.0.3"), "def\r\n").unwrap();
        std::fs::write(d.path().join("lock"), "").unwrap();
        std::fs::write(d.path().join("last_reserved_ip.0"), "10.1.0.3").unwrap();
        std::fs::write(d.path().join("10.1.0.9"), "").unwrap();
        let l = leases(d.path());
        assert_eq!(
            l,
            vec![
                ("10.1.0.2".parse().unwrap(), "abc".into(), "eth0".into()),
                ("10.1.0.3".parse().unwrap(), "def".into(), String::new())
            ]
        );
    }

    #[test]
    fn ids() {
        validate_container_id("abc-1.2_3").unwrap();
        for bad in ["", "../x", "a/b", ".x", "a b", &"a".repeat(129)] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
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
