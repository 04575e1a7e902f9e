//! The network cells: an engine's own bridge network (`podman run --network bridge -p`,
//! `ctr run --cni`) around a container that strata-oci (or runc, the harness check) runs, serving
//! busybox httpd to a real HTTP client on the host. The engine prepares the network namespace
//! with CNI and hands its path to the runtime in config.json; the runtime must join it.
#![allow(dead_code)] // each engine test uses its part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A free TCP port on the host's loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET http://`addr``path` (bounded retries while the server starts); the whole answer.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..100 {
        match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1") {
                    return Ok(out);
                }
                last = format!("answer {out:?}");
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

/// The shell command of the httpd every network cell runs: it serves `body` as /index.html.
pub fn httpd_script(body: &str) -> String {
    format!("echo {body} > /tmp/index.html && exec httpd -f -p 80 -h /tmp")
}

/// Removes the bridge plugin's masquerade rule and chain of CNI container id `id` (what a DEL
/// run after the namespace is gone leaves: the plugin finds the addresses to unmasquerade only
/// in the namespace). Returns how many it removed.
pub fn remove_masquerade_leftovers(id: &str) -> usize {
    let Ok(o) = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
    else {
        return 0;
    };
    let needle = format!("id: \\\"{id}\\\"\"");
    let mut n = 0;
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        if !l.starts_with("-A POSTROUTING ") || !l.contains(&needle) {
            continue;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        let (Some(src), Some(chain)) = (
            words
                .iter()
                .position(|w| *w == "-s")
                .and_then(|i| words.get(i + 1)),
            words.last(),
        ) else {
            continue;
        };
        // The comment as the plugin wrote it: name: "NET" id: "ID".
        let Some(net) = l
            .split("name: \\\"")
            .nth(1)
            .and_then(|r| r.split("\\\"").next())
        else {
            continue;
        };
        let comment = format!("name: \"{net}\" id: \"{id}\"");
        let del = std::process::Command::new("iptables")
            .args([
                "-w",
                "-t",
                "nat",
                "-D",
                "POSTROUTING",
                "-s",
                src,
                "-m",
                "comment",
                "--comment",
            ])
            .arg(&comment)
            .args(["-j", chain])
            .status();
        if del.is_ok_and(|s| s.success()) {
            n += 1;
        }
        for op in ["-F", "-X"] {
            let _ = std::process::Command::new("iptables")
                .args(["-w", "-t", "nat", op, chain])
                .status();
        }
    }
    n
}
