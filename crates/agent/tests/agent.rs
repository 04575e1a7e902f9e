//! Drives the real strata-agent binary (in --no-pid1 mode) over a socketpair with the real host
//! client: the protocol, process handling, pty, backpressure and hostile input, without a VM.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use strata_proto::{Client, ClientError, Frame, Message, MAGIC};

/// The agent process; killed and reaped on drop even when a test fails.
struct Agent {
    child: Child,
    client: Option<Client>,
}

impl Agent {
    fn start() -> Agent {
        let (host, guest) = UnixStream::pair().unwrap();
        let fd = guest.as_raw_fd();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-agent"));
        cmd.args(["--no-pid1", "--channel-fd", "3"])
            .stdin(Stdio::null());
        // SAFETY: dup2 and prctl are async-signal-safe; dup2 moves the socket to fd 3 without
        // CLOEXEC.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Die with the test process even if it is killed before the Drop guard runs.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(guest);
        let client = Client::from_unix_stream(host, Duration::from_secs(20)).unwrap();
        Agent {
            child,
            client: Some(client),
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// Waits for the agent itself to exit and returns its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        self.client = None;
        self.child.wait().unwrap().code()
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn process(args: &[&str]) -> serde_json::Value {
    json!({"args": args, "env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/root"], "cwd": "/"})
}

fn config(args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"ociVersion": "1.0.2", "process": process(args), "root": {"path": "rootfs"}}),
    )
    .unwrap()
}

/// Runs `args` as the main process with `stdin` and returns (stdout, stderr, exit code).
fn run_main(
    agent: &Agent,
    args: &[&str],
    stdin: &[u8],
) -> (String, String, strata_proto::ExitStatus) {
    let main = agent.client().create(&config(args)).unwrap();
    agent.client().start().unwrap();
    let mut w = main.take_stdin().unwrap();
    w.write_all(stdin).unwrap();
    w.close().unwrap();
    let (o, e, st) = main.output().unwrap();
    (
        String::from_utf8_lossy(&o).into(),
        String::from_utf8_lossy(&e).into(),
        st,
    )
}

#[test]
fn exit_codes_and_agent_exit_after_ack() {
    for (script, code) in [("exit 0", 0), ("exit 3", 3), ("kill -KILL $$", 137)] {
        let mut agent = Agent::start();
        let (_, _, st) = run_main(&agent, &["sh", "-c", script], b"");
        assert_eq!(st.code, code, "{script}");
        assert_eq!(st.signal, (code == 137).then_some(9));
        // After the main status is acknowledged the agent finishes on its own.
        assert_eq!(agent.wait_exit(), Some(0));
    }
}

#[test]
fn an_exec_without_stdin_reads_eof_at_once_and_refuses_stdin_data() {
    let agent = Agent::start();
    let main = agent.client().create(&config(&["sleep", "1000"])).unwrap();
    agent.client().start().unwrap();
    let args = serde_json::to_vec(&process(&["sh", "-c", "cat; echo eof"])).unwrap();
    // No stdin writer is ever taken or closed: the process must see EOF by itself.
    let h = agent.client().exec_with_stdin(&args, false, false).unwrap();
    let (o, _, st) = h.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o), "eof\n");
    assert_eq!(st.code, 0);
    // Stdin data for such a session is refused on the connection, and the agent goes on.
    let h = agent
        .client()
        .exec_with_stdin(
            &serde_json::to_vec(&process(&["sleep", "1"])).unwrap(),
            false,
            false,
        )
        .unwrap();
    let mut w = h.take_stdin().unwrap();
    let _ = w.write_all(b"x");
    let t = std::time::Instant::now();
    while agent.client().connection_errors().is_empty() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let errs = agent.client().connection_errors();
    assert!(
        errs.iter()
            .any(|e| e.contains("stdin data after stdin close")),
        "{errs:?}"
    );
    drop(w);
    assert_eq!(h.output().unwrap().2.code, 0);
    main.signal(libc::SIGKILL).unwrap();
    assert_eq!(main.wait().unwrap().code, 137);
}

