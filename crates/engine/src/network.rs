//! A container's bridge network (`--network bridge|NAME`, `-p`, `-P`, `--ip`,
//! `--network-alias`) through strata-net: what was asked is stored at [`prepare`] time in
//! `<container dir>/network.json`; the process that runs the workload (foreground `run` or the
//! monitor) makes the namespace and attaches it right before the start ([`up`]) and takes both
//! down when the workload ended or the container is removed ([`down`]). That process is the
//! attachment's owner: if it is killed, `strata network prune` undoes what it left.
//!
//! Networks live in `$STRATA_NET_CONFIG_DIR` (default /etc/strata/net.d); attachment state under
//! `<root>/net`; the default network's subnet is `$STRATA_BRIDGE_SUBNET` (default 10.87.0.0/16)
//! and its bridge device `$STRATA_BRIDGE_DEVICE` (default strata0), both used when it is made.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use strata_net::{AttachRequest, NetConfig, Networks, Owner, PortSpec, PublishedPort};

use crate::paths::Paths;

const FILE: &str = "network.json";

/// How a container is networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Its own empty namespace.
    None,
    /// The host's namespace.
    Host,
    /// A CNI bridge network (`bridge` = the default one).
    Bridge(String),
}

/// `--network` as given.
pub fn mode(network: &str) -> Mode {
    match network {
        "none" | "" => Mode::None,
        "host" => Mode::Host,
        other => Mode::Bridge(other.to_string()),
    }
}

/// A container's network: what was asked, and (while it runs) what it got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// Network name.
    pub network: String,
    /// `--ip`.
    pub ip: Option<Ipv4Addr>,
    /// `-p` and `-P` mappings as asked.
    pub ports: Vec<PortSpec>,
    /// `--network-alias`.
    pub aliases: Vec<String>,
    /// Address/prefix while running.
    pub address: Option<String>,
    /// Gateway while running.
    pub gateway: Option<String>,
    /// MAC address while running.
    pub mac: Option<String>,
    /// Published ports while running (host ports picked).
    pub published: Vec<PublishedPort>,
}

/// The host's networks as this engine sees them.
pub fn networks(paths: &Paths) -> anyhow::Result<Networks> {
    let mut cfg = NetConfig {
        state_dir: paths.root.join("net"),
        ..NetConfig::default()
    };
    if let Some(d) = std::env::var_os("STRATA_NET_CONFIG_DIR") {
        cfg.config_dir = PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("STRATA_BRIDGE_DEVICE") {
        if d.is_empty()
            || d.len() > 15
            || !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            anyhow::bail!("STRATA_BRIDGE_DEVICE={d:?} is not a network device name (1-15 letters, digits, '-' or '_')");
        }
        cfg.default_bridge = d;
    }
    if let Ok(s) = std::env::var("STRATA_BRIDGE_SUBNET") {
        cfg.default_subnet = s
            .parse()
            .with_context(|| format!("STRATA_BRIDGE_SUBNET={s:?} is not an IPv4 subnet"))?;
    }
    Ok(Networks::new(cfg))
}

/// Where the namespace of container `id` is mounted while it runs.
pub fn netns_path(paths: &Paths, id: &str) -> PathBuf {
    paths.root.join("net").join("netns").join(id)
}

/// Checks a bridge request before the container exists (unknown network, bad alias, an --ip
/// outside the subnet) and stores it in the container directory.
pub fn prepare(paths: &Paths, dir: &Path, settings: &NetworkSettings) -> anyhow::Result<()> {
    let nets = networks(paths)?;
    let net = nets.get(&settings.network)?;
    for a in &settings.aliases {
        strata_net::names::validate_host_name(a)?;
    }
    if let (Some(ip), Some(subnet)) = (settings.ip, net.subnet()) {
        if !subnet.contains(&ip) {
            anyhow::bail!(
                "--ip {ip} is not in network {:?}'s subnet {subnet}",
                net.name
            );
        }
    }
    save(dir, settings)
}

