//! Shared harness of the engine end-to-end tests (`tests/engines_*.rs`): each test file starts one
//! real engine (containerd, dockerd or podman) in a [`Sandbox`], points it at a runtime (runc, then
//! strata-oci) through a logging wrapper, and drives the same sequence of operations through the
//! engine's own client, checking each result from the host (exit codes, output, cgroup files).

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod cli_engine;
pub mod command;
pub mod daemons;
pub mod image;
pub mod matrix;
pub mod network;
#[path = "../common/proc_cgroup.rs"]
mod proc_cgroup;
pub mod runtime;
pub mod sandbox;

use command::{run, run_in_pty, wait_for, Outcome};
use image::BusyboxImage;
use matrix::{Layer, Matrix, Op};
use proc_cgroup::cgroup_line;
use runtime::Runtime;
use sandbox::Sandbox;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Deadline of one engine client command: 60 s, or STRATA_ENGINES_TIMEOUT seconds (handy with
/// STRATA_ENGINES_TRY=1, where a hanging runtime would otherwise cost a minute per cell).
pub fn cmd_timeout() -> Duration {
    let secs = std::env::var("STRATA_ENGINES_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// STRATA_ENGINES_ONLY=vm runs only the VM rows (a shortcut while working on the VM layer; CI
/// runs everything).
pub fn only_vm() -> bool {
    std::env::var("STRATA_ENGINES_ONLY").is_ok_and(|v| v == "vm")
}

/// STRATA_ENGINES_ONLY=network runs only the network cells (engines/network.rs), without the
/// matrix (a shortcut while working on networking; CI runs everything).
pub fn only_network() -> bool {
    std::env::var("STRATA_ENGINES_ONLY").is_ok_and(|v| v == "network")
}

/// Every operation of the matrix, in the order [`exercise`] performs them.
pub const ALL_OPS: &[Op] = &[
    Op::Run,
    Op::Tty,
    Op::Logs,
    Op::Exec,
    Op::ExecTty,
    Op::Ps,
    Op::Cgroup,
    Op::Stats,
    Op::Pause,
    Op::Update,
    Op::Stop,
    Op::Kill,
    Op::Rm,
];

/// The engine-specific half of the harness: how to express each operation with this engine's client.
pub trait Engine {
    fn name(&self) -> &'static str;
    /// A foreground run that removes the container on exit.
    fn run_cmd(&self, rt: &Runtime, layer: Layer, name: &str, tty: bool, args: &[&str]) -> Command;
    /// Starts a detached container whose stdout/stderr the engine keeps as logs.
    fn start_detached(
        &self,
        rt: &Runtime,
        layer: Layer,
        name: &str,
        args: &[&str],
    ) -> Result<(), String>;
    /// Everything the container printed so far (stdout and stderr, in any order).
    fn logs(&self, name: &str) -> Result<String, String>;
    fn exec_cmd(&self, name: &str, tty: bool, args: &[&str]) -> Command;
    fn ps_cmd(&self, name: &str) -> Command;
    fn pause_cmd(&self, name: &str) -> Command;
    fn unpause_cmd(&self, name: &str) -> Command;
    /// "running", "paused" or "stopped" (normalised from the engine's own words).
    fn status(&self, name: &str) -> Result<String, String>;
    /// The host pid of the container's init process.
    fn init_pid(&self, name: &str) -> Result<i32, String>;
    /// Whether the engine's client reports a container's statistics ([`Engine::memory_usage`]).
    fn has_stats(&self) -> bool {
        false
    }
    /// The container's memory usage in bytes as the engine's own statistics report it.
    fn memory_usage(&self, _name: &str) -> Result<u64, String> {
        Err(format!("{} has no stats command", self.name()))
    }
    /// The engine's command to set the memory limit; None when its client has none.
    fn update_memory_cmd(&self, name: &str, bytes: u64) -> Option<Command>;
    /// Graceful stop (SIGTERM, SIGKILL after a grace period); returns the exit code.
    fn stop(&self, name: &str) -> Result<i32, String>;
    /// SIGKILL; returns the exit code once stopped.
    fn kill(&self, name: &str) -> Result<i32, String>;
    /// Removes a stopped container.
    fn rm(&self, name: &str) -> Result<(), String>;
    /// Whether the engine still lists the container.
    fn exists(&self, name: &str) -> Result<bool, String>;
    /// Best-effort removal of whatever is left of a container (between runtimes).
    fn force_remove(&self, name: &str);
}

/// What every engine test starts from: its sandbox, the busybox image built in it, and both
/// runtimes behind their logging wrappers (dockerd needs the wrappers before it starts).
pub struct Harness {
    pub sb: Sandbox,
    pub img: BusyboxImage,
    pub runc: Runtime,
    pub strata: Runtime,
}

impl Harness {
    /// A new sandbox tagged `tag`, with the image and the runtimes in it.
    pub fn start(tag: &str) -> Harness {
        let sb = Sandbox::new(tag);
        let img = image::build(&sb);
        let runc = Runtime::runc(&sb);
        let strata = Runtime::strata_oci(&sb);
        Harness {
            sb,
            img,
            runc,
            strata,
        }
    }

    /// Fills `engine`'s matrix: runc's container rows (all required: they validate the
    /// harness), then strata-oci's container rows (`passing` required) and VM rows
    /// (`vm_passing` required); prints the runtime calls the engine made and fails the test
    /// on a required cell that failed or could not run.
    pub fn run_matrix(&self, engine: &dyn Engine, passing: &[Op], vm_passing: &[Op]) {
        let mut m = Matrix::new(engine.name());
        exercise(engine, &mut m, &self.runc, Layer::Container, &[]);
        exercise(engine, &mut m, &self.strata, Layer::Container, passing);
        exercise_vm(
            engine,
            &mut m,
            &self.strata,
            &self.sb,
            &self.img.rootfs,
            vm_passing,
        );
        print_calls(engine.name(), &self.runc);
        print_calls(engine.name(), &self.strata);
        m.finish();
    }
}

/// Runs `cmd` with the default deadline.
pub fn sh(cmd: &mut Command) -> Outcome {
    run(cmd, cmd_timeout())
}

/// Checks exit code and that stdout contains every one of `want` (after pty clean-up).
pub fn expect(o: &Outcome, code: i32, want: &[&str]) -> Result<(), String> {
    let out = o.clean_stdout();
    if o.code != code || !want.iter().all(|w| out.contains(w)) {
        return Err(format!(
            "expected exit {code} and stdout containing {want:?}; got:\n{}",
            o.describe()
        ));
    }
    Ok(())
}

/// The v1 cgroup directory of `pid` for `controller` (this host's hybrid layout).
pub fn cgroup_v1_dir(pid: i32, controller: &str) -> Result<PathBuf, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("read /proc/{pid}/cgroup: {e}"))?;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctrls.split(',').any(|c| c == controller) {
            return Ok(PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}")));
        }
    }
    Err(format!("pid {pid} has no {controller} cgroup in:\n{text}"))
}

