//! `strata run --vm` on bridge networks, on both platforms (UML, and QEMU under TCG here: the
//! `qemu_` tests): the VM's namespace is attached by the same CNI plugins as a container's, the
//! guest's NIC (UML's vector driver, QEMU's virtio-net) takes over its veth (tap + tc mirred), and
//! the agent configures eth0, the default route, /etc/hosts and /etc/resolv.conf. Real servers and
//! clients: busybox httpd in a VM reached through `-p` from the host's loopback, a container
//! reaching a VM by name and a VM reaching a container by name; bad input leaves nothing; after
//! SIGKILL of the monitor and the keeper, `rm -f` and `strata network prune` leave no VM,
//! attachment, namespace, tap or NAT rule. Each test has its own store, runtime root, network
//! config directory, network name and subnet.

mod cli_common;

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

/// The VM platforms the tests run on: UML (the default, no flag) and QEMU.
const UML: &[&str] = &[];
const QEMU: &[&str] = &["--platform", "qemu"];

/// A sandbox plus its own network config directory, and the VM platform of its `--vm` runs.
struct Net {
    s: Sandbox,
    conf: tempfile::TempDir,
    platform: &'static [&'static str],
}

impl Net {
    fn new(platform: &'static [&'static str]) -> Net {
        Net {
            s: Sandbox::new("vm"),
            conf: tempfile::Builder::new()
                .prefix("strata-cli-vmnet-")
                .tempdir()
                .unwrap(),
            platform,
        }
    }

    /// `strata ARGS`, with the platform's flags after `--vm`.
    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.s.cmd();
        c.env("STRATA_NET_CONFIG_DIR", self.conf.path());
        for (k, v) in env {
            c.env(k, v);
        }
        for a in args {
            c.arg(a);
            if *a == "--vm" {
                c.args(self.platform);
            }
        }
        output_timeout(c, None, Duration::from_secs(180))
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
        self.fails_env(args, &[])
    }

    fn fails_env(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
        let o = self.run_env(args, env);
        assert!(
            !o.status.success(),
            "strata {args:?} succeeded: {}",
            text(&o.stdout)
        );
        (o.status.code().unwrap_or(-1), text(&o.stderr))
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

    /// Nothing of `ids` is left: no attachment record, lease, namespace mount, NAT rule or
    /// VM state.
    fn assert_no_network_left(&self, ids: &[&str]) {
        assert!(
            self.attachments().is_empty(),
            "attachments left: {:?}",
            self.attachments()
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.s.root.path().display().to_string();
        assert!(
            !mounts.contains(&format!("{root}/net/netns/")),
            "a namespace mount is left"
        );
        // Leases of the networks' pre-attached namespaces (pool slots) are the network's, not
        // an instance's: they go with `network rm`.
        let pool = self.s.root.path().join("net/pool");
        let pooled = |id: &str| {
            std::fs::read_dir(&pool)
                .into_iter()
                .flatten()
                .flatten()
                .any(|n| n.path().join(format!("{id}.json")).exists())
        };
        let leases: Vec<_> = walk(&self.s.root.path().join("net/ipam"))
            .into_iter()
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.parse::<std::net::Ipv4Addr>().is_ok()
            })
            .filter(|p| {
                let holder = std::fs::read_to_string(p).unwrap_or_default();
                !pooled(holder.lines().next().unwrap_or_default().trim())
            })
            .collect();
        assert!(leases.is_empty(), "leases left: {leases:?}");
        let rules = iptables_rules();
        for id in ids {
            assert!(
                !rules.contains(id),
                "an iptables rule of {id} is left:\n{rules}"
            );
            assert!(
                !self.s.root.path().join("vm").join(id).exists(),
                "VM state of {id} is left"
            );
        }
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
        let _ = std::fs::remove_dir_all(self.s.root.path().join("net"));
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
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

/// Subnets apart from cli_network.rs's (10.180-183.x): 10.190-192.x for UML, 10.193-195.x for QEMU.
fn subnet(k: u32) -> String {
    format!("10.{}.{}.0/24", 190 + k, 20 + std::process::id() % 200)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from 127.0.0.1:`port` (bounded retries while the VM boots and the server starts).
fn get(port: u16, path: &str, tries: u32) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..tries {
        match TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(2),
        ) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
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

const HTTPD: &str = "exec httpd -f -p 80 -h /tmp";

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn vm_httpd_published_and_names_between_vms_and_containers() {
    httpd_published_and_names(UML, 0);
}

#[test]
fn qemu_vm_httpd_published_and_names_between_vms_and_containers() {
    httpd_published_and_names(QEMU, 3);
}

fn httpd_published_and_names(platform: &'static [&'static str], k: u32) {
    if !ready_or_skip() {
        return;
    }
    let n = Net::new(platform);
    let net = format!("vmweb{k}{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(k), &net]);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let vm = n.ok(&[
        "run",
        "-d",
        "--vm",
        "--name",
        "vmweb",
        "--network",
        &net,
        "-p",
        &publish,
        "busybox",
        "sh",
        "-c",
        &format!("echo served-by-vm > /tmp/index.html && {HTTPD}"),
    ]);
    let vm = vm.trim().to_string();

    // From the host's loopback through -p (portmap's DNAT to the veth, redirected to the guest).
    let answer = get(port, "/index.html", 300).expect("the VM's published port answers");
    assert!(answer.ends_with("served-by-vm\n"), "{answer}");
    let v: serde_json::Value = serde_json::from_str(&n.ok(&["inspect", "vmweb"])).unwrap();
    let vm_ip = v[0]["NetworkSettings"]["Networks"][&net]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    // The VM runs on the platform asked for, and its NIC has the MAC of the veth it took over.
    let want = if platform.is_empty() { "uml" } else { "qemu" };
    assert_eq!(v[0]["Vm"]["Platform"], want, "{v}");
    let mac = v[0]["NetworkSettings"]["Networks"][&net]["MacAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        n.ok(&["exec", "vmweb", "cat", "/sys/class/net/eth0/address"]),
        format!("{mac}\n")
    );

    // A container reaches the VM by name (its /etc/hosts names the VM).
    let out = n.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://vmweb/index.html",
    ]);
    assert_eq!(out, "served-by-vm\n");

    // A VM reaches a container by name; its eth0 has the address the host got, and its
    // /etc/hosts and /etc/resolv.conf are the ones a container gets.
    let ct = n.ok(&[
        "run",
        "-d",
        "--name",
        "ctweb",
        "--network",
        &net,
        "busybox",
        "sh",
        "-c",
        &format!("echo served-by-container > /tmp/index.html && {HTTPD}"),
    ]);
    let ct = ct.trim().to_string();
    // The VM that started before it learns its name: the keeper pushes the rewritten hosts file.
    let out = n.ok(&[
        "exec",
        "vmweb",
        "sh",
        "-c",
        "for i in $(seq 50); do grep -q ctweb /etc/hosts && break; sleep 0.1; done; wget -q -O - http://ctweb/index.html",
    ]);
    assert_eq!(out, "served-by-container\n");
    let out = n.ok(&[
        "run",
        "--rm",
        "--vm",
        "--name",
        "vmclient",
        "--network",
        &net,
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://ctweb/index.html && break; sleep 1; done; \
         wget -q -O - http://vmweb/index.html; ip -4 -o addr show eth0; ip route; cat /etc/hosts /etc/resolv.conf",
    ]);
    assert!(
        out.starts_with("served-by-container\nserved-by-vm\n"),
        "{out}"
    );
    assert!(out.contains("eth0"), "{out}");
    assert!(
        out.contains(&format!("default via {}", gateway_of(&subnet(k)))),
        "{out}"
    );
    assert!(out.contains("127.0.0.1\tlocalhost\n"), "{out}");
    assert!(out.contains(&format!("{vm_ip}\tvmweb\n")), "{out}");
    assert!(out.contains("\tctweb\n"), "{out}");
    assert!(out.contains("nameserver "), "{out}");

    n.ok(&["rm", "-f", "vmweb", "ctweb"]);
    assert!(
        get(port, "/index.html", 1).is_err(),
        "the port went with the VM"
    );
    n.assert_no_network_left(&[&vm, &ct]);
    n.ok(&["network", "rm", &net]);
}

