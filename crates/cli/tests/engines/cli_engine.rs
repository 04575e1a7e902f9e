//! Docker and Podman share one command-line vocabulary (run/exec/top/pause/update/stop/kill/rm/logs,
//! `inspect -f`); they differ in how a runtime is selected and in a few run flags.

use super::command::{run, wait_for};
use super::image::IMAGE_REF;
use super::matrix::Layer;
use super::runtime::Runtime;
use super::{cmd_timeout, sh, Engine};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How the engine is told which runtime to use.
pub enum RuntimeSelection {
    /// dockerd: `run --runtime NAME`, NAME registered with `--add-runtime` / daemon.json.
    /// Maps (runtime name, layer) to the registered name.
    DockerNames(fn(&str, Layer) -> String),
    /// podman: global `--runtime PATH` on every command touching the container, plus
    /// `--annotation` for the VM layer.
    PodmanPath,
}

/// A docker- or podman-style engine client.
pub struct CliEngine {
    pub name: &'static str,
    /// The client binary and its global flags (`-H unix://...` or `--root ... --runroot ...`).
    pub client: Vec<OsString>,
    /// Extra flags of every `run` (network, ulimits, cgroup parent).
    pub run_flags: Vec<String>,
    pub selection: RuntimeSelection,
    /// Runtime wrapper each container was created with (podman needs it on later commands).
    runtimes: RefCell<HashMap<String, PathBuf>>,
}

impl CliEngine {
    pub fn new(
        name: &'static str,
        client: Vec<OsString>,
        run_flags: Vec<String>,
        selection: RuntimeSelection,
    ) -> CliEngine {
        CliEngine {
            name,
            client,
            run_flags,
            selection,
            runtimes: RefCell::new(HashMap::new()),
        }
    }

    /// The client with its global flags (and, for podman, the container's runtime).
    pub fn cmd(&self, container: Option<&str>) -> Command {
        let mut c = Command::new(&self.client[0]);
        c.args(&self.client[1..]);
        if let (RuntimeSelection::PodmanPath, Some(name)) = (&self.selection, container) {
            if let Some(rt) = self.runtimes.borrow().get(name) {
                c.arg("--runtime").arg(rt);
            }
        }
        c
    }

    fn run_base(&self, rt: &Runtime, layer: Layer, name: &str) -> Command {
        self.runtimes
            .borrow_mut()
            .insert(name.to_string(), rt.wrapper.clone());
        let mut c = self.cmd(Some(name));
        c.arg("run").arg("--name").arg(name).args(&self.run_flags);
        match &self.selection {
            RuntimeSelection::DockerNames(f) => {
                c.arg("--runtime").arg(f(rt.name, layer));
            }
            RuntimeSelection::PodmanPath => {
                for a in layer.annotations() {
                    c.arg("--annotation").arg(a);
                }
            }
        }
        c
    }

    fn inspect(&self, name: &str, format: &str) -> Result<Option<String>, String> {
        let o = run(
            self.cmd(Some(name)).args(["inspect", "-f", format, name]),
            cmd_timeout(),
        );
        if o.code != 0 {
            let e = o.stderr.to_lowercase();
            if e.contains("no such") {
                return Ok(None);
            }
            return Err(o.describe());
        }
        Ok(Some(o.stdout.trim().to_string()))
    }

    fn exit_code_when_stopped(&self, name: &str) -> Result<i32, String> {
        wait_for(Duration::from_secs(20), || {
            match self.status(name)?.as_str() {
                "stopped" => Ok(()),
                s => Err(format!("{name} is {s}")),
            }
        })?;
        let code = self
            .inspect(name, "{{.State.ExitCode}}")?
            .ok_or_else(|| format!("{name} vanished"))?;
        code.parse().map_err(|e| format!("exit code {code:?}: {e}"))
    }
}

impl Engine for CliEngine {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run_cmd(&self, rt: &Runtime, layer: Layer, name: &str, tty: bool, args: &[&str]) -> Command {
        let mut c = self.run_base(rt, layer, name);
        c.arg("--rm");
        if tty {
            c.arg("-it");
        }
        c.arg(IMAGE_REF).args(args);
        c
    }

