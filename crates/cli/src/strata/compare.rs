//! `strata compare`: runs one workload N times as a container and as a VM on each platform this
//! host supports, and measures what the classic container-vs-VM comparison claims: size, start
//! time, memory, the kernel the workload sees, and compatibility probes.
//!
//! Each instance is a real `strata run --rm -i` of this same binary, so the numbers are what a
//! user gets. The workload is wrapped in `/bin/sh -c` (the image needs a shell): the wrapper
//! prints a marker line right before it executes CMD and another when CMD exits, then waits on
//! stdin so the instance stays alive while its per-instance bytes (upper dir / COW file) and the
//! cgroup's memory peak are read; closing stdin lets it exit and `--rm` removes it.
//!
//! "start" is the time from spawning `strata run` to the workload's execve taking effect, as the
//! layer itself records it: the container's init reads the clock right before execve and the
//! runtime keeps it once the init's close-on-exec channel closes (`state.json` "started"); for a VM the guest agent replies `Started` once its
//! close-on-exec error pipe closes, and the keeper stamps that reply's arrival with the host clock
//! (a UML guest's clock is not the host's, so no guest timestamp is trusted). "exit" is when the
//! wrapper's line after CMD arrives on the host.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Args;

use super::compare_chart;
use super::compare_probes;
use super::compare_report::{LayerResult, Report, SizeParts, Stats};
use super::global_args::Global;

/// The JSON schema name; bump the version when a key changes meaning or goes away.
pub const SCHEMA: &str = "strata.compare/v2";

const EXEC_MARK: &str = "__strata_compare_exec__";
const EXIT_MARK: &str = "__strata_compare_exit__";
/// How long one instance may take from spawn to exit.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Runs per layer (start time and memory are min/median/max over them)
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Memory limit for every instance (the VM's guest memory), e.g. 256m
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Print the results as JSON (schema strata.compare/v2, see docs/benchmarks.md)
    #[arg(long)]
    pub json: bool,
    /// Also draw the start-time and memory distributions into this SVG file
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// IMAGE [CMD...] (CMD defaults to `true`)
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [CMD]..."
    )]
    pub image_and_cmd: Vec<String>,
}

/// Where an instance runs.
#[derive(Debug, Clone)]
struct Layer {
    platform: Option<String>,
    /// `kvm`/`tcg` for qemu.
    accelerator: Option<String>,
    /// Runs take a VM from the warm pool (a pool of one, refilled before each run).
    warm: bool,
}

impl Layer {
    fn label(&self) -> String {
        let l = match &self.platform {
            Some(p) => match &self.accelerator {
                Some(a) => format!("vm-{p}-{a}"),
                None => format!("vm-{p}"),
            },
            None => "container".into(),
        };
        if self.warm {
            l + "-warm"
        } else {
            l
        }
    }
}

/// What one finished run measured.
struct Sample {
    start_ms: f64,
    exit_ms: f64,
    memory_peak: u64,
    /// Part of `memory_peak`: the host processes outside the instance's cgroup (the `strata run`
    /// monitor, and the VM keeper).
    memory_monitor: u64,
    per_instance: u64,
    output: String,
}