fn gateway_of(subnet: &str) -> String {
    format!("{}1", &subnet[..subnet.len() - 4])
}

#[test]
fn vm_bad_network_input_is_refused_and_leaves_nothing() {
    if let Some(n) = bad_network_input(UML, 1) {
        n.ok(&["network", "rm", &format!("vmbad1{}", std::process::id())]);
    }
}

/// On qemu also: a kernel without virtio-net is refused before anything is made, and a QEMU that
/// fails after the network was attached (a binary that exits at once, as a QEMU refusing its
/// command line would) leaves nothing either.
#[test]
fn qemu_vm_bad_network_input_and_failed_start_leave_nothing() {
    let Some(n) = bad_network_input(QEMU, 4) else {
        return;
    };
    let net = format!("vmbad4{}", std::process::id());
    // strata's qemu kernel, with a configuration beside it that has no virtio-net.
    let kernel = strata_vmm::default_kernel("qemu").expect("a qemu guest kernel is built");
    let dir = tempfile::tempdir().unwrap();
    let bz = dir.path().join("bzImage");
    std::fs::copy(&kernel.path, &bz).unwrap();
    let config = std::fs::read_to_string(kernel.path.with_file_name("config")).unwrap();
    assert!(
        config.contains("CONFIG_VIRTIO_NET=y\n"),
        "{} is not built from this tree's guest/qemu.config: run scripts/build-guest-kernel.sh qemu",
        kernel.path.display()
    );
    std::fs::write(
        dir.path().join("config"),
        config.replace("CONFIG_VIRTIO_NET=y\n", "# CONFIG_VIRTIO_NET is not set\n"),
    )
    .unwrap();
    let (_, err) = n.fails(&[
        "run",
        "--rm",
        "--vm",
        "--kernel",
        bz.to_str().unwrap(),
        "--network",
        &net,
        "busybox",
        "true",
    ]);
    assert!(
        err.contains("CONFIG_VIRTIO_NET (the NIC of --network)"),
        "{err}"
    );
    // A QEMU that exits at once, after the attachment and the tap were made.
    let (_, err) = n.fails_env(
        &["run", "--rm", "--vm", "--network", &net, "busybox", "true"],
        &[("STRATA_QEMU", "/bin/false")],
    );
    assert!(err.contains("the guest agent did not answer"), "{err}");
    // The cause: the VM process itself ended, and how.
    assert!(
        err.contains("the VM process (qemu) ended with exit status: 1"),
        "{err}"
    );
    assert!(n.s.ps().is_empty(), "no container is left");
    // The detached releaser removes the attachment record when DEL succeeded and the
    // namespace mount right after it: wait for both.
    let ns_dir = format!("{}/net/netns/", n.s.root.path().display());
    n.s.eventually(30, "the failed run's network is released", || {
        n.attachments().is_empty()
            && !std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(&ns_dir)
    });
    n.assert_no_network_left(&[]);
    assert_no_vm_state(&n);
    n.ok(&["network", "rm", &net]);
}

