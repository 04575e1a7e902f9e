//! The guest's network (`--network bridge|NAME`, or an engine's network namespace): the host
//! joined the guest's NIC to the interface its network plugins set up and passes what that
//! interface had as config.json annotations (the host-side keeper adds them; docs/networking.md):
//!
//! - `dev.strata.net.address`: `A.B.C.D/PREFIX` (required for the rest to apply),
//! - `dev.strata.net.gateway`: `A.B.C.D` (the default route),
//! - `dev.strata.net.mtu`: `68..=65535`,
//! - `dev.strata.net.mac`: `aa:bb:cc:dd:ee:ff`, a unicast MAC the NIC takes (the interface's, when
//!   the NIC booted with a MAC of its own and takes the interface over only at start),
//! - `dev.strata.net.hosts`, `dev.strata.net.resolv`: the contents of /etc/hosts and
//!   /etc/resolv.conf as a container on that network gets them.
//!
//! The same map comes with `Start` (strata_proto::StartRequest::network) when the host took the
//! interface over only then (containerd's `ctr run --cni` configures the namespace between
//! create and start).
//!
//! [`GuestNet::from_annotations`] is the parser (the document is user-authored under strata-oci:
//! every value is checked before anything is configured); [`apply`] does the configuration with a
//! few interface ioctls (no netlink, no tools in the guest).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Annotation keys.
pub const ADDRESS: &str = "dev.strata.net.address";
pub const GATEWAY: &str = "dev.strata.net.gateway";
pub const MTU: &str = "dev.strata.net.mtu";
pub const MAC: &str = "dev.strata.net.mac";
pub const HOSTS: &str = "dev.strata.net.hosts";
pub const RESOLV: &str = "dev.strata.net.resolv";

/// Largest /etc/hosts or /etc/resolv.conf accepted.
const MAX_FILE: usize = 64 << 10;

/// The name the guest's NIC gets (what workloads expect; UML's driver calls it `vec0`).
pub const NIC: &str = "eth0";

/// The guest's network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub hosts: Option<String>,
    pub resolv: Option<String>,
}

/// Why the network annotations were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    #[error("annotation {key}: {why}")]
    Invalid { key: &'static str, why: String },
    #[error("annotation {0} is set but {ADDRESS} is not")]
    NoAddress(&'static str),
}

fn invalid(key: &'static str, why: impl Into<String>) -> NetError {
    NetError::Invalid {
        key,
        why: why.into(),
    }
}

fn text<'a>(
    a: &'a serde_json::Map<String, serde_json::Value>,
    key: &'static str,
) -> Result<Option<&'a str>, NetError> {
    match a.get(key) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(key, "not a string")),
    }
}

fn file(
    a: &serde_json::Map<String, serde_json::Value>,
    key: &'static str,
) -> Result<Option<String>, NetError> {
    let Some(s) = text(a, key)? else {
        return Ok(None);
    };
    if s.len() > MAX_FILE {
        return Err(invalid(key, format!("longer than {MAX_FILE} bytes")));
    }
    if s.contains('\0') {
        return Err(invalid(key, "contains a NUL byte"));
    }
    Ok(Some(s.to_string()))
}