pub fn compare(g: &Global, a: CompareArgs) -> anyhow::Result<()> {
    if a.runs == 0 {
        bail!("--runs 0: compare needs at least one run per layer (e.g. --runs 3)");
    }
    let (image_name, cmd) = a
        .image_and_cmd
        .split_first()
        .context("compare needs an IMAGE")?;
    let cmd: Vec<String> = if cmd.is_empty() {
        vec!["true".into()]
    } else {
        cmd.to_vec()
    };
    let store = g.image_store()?;
    let image = store.resolve(image_name).with_context(|| {
        format!("image {image_name:?}: see `strata images`, or `strata pull` / `strata image build-default` it first")
    })?;
    if let Some(chart) = &a.chart {
        if chart.extension().and_then(|e| e.to_str()) != Some("svg") {
            bail!(
                "--chart {}: the chart is an SVG file; name it *.svg",
                chart.display()
            );
        }
    }
    let mut layers = vec![Layer {
        platform: None,
        accelerator: None,
        warm: false,
    }];
    let mut unavailable = Vec::new();
    for p in strata_vmm::platforms() {
        match p.check() {
            Ok(()) => {
                layers.push(Layer {
                    platform: Some(p.name().to_string()),
                    accelerator: p.accelerator().map(str::to_string),
                    warm: false,
                });
                // The warm pool's row, beside the cold one (never mixed into it).
                if strata_engine::vm_pool::PLATFORMS.contains(&p.name()) {
                    layers.push(Layer {
                        platform: Some(p.name().to_string()),
                        accelerator: p.accelerator().map(str::to_string),
                        warm: true,
                    });
                }
            }
            Err(u) => unavailable.push(format!("{}: {}", p.name(), u.reason)),
        }
    }
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("read /proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    let layer_bytes = image
        .layers()
        .iter()
        .map(|l| allocated_bytes(l))
        .sum::<u64>();
    let progress = Progress::new(g.quiet, layers.len() as u64 * (u64::from(a.runs) + 1));
    if !unavailable.is_empty() {
        progress.line(&format!(
            "VM platforms not measured (unavailable here): {}",
            unavailable.join("; ")
        ));
    }
    let exe = std::env::current_exe().context("find the strata binary")?;
    let pool_memory = pool_memory_mib(a.memory.as_deref())?;
    // The user's own pools of the warm rows' shapes are put back afterwards.
    let pools = strata_engine::vm_pool::status(&g.root);
    let _restore: Vec<RestorePool> = layers
        .iter()
        .filter(|l| l.warm)
        .filter_map(|l| l.platform.clone())
        .map(|platform| RestorePool {
            g,
            memory_mib: pool_memory,
            size: pools
                .iter()
                .find(|p| p.platform == platform && p.memory_mib == pool_memory)
                .map_or(0, |p| p.size),
            platform,
        })
        .collect();
    let mut results = Vec::new();
    for layer in &layers {
        let label = layer.label();
        let mut samples = Vec::new();
        for n in 1..=a.runs {
            progress.step(&format!("{label}: run {n}/{}", a.runs));
            let s = run_instance(g, &exe, layer, &a, image_name, &cmd)
                .with_context(|| format!("{label} run {n}"))?;
            samples.push(s);
        }
        progress.step(&format!("{label}: compatibility probes"));
        let probe_out = run_instance(
            g,
            &exe,
            layer,
            &a,
            image_name,
            &[
                "/bin/sh".into(),
                "-c".into(),
                compare_probes::script(std::process::id()),
            ],
        )
        .with_context(|| format!("{label} probes"))?;
        let mut probes = compare_probes::parse(&probe_out.output);
        let kernel = probes
            .iter()
            .find(|p| p.name == "kernel")
            .map(|p| p.detail.clone())
            .unwrap_or_default();
        probes.retain(|p| p.name != "kernel");
        probes.insert(0, compare_probes::kernel_is_host(&kernel, &host_kernel));
        let mut parts = SizeParts {
            image_layers: layer_bytes,
            ..Default::default()
        };
        if let Some(p) = &layer.platform {
            vm_parts(&g.store, p, image.digest().as_str(), &mut parts)?;
        }
        let f = |v: &dyn Fn(&Sample) -> f64| samples.iter().map(v).collect::<Vec<f64>>();
        let per_instance = Stats::of(&f(&|s| s.per_instance as f64)).map_or(0.0, |s| s.median);
        results.push(LayerResult {
            layer: if layer.platform.is_some() {
                "vm"
            } else {
                "container"
            }
            .into(),
            platform: layer.platform.clone(),
            accelerator: layer.accelerator.clone(),
            warm: layer.warm,
            kernel,
            start_bytes: parts.total(),
            start_parts: parts,
            per_instance_bytes: per_instance as u64,
            start_ms: Stats::of(&f(&|s| s.start_ms)).context("no samples")?,
            exit_ms: Stats::of(&f(&|s| s.exit_ms)).context("no samples")?,
            memory_peak_bytes: Stats::of(&f(&|s| s.memory_peak as f64)).context("no samples")?,
            memory_monitor_bytes: Stats::of(&f(&|s| s.memory_monitor as f64))
                .context("no samples")?,
            probes,
        });
    }
    progress.finish();
    let report = Report {
        schema: SCHEMA,
        image: image_name.clone(),
        command: cmd,
        runs: a.runs,
        host_kernel,
        layers: results,
    };
    if let Some(chart) = &a.chart {
        compare_chart::write_svg(&report, chart)
            .with_context(|| format!("write the chart {}", chart.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// The guest memory a `--vm` run with `--memory m` gets (the pool's shape).
fn pool_memory_mib(m: Option<&str>) -> anyhow::Result<u32> {
    match m {
        None => Ok(strata_engine::vm_backend::DEFAULT_MEMORY_MIB),
        Some(m) => {
            let b = strata_engine::options::parse_size(m).context("--memory")?;
            u32::try_from((b >> 20).max(1)).context("--memory is too large")
        }
    }
}

/// Puts the user's pool of a warm row's shape back to its size (0: drained).
struct RestorePool<'a> {
    g: &'a Global,
    platform: String,
    memory_mib: u32,
    size: u32,
}

impl Drop for RestorePool<'_> {
    fn drop(&mut self) {
        let _ = strata_engine::vm_pool::set_size(
            &self.g.root,
            &self.g.store,
            &self.platform,
            self.memory_mib,
            self.size,
            None,
        );
    }
}

/// `/bin/sh -c WRAPPER sh CMD...`: markers around CMD, then wait for stdin to close. The
/// leading `:` names the instance in the shell's command line (so a leak could be found by it).
fn wrap_workload(name: &str, cmd: &[String]) -> Vec<String> {
    let script = format!(
        ": {name}; printf '{EXEC_MARK}\\n'; \"$@\" </dev/null; rc=$?; printf '\\n{EXIT_MARK} %s\\n' \"$rc\"; read -r _; exit \"$rc\""
    );
    let mut v = vec!["/bin/sh".into(), "-c".into(), script, "sh".into()];
    v.extend(cmd.iter().cloned());
    v
}

/// Kills and removes an instance that did not finish normally.
struct InstanceGuard<'a> {
    g: &'a Global,
    exe: &'a Path,
    name: String,
    child: Option<Child>,
}

impl Drop for InstanceGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = strata_cmd(self.g, self.exe)
                .args(["rm", "-f", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn strata_cmd(g: &Global, exe: &Path) -> Command {
    let mut c = Command::new(exe);
    c.arg("--store")
        .arg(&g.store)
        .arg("--root")
        .arg(&g.root)
        .arg("--quiet");
    c
}

enum Event {
    Line(Instant, String),
    Eof,
}

fn run_instance(
    g: &Global,
    exe: &Path,
    layer: &Layer,
    a: &CompareArgs,
    image: &str,
    cmd: &[String],
) -> anyhow::Result<Sample> {
    let name = format!("strata-compare-{}-{}", std::process::id(), next_serial());
    let argv = wrap_workload(&name, cmd);
    let mut c = strata_cmd(g, exe);
    if let (true, Some(platform)) = (layer.warm, &layer.platform) {
        // A ready pooled VM before the clock starts: the row measures a run that finds one.
        strata_engine::vm_pool::set_size(
            &g.root,
            &g.store,
            platform,
            pool_memory_mib(a.memory.as_deref())?,
            1,
            Some(Duration::from_secs(120)),
        )
        .context("fill the warm VM pool")?;
    } else if layer.platform.is_some() {
        c.env("STRATA_VM_POOL", "off");
    }
    c.args(["run", "--rm", "-i", "--name", &name]);
    if let Some(p) = &layer.platform {
        c.args(["--vm", "--platform", p]);
    }
    if let Some(m) = &a.memory {
        c.args(["--memory", m]);
    }
    c.arg(image).args(&argv);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    let mut child = c.spawn().context("start `strata run`")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let stdin = child.stdin.take();
    let mut guard = InstanceGuard {
        g,
        exe,
        name: name.clone(),
        child: Some(child),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if tx.send(Event::Line(Instant::now(), line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Eof);
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = t0 + RUN_TIMEOUT;
    let mut started = None;
    let mut exited = None;
    let mut output = String::new();
    while exited.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Line(t, l)) if l == EXEC_MARK && started.is_none() => started = Some(t),
            Ok(Event::Line(t, l)) => match l.strip_prefix(EXIT_MARK) {
                Some(rc) if started.is_some() => exited = Some((t, rc.trim().to_string())),
                _ => {
                    output.push_str(&l);
                    output.push('\n');
                }
            },
            Ok(Event::Eof) => break,
            Err(_) => bail!(
                "{name} did not finish within {}s; it was killed and removed",
                RUN_TIMEOUT.as_secs()
            ),
        }
    }
    let Some((t_exit, rc)) = exited else {
        // The instance ended before the wrapper reported CMD's exit: set-up failed.
        let mut child = guard.child.take().context("child")?;
        let st = child.wait()?;
        let err = err_thread.join().unwrap_or_default();
        bail!(
            "the instance ended before its workload did (strata run exited with {}): {}",
            st.code().map_or("a signal".into(), |c| c.to_string()),
            err.trim()
        );
    };
    // The wrapper's marker only says CMD was reached; the start time is the runtime's own.
    started.context("the wrapper did not report that CMD started")?;
    // Measure while the instance still exists (the wrapper waits for stdin to close).
    let monitor_pid = guard.child.as_ref().context("child")?.id() as i32;
    let Measured {
        memory_peak,
        memory_monitor,
        per_instance,
        exec_time,
    } = measure_instance(g, &name, layer, monitor_pid)?;
    drop(stdin);
    let mut child = guard.child.take().context("child")?;
    let st = wait_timeout(&mut child, Duration::from_secs(60));
    let err = err_thread.join().unwrap_or_default();
    if rc != "0" {
        let said = format!("{}\n{}", output.trim(), err.trim());
        let said = said.trim();
        bail!(
            "the workload failed with exit code {rc}; compare needs a CMD that succeeds in every layer{}",
            if said.is_empty() {
                String::new()
            } else {
                format!("; its output:\n{said}")
            }
        );
    }
    match st {
        Some(s) if s.success() => {}
        Some(s) => bail!("strata run exited with {s}: {}", err.trim()),
        None => {
            guard.child = Some(child);
            bail!("{name} did not exit after its stdin closed; it was killed and removed");
        }
    }
    Ok(Sample {
        start_ms: ms(exec_time
            .duration_since(t0_wall)
            .context("the recorded exec time is before the instance was spawned")?),
        exit_ms: ms(t_exit - t0),
        memory_peak,
        memory_monitor,
        per_instance,
        output,
    })
}

fn wait_timeout(c: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        match c.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

fn next_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The running instance's cgroup memory peak and its per-instance bytes on disk.
/// What is read from a live instance: memory peak, per-instance bytes, and the time its
/// workload's execve took effect as the runtime or the agent recorded it.
struct Measured {
    memory_peak: u64,
    memory_monitor: u64,
    per_instance: u64,
    exec_time: SystemTime,
}

fn measure_instance(
    g: &Global,
    name: &str,
    layer: &Layer,
    monitor_pid: i32,
) -> anyhow::Result<Measured> {
    let link = g.store.join("containers/.names").join(name);
    let id = std::fs::read_link(&link)
        .with_context(|| format!("find the instance {name} ({})", link.display()))?;
    let id = id.to_string_lossy().into_owned();
    let state_dir = match layer.platform {
        Some(_) => g.root.join("vm").join(&id),
        None => g.root.join(&id),
    };
    // The runtime writes its state (with the exec time) right after the workload's execve took
    // effect; a fast workload can report back before that write lands, so wait for it briefly.
    let path = state_dir.join("state.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    let (st, exec_time) = loop {
        let st: Option<serde_json::Value> = match std::fs::read(&path) {
            Ok(b) => Some(
                serde_json::from_slice(&b).with_context(|| format!("parse {}", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        if let Some(st) = st {
            if let Some(t) = exec_time(&st) {
                break (st, t);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} has no workload exec time (\"started\") 5 s after the workload ran",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut memory_monitor = peak_rss(monitor_pid)
        .with_context(|| format!("read the peak RSS of `strata run` (pid {monitor_pid})"))?;
    if layer.platform.is_some() {
        // Each row is what it says: a warm row's run took a pooled VM, a cold one booted.
        let warm = st["warm"] == true;
        if warm != layer.warm {
            bail!(
                "the {} run {}",
                layer.label(),
                if warm {
                    "took a pooled VM".to_string()
                } else {
                    format!(
                        "booted cold ({})",
                        st["warm_fallback"]
                            .as_str()
                            .unwrap_or("no pooled VM was ready")
                    )
                }
            );
        }
        let dir = state_dir;
        let keeper = st["keeper_pid"]
            .as_i64()
            .context("the VM state has no keeper_pid")? as i32;
        memory_monitor += peak_rss(keeper)
            .with_context(|| format!("read the peak RSS of the VM keeper (pid {keeper})"))?;
        let mem = st["cgroup_dirs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            .find(|d| d.contains("/memory/"))
            .map(PathBuf::from)
            .context("the VM has no memory cgroup")?;
        Ok(Measured {
            memory_peak: read_peak(&mem)? + memory_monitor,
            memory_monitor,
            per_instance: allocated_bytes(&dir.join("root.cow")),
            exec_time,
        })
    } else {
        let mem = Path::new("/sys/fs/cgroup/memory/strata").join(&id);
        let upper = g.store.join("containers").join(&id).join("upper");
        Ok(Measured {
            memory_peak: read_peak(&mem)? + memory_monitor,
            memory_monitor,
            per_instance: allocated_bytes(&upper),
            exec_time,
        })
    }
}

/// The `started` key of a runtime or keeper state file (RFC 3339, host clock).
fn exec_time(state: &serde_json::Value) -> Option<SystemTime> {
    let s = state["started"].as_str()?;
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(SystemTime::from(t.with_timezone(&chrono::Utc)))
}

/// VmHWM (peak resident set) of a live process, bytes.
fn peak_rss(pid: i32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_hwm(&status).context("no VmHWM line in /proc/PID/status")
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kb.checked_mul(1024)
}

fn read_peak(cgroup: &Path) -> anyhow::Result<u64> {
    let p = cgroup.join("memory.max_usage_in_bytes");
    let s = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    s.trim()
        .parse()
        .with_context(|| format!("parse {}: {s:?}", p.display()))
}

/// Bytes actually allocated on disk (st_blocks), files and directories, hard links once.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// The guest kernel, the agent initramfs and the image's root disk.
fn vm_parts(
    store: &Path,
    platform: &str,
    digest: &str,
    parts: &mut SizeParts,
) -> anyhow::Result<()> {
    let k = strata_vmm::kernel::default_kernel(platform)
        .with_context(|| format!("no guest kernel for {platform}"))?;
    parts.guest_kernel = allocated_bytes(&k.path);
    let hex = digest.rsplit(':').next().unwrap_or(digest);
    let disks = store.join("vm/disks");
    parts.vm_disk = dir_entries(&disks)
        .filter(|p| p.to_string_lossy().contains(hex))
        .map(|p| allocated_bytes(&p))
        .sum();
    // The keeper caches the initramfs path in `<cache>/agent-*.path`.
    let cache = store.join("vm/cache");
    parts.initramfs = dir_entries(&cache)
        .filter(|p| p.extension().is_some_and(|e| e == "path"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .map(|p| allocated_bytes(&p))
        .max()
        .unwrap_or(0);
    Ok(())
}

fn dir_entries(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
}

/// Human sizes: 2.1MB, 512kB.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0}kB", b / 1e3)
    } else {
        format!("{b}B")
    }
}

fn print_report(r: &Report) {
    println!(
        "strata compare {} {} ({} runs per layer; host kernel {})",
        r.image,
        r.command.join(" "),
        r.runs,
        r.host_kernel
    );
    let ms3 = |s: &Stats| format!("{:.0}/{:.0}/{:.0}", s.min, s.median, s.max);
    let rows: Vec<Vec<String>> = r
        .layers
        .iter()
        .map(|l| {
            vec![
                l.label(),
                human_bytes(l.start_bytes),
                human_bytes(l.per_instance_bytes),
                ms3(&l.start_ms),
                ms3(&l.exit_ms),
                human_bytes(l.memory_peak_bytes.median as u64),
                l.kernel.clone(),
            ]
        })
        .collect();
    super::output::print_table(
        &[
            "LAYER",
            "SIZE TO START",
            "PER INSTANCE",
            "START ms min/med/max",
            "EXIT ms min/med/max",
            "PEAK MEMORY",
            "KERNEL",
        ],
        &rows,
    );
    println!();
    let mut header = vec!["PROBE".to_string()];
    header.extend(r.layers.iter().map(|l| l.label()));
    let names: Vec<&str> = r
        .layers
        .first()
        .map(|l| l.probes.iter().map(|p| p.name.as_str()).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            let mut row = vec![n.to_string()];
            for l in &r.layers {
                row.push(
                    l.probes
                        .iter()
                        .find(|p| p.name == *n)
                        .map_or("-".into(), |p| p.cell()),
                );
            }
            row
        })
        .collect();
    let h: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    super::output::print_table(&h, &rows);
    println!();
    println!("size to start: image layers (+ guest kernel, agent initramfs and root disk for a VM), allocated blocks");
    println!(
        "per instance: the upper dir (container) / COW file (VM) after the run, allocated blocks"
    );
    println!("start: spawn of `strata run` until the workload's execve (runtime: time read right before it; VM: the agent's reply, stamped on arrival at the host); exit: until CMD exited");
    println!("peak memory: memory.max_usage_in_bytes of the instance's cgroup (container: its processes; VM: the UML processes incl. guest memory touched) + peak RSS of the strata run monitor (and VM keeper)");
}

/// Progress on stderr: a bar on a terminal, plain lines otherwise, nothing with --quiet.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
}

impl Progress {
    fn new(quiet: bool, total: u64) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        });
        Progress { bar, quiet }
    }
    fn step(&self, what: &str) {
        match &self.bar {
            Some(b) => {
                if !b.message().is_empty() {
                    b.inc(1);
                }
                b.set_message(what.to_string());
            }
            None if !self.quiet => {
                let _ = writeln!(std::io::stderr(), "compare: {what}");
            }
            None => {}
        }
    }
    fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None if !self.quiet => eprintln!("compare: {s}"),
            None => {}
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn vm_hwm_parses_proc_status() {
        let st = "Name:\tstrata\nVmPeak:\t  10000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(super::parse_vm_hwm(st), Some(2048 * 1024));
        assert_eq!(super::parse_vm_hwm("VmRSS:\t1 kB\n"), None);
        assert_eq!(super::parse_vm_hwm("VmHWM:\tx kB\n"), None);
        assert_eq!(
            super::parse_vm_hwm("VmHWM:\t99999999999999999999 kB\n"),
            None
        );
        // The real thing: this test process has a peak RSS.
        assert!(super::peak_rss(std::process::id() as i32).unwrap() > 0);
    }

    use super::*;

    #[test]
    fn stats_median_odd_even() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn wrapper_passes_cmd_as_arguments() {
        let v = wrap_workload("n1", &["echo".into(), "a b".into()]);
        assert_eq!(&v[..2], &["/bin/sh".to_string(), "-c".to_string()]);
        assert_eq!(&v[3..], &["sh", "echo", "a b"]);
        assert!(v[2].starts_with(": n1;"));
        assert!(v[2].contains(EXEC_MARK) && v[2].contains(EXIT_MARK));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(2_130_000), "2.1MB");
    }
}
