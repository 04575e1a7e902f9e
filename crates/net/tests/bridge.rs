//! strata-net on the real dataplane: Debian's CNI plugins, real network namespaces, real servers
//! (busybox httpd) and clients, only on addresses of the networks these tests create. Every test
//! has its own config and state directories, network names and subnet, and removes everything it
//! made (networks, bridges, namespaces, leases, NAT rules) even when it fails. Needs root,
//! containernetworking-plugins, busybox-static, iproute2, iptables, util-linux (nsenter, unshare).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use strata_net::cni::Plugins;
use strata_net::{AttachRequest, CreateRequest, Error, NetConfig, Networks, Owner, PortSpec};

fn ready_or_skip() -> bool {
    strata_testkit::require(
        strata_testkit::is_root()
            && Path::new("/usr/lib/cni/bridge").exists()
            && Path::new("/bin/busybox").exists()
            && Command::new("iptables-save")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
        "needs root, containernetworking-plugins, busybox-static and iptables (scripts/deps.sh)",
    )
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A subnet for test number `k`: 10.(160+k).(pid-derived).0/24, distinct between the tests of one
/// run and unlikely to meet another run's.
fn subnet(k: u8) -> ipnet::Ipv4Net {
    format!("10.{}.{}.0/24", 160 + k, 20 + std::process::id() % 200)
        .parse()
        .unwrap()
}

/// One test's private networks; Drop undoes everything that is left.
struct Env {
    nets: Networks,
    dir: tempfile::TempDir,
    netns: Vec<String>,
    children: Vec<Child>,
}

impl Env {
    fn new(k: u8) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("strata-net-test-")
            .tempdir()
            .unwrap();
        let cfg = NetConfig {
            config_dir: dir.path().join("net.d"),
            state_dir: dir.path().join("state"),
            plugins: Plugins::default(),
            default_subnet: subnet(k),
            default_bridge: format!("st-t{}-{k}", std::process::id() % 100000),
            pool: subnet(k),
        };
        Env {
            nets: Networks::new(cfg),
            dir,
            netns: Vec::new(),
            children: Vec::new(),
        }
    }

    fn netns(&mut self, id: &str) -> PathBuf {
        let p = self.nets.create_netns(id, Owner::current()).unwrap();
        self.netns.push(id.to_string());
        p
    }

    fn spawn(&mut self, mut cmd: Command) -> u32 {
        let c = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = c.id();
        self.children.push(c);
        pid
    }

    /// busybox httpd in `netns` serving `body` as /index.html on `port`.
    fn httpd(&mut self, netns: &Path, port: u16, body: &str) {
        let www = self
            .dir
            .path()
            .join(format!("www-{port}-{}", self.children.len()));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), body).unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.display()))
            .args([
                "--",
                "busybox",
                "httpd",
                "-f",
                "-p",
                &port.to_string(),
                "-h",
            ])
            .arg(&www);
        self.spawn(cmd);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(records) = self.nets.records(None) {
            for r in records {
                let _ = self.nets.detach(&r.network, &r.container_id);
            }
        }
        let _ = self.nets.reconcile();
        for id in &self.netns {
            let _ = self.nets.remove_netns(id);
        }
        if let Ok(nets) = self.nets.list() {
            for n in nets {
                let _ = self.nets.remove(&n.name);
            }
        }
    }
}

/// Runs a command inside `netns`.
fn in_ns(netns: &Path, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(args)
        .output()
        .unwrap()
}

/// Pings `ip` from inside `netns` (bounded retries: the first packet can wait for ARP on a loaded
/// machine).
fn ping(netns: &Path, ip: &str) -> Output {
    let mut o = in_ns(netns, &["busybox", "ping", "-c", "1", "-W", "2", ip]);
    for _ in 0..4 {
        if o.status.success() {
            break;
        }
        o = in_ns(netns, &["busybox", "ping", "-c", "1", "-W", "2", ip]);
    }
    o
}

/// Runs `sh -c script` inside `netns` with `hosts` bind-mounted on /etc/hosts (a private mount
/// namespace), the way a container sees its hosts file.
fn in_ns_with_hosts(netns: &Path, hosts: &Path, script: &str) -> Output {
    let inner = format!("mount --bind {} /etc/hosts && {script}", hosts.display());
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &inner,
        ])
        .output()
        .unwrap()
}

/// Fetches http://addr/index.html from inside `netns`, retrying while the server starts (bounded).
fn wget_in(netns: &Path, url: &str) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        // busybox 1.35's wget segfaults with -T; timeout(1) bounds it instead.
        let o = in_ns(
            netns,
            &["timeout", "5", "busybox", "wget", "-q", "-O", "-", url],
        );
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
        last = String::from_utf8_lossy(&o.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("wget {url} failed: {last}");
}

