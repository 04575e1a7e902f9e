//! OCI lifecycle hooks: prestart, createRuntime, createContainer, startContainer, poststart,
//! poststop.
//!
//! A hook runs with its `path`, `args` (args[0] is argv[0]) and `env` (the runtime's environment
//! when `env` is absent, as runc does), gets the container state JSON on stdin, and is killed when
//! its `timeout` expires. The caller decides where a hook runs: prestart, createRuntime, poststart
//! and poststop in the runtime's namespaces, createContainer and startContainer from the container
//! init inside the container's namespaces; both sides call [`run_hooks`].
//!
//! Failures follow the runtime spec: a failing prestart, createRuntime, createContainer or
//! startContainer hook is an error (the caller stops and cleans up the container); a failing
//! poststart or poststop hook is logged as a warning and the remaining hooks still run.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};

/// The lifecycle point a hook belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// Deprecated: after the container is created, before pivot_root, in the runtime namespace.
    Prestart,
    /// After the container's namespaces exist, before pivot_root, in the runtime namespace.
    CreateRuntime,
    /// In the container's namespaces after the mounts, before pivot_root.
    CreateContainer,
    /// In the container, right before the user process is executed.
    StartContainer,
    /// After the user process started; failures are warnings.
    Poststart,
    /// After the container is deleted; failures are warnings.
    Poststop,
}

impl HookKind {
    /// The name used in config.json.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// Whether a failure of this hook fails the lifecycle step (otherwise it is a warning).
    pub fn is_fatal(self) -> bool {
        !matches!(self, HookKind::Poststart | HookKind::Poststop)
    }

