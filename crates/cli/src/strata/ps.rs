//! Listing and looking into containers: ps, inspect, top, stats (tables, or JSON with
//! `--json` / `--format json`).

use anyhow::bail;
use clap::Args;
use serde_json::json;

use strata_engine::records::{short, Containers, Record, State};
use strata_engine::{isolation, Backend};

use super::global_args::Global;
use super::output::{print_table, FormatArgs};

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Also stopped and created containers
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only ids
    #[arg(short = 'q', long = "quiet-ids")]
    pub quiet_ids: bool,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    pub container: String,
    #[command(flatten)]
    pub format: FormatArgs,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print once (the only mode)
    #[arg(long = "no-stream")]
    pub no_stream: bool,
    /// Containers (default: every running one)
    pub containers: Vec<String>,
    #[command(flatten)]
    pub format: FormatArgs,
}

fn status_text(r: &Record) -> String {
    match r.live_state() {
        State::Created => "Created".into(),
        State::Running => format!("Up since {}", r.started.as_deref().unwrap_or("?")),
        State::Exited => format!(
            "Exited ({})",
            r.exit_code.map(|c| c.to_string()).unwrap_or("?".into())
        ),
    }
}

/// What `ps --format json` prints for a container.
fn summary(r: &Record) -> serde_json::Value {
    json!({
        "Id": r.id,
        "Name": r.name,
        "Image": r.image,
        "Command": r.command,
        "Created": r.created,
        "State": r.live_state(),
        "Status": status_text(r),
        "ExitCode": r.exit_code,
        "Pid": if r.live_state() == State::Running { r.pid } else { None },
        "Isolation": r.isolation,
    })
}

