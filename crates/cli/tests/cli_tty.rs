//! `-t` under a real terminal: the test is the user's terminal (a pty it allocated), strata
//! runs with that pty as its controlling terminal.

mod cli_common;
mod pty;

use std::time::{Duration, Instant};

use cli_common::Sandbox;
use pty::{wait_exit, Terminal};

/// Spawns strata with `args` on a new pty of `rows`×`cols`, as the session leader owning it.
fn spawn(s: &Sandbox, args: &[&str], rows: u16, cols: u16) -> (std::process::Child, Terminal) {
    let mut c = s.cmd();
    c.args(args);
    Terminal::spawn(c, rows, cols)
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
    term.resize(40, 120);
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
    let (mut child, term) = spawn(&s, &["run", "--rm", "-it", "busybox", "sh"], 24, 80);
    std::thread::sleep(Duration::from_millis(300));
    term.type_in(b"echo $((6*7))\n");
    term.wait_for("42");
    if iso == "container" {
        // ^C interrupts the shell's foreground job: the pty is the controlling terminal.
        term.type_in(b"sleep 100\n");
        std::thread::sleep(Duration::from_millis(500));
        term.type_in(b"\x03");
        term.type_in(b"echo after-$((1+1))\n");
        term.wait_for("after-2");
    }
    term.type_in(b"exit 5\n");
    assert_eq!(wait_exit(&mut child), 5);
    // strata restored the terminal's mode: ECHO is back on.
    assert!(term.echoes());
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
    let (mut child, term) = spawn(&s, &["attach", "at"], 33, 99);
    // Typed before attach reads its terminal: it sends its size first, then what we typed.
    term.type_in(b"stty size\n");
    term.wait_for("33 99");
    term.resize(40, 120);
    // SIGWINCH reaches attach asynchronously: ask until the new size shows.
    let t = Instant::now();
    while !term.text().contains("40 120") {
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", term.text());
        term.type_in(b"stty size\n");
        std::thread::sleep(Duration::from_millis(300));
    }
    term.type_in(b"\x10\x11");
    assert_eq!(wait_exit(&mut child), 0);
    assert_eq!(s.inspect("at")["State"]["Running"], true);
    // What went through the pty is in the log.
    assert!(s.ok(&["logs", "at"]).contains("33 99"));
    let (mut child, term) = spawn(&s, &["attach", "at"], 24, 80);
    term.type_in(b"exit 5\n");
    assert_eq!(wait_exit(&mut child), 5);
    // attach restored the terminal's mode.
    assert!(term.echoes());
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
