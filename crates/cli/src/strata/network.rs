//! `strata network create|ls|inspect|rm|prune` and `strata port`: strata-net's networks and a
//! container's published ports (engine's network.rs keeps them in network.json).

use std::path::Path;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;
use strata_engine::network::{self, NetworkSettings};
use strata_engine::records::Containers;

use super::global_args::Global;
use super::output::{print_table, FormatArgs};

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a bridge network (a CNI conflist in $STRATA_NET_CONFIG_DIR, default /etc/strata/net.d)
    Create(CreateArgs),
    /// List networks
    #[command(alias = "list")]
    Ls(FormatArgs),
    /// Show networks and their members (JSON)
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while a running container is attached)
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Undo what killed containers left (interfaces, leases, NAT rules, namespaces) and remove
    /// unused networks other than the default one
    Prune,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Subnet in CIDR form (default: the first free /24 of 10.90.0.0/16)
    #[arg(long)]
    pub subnet: Option<String>,
    /// Gateway (default: the subnet's first address)
    #[arg(long)]
    pub gateway: Option<String>,
    /// Namespaces to keep attached ahead of time, so a start on this network runs no CNI plugin
    /// (0 = none; each holds an address and a veth while it waits)
    #[arg(long, value_name = "N", default_value_t = strata_net::pool::DEFAULT_POOL)]
    pub pool: u32,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct PortArgs {
    /// Container name or id
    pub container: String,
    /// Only this port of the container (PORT[/tcp|udp])
    pub port: Option<String>,
}

pub fn network(g: &Global, c: NetworkCommand) -> anyhow::Result<()> {
    let nets = network::networks(&g.paths())?;
    match c {
        NetworkCommand::Create(a) => {
            let subnet = match &a.subnet {
                Some(s) => Some(s.parse().map_err(|_| {
                    anyhow::anyhow!("--subnet {s:?} is not an IPv4 subnet (e.g. 10.91.0.0/24)")
                })?),
                None => None,
            };
            let gateway = match &a.gateway {
                Some(s) => Some(
                    s.parse()
                        .map_err(|_| anyhow::anyhow!("--gateway {s:?} is not an IPv4 address"))?,
                ),
                None => None,
            };
            let n = nets.create(&strata_net::CreateRequest {
                name: a.name,
                subnet,
                gateway,
                pool: Some(a.pool),
            })?;
            println!("{}", n.name);
        }
        NetworkCommand::Ls(f) => {
            let (list, errors) = nets.list_with_errors()?;
            for e in errors {
                eprintln!("strata: warning: {e}");
            }
            if f.is_json() {
                let v: Vec<_> = list
                    .iter()
                    .map(|n| {
                        json!({"Name": n.name, "Bridge": n.bridge(), "Subnet": n.subnet().map(|s| s.to_string()),
                               "Gateway": n.gateway().map(|g| g.to_string()), "ConfigFile": n.path})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        if n.bridge().is_some() {
                            "bridge".into()
                        } else {
                            "cni".into()
                        },
                        n.subnet().map(|s| s.to_string()).unwrap_or_default(),
                        n.gateway().map(|s| s.to_string()).unwrap_or_default(),
                        n.bridge().unwrap_or_default().to_string(),
                    ]
                })
                .collect();
            print_table(&["NAME", "DRIVER", "SUBNET", "GATEWAY", "BRIDGE"], &rows);
        }
        NetworkCommand::Inspect { names } => {
            let mut out = Vec::new();
            for n in names {
                out.push(nets.inspect(&n)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCommand::Rm { names } => {
            let mut failed = None;
            for n in names {
                match nets.remove(&n) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("strata: error: {e}");
                        failed = Some(e);
                    }
                }
            }
            if let Some(e) = failed {
                bail!("not every network was removed (last error: {e})");
            }
        }
        NetworkCommand::Prune => {
            // Networks that stopped containers join again on `strata start` stay.
            let containers = Containers::new(&g.store);
            let keep: Vec<String> = containers
                .all()?
                .iter()
                .filter_map(|r| network::load(&containers.dir(&r.id)))
                .map(|s| s.network)
                .collect();
            let rep = nets.prune(&keep)?;
            for d in &rep.detached {
                println!("detached {d} (its owner is gone)");
            }
            for l in &rep.leases_released {
                println!("released lease {l}");
            }
            for r in &rep.rules_removed {
                println!("removed published-port rule {r}");
            }
            for n in &rep.netns_removed {
                println!("removed network namespace {}", n.display());
            }
            for s in &rep.pool_slots_removed {
                println!("removed unfinished pre-attached namespace {s}");
            }
            for n in &rep.networks_removed {
                println!("removed network {n}");
            }
            if !rep.errors.is_empty() {
                bail!(
                    "prune could not undo everything:\n  {}",
                    rep.errors.join("\n  ")
                );
            }
        }
    }
    Ok(())
}

/// `strata port CONTAINER [PORT]`: `80/tcp -> 0.0.0.0:8080` lines.
pub fn port(g: &Global, a: PortArgs) -> anyhow::Result<()> {
    let containers = Containers::new(&g.store);
    let r = containers.find(&a.container)?;
    let s = network::load(&containers.dir(&r.id)).unwrap_or_default();
    let want = match &a.port {
        Some(p) => Some(strata_net::PortSpec::from_exposed(p)?),
        None => None,
    };
    let mut any = false;
    for p in &s.published {
        if want
            .as_ref()
            .is_some_and(|w| w.container_port != p.container_port || w.protocol != p.protocol)
        {
            continue;
        }
        any = true;
        println!("{p}");
    }
    if !any && want.is_some() {
        bail!(
            "no public port {} of container {} is published",
            a.port.unwrap_or_default(),
            r.name
        );
    }
    Ok(())
}

/// The PORTS column of `strata ps`: `0.0.0.0:8080->80/tcp, ...` while running.
pub fn ports_column(dir: &Path) -> String {
    let s: NetworkSettings = match network::load(dir) {
        Some(s) => s,
        None => return String::new(),
    };
    s.published
        .iter()
        .map(|p| {
            let ip = p
                .host_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| "0.0.0.0".into());
            format!("{ip}:{}->{}/{}", p.host_port, p.container_port, p.protocol)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `strata inspect`'s NetworkSettings (Docker's field names where they exist).
pub fn settings_json(dir: &Path) -> serde_json::Value {
    match network::load(dir) {
        None => serde_json::Value::Null,
        Some(s) => {
            let mut ports = serde_json::Map::new();
            for p in &s.published {
                let key = format!("{}/{}", p.container_port, p.protocol);
                let ip = p
                    .host_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "0.0.0.0".into());
                let entry = ports.entry(key).or_insert_with(|| json!([]));
                if let Some(a) = entry.as_array_mut() {
                    a.push(json!({"HostIp": ip, "HostPort": p.host_port.to_string()}));
                }
            }
            let (ip, prefix) = match s.address.as_deref().and_then(|a| a.split_once('/')) {
                Some((ip, pre)) => (ip.to_string(), pre.parse::<u8>().ok()),
                None => (String::new(), None),
            };
            json!({
                "Ports": ports,
                "Networks": {
                    s.network.clone(): {
                        "IPAddress": ip,
                        "IPPrefixLen": prefix,
                        "Gateway": s.gateway,
                        "MacAddress": s.mac,
                        "Aliases": s.aliases,
                        "IPAMConfig": s.ip.map(|ip| json!({"IPv4Address": ip.to_string()})),
                    }
                }
            })
        }
    }
}
