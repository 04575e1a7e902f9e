//! Detached containers: monitor, logs, wait, stop, kill, restart, rm -f, ps/inspect/top/stats.

mod cli_common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cli_common::{cgroup_dirs_of, output_timeout, text, Sandbox};

const TICKER: &str = "i=0; while true; do echo out$i; echo err$i >&2; i=$((i+1)); sleep 0.1; done";

fn logs_and_wait(iso: &str) {
    let s = Sandbox::new(iso);
    let id = s.ok(&[
        "run",
        "-d",
        "--name",
        "short",
        "busybox",
        "sh",
        "-c",
        "echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three; exit 7",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(s.ok(&["wait", "short"]), "7\n");
    let o = s.strata(&["logs", "short"]);
    assert_eq!(text(&o.stdout), "one\nthree\n");
    assert_eq!(text(&o.stderr), "two\n");
    let o = s.strata(&["logs", "--tail", "1", &id[..12]]);
    assert_eq!(text(&o.stdout), "three\n");
    assert_eq!(text(&o.stderr), "");
    let v = s.inspect("short");
    assert_eq!(v["State"]["Status"], "exited");
    assert_eq!(v["State"]["ExitCode"], 7);
    s.ok(&["rm", "short"]);
    s.assert_nothing_left(&[]);
}

fn follow(iso: &str) {
    let s = Sandbox::new(iso);
    s.ok(&[
        "run",
        "-d",
        "--name",
        "f",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo n$i; sleep 0.2; done",
    ]);
    // -f returns once the container exited, with everything it printed.
    let mut c = s.cmd();
    c.args(["logs", "-f", "f"]);
    let o = output_timeout(c, None, Duration::from_secs(30));
    assert_eq!(text(&o.stdout), "n1\nn2\nn3\nn4\nn5\n");
}

fn stop_kill_restart(iso: &str) {
    let s = Sandbox::new(iso);
    // The shell is PID 1 of its namespace: SIGTERM without a handler is ignored, so stop has
    // to fall back to SIGKILL after --time.
    s.ok(&["run", "-d", "--name", "t", "busybox", "sh", "-c", TICKER]);
    s.eventually(10, "output in the log", || {
        text(&s.strata(&["logs", "t"]).stdout).contains("out2")
    });
    let t = Instant::now();
    s.ok(&["stop", "-t", "1", "t"]);
    if iso.starts_with("vm") {
        // In a VM the agent is PID 1 and the shell an ordinary process: SIGTERM ends it.
        assert_eq!(s.ok(&["wait", "t"]), "143\n");
    } else {
        assert!(t.elapsed() >= Duration::from_secs(1));
        assert_eq!(s.ok(&["wait", "t"]), "137\n");
    }
    // A workload that handles SIGTERM exits with its own code.
    s.ok(&[
        "run",
        "-d",
        "--name",
        "h",
        "busybox",
        "sh",
        "-c",
        "trap 'exit 42' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    // "ready" in the log: the trap is installed (the log keeps every run's output).
    let ready = |n: usize| {
        text(&s.strata(&["logs", "h"]).stdout)
            .matches("ready")
            .count()
            >= n
    };
    s.eventually(30, "the trap", || ready(1));
    s.ok(&["stop", "-t", "10", "h"]);
    assert_eq!(s.inspect("h")["State"]["ExitCode"], 42);
    // restart runs it again; kill sends the signal asked for.
    s.ok(&["restart", "-t", "1", "h"]);
    assert_eq!(s.inspect("h")["State"]["Running"], true);
    s.eventually(30, "the trap after restart", || ready(2));
    s.ok(&["kill", "-s", "TERM", "h"]);
    assert_eq!(s.ok(&["wait", "h"]), "42\n");
    let (_, err) = s.fails(&["kill", "h"]);
    assert!(err.contains("not running"), "{err}");
    s.ok(&["start", "t"]);
    assert_eq!(s.inspect("t")["State"]["Running"], true);
    s.ok(&["kill", "t"]);
    assert_eq!(s.ok(&["wait", "t"]), "137\n");
    s.ok(&["rm", "t", "h"]);
    s.assert_nothing_left(&[]);
}

fn rm_force(iso: &str) {
    let s = Sandbox::new(iso);
    let id = s.ok(&["run", "-d", "--name", "r", "busybox", "sleep", "1000"]);
    let id = id.trim().to_string();
    s.eventually(10, "running", || s.inspect("r")["State"]["Running"] == true);
    let pid = s.inspect("r")["State"]["Pid"].as_i64().unwrap();
    let (_, err) = s.fails(&["rm", "r"]);
    assert!(err.contains("rm -f"), "{err}");
    let cgroups = cgroup_dirs_of(&id);
    assert!(!cgroups.is_empty());
    s.ok(&["rm", "-f", "r"]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "workload {pid} still alive"
    );
    s.assert_nothing_left(&cgroups);
    // --rm with -d: removed by the monitor when it exits.
    s.ok(&["run", "-d", "--rm", "busybox", "true"]);
    // `ps` is empty once the record is gone; the monitor releases the image hold and the name
    // right after that (removal::remove_all), so wait for those too before checking.
    let released = |dir: &str| {
        std::fs::read_dir(s.store.path().join(dir)).map_or(true, |mut rd| rd.next().is_none())
    };
    s.eventually(10, "auto-removal", || {
        s.ps().is_empty() && released("containers/.names") && released("holds")
    });
    s.assert_nothing_left(&[]);
}

fn listings(iso: &str) {
    let s = Sandbox::new(iso);
    s.ok(&[
        "run",
        "-d",
        "--name",
        "l",
        "--memory",
        "64m",
        "busybox",
        "sh",
        "-c",
        "sleep 1000",
    ]);
    s.ok(&["create", "--name", "c", "busybox", "true"]);
    s.eventually(10, "running", || s.inspect("l")["State"]["Running"] == true);
    let running: Vec<serde_json::Value> =
        serde_json::from_str(&s.ok(&["ps", "--format", "json"])).unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0]["Name"], "l");
    assert_eq!(running[0]["Isolation"], iso.split('-').next().unwrap());
    let all = s.ps();
    assert_eq!(all.len(), 2);
    assert!(all
        .iter()
        .any(|c| c["Name"] == "c" && c["State"] == "created"));
    let table = s.ok(&["ps", "-a"]);
    assert!(
        table.starts_with("CONTAINER ID") && table.contains("ISOLATION"),
        "{table}"
    );
    let top: Vec<serde_json::Value> = serde_json::from_str(&s.ok(&["top", "l", "--json"])).unwrap();
    // A VM's processes live in its guest kernel: on the host, top shows the VM's own
    // processes (the UML kernel and its address-space helpers, or QEMU).
    let cmd = match iso {
        "vm" => "linux",
        "vm-qemu" => "qemu-system-x86_64",
        _ => "sleep",
    };
    assert!(top.iter().any(|p| p["Command"][0] == cmd), "{top:?}");
    let stats: Vec<serde_json::Value> =
        serde_json::from_str(&s.ok(&["stats", "--no-stream", "--json"])).unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0]["MemoryLimit"], 64 << 20);
    assert!(stats[0]["Pids"].as_u64().unwrap() >= 1);
    let v = s.inspect("l");
    assert_eq!(v["Config"]["process"]["args"][0], "sh");
    // How a VM runs: its platform and (qemu) accelerator, and where its start went.
    if iso.starts_with("vm") {
        assert_start_phases(&v["Vm"]["StartPhases"]);
    }
    match iso {
        "vm" => assert_eq!(v["Vm"]["Platform"], "uml", "{v}"),
        "vm-qemu" => {
            assert_eq!(v["Vm"]["Platform"], "qemu", "{v}");
            let accel = strata_vmm::accelerator().0.name();
            assert_eq!(v["Vm"]["Accelerator"], accel, "{v}");
            let info = s.ok(&["info"]);
            assert!(info.contains(&format!("accelerator {accel}")), "{info}");
        }
        _ => assert!(v["Vm"].is_null(), "{v}"),
    }
    let (_, err) = s.fails(&["top", "c"]);
    assert!(err.contains("not running"), "{err}");
    // An image name still inspects the image.
    let img: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", "busybox"])).unwrap();
    assert!(img[0]["RepoTags"].is_array());
    s.ok(&["rm", "-f", "l", "c"]);
    s.assert_nothing_left(&[]);
}