    /// The hooks of this kind in `hooks`.
    #[allow(deprecated)] // prestart is deprecated in the spec, still sent by Docker
    pub fn select(self, hooks: &oci_spec::runtime::Hooks) -> &[Hook] {
        let list = match self {
            HookKind::Prestart => hooks.prestart(),
            HookKind::CreateRuntime => hooks.create_runtime(),
            HookKind::CreateContainer => hooks.create_container(),
            HookKind::StartContainer => hooks.start_container(),
            HookKind::Poststart => hooks.poststart(),
            HookKind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or(&[])
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A hook that failed, and why.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook entry in config.json is malformed.
    #[error("{kind} hook {path}: {reason}; fix the hook in config.json")]
    Invalid {
        /// Lifecycle point.
        kind: HookKind,
        /// The hook's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The hook could not be started.
    #[error("{kind} hook {path}: could not start: {source}")]
    Spawn {
        /// Lifecycle point.
        kind: HookKind,
        /// The hook's path.
        path: PathBuf,
        /// The spawn error.
        source: io::Error,
    },
    /// The hook ran longer than its timeout and was killed.
    #[error("{kind} hook {path}: did not finish within its timeout of {secs}s and was killed")]
    Timeout {
        /// Lifecycle point.
        kind: HookKind,
        /// The hook's path.
        path: PathBuf,
        /// The timeout in seconds.
        secs: i64,
    },
    /// The hook exited unsuccessfully.
    #[error("{kind} hook {path}: {status}; stdout: {stdout:?}; stderr: {stderr:?}")]
    Failed {
        /// Lifecycle point.
        kind: HookKind,
        /// The hook's path.
        path: PathBuf,
        /// How it ended.
        status: ExitStatus,
        /// The start of its stdout.
        stdout: String,
        /// The start of its stderr.
        stderr: String,
    },
    /// Waiting for the hook failed.
    #[error("{kind} hook {path}: waiting for it failed: {source}")]
    Wait {
        /// Lifecycle point.
        kind: HookKind,
        /// The hook's path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The state JSON hooks receive on stdin: the runtime spec's state object.
pub fn state_json(spec: &Spec, id: &str, status: &str, pid: Option<i32>, bundle: &Path) -> Vec<u8> {
    let mut state = serde_json::json!({
        "ociVersion": spec.version(),
        "id": id,
        "status": status,
        "bundle": bundle,
    });
    if let Some(pid) = pid {
        state["pid"] = pid.into();
    }
    if let Some(a) = spec.annotations().as_ref().filter(|a| !a.is_empty()) {
        state["annotations"] = serde_json::json!(a);
    }
    serde_json::to_vec(&state).unwrap_or_default()
}

/// prestart then createRuntime, from the runtime while init waits (status "created": the
/// runtime spec's lifecycle runs them at steps 3 and 4, after the environment was created at
/// step 2, and its state "creating" is step 2 itself; crun passes "created", runc "creating").
pub fn run_runtime_hooks(spec: &Spec, id: &str, pid: i32, bundle: &Path) -> Result<(), HookError> {
    let Some(hooks) = spec.hooks().as_ref() else {
        return Ok(());
    };
    let state = state_json(spec, id, "created", Some(pid), bundle);
    for kind in [HookKind::Prestart, HookKind::CreateRuntime] {
        run_hooks(kind, kind.select(hooks), &state)?;
    }
    Ok(())
}

/// poststart (status "running") or poststop (status "stopped"): failures are logged warnings.
pub fn run_warning_hooks(kind: HookKind, spec: &Spec, id: &str, pid: Option<i32>, bundle: &Path) {
    let Some(hooks) = spec.hooks().as_ref() else {
        return;
    };
    let list = kind.select(hooks);
    if list.is_empty() {
        return;
    }
    let status = if kind == HookKind::Poststart {
        "running"
    } else {
        "stopped"
    };
    let state = state_json(spec, id, status, pid, bundle);
    // Errors are impossible for warning kinds: run_hooks only returns warnings for them.
    let _ = run_hooks(kind, list, &state);
}

/// The init's pid as the host sees it, read while the host's /proc is still mounted (before
/// pivot_root), for the state of the startContainer hooks.
static HOST_PID: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// createContainer (before pivot_root) or startContainer (after), from the container init
/// (status "created").
pub fn run_container_hooks(
    kind: HookKind,
    spec: &Spec,
    id: &str,
    bundle: &Path,
) -> Result<(), HookError> {
    if kind == HookKind::CreateContainer {
        if let Some(pid) = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
        {
            let _ = HOST_PID.set(pid);
        }
    }
    let Some(hooks) = spec.hooks().as_ref() else {
        return Ok(());
    };
    let list = kind.select(hooks);
    if list.is_empty() {
        return Ok(());
    }
    let state = state_json(spec, id, "created", HOST_PID.get().copied(), bundle);
    run_hooks(kind, list, &state).map(|_| ())
}

/// Output kept from a hook for the error message.
const OUTPUT_LIMIT: usize = 4096;

/// Runs the hooks of one lifecycle point in order, with `state_json` (the container state as
/// `strata-oci state` prints it) on stdin.
///
/// For fatal kinds the first failure is returned and later hooks do not run. For poststart and
/// poststop every hook runs and failures are logged as warnings and returned as `Ok(warnings)`.
pub fn run_hooks(
    kind: HookKind,
    hooks: &[Hook],
    state_json: &[u8],
) -> Result<Vec<HookError>, HookError> {
    let mut warnings = Vec::new();
    for hook in hooks {
        if let Err(e) = run_hook(kind, hook, state_json) {
            if kind.is_fatal() {
                return Err(e);
            }
            tracing::warn!(error = %e, "hook failed; continuing as the runtime spec requires");
            warnings.push(e);
        }
    }
    Ok(warnings)
}

/// Runs one hook to completion (or until its timeout), feeding `state_json` on stdin.
pub fn run_hook(kind: HookKind, hook: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = hook.path();
    let invalid = |reason: String| HookError::Invalid {
        kind,
        path: path.clone(),
        reason,
    };
    if !path.is_absolute() {
        return Err(invalid("path must be absolute".into()));
    }
    let timeout = match hook.timeout() {
        Some(t) if t <= 0 => return Err(invalid(format!("timeout must be > 0, got {t}"))),
        Some(t) => Some(t),
        None => None,
    };
    let mut cmd = Command::new(path);
    let args = hook.args().as_deref().unwrap_or(&[]);
    match args.split_first() {
        Some((arg0, rest)) => {
            cmd.arg0(arg0).args(rest);
        }
        None => {
            cmd.arg0(path);
        }
    }
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for entry in env {
            let Some((k, v)) = entry.split_once('=') else {
                return Err(invalid(format!("env entry {entry:?} has no '='")));
            };
            if k.is_empty() {
                return Err(invalid(format!("env entry {entry:?} has an empty name")));
            }
            cmd.env(k, v);
        }
    }
    // Its own process group, so a timeout kills whatever the hook started too.
    cmd.process_group(0);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        kind,
        path: path.clone(),
        source,
    })?;
    let deadline = timeout.map(|t| started + Duration::from_secs(t as u64));
    let waited = supervise(&mut child, state_json, deadline);
    let (status, stdout, stderr) = match waited {
        Ok(Some(done)) => done,
        Ok(None) => {
            kill_group(&mut child);
            return Err(HookError::Timeout {
                kind,
                path: path.clone(),
                secs: timeout.unwrap_or_default(),
            });
        }
        Err(source) => {
            kill_group(&mut child);
            return Err(HookError::Wait {
                kind,
                path: path.clone(),
                source,
            });
        }
    };
    tracing::debug!(hook = %path.display(), %kind, ?status, "hook finished");
    if status.success() {
        return Ok(());
    }
    Err(HookError::Failed {
        kind,
        path: path.clone(),
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) on the process group the hook leads (set by process_group(0)).
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    let _ = child.kill();
    let _ = child.wait();
}

type Finished = (ExitStatus, Vec<u8>, Vec<u8>);

/// Feeds stdin, collects output and waits for exit on one thread (the container init must stay
/// single-threaded). Returns `None` when the deadline passed first.
///
/// Exit is detected on a pidfd rather than on EOF, so a hook that leaves a background process
/// holding its stdout open does not hang the runtime.
fn supervise(
    child: &mut Child,
    mut input: &[u8],
    deadline: Option<Instant>,
) -> io::Result<Option<Finished>> {
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    for fd in [
        stdin.as_ref().map(AsRawFd::as_raw_fd),
        stdout.as_ref().map(AsRawFd::as_raw_fd),
        stderr.as_ref().map(AsRawFd::as_raw_fd),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd)?;
    }
    if input.is_empty() {
        stdin = None;
    }
    let pidfd = pidfd_open(child.id() as libc::pid_t);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        if let Some(status) = child.try_wait()? {
            // Drain what is already buffered; do not wait for EOF.
            if let Some(s) = stdout.as_mut() {
                drain(s, &mut out);
            }
            if let Some(s) = stderr.as_mut() {
                drain(s, &mut err);
            }
            return Ok(Some((status, out, err)));
        }
        let wait_ms = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Ok(None);
                }
                (d - now).as_millis().min(i32::MAX as u128) as i32
            }
            None => -1,
        };
        // Without a pidfd (old kernels) exit is noticed by polling try_wait every 10 ms.
        let wait_ms = if pidfd.is_some() {
            wait_ms
        } else if wait_ms < 0 {
            10
        } else {
            wait_ms.min(10)
        };
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
        let mut push = |fd: RawFd, events: libc::c_short| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            })
        };
        if let Some(p) = &pidfd {
            push(p.as_raw_fd(), libc::POLLIN);
        }
        if let Some(s) = &stdin {
            push(s.as_raw_fd(), libc::POLLOUT);
        }
        if let Some(s) = &stdout {
            push(s.as_raw_fd(), libc::POLLIN);
        }
        if let Some(s) = &stderr {
            push(s.as_raw_fd(), libc::POLLIN);
        }
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if let Some(s) = stdin.as_mut() {
            match s.write(input) {
                Ok(n) => input = &input[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The hook closed stdin without reading it all: not an error (runc ignores it).
                Err(_) => input = &[],
            }
            if input.is_empty() {
                stdin = None; // EOF for the hook
            }
        }
        if let Some(s) = stdout.as_mut() {
            if read_some(s, &mut out) {
                stdout = None;
            }
        }
        if let Some(s) = stderr.as_mut() {
            if read_some(s, &mut err) {
                stderr = None;
            }
        }
    }
}