    fn start_detached(
        &self,
        rt: &Runtime,
        layer: Layer,
        name: &str,
        args: &[&str],
    ) -> Result<(), String> {
        let mut c = self.run_base(rt, layer, name);
        c.arg("-d").arg(IMAGE_REF).args(args);
        sh(&mut c).ok().map(|_| ())
    }

    fn logs(&self, name: &str) -> Result<String, String> {
        let o = sh(self.cmd(Some(name)).args(["logs", name])).ok()?;
        Ok(format!("{}{}", o.stdout, o.stderr))
    }

    fn exec_cmd(&self, name: &str, tty: bool, args: &[&str]) -> Command {
        let mut c = self.cmd(Some(name));
        c.arg("exec");
        if tty {
            c.arg("-it");
        }
        c.arg(name).args(args);
        c
    }

    fn ps_cmd(&self, name: &str) -> Command {
        let mut c = self.cmd(Some(name));
        c.args(["top", name]);
        c
    }

    fn pause_cmd(&self, name: &str) -> Command {
        let mut c = self.cmd(Some(name));
        c.args(["pause", name]);
        c
    }

    fn unpause_cmd(&self, name: &str) -> Command {
        let mut c = self.cmd(Some(name));
        c.args(["unpause", name]);
        c
    }

    fn status(&self, name: &str) -> Result<String, String> {
        Ok(match self.inspect(name, "{{.State.Status}}")?.as_deref() {
            None => "absent".into(),
            Some("running") => "running".into(),
            Some("paused") => "paused".into(),
            Some("exited" | "stopped" | "dead") => "stopped".into(),
            Some(other) => other.to_string(),
        })
    }

    fn init_pid(&self, name: &str) -> Result<i32, String> {
        let pid = self
            .inspect(name, "{{.State.Pid}}")?
            .ok_or_else(|| format!("no container {name}"))?;
        match pid.parse() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{name} has no init pid ({pid:?})")),
        }
    }

    fn has_stats(&self) -> bool {
        true
    }

    fn memory_usage(&self, name: &str) -> Result<u64, String> {
        let o = sh(self.cmd(Some(name)).args([
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}",
            name,
        ]))
        .ok()?;
        // `31.51MB / 25.28GB` (podman: decimal units) or `31.1MiB / 25.28GiB` (docker).
        let used = o.stdout.split('/').next().unwrap_or("").trim();
        parse_size(used).ok_or_else(|| format!("cannot read a size from stats:\n{}", o.describe()))
    }

    fn update_memory_cmd(&self, name: &str, bytes: u64) -> Option<Command> {
        let mut c = self.cmd(Some(name));
        c.arg("update")
            .arg("--memory")
            .arg(bytes.to_string())
            .arg("--memory-swap")
            .arg((2 * bytes).to_string())
            .arg(name);
        Some(c)
    }

    fn stop(&self, name: &str) -> Result<i32, String> {
        sh(self.cmd(Some(name)).args(["stop", "-t", "10", name])).ok()?;
        self.exit_code_when_stopped(name)
    }

    fn kill(&self, name: &str) -> Result<i32, String> {
        sh(self
            .cmd(Some(name))
            .args(["kill", "--signal", "KILL", name]))
        .ok()?;
        self.exit_code_when_stopped(name)
    }

    fn rm(&self, name: &str) -> Result<(), String> {
        sh(self.cmd(Some(name)).args(["rm", name])).ok().map(|_| ())
    }

    fn exists(&self, name: &str) -> Result<bool, String> {
        Ok(self.inspect(name, "{{.Id}}")?.is_some())
    }

    fn force_remove(&self, name: &str) {
        let _ = run(self.cmd(Some(name)).args(["rm", "-f", name]), cmd_timeout());
    }
}

/// `31.51MB`, `1.2kB`, `31.1MiB`, `0B` → bytes.
fn parse_size(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match unit.trim() {
        "B" | "" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((number * factor) as u64)
}