/// HTTP GET from the host to addr:port (the test's own client), retrying while the server starts.
fn http_get_from_host(addr: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..50 {
        match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1") {
                    return Ok(out);
                }
                last = format!("answer {out:?}");
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

fn iptables_rules() -> String {
    let mut s = String::new();
    for t in ["nat", "filter"] {
        let o = Command::new("iptables-save")
            .args(["-t", t])
            .output()
            .unwrap();
        s.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    s
}

/// Asserts that nothing of these containers is left: no rule naming them or their addresses, no
/// lease, no record, no port on the bridge.
fn assert_nothing_left(
    env: &Env,
    network: &str,
    bridge: Option<&str>,
    ids: &[&str],
    ips: &[Ipv4Addr],
) {
    let rules = iptables_rules();
    for id in ids {
        // iptables-save escapes the quotes of the plugins' comments: id: \"<id>\"
        // strata's own port rules: strata-port:<id>
        for needle in [format!("id: \\\"{id}\\\""), format!("strata-port:{id}\"")] {
            assert!(
                !rules.contains(&needle),
                "an iptables rule of {id} is left:\n{rules}"
            );
        }
    }
    for ip in ips {
        for needle in [
            format!(" {ip}/32 "),
            format!(" {ip}/32\n"),
            format!("{ip}:"),
        ] {
            assert!(
                !rules.contains(&needle),
                "an iptables rule for {ip} is left:\n{rules}"
            );
        }
    }
    assert!(
        env.nets.records(Some(network)).unwrap().is_empty(),
        "attachment records are left"
    );
    let lease_dir = env.dir.path().join("state/ipam").join(network);
    if let Ok(rd) = std::fs::read_dir(&lease_dir) {
        let leases: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<Ipv4Addr>().is_ok())
            .collect();
        assert!(leases.is_empty(), "leases are left: {leases:?}");
    }
    if let Some(b) = bridge {
        let brif = Path::new("/sys/class/net").join(b).join("brif");
        if let Ok(rd) = std::fs::read_dir(&brif) {
            let ports: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
            assert!(ports.is_empty(), "veths are left on {b}: {ports:?}");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn two_namespaces_reach_each_other_by_address_and_name() {
    if !ready_or_skip() {
        return;
    }
    let mut env = Env::new(0);
    let name = unique("tn");
    let net = env
        .nets
        .create(&CreateRequest {
            name: name.clone(),
            subnet: Some(subnet(0)),
            gateway: None,
            pool: None,
        })
        .unwrap();
    let bridge = net.bridge().unwrap().to_string();
    let (a_id, b_id) = (unique("a"), unique("b"));
    let (a_ns, b_ns) = (env.netns(&a_id), env.netns(&b_id));
    let (a_hosts, b_hosts) = (
        env.dir.path().join("a.hosts"),
        env.dir.path().join("b.hosts"),
    );

    let mut ra = AttachRequest::new(&name, &a_id, &a_ns, Owner::current());
    ra.hostname = Some("alpha-host".into());
    ra.names = vec!["alpha".into()];
    ra.hosts_file = Some(a_hosts.clone());
    let a = env.nets.attach(&ra).unwrap();
    let mut rb = AttachRequest::new(&name, &b_id, &b_ns, Owner::current());
    rb.names = vec!["beta".into(), "b-alias".into()];
    rb.hosts_file = Some(b_hosts.clone());
    let b = env.nets.attach(&rb).unwrap();

    assert!(subnet(0).contains(&a.address.addr()) && subnet(0).contains(&b.address.addr()));
    assert_ne!(a.address, b.address);
    assert_eq!(a.gateway, subnet(0).hosts().next());
    assert!(!a.mac.is_empty());
    assert!(!a.dns.nameservers.is_empty());
    env.nets.check(&name, &a_id).unwrap();

    // By address: ping both ways, HTTP from a to b.
    let o = ping(&a_ns, &b.address.addr().to_string());
    assert!(
        o.status.success(),
        "a pings b: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = ping(&b_ns, &a.address.addr().to_string());
    assert!(o.status.success(), "b pings a");
    env.httpd(&b_ns, 80, "hello from b\n");
    assert_eq!(
        wget_in(&a_ns, &format!("http://{}/index.html", b.address.addr())),
        "hello from b\n"
    );

    // By name and alias, through the /etc/hosts strata keeps current.
    let ah = std::fs::read_to_string(&a_hosts).unwrap();
    assert!(
        ah.contains(&format!("{}\talpha-host alpha\n", a.address.addr())),
        "{ah}"
    );
    assert!(
        ah.contains(&format!("{}\tbeta b-alias\n", b.address.addr())),
        "{ah}"
    );
    let bh = std::fs::read_to_string(&b_hosts).unwrap();
    assert!(
        bh.contains(&format!("{}\talpha\n", a.address.addr())),
        "b's hosts learned of a: {bh}"
    );
    let o = in_ns_with_hosts(
        &a_ns,
        &a_hosts,
        "timeout 5 busybox wget -q -O - http://b-alias/index.html",
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello from b\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = in_ns_with_hosts(&b_ns, &b_hosts, "busybox ping -c 1 -W 2 alpha");
    assert!(
        o.status.success(),
        "b pings a by name: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The inspect view lists both; rm refuses while they are attached.
    let info = env.nets.inspect(&name).unwrap();
    assert_eq!(info.containers.len(), 2);
    assert!(matches!(env.nets.remove(&name), Err(Error::InUse { .. })));

    // b leaves: a's hosts forgets it; then a leaves and nothing is left.
    env.nets.detach(&name, &b_id).unwrap();
    let ah = std::fs::read_to_string(&a_hosts).unwrap();
    assert!(!ah.contains("beta"), "{ah}");
    env.nets.detach(&name, &a_id).unwrap();
    assert!(matches!(
        env.nets.detach(&name, &a_id),
        Err(Error::NotAttached { .. })
    ));
    assert_nothing_left(
        &env,
        &name,
        Some(&bridge),
        &[&a_id, &b_id],
        &[a.address.addr(), b.address.addr()],
    );
    env.nets.remove(&name).unwrap();
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "rm takes the bridge"
    );
}

#[test]
fn published_port_reaches_a_server_from_the_host_loopback() {
    if !ready_or_skip() {
        return;
    }
    let mut env = Env::new(1);
    let name = unique("tp");
    env.nets
        .create(&CreateRequest {
            name: name.clone(),
            subnet: Some(subnet(1)),
            gateway: None,
            pool: None,
        })
        .unwrap();
    let id = unique("web");
    let ns = env.netns(&id);
    let port = free_port();
    let mut req = AttachRequest::new(&name, &id, &ns, Owner::current());
    req.ports = vec![
        PortSpec::parse(&format!("127.0.0.1:{port}:8080")).unwrap(),
        PortSpec::parse("9000/udp").unwrap(),
    ];
    let a = env.nets.attach(&req).unwrap();
    assert_eq!(a.ports[0].host_port, port);
    assert_eq!(
        a.ports[0].to_string(),
        format!("8080/tcp -> 127.0.0.1:{port}")
    );
    assert_ne!(
        a.ports[1].host_port, 0,
        "a host port was picked for 9000/udp"
    );
    let rules = iptables_rules();
    assert!(
        rules.contains(&format!("--dport {port} ")),
        "the attach made a DNAT rule:\n{rules}"
    );
    assert!(
        rules.contains(&format!("strata-port:{id}\"")),
        "the attach made NAT rules naming the container:\n{rules}"
    );
    env.httpd(&ns, 8080, "published\n");
    let answer = http_get_from_host(&format!("127.0.0.1:{port}")).unwrap();
    assert!(answer.ends_with("published\n"), "{answer}");

    // The same host port again: refused, nothing of the second attach is left.
    let id2 = unique("web2");
    let ns2 = env.netns(&id2);
    let mut req2 = AttachRequest::new(&name, &id2, &ns2, Owner::current());
    req2.ports = vec![PortSpec::parse(&format!("{port}:80")).unwrap()];
    let e = env.nets.attach(&req2).unwrap_err();
    assert!(matches!(e, Error::PortInUse(_)), "{e}");
    assert!(e.to_string().contains(&id), "names the holder: {e}");
    // A port a host process listens on: refused.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let held = listener.local_addr().unwrap().port();
    req2.ports = vec![PortSpec::parse(&format!("{held}:80")).unwrap()];
    let e = env.nets.attach(&req2).unwrap_err();
    assert!(e.to_string().contains("in use on the host"), "{e}");
    assert_eq!(env.nets.records(Some(&name)).unwrap().len(), 1);

    env.nets.detach(&name, &id).unwrap();
    assert!(
        http_get_from_host(&format!("127.0.0.1:{port}")).is_err(),
        "the mapping went with the detach"
    );
    let bridge = env.nets.list().unwrap()[0].bridge().unwrap().to_string();
    assert_nothing_left(
        &env,
        &name,
        Some(&bridge),
        &[&id, &id2],
        &[a.address.addr()],
    );
    let rules = iptables_rules();
    assert!(
        !rules.contains(&format!("--dport {port} ")),
        "no DNAT for {port} is left:\n{rules}"
    );
}

#[test]
fn twenty_concurrent_attaches_get_twenty_addresses() {
    if !ready_or_skip() {
        return;
    }
    let mut env = Env::new(2);
    let name = unique("tc");
    let net = env
        .nets
        .create(&CreateRequest {
            name: name.clone(),
            subnet: Some(subnet(2)),
            gateway: None,
            pool: None,
        })
        .unwrap();
    let ids: Vec<String> = (0..20).map(|i| unique(&format!("c{i}-"))).collect();
    let nss: Vec<PathBuf> = ids.iter().map(|id| env.netns(id)).collect();
    let results: Vec<Result<strata_net::Attachment, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .zip(&nss)
            .map(|(id, ns)| {
                let nets = env.nets.clone();
                let name = name.clone();
                s.spawn(move || nets.attach(&AttachRequest::new(&name, id, ns, Owner::current())))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let addrs: Vec<Ipv4Addr> = results
        .into_iter()
        .map(|r| r.unwrap().address.addr())
        .collect();
    let distinct: BTreeSet<_> = addrs.iter().collect();
    assert_eq!(distinct.len(), 20, "{addrs:?}");
    // Each one really holds its address.
    let o = ping(&nss[19], &addrs[0].to_string());
    assert!(o.status.success(), "the last member reaches the first");
    std::thread::scope(|s| {
        for id in &ids {
            let nets = env.nets.clone();
            let name = name.clone();
            s.spawn(move || nets.detach(&name, id).unwrap());
        }
    });
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_nothing_left(&env, &name, net.bridge(), &id_refs, &addrs);
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    if !ready_or_skip() {
        return;
    }
    let mut env = Env::new(3);
    let name = unique("tb");
    let sn = subnet(3);
    let net = env
        .nets
        .create(&CreateRequest {
            name: name.clone(),
            subnet: Some(sn),
            gateway: None,
            pool: None,
        })
        .unwrap();
    let bridge = net.bridge().unwrap().to_string();
    let id = unique("bad");
    let ns = env.netns(&id);
    let attach = |nets: &Networks, f: &dyn Fn(&mut AttachRequest)| {
        let mut r = AttachRequest::new(&name, &id, &ns, Owner::current());
        f(&mut r);
        nets.attach(&r)
    };

    // Networks: unknown, bad names, duplicate, overlapping subnets (another network's, the
    // host's own), a gateway outside the subnet, the reserved default name.
    let e = env.nets.inspect("no-such-net").unwrap_err();
    assert!(
        matches!(e, Error::UnknownNetwork(_)) && e.to_string().contains("strata network create"),
        "{e}"
    );
    for bad in ["", "../etc", "a b", "host", "none", "-x"] {
        let e = env
            .nets
            .create(&CreateRequest {
                name: bad.into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(e, Error::InvalidName(_)), "{bad:?}: {e}");
    }
    let e = env
        .nets
        .create(&CreateRequest {
            name: "bridge".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, Error::InvalidName(_)), "{e}");
    let e = env
        .nets
        .create(&CreateRequest {
            name: name.clone(),
            subnet: Some(sn),
            gateway: None,
            pool: None,
        })
        .unwrap_err();
    assert!(matches!(e, Error::Exists(_)), "{e}");
    let half: ipnet::Ipv4Net = format!("{}/25", sn.network()).parse().unwrap();
    let e = env
        .nets
        .create(&CreateRequest {
            name: unique("ov"),
            subnet: Some(half),
            gateway: None,
            pool: None,
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("overlaps") && e.to_string().contains(&name),
        "{e}"
    );
    let host_net = strata_net::config::host_routes()
        .into_iter()
        .find(|(d, _)| !d.starts_with("st-") && d != "strata0");
    if let Some((dev, hn)) = host_net {
        let e = env
            .nets
            .create(&CreateRequest {
                name: unique("ov"),
                subnet: Some(hn),
                gateway: None,
                pool: None,
            })
            .unwrap_err();
        assert!(e.to_string().contains(&dev), "{e}");
    }
    let e = env
        .nets
        .create(&CreateRequest {
            name: unique("gw"),
            subnet: Some(subnet(4)),
            gateway: Some("192.0.2.77".parse().unwrap()),
            pool: None,
        })
        .unwrap_err();
    assert!(matches!(e, Error::Subnet(_)), "{e}");
    assert_eq!(
        env.nets.list().unwrap().len(),
        1,
        "no failed create left a network"
    );

    // Attaches: unknown network, --ip outside the subnet / the gateway, bad names, not a netns,
    // a malformed -p.
    let e = env
        .nets
        .attach(&AttachRequest::new(
            "no-such-net",
            &id,
            &ns,
            Owner::current(),
        ))
        .unwrap_err();
    assert!(matches!(e, Error::UnknownNetwork(_)), "{e}");
    let e = attach(&env.nets, &|r| r.ip = Some("192.0.2.9".parse().unwrap())).unwrap_err();
    assert!(e.to_string().contains("--ip"), "{e}");
    let e = attach(&env.nets, &|r| r.ip = sn.hosts().next()).unwrap_err();
    assert!(e.to_string().contains("--ip"), "{e}");
    let e = attach(&env.nets, &|r| r.names = vec!["x\n1.2.3.4 evil".into()]).unwrap_err();
    assert!(matches!(e, Error::InvalidName(_)), "{e}");
    let e = attach(&env.nets, &|r| r.container_id = "../../x".into()).unwrap_err();
    assert!(matches!(e, Error::InvalidName(_)), "{e}");
    let e = attach(&env.nets, &|r| r.netns = env.dir.path().join("a.hosts")).unwrap_err();
    assert!(e.to_string().contains("not a network namespace"), "{e}");
    assert!(PortSpec::parse("8080:80/sctp").is_err());

    // A fixed --ip that is free works; the same --ip again for another member fails in
    // host-local, and that failure is rolled back.
    let fixed = sn.hosts().nth(5).unwrap();
    let ok = attach(&env.nets, &|r| r.ip = Some(fixed)).unwrap();
    assert_eq!(ok.address.addr(), fixed);
    let id2 = unique("dup");
    let ns2 = env.netns(&id2);
    let mut r2 = AttachRequest::new(&name, &id2, &ns2, Owner::current());
    r2.ip = Some(fixed);
    let e = env.nets.attach(&r2).unwrap_err();
    assert!(matches!(e, Error::Cni(_)), "{e}");
    assert_eq!(env.nets.records(Some(&name)).unwrap().len(), 1);
    env.nets.detach(&name, &id).unwrap();

    // A plugin that fails halfway through the chain: bridge and portmap ran, firewall fails;
    // everything they did is DELeted.
    let broken = unique("br");
    let mut conf = strata_net::config::bridge_conflist(
        &broken,
        &strata_net::config::bridge_name(&broken),
        subnet(5),
        subnet(5).hosts().next().unwrap(),
        &env.dir.path().join("state/ipam"),
    );
    // firewalld is not running here: a firewall plugin with that backend fails after bridge and
    // portmap worked.
    conf["plugins"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "firewall", "backend": "firewalld"}));
    std::fs::write(
        env.dir.path().join(format!("net.d/{broken}.conflist")),
        conf.to_string(),
    )
    .unwrap();
    let mut r3 = AttachRequest::new(&broken, &id2, &ns2, Owner::current());
    r3.ports = vec![PortSpec::parse(&format!("127.0.0.1:{}:80", free_port())).unwrap()];
    let e = env.nets.attach(&r3).unwrap_err();
    assert!(e.to_string().contains("firewall"), "{e}");
    assert_nothing_left(
        &env,
        &broken,
        Some(&strata_net::config::bridge_name(&broken)),
        &[&id2],
        &[],
    );
    env.nets.remove(&broken).unwrap();

    // Plugins missing: a clear error naming the package, nothing left.
    let mut cfg = env.nets.config().clone();
    cfg.plugins = Plugins::new(vec![env.dir.path().join("no-plugins")]);
    let e = Networks::new(cfg)
        .attach(&AttachRequest::new(&name, &id, &ns, Owner::current()))
        .unwrap_err();
    assert!(e.to_string().contains("containernetworking-plugins"), "{e}");

    assert_nothing_left(&env, &name, Some(&bridge), &[&id, &id2], &[fixed]);
}

#[test]
fn prune_undoes_an_attachment_whose_owner_was_killed() {
    if !ready_or_skip() {
        return;
    }
    let mut env = Env::new(6);
    let name = unique("tk");
    let net = env
        .nets
        .create(&CreateRequest {
            name: name.clone(),
            subnet: Some(subnet(6)),
            gateway: None,
            pool: None,
        })
        .unwrap();
    let bridge = net.bridge().unwrap().to_string();

    // The owner: a process that is killed with SIGKILL after the attach, as a crashed strata
    // or keeper would be.
    // Both owners are in env.children and both namespaces in env.netns, so a failing assertion
    // still ends with everything removed (Drop kills the owners first, then reconciles).
    let mut sleep = Command::new("sleep");
    sleep.arg("600");
    let owner_pid = env.spawn(sleep);
    let owner = Owner::process(owner_pid as i32).unwrap();
    let dead_id = unique("dead");
    let dead_ns = env.nets.create_netns(&dead_id, owner).unwrap();
    env.netns.push(dead_id.clone());
    let port = free_port();
    let mut req = AttachRequest::new(&name, &dead_id, &dead_ns, owner);
    req.ports = vec![PortSpec::parse(&format!("127.0.0.1:{port}:80")).unwrap()];
    let dead = env.nets.attach(&req).unwrap();
    // A live one next to it, which prune must leave alone.
    let live_id = unique("live");
    let live_ns = env.netns(&live_id);
    let live = env
        .nets
        .attach(&AttachRequest::new(
            &name,
            &live_id,
            &live_ns,
            Owner::current(),
        ))
        .unwrap();
    // And a namespace whose owner dies before it is attached at all.
    let mut sleep = Command::new("sleep");
    sleep.arg("600");
    let owner2_pid = env.spawn(sleep);
    let orphan_id = unique("orphan");
    let orphan_ns = env
        .nets
        .create_netns(&orphan_id, Owner::process(owner2_pid as i32).unwrap())
        .unwrap();
    env.netns.push(orphan_id.clone());

    let rules = iptables_rules();
    assert!(
        rules.contains(&format!("strata-port:{dead_id}\"")),
        "the attach made NAT rules naming the container:\n{rules}"
    );
    // SIGKILL, as a crashed strata or keeper gets.
    for c in env.children.iter_mut() {
        c.kill().unwrap();
        c.wait().unwrap();
    }

    let rep = env.nets.reconcile().unwrap();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(rep.detached, vec![format!("{name}/{dead_id}")]);
    assert!(
        rep.netns_removed.contains(&dead_ns) && rep.netns_removed.contains(&orphan_ns),
        "{rep:?}"
    );
    assert!(!dead_ns.exists() && !strata_net::netns::is_mounted(&dead_ns));
    assert!(!orphan_ns.exists());
    let rules = iptables_rules();
    assert!(
        !rules.contains(&format!("id: \\\"{dead_id}\\\"")),
        "prune removed the NAT rules:\n{rules}"
    );
    assert!(
        !rules.contains(&format!("--dport {port} ")),
        "prune removed the port mapping:\n{rules}"
    );
    let ports: Vec<_> = std::fs::read_dir(Path::new("/sys/class/net").join(&bridge).join("brif"))
        .unwrap()
        .collect();
    assert_eq!(ports.len(), 1, "only the live member's veth remains");
    assert_eq!(env.nets.records(Some(&name)).unwrap().len(), 1);
    let o = ping(&live_ns, &net.gateway().unwrap().to_string());
    assert!(o.status.success(), "the live member still works");

    // A second prune finds nothing more.
    let rep = env.nets.reconcile().unwrap();
    assert!(
        rep.detached.is_empty() && rep.netns_removed.is_empty() && rep.leases_released.is_empty(),
        "{rep:?}"
    );
    env.nets.detach(&name, &live_id).unwrap();
    assert_nothing_left(
        &env,
        &name,
        Some(&bridge),
        &[&dead_id, &live_id],
        &[dead.address.addr(), live.address.addr()],
    );

    // network prune removes the now unused network and its bridge.
    assert!(
        env.nets
            .prune(std::slice::from_ref(&name))
            .unwrap()
            .networks_removed
            .is_empty(),
        "a kept network stays"
    );
    let rep = env.nets.prune(&[]).unwrap();
    assert_eq!(rep.networks_removed, vec![name.clone()]);
    assert!(!Path::new("/sys/class/net").join(&bridge).exists());
}

#[test]
fn default_network_is_created_on_first_use_with_its_configured_subnet() {
    if !ready_or_skip() {
        return;
    }
    let mut env = Env::new(7);
    let bridge = env.nets.config().default_bridge.clone();
    assert!(env.nets.list().unwrap().is_empty());
    let id = unique("d");
    let ns = env.netns(&id);
    let a = env
        .nets
        .attach(&AttachRequest::new("bridge", &id, &ns, Owner::current()))
        .unwrap();
    assert!(subnet(7).contains(&a.address.addr()));
    let nets = env.nets.list().unwrap();
    assert_eq!(nets.len(), 1);
    assert_eq!(nets[0].name, "bridge");
    assert_eq!(nets[0].bridge(), Some(bridge.as_str()));
    // The conflist is an ordinary one: every plugin entry has a type, and cniVersion is set.
    let text = std::fs::read_to_string(&nets[0].path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["plugins"][0]["type"], "bridge");
    env.nets.detach("bridge", &id).unwrap();
    env.nets.remove("bridge").unwrap();
    assert!(!Path::new("/sys/class/net").join(&bridge).exists());
}

#[test]
fn prune_removes_published_port_rules_whose_record_was_lost() {
    if !ready_or_skip() {
        return;
    }
    let mut env = Env::new(7);
    let name = unique("lost");
    env.nets
        .create(&CreateRequest {
            name: name.clone(),
            subnet: Some(subnet(7)),
            gateway: None,
            pool: None,
        })
        .unwrap();
    let id = unique("lost");
    let ns = env.netns(&id);
    let mut req = AttachRequest::new(&name, &id, &ns, Owner::current());
    req.ports = vec![PortSpec::parse(&format!("127.0.0.1:{}:80", free_port())).unwrap()];
    let a = env.nets.attach(&req).unwrap();
    assert!(iptables_rules().contains(&format!("strata-port:{id}\"")));
    // The record goes by hand: the lease (host-local) and the port rule (strata's) are left
    // with nothing naming them but their own content.
    let rec = env
        .dir
        .path()
        .join(format!("state/attachments/{name}/{id}.json"));
    std::fs::remove_file(&rec).unwrap();
    let rep = env.nets.reconcile().unwrap();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert!(rep.rules_removed.iter().any(|r| r.contains(&id)), "{rep:?}");
    assert!(
        rep.leases_released
            .iter()
            .any(|l| l.contains(&a.address.addr().to_string())),
        "{rep:?}"
    );
    assert_nothing_left(&env, &name, None, &[&id], &[a.address.addr()]);
}

/// The network's pool of pre-attached namespaces: filled up to its size, a slot serves exactly
/// one member (its address, veth and namespace become the member's; no plugin runs), a member's
/// detach ends its slot for good, a cold attach is used when the pool is empty or `--ip` is
/// asked for, an unfinished slot of a dead filler is reconciled, and `remove` ends the ready
/// slots with the network: no lease, veth, namespace mount or pool file is left.
#[test]
fn pool_slots_serve_one_member_each_and_go_with_the_network() {
    if !ready_or_skip() {
        return;
    }
    let env = Env::new(8);
    let name = unique("tp");
    let net = env
        .nets
        .create(&CreateRequest {
            name: name.clone(),
            subnet: Some(subnet(8)),
            gateway: None,
            pool: Some(2),
        })
        .unwrap();
    let bridge = net.bridge().unwrap().to_string();
    assert_eq!(net.pool_size(), 2);
    assert!(env.nets.pool_wants_fill(&name));
    assert_eq!(env.nets.fill_pool(&name, &|_| {}).unwrap(), 2);
    assert!(!env.nets.pool_wants_fill(&name));
    assert_eq!(
        env.nets.fill_pool(&name, &|_| {}).unwrap(),
        0,
        "the pool is full"
    );
    let st = env.nets.pool_status(&name).unwrap();
    assert_eq!((st.size, st.ready, st.filling), (2, 2, 0));
    let pool_dir = env.dir.path().join("state/pool").join(&name);
    let slot_ids = || -> BTreeSet<String> {
        std::fs::read_dir(&pool_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let slots_before = slot_ids();
    let brif = || -> usize {
        std::fs::read_dir(Path::new("/sys/class/net").join(&bridge).join("brif"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    };
    assert_eq!(brif(), 2, "each ready slot has its veth on the bridge");

    // Three members: two take the two slots, the third finds the pool empty and goes cold.
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("m{i}-"))).collect();
    let mut addrs = Vec::new();
    for id in &ids {
        let ns = env.nets.netns_dir_of(id);
        let mut req = AttachRequest::new(&name, id, &ns, Owner::current());
        req.names = vec![format!("n-{id}")];
        let a = env.nets.attach_new_netns(&req).unwrap();
        // The member's own namespace file is the namespace that holds the address.
        let o = in_ns(&ns, &["ip", "-4", "-o", "addr", "show", "eth0"]);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&a.address.to_string()),
            "{id}'s namespace does not hold {}: {}",
            a.address,
            String::from_utf8_lossy(&o.stdout)
        );
        addrs.push(a.address.addr());
    }
    let distinct: BTreeSet<_> = addrs.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "an address was handed out twice: {addrs:?}"
    );
    let records: Vec<_> = ids
        .iter()
        .map(|id| env.nets.record(&name, id).unwrap())
        .collect();
    let taken: BTreeSet<String> = records.iter().filter_map(|r| r.cni_id.clone()).collect();
    assert_eq!(
        taken, slots_before,
        "the two members took the two ready slots"
    );
    assert!(
        records[2].cni_id.is_none(),
        "the third member attached cold"
    );
    assert!(
        slot_ids().is_empty(),
        "a taken slot is no longer in the pool"
    );
    // Members reach each other (the pooled ones included).
    let o = ping(&env.nets.netns_dir_of(&ids[0]), &addrs[2].to_string());
    assert!(
        o.status.success(),
        "pooled member cannot reach the cold one"
    );

    // --ip never takes a slot.
    env.nets.fill_pool(&name, &|_| {}).unwrap();
    let fixed = unique("fixed");
    let want: Ipv4Addr = subnet(8).hosts().nth(200).unwrap();
    let mut req = AttachRequest::new(
        &name,
        &fixed,
        &env.nets.netns_dir_of(&fixed),
        Owner::current(),
    );
    req.ip = Some(want);
    let a = env.nets.attach_new_netns(&req).unwrap();
    assert_eq!(a.address.addr(), want);
    assert!(env.nets.record(&name, &fixed).unwrap().cni_id.is_none());
    assert_eq!(env.nets.pool_status(&name).unwrap().ready, 2);

    // Detach ends the members' slots: lease, veth and the slot's namespace go.
    for id in ids.iter().chain([&fixed]) {
        env.nets.detach(&name, id).unwrap();
        env.nets.remove_netns(id).unwrap();
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for slot in &taken {
        assert!(
            !mounts.contains(slot.as_str()),
            "slot {slot}'s namespace is still mounted"
        );
    }
    assert_eq!(brif(), 2, "only the two ready slots' veths are left");

    // A filler killed between a slot's namespace and its ADD leaves an unfinished slot, which
    // reconcile ends (the dead owner is a process that has exited).
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        let o = Owner::process(c.id() as i32).unwrap();
        c.wait().unwrap();
        o
    };
    let stale = pool_dir.join("pool-0123456789abcdef.json");
    let stale_ns = pool_dir.join("pool-0123456789abcdef.ns");
    strata_net::netns::create(&stale_ns).unwrap();
    let mut rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(pool_dir.join(format!("{}.json", slot_ids().iter().next().unwrap())))
            .unwrap(),
    )
    .unwrap();
    rec["container_id"] = serde_json::json!("pool-0123456789abcdef");
    rec["netns"] = serde_json::json!(stale_ns);
    rec["owner"] = serde_json::to_value(dead).unwrap();
    rec["result"] = serde_json::Value::Null;
    std::fs::write(&stale, serde_json::to_vec(&rec).unwrap()).unwrap();
    assert_eq!(env.nets.pool_status(&name).unwrap().filling, 1);
    let rep = env.nets.reconcile().unwrap();
    assert_eq!(
        rep.pool_slots_removed,
        vec![format!("{name}/pool-0123456789abcdef")],
        "{rep:?}"
    );
    assert!(!stale.exists() && !stale_ns.exists());
    assert_eq!(
        env.nets.pool_status(&name).unwrap().ready,
        2,
        "ready slots stay"
    );

    // The conflist edited by hand: the ready slots were made from the old one and are never
    // taken; the next filler ends them and makes new ones.
    let old_slots = slot_ids();
    let conf_path = env.nets.get(&name).unwrap().path;
    let mut conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conf_path).unwrap()).unwrap();
    conf["x-edited"] = serde_json::json!(true);
    std::fs::write(&conf_path, serde_json::to_vec_pretty(&conf).unwrap()).unwrap();
    assert_eq!(
        env.nets.pool_status(&name).unwrap().ready,
        0,
        "stale slots count as ready"
    );
    assert!(env.nets.pool_wants_fill(&name));
    assert_eq!(env.nets.fill_pool(&name, &|_| {}).unwrap(), 2);
    let new_slots = slot_ids();
    assert_eq!(new_slots.len(), 2);
    assert!(new_slots.is_disjoint(&old_slots), "stale slots were kept");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for slot in &old_slots {
        assert!(
            !mounts.contains(slot.as_str()),
            "stale slot {slot} is still mounted"
        );
    }
    assert_eq!(brif(), 2, "the stale slots' veths are gone");

    // The network goes with its pool.
    let slot_ns: Vec<PathBuf> = slot_ids()
        .iter()
        .map(|s| pool_dir.join(format!("{s}.ns")))
        .collect();
    env.nets.remove(&name).unwrap();
    assert!(!pool_dir.exists(), "the pool directory is left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for ns in slot_ns {
        assert!(
            !mounts.contains(ns.to_str().unwrap()),
            "{} is still mounted",
            ns.display()
        );
    }
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "the bridge is left"
    );
    assert_nothing_left(&env, &name, None, &[], &addrs);
}

/// `--pool` beyond the limit is refused and makes nothing; a network without a pool attaches
/// cold and never starts a pool.
#[test]
fn pool_size_is_bounded_and_zero_means_none() {
    if !ready_or_skip() {
        return;
    }
    let env = Env::new(9);
    let name = unique("tq");
    let e = env
        .nets
        .create(&CreateRequest {
            name: name.clone(),
            subnet: Some(subnet(9)),
            gateway: None,
            pool: Some(strata_net::pool::MAX_POOL + 1),
        })
        .unwrap_err();
    assert!(e.to_string().contains("--pool"), "{e}");
    assert!(env.nets.get(&name).is_err(), "a refused network was made");
    env.nets
        .create(&CreateRequest {
            name: name.clone(),
            subnet: Some(subnet(9)),
            gateway: None,
            pool: Some(0),
        })
        .unwrap();
    assert!(!env.nets.pool_wants_fill(&name));
    assert_eq!(env.nets.fill_pool(&name, &|_| {}).unwrap(), 0);
    let id = unique("c");
    let req = AttachRequest::new(&name, &id, &env.nets.netns_dir_of(&id), Owner::current());
    env.nets.attach_new_netns(&req).unwrap();
    assert!(env.nets.record(&name, &id).unwrap().cni_id.is_none());
    env.nets.detach(&name, &id).unwrap();
    env.nets.remove_netns(&id).unwrap();
    assert!(!env.dir.path().join("state/pool").join(&name).exists());
}