/// The agent collects a process's exit with the end of its outputs before it writes to the
/// host (agent.rs, `closed_before_exit`); an output closed by a process that lives on must
/// still reach the host at once, not with the next event.
#[test]
fn an_output_closed_by_a_process_that_lives_on_reaches_the_host_at_once() {
    let agent = Agent::start();
    let main = agent.client().create(&config(&["sleep", "1000"])).unwrap();
    agent.client().start().unwrap();
    let args = serde_json::to_vec(&process(&["sh", "-c", "echo x; exec >&-; sleep 20"])).unwrap();
    let h = agent.client().exec_with_stdin(&args, false, false).unwrap();
    let mut out = h.take_stdout().unwrap();
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    out.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"x\n");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the Close of stdout waited for the process ({:?})",
        t.elapsed()
    );
    h.signal(libc::SIGKILL).unwrap();
    assert_eq!(h.wait().unwrap().code, 137);
    main.signal(libc::SIGKILL).unwrap();
    assert_eq!(main.wait().unwrap().code, 137);
}

#[test]
fn stdout_and_stderr_stay_separate_and_stdin_is_piped() {
    let agent = Agent::start();
    let (o, e, st) = run_main(
        &agent,
        &["sh", "-c", "echo out; echo err >&2; tr a-z A-Z"],
        b"piped input\n",
    );
    assert_eq!(o, "out\nPIPED INPUT\n");
    assert_eq!(e, "err\n");
    assert_eq!(st.code, 0);
}

#[test]
fn missing_and_non_executable_programs_give_127_and_126_and_set_up_failures_125() {
    let agent = Agent::start();
    let (_, e, st) = run_main(&agent, &["no-such-program-strata"], b"");
    assert_eq!(st.code, 127);
    assert!(e.contains("executable file not found in $PATH"), "{e}");
    drop(agent);

    // Execs beside a running main process.
    let agent = Agent::start();
    agent.client().create(&config(&["sleep", "100"])).unwrap();
    agent.client().start().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let h = agent
        .client()
        .exec(
            &serde_json::to_vec(&process(&[script.to_str().unwrap()])).unwrap(),
            false,
        )
        .unwrap();
    let (_, e, st) = h.output().unwrap();
    assert_eq!(st.code, 126, "{}", String::from_utf8_lossy(&e));
    assert!(String::from_utf8_lossy(&e).contains("permission denied"));

    let missing_abs = agent
        .client()
        .exec(
            &serde_json::to_vec(&process(&["/nonexistent/prog"])).unwrap(),
            false,
        )
        .unwrap();
    assert_eq!(missing_abs.output().unwrap().2.code, 127);

    let mut bad_cwd = process(&["true"]);
    bad_cwd["cwd"] = json!("/nonexistent-strata-dir");
    let h = agent
        .client()
        .exec(&serde_json::to_vec(&bad_cwd).unwrap(), false)
        .unwrap();
    let (_, e, st) = h.output().unwrap();
    assert_eq!(st.code, 125);
    assert!(
        String::from_utf8_lossy(&e).contains("chdir"),
        "{}",
        String::from_utf8_lossy(&e)
    );
}

#[test]
fn signals_are_forwarded_and_reported_as_128_plus_n() {
    let agent = Agent::start();
    let main = agent.client().create(&config(&["sleep", "100"])).unwrap();
    let pid = agent.client().start().unwrap();
    assert!(pid > 0);
    main.signal(libc::SIGTERM).unwrap();
    let (_, _, st) = main.output().unwrap();
    assert_eq!((st.code, st.signal), (143, Some(15)));
}

#[test]
fn execs_run_concurrently_beside_the_main_process() {
    let agent = Agent::start();
    let main = agent
        .client()
        .create(&config(&["sh", "-c", "read line; echo main got $line"]))
        .unwrap();
    agent.client().start().unwrap();
    // All execs are alive at the same time: each waits for a file the last one creates.
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("go");
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let script = format!(
                "while [ ! -e {} ]; do sleep 0.05; done; echo exec {i}; echo e{i} >&2; exit {i}",
                flag.display()
            );
            agent
                .client()
                .exec(
                    &serde_json::to_vec(&process(&["sh", "-c", &script])).unwrap(),
                    false,
                )
                .unwrap()
        })
        .collect();
    std::fs::write(&flag, "").unwrap();
    std::thread::scope(|s| {
        let joins: Vec<_> = handles
            .iter()
            .map(|h| s.spawn(move || h.output().unwrap()))
            .collect();
        for (i, j) in joins.into_iter().enumerate() {
            let (o, e, st) = j.join().unwrap();
            assert_eq!(String::from_utf8_lossy(&o), format!("exec {i}\n"));
            assert_eq!(String::from_utf8_lossy(&e), format!("e{i}\n"));
            assert_eq!(st.code, i as i32);
        }
    });
    let mut w = main.take_stdin().unwrap();
    w.write_all(b"hello\n").unwrap();
    drop(w);
    let (o, _, st) = main.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o), "main got hello\n");
    assert_eq!(st.code, 0);
}