/// `linux.cgroupsPath` of the config.json the engine gave the runtime in its first `create` after
/// `mark` (the bundle is `--bundle`/`-b` of that call).
fn engine_cgroups_path(rt: &Runtime, mark: usize) -> Result<String, String> {
    let calls = rt.calls_since(mark);
    let bundle = calls
        .lines()
        .filter_map(|l| {
            let args: Vec<&str> = l.split_whitespace().collect();
            args.iter().position(|a| *a == "create")?;
            let i = args.iter().position(|a| *a == "--bundle" || *a == "-b")?;
            args.get(i + 1).map(|b| b.to_string())
        })
        .next()
        .ok_or_else(|| format!("no `create --bundle` call among:\n{calls}"))?;
    let p = PathBuf::from(bundle).join("config.json");
    let text = read_trim(&p)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("parse {}: {e}", p.display()))?;
    match v["linux"]["cgroupsPath"].as_str() {
        Some(c) if c.starts_with('/') => Ok(c.to_string()),
        other => Err(format!(
            "{}: cgroupsPath {other:?} is not an absolute cgroupfs path",
            p.display()
        )),
    }
}

fn read_trim(p: &PathBuf) -> Result<String, String> {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("read {}: {e}", p.display()))
}

fn wait_status(e: &dyn Engine, name: &str, want: &str) -> Result<(), String> {
    wait_for(Duration::from_secs(20), || match e.status(name) {
        Ok(s) if s == want => Ok(()),
        Ok(s) => Err(format!("{name} is {s}, want {want}")),
        Err(err) => Err(err),
    })
}

