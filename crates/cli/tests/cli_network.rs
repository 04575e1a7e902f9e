//! `strata` on bridge networks (strata-net on Debian's CNI plugins): busybox httpd published
//! with -p and fetched from the host's loopback, reached by name and alias from another
//! container, `strata port`/`ps`/`inspect`, bad input refused with nothing left, and
//! `strata network prune` after the monitor and workload were killed with SIGKILL. Each test
//! has its own store, runtime root, network config directory, network name and subnet, and
//! only talks to addresses of the network it made.

mod cli_common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cli_common::{output_timeout, text, Sandbox};

fn ready_or_skip() -> bool {
    strata_testkit::require(
        strata_testkit::is_root()
            && Path::new("/usr/lib/cni/bridge").exists()
            && Path::new("/bin/busybox").exists(),
        "needs root, containernetworking-plugins and busybox-static (scripts/deps.sh)",
    )
}

/// A sandbox plus its own network config directory.
struct Net {
    s: Sandbox,
    conf: tempfile::TempDir,
}

impl Net {
    fn new() -> Net {
        Net {
            s: Sandbox::new("container"),
            conf: tempfile::Builder::new()
                .prefix("strata-cli-net-")
                .tempdir()
                .unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.s.cmd();
        c.env("STRATA_NET_CONFIG_DIR", self.conf.path()).args(args);
        output_timeout(c, None, Duration::from_secs(120))
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "strata {args:?} failed: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    fn fails(&self, args: &[&str]) -> (i32, String) {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "strata {args:?} succeeded: {}",
            text(&o.stdout)
        );
        (o.status.code().unwrap_or(-1), text(&o.stderr))
    }

    /// SIGKILLs a detached run's monitor and workload, as a crash would, and waits until the
    /// workload is gone.
    fn kill_monitor_and_workload(&self, id: &str) {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", id])).unwrap();
        let pid = v[0]["State"]["Pid"].as_i64().unwrap() as i32;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The workload's parent is its monitor.
        let ppid: i32 = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        for p in [ppid, pid] {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.s.eventually(10, "the workload is gone", || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
    }

    fn attachments(&self) -> Vec<String> {
        let dir = self.s.root.path().join("net/attachments");
        let mut out = Vec::new();
        for net in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            for a in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(a.file_name().to_string_lossy().into_owned());
            }
        }
        out
    }

    /// Nothing of `ids` is left: no attachment record, no namespace mount, no NAT rule. The
    /// network DEL of a finished workload runs after `strata run` returned (a detached
    /// releaser), so this waits (bounded) for the releasers still at work first.
    fn assert_no_network_left(&self, ids: &[&str]) {
        let t = std::time::Instant::now();
        // A releaser removes the attachment record after its DEL and the container's namespace
        // mount after that: the mount can outlive the record by a moment.
        while (self.releasing() || self.netns_mounted()) && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.assert_no_network_left_now(ids);
    }

