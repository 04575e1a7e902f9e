//! Real servers from Debian on strata's bridge networks: nginx and redis-server in an image built
//! from the host's packages (scripts/build-netservers-image.sh, cached under the target dir by
//! package versions), reached through `-p` from the host with real clients (an HTTP GET, Debian's
//! redis-cli) and by name from another container (busybox wget, redis-cli in the image); `-P`
//! publishing the image's EXPOSE ports; the default `bridge` network made on first use with its
//! configured subnet and device. Each test has its own store, root, network config directory,
//! networks and subnets, and removes them.

mod cli_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cli_common::{output_timeout, text, Sandbox};

fn ready_or_skip() -> bool {
    strata_testkit::require(
        strata_testkit::is_root()
            && Path::new("/usr/lib/cni/bridge").exists()
            && Path::new("/bin/busybox").exists()
            && Path::new("/usr/sbin/nginx").exists()
            && Path::new("/usr/bin/redis-server").exists()
            && Path::new("/usr/bin/redis-cli").exists(),
        "needs root, containernetworking-plugins, busybox-static, nginx-light, redis-server, redis-tools (scripts/deps.sh)",
    )
}

/// The netservers image's OCI layout, built once per package versions (a lock serializes the
/// test binaries that build it at the same time).
fn image_layout() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("netservers-image");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-netservers-image.sh");
    let o = Command::new("flock")
        .arg(out.with_extension("lock"))
        .arg(&script)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "building the netservers image: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    out.join("layout")
}