/// The host pid of a child of `pid` (the `sleep` the detached container's shell started).
fn child_of(pid: i32) -> Result<i32, String> {
    wait_for(Duration::from_secs(10), || {
        let s = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map_err(|e| e.to_string())?;
        s.split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("pid {pid} has no children yet"))
    })
}

/// The host's kernel release (`uname -r`).
fn host_kernel() -> Result<String, String> {
    let o = run(Command::new("uname").arg("-r"), Duration::from_secs(5)).ok()?;
    Ok(o.stdout.trim().to_string())
}

/// The long-running container of [`exercise`]: traps SIGTERM (exit 7, what the Stop cell must
/// see), logs on both streams, fills 16 MiB of its /dev/shm (tmpfs pages: charged to the
/// container and swap-backed, so not the page cache docker leaves out; what the Stats cell must
/// see; fast even in a UML guest) and waits on a `sleep` child (what the Ps cell must see).
/// `wait` last, so busybox sh does not exec it: the shell stays the container's init.
const MAIN_SCRIPT: &str = "trap 'exit 7' TERM; echo logged-out; echo logged-err >&2; \
     head -c 16777216 /dev/zero > /dev/shm/strata-fill; sleep 1000 & wait";

/// Memory the Stats cell wants the engine to report for [`MAIN_SCRIPT`]'s container: half of
/// the 16 MiB it fills (a VM's host processes hold more: its guest kernel's memory).
const LEAST_MEMORY: u64 = 8 << 20;

/// The `-t` run: prints its terminal and whether stdin is one. The pause before exiting is for
/// ctr 1.6, which drops a terminal's last output when the process exits at once (seen here with runc,
/// 2 runs in 40 under load).
const TTY_SCRIPT: &str = "tty; test -t 0 && echo stdin-is-a-tty; sleep 0.3; exit 4";

/// Runs a pty cell, once more if the exit code was right but the output was lost (the ctr race
/// above); a wrong exit code or a second loss fails the cell.
fn pty_cell(mut run_once: impl FnMut() -> Outcome, code: i32, want: &[&str]) -> Result<(), String> {
    let o = run_once();
    let out = o.clean_stdout();
    if o.code == code && !want.iter().all(|w| out.contains(w)) {
        println!("engines: pty output lost once, retrying:\n{}", o.describe());
        return expect(&run_once(), code, want);
    }
    expect(&o, code, want)
}

