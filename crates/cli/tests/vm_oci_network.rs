//! strata-oci's VM path on a network namespace an engine prepared: as Podman (CNI mode) and
//! containerd's `ctr run --cni` do, the test makes a named namespace, runs Debian's CNI bridge
//! plugin (host-local IPAM) into it itself, and hands strata-oci a config.json whose network
//! namespace has that `path` and whose /etc/hosts is a bind mount of a host file. The VM takes
//! over the namespace's eth0: busybox httpd in the guest is fetched from the host over the bridge
//! at the address the plugin gave, the guest's /etc/hosts is the engine's file, and after
//! `delete` the tap is gone from the namespace (the engine's DEL then removes the rest).
//! The `qemu` tests do the same on the QEMU platform (`dev.strata.vm.platform: qemu`).
//!
//! containerd's `ctr run --cni` order, too: config.json asks for a new namespace (no path), the
//! engine runs its CNI ADD on the task pid's namespace (`/proc/<keeper>/ns/net`) after `create`
//! and before `start`; the guest's NIC takes that interface over at `start`. A fault there
//! (the VM's tap gone before `start`) fails `start` with its cause and `delete` leaves nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The engine's side: a named namespace, a CNI bridge network attached to it, undone on drop
/// (DEL, namespace, bridge) even when the test fails.
struct EngineNet {
    name: String,
    /// The namespace the plugin configures, when it is not the named one (a task pid's).
    task_netns: Option<PathBuf>,
    bridge: String,
    conf: Value,
    _ipam: tempfile::TempDir,
    added: bool,
}

impl EngineNet {
    /// A bridge network on a subnet of its own (`10.<second>.<pid>.0/24`), nothing made yet.
    fn new(tag: &str, second: u8) -> EngineNet {
        let pid = std::process::id();
        let name = format!("strata-{tag}-{pid}");
        let bridge = format!("st{tag}{}", pid % 100_000);
        let ipam = tempfile::tempdir().unwrap();
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": name,
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": format!("10.{second}.{}.0/24", pid % 250),
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam.path(),
            },
        });
        EngineNet {
            name,
            task_netns: None,
            bridge,
            conf,
            _ipam: ipam,
            added: false,
        }
    }

    fn netns(&self) -> PathBuf {
        self.task_netns
            .clone()
            .unwrap_or_else(|| Path::new("/run/netns").join(&self.name))
    }

    /// CNI ADD; the address (CIDR) and MAC the plugin gave the namespace's eth0.
    fn add(&mut self) -> (String, String) {
        let out = self.plugin("ADD");
        assert!(
            out.status.success(),
            "CNI ADD: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.added = true;
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        let cidr = result["ips"][0]["address"].as_str().unwrap().to_string();
        let mac = result["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["sandbox"].as_str().is_some_and(|s| !s.is_empty()))
            .and_then(|i| i["mac"].as_str())
            .unwrap()
            .to_string();
        (cidr, mac)
    }

    fn plugin(&self, command: &str) -> std::process::Output {
        let mut c = Command::new("/usr/lib/cni/bridge")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.name)
            .env("CNI_NETNS", self.netns())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(&serde_json::to_vec(&self.conf).unwrap())
            .unwrap();
        c.wait_with_output().unwrap()
    }
}

impl Drop for EngineNet {
    fn drop(&mut self) {
        if self.added {
            let _ = self.plugin("DEL");
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn get(addr: &str, tries: u32) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..tries {
        match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1") {
                    return Ok(out);
                }
                last = out;
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last)
}

struct Cleanup<'a> {
    oci: &'a Oci,
    id: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.oci.run(&["delete", "--force", &self.id]);
    }
}

#[test]
fn a_vm_bundle_serves_on_the_network_namespace_an_engine_prepared() {
    serves_on_an_engine_namespace("uml");
}

#[test]
fn a_qemu_vm_bundle_serves_on_the_network_namespace_an_engine_prepared() {
    serves_on_an_engine_namespace("qemu");
}

