//! A VM's NIC joined to a network namespace someone else prepared (strata's CNI attachment, or an
//! engine's: Podman, containerd), the way Kata Containers does it: a tap device in that
//! namespace and `tc` mirred redirects both ways between it and the namespace's interface
//! (normally the CNI plugins' veth `eth0`). Frames from the veth go straight to the tap (the
//! namespace's own IP stack never sees them) and frames the guest writes to the tap leave
//! through the veth, so the guest takes over the interface's address, MAC and routes.
//!
//! The tap is opened here, by the privileged host side, and its fd handed to the VM process,
//! which stays in its own empty network namespace with no capabilities: it can move frames on
//! that one device and nothing else. The tap is not persistent, so it disappears with the last
//! process holding it (the VM); the redirect on the interface then points nowhere and goes with
//! the interface when the plugins' DEL removes it.
//!
//! When the namespace is configured only after the VM booted (containerd's `ctr run --cni` runs
//! its CNI ADD on the task's namespace between `create` and `start`), the take-over is split:
//! [`prepare`] makes the tap at boot (the guest's NIC exists from boot, unconnected, with a
//! MAC of its own), [`take_over`] adds the redirects at `start` and returns what the guest's
//! agent then configures (address, routes, MTU, and the interface's MAC).

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Result, VmmError};

/// What the guest's NIC takes over from the namespace's interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNic {
    /// The interface in the namespace (`eth0`).
    pub interface: String,
    /// Its MAC address (`aa:bb:cc:dd:ee:ff`): the guest's NIC uses it, so peers' ARP caches and
    /// the bridge's forwarding table stay right.
    pub mac: String,
    pub address: Ipv4Addr,
    /// Prefix length of the address's subnet.
    pub prefix: u8,
    /// The default route's gateway through that interface, if any.
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

/// A VM's tap in its network namespace, as the platform hands it to the VM process.
#[derive(Debug)]
pub(crate) struct NetnsTap {
    /// The tap's file (frames without a packet-information header).
    pub fd: OwnedFd,
    /// What the guest's NIC took over; None while the take-over waits for
    /// [`crate::Vm::take_over_network`] (`VmConfig::network_at_start`).
    pub nic: Option<GuestNic>,
    /// The MAC and MTU the guest's NIC boots with: the interface's, or (take-over at start) a
    /// MAC of its own and 1500.
    pub boot_mac: String,
    pub boot_mtu: u32,
    /// The namespace and tap name of a take-over that waits: the platform stores them in
    /// `Vm::deferred_nic`.
    pub deferred: Option<(PathBuf, String)>,
}

/// The guest NIC of VM `id` (its `VmConfig`'s `id`, `network` and `network_at_start`), for
/// every platform: a tap in the namespace `network`, redirected to and from its interface now
/// ([`attach`]), or made now and redirected at start ([`prepare`], `at_start`). None without a
/// network, or when the namespace has no interface to take over now. The platform passes `fd`
/// into the VM process and boots the guest's NIC with `boot_mac`/`boot_mtu`; the VM then holds
/// the only fd, so the tap goes with it.
pub(crate) fn for_vm(
    id: &str,
    network: Option<&PathBuf>,
    at_start: bool,
) -> Result<Option<NetnsTap>> {
    let Some(ns) = network else {
        return Ok(None);
    };
    let tap = tap_name(id);
    if at_start {
        let fd = prepare(ns, &tap)?;
        return Ok(Some(NetnsTap {
            fd,
            nic: None,
            boot_mac: boot_mac(id),
            boot_mtu: 1500,
            deferred: Some((ns.clone(), tap)),
        }));
    }
    Ok(attach(ns, &tap)?.map(|(fd, nic)| NetnsTap {
        fd,
        boot_mac: nic.mac.clone(),
        boot_mtu: nic.mtu,
        nic: Some(nic),
        deferred: None,
    }))
}

fn net_err(step: impl Into<String>, netns: &Path, source: io::Error) -> VmmError {
    VmmError::Network {
        netns: netns.to_path_buf(),
        step: step.into(),
        source,
    }
}

/// The jailed VM process's fd number for the tap (UML's vector `fd` transport, QEMU's
/// `-netdev tap,fd=`).
pub(crate) const TAP_FD: i32 = 4;

/// The tap's name for VM `id` (≤ 15 bytes; unique per VM so that two VMs never fight over one).
pub fn tap_name(id: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(id.as_bytes());
    format!("stap{}", &hex::encode(h)[..10])
}