/// Drives every operation of [`ALL_OPS`] through `engine` with runtime `rt` on `layer`, recording
/// each cell in `m`. `passing` lists the strata-oci cells known to pass (runc cells are all required).
pub fn exercise(engine: &dyn Engine, m: &mut Matrix, rt: &Runtime, layer: Layer, passing: &[Op]) {
    if layer == Layer::Container && only_vm() {
        strata_testkit::skip_or_fail(format!(
            "{} {} container rows left out: STRATA_ENGINES_ONLY=vm",
            engine.name(),
            rt.name
        ));
        m.skip(rt, layer, &[], ALL_OPS, "STRATA_ENGINES_ONLY=vm");
        return;
    }
    let short = match layer {
        Layer::Container => "ct",
        Layer::Vm => "vm",
        Layer::VmQemu => "vmq",
    };
    let n = |what: &str| format!("{}-{short}-{what}", rt.name);
    let e = engine;

    m.check(rt, layer, passing, Op::Run, || {
        let o = sh(&mut e.run_cmd(
            rt,
            layer,
            &n("run"),
            false,
            &["sh", "-c", "echo hi; uname -r >&2; exit 3"],
        ));
        expect(&o, 3, &["hi"])?;
        if o.stdout.trim() != "hi" {
            return Err(format!(
                "stdout should be exactly \"hi\":\n{}",
                o.describe()
            ));
        }
        // The layer is real: a container runs on the host's kernel, a VM on its guest kernel.
        let host = host_kernel()?;
        let on_host = o.stderr.contains(&host);
        match layer {
            Layer::Container if !on_host => Err(format!(
                "the container did not report the host kernel {host} on stderr:\n{}",
                o.describe()
            )),
            _ if layer.is_vm() && (on_host || o.stderr.trim().is_empty()) => Err(format!(
                "the VM should report its own kernel on stderr, not the host's {host}:\n{}",
                o.describe()
            )),
            _ => Ok(()),
        }
    });

    m.check(rt, layer, passing, Op::Tty, || {
        let mut attempt = 0;
        let run_once = || {
            attempt += 1;
            let cmd = e.run_cmd(
                rt,
                layer,
                &n(&format!("tty{attempt}")),
                true,
                &["sh", "-c", TTY_SCRIPT],
            );
            run_in_pty(&cmd, cmd_timeout())
        };
        pty_cell(run_once, 4, &["/dev/pts/", "stdin-is-a-tty"])
    });

    // One long-running container serves logs, exec, ps, pause, update, stop and rm. Its shell traps
    // SIGTERM so that `stop` can prove the signal reached it (exit 7), not just that it died.
    let main = n("main");
    let dependents = [
        Op::Logs,
        Op::Exec,
        Op::ExecTty,
        Op::Ps,
        Op::Cgroup,
        Op::Stats,
        Op::Pause,
        Op::Update,
        Op::Stop,
        Op::Rm,
    ];
    let main_mark = rt.mark();
    let main_pid: Result<i32, String> = if dependents.iter().any(|&op| m.will_run(rt, passing, op))
    {
        let mark = main_mark;
        e.start_detached(
            rt,
            layer,
            &main,
            &[
                "sh",
                "-c",
                MAIN_SCRIPT,
            ],
        )
        .and_then(|()| wait_status(e, &main, "running"))
        .and_then(|()| e.init_pid(&main))
        .map_err(|err| {
            format!(
                "starting the detached container {main} failed: {err}\n--- {} calls while starting it ---\n{}",
                rt.name,
                rt.calls_since(mark)
            )
        })
    } else {
        Err("not started".into())
    };

    m.check(rt, layer, passing, Op::Logs, || {
        main_pid.clone()?;
        wait_for(Duration::from_secs(10), || {
            let logs = e.logs(&main)?;
            if logs.contains("logged-out") && logs.contains("logged-err") {
                Ok(())
            } else {
                Err(format!("logs lack logged-out/logged-err:\n{logs}"))
            }
        })
    });

    m.check(rt, layer, passing, Op::Exec, || {
        main_pid.clone()?;
        expect(
            &sh(&mut e.exec_cmd(&main, false, &["sh", "-c", "echo inside; exit 5"])),
            5,
            &["inside"],
        )
    });

    m.check(rt, layer, passing, Op::ExecTty, || {
        main_pid.clone()?;
        let run_once = || {
            let cmd = e.exec_cmd(&main, true, &["sh", "-c", "tty; sleep 0.3; exit 6"]);
            run_in_pty(&cmd, cmd_timeout())
        };
        pty_cell(run_once, 6, &["/dev/pts/"])
    });

    m.check(rt, layer, passing, Op::Ps, || {
        let pid = main_pid.clone()?;
        let sleeper = child_of(pid)?;
        let o = sh(&mut e.ps_cmd(&main)).ok()?;
        let lists_sleeper = o.stdout.contains("sleep 1000")
            || o.stdout
                .split_whitespace()
                .any(|t| t == sleeper.to_string());
        if !lists_sleeper {
            return Err(format!(
                "ps lists neither `sleep 1000` nor its pid {sleeper}:\n{}",
                o.describe()
            ));
        }
        Ok(())
    });

    m.check(rt, layer, passing, Op::Cgroup, || {
        let pid = main_pid.clone()?;
        let want = engine_cgroups_path(rt, main_mark)?;
        let mut hierarchies = vec!["memory", "pids", "cpu", "freezer"];
        if std::path::Path::new("/sys/fs/cgroup/unified").is_dir() {
            hierarchies.push(""); // cgroup2 (`0::/path`) on this hybrid host
        }
        for h in hierarchies {
            let got = cgroup_line(pid, h)?;
            if got != want {
                return Err(format!(
                    "pid {pid} is in {h:?} cgroup {got}, but config.json's cgroupsPath is {want}"
                ));
            }
        }
        Ok(())
    });

    if e.has_stats() {
        m.check(rt, layer, passing, Op::Stats, || {
            main_pid.clone()?;
            // The container fills its /dev/shm right after it starts.
            wait_for(Duration::from_secs(20), || {
                let bytes = e.memory_usage(&main)?;
                if bytes < LEAST_MEMORY {
                    return Err(format!(
                        "{} reports {bytes} bytes of memory for {main}, want at least {LEAST_MEMORY} \
                         (it filled 16 MiB of its /dev/shm)",
                        e.name()
                    ));
                }
                Ok(())
            })
        });
    } else {
        m.skip(
            rt,
            layer,
            passing,
            &[Op::Stats],
            &format!("{}: no statistics command that works here", e.name()),
        );
    }

    m.check(rt, layer, passing, Op::Pause, || {
        let pid = main_pid.clone()?;
        let freezer = cgroup_v1_dir(pid, "freezer")?.join("freezer.state");
        sh(&mut e.pause_cmd(&main)).ok()?;
        wait_status(e, &main, "paused")?;
        wait_for(Duration::from_secs(10), || match read_trim(&freezer)? {
            s if s == "FROZEN" => Ok(()),
            s => Err(format!("{} is {s} after pause", freezer.display())),
        })?;
        sh(&mut e.unpause_cmd(&main)).ok()?;
        wait_status(e, &main, "running")?;
        match read_trim(&freezer)? {
            s if s == "THAWED" => Ok(()),
            s => Err(format!("{} is {s} after unpause", freezer.display())),
        }
    });

    // A VM's limit caps its whole host footprint (guest memory touched plus the VMM's own): a
    // qemu (TCG) VM holds ~85 MiB after boot, and a limit below what is resident and cannot be
    // reclaimed is refused (EBUSY, reported with its cause). Its limit here is above that.
    let limit: u64 = if layer.is_vm() { 256 << 20 } else { 64 << 20 };
    match e.update_memory_cmd(&main, limit) {
        None => m.skip(
            rt,
            layer,
            passing,
            &[Op::Update],
            &format!("{} has no update command", e.name()),
        ),
        Some(mut cmd) => m.check(rt, layer, passing, Op::Update, || {
            let pid = main_pid.clone()?;
            let file = cgroup_v1_dir(pid, "memory")?.join("memory.limit_in_bytes");
            sh(&mut cmd).ok()?;
            match read_trim(&file)? {
                s if s == limit.to_string() => Ok(()),
                s => Err(format!("{} is {s}, want {limit}", file.display())),
            }
        }),
    }

    // Recorded before stop: rm must remove it.
    let main_cgroup = main_pid
        .clone()
        .and_then(|pid| cgroup_v1_dir(pid, "memory"));

    m.check(rt, layer, passing, Op::Stop, || {
        main_pid.clone()?;
        match e.stop(&main)? {
            7 => Ok(()),
            c => Err(format!(
                "stop: exit code {c}, want 7 (the container's SIGTERM handler)"
            )),
        }
    });

    m.check(rt, layer, passing, Op::Kill, || {
        let victim = n("kill");
        e.start_detached(rt, layer, &victim, &["sleep", "1000"])?;
        wait_status(e, &victim, "running")?;
        let code = e.kill(&victim)?;
        e.rm(&victim)?;
        match code {
            137 => Ok(()),
            c => Err(format!("kill: exit code {c}, want 137 (SIGKILL)")),
        }
    });

    m.check(rt, layer, passing, Op::Rm, || {
        main_pid.clone()?;
        let cg = main_cgroup.clone()?;
        // `stop` may have failed and left it running; rm is about removal, not signals.
        if matches!(e.status(&main)?.as_str(), "running" | "paused") {
            e.kill(&main)?;
        }
        e.rm(&main)?;
        if e.exists(&main)? {
            return Err(format!("{main} is still listed after rm"));
        }
        if cg.exists() {
            return Err(format!("cgroup {} is still there after rm", cg.display()));
        }
        Ok(())
    });

    for what in ["run", "tty1", "tty2", "main", "kill"] {
        e.force_remove(&n(what));
    }
}

