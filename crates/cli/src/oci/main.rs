//! `strata-oci`: runc's command line over strata-container (containers) and strata-engine
//! (VMs). Thin glue: parse, call the libraries, print, map errors to runc's messages and exit
//! codes.

mod arg_values;
mod args;
mod default_spec;
mod log;
mod vm;

use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use oci_spec::runtime::Process;
use strata_container::{CreateOptions, ExecOptions, Runtime};

use arg_values::{parse_interval, parse_resources, parse_signal};
use args::{Cli, Command, OutputFormat};

fn main() {
    std::process::exit(run());
}

/// Runs the CLI; returns the process exit code.
fn run() -> i32 {
    let cli = Cli::parse();
    let logger = log::Logger::new(
        cli.log.clone(),
        cli.log_format == args::LogFormat::Json,
        cli.debug,
    );
    match dispatch(cli, &logger) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            logger.error(&msg);
            1
        }
    }
}

fn dispatch(cli: Cli, logger: &log::Logger) -> Result<i32> {
    if cli.systemd_cgroup {
        bail!("--systemd-cgroup is not supported by strata-oci: it manages cgroupfs directly; drop the flag (or set SystemdCgroup=false in containerd's runc options)");
    }
    // Bundles annotated dev.strata.isolation=vm (or STRATA_ISOLATION=vm) run in a VM.
    if let Some(code) = vm::dispatch(&cli)? {
        return Ok(code);
    }
    // CVE-2019-5736: whatever enters a container runs from a detached read-only mount of this
    // binary (exe_guard.rs: open_tree + mount_setattr + execveat, one extra exec) or, with
    // STRATA_EXE_PROTECTION=memfd, from a sealed memfd copy (slower: see docs/benchmarks.md),
    // so /proc/<pid>/exe never gives a container a writable handle on the host's strata-oci.
    if matches!(
        cli.command,
        Command::Create(_) | Command::Run(_) | Command::Exec(_)
    ) {
        // These commands move a process into cgroups ~2 ms from now: start the kernel's grace
        // period for that already, while we re-execute (cgroups/prewarm.rs).
        if !strata_container::exe_guard::is_protected() {
            strata_container::cgroups::prewarm::start();
        }
        if std::env::var_os("STRATA_EXE_PROTECTION").is_some_and(|v| v == "memfd") {
            strata_container::exe_clone::ensure_cloned_binary()?;
        } else {
            strata_container::exe_guard::protect_runtime_binary()?;
        }
    }
    let rt = Runtime::new(&cli.root);
    logger.debug(&format!("command {:?}", cli.command));
    match cli.command {
        Command::Create(a) => {
            rt.create(&a.id, &create_options(&a))?;
            Ok(0)
        }
        Command::Start(a) => {
            rt.start(&a.id)?;
            Ok(0)
        }
        Command::Run(a) => Ok(rt.run(&a.create.id, &create_options(&a.create), a.detach)?),
        Command::State(a) => {
            let s = rt.state(&a.id)?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(0)
        }
        Command::Kill(a) => {
            rt.kill(&a.id, parse_signal(&a.signal)?, a.all)?;
            Ok(0)
        }
        Command::Delete(a) => {
            rt.delete(&a.id, a.force)?;
            Ok(0)
        }
        Command::List(a) => list(&rt, &cli.root, a),
        Command::Ps(a) => ps(&rt, a),
        Command::Exec(a) => exec(&rt, a),
        Command::Pause(a) => {
            rt.pause(&a.id)?;
            Ok(0)
        }
        Command::Resume(a) => {
            rt.resume(&a.id)?;
            Ok(0)
        }
        Command::Update(a) => update(&rt, a),
        Command::Events(a) => events(&rt, a),
        Command::Features => {
            let mut f = default_spec::features();
            strata_engine::oci_vm::advertise(&mut f);
            println!("{}", serde_json::to_string_pretty(&f)?);
            Ok(0)
        }
        Command::Spec(a) => {
            let path = a.bundle.join("config.json");
            if path.exists() {
                bail!("File {} exists. Remove it first", path.display());
            }
            let spec = default_spec::spec(a.rootless);
            std::fs::write(&path, serde_json::to_string_pretty(&spec)? + "\n")
                .with_context(|| format!("write {}", path.display()))?;
            Ok(0)
        }
    }
}

fn create_options(a: &args::CreateArgs) -> CreateOptions {
    CreateOptions {
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds,
    }
}