/// The MAC a guest NIC boots with before it took an interface over (see [`prepare`]): locally
/// administered, unicast, from VM `id` (the agent gives the NIC the interface's MAC at start).
fn boot_mac(id: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("mac:{id}").as_bytes());
    let mut b = [0u8; 6];
    b.copy_from_slice(&h[..6]);
    b[0] = (b[0] & 0xfc) | 0x02;
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Joins `netns` in a short-lived thread (only that thread changes namespace), reads the
/// interface the guest takes over, makes the tap `tap` and redirects both ways. None when no
/// interface other than `lo` has an IPv4 address (an engine's `--network none` namespace): the
/// guest then has only its loopback.
fn attach(netns: &Path, tap: &str) -> Result<Option<(OwnedFd, GuestNic)>> {
    check_tap_name(tap)?;
    let tap = tap.to_string();
    in_netns(netns, move |netns, sock| {
        let Some(nic) = read_nic(netns, sock)? else {
            return Ok(None);
        };
        let fd = open_tap(&tap).map_err(|e| net_err(format!("create tap {tap}"), netns, e))?;
        join_tap(netns, sock, &nic, &tap)?;
        Ok(Some((fd, nic)))
    })
}

/// The first half of a take-over that happens later (an engine configures the namespace after
/// the VM booted: containerd's `ctr run --cni` runs its CNI ADD between `create` and `start`):
/// makes the tap `tap` in `netns`, up, with no redirect yet. The guest boots with its NIC on
/// it; [`take_over`] joins it to the namespace's interface once there is one.
fn prepare(netns: &Path, tap: &str) -> Result<OwnedFd> {
    check_tap_name(tap)?;
    let tap = tap.to_string();
    in_netns(netns, move |netns, sock| {
        let fd = open_tap(&tap).map_err(|e| net_err(format!("create tap {tap}"), netns, e))?;
        sock.set_up(&tap)
            .map_err(|e| net_err(format!("bring tap {tap} up"), netns, e))?;
        Ok(fd)
    })
}

/// The second half of a deferred take-over (see [`prepare`]): reads the interface the
/// namespace has now and redirects it to and from the existing tap `tap`. None when the
/// namespace still has no interface with an IPv4 address (the engine gave the VM no network):
/// nothing is changed and the guest keeps only its loopback.
pub fn take_over(netns: &Path, tap: &str) -> Result<Option<GuestNic>> {
    check_tap_name(tap)?;
    let tap = tap.to_string();
    in_netns(netns, move |netns, sock| {
        let Some(nic) = read_nic(netns, sock)? else {
            // An interface the guest cannot take over (no IPv4 address: an IPv6-only network)
            // must not leave the VM without the network the engine gave it, silently.
            let others: Vec<String> = interface_names()
                .map_err(|e| net_err("list the interfaces", netns, e))?
                .into_iter()
                .filter(|n| n != "lo" && *n != tap)
                .collect();
            if !others.is_empty() {
                return Err(net_err(
                    "take an interface over",
                    netns,
                    io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "no IPv4 address on {}: the VM's NIC takes over IPv4 interfaces only",
                            others.join(", ")
                        ),
                    ),
                ));
            }
            return Ok(None);
        };
        join_tap(netns, sock, &nic, &tap)?;
        Ok(Some(nic))
    })
}

/// Every interface of the calling thread's network namespace (if_nameindex: netlink, opened in
/// this thread's namespace).
fn interface_names() -> io::Result<Vec<String>> {
    // SAFETY: if_nameindex returns a list terminated by a zero entry, or null on error; freed
    // below with if_freenameindex.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    let mut p = list;
    // SAFETY: walking the list up to its terminating entry; names are NUL-terminated.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            names.push(CStr::from_ptr((*p).if_name).to_string_lossy().into_owned());
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(names)
}

/// The interface [`take_over`] would take over in `netns` now (None: only `lo`, or nothing
/// with an IPv4 address).
pub fn interface(netns: &Path) -> Result<Option<String>> {
    in_netns(netns, |netns, sock| {
        Ok(pick_interface(
            &sock
                .ipv4_interfaces()
                .map_err(|e| net_err("list the interfaces", netns, e))?,
        ))
    })
}

fn check_tap_name(tap: &str) -> Result<()> {
    if tap.is_empty() || tap.len() >= libc::IFNAMSIZ {
        return Err(VmmError::InvalidConfig(format!(
            "tap name {tap:?} must be 1-15 bytes"
        )));
    }
    Ok(())
}