/// The VM rows, on each platform ([`Layer::Vm`]: the default, [`Layer::VmQemu`]: qemu): runs
/// [`exercise`] when strata-oci can run a VM of that layer here; otherwise prints why once and
/// records every cell of the layer as not run: a failure for the cells `passing` lists (they are
/// expected to pass here), skipped for the others.
pub fn exercise_vm(
    engine: &dyn Engine,
    m: &mut Matrix,
    strata: &Runtime,
    sb: &sandbox::Sandbox,
    rootfs: &std::path::Path,
    passing: &[Op],
) {
    let mut default_release = None;
    // Where the host has VMX/SVM the default platform is qemu too (`auto` picks qemu+kvm).
    let default_is_qemu = std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "vmx" || w == "svm"));
    for layer in [Layer::Vm, Layer::VmQemu] {
        let probe = runtime::probe_vm_layer(sb, rootfs, layer.annotations()).and_then(|release| {
            // Each platform boots its own kernel: the same release on both means the platform
            // annotation was ignored.
            if layer == Layer::VmQemu
                && !default_is_qemu
                && default_release.as_ref() == Some(&release)
            {
                return Err(format!(
                    "the qemu probe booted the default platform's kernel ({release}): \
                     dev.strata.vm.platform=qemu was ignored"
                ));
            }
            default_release.get_or_insert(release);
            Ok(())
        });
        match probe {
            Ok(()) => exercise(engine, m, strata, layer, passing),
            Err(why) => {
                println!(
                    "engines: {}: {} rows skipped, VM isolation is unavailable: {why}",
                    engine.name(),
                    layer.label()
                );
                m.skip(
                    strata,
                    layer,
                    passing,
                    ALL_OPS,
                    "VM isolation unavailable (strata-oci probe failed, reason printed above)",
                );
            }
        }
    }
}

