//! Another process in a running container, attached to our stdio (`strata exec`).

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{bail, Context};

use crate::backend::{StartError, Stdio};
use crate::paths::Paths;
use crate::records::State;
use crate::{isolation, options, pty, terminal_relay};

/// Another process in a running container (`strata exec`'s flags).
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// `-i`: our stdin reaches the process.
    pub interactive: bool,
    /// `-t`: the process gets a terminal.
    pub tty: bool,
    /// `-e K=V` (K alone: from our environment), over the container's.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// Name, uid, name:group or uid:gid, resolved in the image.
    pub user: Option<String>,
    /// The command and its arguments.
    pub cmd: Vec<String>,
}

/// Runs `a` in the container named `key`; returns its exit code. A process that could not be
/// started is an error holding a [`StartError`] (its `code` is 126/127/125).
pub fn exec(paths: &Paths, key: &str, a: &ExecRequest) -> anyhow::Result<i32> {
    exec_in(paths, paths.containers().find(key)?, a)
}

/// [`exec`] in the container of record `rec` (a caller that decided something from the record,
/// such as whether to re-exec first, runs exactly that record's backend).
pub fn exec_in(paths: &Paths, rec: crate::records::Record, a: &ExecRequest) -> anyhow::Result<i32> {
    let containers = paths.containers();
    if rec.live_state() != State::Running {
        bail!(
            "container {} is not running: start it with `strata start {}`",
            rec.name,
            rec.name
        );
    }
    let backend = isolation::backend(&rec.isolation, &paths.root)?;
    let dir = containers.dir(&rec.id);
    let cfg = dir.join("config.json");
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&cfg).with_context(|| format!("read {}", cfg.display()))?,
    )
    .with_context(|| format!("parse {}", cfg.display()))?;
    let mut p = spec["process"].clone();
    p["args"] = serde_json::json!(a.cmd);
    p["terminal"] = serde_json::json!(false);
    let mut env: Vec<String> = p["env"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for e in options::environment(&a.env, &[])? {
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
        let store = paths.image_store()?;
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
    let fail = |e: StartError| -> anyhow::Error { e.into() };
    // -t: a terminal inside the container when the backend allocates one, else a host pty.
    let inner = if a.tty {
        backend
            .exec_with_terminal(&rec.id, &process)
            .map_err(fail)?
    } else {
        None
    };
    let pty = if a.tty && inner.is_none() {
        Some(pty::open(stdin.as_fd())?)
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
            Err(e) => return Err(fail(e)),
        },
    };
    drop(null);
    let code = match master {
        Some(master) => {
            let raw = if a.interactive {
                pty::RawMode::enable(stdin.as_fd())
            } else {
                None
            };
            let c = terminal_relay::run(master, pid, a.interactive, &signals, None);
            drop(raw);
            c
        }
        None => strata_container::launch::wait_forwarding(pid, &signals),
    };
    Ok(code)
}