/// Runs `f` in a short-lived thread that joined `netns` (only that thread changes namespace),
/// with an interface-ioctl socket made there.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce(&Path, &Socket) -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(netns)
        .map_err(|e| net_err("open the network namespace", netns, e))?;
    let path = netns.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: setns on an fd we hold; affects only this thread, which ends after `f`.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(net_err(
                "join the network namespace (is it a network namespace file, e.g. /proc/PID/ns/net or a bind mount of one?)",
                &path,
                io::Error::last_os_error(),
            ));
        }
        let sock = Socket::new().map_err(|e| net_err("open a socket", &path, e))?;
        f(&path, &sock)
    })
    .join()
    .unwrap_or_else(|_| {
        Err(net_err(
            "set up the tap",
            netns,
            io::Error::other("thread panicked"),
        ))
    })
}

/// What the namespace's interface has (from the calling thread's namespace), None without one.
fn read_nic(netns: &Path, sock: &Socket) -> Result<Option<GuestNic>> {
    let Some(interface) = pick_interface(
        &sock
            .ipv4_interfaces()
            .map_err(|e| net_err("list the interfaces", netns, e))?,
    ) else {
        return Ok(None);
    };
    let nic_err = |step: &str, e| net_err(format!("{step} of {interface}"), netns, e);
    let address = sock
        .addr(&interface, libc::SIOCGIFADDR)
        .map_err(|e| nic_err("read the address", e))?;
    let mask = sock
        .addr(&interface, libc::SIOCGIFNETMASK)
        .map_err(|e| nic_err("read the netmask", e))?;
    let prefix = prefix_len(mask).ok_or_else(|| {
        nic_err(
            "read the netmask",
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{mask} is not a contiguous netmask"),
            ),
        )
    })?;
    let mac = sock
        .mac(&interface)
        .map_err(|e| nic_err("read the MAC address", e))?;
    let mtu = sock
        .mtu(&interface)
        .map_err(|e| nic_err("read the MTU", e))?;
    // This thread's namespace's routes (/proc/self/net would be the main thread's).
    let routes = std::fs::read_to_string("/proc/thread-self/net/route")
        .map_err(|e| net_err("read /proc/thread-self/net/route", netns, e))?;
    let gateway = default_gateway(&routes, &interface);
    Ok(Some(GuestNic {
        interface,
        mac,
        address,
        prefix,
        gateway,
        mtu,
    }))
}

/// Gives the tap the interface's MTU, brings it up and redirects both ways.
fn join_tap(netns: &Path, sock: &Socket, nic: &GuestNic, tap: &str) -> Result<()> {
    sock.set_mtu(tap, nic.mtu)
        .and_then(|_| sock.set_up(tap))
        .map_err(|e| net_err(format!("bring tap {tap} up"), netns, e))?;
    let interface = &nic.interface;
    redirect(interface, tap).map_err(|e| {
        net_err(
            format!("redirect {interface} <-> {tap} with tc mirred"),
            netns,
            e,
        )
    })
}

/// `eth0` when it has an address (the CNI convention), else the first other non-loopback one.
fn pick_interface(ifaces: &[String]) -> Option<String> {
    if ifaces.iter().any(|i| i == "eth0") {
        return Some("eth0".into());
    }
    ifaces.iter().find(|i| *i != "lo").cloned()
}

/// The prefix length of a contiguous netmask.
fn prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// The gateway of the default route through `iface` in /proc/net/route's text (addresses in
/// hex, in the kernel's byte order, which is little-endian here).
fn default_gateway(routes: &str, iface: &str) -> Option<Ipv4Addr> {
    const RTF_GATEWAY: u32 = 0x2;
    for line in routes.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] != iface {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(gw), Some(flags), Some(mask)) =
            (hex(f[1]), hex(f[2]), hex(f[3]), hex(f[7]))
        else {
            continue;
        };
        if dest == 0 && mask == 0 && flags & RTF_GATEWAY != 0 && gw != 0 {
            return Some(Ipv4Addr::from(gw.to_le_bytes()));
        }
    }
    None
}

fn open_tap(name: &str) -> io::Result<OwnedFd> {
    let f = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads a valid ifreq naming the device.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(f))
}