pub fn ps(g: &Global, a: PsArgs) -> anyhow::Result<()> {
    let list: Vec<Record> = Containers::new(&g.store)
        .all()?
        .into_iter()
        .filter(|r| a.all || r.live_state() == State::Running)
        .collect();
    if a.format.is_json() {
        let v: Vec<_> = list.iter().map(summary).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if a.quiet_ids {
        for r in &list {
            println!("{}", short(&r.id));
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let mut cmd = r.command.join(" ");
            if cmd.chars().count() > 30 {
                cmd = cmd.chars().take(29).collect::<String>() + "…";
            }
            vec![
                short(&r.id).to_string(),
                r.image.clone(),
                format!("\"{cmd}\""),
                r.created.chars().take(19).collect(),
                status_text(r),
                super::network::ports_column(&Containers::new(&g.store).dir(&r.id)),
                r.name.clone(),
                r.isolation.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES",
            "ISOLATION",
        ],
        &rows,
    );
    Ok(())
}

/// True when `key` names a container (so `strata inspect` shows it rather than an image).
pub fn is_container(g: &Global, key: &str) -> bool {
    Containers::new(&g.store).find(key).is_ok()
}

/// `strata inspect` of containers: record, live state and config.json.
pub fn inspect(g: &Global, keys: &[String]) -> anyhow::Result<()> {
    let containers = Containers::new(&g.store);
    let mut out = Vec::new();
    for k in keys {
        let r = containers.find(k)?;
        let dir = containers.dir(&r.id);
        let config: serde_json::Value = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let mut v = summary(&r);
        // The runtime's (or agent's) own exec timestamp while the instance exists; the record's
        // time (taken by this CLI around the start) otherwise.
        let started = match r.live_state() {
            State::Running => isolation::backend(&r.isolation, &g.root)
                .ok()
                .and_then(|b| b.exec_time(&r.id)),
            _ => None,
        }
        .or_else(|| r.started.clone());
        v["State"] = json!({
            "Status": r.live_state(),
            "Running": r.live_state() == State::Running,
            "Pid": if r.live_state() == State::Running { r.pid } else { None },
            "ExitCode": r.exit_code,
            "StartedAt": started,
            "FinishedAt": r.finished,
        });
        v["ImageDigest"] = json!(r.image_digest);
        v["AutoRemove"] = json!(r.auto_remove);
        v["Tty"] = json!(r.tty);
        v["Dir"] = json!(dir);
        v["LogPath"] = json!(containers.log_path(&r.id));
        v["NetworkSettings"] = super::network::settings_json(&dir);
        v["Config"] = config;
        if let Some(d) = isolation::backend(&r.isolation, &g.root)
            .ok()
            .and_then(|b| b.details(&r.id))
        {
            v["Vm"] = d;
        }
        out.push(v);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn running(g: &Global, key: &str) -> anyhow::Result<(Record, Box<dyn Backend>)> {
    let r = Containers::new(&g.store).find(key)?;
    if r.live_state() != State::Running {
        bail!(
            "container {} is not running: start it with `strata start {}`",
            r.name,
            r.name
        );
    }
    let b = isolation::backend(&r.isolation, &g.root)?;
    Ok((r, b))
}

/// One process of `top`, from /proc.
fn proc_info(pid: i32) -> Option<serde_json::Value> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse::<u32>().ok())?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // utime + stime in clock ticks (fields 14 and 15; index 11 and 12 after the comm).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ppid: i32 = fields.get(1)?.parse().ok()?;
    Some(json!({"Pid": pid, "PPid": ppid, "Uid": uid, "CpuSeconds": ticks / hz, "Command": args}))
}

pub fn top(g: &Global, a: TopArgs) -> anyhow::Result<()> {
    let (_, b) = running(g, &a.container)?;
    let mut procs: Vec<serde_json::Value> = b
        .pids(&rec_id(g, &a.container)?)?
        .into_iter()
        .filter_map(proc_info)
        .collect();
    procs.sort_by_key(|p| p["Pid"].as_i64());
    if a.format.is_json() {
        println!("{}", serde_json::to_string_pretty(&procs)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = procs
        .iter()
        .map(|p| {
            vec![
                p["Uid"].to_string(),
                p["Pid"].to_string(),
                p["PPid"].to_string(),
                format!("{}s", p["CpuSeconds"]),
                p["Command"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["UID", "PID", "PPID", "TIME", "CMD"], &rows);
    Ok(())
}

fn rec_id(g: &Global, key: &str) -> anyhow::Result<String> {
    Ok(Containers::new(&g.store).find(key)?.id)
}

pub fn stats(g: &Global, a: StatsArgs) -> anyhow::Result<()> {
    let containers = Containers::new(&g.store);
    let recs: Vec<Record> = if a.containers.is_empty() {
        containers
            .all()?
            .into_iter()
            .filter(|r| r.live_state() == State::Running)
            .collect()
    } else {
        a.containers
            .iter()
            .map(|k| running(g, k).map(|(r, _)| r))
            .collect::<anyhow::Result<_>>()?
    };
    let mut out = Vec::new();
    for r in &recs {
        let b = isolation::backend(&r.isolation, &g.root)?;
        let s = b.stats(&r.id)?;
        out.push(json!({
            "Id": r.id,
            "Name": r.name,
            "Isolation": r.isolation,
            "CpuNanoseconds": s["cpu"]["usage"]["total"].as_u64().unwrap_or(0),
            "MemoryUsage": s["memory"]["usage"]["usage"].as_u64().unwrap_or(0),
            "MemoryLimit": s["memory"]["usage"]["limit"].as_u64().unwrap_or(0),
            "Pids": s["pids"]["current"].as_u64().unwrap_or(0),
            "Raw": s,
        }));
    }
    if a.format.is_json() {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|s| {
            vec![
                short(s["Id"].as_str().unwrap_or_default()).to_string(),
                s["Name"].as_str().unwrap_or_default().to_string(),
                format!(
                    "{:.2}s",
                    s["CpuNanoseconds"].as_u64().unwrap_or(0) as f64 / 1e9
                ),
                format!(
                    "{} / {}",
                    super::output::human_size(s["MemoryUsage"].as_u64().unwrap_or(0)),
                    match s["MemoryLimit"].as_u64().unwrap_or(0) {
                        // cgroup v1 reports "no limit" as a page-rounded i64::MAX.
                        l if l == 0 || l >= 1 << 62 => "unlimited".to_string(),
                        l => super::output::human_size(l),
                    }
                ),
                s["Pids"].to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "CONTAINER ID",
            "NAME",
            "CPU TIME",
            "MEM USAGE / LIMIT",
            "PIDS",
        ],
        &rows,
    );
    Ok(())
}