fn serves_on_an_engine_namespace(platform: &str) {
    if !root_or_skip()
        || !strata_testkit::require(
            Path::new("/usr/lib/cni/bridge").exists(),
            "needs containernetworking-plugins (scripts/deps.sh)",
        )
    {
        return;
    }
    // SAFETY: prctl with integer arguments (the keeper outlives `create`; reap it as a shim).
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let pid = std::process::id();
    // Each platform's test its own subnet, namespace and bridge (they run in parallel).
    let (k, tag) = if platform == "qemu" {
        (125, "q")
    } else {
        (0, "")
    };
    let subnet = format!("10.196.{}.0/24", (pid + k) % 250);
    let prefix = &subnet[..subnet.len() - 4];
    let ipam = tempfile::tempdir().unwrap();
    let mut net = EngineNet {
        name: format!("strata-vmoci{tag}-{pid}"),
        task_netns: None,
        bridge: format!("stvo{tag}{}", pid % 100_000),
        conf: json!({
            "cniVersion": "1.0.0",
            "name": format!("strata-vmoci{tag}-{pid}"),
            "type": "bridge",
            "bridge": format!("stvo{tag}{}", pid % 100_000),
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": subnet,
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam.path(),
            },
        }),
        _ipam: ipam,
        added: false,
    };
    ip(&["netns", "add", &net.name]);
    let out = net.plugin("ADD");
    assert!(
        out.status.success(),
        "CNI ADD: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    net.added = true;
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cidr = result["ips"][0]["address"].as_str().unwrap().to_string();
    let addr = cidr.split('/').next().unwrap().to_string();
    assert!(addr.starts_with(prefix), "{result}");

    let oci = Oci::new();
    let id = unique_id("vmnet");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    let mut b = Bundle::sh(
        &id,
        "echo served-by-oci-vm > /tmp/index.html && exec httpd -f -p 80 -h /tmp",
    );
    // The engine's /etc/hosts, bind-mounted as Podman does.
    let hosts = b.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1\tlocalhost\n{prefix}1\tengine-gateway\n"),
    )
    .unwrap();
    let netns = net.netns();
    b.edit(|c| {
        c["annotations"] =
            json!({"dev.strata.isolation": "vm", "dev.strata.vm.platform": platform});
        c["root"]["readonly"] = json!(false);
        let nss = c["linux"]["namespaces"].as_array_mut().unwrap();
        nss.retain(|n| n["type"] != "network");
        nss.push(json!({"type": "network", "path": netns}));
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/etc/hosts",
            "type": "bind",
            "source": hosts,
            "options": ["rbind", "ro"],
        }));
    });
    let bp = b.path().to_str().unwrap().to_string();
    let pidf = format!("{bp}/init.pid");
    oci.ok(&["create", "--bundle", &bp, "--pid-file", &pidf, &id]);
    oci.ok(&["start", &id]);

    // From the host, over the engine's bridge, at the address the engine's plugin gave.
    let answer = get(&format!("{addr}:80"), 300).expect("the VM answers at its CNI address");
    assert!(answer.ends_with("served-by-oci-vm\n"), "{answer}");
    let guest = oci.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "ip -4 -o addr show eth0; cat /etc/hosts",
    ]);
    assert!(guest.contains(&cidr), "{guest}");
    assert!(guest.contains("engine-gateway"), "{guest}");
    // The namespace's own eth0 keeps the address (the plugins' DEL finds it there); the tap is
    // the VM's.
    let links = ip(&["-n", &net.name, "-o", "link"]);
    assert!(links.contains("stap"), "{links}");

    oci.ok(&["delete", "--force", &id]);
    assert!(get(&format!("{addr}:80"), 1).is_err(), "the VM is gone");
    let links = ip(&["-n", &net.name, "-o", "link"]);
    assert!(!links.contains("stap"), "the tap went with the VM: {links}");
    let out = net.plugin("DEL");
    assert!(
        out.status.success(),
        "CNI DEL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    net.added = false;
}

/// `ip ARGS` in the network namespace of process `pid`.
fn ip_in(pid: i32, args: &[&str]) -> String {
    let o = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ip {args:?} in {pid}'s namespace: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether the keeper `pid` (our child: the test is its subreaper, as a shim) ended; reaps it.
fn reaped(pid: i32) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let mut st = 0;
        // SAFETY: waitpid on a pid of ours with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid || (r < 0 && !Path::new(&format!("/proc/{pid}")).exists()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn netns_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
}

/// A VM bundle asking for a new network namespace (the default spec's `{"type": "network"}`),
/// created, its keeper's pid read from the pid file. On the default platform (uml here).
fn create_new_netns_vm(oci: &Oci, id: &str, script: &str) -> (Bundle, i32) {
    create_new_netns_vm_on(oci, id, script, "auto")
}