    /// A container namespace mount of this sandbox exists.
    fn netns_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.s.root.path().display().to_string();
        mounts.contains(&format!("{root}/net/netns/"))
    }

    /// True while an attachment record exists whose releaser runs.
    fn releasing(&self) -> bool {
        let dir = self.s.root.path().join("net/attachments");
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|net| {
                std::fs::read_dir(net.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter_map(|a| std::fs::read(a.path()).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .any(|r| {
                r["release"]["pid"]
                    .as_i64()
                    .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
            })
    }

    fn assert_no_network_left_now(&self, ids: &[&str]) {
        assert!(
            self.attachments().is_empty(),
            "attachments left: {:?}",
            self.attachments()
        );
        assert!(!self.netns_mounted(), "a namespace mount is left");
        let rules = iptables_rules();
        for id in ids {
            assert!(
                !rules.contains(id),
                "an iptables rule of {id} is left:\n{rules}"
            );
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Containers first (Sandbox's drop would run after ours), then whatever they left,
        // then the networks.
        if let Ok(v) = serde_json::from_str::<Vec<serde_json::Value>>(&text(
            &self.run(&["ps", "-a", "--json"]).stdout,
        )) {
            for c in v {
                if let Some(id) = c["Id"].as_str() {
                    let _ = self.run(&["rm", "-f", id]);
                }
            }
        }
        let _ = self.run(&["network", "prune"]);
        let _ = std::fs::remove_dir_all(self.s.root.path().join("net"));
    }
}

fn iptables_rules() -> String {
    let mut s = String::new();
    for t in ["nat", "filter"] {
        if let Ok(o) = std::process::Command::new("iptables-save")
            .args(["-t", t])
            .output()
        {
            s.push_str(&text(&o.stdout));
        }
    }
    s
}

fn subnet(k: u32) -> String {
    format!("10.{}.{}.0/24", 180 + k, 20 + std::process::id() % 200)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from 127.0.0.1:`port` (bounded retries while the server starts).
fn get(port: u16, path: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..100 {
        match TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(2),
        ) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                    .unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1") {
                    return Ok(out);
                }
                last = out;
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

#[test]
fn published_httpd_reached_from_the_host_and_by_name() {
    if !ready_or_skip() {
        return;
    }
    let n = Net::new();
    let net = format!("web{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(0), &net]);
    assert!(n.ok(&["network", "ls"]).contains(&net));
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let id = n.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net,
        "-p",
        &publish,
        "--network-alias",
        "www",
        "busybox",
        "sh",
        "-c",
        "echo served-by-web > /tmp/index.html && exec httpd -f -p 80 -h /tmp",
    ]);
    let id = id.trim().to_string();

    // From the host's loopback through -p.
    let answer = get(port, "/index.html").expect("the published port answers");
    assert!(answer.ends_with("served-by-web\n"), "{answer}");
    assert_eq!(
        n.ok(&["port", "web"]),
        format!("80/tcp -> 127.0.0.1:{port}\n")
    );
    assert!(n.ok(&["ps"]).contains(&format!("127.0.0.1:{port}->80/tcp")));
    let v: serde_json::Value = serde_json::from_str(&n.ok(&["inspect", "web"])).unwrap();
    let ns = &v[0]["NetworkSettings"];
    assert_eq!(ns["Ports"]["80/tcp"][0]["HostPort"], port.to_string());
    let ip = ns["Networks"][&net]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip.starts_with(&subnet(0)[..subnet(0).len() - 4]), "{ip}");

    // By name and by alias from another container on the network; its /etc/hosts and
    // /etc/resolv.conf are written as Docker writes them.
    let out = n.ok(&[
        "run", "--rm", "--network", &net, "busybox", "sh", "-c",
        "wget -q -O - http://web/index.html && wget -q -O - http://www/index.html && cat /etc/hosts /etc/resolv.conf",
    ]);
    assert!(
        out.starts_with("served-by-web\nserved-by-web\n127.0.0.1\tlocalhost\n"),
        "{out}"
    );
    assert!(out.contains(&format!("{ip}\tweb www\n")), "{out}");
    assert!(out.contains("nameserver "), "{out}");

    // In use: rm refuses.
    let (code, err) = n.fails(&["network", "rm", &net]);
    assert!(code != 0 && err.contains("in use"), "{err}");

    n.ok(&["rm", "-f", "web"]);
    assert!(
        get(port, "/index.html").is_err(),
        "the port went with the container"
    );
    n.assert_no_network_left(&[&id]);
    n.ok(&["network", "rm", &net]);
    assert!(!n.ok(&["network", "ls"]).contains(&net));
    assert_no_rule_of_network(&net);
}

/// No iptables rule names network `net` (strata's network-wide rules went with it).
fn assert_no_rule_of_network(net: &str) {
    let rules = iptables_rules();
    assert!(
        !rules.contains(&format!("strata network {net}\"")),
        "a rule of network {net} is left:\n{rules}"
    );
}

/// The packet counter of the MASQUERADE rule in network `net`'s chain.
fn masquerade_packets(net: &str) -> u64 {
    let o = std::process::Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "POSTROUTING"])
        .output()
        .unwrap();
    let chain = text(&o.stdout)
        .lines()
        .find(|l| l.contains(&format!("strata network {net}\"")))
        .and_then(|l| l.split_whitespace().last().map(String::from))
        .unwrap_or_else(|| panic!("no masquerade jump of network {net}: {}", text(&o.stdout)));
    let o = std::process::Command::new("iptables")
        .args(["-w", "-t", "nat", "-L", &chain, "-v", "-x", "-n"])
        .output()
        .unwrap();
    text(&o.stdout)
        .lines()
        .find(|l| l.contains("MASQUERADE"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no MASQUERADE rule in {chain}: {}", text(&o.stdout)))
}

#[test]
fn network_rules_masquerade_members_and_go_with_the_network() {
    if !ready_or_skip() {
        return;
    }
    let n = Net::new();
    let net = format!("masq{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(4), &net]);
    // The conflist leaves masquerading to strata's one rule for the whole subnet.
    let conf = std::fs::read_to_string(n.conf.path().join(format!("{net}.conflist"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&conf).unwrap();
    assert_eq!(v["plugins"][0]["ipMasq"], false, "{conf}");
    let before = masquerade_packets(&net);
    // A packet to an address outside the subnet (TEST-NET-1, routed out of the host by its
    // default route; no answer is needed) passes the network's MASQUERADE rule.
    n.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "busybox",
        "sh",
        "-c",
        "ping -c 2 -W 1 192.0.2.1 >/dev/null 2>&1; true",
    ]);
    assert!(
        masquerade_packets(&net) > before,
        "the member's packet to 192.0.2.1 was not masqueraded"
    );
    // Hairpin through a published port (strata's DNAT and its masquerade of DNATed member
    // connections): a peer and the server itself reach it at the gateway's address.
    let port = free_port();
    let gw = format!("{}1", &subnet(4)[..subnet(4).len() - 4]);
    let id = n
        .ok(&[
            "run",
            "-d",
            "--name",
            "hp",
            "--network",
            &net,
            "-p",
            &format!("{port}:80"),
            "busybox",
            "sh",
            "-c",
            "echo hairpin > /tmp/index.html && exec httpd -f -p 80 -h /tmp",
        ])
        .trim()
        .to_string();
    assert!(get(port, "/index.html").is_ok());
    let url = format!("http://{gw}:{port}/index.html");
    // busybox 1.35's wget crashes with -T; timeout(1) bounds it.
    let out = n.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "busybox",
        "timeout",
        "10",
        "wget",
        "-q",
        "-O",
        "-",
        &url,
    ]);
    assert_eq!(out, "hairpin\n");
    let out = n.ok(&["exec", "hp", "timeout", "10", "wget", "-q", "-O", "-", &url]);
    assert_eq!(out, "hairpin\n");
    // Rules someone removed come back: prune forgets that they were seen, the next attach
    // checks and restores them (the running `hp` keeps the network from being pruned).
    let jump = std::process::Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "POSTROUTING"])
        .output()
        .unwrap();
    let line = text(&jump.stdout)
        .lines()
        .find(|l| l.contains(&format!("strata network {net}\"")))
        .unwrap()
        .to_string();
    let chain = line.split_whitespace().last().unwrap().to_string();
    let src = subnet(4);
    let del = std::process::Command::new("iptables")
        .args([
            "-w",
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-s",
            &src,
            "-m",
            "comment",
            "--comment",
        ])
        .arg(format!("strata network {net}"))
        .args(["-j", &chain])
        .status()
        .unwrap();
    assert!(del.success(), "removing {line}");
    n.ok(&["network", "prune"]);
    n.ok(&["run", "--rm", "--network", &net, "busybox", "true"]);
    let before = masquerade_packets(&net);
    n.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "busybox",
        "sh",
        "-c",
        "ping -c 2 -W 1 192.0.2.1 >/dev/null 2>&1; true",
    ]);
    assert!(
        masquerade_packets(&net) > before,
        "the masquerade rule was not restored"
    );
    n.ok(&["rm", "-f", &id]);
    n.assert_no_network_left(&[&id]);
    n.ok(&["network", "rm", &net]);
    assert_no_rule_of_network(&net);
}

