//! `strata run` in the foreground: exit codes, stdio, process settings, errors, cleanup.

mod cli_common;

use cli_common::{host_cgroups, text, Sandbox};

fn exit_codes(iso: &str) {
    let s = Sandbox::new(iso);
    assert_eq!(
        s.ok(&["run", "--rm", "busybox", "echo", "hello"]),
        "hello\n"
    );
    let code = |args: &[&str]| s.strata(args).status.code();
    assert_eq!(
        code(&["run", "--rm", "busybox", "sh", "-c", "exit 3"]),
        Some(3)
    );
    // Not executable (a regular file) → 126; missing (by PATH lookup or by path) → 127.
    let o = s.strata(&["run", "--rm", "busybox", "/etc/passwd"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(126), "{err}");
    assert!(
        err.contains("/etc/passwd") && err.to_lowercase().contains("permission denied"),
        "the error must say what failed: {err:?}"
    );
    let o = s.strata(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(
        text(&o.stderr).contains("executable file not found"),
        "{}",
        text(&o.stderr)
    );
    // A missing program by path: 127, and the error names it and the cause, as Docker's
    // `exec: "/no/such/file": stat /no/such/file: no such file or directory`.
    let o = s.strata(&["run", "--rm", "busybox", "/no/such/file"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(127), "{err}");
    assert!(
        err.contains("/no/such/file") && err.to_lowercase().contains("no such file or directory"),
        "the error must say what failed: {err:?}"
    );
    s.assert_nothing_left(&[]);
}

fn stdio(iso: &str) {
    let s = Sandbox::new(iso);
    let o = s.strata_in(
        &[
            "run",
            "--rm",
            "-i",
            "busybox",
            "sh",
            "-c",
            "tr a-z A-Z; echo done >&2",
        ],
        Some(b"piped input\n"),
    );
    assert!(o.status.success());
    assert_eq!(text(&o.stdout), "PIPED INPUT\n");
    assert_eq!(text(&o.stderr), "done\n");
    // Without -i the workload's stdin is empty, not ours.
    let o = s.strata_in(&["run", "--rm", "busybox", "cat"], Some(b"not forwarded"));
    assert_eq!(text(&o.stdout), "");
    let o = s.strata(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2",
    ]);
    assert_eq!(text(&o.stdout), "to-out\n");
    assert_eq!(text(&o.stderr), "to-err\n");
}

fn process_settings(iso: &str) {
    let s = Sandbox::new(iso);
    let env_file = s.store.path().join("envfile");
    std::fs::write(&env_file, "# comment\nFROM_FILE=yes\nBOTH=file\n").unwrap();
    // A container gets /etc/hostname as a bind mount of a host file, which a VM cannot see: the
    // guest's hostname is set in its own kernel (the agent skips host-file binds).
    let script = if iso.starts_with("vm") {
        "echo $A $FROM_FILE $BOTH; pwd; hostname; hostname"
    } else {
        "echo $A $FROM_FILE $BOTH; pwd; hostname; cat /etc/hostname"
    };
    let out = s.ok(&[
        "run",
        "--rm",
        "-e",
        "A=1",
        "-e",
        "BOTH=flag",
        "--env-file",
        env_file.to_str().unwrap(),
        "-w",
        "/tmp",
        "--hostname",
        "box1",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out, "1 yes flag\n/tmp\nbox1\nbox1\n");
    // Users by name (from the image's /etc/passwd) and by uid:gid.
    assert_eq!(
        s.ok(&["run", "--rm", "-u", "user", "busybox", "id"]),
        "uid=1000(user) gid=1000(user) groups=1000(user)\n"
    );
    assert_eq!(
        s.ok(&[
            "run",
            "--rm",
            "-u",
            "1234:4321",
            "busybox",
            "sh",
            "-c",
            "id -u; id -g"
        ]),
        "1234\n4321\n"
    );
    let (code, err) = s.fails(&["run", "--rm", "-u", "nosuchuser", "busybox", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("nosuchuser"), "{err}");
    // --entrypoint replaces the image's and the command becomes its arguments.
    assert_eq!(
        s.ok(&["run", "--rm", "--entrypoint", "echo", "busybox", "a", "b"]),
        "a b\n"
    );
    // The default hostname is the short id.
    let id_host = s.ok(&["run", "--name", "named", "busybox", "hostname"]);
    let v = s.inspect("named");
    assert_eq!(id_host.trim(), &v["Id"].as_str().unwrap()[..12]);
    assert_eq!(v["State"]["ExitCode"], 0);
    s.ok(&["rm", "named"]);
    s.assert_nothing_left(&[]);
}

fn network(iso: &str) {
    let s = Sandbox::new(iso);
    assert_eq!(
        s.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "ls",
            "/sys/class/net"
        ]),
        "lo\n"
    );
    if iso.starts_with("vm") {
        // A VM has its own kernel and network stack: sharing the host's is refused.
        let (_, err) = s.fails(&["run", "--rm", "--network", "host", "busybox", "true"]);
        assert!(err.contains("own kernel"), "{err}");
        s.assert_nothing_left(&[]);
        return;
    }
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let inside = s.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(inside.lines().count(), host.len(), "{inside}");
    // A network that does not exist (`bridge` would make the host's default network).
    let (_, err) = s.fails(&[
        "run",
        "--rm",
        "--network",
        "no-such-network",
        "busybox",
        "true",
    ]);
    assert!(err.contains("no-such-network"), "{err}");
}

fn errors_leave_nothing(iso: &str) {
    let s = Sandbox::new(iso);
    let (_, err) = s.fails(&["run", "--rm", "no-such-image", "true"]);
    assert!(
        err.contains("strata load") && err.contains("strata pull"),
        "{err}"
    );
    let (_, err) = s.fails(&["run", "--rm", "-v", "relative:/x", "busybox", "true"]);
    assert!(err.contains("bad -v"), "{err}");
    let (_, err) = s.fails(&["run", "--rm", "-v", "/no/such/dir:/x", "busybox", "true"]);
    assert!(err.contains("does not exist"), "{err}");
    let (_, err) = s.fails(&["run", "--rm", "--memory", "lots", "busybox", "true"]);
    assert!(err.contains("bad size"), "{err}");
    // A failure after the rootfs was mounted (unknown user) must also leave nothing.
    s.fails(&["run", "--rm", "-u", "ghost", "busybox", "true"]);
    s.fails(&["run", "-u", "ghost", "busybox", "true"]);
    s.fails(&["run", "-d", "-u", "ghost", "busybox", "true"]);
    s.assert_nothing_left(&[]);
}

fn names(iso: &str) {
    let s = Sandbox::new(iso);
    s.ok(&["create", "--name", "taken", "busybox", "true"]);
    let (_, err) = s.fails(&["run", "--rm", "--name", "taken", "busybox", "true"]);
    assert!(
        err.contains("already in use") && err.contains("strata rm taken"),
        "{err}"
    );
    let (_, err) = s.fails(&["run", "--rm", "--name", "bad/name", "busybox", "true"]);
    assert!(err.contains("invalid container name"), "{err}");
    s.ok(&["rm", "taken"]);
    // The name is free again.
    s.ok(&["run", "--rm", "--name", "taken", "busybox", "true"]);
    s.assert_nothing_left(&[]);
}

fn rm_leaves_nothing(iso: &str) {
    let s = Sandbox::new(iso);
    if iso.starts_with("vm") {
        // The guest has its own cgroup tree; the VM's host cgroups are strata-vm/<id>, and the
        // id starts with the default hostname.
        let host = s.ok(&["run", "--rm", "busybox", "hostname"]);
        let short = host.trim();
        assert_eq!(short.len(), 12, "{host}");
        for ctrl in ["memory", "pids"] {
            let d = std::path::Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("strata-vm");
            let left: Vec<_> = std::fs::read_dir(&d)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(short))
                        .collect()
                })
                .unwrap_or_default();
            assert!(left.is_empty(), "VM cgroup left in {}", d.display());
        }
        s.assert_nothing_left(&[]);
    } else {
        let cg = s.ok(&[
            "run",
            "--rm",
            "--memory",
            "32m",
            "busybox",
            "cat",
            "/proc/self/cgroup",
        ]);
        let dirs = host_cgroups(&cg);
        assert!(!dirs.is_empty(), "{cg}");
        s.assert_nothing_left(&dirs);
    }
    // Without --rm the container stays (exited) until `rm`.
    s.ok(&["run", "--name", "kept", "busybox", "true"]);
    let ps = s.ps();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["State"], "exited");
    assert_eq!(ps[0]["Isolation"], iso.split('-').next().unwrap());
    s.ok(&["rm", "kept"]);
    s.assert_nothing_left(&[]);
}

