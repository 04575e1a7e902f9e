//! `strata exec`: another process in a running container, attached to our stdio.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{bail, Context};
use clap::Args;

use super::containers::{Containers, State};
use super::instance::{self, Stdio};
use super::{run, tty, Global};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the process
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the process a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment variable K=V
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User (name, uid, name:group or uid:gid)
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container (name, id or id prefix), then the command and its arguments. Options end at
    /// the container name.
    #[arg(
        value_name = "CONTAINER COMMAND [ARG...]",
        required = true,
        num_args = 2..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub container_and_cmd: Vec<String>,
}

/// Exits with the process's exit code (126/127 when it cannot be started).
pub fn exec(g: &Global, a: ExecArgs) -> anyhow::Result<()> {
    let containers = Containers::new(&g.store);
    let rec = containers.find(&a.container_and_cmd[0])?;
    if rec.live_state() != State::Running {
        bail!(
            "container {} is not running: start it with `strata start {}`",
            rec.name,
            rec.name
        );
    }
    let backend = instance::backend(&rec.isolation, &g.root)?;
    let dir = containers.dir(&rec.id);
    let cfg = dir.join("config.json");
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&cfg).with_context(|| format!("read {}", cfg.display()))?,
    )
    .with_context(|| format!("parse {}", cfg.display()))?;
    let mut p = spec["process"].clone();
    p["args"] = serde_json::json!(a.container_and_cmd[1..]);
    p["terminal"] = serde_json::json!(false);
    let mut env: Vec<String> = p["env"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for e in run::environment(&a.env, &[])? {
        let k = e
            .split_once('=')
            .map(|(k, _)| k.to_string())
            .unwrap_or_default();
        env.retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(k.as_str()));
        env.push(e);
    }
    if a.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    p["env"] = serde_json::json!(env);
    if let Some(w) = &a.workdir {
        if !w.starts_with('/') {
            bail!("-w {w:?}: the working directory must be an absolute path");
        }
        p["cwd"] = serde_json::json!(w);
    }
    if let Some(u) = &a.user {
        let store = g.image_store()?;
        let image = store.resolve(&rec.image_digest)?;
        let user = strata_image::bundle::resolve_user(&image, u)?;
        let mut gids = vec![user.gid];
        gids.extend(
            user.additional_gids
                .iter()
                .copied()
                .filter(|x| *x != user.gid),
        );
        p["user"] = serde_json::json!({"uid": user.uid, "gid": user.gid, "additionalGids": gids});
    }
    let process: oci_spec::runtime::Process =
        serde_json::from_value(p).context("build the exec process")?;

    let signals = strata_container::launch::block_forwarded_signals();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let null = OwnedFd::from(std::fs::File::open("/dev/null").context("open /dev/null")?);
    let fail = |e: super::instance::StartError| -> ! {
        eprintln!("strata: error: {}", e.message);
        std::process::exit(e.code);
    };
    // -t: a terminal inside the container when the backend allocates one, else a host pty.
    let inner = if a.tty {
        backend
            .exec_with_terminal(&rec.id, &process)
            .unwrap_or_else(|e| fail(e))
    } else {
        None
    };
    let pty = if a.tty && inner.is_none() {
        Some(tty::open(stdin.as_fd())?)
    } else {
        None
    };
    let stdio = match &pty {
        Some(p) => Stdio {
            stdin: p.slave.as_fd(),
            stdout: p.slave.as_fd(),
            stderr: p.slave.as_fd(),
        },
        None => Stdio {
            stdin: if a.interactive {
                stdin.as_fd()
            } else {
                null.as_fd()
            },
            stdout: stdout.as_fd(),
            stderr: stderr.as_fd(),
        },
    };
    let (pid, master) = match inner {
        Some((pid, master)) => (pid, Some(master)),
        None => match backend.exec(&rec.id, &process, stdio) {
            Ok(pid) => (pid, pty.map(|p| p.master)),
            Err(e) => fail(e),
        },
    };
    drop(null);
    let code = match master {
        Some(master) => {
            let raw = if a.interactive {
                tty::RawMode::enable(stdin.as_fd())
            } else {
                None
            };
            let c = tty::relay(master, pid, a.interactive, &signals, None);
            drop(raw);
            c
        }
        None => strata_container::launch::wait_forwarding(pid, &signals),
    };
    std::process::exit(code)
}