/// Reads what is available into `buf` (up to the limit). Returns true at EOF or on error.
fn read_some(r: &mut impl Read, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn drain(r: &mut impl Read, buf: &mut Vec<u8>) {
    let _ = read_some(r, buf);
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd for `pid`, readable once it exits; `None` where pidfd_open is unavailable.
fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The exit code of a failed hook, for callers that map it to their own exit status.
pub fn exit_code(status: &ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    const STATE: &[u8] = br#"{"ociVersion":"1.2.0","id":"hook-test","status":"creating","pid":42,"bundle":"/tmp/b"}"#;

    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default().path("/bin/sh").args(vec![
            "sh".to_string(),
            "-c".to_string(),
            script.to_string(),
        ]);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[test]
    fn the_state_arrives_on_stdin_with_args_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let hook = HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "my-argv0".into(),
                "-c".into(),
                format!("printf '%s|' \"$0\" \"$FOO\" \"${{HOME:-nohome}}\" > {0}; tr '\\0' ' ' < /proc/$$/cmdline | cut -c1-8 >> {0}; cat >> {0}", out.display()),
                "first".into(),
            ])
            .env(vec!["FOO=bar=baz".to_string()])
            .build()
            .unwrap();
        run_hook(HookKind::CreateRuntime, &hook, STATE).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        // args[0] is argv[0]; `env` replaces the environment entirely (no HOME inherited).
        let want = format!(
            "first|bar=baz|nohome|my-argv0\n{}",
            std::str::from_utf8(STATE).unwrap()
        );
        assert_eq!(got, want);
    }

    #[test]
    fn a_large_state_is_streamed_even_if_the_hook_reads_slowly() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let big = vec![b'x'; 1 << 20];
        let hook = sh(&format!("sleep 0.2; wc -c > {}", out.display()), Some(10));
        run_hook(HookKind::Prestart, &hook, &big).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "1048576");
    }

    #[test]
    fn a_hook_that_ignores_stdin_still_succeeds() {
        let big = vec![b'x'; 1 << 20];
        run_hook(HookKind::Prestart, &sh("exit 0", None), &big).unwrap();
    }

    #[test]
    fn a_failing_hook_reports_status_and_output() {
        let e = run_hook(
            HookKind::CreateContainer,
            &sh("echo oops >&2; exit 3", None),
            STATE,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("createContainer hook /bin/sh")
                && msg.contains("3")
                && msg.contains("oops"),
            "{msg}"
        );
        match e {
            HookError::Failed { status, .. } => assert_eq!(exit_code(&status), 3),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let started = Instant::now();
        let e = run_hook(HookKind::StartContainer, &sh("sleep 30", Some(1)), STATE).unwrap_err();
        assert!(matches!(e, HookError::Timeout { secs: 1, .. }), "{e}");
        // Killed, not waited for: well under the hook's own 30 s.
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn a_background_child_holding_stdout_does_not_hang_the_runtime() {
        let started = Instant::now();
        run_hook(
            HookKind::Poststart,
            &sh("sleep 30 & exit 0", Some(20)),
            STATE,
        )
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(15));
    }

    #[test]
    fn malformed_hooks_are_clear_errors() {
        let rel = HookBuilder::default().path("bin/true").build().unwrap();
        let e = run_hook(HookKind::Prestart, &rel, STATE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be absolute"), "{e}");
        let e = run_hook(HookKind::Prestart, &sh("true", Some(0)), STATE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout must be > 0"), "{e}");
        let noeq = HookBuilder::default()
            .path("/bin/true")
            .env(vec!["JUNK".to_string()])
            .build()
            .unwrap();
        let e = run_hook(HookKind::Prestart, &noeq, STATE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no '='"), "{e}");
        let missing = HookBuilder::default()
            .path("/nonexistent/hook")
            .build()
            .unwrap();
        let e = run_hook(HookKind::Prestart, &missing, STATE).unwrap_err();
        assert!(matches!(e, HookError::Spawn { .. }), "{e}");
    }

    #[test]
    fn fatal_kinds_stop_at_the_first_failure_and_warning_kinds_run_all() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let touch = sh(&format!("touch {}", marker.display()), None);
        let hooks = vec![sh("exit 1", None), touch];
        assert!(run_hooks(HookKind::CreateRuntime, &hooks, STATE).is_err());
        assert!(!marker.exists());
        let warnings = run_hooks(HookKind::Poststop, &hooks, STATE).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(marker.exists());
    }
}