/// Runs `strata run <isolation flags> <opts> busybox sh -c ...` in the foreground with a
/// workload that answers SIGTERM with "got TERM" and exit 9; once it printed "ready", sends
/// SIGTERM to strata. Returns strata and the rest of its stdout.
fn run_and_send_term(
    s: &Sandbox,
    opts: &[&str],
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    let mut c = s.cmd();
    c.args(s.iso_flags().iter().fold(vec!["run"], |mut v, f| {
        v.push(f);
        v
    }))
    .args(opts)
    .args([
        "busybox",
        "sh",
        "-c",
        "trap 'echo got TERM; exit 9' TERM; echo ready; while true; do sleep 0.1; done",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    (child, out)
}

fn signals_are_forwarded(iso: &str) {
    use std::io::BufRead;
    let s = Sandbox::new(iso);
    let (mut child, mut out) = run_and_send_term(&s, &["--rm"]);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got TERM\n");
    assert_eq!(child.wait().unwrap().code(), Some(9));
    s.assert_nothing_left(&[]);
}

/// A foreground run that is not `--rm` leaves its output in the container log, as a detached
/// one does (docker logs works for foreground runs): stdout and stderr apart, a last partial
/// line included, our own stdio still getting everything, signals still forwarded.
fn foreground_runs_are_logged(iso: &str) {
    use std::io::BufRead;
    let s = Sandbox::new(iso);
    let o = s.strata_in(
        &[
            "run",
            "-i",
            "--name",
            "fg",
            "busybox",
            "sh",
            "-c",
            "tr a-z A-Z; echo to-err >&2; printf partial; exit 3",
        ],
        Some(b"piped input\n"),
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "PIPED INPUT\npartial");
    assert_eq!(text(&o.stderr), "to-err\n");
    let logs = s.strata(&["logs", "fg"]);
    assert_eq!(text(&logs.stdout), "PIPED INPUT\npartial");
    assert_eq!(text(&logs.stderr), "to-err\n");
    assert_eq!(s.inspect("fg")["State"]["ExitCode"], 3);

    // Signals reach the workload through the relay too.
    let (mut child, _out) = run_and_send_term(&s, &["--name", "sig"]);
    assert_eq!(child.wait().unwrap().code(), Some(9));
    assert_eq!(
        text(&s.strata(&["logs", "sig"]).stdout),
        "ready\ngot TERM\n"
    );

    // A reader that goes away ends the workload's output as it would without the relay, and
    // the run is still recorded.
    let mut c = s.cmd();
    c.args(s.iso_flags().iter().fold(vec!["run"], |mut v, f| {
        v.push(f);
        v
    }))
    .args(["--name", "yes", "busybox", "yes"])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "y\n");
    drop(out);
    assert!(child.wait().unwrap().code().is_some());
    assert_eq!(s.inspect("yes")["State"]["Status"], "exited");
    s.ok(&["rm", "fg", "sig", "yes"]);
    s.assert_nothing_left(&[]);
}

/// A container shares the host's kernel; a VM runs its own.
fn kernel(iso: &str) {
    let s = Sandbox::new(iso);
    let host = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .unwrap()
        .stdout;
    let inside = s.ok(&["run", "--rm", "busybox", "uname", "-r"]);
    assert!(!inside.trim().is_empty());
    if iso.starts_with("vm") {
        assert_ne!(inside.as_bytes(), host.as_slice(), "{inside}");
    } else {
        assert_eq!(inside.as_bytes(), host.as_slice(), "{inside}");
    }
}

isolation_tests!(
    kernel,
    foreground_runs_are_logged,
    exit_codes,
    signals_are_forwarded,
    stdio,
    process_settings,
    network,
    errors_leave_nothing,
    names,
    rm_leaves_nothing
);

/// A UML VM and a QEMU VM of one image at once share its read-only root disk. QEMU's image
/// locks conflicted with UML's lock on that file: the qemu VM failed to start with "Failed to
/// get consistent read lock" while a UML VM of the image ran.
#[test]
fn uml_and_qemu_vms_of_one_image_run_at_once() {
    if !strata_testkit::root_and_busybox() {
        return;
    }
    // "container": no isolation flags added; each run names its own platform.
    let s = Sandbox::new("container");
    let name = format!("both-{}", std::process::id());
    s.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--vm",
        "--platform",
        "uml",
        "busybox",
        "sleep",
        "60",
    ]);
    let out = s.strata(&[
        "run",
        "--rm",
        "--vm",
        "--platform",
        "qemu",
        "busybox",
        "echo",
        "qemu-ok",
    ]);
    s.ok(&["rm", "-f", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "qemu-ok");
    s.assert_nothing_left(&[]);
}