/// Prints the distinct shapes of the runtime command lines the engine issued (flags, subcommand,
/// signals and `json`/`-` kept; paths and ids shown as `X`), so the exact calls each engine makes
/// are visible in the test output (`--nocapture`).
pub fn print_calls(engine: &str, rt: &Runtime) {
    const SUBCOMMANDS: &[&str] = &[
        "create", "start", "run", "delete", "exec", "ps", "pause", "resume", "update", "kill",
        "state", "features", "events", "list",
    ];
    let mut seen = std::collections::BTreeSet::new();
    println!("engines: {engine}: distinct {} call shapes:", rt.name);
    for line in rt.calls_since(0).lines() {
        let args = line.split_once("] ").map(|(_, r)| r).unwrap_or(line);
        let mut sub_seen = false;
        let shape: Vec<String> = args
            .split_whitespace()
            .map(|t| {
                if t.starts_with('-') && t.len() > 1 {
                    t.split('=').next().unwrap_or(t).to_string()
                        + if t.contains('=') { "=X" } else { "" }
                } else if !sub_seen && SUBCOMMANDS.contains(&t) {
                    sub_seen = true;
                    t.to_string()
                } else if t == "json" || t == "-" || t.parse::<u32>().is_ok() {
                    t.to_string()
                } else {
                    "X".to_string()
                }
            })
            .collect();
        let shape = shape.join(" ");
        if seen.insert(shape.clone()) {
            println!("  {shape}");
        }
    }
}