/// The host client forgets an exec once its process exited and its handles are gone, so a
/// long-lived client (the VM keeper, one exec per `strata exec`) does not grow per exec
/// (issue 14's soak found ~6 KiB of keeper RSS per exec before this).
#[test]
fn finished_execs_leave_no_session_state_in_the_client() {
    let agent = Agent::start();
    let main = agent.client().create(&config(&["sleep", "100"])).unwrap();
    agent.client().start().unwrap();
    assert_eq!(agent.client().open_sessions(), 1);
    for i in 0..20 {
        // Output read and waited for; waited for only; handle dropped before the exit arrives;
        // a program that does not exist (126/127: still a session with an exit).
        let argv: &[&str] = match i % 4 {
            0 => &["sh", "-c", "echo out; echo err >&2"],
            1 => &["true"],
            2 => &["sh", "-c", "sleep 0.05"],
            _ => &["/no/such/program"],
        };
        let h = agent
            .client()
            .exec(&serde_json::to_vec(&process(argv)).unwrap(), false)
            .unwrap();
        match i % 4 {
            0 | 3 => drop(h.output().unwrap()),
            1 => drop(h.wait().unwrap()),
            _ => drop(h),
        }
    }
    // A running exec keeps its state while a handle names it.
    let running = agent
        .client()
        .exec(
            &serde_json::to_vec(&process(&["sleep", "100"])).unwrap(),
            false,
        )
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while agent.client().open_sessions() != 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        agent.client().open_sessions(),
        2,
        "the main session and the running exec only"
    );
    running.signal(libc::SIGKILL).unwrap();
    assert_eq!(running.wait().unwrap().signal, Some(libc::SIGKILL));
    drop(running);
    assert_eq!(agent.client().open_sessions(), 1);
    main.signal(libc::SIGKILL).unwrap();
}

#[test]
fn pty_sessions_see_window_resizes() {
    let agent = Agent::start();
    agent.client().create(&config(&["sleep", "100"])).unwrap();
    agent.client().start().unwrap();
    let mut p = process(&[
        "sh",
        "-c",
        "stty size; read x; stty size; [ -t 0 ] && echo is-a-tty",
    ]);
    p["consoleSize"] = json!({"height": 30, "width": 100});
    let h = agent
        .client()
        .exec(&serde_json::to_vec(&p).unwrap(), true)
        .unwrap();
    let mut out = h.take_stdout().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("30 100") {
        let n = out.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "pty closed early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    h.resize(50, 132).unwrap();
    let mut w = h.take_stdin().unwrap();
    w.write_all(b"\n").unwrap();
    out.read_to_end(&mut seen).unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("50 132"), "{text}");
    assert!(text.contains("is-a-tty"), "{text}");
    assert_eq!(h.wait().unwrap().code, 0);
}

#[test]
fn fifty_megabytes_to_a_slow_reader_keep_the_agent_bounded() {
    let agent = Agent::start();
    let total: usize = 50 * 1024 * 1024;
    let main = agent
        .client()
        .create(&config(&["head", "-c", &total.to_string(), "/dev/zero"]))
        .unwrap();
    agent.client().start().unwrap();
    let mut out = main.take_stdout().unwrap();
    let baseline = agent.rss_kib();
    let mut got = 0usize;
    let mut max_rss = baseline;
    let mut buf = vec![0u8; 64 * 1024];
    let mut reads = 0u64;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| *b == 0));
        got += n;
        reads += 1;
        if reads % 16 == 0 {
            // A slow reader: the producer must wait for us, not pile up in the agent.
            std::thread::sleep(Duration::from_millis(2));
            max_rss = max_rss.max(agent.rss_kib());
        }
    }
    assert_eq!(got, total);
    assert_eq!(main.wait().unwrap().code, 0);
    // Credit windows bound the agent's buffers to a few hundred KiB; 50 MB would show.
    assert!(
        max_rss < baseline + 16 * 1024,
        "agent RSS grew from {baseline} KiB to {max_rss} KiB"
    );
}