fn list(rt: &Runtime, root: &std::path::Path, a: args::ListArgs) -> Result<i32> {
    // Containers and VMs (the VM path keeps its state under ROOT/vm), in one listing.
    let mut all = rt
        .list()?
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    all.extend(strata_engine::oci_vm::states(root));
    all.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    if a.quiet {
        for s in &all {
            println!("{}", s["id"].as_str().unwrap_or_default());
        }
        return Ok(0);
    }
    match a.format {
        OutputFormat::Json => println!("{}", serde_json::to_string(&all)?),
        OutputFormat::Table => {
            println!(
                "{:<12} {:<8} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            for s in &all {
                println!(
                    "{:<12} {:<8} {:<10} {:<40} {:<32} {}",
                    text(&s["id"]),
                    text(&s["pid"]),
                    text(&s["status"]),
                    text(&s["bundle"]),
                    text(&s["created"]),
                    text(&s["owner"])
                );
            }
        }
    }
    Ok(0)
}

fn ps(rt: &Runtime, a: args::PsArgs) -> Result<i32> {
    let pids = rt.pids(&a.id)?;
    if a.format == OutputFormat::Json {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    let ps_args = if a.ps_args.is_empty() {
        vec!["-ef".to_string()]
    } else {
        a.ps_args
    };
    let out = std::process::Command::new("ps")
        .args(&ps_args)
        .output()
        .context("run ps (is procps installed?)")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            ps_args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| anyhow!("ps output has no PID column; pass options that print it"))?;
    println!("{header}");
    for l in lines {
        if let Some(p) = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
        {
            if pids.contains(&p) {
                println!("{l}");
            }
        }
    }
    Ok(0)
}

fn exec(rt: &Runtime, a: args::ExecArgs) -> Result<i32> {
    let mut process: Process = match &a.process {
        Some(p) => {
            let b =
                std::fs::read(p).with_context(|| format!("read process file {}", p.display()))?;
            serde_json::from_slice(&b)
                .with_context(|| format!("parse process file {}", p.display()))?
        }
        None => {
            if a.command.is_empty() {
                bail!("exec: give a command to run or --process FILE");
            }
            let spec = rt.spec_of(&a.id)?;
            let mut p = spec.process().clone().unwrap_or_default();
            p.set_args(Some(a.command.clone()));
            p
        }
    };
    if !a.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        env.extend(a.env.iter().cloned());
        process.set_env(Some(env));
    }
    if let Some(cwd) = &a.cwd {
        process.set_cwd(cwd.clone());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (u.parse::<u32>()?, Some(g.parse::<u32>()?)),
            None => (u.parse::<u32>().context("--user takes uid[:gid]")?, None),
        };
        process.user_mut().set_uid(uid);
        if let Some(g) = gid {
            process.user_mut().set_gid(g);
        }
    }
    if !a.additional_gids.is_empty() {
        process
            .user_mut()
            .set_additional_gids(Some(a.additional_gids.clone()));
    }
    if !a.cap.is_empty() {
        let mut caps = process.capabilities().clone().unwrap_or_default();
        let add = |set: &Option<oci_spec::runtime::Capabilities>| -> Result<oci_spec::runtime::Capabilities> {
            let mut s = set.clone().unwrap_or_default();
            for c in &a.cap {
                let name = c.to_ascii_uppercase();
                let name = name.strip_prefix("CAP_").unwrap_or(&name).to_string();
                s.insert(oci_spec::runtime::Capability::from_str(&name).map_err(|_| anyhow!("unknown capability {c:?}"))?);
            }
            Ok(s)
        };
        let (b, e, p, i) = (
            add(caps.bounding())?,
            add(caps.effective())?,
            add(caps.permitted())?,
            add(caps.inheritable())?,
        );
        caps.set_bounding(Some(b))
            .set_effective(Some(e))
            .set_permitted(Some(p))
            .set_inheritable(Some(i));
        process.set_capabilities(Some(caps));
    }
    if a.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    if a.tty {
        process.set_terminal(Some(true));
    }
    let opts = ExecOptions {
        detach: a.detach,
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
    };
    let r = rt.exec(&a.id, &process, &opts)?;
    Ok(if a.detach { 0 } else { r })
}

fn update(rt: &Runtime, a: args::UpdateArgs) -> Result<i32> {
    rt.update(&a.id, &parse_resources(&a)?)?;
    Ok(0)
}

fn events(rt: &Runtime, a: args::EventsArgs) -> Result<i32> {
    let interval = parse_interval(&a.interval)?;
    loop {
        let stats = rt.stats(&a.id)?;
        let ev = serde_json::json!({"type": "stats", "id": a.id, "data": stats});
        println!("{ev}");
        if a.stats {
            return Ok(0);
        }
        std::thread::sleep(interval);
    }
}
