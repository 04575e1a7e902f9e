//! strata-oci's VM path on a network namespace an engine prepared: as Podman (CNI mode) and
//! containerd's `ctr run --cni` do, the test makes a named namespace, runs Debian's CNI bridge
//! plugin (host-local IPAM) into it itself, and hands strata-oci a config.json whose network
//! namespace has that `path` and whose /etc/hosts is a bind mount of a host file. The VM takes
//! over the namespace's eth0: busybox httpd in the guest is fetched from the host over the bridge
//! at the address the plugin gave, the guest's /etc/hosts is the engine's file, and after
//! `delete` the tap is gone from the namespace (the engine's DEL then removes the rest).

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
    bridge: String,
    conf: Value,
    _ipam: tempfile::TempDir,
    added: bool,
}

impl EngineNet {
    fn netns(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
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
    let subnet = format!("10.196.{}.0/24", pid % 250);
    let prefix = &subnet[..subnet.len() - 4];
    let ipam = tempfile::tempdir().unwrap();
    let mut net = EngineNet {
        name: format!("strata-vmoci-{pid}"),
        bridge: format!("stvo{}", pid % 100_000),
        conf: json!({
            "cniVersion": "1.0.0",
            "name": format!("strata-vmoci-{pid}"),
            "type": "bridge",
            "bridge": format!("stvo{}", pid % 100_000),
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
        c["annotations"] = json!({"dev.strata.isolation": "vm"});
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