/// A VM's start phases: every phase, in order, none negative, summing to at most the total.
fn assert_start_phases(p: &serde_json::Value) {
    let phases = p["phases"].as_array().unwrap_or_else(|| panic!("{p}"));
    let names: Vec<&str> = phases.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "keeper-setup",
            "jail",
            "kernel-boot",
            "agent-setup",
            "rootfs",
            "workload-execve"
        ],
        "{p}"
    );
    let ms: Vec<f64> = phases.iter().map(|x| x["ms"].as_f64().unwrap()).collect();
    assert!(ms.iter().all(|m| *m >= 0.0), "{p}");
    // The guest kernel's boot and the agent's set-up are never free.
    assert!(ms[2] > 0.0 && ms[3] > 0.0, "{p}");
    let total = p["total_ms"].as_f64().unwrap();
    assert!(ms.iter().sum::<f64>() <= total + 0.001, "{p}");
    assert!(p["boot_attempts"].as_u64().unwrap() >= 1, "{p}");
}

/// A spawned `strata attach` with its output collected as it comes.
struct Attached {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

fn attach(s: &Sandbox, args: &[&str]) -> Attached {
    let mut c = s.cmd();
    c.arg("attach")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let collect = |mut r: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        buf
    };
    let out = collect(Box::new(child.stdout.take().unwrap()));
    let err = collect(Box::new(child.stderr.take().unwrap()));
    let stdin = child.stdin.take();
    Attached {
        child,
        stdin,
        out,
        err,
    }
}