#[test]
fn run_rm_releases_its_network_after_returning_and_nothing_leaks() {
    if !ready_or_skip() {
        return;
    }
    let n = Net::new();
    let net = format!("rel{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(5), &net]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    // The same published port, back to back: the second run waits for (or finishes) the
    // first one's release instead of failing with "already published".
    for _ in 0..3 {
        n.ok(&[
            "run",
            "--rm",
            "--network",
            &net,
            "-p",
            &publish,
            "busybox",
            "true",
        ]);
    }
    n.assert_no_network_left(&[]);

    // The releaser killed before its DEL: the attachment is left with dead processes only;
    // the next run wanting its port finishes it, prune finishes the rest.
    let o = {
        let mut c = n.s.cmd();
        c.env("STRATA_NET_CONFIG_DIR", n.conf.path())
            .env("STRATA_KILL_POINT", "net:releasing")
            .args([
                "run",
                "--rm",
                "--network",
                &net,
                "-p",
                &publish,
                "busybox",
                "true",
            ]);
        output_timeout(c, None, Duration::from_secs(120))
    };
    assert!(o.status.success(), "{}", text(&o.stderr));
    if !cfg!(feature = "kill-points") {
        return; // without the kill points the releaser was not killed
    }
    assert_eq!(
        n.attachments().len(),
        1,
        "the killed releaser left the attachment"
    );
    n.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "-p",
        &publish,
        "busybox",
        "true",
    ]);
    n.assert_no_network_left(&[]);

    let o = {
        let mut c = n.s.cmd();
        c.env("STRATA_NET_CONFIG_DIR", n.conf.path())
            .env("STRATA_KILL_POINT", "net:releasing")
            .args([
                "run",
                "--rm",
                "--network",
                &net,
                "-p",
                &publish,
                "busybox",
                "true",
            ]);
        output_timeout(c, None, Duration::from_secs(120))
    };
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        n.attachments().len(),
        1,
        "the killed releaser left the attachment"
    );
    let out = n.ok(&["network", "prune"]);
    assert!(out.contains(&format!("detached {net}/")), "{out}");
    n.assert_no_network_left_now(&[]);
    // Nothing names the network any more: prune removed it, with its rules.
    assert!(out.contains(&format!("removed network {net}")), "{out}");
    assert_no_rule_of_network(&net);
}

