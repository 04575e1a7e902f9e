//! A terminal the test owns, for the `-t` tests of `strata` and `strata-oci`: the program runs
//! on the slave of a fresh pty as session leader, with it as its controlling terminal (stdin,
//! stdout, stderr), like a user typing in a shell; a thread collects what the master reads.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The master side of the test's pty and everything read from it so far.
pub struct Terminal {
    pub master: std::fs::File,
    seen: Arc<Mutex<Vec<u8>>>,
}

/// Sets the window size of the pty behind `fd`.
pub fn set_size(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on a pty fd.
    assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }, 0);
}

impl Terminal {
    /// Spawns `cmd` on a new pty of `rows`×`cols`, as the session leader owning it.
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> (Child, Terminal) {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_size(pty.master.as_raw_fd(), rows, cols);
        let slave = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe; fd 0 is the pty slave here.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        // Our copies of the slave go with `cmd`: the master then reads EIO once the child's
        // side is closed.
        drop(cmd);
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

    /// Everything the terminal showed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits (30 s at most) until the terminal showed `what`.
    pub fn wait_for(&self, what: &str) {
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

    /// Sets the terminal's window size (the program gets SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        set_size(self.master.as_raw_fd(), rows, cols);
    }

    /// Types `bytes` as the user would.
    pub fn type_in(&self, bytes: &[u8]) {
        (&self.master).write_all(bytes).unwrap();
    }

    /// Whether the terminal is in canonical (cooked) mode; the master reads the slave's termios.
    pub fn canonical(&self) -> bool {
        self.local_flags()
            .contains(nix::sys::termios::LocalFlags::ICANON)
    }

    /// Whether the terminal echoes what is typed.
    pub fn echoes(&self) -> bool {
        self.local_flags()
            .contains(nix::sys::termios::LocalFlags::ECHO)
    }

    fn local_flags(&self) -> nix::sys::termios::LocalFlags {
        nix::sys::termios::tcgetattr(&self.master)
            .unwrap()
            .local_flags
    }
}

/// Waits (60 s at most, then kills it) for the program on the terminal; its exit code.
pub fn wait_exit(child: &mut Child) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the program on the terminal did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