/// The tc commands, one process (`tc -batch`): ingress of each device redirected to the
/// other's egress. `replace` drops what an earlier VM in this namespace left on the interface.
fn redirect(iface: &str, tap: &str) -> io::Result<()> {
    let script = format!(
        "qdisc replace dev {iface} ingress\n\
         filter add dev {iface} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev {tap}\n\
         qdisc replace dev {tap} ingress\n\
         filter add dev {tap} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev {iface}\n"
    );
    // Spawned from this thread: the child starts in its network namespace.
    let mut child = Command::new("tc")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("run tc: {e} (install iproute2: scripts/deps.sh)"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "tc exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    req
}

/// An AF_INET datagram socket for interface ioctls, in the namespace it was made in.
struct Socket(OwnedFd);

impl Socket {
    fn new() -> io::Result<Socket> {
        // SAFETY: a plain socket; owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl(&self, req: libc::c_ulong, r: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: interface ioctls on a valid socket with a valid ifreq.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), req, r as *mut libc::ifreq) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Names of the interfaces that have an IPv4 address (SIOCGIFCONF).
    fn ipv4_interfaces(&self) -> io::Result<Vec<String>> {
        // SAFETY: ifreq is plain old data.
        let mut reqs: Vec<libc::ifreq> = vec![unsafe { std::mem::zeroed() }; 64];
        let mut conf = libc::ifconf {
            ifc_len: (reqs.len() * std::mem::size_of::<libc::ifreq>()) as libc::c_int,
            ifc_ifcu: libc::__c_anonymous_ifc_ifcu {
                ifcu_req: reqs.as_mut_ptr(),
            },
        };
        // SAFETY: ifconf points at our buffer of the length it states.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SIOCGIFCONF, &mut conf) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let n = conf.ifc_len as usize / std::mem::size_of::<libc::ifreq>();
        Ok(reqs[..n.min(reqs.len())]
            .iter()
            .map(|r| {
                // SAFETY: the kernel NUL-terminates names within IFNAMSIZ.
                unsafe { CStr::from_ptr(r.ifr_name.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect())
    }

    fn addr(&self, iface: &str, req: libc::c_ulong) -> io::Result<Ipv4Addr> {
        let mut r = ifreq(iface);
        self.ioctl(req, &mut r)?;
        // SAFETY: these requests fill ifru_addr with a sockaddr_in.
        let sin = unsafe {
            *(&r.ifr_ifru.ifru_addr as *const libc::sockaddr as *const libc::sockaddr_in)
        };
        Ok(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
    }

    fn mac(&self, iface: &str) -> io::Result<String> {
        let mut r = ifreq(iface);
        self.ioctl(libc::SIOCGIFHWADDR, &mut r)?;
        // SAFETY: SIOCGIFHWADDR fills ifru_hwaddr.
        let d = unsafe { r.ifr_ifru.ifru_hwaddr.sa_data };
        Ok(d[..6]
            .iter()
            .map(|b| format!("{:02x}", *b as u8))
            .collect::<Vec<_>>()
            .join(":"))
    }

    fn mtu(&self, iface: &str) -> io::Result<u32> {
        let mut r = ifreq(iface);
        self.ioctl(libc::SIOCGIFMTU, &mut r)?;
        // SAFETY: SIOCGIFMTU fills ifru_mtu.
        Ok(unsafe { r.ifr_ifru.ifru_mtu } as u32)
    }

    fn set_mtu(&self, iface: &str, mtu: u32) -> io::Result<()> {
        let mut r = ifreq(iface);
        r.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        self.ioctl(libc::SIOCSIFMTU, &mut r)
    }

    fn set_up(&self, iface: &str) -> io::Result<()> {
        let mut r = ifreq(iface);
        self.ioctl(libc::SIOCGIFFLAGS, &mut r)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        self.ioctl(libc::SIOCSIFFLAGS, &mut r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(prefix_len("255.255.0.0".parse().unwrap()), Some(16));
        assert_eq!(prefix_len("255.255.255.255".parse().unwrap()), Some(32));
        assert_eq!(prefix_len("0.0.0.0".parse().unwrap()), Some(0));
        assert_eq!(prefix_len("255.0.255.0".parse().unwrap()), None);
    }

    #[test]
    fn gateway_from_proc_net_route() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t0100570A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                 eth0\t0000570A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            default_gateway(t, "eth0"),
            Some("10.87.0.1".parse().unwrap())
        );
        assert_eq!(default_gateway(t, "eth1"), None);
        // Hostile or odd lines are skipped.
        assert_eq!(
            default_gateway("x\neth0 zz 0 0 0 0 0 0\neth0\n", "eth0"),
            None
        );
        assert_eq!(default_gateway("", "eth0"), None);
    }

    #[test]
    fn interface_choice_and_tap_names() {
        assert_eq!(
            pick_interface(&["lo".into(), "net1".into(), "eth0".into()]),
            Some("eth0".into())
        );
        assert_eq!(
            pick_interface(&["lo".into(), "net1".into()]),
            Some("net1".into())
        );
        assert_eq!(pick_interface(&["lo".into()]), None);
        let m = boot_mac("a");
        assert_eq!(m.len(), 17, "{m}");
        let first = u8::from_str_radix(&m[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02, "locally administered unicast: {m}");
        assert_ne!(boot_mac("a"), boot_mac("b"));
        let t = tap_name("x".repeat(64).as_str());
        assert!(t.len() < libc::IFNAMSIZ, "{t}");
        assert_ne!(tap_name("a"), tap_name("b"));
    }
}
