//! Running engine commands with a deadline, so a hung engine fails a cell instead of hanging CI.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command line, for error messages.
    pub line: String,
    /// Exit code (128 + signal when killed by a signal, -1 when it timed out).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The outcome as an error message: command line, exit code and both streams.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.line,
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Ok(self) when the command exited 0, else the described failure.
    pub fn ok(self) -> Result<Self, String> {
        if self.code == 0 {
            Ok(self)
        } else {
            Err(self.describe())
        }
    }

    /// stdout with terminal noise removed (CR, NUL), for comparing output that went through a pty.
    pub fn clean_stdout(&self) -> String {
        self.stdout.replace(['\r', '\0'], "")
    }
}

/// Renders a command as a shell-like line (for messages only).
pub fn line_of(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// Runs `cmd` with stdin from /dev/null, capturing output; kills its process group after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Outcome {
    let line = line_of(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                line,
                code: -1,
                stdout: String::new(),
                stderr: format!("cannot spawn: {e}"),
            }
        }
    };
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                // The whole group: `script` and engine clients fork helpers that would keep the pipes open.
                // SAFETY: kill(2) on a process group we created; no memory is touched.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let mut stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let code = match status {
        Some(s) => {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        }
        None => {
            stderr.push_str(&format!("\n(timed out after {timeout:?}; killed)"));
            -1
        }
    };
    Outcome {
        line,
        code,
        stdout,
        stderr,
    }
}

/// Runs `cmd` under `script(1)` so it gets a pseudo-terminal as stdin/stdout (for `-it` cells).
/// `script -e` exits with the child's exit code.
pub fn run_in_pty(cmd: &Command, timeout: Duration) -> Outcome {
    let inner = shell_quote(cmd);
    let mut script = Command::new("script");
    script.args(["-qec", &inner, "/dev/null"]);
    let mut o = run(&mut script, timeout);
    o.line = format!("script -qec \"{inner}\" /dev/null");
    o
}

fn shell_quote(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Polls `f` every 50 ms until it returns Ok or `timeout` passes; returns the last error then.
pub fn wait_for<T>(
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => return Err(format!("after {timeout:?}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
