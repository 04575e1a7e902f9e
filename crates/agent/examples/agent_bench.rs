//! Measures the agent and protocol on this host (used by bench/agent.sh):
//! `agent_bench AGENT_BINARY [UML_KERNEL]` prints one markdown table row per measurement.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use strata_proto::Client;

fn spawn_agent(agent: &str) -> (Child, Client) {
    let (host, guest) = UnixStream::pair().expect("socketpair");
    let fd = guest.as_raw_fd();
    let mut cmd = Command::new(agent);
    cmd.args(["--no-pid1", "--channel-fd", "3"])
        .stdin(Stdio::null());
    // SAFETY: dup2 is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn agent");
    drop(guest);
    let client = Client::from_unix_stream(host, Duration::from_secs(60)).expect("handshake");
    (child, client)
}

fn config(args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"process": {"args": args, "env": ["PATH=/usr/bin:/bin"], "cwd": "/"}}),
    )
    .unwrap()
}

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agent = args
        .get(1)
        .expect("usage: agent_bench AGENT [UML_KERNEL UML_DISK_DIR]");

    // 1. Spawn agent + handshake + create + start + exit of `true`, on the host.
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let (mut child, client) = spawn_agent(agent);
        let main = client.create(&config(&["true"])).unwrap();
        client.start().unwrap();
        let (_, _, st) = main.output().unwrap();
        assert_eq!(st.code, 0);
        drop(client);
        child.wait().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (min, med) = median(times);
    println!("| host mode: agent start + handshake + `true` + exit, 30 runs | {min:.2} ms | {med:.2} ms |");

    // 2. exec round trip on a running agent.
    let (mut child, client) = spawn_agent(agent);
    let _main = client.create(&config(&["sleep", "1000"])).unwrap();
    client.start().unwrap();
    let proc_true =
        serde_json::to_vec(&json!({"args": ["true"], "env": ["PATH=/usr/bin:/bin"]})).unwrap();
    let mut times = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let h = client.exec(&proc_true, false).unwrap();
        h.output().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (min, med) = median(times);
    println!("| host mode: `exec true` round trip, 100 runs | {min:.2} ms | {med:.2} ms |");

    // 3. stdout throughput through the credit window.
    let mb = 512;
    let big = serde_json::to_vec(&json!({"args": ["head", "-c", format!("{}", mb << 20), "/dev/zero"], "env": ["PATH=/usr/bin:/bin"]})).unwrap();
    let h = client.exec(&big, false).unwrap();
    let mut out = h.take_stdout().unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0usize;
    loop {
        let r = out.read(&mut buf).unwrap();
        if r == 0 {
            break;
        }
        n += r;
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(n, mb << 20);
    println!(
        "| host mode: stdout throughput ({mb} MiB over a socketpair) | {:.0} MiB/s | |",
        mb as f64 / secs
    );
    let _ = child.kill();
    let _ = child.wait();
}