/// [`create_new_netns_vm`] on `platform` (`dev.strata.vm.platform`; `auto`: no annotation).
fn create_new_netns_vm_on(oci: &Oci, id: &str, script: &str, platform: &str) -> (Bundle, i32) {
    let mut b = Bundle::sh(id, script);
    b.edit(|c| {
        c["annotations"] = json!({"dev.strata.isolation": "vm"});
        if platform != "auto" {
            c["annotations"]["dev.strata.vm.platform"] = json!(platform);
        }
        c["root"]["readonly"] = json!(false);
        let nss = c["linux"]["namespaces"].as_array().unwrap();
        assert!(
            nss.iter()
                .any(|n| n["type"] == "network" && n.get("path").is_none()),
            "{nss:?}"
        );
    });
    let bp = b.path().to_str().unwrap().to_string();
    let pidf = format!("{bp}/init.pid");
    oci.ok(&["create", "--bundle", &bp, "--pid-file", &pidf, id]);
    let pid: i32 = std::fs::read_to_string(&pidf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The task pid engines get (the keeper) is in a namespace of its own, not the host's.
    assert_ne!(netns_of(pid), netns_of(std::process::id() as i32));
    (b, pid)
}

fn vm_net_ready() -> bool {
    // SAFETY: prctl with integer arguments (the keeper outlives `create`; reap it as a shim).
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    root_or_skip()
        && strata_testkit::require(
            Path::new("/usr/lib/cni/bridge").exists(),
            "needs containernetworking-plugins (scripts/deps.sh)",
        )
}

#[test]
fn a_vm_gets_the_network_an_engine_configures_between_create_and_start() {
    network_configured_between_create_and_start("auto", "vcni", 197);
}

/// The same on QEMU: its virtio-net NIC boots on the tap with a MAC of its own and takes the
/// interface's MAC, address and routes at start.
#[test]
fn a_qemu_vm_gets_the_network_an_engine_configures_between_create_and_start() {
    network_configured_between_create_and_start("qemu", "qcni", 188);
}

fn network_configured_between_create_and_start(platform: &str, tag: &str, second: u8) {
    if !vm_net_ready() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("vmcni");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    let (_b, pid) = create_new_netns_vm_on(
        &oci,
        &id,
        "echo served-after-start > /tmp/index.html && exec httpd -f -p 80 -h /tmp",
        platform,
    );
    // Before the engine's ADD the namespace has the VM's tap (the guest's NIC since boot) and
    // nothing else but lo.
    let links = ip_in(pid, &["-o", "link"]);
    assert!(links.contains("stap"), "{links}");
    // The engine's ADD on the task pid's namespace, as ctr run --cni does after create.
    let mut net = EngineNet::new(tag, second);
    net.task_netns = Some(PathBuf::from(format!("/proc/{pid}/ns/net")));
    let (cidr, mac) = net.add();
    let addr = cidr.split('/').next().unwrap().to_string();
    oci.ok(&["start", &id]);

    let answer = get(&format!("{addr}:80"), 300).expect("the VM answers at its CNI address");
    assert!(answer.ends_with("served-after-start\n"), "{answer}");
    let guest = oci.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "ip -o link show eth0; ip -4 -o addr show eth0; ip route",
    ]);
    assert!(guest.contains(&cidr), "{guest}");
    assert!(
        guest.contains(&mac),
        "the guest's NIC has the interface's MAC: {guest}"
    );
    assert!(guest.contains("default via"), "{guest}");
    // The guest reaches the bridge's gateway (the host side of the engine's network).
    let gw = format!("{}.1", addr.rsplit_once('.').unwrap().0);
    let ping = oci.run(&["exec", &id, "ping", "-c", "1", "-W", "5", &gw]);
    assert!(
        ping.status.success(),
        "ping {gw} from the guest: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );

    oci.ok(&["delete", "--force", &id]);
    assert!(get(&format!("{addr}:80"), 1).is_err(), "the VM is gone");
    assert!(
        reaped(pid),
        "the keeper (and its namespace with the tap) is gone"
    );
    assert!(!oci.root.path().join("vm").join(&id).exists());
}

#[test]
fn a_vm_whose_new_namespace_stays_empty_runs_with_loopback_only() {
    if !vm_net_ready() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("vmnocni");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    let (_b, _pid) = create_new_netns_vm(&oci, &id, "sleep 1000");
    oci.ok(&["start", &id]);
    // ctr run without --cni: as a runc container, only lo has an address.
    let guest = oci.ok(&["exec", &id, "ip", "-4", "-o", "addr"]);
    let addrs: Vec<&str> = guest.lines().collect();
    assert!(
        addrs.len() == 1 && addrs[0].contains("127.0.0.1"),
        "{guest}"
    );
    oci.ok(&["delete", "--force", &id]);
}