struct Net {
    s: Sandbox,
    conf: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Net {
    fn new() -> Net {
        Net {
            s: Sandbox::new("container"),
            conf: tempfile::Builder::new()
                .prefix("strata-cli-netsrv-")
                .tempdir()
                .unwrap(),
            env: Vec::new(),
        }
    }

    fn with_image() -> Net {
        let n = Net::new();
        let layout = image_layout();
        n.ok(&[
            "image",
            "load",
            "-i",
            layout.to_str().unwrap(),
            "-t",
            "netservers:latest",
        ]);
        n
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.s.cmd();
        c.env("STRATA_NET_CONFIG_DIR", self.conf.path()).args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
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

    /// No attachment, no namespace mount (after the releasers finished, bounded).
    fn assert_no_network_left(&self) {
        let dir = self.s.root.path().join("net/attachments");
        let count = || {
            std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|n| std::fs::read_dir(n.path()).into_iter().flatten().flatten())
                .count()
        };
        // The releaser removes a record when DEL succeeded and the namespace mount right after.
        let ns_dir = format!("{}/net/netns/", self.s.root.path().display());
        let mounted = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(&ns_dir)
        };
        self.s.eventually(
            60,
            "the network attachments and their namespaces are released",
            || count() == 0 && !mounted(),
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
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
        let _ = self.run(&["network", "rm", "bridge"]);
        let _ = std::fs::remove_dir_all(self.s.root.path().join("net"));
    }
}

fn subnet(k: u32) -> String {
    format!("10.{}.{}.0/24", 200 + k, 20 + std::process::id() % 200)
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

/// Debian's redis-cli on the host against 127.0.0.1:`port` (bounded retries while it starts).
fn redis_cli(port: u16, args: &[&str]) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        let o = Command::new("timeout")
            .args(["5", "redis-cli", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        let out = text(&o.stdout);
        if o.status.success() && !out.contains("Could not connect") && !out.is_empty() {
            return out;
        }
        last = format!("{out}{}", text(&o.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("redis-cli {args:?} on port {port}: {last}");
}

#[test]
fn debian_nginx_and_redis_through_p_and_by_name() {
    if !ready_or_skip() {
        return;
    }
    let n = Net::with_image();
    let net = format!("srv{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(0), &net]);
    let (web_port, redis_port) = (free_port(), free_port());
    n.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net,
        "-p",
        &format!("127.0.0.1:{web_port}:80"),
        "netservers",
    ]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "cache",
        "--network",
        &net,
        "-p",
        &format!("127.0.0.1:{redis_port}:6379"),
        "--entrypoint",
        "redis-server",
        "netservers",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);

    // From the host through -p: nginx answers with its own Server header, redis-cli talks RESP.
    let answer = get(web_port, "/index.html").expect("nginx answers through -p");
    assert!(answer.contains("Server: nginx"), "{answer}");
    assert!(
        answer.ends_with("served by nginx from Debian\n"),
        "{answer}"
    );
    assert_eq!(redis_cli(redis_port, &["ping"]), "PONG\n");
    assert_eq!(redis_cli(redis_port, &["set", "from-host", "42"]), "OK\n");

    // By name from another container on the network: busybox wget to nginx, redis-cli to redis
    // (the value the host wrote is there, the one written here is read back from the host).
    let out = n.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "--entrypoint",
        "sh",
        "netservers",
        "-c",
        "wget -q -O - http://web/index.html && redis-cli -h cache get from-host && redis-cli -h cache set from-peer yes",
    ]);
    assert_eq!(out, "served by nginx from Debian\n42\nOK\n");
    assert_eq!(redis_cli(redis_port, &["get", "from-peer"]), "yes\n");

    n.ok(&["rm", "-f", "web", "cache"]);
    assert!(get(web_port, "/").is_err(), "the port went with nginx");
    n.assert_no_network_left();
    n.ok(&["network", "rm", &net]);
}

#[test]
fn publish_all_publishes_the_images_exposed_ports() {
    if !ready_or_skip() {
        return;
    }
    let n = Net::with_image();
    let net = format!("pall{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(1), &net]);
    n.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net,
        "-P",
        "netservers",
    ]);
    // Both EXPOSEd ports, each on a host port strata picked.
    let ports = n.ok(&["port", "web"]);
    let host_port = |cport: &str| -> u16 {
        let line = ports
            .lines()
            .find(|l| l.starts_with(&format!("{cport} -> ")))
            .unwrap_or_else(|| panic!("{cport} is not published: {ports}"));
        line.rsplit(':').next().unwrap().parse().unwrap()
    };
    let http = host_port("80/tcp");
    let _redis = host_port("6379/tcp");
    let answer = get(http, "/index.html").expect("nginx answers through the -P mapping");
    assert!(
        answer.ends_with("served by nginx from Debian\n"),
        "{answer}"
    );
    let v: serde_json::Value = serde_json::from_str(&n.ok(&["inspect", "web"])).unwrap();
    assert_eq!(
        v[0]["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"],
        http.to_string()
    );
    n.ok(&["rm", "-f", "web"]);
    n.assert_no_network_left();
    n.ok(&["network", "rm", &net]);
}

#[test]
fn default_bridge_network_is_made_on_first_use() {
    if !ready_or_skip() {
        return;
    }
    let mut n = Net::new();
    let sn = subnet(2);
    let dev = format!("stb{}", std::process::id() % 1_000_000);
    n.env = vec![
        ("STRATA_BRIDGE_SUBNET".into(), sn.clone()),
        ("STRATA_BRIDGE_DEVICE".into(), dev.clone()),
    ];
    assert!(!n.ok(&["network", "ls"]).contains("bridge"));
    // `--network bridge` makes the default network with the configured subnet and device.
    let port = free_port();
    let id = n
        .ok(&[
            "run",
            "-d",
            "--network",
            "bridge",
            "-p",
            &format!("127.0.0.1:{port}:80"),
            "busybox",
            "sh",
            "-c",
            "ip -4 -o addr show eth0 > /tmp/index.html && exec httpd -f -p 80 -h /tmp",
        ])
        .trim()
        .to_string();
    let answer = get(port, "/index.html").expect("httpd on the default network answers");
    let prefix = &sn[..sn.len() - 4];
    assert!(answer.contains(&format!("inet {prefix}")), "{answer}");
    let v: serde_json::Value =
        serde_json::from_str(&n.ok(&["network", "inspect", "bridge"])).unwrap();
    let info = if v.is_array() { &v[0] } else { &v };
    assert_eq!(info["subnet"], sn.as_str(), "{v}");
    assert_eq!(info["bridge"], dev.as_str(), "{v}");
    assert!(Path::new("/sys/class/net").join(&dev).exists());
    // prune keeps the default network, rm removes it with its device and rules.
    n.ok(&["rm", "-f", &id]);
    n.assert_no_network_left();
    n.ok(&["network", "prune"]);
    assert!(n.ok(&["network", "ls"]).contains("bridge"));
    n.ok(&["network", "rm", "bridge"]);
    assert!(!Path::new("/sys/class/net").join(&dev).exists());
    let rules = text(&Command::new("iptables-save").output().unwrap().stdout);
    assert!(
        !rules.contains(&format!("-s {sn} ")),
        "a rule of {sn} is left:\n{rules}"
    );
    // A bad device name is refused before anything is made.
    n.env[1].1 = "no/such dev".into();
    let o = n.run(&["run", "--rm", "--network", "bridge", "busybox", "true"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("STRATA_BRIDGE_DEVICE"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        !n.conf.path().join("bridge.conflist").exists(),
        "nothing was made"
    );
    n.env[1].1 = dev;
    assert!(!n.ok(&["network", "ls"]).contains("bridge"));
}