fn assert_no_vm_state(n: &Net) {
    let vm_state = n.s.root.path().join("vm");
    let left: Vec<_> = std::fs::read_dir(&vm_state)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "VM state left: {left:?}");
}

/// Bad input refused with nothing left; returns the sandbox with its network `vmbad<k><pid>`
/// still there (removed again on drop).
fn bad_network_input(platform: &'static [&'static str], k: u32) -> Option<Net> {
    if !ready_or_skip() {
        return None;
    }
    let n = Net::new(platform);
    let net = format!("vmbad{k}{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(k), &net]);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "run",
                "--rm",
                "--vm",
                "--network",
                "no-such-net",
                "busybox",
                "true",
            ],
            "not found",
        ),
        (
            &[
                "run",
                "--rm",
                "--vm",
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
                "--vm",
                "--network",
                "host",
                "busybox",
                "true",
            ],
            "--network host",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = n.fails(args);
        assert!(code != 0, "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(n.s.ps().is_empty(), "no container is left");
    n.assert_no_network_left(&[]);
    assert_no_vm_state(&n);
    Some(n)
}

#[test]
fn vm_keeper_and_monitor_killed_then_rm_and_prune_leave_nothing() {
    killed_then_rm_and_prune(UML, 2);
}

#[test]
fn qemu_vm_keeper_and_monitor_killed_then_rm_and_prune_leave_nothing() {
    killed_then_rm_and_prune(QEMU, 5);
}

fn killed_then_rm_and_prune(platform: &'static [&'static str], k: u32) {
    if !ready_or_skip() {
        return;
    }
    let n = Net::new(platform);
    let net = format!("vmkill{k}{}", std::process::id());
    n.ok(&["network", "create", "--subnet", &subnet(k), &net]);
    let port = free_port();
    let id = n.ok(&[
        "run",
        "-d",
        "--vm",
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
    assert!(get(port, "/", 300).is_ok(), "the VM serves");
    assert!(iptables_rules().contains(&id), "the run made NAT rules");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(n.s.root.path().join("vm").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let keeper = state["keeper_pid"].as_i64().unwrap() as i32;
    let vm_pid = state["vm_pid"].as_i64().unwrap() as i32;
    // The keeper's parent is the monitor, which owns the attachment: SIGKILL both, as a crash
    // would.
    let stat = std::fs::read_to_string(format!("/proc/{keeper}/stat")).unwrap();
    let monitor: i32 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    for p in [monitor, keeper] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    n.s.eventually(10, "the keeper is gone", || !pid_alive(keeper));
    assert_eq!(
        n.attachments().len(),
        1,
        "the killed run left its attachment"
    );

    // rm -f ends the VM (its tap goes with it); prune undoes the attachment (veth, lease, NAT,
    // namespace).
    n.ok(&["rm", "-f", &id]);
    n.s.eventually(10, "the VM is gone", || !pid_alive(vm_pid));
    let out = n.ok(&["network", "prune"]);
    assert!(out.contains(&format!("removed network {net}")), "{out}");
    n.assert_no_network_left(&[&id]);
    assert!(get(port, "/", 1).is_err());
    assert!(!n.ok(&["network", "ls"]).contains(&net));
}
