//! Detached containers: monitor, logs, wait, stop, kill, restart, rm -f, ps/inspect/top/stats.

mod cli_common;

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
    if iso == "vm" {
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
    s.eventually(10, "auto-removal", || s.ps().is_empty());
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
    assert_eq!(running[0]["Isolation"], iso);
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
    // processes (the UML kernel and its address-space helpers).
    let cmd = if iso == "vm" { "linux" } else { "sleep" };
    assert!(top.iter().any(|p| p["Command"][0] == cmd), "{top:?}");
    let stats: Vec<serde_json::Value> =
        serde_json::from_str(&s.ok(&["stats", "--no-stream", "--json"])).unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0]["MemoryLimit"], 64 << 20);
    assert!(stats[0]["Pids"].as_u64().unwrap() >= 1);
    let v = s.inspect("l");
    assert_eq!(v["Config"]["process"]["args"][0], "sh");
    let (_, err) = s.fails(&["top", "c"]);
    assert!(err.contains("not running"), "{err}");
    // An image name still inspects the image.
    let img: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", "busybox"])).unwrap();
    assert!(img[0]["RepoTags"].is_array());
    s.ok(&["rm", "-f", "l", "c"]);
    s.assert_nothing_left(&[]);
}

isolation_tests!(logs_and_wait, follow, stop_kill_restart, rm_force, listings);

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