#[test]
fn bad_network_input_is_refused_and_leaves_nothing() {
    if !ready_or_skip() {
        return;
    }
    let n = Net::new();
    let net = format!("bad{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(1), &net]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--rm", "--network", "no-such-net", "busybox", "true"],
            "not found",
        ),
        (
            &[
                "run",
                "--rm",
                "--network",
                &net,
                "-p",
                "80:80/sctp",
                "busybox",
                "true",
            ],
            "sctp",
        ),
        (
            &[
                "run",
                "--rm",
                "--network",
                &net,
                "-p",
                "99999:80",
                "busybox",
                "true",
            ],
            "65535",
        ),
        (
            &[
                "run",
                "--rm",
                "--network",
                &net,
                "--ip",
                "192.0.2.5",
                "busybox",
                "true",
            ],
            "--ip",
        ),
        (
            &["run", "--rm", "-p", "8080:80", "busybox", "true"],
            "bridge network",
        ),
        (
            &[
                "run",
                "--rm",
                "--network",
                &net,
                "--network-alias",
                "a b",
                "busybox",
                "true",
            ],
            "alias",
        ),
        (
            &["network", "create", "--subnet", &subnet(1), "other"],
            "overlaps",
        ),
        (
            &[
                "run",
                "--rm",
                "--network",
                &net,
                "-p",
                "[::1]:8080:80",
                "busybox",
                "true",
            ],
            "IPv4 only",
        ),
        (&["network", "create", "../x"], "invalid network name"),
        (&["network", "create", &net], "already exists"),
        (&["network", "inspect", "no-such-net"], "not found"),
    ];
    for (args, want) in cases {
        let (code, err) = n.fails(args);
        assert!(code != 0, "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A host port someone listens on.
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let held = l.local_addr().unwrap().port();
    let (code, err) = n.fails(&[
        "run",
        "--rm",
        "--network",
        &net,
        "-p",
        &format!("{held}:80"),
        "busybox",
        "true",
    ]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("in use on the host"), "{err}");
    assert!(n.s.ps().is_empty(), "no container is left");
    n.assert_no_network_left(&[]);
    n.ok(&["network", "rm", &net]);
}

#[test]
fn network_prune_after_the_monitor_and_workload_were_killed() {
    if !ready_or_skip() {
        return;
    }
    let n = Net::new();
    let net = format!("kill{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(2), &net]);
    let port = free_port();
    let id = n.ok(&[
        "run",
        "-d",
        "--network",
        &net,
        "-p",
        &format!("127.0.0.1:{port}:80"),
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    ]);
    let id = id.trim().to_string();
    assert!(get(port, "/").is_ok());
    assert!(iptables_rules().contains(&id), "the run made NAT rules");
    n.kill_monitor_and_workload(&id);
    assert_eq!(
        n.attachments().len(),
        1,
        "the killed run left its attachment"
    );

    let out = n.ok(&["network", "prune"]);
    assert!(out.contains(&format!("detached {net}/{id}")), "{out}");
    // The container still exists (and names the network): the network stays.
    assert!(!out.contains(&format!("removed network {net}")), "{out}");
    n.assert_no_network_left(&[&id]);
    assert!(get(port, "/").is_err());
    n.ok(&["rm", "-f", &id]);
    let out = n.ok(&["network", "prune"]);
    assert!(out.contains(&format!("removed network {net}")), "{out}");
    assert!(!n.ok(&["network", "ls"]).contains(&net));
}

#[test]
fn twenty_concurrent_runs_get_twenty_addresses() {
    if !ready_or_skip() {
        return;
    }
    let n = Net::new();
    let net = format!("many{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(3), &net]);
    let outs: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20)
            .map(|_| {
                let (n, net) = (&n, &net);
                s.spawn(move || {
                    n.run(&[
                        "run",
                        "--rm",
                        "--network",
                        net,
                        "busybox",
                        "ip",
                        "-4",
                        "-o",
                        "addr",
                        "show",
                        "eth0",
                    ])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs = std::collections::BTreeSet::new();
    for o in &outs {
        assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
        let out = text(&o.stdout);
        let addr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        assert!(addr.starts_with(&subnet(3)[..subnet(3).len() - 4]), "{out}");
        addrs.insert(addr);
    }
    assert_eq!(addrs.len(), 20, "{addrs:?}");
    n.assert_no_network_left(&[]);
    n.ok(&["network", "rm", &net]);
}

/// The network's pre-attached namespaces (`--pool`, 2 by default): a run takes a ready one (its
/// attachment names the slot; no plugin ran), the pool is refilled off the run's path, a filler
/// killed mid-slot leaves an unfinished slot that the next filler or `network prune` ends, a
/// killed pooled run is undone by prune like any other, and `network rm` takes the pool with
/// the network: no namespace mount, veth or bridge is left.
#[test]
fn runs_take_pre_attached_namespaces_and_the_pool_goes_with_the_network() {
    if !ready_or_skip() {
        return;
    }
    let n = Net::new();
    let net = format!("pool{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(6), &net]);
    let pool_dir = n.s.root.path().join("net/pool").join(&net);
    let status = || -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&n.ok(&["network", "inspect", &net])).unwrap();
        v[0]["pool"].clone()
    };
    let filler_running = || {
        std::fs::read_to_string(pool_dir.join("filling"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|o| o["pid"].as_i64())
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
    };
    let settled = |what: &str| {
        n.s.eventually(60, what, || {
            !filler_running() && !n.releasing() && status()["ready"] == 2
        })
    };
    assert_eq!(status()["size"], 2);
    // The first run attaches cold and starts the filler.
    n.ok(&["run", "--rm", "--network", &net, "busybox", "true"]);
    settled("the pool is filled after the first run");
    let ready: BTreeSet<String> = std::fs::read_dir(&pool_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ready.len(), 2);

    // A detached run takes one of them: its namespace holds the slot's address.
    let id = n
        .ok(&["run", "-d", "--network", &net, "busybox", "sleep", "600"])
        .trim()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&n.ok(&["network", "inspect", &net])).unwrap();
    let member = &v[0]["containers"][0];
    assert_eq!(member["container_id"], id.as_str());
    let slot = member["cni_id"]
        .as_str()
        .expect("the run took a pooled namespace");
    assert!(
        ready.contains(slot),
        "{slot} was not a ready slot: {ready:?}"
    );
    let addr = n.ok(&["exec", &id, "ip", "-4", "-o", "addr", "show", "eth0"]);
    let want = member["result"]["ips"][0]["address"].as_str().unwrap();
    assert!(
        addr.contains(want),
        "the container has not the slot's address {want}: {addr}"
    );
    settled("the pool is refilled after the pooled run");

    // The pooled run's monitor and workload killed: prune undoes it, the slot's namespace too.
    n.kill_monitor_and_workload(&id);
    let out = n.ok(&["network", "prune"]);
    assert!(out.contains(&format!("detached {net}/{id}")), "{out}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(slot),
        "the taken slot's namespace is still mounted"
    );
    n.ok(&["rm", "-f", &id]);
    // A stopped container that names the network keeps prune from removing it.
    let keeper = n
        .ok(&["create", "--network", &net, "busybox", "true"])
        .trim()
        .to_string();

    if cfg!(feature = "kill-points") {
        // The filler killed between a slot's namespace and its ADD (the run itself is fine).
        let o = {
            let mut c = n.s.cmd();
            c.env("STRATA_NET_CONFIG_DIR", n.conf.path())
                .env("STRATA_KILL_POINT", "net:pool-filling")
                .args(["run", "--rm", "--network", &net, "busybox", "true"]);
            output_timeout(c, None, Duration::from_secs(120))
        };
        assert!(o.status.success(), "{}", text(&o.stderr));
        n.s.eventually(60, "the killed filler left an unfinished slot", || {
            !filler_running() && !n.releasing() && status()["filling"] == 1
        });
        let out = n.ok(&["network", "prune"]);
        assert!(
            out.contains("removed unfinished pre-attached namespace"),
            "{out}"
        );
        assert_eq!(status()["filling"], 0);
        // Killed again; this time the next run's filler ends it and fills the pool.
        let mut c = n.s.cmd();
        c.env("STRATA_NET_CONFIG_DIR", n.conf.path())
            .env("STRATA_KILL_POINT", "net:pool-filling")
            .args(["run", "--rm", "--network", &net, "busybox", "true"]);
        assert!(output_timeout(c, None, Duration::from_secs(120))
            .status
            .success());
        n.s.eventually(60, "the killed filler is done", || {
            !filler_running() && !n.releasing()
        });
        n.ok(&["run", "--rm", "--network", &net, "busybox", "true"]);
        n.s.eventually(60, "the next filler swept the unfinished slot", || {
            let s = status();
            !filler_running() && !n.releasing() && s["filling"] == 0 && s["ready"] == 2
        });
    }

    // rm takes the pool with the network.
    n.ok(&["rm", &keeper]);
    let v: serde_json::Value = serde_json::from_str(&n.ok(&["network", "inspect", &net])).unwrap();
    let bridge = v[0]["bridge"].as_str().unwrap().to_string();
    n.ok(&["network", "rm", &net]);
    assert!(!pool_dir.exists(), "the pool directory is left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = n.s.root.path().display().to_string();
    assert!(
        !mounts.contains(&format!("{root}/net/pool/")),
        "a pool namespace is still mounted"
    );
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "the bridge {bridge} is left"
    );
    n.assert_no_network_left(&[&id]);
}