impl Attached {
    fn out(&self) -> String {
        text(&self.out.lock().unwrap())
    }
    fn err(&self) -> String {
        text(&self.err.lock().unwrap())
    }
    /// Connected to the monitor: it blocks its signals right after connecting.
    fn wait_connected(&self, s: &Sandbox) {
        let status = format!("/proc/{}/status", self.child.id());
        s.eventually(30, "attach to connect", || {
            std::fs::read_to_string(&status)
                .ok()
                .and_then(|st| {
                    st.lines()
                        .find_map(|l| l.strip_prefix("SigBlk:"))
                        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                })
                .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
        });
    }
    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
    fn wait(&mut self) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the collecting threads take the last bytes.
                std::thread::sleep(Duration::from_millis(100));
                return st.code().unwrap_or(-1);
            }
            if t.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("strata attach did not exit: {} {}", self.out(), self.err());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `attach` to a detached `-i` container: stdin in, stdout and stderr out apart, the
/// workload's exit code out; several clients at once (one with --no-stdin); the log has
/// everything; a stopped container is refused with what to do.
fn attach_stdio(iso: &str) {
    let s = Sandbox::new(iso);
    s.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "a",
        "busybox",
        "sh",
        "-c",
        "while read x; do echo got:$x; echo err:$x >&2; [ \"$x\" = quit ] && exit 3; done",
    ]);
    let mut writer = attach(&s, &["a"]);
    writer.wait_connected(&s);
    let mut watcher = attach(&s, &["--no-stdin", "a"]);
    watcher.wait_connected(&s);
    let mut w = writer.stdin.take().unwrap();
    // The watcher may register with the monitor a moment after it connected: ping until it
    // sees the output too.
    s.eventually(30, "the watcher to see output", || {
        w.write_all(b"ping\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        watcher.out().contains("got:ping\n")
    });
    w.write_all(b"quit\n").unwrap();
    assert_eq!(writer.wait(), 3, "{}", writer.err());
    assert_eq!(watcher.wait(), 3, "{}", watcher.err());
    assert!(writer.out().starts_with("got:ping\n"), "{}", writer.out());
    assert!(
        writer.out().ends_with("got:ping\ngot:quit\n"),
        "{}",
        writer.out()
    );
    assert!(
        writer.err().ends_with("err:ping\nerr:quit\n"),
        "{}",
        writer.err()
    );
    assert!(
        watcher.out().ends_with("got:ping\ngot:quit\n"),
        "{}",
        watcher.out()
    );
    assert!(watcher.err().ends_with("err:quit\n"), "{}", watcher.err());
    // The writer was there from the start: it saw what the log has.
    let logs = s.strata(&["logs", "a"]);
    assert_eq!(text(&logs.stdout), writer.out());
    assert_eq!(text(&logs.stderr), writer.err());
    let (_, err) = s.fails(&["attach", "a"]);
    assert!(
        err.contains("is not running") && err.contains("strata start a"),
        "{err}"
    );
    let (_, err) = s.fails(&["attach", "nope"]);
    assert!(err.contains("no such container"), "{err}");
    s.ok(&["rm", "a"]);
    s.assert_nothing_left(&[]);
}

