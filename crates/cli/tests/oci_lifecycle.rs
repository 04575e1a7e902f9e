//! strata-oci lifecycle end to end: create → start → state → kill → delete, run, exec,
//! pause/resume, ps, events, update, list — with the exact call forms containerd's shim uses.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn create_start_kill_delete_like_containerd() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("life");
    let b = Bundle::sh(&id, "echo started > /tmp/marker; exec sleep 1000");
    let bp = b.path().to_str().unwrap().to_string();
    let log = format!("{bp}/log.json");
    let pidf = format!("{bp}/init.pid");
    // containerd: --root R --log B/log.json --log-format json create --bundle B --pid-file B/init.pid ID
    oci.ok(&[
        "--log",
        &log,
        "--log-format",
        "json",
        "create",
        "--bundle",
        &bp,
        "--pid-file",
        &pidf,
        &id,
    ]);
    let pid: i32 = std::fs::read_to_string(&pidf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(oci.status(&id), "created");
    let st: Value = serde_json::from_str(&oci.ok(&["state", &id])).unwrap();
    assert_eq!(st["pid"], pid);
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["bundle"], bp.as_str());
    assert!(st["created"].as_str().unwrap().contains('T'));
    // Not exec'd yet: the workload has not run.
    assert!(!b.rootfs().join("tmp/marker").exists());
    let list: Value = serde_json::from_str(&oci.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "created");
    assert!(oci.ok(&["list", "-q"]).contains(&id));

    oci.ok(&["start", &id]);
    assert_eq!(oci.status(&id), "running");
    // The process is the workload now: its cmdline is sleep's.
    let mut ran = false;
    for _ in 0..100 {
        if std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .starts_with("sleep")
        {
            ran = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ran, "workload did not exec after start");
    let err = oci.fails(&["start", &id]);
    assert!(
        err.contains("cannot start an already running container"),
        "{err}"
    );
    let err = oci.fails(&["delete", &id]);
    assert!(
        err.contains("cannot delete container") && err.contains("not stopped: running"),
        "{err}"
    );
    assert_eq!(oci.status(&id), "running");

    oci.ok(&["kill", &id, "9"]);
    let mut stopped = false;
    for _ in 0..100 {
        if oci.status(&id) == "stopped" {
            stopped = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(stopped);
    let err = oci.fails(&["start", &id]);
    assert!(
        err.contains("cannot start a container that has stopped"),
        "{err}"
    );
    let err = oci.fails(&["kill", &id, "KILL"]);
    assert!(err.contains("container not running"), "{err}");
    oci.ok(&["delete", &id]);
    assert_clean(&oci, &b, &id);
    let err = oci.fails(&["state", &id]);
    assert!(
        err.contains(&format!("container \"{id}\" does not exist")),
        "{err}"
    );
    let err = oci.fails(&["--log", &log, "--log-format", "json", "delete", &id]);
    assert!(err.contains("does not exist"));
    // containerd reads the last JSON line of the log for the error.
    let last = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let v: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().unwrap().contains("does not exist"));
    assert!(v["time"].as_str().unwrap().contains('T'));
}

#[test]
fn delete_created_and_force_delete_running() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("del");
    let b = Bundle::sh(&id, "exec sleep 1000");
    let bp = b.path().to_str().unwrap();
    oci.ok(&["create", "--bundle", bp, &id]);
    // A created container is deleted without --force (runc kills it).
    oci.ok(&["delete", &id]);
    assert_clean(&oci, &b, &id);

    oci.ok(&["run", "--detach", "--bundle", bp, &id]);
    assert_eq!(oci.status(&id), "running");
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}