#[test]
fn hostile_frames_are_answered_with_errors_and_the_agent_keeps_working() {
    let agent = Agent::start();
    let c = agent.client();
    let mut hostile: Vec<u8> = b"\x00\xffgarbage\r\n+++ATH0\r\n".to_vec();
    // Oversize length.
    hostile.extend_from_slice(&MAGIC);
    hostile.extend_from_slice(&[1, 0x21, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    // Unknown frame type with a payload.
    hostile.extend_from_slice(&MAGIC);
    hostile.extend_from_slice(&[1, 0x77, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, b'a', b'b', b'c']);
    // Bad version.
    hostile.extend_from_slice(&MAGIC);
    hostile.extend_from_slice(&[9, 0x12, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    // Create with invalid UTF-8 JSON.
    hostile.extend_from_slice(&MAGIC);
    hostile.extend_from_slice(&[1, 0x10, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0xc3, 0x28]);
    // Well-formed frames that make no sense: agent-only messages, unknown sessions, exec before create.
    for f in [
        Frame::new(1, Message::Stdout(b"x".to_vec())),
        Frame::new(99, Message::Stdin(b"x".to_vec())),
        Frame::new(99, Message::Signal(9)),
        Frame::new(1, Message::Start(Default::default())),
        Frame::new(
            5,
            Message::Exec(strata_proto::ExecRequest {
                process: process(&["true"]),
                tty: false,
                stdin: true,
            }),
        ),
    ] {
        hostile.extend(f.encode().unwrap());
    }
    c.send_raw_bytes(&hostile).unwrap();
    // A config that is JSON but not a valid spec is refused with a clear error.
    let err = c
        .create(br#"{"process": {"args": []}}"#)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Agent { kind, .. } if kind == "config"),
        "{err}"
    );
    assert!(err.to_string().contains("process.args is empty"), "{err}");
    let errors = c.connection_errors();
    assert!(
        errors.iter().any(|e| e.contains("bad frame magic")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("exceeds the maximum")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("unknown frame type")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("UTF-8")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("wire version")),
        "{errors:?}"
    );
    drop(agent);

    // A fresh agent survives the same abuse and still runs a workload afterwards.
    let agent = Agent::start();
    agent.client().send_raw_bytes(&hostile).unwrap();
    let (o, _, st) = run_main(&agent, &["echo", "still alive"], b"");
    assert_eq!((o.as_str(), st.code), ("still alive\n", 0));
}

#[test]
fn user_cwd_env_and_rlimits_are_applied() {
    let agent = Agent::start();
    let mut p = process(&["sh", "-c", "id -u; id -g; id -G; pwd; echo $FOO; ulimit -n"]);
    p["user"] = json!({"uid": 65534, "gid": 65534, "additionalGids": [65534, 4]});
    p["cwd"] = json!("/tmp");
    p["env"].as_array_mut().unwrap().push(json!("FOO=bar baz"));
    p["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 123}]);
    let cfg = serde_json::to_vec(&json!({"process": p})).unwrap();
    let main = agent.client().create(&cfg).unwrap();
    agent.client().start().unwrap();
    let (o, e, st) = main.output().unwrap();
    assert_eq!(st.code, 0, "{}", String::from_utf8_lossy(&e));
    assert_eq!(
        String::from_utf8_lossy(&o),
        "65534\n65534\n65534 4\n/tmp\nbar baz\n123\n"
    );
}

/// A tty channel (as on a UML serial line): the agent announces a link window and the host
/// keeps within it while streaming stdin and reading stdout.
#[test]
fn a_tty_channel_gets_a_link_window_and_still_streams() {
    let pty = nix::pty::openpty(None, None).unwrap();
    // The slave's path, through /proc.
    let slave_path =
        std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata-agent"))
        .args(["--no-pid1", "--channel"])
        .arg(&slave_path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let master = std::fs::File::from(pty.master);
    let client =
        Client::with_timeout(master.try_clone().unwrap(), master, Duration::from_secs(20)).unwrap();
    assert_eq!(client.agent_hello().link_window, Some(2048));
    let main = client.create(&config(&["cat"])).unwrap();
    client.start().unwrap();
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut stdin = main.take_stdin().unwrap();
    let (o, _, st) = std::thread::scope(|s| {
        s.spawn(|| {
            stdin.write_all(&data).unwrap();
            drop(stdin);
        });
        main.output().unwrap()
    });
    assert_eq!(st.code, 0);
    assert!(o == data, "{} bytes came back, changed", o.len());
    drop(client);
    drop(pty.slave);
    let _ = child.kill();
    child.wait().unwrap();
}

#[test]
fn shutdown_kills_the_workload_and_ends_the_agent() {
    let mut agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 1000", pidfile.display());
    let _main = agent
        .client()
        .create(&config(&["sh", "-c", &script]))
        .unwrap();
    agent.client().start().unwrap();
    while std::fs::read_to_string(&pidfile).map_or(true, |s| !s.ends_with('\n')) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    agent.client().shutdown().unwrap();
    assert_eq!(agent.wait_exit(), Some(0));
    // The workload is gone (killed, and reaped by the agent as its subreaper/parent).
    // SAFETY: signal 0 only checks for existence.
    assert_eq!(
        unsafe { libc::kill(pid, 0) },
        -1,
        "workload {pid} survived the shutdown"
    );
}

#[test]
fn hostile_network_annotations_refuse_create_and_net_files_without_a_network_are_harmless() {
    for (notes, want) in [
        (json!({"dev.strata.net.address": "10.0.0.1/33"}), "prefix"),
        (
            json!({"dev.strata.net.address": "10.0.0.2/24", "dev.strata.net.gateway": "8.8.8.8"}),
            "is not another address",
        ),
        (json!({"dev.strata.net.hosts": "x"}), "is not"),
        (
            json!({"dev.strata.net.address": "10.0.0.2/24", "dev.strata.net.hosts": 7}),
            "not a string",
        ),
    ] {
        let agent = Agent::start();
        let mut cfg: serde_json::Value = serde_json::from_slice(&config(&["true"])).unwrap();
        cfg["annotations"] = notes.clone();
        let err = agent
            .client()
            .create(&serde_json::to_vec(&cfg).unwrap())
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Agent { kind, .. } if kind == "config"),
            "{notes}: {err}"
        );
        assert!(err.to_string().contains(want), "{notes}: {err}");
    }
    // Outside a guest (and in a guest without a network) new /etc files change nothing, and the
    // agent keeps working.
    let agent = Agent::start();
    agent
        .client()
        .net_files(strata_proto::NetFiles {
            hosts: Some("1.2.3.4\tx\n".into()),
            resolv: Some("nameserver\0".into()),
        })
        .unwrap();
    let (o, _, st) = run_main(&agent, &["echo", "fine"], b"");
    assert_eq!((o.as_str(), st.code), ("fine\n", 0));
    assert!(agent.client().connection_errors().is_empty());
}

/// A start that carries a network (the host took the interface over only at start): hostile
/// values are refused as the start's error and the main process does not run; a valid one is
/// accepted (outside a guest the agent configures no NIC) and the process runs.
#[test]
fn a_start_with_a_hostile_network_is_refused_and_a_valid_one_starts() {
    let net = |v: serde_json::Value| strata_proto::StartRequest {
        network: v.as_object().cloned(),
        ..Default::default()
    };
    let agent = Agent::start();
    let main = agent
        .client()
        .create(&config(&["sh", "-c", "echo ran"]))
        .unwrap();
    for bad in [
        json!({}),
        json!({"dev.strata.net.address": "10.0.0.5/16", "dev.strata.net.mac": "01:00:5e:00:00:01"}),
        json!({"dev.strata.net.address": "10.0.0.5/16", "dev.strata.net.mac": "aa:bb:cc:dd:ee"}),
        json!({"dev.strata.net.address": "10.0.0.5/40"}),
        json!({"dev.strata.net.address": "10.0.0.5/16", "dev.strata.net.gateway": "11.0.0.1"}),
        json!({"dev.strata.net.address": "10.0.0.5/16", "dev.strata.net.mtu": 1500}),
        json!({"dev.strata.net.mac": "02:00:00:00:00:01"}),
    ] {
        let err = agent.client().start_with(net(bad.clone())).unwrap_err();
        assert!(
            matches!(&err, ClientError::Agent { kind, .. } if kind == "config"),
            "{bad}: {err}"
        );
    }
    agent
        .client()
        .start_with(net(json!({
            "dev.strata.net.address": "10.0.0.5/16",
            "dev.strata.net.gateway": "10.0.0.1",
            "dev.strata.net.mac": "0a:58:0a:00:00:05",
            "dev.strata.net.mtu": "1500",
        })))
        .unwrap();
    let (o, _, st) = main.output().unwrap();
    assert_eq!(
        (String::from_utf8_lossy(&o).as_ref(), st.code),
        ("ran\n", 0)
    );
}