/// --sig-proxy (the default) sends our signals to the workload; --sig-proxy=false makes them
/// end only the attachment; a foreground run has no monitor to attach to.
fn attach_signals(iso: &str) {
    use nix::sys::signal::Signal;
    let s = Sandbox::new(iso);
    s.ok(&[
        "run",
        "-d",
        "--name",
        "sp",
        "busybox",
        "sh",
        "-c",
        "trap 'echo got TERM; exit 9' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    s.eventually(30, "ready", || {
        text(&s.strata(&["logs", "sp"]).stdout).contains("ready")
    });
    let mut a = attach(&s, &["--sig-proxy=false", "sp"]);
    a.wait_connected(&s);
    a.signal(Signal::SIGINT);
    assert_eq!(a.wait(), 0);
    assert_eq!(s.inspect("sp")["State"]["Running"], true);
    let mut a = attach(&s, &["sp"]);
    a.wait_connected(&s);
    a.signal(Signal::SIGTERM);
    assert_eq!(a.wait(), 9, "{}", a.err());
    assert!(a.out().contains("got TERM\n"), "{}", a.out());
    s.ok(&["rm", "sp"]);

    let mut fg = s.cmd();
    fg.args(s.iso_flags().iter().fold(vec!["run"], |mut v, f| {
        v.push(f);
        v
    }))
    .args(["--name", "fg", "busybox", "sh", "-c", "echo up; sleep 100"])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut fg = fg.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(fg.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let (_, err) = s.fails(&["attach", "fg"]);
    assert!(err.contains("foreground"), "{err}");
    s.ok(&["rm", "-f", "fg"]);
    let _ = fg.wait();
    s.assert_nothing_left(&[]);
}

isolation_tests!(
    logs_and_wait,
    follow,
    stop_kill_restart,
    rm_force,
    listings,
    attach_stdio,
    attach_signals
);

/// Container-only: a reboot unmounts the overlay; `start` mounts it again over the kept upper.
#[test]
fn start_remounts_a_lost_rootfs() {
    let s = Sandbox::new("container");
    s.ok(&[
        "run",
        "--name",
        "rb",
        "busybox",
        "sh",
        "-c",
        "cat /kept 2>/dev/null || echo first > /kept",
    ]);
    let id = s.inspect("rb")["Id"].as_str().unwrap().to_string();
    let rootfs = s.store.path().join("containers").join(&id).join("rootfs");
    nix::mount::umount(&rootfs).unwrap();
    s.ok(&["start", "rb"]);
    assert_eq!(s.ok(&["wait", "rb"]), "0\n");
    assert_eq!(s.ok(&["logs", "rb"]), "first\n");
    s.ok(&["rm", "rb"]);
    s.assert_nothing_left(&[]);
}

/// `run -di`: stdin stays open, so a workload reading it keeps running until stopped.
#[test]
fn detached_interactive_keeps_stdin_open() {
    let s = Sandbox::new("container");
    s.ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "di",
        "busybox",
        "sh",
        "-c",
        "cat; echo eof",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.inspect("di")["State"]["Running"], true);
    s.ok(&["rm", "-f", "di"]);
    // Without -i the same workload sees EOF at once.
    s.ok(&[
        "run",
        "-d",
        "--name",
        "dn",
        "busybox",
        "sh",
        "-c",
        "cat; echo eof",
    ]);
    assert_eq!(s.ok(&["wait", "dn"]), "0\n");
    assert_eq!(s.ok(&["logs", "dn"]), "eof\n");
    s.ok(&["rm", "dn"]);
    s.assert_nothing_left(&[]);
}

/// Container-only: a `strata run` killed after the runtime made the container's cgroups but
/// before it saved its state leaves cgroups and a state directory no runtime record names;
/// `rm -f` removes them by the paths strata gives every container.
#[test]
fn rm_force_removes_what_a_killed_run_left_unrecorded() {
    let s = Sandbox::new("container");
    s.ok(&["create", "--name", "k", "busybox", "true"]);
    let id = s.inspect("k")["Id"].as_str().unwrap().to_string();
    // What the killed run left: the cgroup in every mounted hierarchy, a state dir without state.
    let mut made = Vec::new();
    for ctrl in ["memory", "pids", "cpu", "freezer", "unified"] {
        let d = std::path::Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("strata")
            .join(&id);
        if d.parent()
            .is_some_and(|p| p.parent().is_some_and(|h| h.exists()))
        {
            std::fs::create_dir_all(&d).unwrap();
            made.push(d);
        }
    }
    assert!(!made.is_empty());
    std::fs::create_dir_all(s.root.path().join(&id)).unwrap();
    std::fs::write(s.root.path().join(&id).join("lock"), b"").unwrap();
    s.ok(&["rm", "-f", "k"]);
    s.assert_nothing_left(&made);
}