impl GuestNet {
    /// The configuration in config.json's `annotations` (None: no network annotations, the
    /// guest keeps only its loopback).
    pub fn from_annotations(annotations: &serde_json::Value) -> Result<Option<GuestNet>, NetError> {
        let Some(a) = annotations.as_object() else {
            return Ok(None);
        };
        let Some(address) = text(a, ADDRESS)? else {
            for key in [GATEWAY, MTU, MAC, HOSTS, RESOLV] {
                if a.contains_key(key) {
                    return Err(NetError::NoAddress(key));
                }
            }
            return Ok(None);
        };
        let (ip, prefix) = address
            .split_once('/')
            .ok_or_else(|| invalid(ADDRESS, format!("{address:?} is not ADDRESS/PREFIX")))?;
        let address: Ipv4Addr = ip
            .parse()
            .map_err(|_| invalid(ADDRESS, format!("{ip:?} is not an IPv4 address")))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p) && !prefix.starts_with('+'))
            .ok_or_else(|| invalid(ADDRESS, format!("prefix {prefix:?} is not 1-32")))?;
        if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
            return Err(invalid(
                ADDRESS,
                format!("{address} is not a unicast address"),
            ));
        }
        let gateway = match text(a, GATEWAY)? {
            None => None,
            Some(g) => {
                let g: Ipv4Addr = g
                    .parse()
                    .map_err(|_| invalid(GATEWAY, format!("{g:?} is not an IPv4 address")))?;
                let mask = u32::MAX << (32 - u32::from(prefix));
                if u32::from(g) & mask != u32::from(address) & mask || g == address {
                    return Err(invalid(
                        GATEWAY,
                        format!("{g} is not another address in {address}/{prefix}"),
                    ));
                }
                Some(g)
            }
        };
        let mtu = match text(a, MTU)? {
            None => None,
            Some(m) => Some(
                m.parse::<u32>()
                    .ok()
                    .filter(|m| (68..=65535).contains(m))
                    .ok_or_else(|| invalid(MTU, format!("{m:?} is not 68-65535")))?,
            ),
        };
        let mac = match text(a, MAC)? {
            None => None,
            Some(m) => Some(parse_mac(m).ok_or_else(|| {
                invalid(
                    MAC,
                    format!("{m:?} is not a unicast MAC address (aa:bb:cc:dd:ee:ff)"),
                )
            })?),
        };
        Ok(Some(GuestNet {
            address,
            prefix,
            gateway,
            mtu,
            mac,
            hosts: file(a, HOSTS)?,
            resolv: file(a, RESOLV)?,
        }))
    }
}

/// Fuzzing entry point: `data` as the JSON of an annotation map (or, failing that, as the value
/// of every key): the parser never panics, and whatever it accepts satisfies what [`apply`]
/// relies on.
pub fn fuzz_net_config(data: &[u8]) {
    let value = serde_json::from_slice::<serde_json::Value>(data).unwrap_or_else(|_| {
        let s = String::from_utf8_lossy(data).into_owned();
        serde_json::json!({
            ADDRESS: s, GATEWAY: s, MTU: s, MAC: s, HOSTS: s, RESOLV: s,
        })
    });
    if let Ok(Some(n)) = GuestNet::from_annotations(&value) {
        assert!((1..=32).contains(&n.prefix));
        assert!(n.mtu.map_or(true, |m| (68..=65535).contains(&m)));
        assert!(n.mac.map_or(true, |m| m[0] & 1 == 0 && m != [0; 6]));
        assert!(n
            .hosts
            .as_ref()
            .map_or(true, |h| h.len() <= MAX_FILE && !h.contains('\0')));
        assert!(n
            .resolv
            .as_ref()
            .map_or(true, |h| h.len() <= MAX_FILE && !h.contains('\0')));
    }
}

/// Six two-digit hex octets separated by `:`, unicast and not all zero.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() || out[0] & 1 != 0 || out == [0; 6] {
        return None;
    }
    Some(out)
}

/// Brings the loopback up (as every container's `--network none` has it).
pub fn loopback_up() -> io::Result<()> {
    let s = Socket::new()?;
    s.set_up("lo")
}

/// Configures the NIC (renamed to `eth0`), the default route, and the rootfs's /etc/hosts and
/// /etc/resolv.conf (bind mounts of files under /run/strata/net, as the host's container path
/// bind-mounts its own: the image's files stay as they are).
pub fn apply(net: &GuestNet, root: &Path) -> Result<(), String> {
    let nic = find_nic(Path::new("/sys/class/net"))
        .ok_or("the host joined a network but the guest has no network interface (does the guest kernel have the NIC's driver?)")?;
    let s = Socket::new().map_err(|e| format!("socket: {e}"))?;
    if nic != NIC {
        s.rename(&nic, NIC)
            .map_err(|e| format!("rename {nic} to {NIC}: {e}"))?;
    }
    if let Some(mac) = net.mac {
        s.set_mac(NIC, mac)
            .map_err(|e| format!("set {NIC}'s MAC address: {e}"))?;
    }
    if let Some(mtu) = net.mtu {
        s.set_mtu(NIC, mtu)
            .map_err(|e| format!("set {NIC}'s MTU to {mtu}: {e}"))?;
    }
    s.set_addr(NIC, libc::SIOCSIFADDR, net.address)
        .map_err(|e| format!("set {NIC}'s address {}: {e}", net.address))?;
    let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(net.prefix)));
    s.set_addr(NIC, libc::SIOCSIFNETMASK, mask)
        .map_err(|e| format!("set {NIC}'s netmask {mask}: {e}"))?;
    s.set_up(NIC).map_err(|e| format!("bring {NIC} up: {e}"))?;
    if let Some(gw) = net.gateway {
        s.default_route(gw)
            .map_err(|e| format!("add the default route via {gw}: {e}"))?;
    }
    for (name, content) in [("hosts", &net.hosts), ("resolv.conf", &net.resolv)] {
        if let Some(c) = content {
            etc_file(root, name, c).map_err(|e| format!("/etc/{name}: {e}"))?;
        }
    }
    Ok(())
}

