//! `-t` under a real terminal: the test is the user's terminal (a pty it allocated), strata
//! runs with that pty as its controlling terminal.

mod cli_common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cli_common::Sandbox;

struct Terminal {
    master: std::fs::File,
    seen: Arc<Mutex<Vec<u8>>>,
}

fn set_size(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on a pty fd.
    assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }, 0);
}

/// Spawns strata on a new pty of `rows`×`cols`, as the session leader owning it.
fn spawn(s: &Sandbox, args: &[&str], rows: u16, cols: u16) -> (std::process::Child, Terminal) {
    let pty = nix::pty::openpty(None, None).unwrap();
    set_size(pty.master.as_raw_fd(), rows, cols);
    let slave: OwnedFd = pty.slave;
    let mut c = s.cmd();
    c.args(args)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; fd 0 is the pty slave here.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c.spawn().unwrap();
    drop(c);
    let master = std::fs::File::from(pty.master);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (mut r, buf) = (master.try_clone().unwrap(), seen.clone());
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = r.read(&mut b) {
            if n == 0 {
                break;
            }
            buf.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
    (child, Terminal { master, seen })
}

impl Terminal {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, what: &str) {
        let t = Instant::now();
        while !self.text().contains(what) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no {what:?} on the terminal: {:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wait_exit(child: &mut std::process::Child) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("strata -t did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tty_and_resize(iso: &str) {
    let s = Sandbox::new(iso);
    let script = "tty; stty size; while [ \"$(stty size)\" = '30 100' ]; do sleep 0.05; done; echo resized; stty size";
    let (mut child, term) = spawn(
        &s,
        &["run", "--rm", "-t", "busybox", "sh", "-c", script],
        30,
        100,
    );
    term.wait_for("30 100");
    set_size(term.master.as_raw_fd(), 40, 120);
    term.wait_for("40 120");
    assert_eq!(wait_exit(&mut child), 0);
    let out = term.text();
    assert!(out.contains("/dev/"), "tty names no device: {out:?}");
    if iso == "container" {
        // The runtime allocated the pty inside the container: its own devpts, first pty.
        assert!(out.contains("/dev/pts/0"), "{out:?}");
    }
    assert!(!out.contains("not a tty"), "{out:?}");
    s.assert_nothing_left(&[]);
}

fn interactive_tty(iso: &str) {
    let s = Sandbox::new(iso);
    let (mut child, mut term) = spawn(&s, &["run", "--rm", "-it", "busybox", "sh"], 24, 80);
    std::thread::sleep(Duration::from_millis(300));
    term.master.write_all(b"echo $((6*7))\n").unwrap();
    term.wait_for("42");
    if iso == "container" {
        // ^C interrupts the shell's foreground job: the pty is the controlling terminal.
        term.master.write_all(b"sleep 100\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        term.master.write_all(b"\x03").unwrap();
        term.master.write_all(b"echo after-$((1+1))\n").unwrap();
        term.wait_for("after-2");
    }
    term.master.write_all(b"exit 5\n").unwrap();
    assert_eq!(wait_exit(&mut child), 5);
    // strata restored the terminal's mode: ECHO is back on.
    let t = nix::sys::termios::tcgetattr(&term.master).unwrap();
    assert!(t.local_flags.contains(nix::sys::termios::LocalFlags::ECHO));
    s.assert_nothing_left(&[]);
}

fn exec_tty(iso: &str) {
    let s = Sandbox::new(iso);
    s.ok(&["run", "-d", "--name", "x", "busybox", "sleep", "1000"]);
    s.eventually(10, "running", || s.inspect("x")["State"]["Running"] == true);
    let (mut child, term) = spawn(
        &s,
        &["exec", "-t", "x", "sh", "-c", "stty size; exit 4"],
        33,
        99,
    );
    assert_eq!(wait_exit(&mut child), 4);
    term.wait_for("33 99");
    s.ok(&["rm", "-f", "x"]);
}

/// `run -t` without --rm: the terminal output is in the log afterwards.
fn foreground_tty_is_logged(iso: &str) {
    let s = Sandbox::new(iso);
    let (mut child, term) = spawn(
        &s,
        &[
            "run",
            "-t",
            "--name",
            "ft",
            "busybox",
            "sh",
            "-c",
            "echo hello-tty; exit 2",
        ],
        24,
        80,
    );
    assert_eq!(wait_exit(&mut child), 2);
    term.wait_for("hello-tty");
    // As the pty gave it (the line ending depends on the pty's ONLCR).
    assert_eq!(s.ok(&["logs", "ft"]).trim_end(), "hello-tty");
    s.ok(&["rm", "ft"]);
    s.assert_nothing_left(&[]);
}

/// `attach` to a detached `-it` container from a terminal: its size, then a resize, reach the
/// container's pty; ^P^Q detaches and leaves it running; attaching again and exiting ends
/// `attach` with the shell's exit code.
fn attach_tty(iso: &str) {
    let s = Sandbox::new(iso);
    s.ok(&["run", "-d", "-i", "-t", "--name", "at", "busybox", "sh"]);
    s.eventually(30, "running", || {
        s.inspect("at")["State"]["Running"] == true
    });
    let (mut child, mut term) = spawn(&s, &["attach", "at"], 33, 99);
    // Typed before attach reads its terminal: it sends its size first, then what we typed.
    term.master.write_all(b"stty size\n").unwrap();
    term.wait_for("33 99");
    set_size(term.master.as_raw_fd(), 40, 120);
    // SIGWINCH reaches attach asynchronously: ask until the new size shows.
    let t = Instant::now();
    while !term.text().contains("40 120") {
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", term.text());
        term.master.write_all(b"stty size\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    term.master.write_all(b"\x10\x11").unwrap();
    assert_eq!(wait_exit(&mut child), 0);
    assert_eq!(s.inspect("at")["State"]["Running"], true);
    // What went through the pty is in the log.
    assert!(s.ok(&["logs", "at"]).contains("33 99"));
    let (mut child, mut term) = spawn(&s, &["attach", "at"], 24, 80);
    term.master.write_all(b"exit 5\n").unwrap();
    assert_eq!(wait_exit(&mut child), 5);
    // attach restored the terminal's mode.
    let t = nix::sys::termios::tcgetattr(&term.master).unwrap();
    assert!(t.local_flags.contains(nix::sys::termios::LocalFlags::ECHO));
    assert_eq!(s.ok(&["wait", "at"]), "5\n");
    s.ok(&["rm", "at"]);
    s.assert_nothing_left(&[]);
}

isolation_tests!(
    tty_and_resize,
    interactive_tty,
    exec_tty,
    foreground_tty_is_logged,
    attach_tty
);
