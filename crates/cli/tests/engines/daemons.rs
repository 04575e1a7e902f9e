//! Starting containerd and dockerd privately: every path they write (root, state, sockets, shim and
//! runc roots, the `opt` plugin dir, dockerd's key) is inside the sandbox, and the sandbox stops them.

use super::command::{run, wait_for};
use super::sandbox::Sandbox;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A running private containerd.
pub struct Containerd {
    /// The gRPC socket (`ctr -a`, `dockerd --containerd`).
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// Starts `containerd --config C` with everything under `sb/containerd`. `extra_toml` is appended to
/// the config (for the CRI test); when `with_cri` is false the CRI plugin is disabled.
pub fn start_containerd(sb: &mut Sandbox, with_cri: bool, extra_toml: &str) -> Containerd {
    let base = sb.path("containerd");
    fs::create_dir_all(&base).expect("create containerd dir");
    let socket = base.join("c.sock");
    let config = base.join("config.toml");
    let log = base.join("containerd.log");
    let disabled = if with_cri {
        ""
    } else {
        "\"io.containerd.grpc.v1.cri\""
    };
    let toml = format!(
        r#"version = 2
root = "{b}/root"
state = "{b}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{b}/c.sock"
[ttrpc]
  address = "{b}/c.sock.ttrpc"
[debug]
  address = "{b}/debug.sock"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"
{extra_toml}
"#,
        b = base.display()
    );
    fs::write(&config, toml).expect("write containerd config");
    let log_file = fs::File::create(&log).expect("create containerd log");
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("containerd log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn containerd (install it: scripts/engines-deps.sh)");
    let ready = wait_ready(sb, child, Duration::from_secs(30), || {
        run(
            Command::new("ctr").arg("-a").arg(&socket).arg("version"),
            Duration::from_secs(5),
        )
        .ok()
        .map(|_| ())
    });
    if let Err(e) = ready {
        panic!(
            "containerd did not come up: {e}\n--- containerd log ---\n{}",
            tail(&log)
        );
    }
    Containerd {
        socket,
        config,
        log,
    }
}

/// A running private dockerd.
pub struct Dockerd {
    /// `unix://...` for `docker -H`.
    pub host: String,
    pub log: PathBuf,
}

/// Starts dockerd with the issue's flags (no iptables, no bridge, vfs, private data/exec roots) on
/// `containerd`, with the given `--add-runtime` entries and daemon.json (`runtimes` with args).
pub fn start_dockerd(
    sb: &mut Sandbox,
    containerd: &Path,
    add_runtimes: &[(String, PathBuf)],
    daemon_json: &serde_json::Value,
) -> Dockerd {
    // dockerd 20.10 writes these outside its roots, with no flag to move them.
    for p in ["/etc/docker/key.json", "/run/docker/plugins", "/run/docker"] {
        sb.remove_if_created(p);
    }
    let base = sb.path("docker");
    fs::create_dir_all(&base).expect("create docker dir");
    let host = format!("unix://{}/d.sock", base.display());
    let log = base.join("dockerd.log");
    let config_file = base.join("daemon.json");
    fs::write(
        &config_file,
        serde_json::to_vec_pretty(daemon_json).unwrap(),
    )
    .unwrap();
    let mut cmd = Command::new("dockerd");
    cmd.args([
        "--iptables=false",
        "--ip6tables=false",
        "--ip-forward=false",
        "--bridge=none",
        "--storage-driver=vfs",
    ])
    .arg("--data-root")
    .arg(base.join("data"))
    .arg("--exec-root")
    .arg(base.join("exec"))
    .arg("-H")
    .arg(&host)
    .arg("--containerd")
    .arg(containerd)
    .arg("--pidfile")
    .arg(base.join("docker.pid"))
    .arg("--config-file")
    .arg(&config_file)
    .arg("--cgroup-parent")
    .arg(sb.cgroup_parent());
    for (name, path) in add_runtimes {
        cmd.arg("--add-runtime")
            .arg(format!("{name}={}", path.display()));
    }
    let log_file = fs::File::create(&log).expect("create dockerd log");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dockerd log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn dockerd (install it: scripts/engines-deps.sh)");
    let ready = wait_ready(sb, child, Duration::from_secs(60), || {
        run(
            Command::new("/usr/bin/docker").args(["-H", &host, "version"]),
            Duration::from_secs(10),
        )
        .ok()
        .map(|_| ())
    });
    if let Err(e) = ready {
        panic!(
            "dockerd did not come up: {e}\n--- dockerd log ---\n{}",
            tail(&log)
        );
    }
    Dockerd { host, log }
}

/// Hands `child` to the sandbox and polls `probe` until it succeeds, failing early if the daemon exits.
fn wait_ready(
    sb: &mut Sandbox,
    child: std::process::Child,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let pid = child.id() as i32;
    sb.adopt(child);
    wait_for(timeout, || {
        if !Path::new(&format!("/proc/{pid}")).exists() || sb.daemon_exited(pid) {
            return Ok(Err(format!("the daemon (pid {pid}) exited")));
        }
        probe().map(Ok)
    })?
}

/// The last 40 lines of a log file.
pub fn tail(p: &Path) -> String {
    let s = fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