/// `eth0` if there is one, else the first interface other than `lo` (by name).
fn find_nic(sys_class_net: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    if names.iter().any(|n| n == NIC) {
        return Some(NIC.into());
    }
    names.into_iter().next()
}

/// Where the guest's copies of /etc/hosts and /etc/resolv.conf live (bind-mounted into the
/// rootfs).
pub const FILES_DIR: &str = "/run/strata/net";

/// Rewrites the guest's /etc/hosts and /etc/resolv.conf in place (same inode: the bind mounts
/// in the rootfs see the new contents) when the host's copies changed. Only files [`apply`] made
/// are touched: a guest without a network ignores the message. Same limits as the annotations.
pub fn update_files(dir: &Path, files: &strata_proto::NetFiles) -> Result<(), String> {
    for (name, content) in [("hosts", &files.hosts), ("resolv.conf", &files.resolv)] {
        let Some(c) = content else { continue };
        if c.len() > MAX_FILE || c.contains('\0') {
            return Err(format!(
                "new /etc/{name} refused: longer than {MAX_FILE} bytes or contains a NUL byte"
            ));
        }
        let p = dir.join(name);
        if !p.is_file() {
            continue;
        }
        std::fs::write(&p, c).map_err(|e| format!("rewrite {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Writes `content` to /run/strata/net/NAME and bind-mounts it on the rootfs's /etc/NAME
/// (created if the image has none).
fn etc_file(root: &Path, name: &str, content: &str) -> Result<(), String> {
    let dir = Path::new(FILES_DIR);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let src = dir.join(name);
    std::fs::write(&src, content).map_err(|e| format!("write {}: {e}", src.display()))?;
    let target =
        crate::mounts::resolve_in_root(root, &format!("/etc/{name}")).map_err(|e| e.to_string())?;
    if std::fs::symlink_metadata(&target).is_err() {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&target, b"").map_err(|e| format!("create {}: {e}", target.display()))?;
    }
    crate::mounts::mount(
        &src.to_string_lossy(),
        &target,
        "",
        nix::mount::MsFlags::MS_BIND,
        "",
    )
    .map_err(|e| e.to_string())
}

/// An AF_INET datagram socket for interface and route ioctls.
struct Socket(OwnedFd);

/// `struct rtentry` of linux/route.h (not in the libc crate for glibc targets).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; sockaddr is plain old data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
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

    fn ioctl<T>(&self, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: the caller passes the structure `req` expects.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), req, arg as *mut T) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_up(&self, iface: &str) -> io::Result<()> {
        let mut r = ifreq(iface);
        self.ioctl(libc::SIOCGIFFLAGS, &mut r)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        self.ioctl(libc::SIOCSIFFLAGS, &mut r)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut r = ifreq(from);
        for (d, s) in unsafe { r.ifr_ifru.ifru_newname.iter_mut() }.zip(to.bytes()) {
            *d = s as libc::c_char;
        }
        self.ioctl(libc::SIOCSIFNAME, &mut r)
    }

    fn set_mtu(&self, iface: &str, mtu: u32) -> io::Result<()> {
        let mut r = ifreq(iface);
        r.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        self.ioctl(libc::SIOCSIFMTU, &mut r)
    }

    fn set_mac(&self, iface: &str, mac: [u8; 6]) -> io::Result<()> {
        let mut r = ifreq(iface);
        // SAFETY: ifru_hwaddr is a plain sockaddr; ARPHRD_ETHER with the 6 address bytes.
        unsafe {
            r.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (d, b) in r.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
                *d = b as libc::c_char;
            }
        }
        self.ioctl(libc::SIOCSIFHWADDR, &mut r)
    }

    fn set_addr(&self, iface: &str, req: libc::c_ulong, a: Ipv4Addr) -> io::Result<()> {
        let mut r = ifreq(iface);
        r.ifr_ifru.ifru_addr = sockaddr_in(a);
        self.ioctl(req, &mut r)
    }

    fn default_route(&self, gw: Ipv4Addr) -> io::Result<()> {
        const RTF_UP: libc::c_ushort = 0x1;
        const RTF_GATEWAY: libc::c_ushort = 0x2;
        // SAFETY: rtentry is plain old data (null pointers, zeroes).
        let mut rt: RtEntry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_in(gw);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        self.ioctl(libc::SIOCADDRT, &mut rt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Option<GuestNet>, NetError> {
        GuestNet::from_annotations(&v)
    }

    #[test]
    fn a_full_configuration() {
        let n = parse(json!({
            ADDRESS: "10.87.0.5/16",
            GATEWAY: "10.87.0.1",
            MTU: "1500",
            MAC: "0a:58:0A:57:00:05",
            HOSTS: "127.0.0.1\tlocalhost\n10.87.0.6\tweb\n",
            RESOLV: "nameserver 8.8.8.8\n",
            "other": {"not": "a string"},
        }))
        .unwrap()
        .unwrap();
        assert_eq!(n.address, Ipv4Addr::new(10, 87, 0, 5));
        assert_eq!(n.prefix, 16);
        assert_eq!(n.gateway, Some(Ipv4Addr::new(10, 87, 0, 1)));
        assert_eq!(n.mtu, Some(1500));
        assert_eq!(n.mac, Some([0x0a, 0x58, 0x0a, 0x57, 0, 5]));
        assert!(n.hosts.unwrap().contains("web"));
    }

    #[test]
    fn nothing_without_annotations() {
        assert_eq!(parse(json!(null)).unwrap(), None);
        assert_eq!(parse(json!({"x": "y"})).unwrap(), None);
        assert_eq!(parse(json!([1, 2])).unwrap(), None);
        let n = parse(json!({ADDRESS: "192.168.1.2/24"})).unwrap().unwrap();
        assert_eq!((n.gateway, n.mtu, n.hosts), (None, None, None));
    }

    #[test]
    fn hostile_values_are_refused() {
        let long = "x".repeat(MAX_FILE + 1);
        let bad = [
            json!({ADDRESS: 5}),
            json!({ADDRESS: ""}),
            json!({ADDRESS: "10.0.0.1"}),
            json!({ADDRESS: "10.0.0.1/"}),
            json!({ADDRESS: "10.0.0.1/0"}),
            json!({ADDRESS: "10.0.0.1/33"}),
            json!({ADDRESS: "10.0.0.1/+8"}),
            json!({ADDRESS: "10.0.0.1/-1"}),
            json!({ADDRESS: "10.0.0.1/99999999999999999999"}),
            json!({ADDRESS: "300.0.0.1/8"}),
            json!({ADDRESS: "::1/64"}),
            json!({ADDRESS: "0.0.0.0/8"}),
            json!({ADDRESS: "127.0.0.1/8"}),
            json!({ADDRESS: "224.0.0.1/8"}),
            json!({ADDRESS: "10.0.0.1/8/8"}),
            json!({ADDRESS: "10.0.0.1 /8"}),
            json!({ADDRESS: "10.0.0.1/8", GATEWAY: "11.0.0.1"}),
            json!({ADDRESS: "10.0.0.1/8", GATEWAY: "10.0.0.1"}),
            json!({ADDRESS: "10.0.0.1/8", GATEWAY: "gw"}),
            json!({ADDRESS: "10.0.0.1/8", GATEWAY: ["10.0.0.2"]}),
            json!({ADDRESS: "10.0.0.1/8", MTU: "0"}),
            json!({ADDRESS: "10.0.0.1/8", MTU: "67"}),
            json!({ADDRESS: "10.0.0.1/8", MTU: "65536"}),
            json!({ADDRESS: "10.0.0.1/8", MTU: "-1500"}),
            json!({ADDRESS: "10.0.0.1/8", MTU: 1500}),
            json!({ADDRESS: "10.0.0.1/8", HOSTS: long}),
            json!({ADDRESS: "10.0.0.1/8", HOSTS: "a\0b"}),
            json!({ADDRESS: "10.0.0.1/8", RESOLV: "nameserver\0"}),
            json!({ADDRESS: "10.0.0.1/8", RESOLV: {}}),
            json!({ADDRESS: "10.0.0.1/8", MAC: ""}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "aa:bb:cc:dd:ee"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "aa:bb:cc:dd:ee:ff:00"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "aa:bb:cc:dd:ee:"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "aa:bb:cc:dd:ee:f"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "aa:bb:cc:dd:ee:fff"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "aa-bb-cc-dd-ee-ff"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "+a:bb:cc:dd:ee:ff"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "gg:bb:cc:dd:ee:ff"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "01:00:5e:00:00:01"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "ff:ff:ff:ff:ff:ff"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "00:00:00:00:00:00"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: "\u{e9}a:bb:cc:dd:ee:ff"}),
            json!({ADDRESS: "10.0.0.1/8", MAC: 5}),
            json!({GATEWAY: "10.0.0.1"}),
            json!({MAC: "02:00:00:00:00:01"}),
            json!({HOSTS: "x"}),
        ];
        for v in bad {
            assert!(parse(v.clone()).is_err(), "accepted {v}");
        }
    }

    #[test]
    fn the_fuzz_entry_point_takes_what_the_corpus_would() {
        for d in [
            &b""[..],
            b"{}",
            b"null",
            b"10.0.0.1/8",
            br#"{"dev.strata.net.address": "10.0.0.1/8", "dev.strata.net.mac": "02:00:00:00:00:01"}"#,
            b"\xff\xfe",
        ] {
            fuzz_net_config(d);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for fuzzing: every short string in every field.
        let samples = [
            "",
            "/",
            "//",
            "1/1",
            "1.1.1.1/1",
            "1.1.1.1/32",
            "\u{0}",
            "9999",
            "1e3",
            " 1",
            "0x10",
            "255.255.255.255/32",
            "1.2.3.4/08",
            "aa:bb:cc:dd:ee:ff",
            "::::::",
            "0:0:0:0:0:0",
        ];
        for a in samples {
            for g in samples {
                for m in samples {
                    let _ =
                        parse(json!({ADDRESS: a, GATEWAY: g, MTU: m, MAC: m, HOSTS: a, RESOLV: g}));
                }
            }
        }
    }

    #[test]
    fn file_updates_touch_only_files_that_exist_and_refuse_hostile_ones() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let files = |h: &str| strata_proto::NetFiles {
            hosts: Some(h.into()),
            resolv: Some("nameserver 1.1.1.1\n".into()),
        };
        update_files(d.path(), &files("x")).unwrap();
        assert!(!d.path().join("hosts").exists(), "no network: nothing made");
        std::fs::write(d.path().join("hosts"), "old").unwrap();
        let ino = std::fs::metadata(d.path().join("hosts")).unwrap().ino();
        update_files(d.path(), &files("127.0.0.1\tlocalhost\n10.0.0.2\tweb\n")).unwrap();
        let p = d.path().join("hosts");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "127.0.0.1\tlocalhost\n10.0.0.2\tweb\n"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().ino(),
            ino,
            "rewritten in place"
        );
        assert!(!d.path().join("resolv.conf").exists());
        assert!(update_files(d.path(), &files("a\0b")).is_err());
        assert!(update_files(d.path(), &files(&"x".repeat(MAX_FILE + 1))).is_err());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "127.0.0.1\tlocalhost\n10.0.0.2\tweb\n"
        );
    }

    #[test]
    fn nic_choice() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(find_nic(d.path()), None);
        std::fs::create_dir(d.path().join("lo")).unwrap();
        assert_eq!(find_nic(d.path()), None);
        std::fs::create_dir(d.path().join("vec0")).unwrap();
        assert_eq!(find_nic(d.path()), Some("vec0".into()));
        std::fs::create_dir(d.path().join("eth0")).unwrap();
        assert_eq!(find_nic(d.path()), Some("eth0".into()));
        assert_eq!(find_nic(&d.path().join("missing")), None);
    }
}