#[test]
fn run_foreground_returns_exit_code_and_cleans_up() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("run");
    let b = Bundle::sh(&id, "echo out; echo err >&2; exit 7");
    let (code, out, err) = oci.run_container(&b, &id);
    assert_eq!(code, 7);
    assert_eq!(out, "out\n");
    assert!(err.contains("err"));
    assert_clean(&oci, &b, &id);
    // Killed by a signal (from outside: pid 1 ignores its own SIGKILL): 128 + signal.
    let id2 = unique_id("run");
    let b2 = Bundle::sh(&id2, "exec sleep 1000");
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(oci_bin())
        .arg("--root")
        .arg(oci.root.path())
        .args(["run", "--bundle", b2.path().to_str().unwrap(), &id2])
        .stdout(out.reopen().unwrap())
        .stderr(out.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut running = false;
    for _ in 0..200 {
        let o = oci.run(&["state", &id2]);
        if String::from_utf8_lossy(&o.stdout).contains("\"running\"") {
            running = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(running);
    oci.ok(&["kill", &id2, "KILL"]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    assert_clean(&oci, &b2, &id2);
}

#[test]
fn exec_process_file_detach_and_args() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("exec");
    let mut b = Bundle::sh(&id, "exec sleep 1000");
    b.edit(|c| c["root"]["readonly"] = serde_json::json!(false));
    let bp = b.path().to_str().unwrap();
    oci.ok(&["run", "-d", "--bundle", bp, &id]);
    // exec with args, --env, --cwd, --user.
    let out = oci.ok(&[
        "exec",
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        &id,
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; cat /proc/1/cmdline",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..4], ["bar", "/tmp", "1000", "1000"], "{out}");
    assert!(
        lines[4].starts_with("sleep"),
        "exec did not join the pid namespace: {out}"
    );
    // exit code of the exec'd process is returned.
    let out = oci.run(&["exec", &id, "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    // containerd: exec --process F --detach --pid-file P ID
    let proc_file = b.path().join("process.json");
    let process = serde_json::json!({
        "args": ["sh", "-c", "echo from-process-file > /tmp/pf; sleep 1000"],
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
    });
    std::fs::write(&proc_file, process.to_string()).unwrap();
    let pidf = b.path().join("exec.pid");
    oci.ok(&[
        "exec",
        "--process",
        proc_file.to_str().unwrap(),
        "--detach",
        "--pid-file",
        pidf.to_str().unwrap(),
        &id,
    ]);
    let epid: i32 = std::fs::read_to_string(&pidf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The exec'd process is in the container's cgroup and sees its files.
    let pids: Vec<i32> = serde_json::from_str(&oci.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(pids.contains(&epid), "{pids:?} lacks {epid}");
    let mut seen = false;
    for _ in 0..100 {
        if std::fs::read_to_string(b.rootfs().join("tmp/pf"))
            .is_ok_and(|s| s == "from-process-file\n")
        {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(seen);
    // ps table (runs ps on the host, filtered to the container's pids).
    let table = oci.ok(&["ps", &id]);
    assert!(table.lines().next().unwrap().contains("PID"));
    assert!(table.contains("sleep 1000"));
    // A missing binary in exec: runc's message, non-zero exit.
    let err = oci.fails(&["exec", &id, "nonexistent-cmd"]);
    assert!(
        err.contains("exec: \"nonexistent-cmd\": executable file not found in $PATH"),
        "{err}"
    );
    oci.ok(&["kill", "--all", &id, "KILL"]);
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}

#[test]
fn pause_resume_update_events() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("pause");
    let b = Bundle::sh(&id, "exec sleep 1000");
    let bp = b.path().to_str().unwrap();
    oci.ok(&["run", "-d", "--bundle", bp, &id]);
    oci.ok(&["pause", &id]);
    assert_eq!(oci.status(&id), "paused");
    let err = oci.fails(&["exec", &id, "true"]);
    assert!(err.contains("cannot exec in a paused container"), "{err}");
    let err = oci.fails(&["pause", &id]);
    assert!(err.contains("container not running"), "{err}");
    oci.ok(&["resume", &id]);
    assert_eq!(oci.status(&id), "running");
    let err = oci.fails(&["resume", &id]);
    assert!(err.contains("container not paused"), "{err}");

    // docker update --memory 64m: `update --resources - ID` with LinuxResources on stdin.
    let fixture = std::fs::read("/work/shared/fixtures/docker-update-resources.json").unwrap_or_else(|_| {
        br#"{"memory":{"limit":67108864,"reservation":0,"swap":67108864,"kernel":0},"cpu":{"shares":512,"quota":0,"period":0},"pids":{"limit":50},"blockIO":{"weight":0}}"#.to_vec()
    });
    let out = oci.run_stdin(&["update", "--resources", "-", &id], &fixture);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Checked from inside: the container's own cgroup files.
    let out = oci.ok(&["exec", &id, "sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.shares"]);
    assert_eq!(out, "67108864\n50\n512\n");
    oci.ok(&["update", "--pids-limit", "77", "--memory", "32m", &id]);
    let out = oci.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]);
    assert_eq!(out, "77\n33554432\n");

    let ev: Value = serde_json::from_str(oci.ok(&["events", "--stats", &id]).trim()).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], id.as_str());
    assert!(ev["data"]["memory"].is_object(), "{ev}");
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}

#[test]
fn spec_features_and_unsupported_flags() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let f: Value = serde_json::from_str(&oci.ok(&["features"])).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "user"));
    let dir = tempfile::tempdir().unwrap();
    oci.ok(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    let s: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(s["process"]["args"][0], "sh");
    assert_eq!(s["root"]["path"], "rootfs");
    let err = oci.fails(&["spec", "--bundle", dir.path().to_str().unwrap()]);
    assert!(err.contains("exists"), "{err}");
    let dir2 = tempfile::tempdir().unwrap();
    oci.ok(&[
        "spec",
        "--rootless",
        "--bundle",
        dir2.path().to_str().unwrap(),
    ]);
    let s: Value =
        serde_json::from_slice(&std::fs::read(dir2.path().join("config.json")).unwrap()).unwrap();
    assert!(s["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "user"));
    assert!(s["linux"]["uidMappings"].is_array());
    let err = oci.fails(&["--systemd-cgroup", "list"]);
    assert!(err.contains("--systemd-cgroup is not supported"), "{err}");
}

/// `run` records when the workload's execve took effect (what `strata compare` reports as start):
/// after the command began, before it returned; `create` (exec happens at `start`) records none.
#[test]
fn run_records_the_exec_time() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("exectime");
    let b = Bundle::sh(&id, "exec sleep 1000");
    let bp = b.path().to_str().unwrap();
    let before = chrono::Utc::now();
    oci.ok(&["run", "-d", "--bundle", bp, &id]);
    let after = chrono::Utc::now();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.state_dir(&id).join("state.json")).unwrap())
            .unwrap();
    let started = state["started"]
        .as_str()
        .expect("state.json has \"started\"");
    let started = chrono::DateTime::parse_from_rfc3339(started).unwrap();
    assert!(
        before <= started && started <= after,
        "{before} <= {started} <= {after}"
    );
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);

    let id2 = unique_id("exectime-c");
    let b2 = Bundle::sh(&id2, "exec sleep 1000");
    oci.ok(&["create", "--bundle", b2.path().to_str().unwrap(), &id2]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(oci.state_dir(&id2).join("state.json")).unwrap())
            .unwrap();
    assert!(state.get("started").is_none(), "{state}");
    oci.ok(&["delete", "--force", &id2]);
    assert_clean(&oci, &b2, &id2);
}