#[test]
fn a_take_over_that_fails_at_start_fails_start_with_its_cause_and_leaves_nothing() {
    if !vm_net_ready() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("vmcnifault");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    let (_b, pid) = create_new_netns_vm(&oci, &id, "sleep 1000");
    let mut net = EngineNet::new("vflt", 198);
    net.task_netns = Some(PathBuf::from(format!("/proc/{pid}/ns/net")));
    net.add();
    // The VM's NIC's tap vanishes before start.
    let links = ip_in(pid, &["-o", "link"]);
    let tap = links
        .split_whitespace()
        .find(|w| w.starts_with("stap"))
        .unwrap_or_else(|| panic!("no tap: {links}"))
        .trim_end_matches(':')
        .to_string();
    ip_in(pid, &["link", "del", &tap]);
    let out = oci.run(&["start", &id]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "start succeeded without the tap");
    eprintln!("start without the tap: {err}");
    assert!(
        err.contains(&tap) && err.contains("network namespace"),
        "the cause is named: {err}"
    );
    let _ = net.plugin("DEL");
    net.added = false;
    oci.ok(&["delete", "--force", &id]);
    assert!(reaped(pid), "the keeper (and its namespace) is gone");
    assert!(!oci.root.path().join("vm").join(&id).exists());
    let leftover = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ls -d /sys/fs/cgroup/*/strata-test-{id} 2>/dev/null"
        ))
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "cgroups left: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}

/// The engine's network has an MTU the guest's NIC cannot take (it booted at 1500, before the
/// namespace was configured; UML's driver goes no higher): the agent refuses the start-time
/// configuration, `start` fails with that cause and `delete` leaves nothing.
#[test]
fn a_start_time_network_the_guest_refuses_fails_start_with_its_cause_and_leaves_nothing() {
    if !vm_net_ready() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("vmcnimtu");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    let (_b, pid) = create_new_netns_vm(&oci, &id, "sleep 1000");
    let mut net = EngineNet::new("vmtu", 199);
    net.conf["mtu"] = json!(9000);
    net.task_netns = Some(PathBuf::from(format!("/proc/{pid}/ns/net")));
    net.add();
    let out = oci.run(&["start", &id]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "start succeeded with MTU 9000");
    assert!(
        err.contains("MTU to 9000") && err.contains("start"),
        "the cause is named: {err}"
    );
    let _ = net.plugin("DEL");
    net.added = false;
    oci.ok(&["delete", "--force", &id]);
    assert!(reaped(pid), "the keeper (and its namespace) is gone");
    assert!(!oci.root.path().join("vm").join(&id).exists());
    let leftover = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ls -d /sys/fs/cgroup/*/strata-test-{id} 2>/dev/null"
        ))
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "cgroups left: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}

/// QEMU's virtio-net NIC boots without a maximum MTU from the host (no `host_mtu`), so a
/// jumbo-frame network configured after `create` is taken over at `start` (on UML it is refused,
/// above): the guest's eth0 gets MTU 9000 and an 8000-byte ping to the bridge's gateway answers.
#[test]
fn a_qemu_vm_takes_a_jumbo_mtu_network_over_at_start() {
    if !vm_net_ready() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("vmqmtu");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    let (_b, pid) = create_new_netns_vm_on(&oci, &id, "sleep 1000", "qemu");
    let mut net = EngineNet::new("qmtu", 187);
    net.conf["mtu"] = json!(9000);
    net.task_netns = Some(PathBuf::from(format!("/proc/{pid}/ns/net")));
    let (cidr, _) = net.add();
    oci.ok(&["start", &id]);
    let addr = cidr.split('/').next().unwrap();
    let gw = format!("{}.1", addr.rsplit_once('.').unwrap().0);
    let guest = oci.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        &format!("ip -o link show eth0; ping -c 1 -W 5 -s 8000 {gw} >/dev/null && echo PING-OK"),
    ]);
    assert!(guest.contains("mtu 9000"), "{guest}");
    assert!(guest.contains("PING-OK"), "{guest}");
    oci.ok(&["delete", "--force", &id]);
    assert!(reaped(pid), "the keeper (and its namespace) is gone");
    assert!(!oci.root.path().join("vm").join(&id).exists());
}

/// An interface the guest's NIC cannot take over (no IPv4 address: an IPv6-only network) is
/// not left behind silently: `start` fails saying so, and `delete` leaves nothing.
#[test]
fn an_interface_without_ipv4_at_start_fails_start_and_leaves_nothing() {
    if !vm_net_ready() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("vmcniv6");
    let _cleanup = Cleanup {
        oci: &oci,
        id: id.clone(),
    };
    let (_b, pid) = create_new_netns_vm(&oci, &id, "sleep 1000");
    // Both ends in the keeper's namespace: they go with it.
    ip_in(
        pid,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
    );
    ip_in(pid, &["link", "set", "eth0", "up"]);
    let out = oci.run(&["start", &id]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "start succeeded without a network");
    assert!(
        err.contains("eth0") && err.contains("no IPv4 address"),
        "the cause is named: {err}"
    );
    oci.ok(&["delete", "--force", &id]);
    assert!(reaped(pid), "the keeper (and its namespace) is gone");
    assert!(!oci.root.path().join("vm").join(&id).exists());
}