fn save(dir: &Path, s: &NetworkSettings) -> anyhow::Result<()> {
    let p = dir.join(FILE);
    let tmp = dir.join(".network.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)
        .and_then(|_| std::fs::rename(&tmp, &p))
        .with_context(|| format!("write {}", p.display()))
}

/// The container's network settings, if it is on a bridge network.
pub fn load(dir: &Path) -> Option<NetworkSettings> {
    let b = std::fs::read(dir.join(FILE)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Makes the namespace, attaches it (this process is the owner) and writes the container's
/// /etc/resolv.conf; its /etc/hosts is kept current by strata-net. Nothing to do for a
/// container without network.json. On failure nothing is left.
pub fn up(paths: &Paths, id: &str, name: &str, dir: &Path) -> anyhow::Result<()> {
    let Some(mut s) = load(dir) else {
        return Ok(());
    };
    let nets = networks(paths)?;
    let owner = Owner::current();
    // What an earlier run of this container left (its process was killed) goes first.
    nets.detach_all(id).with_context(|| {
        format!("undo the network attachment a killed earlier run of {id} left (try `strata network prune`)")
    })?;
    nets.remove_netns(id)?;
    let ns = nets.netns_dir_of(id);
    let hostname = std::fs::read_to_string(dir.join("etc/hostname"))
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    let mut names = vec![name.to_string()];
    names.extend(s.aliases.iter().cloned());
    let req = AttachRequest {
        ip: s.ip,
        ports: s.ports.clone(),
        hostname,
        names,
        hosts_file: Some(dir.join("etc/hosts")),
        ..AttachRequest::new(&s.network, id, &ns, owner)
    };
    // From the network's pool of pre-attached namespaces when one is ready (no plugin runs on
    // this path), else a new namespace and ADD; either way the next ones are made off this path.
    let a = match nets.attach_new_netns(&req) {
        Ok(a) => a,
        Err(e) => {
            let _ = nets.remove_netns(id);
            return Err(anyhow::Error::new(e).context(format!("network {:?}", s.network)));
        }
    };
    if nets.pool_wants_fill(&s.network) {
        spawn_filler(&nets, &s.network);
    }
    let resolv = dir.join("etc/resolv.conf");
    let written = std::fs::write(&resolv, strata_net::names::render_resolv_conf(&a.dns));
    s.address = Some(a.address.to_string());
    s.gateway = a.gateway.map(|g| g.to_string());
    s.mac = Some(a.mac.clone());
    s.published = a.ports.clone();
    let saved = written
        .with_context(|| format!("write {}", resolv.display()))
        .and_then(|_| save(dir, &s));
    if let Err(e) = saved {
        down(paths, id, dir);
        return Err(e);
    }
    Ok(())
}

/// Detaches the container from its networks and removes its namespace (idempotent; nothing to
/// do without network.json).
pub fn down(paths: &Paths, id: &str, dir: &Path) {
    let Some(s) = load(dir) else {
        return;
    };
    if let Ok(nets) = networks(paths) {
        if let Err(e) = detach(&nets, id) {
            tracing::warn!("{e}");
        }
    }
    forget_runtime(dir, s);
}

/// [`down`] off the exit path of the process that ran the workload: the CNI DEL (a few plugin
/// processes forking iptables, most of what a network costs a `run --rm`) runs in a detached
/// process, so `strata run --rm` returns, and the monitor exits, as soon as the workload's exit
/// is recorded. That process takes the attachments over first (strata-net's `begin_release`):
/// a new run publishing the same host port, `strata start` or `strata rm` of the same container
/// wait for it; if it is killed, its attachments are leftovers of dead processes that
/// `strata network prune` (or the next attach that wants their ports) removes.
pub fn release(paths: &Paths, id: &str, dir: &Path) {
    let Some(s) = load(dir) else {
        return;
    };
    let Ok(nets) = networks(paths) else {
        return;
    };
    let s_network = s.network.clone();
    forget_runtime(dir, s);
    // The releaser closes its end once it has taken the attachments over: we return only then,
    // so whoever comes next (`strata rm`, `start`, a run wanting the same port) finds them
    // claimed and waits instead of DELeting them a second time, concurrently.
    let Ok((claimed_r, claimed_w)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        if let Err(e) = detach(&nets, id) {
            tracing::warn!("{e}");
        }
        return;
    };
    // SAFETY: strata is single-threaded here (the workload has exited, the relay is done); the
    // child only forks again and _exits, the grandchild runs the release and _exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            tracing::debug!("fork the network releaser ({e}): detaching in the foreground");
            if let Err(e) = detach(&nets, id) {
                tracing::warn!("{e}");
            }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(claimed_w);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut buf = [0u8; 1];
            let mut f = std::fs::File::from(claimed_r);
            let _ = std::io::Read::read(&mut f, &mut buf);
        }
        Ok(nix::unistd::ForkResult::Child) => {
            // A grandchild, so the releaser is nobody's child to reap (the monitor's parent may
            // be gone already, a long-lived caller would collect a zombie).
            // SAFETY: as above.
            if let Ok(nix::unistd::ForkResult::Parent { .. }) = unsafe { nix::unistd::fork() } {
                // SAFETY: _exit in a forked child; nothing of the parent must run at exit.
                unsafe { libc::_exit(0) };
            }
            drop(claimed_r);
            releaser(&nets, id, claimed_w);
            // The released namespace's place in the pool (or what a start could not refill).
            if nets.pool_wants_fill(&s_network) {
                let _ = nets.fill_pool(&s_network, &|p| strata_container::kill_point::hit(p));
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
    }
}

/// The detached releaser: own session, no stdio of the caller (whoever reads `strata run`'s
/// output must see EOF when the run returns), no inherited descriptors; takes the attachments
/// over, then DELs them.
fn releaser(nets: &Networks, id: &str, claimed: std::os::fd::OwnedFd) {
    detach_stdio();
    let claimed_ok = nets.begin_release(id, Owner::current()).is_ok();
    drop(claimed);
    close_inherited();
    if !claimed_ok {
        return; // the records stay with their dead owner: prune's work
    }
    strata_container::kill_point::hit("net:releasing");
    // No logging here: the process we were forked from may have had other threads (the VM
    // keeper), one of which could have held the log writer's lock at the fork. A failed DEL
    // leaves the record with dead processes: `strata network prune` retries and reports it.
    let _ = detach(nets, id);
}

/// Makes the next pre-attached namespaces of `network` in a detached process (own session, no
/// stdio or descriptors of ours), so the start that took one does not wait for the plugins. Only
/// from a single-threaded process (a fork copies one thread; another could hold a lock the
/// filler needs); otherwise the next release refills.
fn spawn_filler(nets: &Networks, network: &str) {
    let single = std::fs::read_to_string("/proc/self/status").is_ok_and(|st| {
        st.lines()
            .any(|l| l.split_whitespace().eq(["Threads:", "1"]))
    });
    if !single {
        return;
    }
    // SAFETY: single-threaded (checked above); the child forks again and _exits, the grandchild
    // fills and _exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => tracing::debug!("fork the network pool filler: {e}"),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: as above.
            if let Ok(nix::unistd::ForkResult::Parent { .. }) = unsafe { nix::unistd::fork() } {
                // SAFETY: _exit in a forked child; nothing of the parent must run at exit.
                unsafe { libc::_exit(0) };
            }
            detach_from_caller();
            let _ = nets.fill_pool(network, &|p| strata_container::kill_point::hit(p));
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
    }
}

/// A detached helper's start: own session, /dev/null as stdio (whoever reads the caller's output
/// must see EOF when the caller is done), no other inherited descriptors.
fn detach_from_caller() {
    detach_stdio();
    close_inherited();
}

/// Own session, /dev/null as stdio.
fn detach_stdio() {
    let _ = nix::unistd::setsid();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..=2 {
            // SAFETY: dup2 of a live fd onto our stdio numbers.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
        }
    }
}

/// Closes every descriptor above stdio this process inherited.
fn close_inherited() {
    // SAFETY: closes descriptors this process inherited and no longer uses.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// DEL of every attachment of `id`, then its namespace.
fn detach(nets: &Networks, id: &str) -> Result<(), String> {
    // The namespace goes only after DEL succeeded: the bridge plugin finds what to remove
    // through the interface in it (on conflists that still use its ipMasq), so `strata network
    // prune` can retry a failed DEL only while the namespace still exists.
    nets.detach_all(id).map_err(|e| {
        format!("detach {id} from its networks (`strata network prune` retries): {e}")
    })?;
    nets.remove_netns(id)
        .map_err(|e| format!("remove the network namespace of {id}: {e}"))
}

/// Clears what the container got from its networks while it ran (address, published ports).
fn forget_runtime(dir: &Path, mut s: NetworkSettings) {
    if s.address.is_some() || !s.published.is_empty() {
        s.address = None;
        s.gateway = None;
        s.mac = None;
        s.published.clear();
        let _ = save(dir, &s);
    }
}
