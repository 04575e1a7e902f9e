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
