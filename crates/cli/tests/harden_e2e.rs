//! End-to-end regression tests of the container hardening (issue 3), as root on real bundles:
//! each test runs `strata-oci` on a busybox bundle and checks from inside (and from the host)
//! that the defence holds, and where it can, also shows that the same bundle without the
//! defence would have let the escape through (so the test can fail).

mod common;
mod pty;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pty::{wait_exit, Terminal};
use serde_json::{json, Value};

const DOCKER_CONFIG: &str = include_str!("../../container/src/seccomp/testdata/docker-config.json");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn docker_seccomp() -> Value {
    let config: Value = serde_json::from_str(DOCKER_CONFIG).unwrap();
    config["linux"]["seccomp"].clone()
}

fn all_caps_with_sys_admin(config: &mut Value) {
    let caps = json!([
        "CAP_SYS_ADMIN",
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE"
    ]);
    for set in ["bounding", "effective", "permitted"] {
        config["process"]["capabilities"][set] = caps.clone();
    }
}

const SECCOMP_PROBE: &str =
    "unshare -u true 2>/dev/null && echo unshare=allowed || echo unshare=refused; \
     mount -t tmpfs none /tmp 2>/dev/null && echo mount=allowed || echo mount=refused; \
     echo hello | cat; id -u";

/// Runs `b` with runc (for a behavioural comparison) and returns its stdout; None after a skip
/// (a failure with STRATA_REQUIRE_E2E=1) when runc is not installed. runc failing on a bundle
/// strata-oci ran is a disagreement: the test fails with runc's error.
fn runc_output(b: &Bundle, id: &str) -> Option<String> {
    let root = tempfile::tempdir().unwrap();
    let out = match Command::new("runc")
        .arg("--root")
        .arg(root.path())
        .args(["run", "--bundle", b.path().to_str().unwrap(), id])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            strata_testkit::skip_or_fail(format!(
                "the comparison with runc needs runc (scripts/deps.sh): {e}"
            ));
            return None;
        }
    };
    let _ = Command::new("runc")
        .arg("--root")
        .arg(root.path())
        .args(["delete", "--force", id])
        .output();
    assert!(
        out.status.success(),
        "runc failed on the bundle strata-oci ran: {}",
        text(&out.stderr)
    );
    Some(text(&out.stdout))
}

#[test]
fn docker_seccomp_profile_refuses_namespace_and_mount_syscalls_like_runc() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    // CAP_SYS_ADMIN is granted, so only seccomp stands between the workload and unshare/mount.
    let id = unique_id("nosec");
    let mut open = Bundle::sh(&id, SECCOMP_PROBE);
    open.edit(all_caps_with_sys_admin);
    let (code, out, err) = oci.run_container(&open, &id);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("unshare=allowed") && out.contains("mount=allowed"),
        "control run: {out}"
    );

    let id = unique_id("docker");
    let mut b = Bundle::sh(&id, SECCOMP_PROBE);
    b.edit(|c| {
        all_caps_with_sys_admin(c);
        c["linux"]["seccomp"] = docker_seccomp();
    });
    let (code, out, err) = oci.run_container(&b, &id);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("unshare=refused") && out.contains("mount=refused"),
        "{out}"
    );
    assert!(
        out.contains("hello\n0\n"),
        "ordinary syscalls must work: {out}"
    );
    assert_clean(&oci, &b, &id);

    // The same bundle under runc answers the same.
    let runc_id = unique_id("runc");
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("/strata-test-{runc_id}")));
    if let Some(runc) = runc_output(&b, &runc_id) {
        assert_eq!(
            runc, out,
            "strata-oci and runc disagree on the docker profile"
        );
    }
}

#[test]
fn docker_fixture_config_runs_with_its_seccomp_profile() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("fixture");
    let b = Bundle::sh(&id, "");
    let files = tempfile::tempdir().unwrap();
    let mut config: Value = serde_json::from_str(DOCKER_CONFIG).unwrap();
    config["root"]["path"] = json!(b.rootfs());
    config["process"]["args"] = json!(["sh", "-c", SECCOMP_PROBE]);
    config["linux"]["cgroupsPath"] = json!(format!("/strata-test-{id}"));
    // dockerd's libnetwork hook and its per-container files do not exist on this host.
    config.as_object_mut().unwrap().remove("hooks");
    for m in config["mounts"].as_array_mut().unwrap() {
        if m["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("/var/lib/docker"))
        {
            let name = Path::new(m["destination"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_owned();
            let f = files.path().join(name);
            std::fs::write(&f, "# test\n").unwrap();
            m["source"] = json!(f);
        }
    }
    std::fs::write(
        b.path().join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let (code, out, err) = oci.run_container(&b, &id);
    assert_eq!(code, 0, "docker's config.json failed: {err}");
    // Docker's capabilities lack CAP_SYS_ADMIN; its profile refuses these with EPERM too.
    assert!(
        out.contains("unshare=refused") && out.contains("mount=refused"),
        "{out}"
    );
    assert!(out.contains("hello\n0\n"), "{out}");
    assert_clean(&oci, &b, &id);
}

fn hook(out: &Path, name: &str) -> Value {
    json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}.json", out.display())]})
}

#[test]
fn hooks_get_the_state_on_stdin_at_each_lifecycle_point() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("hooks");
    let out = tempfile::tempdir().unwrap();
    let mut b = Bundle::sh(&id, "echo done");
    b.edit(|c| {
        // The startContainer hook writes its state into the container's /root.
        c["root"]["readonly"] = json!(false);
        c["hooks"] = json!({
            "prestart": [hook(out.path(), "prestart")],
            "createRuntime": [hook(out.path(), "createRuntime")],
            "createContainer": [hook(out.path(), "createContainer")],
            // Runs inside the container (after pivot_root): paths are the container's.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /root/startContainer.json"]}],
            "poststart": [hook(out.path(), "poststart"),
                          {"path": "/bin/false"}],
            "poststop": [hook(out.path(), "poststop")],
        });
    });
    oci.create_ok(&b, &id, &[]);
    let pid = oci.pid(&id);
    let read = |p: PathBuf| -> Value {
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    };
    for kind in ["prestart", "createRuntime", "createContainer"] {
        let s = read(out.path().join(format!("{kind}.json")));
        assert_eq!(s["id"], json!(id), "{kind}");
        assert_eq!(s["pid"], json!(pid), "{kind}: the init's host pid");
        assert_eq!(s["bundle"], json!(b.path()), "{kind}");
        // The spec's lifecycle runs these hooks at steps 3-5, after the environment was
        // created (step 2 = "creating"): "created", as crun passes it (runc: "creating").
        assert_eq!(s["status"], json!("created"), "{kind}");
    }
    assert!(!out.path().join("poststart.json").exists());
    // A failing poststart hook is only a warning: start succeeds.
    oci.ok(&["start", &id]);
    // startContainer runs in the init after `start` released it: wait for it.
    let start_state = b.rootfs().join("root/startContainer.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&start_state).map_or(true, |m| m.len() == 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = read(start_state);
    assert_eq!(s["id"], json!(id));
    assert_eq!(
        s["status"],
        json!("created"),
        "startContainer: before the execve"
    );
    assert_eq!(
        read(out.path().join("poststart.json"))["status"],
        json!("running")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    oci.ok(&["delete", &id]);
    assert_eq!(
        read(out.path().join("poststop.json"))["status"],
        json!("stopped")
    );
    assert_clean(&oci, &b, &id);
}

#[test]
fn a_failing_or_hanging_hook_fails_create_and_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let cases = [
        (
            "prestart",
            json!({"path": "/bin/sh", "args": ["sh", "-c", "echo broken >&2; exit 3"]}),
            "prestart hook",
        ),
        (
            "createRuntime",
            json!({"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}),
            "timeout",
        ),
        (
            "createContainer",
            json!({"path": "/nonexistent/hook"}),
            "createContainer hook",
        ),
    ];
    for (kind, h, expect) in cases {
        let id = unique_id("badhook");
        let mut b = Bundle::sh(&id, "echo never");
        b.edit(|c| c["hooks"] = json!({ kind: [h] }));
        let started = Instant::now();
        let (ok, err, _) = oci.create(&b, &id, &[], &[]);
        assert!(!ok, "{kind}: create should fail");
        assert!(err.contains(expect), "{kind}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{kind}: hook not killed in time"
        );
        assert_clean(&oci, &b, &id);
    }
}

/// Accepts one console-socket connection, takes the pty master and reads it until the
/// container side closes; returns what the container printed.
fn console_reader(listener: UnixListener) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (master, name) = strata_container::console::accept_master(&listener).unwrap();
        assert_eq!(name, "/dev/ptmx");
        read_to_eio(master)
    })
}

/// Everything read from a pty master until EIO, which it reads once every slave fd is closed.
fn read_to_eio(master: std::os::fd::OwnedFd) -> String {
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    text(&out)
}

#[test]
fn terminal_master_goes_over_the_console_socket_for_create_and_exec() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("tty");
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let reader = console_reader(listener);
    let mut b = Bundle::sh(
        &id,
        // Alive until the exec below is done (a fixed sleep can run out on a loaded host).
        "tty; [ -t 0 ] && [ -t 1 ] && echo stdio-is-tty; \
         i=0; while [ ! -e /dev/shm/exec-done ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
    );
    b.edit(|c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["consoleSize"] = json!({"height": 30, "width": 111});
    });
    oci.create_ok(&b, &id, &["--console-socket", sock.to_str().unwrap()]);
    oci.ok(&["start", &id]);

    // exec -t into the running container, with its own socket.
    let sock2 = sockdir.path().join("exec.sock");
    let reader2 = console_reader(UnixListener::bind(&sock2).unwrap());
    oci.ok(&[
        "exec",
        "-t",
        "--console-socket",
        sock2.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "tty; stty size; touch /dev/shm/exec-done",
    ]);
    let exec_out = reader2.join().unwrap();
    assert!(exec_out.contains("/dev/pts/"), "exec -t: {exec_out}");

    let out = reader.join().unwrap();
    assert!(
        out.contains("/dev/pts/0\n"),
        "the pty is the container devpts' first: {out:?}"
    );
    assert!(out.contains("stdio-is-tty"), "{out:?}");
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);

    // terminal without a console socket cannot work for a detached container.
    let id = unique_id("tty-nosock");
    let mut b = Bundle::sh(&id, "true");
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let (ok, err, _) = oci.create(&b, &id, &[], &[]);
    assert!(!ok);
    assert!(err.contains("without setting console socket"), "{err}");
    assert_clean(&oci, &b, &id);
}

/// Like [`console_reader`], for a create that may fail: gives up after a deadline instead of
/// blocking forever when the runtime never connects, and reports a missing master as an error.
fn console_reader_until(listener: UnixListener) -> std::thread::JoinHandle<Result<String, String>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("nobody connected: {e}")),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let (master, _) =
            strata_container::console::receive_master(&stream).map_err(|e| e.to_string())?;
        Ok(read_to_eio(master))
    })
}

#[test]
fn dev_console_is_the_containers_own_pty() {
    if !root_or_skip() {
        return;
    }
    // runc binds the init's pty at /dev/console; it must be exactly the pty the engine got.
    let oci = Oci::new();
    let id = unique_id("console");
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("console.sock");
    let reader = console_reader(UnixListener::bind(&sock).unwrap());
    let mut b = Bundle::sh(
        &id,
        "stat -c console=%t:%T /dev/console; stat -L -c console=%t:%T $(tty); \
         echo through-dev-console > /dev/console",
    );
    b.edit(|c| c["process"]["terminal"] = json!(true));
    oci.create_ok(&b, &id, &["--console-socket", sock.to_str().unwrap()]);
    oci.ok(&["start", &id]);
    let out = reader.join().unwrap();
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("console=")).collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(
        lines[0], lines[1],
        "/dev/console is not the container's tty: {out:?}"
    );
    // 0x88 = 136, the first pty slave major.
    assert!(lines[0].starts_with("console=88:"), "{out:?}");
    assert!(out.contains("through-dev-console"), "{out:?}");
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}

#[test]
fn a_symlinked_dev_console_is_refused() {
    if !root_or_skip() {
        return;
    }
    // CVE-2025-52565: /dev/console in the rootfs is a symlink (no /dev tmpfs hides it), to a
    // host file, or to a procfs file the container's config makes read-only. A runtime that
    // bind-mounts the pty on the *path* /dev/console follows it: onto the host path before
    // pivot_root, or over /proc/sys/kernel/core_pattern (under the read-only /proc/sys) after
    // it. The mount target must be refused. (With a naive path mount, create succeeds for
    // core_pattern and fails with a bare ENOENT for the host path: both fail this test.)
    let oci = Oci::new();
    let host = tempfile::tempdir().unwrap();
    let host_file = host.path().join("host-file");
    std::fs::write(&host_file, "host-secret").unwrap();
    for target in ["/proc/sys/kernel/core_pattern", host_file.to_str().unwrap()] {
        let id = unique_id("console-link");
        let sock = host.path().join(format!("{id}.sock"));
        let reader = console_reader_until(UnixListener::bind(&sock).unwrap());
        let mut b = Bundle::sh(&id, "echo the-workload-ran");
        std::os::unix::fs::symlink(target, b.rootfs().join("dev/console")).unwrap();
        b.edit(|c| {
            c["process"]["terminal"] = json!(true);
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["destination"] != json!("/dev"));
        });
        let (ok, err, _) = oci.create(&b, &id, &["--console-socket", sock.to_str().unwrap()], &[]);
        if ok {
            oci.ok(&["start", &id]);
        }
        let inside = reader.join().unwrap();
        assert!(
            !ok,
            "{target}: create must refuse a symlinked /dev/console: {inside:?}"
        );
        assert!(
            err.contains("/dev/console") && err.contains("symlink"),
            "{target}: the refusal must say why: {err}"
        );
        assert_clean(&oci, &b, &id);
    }
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host-secret");
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(host.path().to_str().unwrap()),
        "a mount landed on the host path"
    );
}

/// Runs strata-oci with extra fds placed at fixed numbers (not close-on-exec), as an engine
/// or a careless parent would leave them.
fn run_with_fds(
    oci: &Oci,
    args: &[&str],
    fds: &[(i32, &std::fs::File)],
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = oci.cmd(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let pairs: Vec<(i32, i32)> = fds.iter().map(|(n, f)| (*n, f.as_raw_fd())).collect();
    // SAFETY: dup2/fcntl between fork and exec only.
    unsafe {
        cmd.pre_exec(move || {
            for (target, src) in &pairs {
                if libc::dup2(*src, *target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::fcntl(*target, libc::F_SETFD, 0);
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn only_stdio_and_preserved_fds_reach_the_workload() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let dir = tempfile::tempdir().unwrap();
    let file = |n: &str| std::fs::File::create(dir.path().join(n)).unwrap();
    let (keep, leak_a, leak_b) = (file("preserved-fd"), file("leaked-a"), file("leaked-b"));
    let id = unique_id("fds");
    let b = Bundle::sh(
        &id,
        "ls -l /proc/self/fd; echo LISTEN=$LISTEN_FDS/$LISTEN_PID",
    );
    let out = run_with_fds(
        &oci,
        &[
            "run",
            "--preserve-fds",
            "1",
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ],
        &[(3, &keep), (4, &leak_a), (9, &leak_b)],
        &[],
    );
    let listing = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        listing.contains("preserved-fd"),
        "--preserve-fds 1 keeps fd 3: {listing}"
    );
    assert!(
        !listing.contains("leaked-"),
        "an fd beyond the preserved ones leaked: {listing}"
    );
    assert!(listing.contains("LISTEN=/"), "{listing}");
    assert_clean(&oci, &b, &id);

    // Without --preserve-fds (and no LISTEN_FDS for the runtime) even fd 3 stays out.
    let id = unique_id("fds0");
    let b = Bundle::sh(&id, "ls -l /proc/self/fd");
    let out = run_with_fds(
        &oci,
        &["run", "--bundle", b.path().to_str().unwrap(), &id],
        &[(3, &keep), (4, &leak_a)],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("preserved-fd"),
        "{}",
        text(&out.stdout)
    );
    assert_clean(&oci, &b, &id);
}

#[test]
fn socket_activation_fds_are_passed_with_listen_env() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let dir = tempfile::tempdir().unwrap();
    let sockfile = std::fs::File::create(dir.path().join("activation-socket")).unwrap();
    let id = unique_id("listen");
    let b = Bundle::sh(
        &id,
        "ls -l /proc/self/fd; echo LISTEN=$LISTEN_FDS/$LISTEN_PID",
    );
    // LISTEN_PID must be the runtime's own pid: exec from a shell that sets it to $$.
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\"",
        "sh",
        oci_bin(),
        "--root",
    ])
    .arg(oci.root.path())
    .args(["run", "--bundle", b.path().to_str().unwrap(), &id])
    .stdin(Stdio::null());
    oci.track(&id);
    let src = sockfile.as_raw_fd();
    // SAFETY: dup2/fcntl between fork and exec only.
    unsafe {
        cmd.pre_exec(move || {
            libc::dup2(src, 3);
            libc::fcntl(3, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let listing = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(listing.contains("activation-socket"), "{listing}");
    assert!(listing.contains("LISTEN=1/1"), "{listing}");
    assert_clean(&oci, &b, &id);
}

#[test]
fn a_cwd_through_a_leaked_host_fd_is_refused() {
    if !root_or_skip() {
        return;
    }
    // CVE-2024-21626: an fd to a host directory is open in the runtime and process.cwd points
    // at it through /proc/self/fd. The workload would start in the host directory.
    let oci = Oci::new();
    let host = tempfile::tempdir().unwrap();
    let hostdir = std::fs::File::open(host.path()).unwrap();
    let id = unique_id("cwd");
    let mut b = Bundle::sh(&id, "touch escaped; pwd");
    b.edit(|c| c["process"]["cwd"] = json!("/proc/self/fd/7"));
    let out = run_with_fds(
        &oci,
        &["run", "--bundle", b.path().to_str().unwrap(), &id],
        &[(7, &hostdir)],
        &[],
    );
    assert!(!out.status.success(), "must refuse: {}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("outside the container"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !host.path().join("escaped").exists(),
        "the workload wrote into the host directory"
    );
    assert_clean(&oci, &b, &id);
}

#[test]
fn symlinks_in_the_rootfs_cannot_redirect_mounts_or_devices_to_the_host() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let host = tempfile::tempdir().unwrap();
    let host_dir = host.path().join("mount-target");
    std::fs::create_dir(&host_dir).unwrap();
    let host_file = host.path().join("host-file");
    std::fs::write(&host_file, "host-secret").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let id = unique_id("symlinks");
    let mut b = Bundle::sh(
        &id,
        "[ -r /proc/self/status ] && echo proc-ok; wc -c < /proc/kcore; echo x > /data/sub/probe && echo data-ok",
    );
    let rootfs = b.rootfs();
    // /proc -> a host directory (the CVE-2019-16884 class), /data -> a host directory with a
    // mount point below it to create (CVE-2021-30465 class), /dev/null -> a host file
    // (CVE-2025-31133), with no /dev tmpfs hiding it.
    std::fs::remove_dir(rootfs.join("proc")).unwrap();
    std::os::unix::fs::symlink(&host_dir, rootfs.join("proc")).unwrap();
    std::os::unix::fs::symlink(&host_dir, rootfs.join("data")).unwrap();
    std::os::unix::fs::symlink(&host_file, rootfs.join("dev/null")).unwrap();
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.retain(|m| m["destination"] != json!("/dev") && !m["destination"].as_str().unwrap().starts_with("/dev/"));
        mounts.push(json!({"destination": "/data/sub", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}));
        c["linux"]["maskedPaths"] = json!(["/proc/kcore"]);
    });
    let (code, out, err) = oci.run_container(&b, &id);
    // Either refused with a clear error, or contained inside the rootfs.
    if code == 0 {
        assert!(out.contains("proc-ok") && out.contains("data-ok"), "{out}");
        assert!(
            out.contains("\n0\n") || out.starts_with("proc-ok\n0\n"),
            "/proc/kcore is masked: {out}"
        );
    } else {
        assert!(!err.is_empty(), "a refusal must say why");
    }
    // The host paths are untouched.
    assert_eq!(
        std::fs::read_dir(&host_dir).unwrap().count(),
        0,
        "something was created in the host dir"
    );
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host-secret");
    let meta = std::fs::symlink_metadata(&host_file).unwrap();
    assert!(meta.file_type().is_file() && meta.permissions().mode() & 0o777 == 0o600);
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(host.path().to_str().unwrap()),
        "a mount landed on the host path"
    );
    assert_clean(&oci, &b, &id);
}

#[test]
fn proc_exe_of_the_runtime_in_the_container_is_a_sealed_copy() {
    if !root_or_skip() {
        return;
    }
    // CVE-2019-5736: while `create` leaves the init blocked inside the container, it is still
    // the runtime's image; a process in the container must not reach the host binary through
    // /proc/1/exe.
    let oci = Oci::new();
    let id = unique_id("exe");
    let b = Bundle::sh(&id, "true");
    // The default is the read-only bind (crates/cli/tests/oci_exe_guard.rs); this checks the
    // sealed-copy alternative.
    let (ok, err, _) = oci.create(
        &b,
        &id,
        &[],
        &[("STRATA_EXE_PROTECTION", Path::new("memfd"))],
    );
    assert!(ok, "create {id}: {err}");
    let out = oci.ok(&[
        "exec", &id, "sh", "-c",
        "readlink /proc/1/exe; (echo x >> /proc/1/exe) 2>/dev/null && echo WRITABLE || echo write-refused",
    ]);
    assert!(
        out.contains("/memfd:strata-oci"),
        "/proc/1/exe is not the sealed copy: {out}"
    );
    assert!(out.contains("write-refused"), "{out}");
    let host_bin = std::fs::canonicalize(oci_bin()).unwrap();
    assert!(!out.contains(host_bin.to_str().unwrap()), "{out}");
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}

#[test]
fn ready_from_the_container_reaches_the_notify_socket() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let dir = tempfile::tempdir().unwrap();
    let (host_sock, host) = bind_notify_socket(dir.path(), 20);
    let id = unique_id("notify");
    // The workload itself sends READY (with a STATUS line the relay drops) over the socket it
    // sees; the host gets READY=1 and the container's MAINPID from the runtime.
    let b = Bundle::sh(
        &id,
        "echo $NOTIFY_SOCKET; [ -S $NOTIFY_SOCKET ] && echo socket-ok; \
         sd-notify STATUS=up READY=1 && echo notified; sleep 5",
    );
    install_sd_notify(&b);
    let (ok, err, stdout) = oci.create(&b, &id, &[], &[("NOTIFY_SOCKET", &host_sock)]);
    assert!(ok, "{err}");
    let started = Command::new(oci_bin())
        .arg("--root")
        .arg(oci.root.path())
        .args(["start", &id])
        .env("NOTIFY_SOCKET", &host_sock)
        .output()
        .unwrap();
    assert!(started.status.success(), "{}", text(&started.stderr));
    expect_ready(&host, oci.pid(&id));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut inside = String::new();
    while !inside.contains("notified") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        inside = std::fs::read_to_string(&stdout).unwrap();
    }
    assert_eq!(inside, "/run/notify/notify.sock\nsocket-ok\nnotified\n");
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}

#[test]
fn foreground_run_with_a_terminal_relays_a_pty_to_our_own_terminal() {
    if !root_or_skip() {
        return;
    }
    // runc without --console-socket: `run` allocates the pty in the container and relays it
    // to its own stdio, in raw mode, propagating the window size and the exit code.
    let oci = Oci::new();
    let id = unique_id("fg-tty");
    let mut b = Bundle::sh(
        &id,
        "tty; stty size; read line; echo got:$line; \
         while [ \"$(stty size)\" = '30 100' ]; do sleep 0.05; done; echo resized; stty size; exit 7",
    );
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let mut cmd = Command::new(oci_bin());
    cmd.arg("--root").arg(oci.root.path()).args([
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    oci.track(&id);
    let (mut child, term) = Terminal::spawn(cmd, 30, 100);
    term.wait_for("30 100");
    // Raw mode: our terminal passes keys through; the container's pty does the line editing.
    assert!(
        !term.canonical(),
        "the runtime's terminal is not in raw mode"
    );
    term.type_in(b"hello\r");
    term.wait_for("got:hello");
    term.resize(40, 120);
    term.wait_for("40 120");
    assert_eq!(wait_exit(&mut child), 7, "{:?}", term.text());
    let out = term.text();
    assert!(
        out.contains("/dev/pts/0"),
        "the container's own devpts: {out:?}"
    );
    assert!(!out.contains("not a tty"), "{out:?}");
    assert!(term.canonical(), "the terminal mode was not restored");
    assert_clean(&oci, &b, &id);
}

/// runc's refusal of a terminal nobody could use (no console socket, detached).
const DETACHED_TTY: &str = "cannot allocate tty if runc will detach without setting console socket";

#[test]
fn foreground_exec_t_relays_a_pty_and_detached_terminals_need_a_socket() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("exec-tty");
    let b = Bundle::sh(
        &id,
        "i=0; while [ ! -e /dev/shm/exec-done ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
    );
    oci.create_ok(&b, &id, &[]);
    oci.ok(&["start", &id]);
    let mut cmd = Command::new(oci_bin());
    cmd.arg("--root").arg(oci.root.path()).args([
        "exec",
        "-t",
        &id,
        "sh",
        "-c",
        "tty; stty size; read line; echo got:$line; exit 3",
    ]);
    let (mut child, term) = Terminal::spawn(cmd, 25, 90);
    term.wait_for("25 90");
    term.type_in(b"typed\r");
    term.wait_for("got:typed");
    assert_eq!(wait_exit(&mut child), 3, "{:?}", term.text());
    assert!(term.text().contains("/dev/pts/"), "{:?}", term.text());
    assert!(term.canonical(), "the terminal mode was not restored");

    // Detached, nobody could use the terminal: runc's error, and nothing is started.
    let out = oci.run(&[
        "exec",
        "-d",
        "-t",
        &id,
        "sh",
        "-c",
        "touch /dev/shm/started",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(DETACHED_TTY),
        "{}",
        text(&out.stderr)
    );
    oci.ok(&["exec", &id, "touch", "/dev/shm/exec-done"]);
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);

    for detached in [vec!["run", "-d"], vec!["create"]] {
        let id = unique_id("tty-detached");
        let mut b = Bundle::sh(&id, "true");
        b.edit(|c| c["process"]["terminal"] = json!(true));
        let mut args = detached.clone();
        args.extend(["--bundle", b.path().to_str().unwrap(), &id]);
        let out = oci.run(&args);
        assert!(!out.status.success(), "{detached:?}");
        assert!(
            text(&out.stderr).contains(DETACHED_TTY),
            "{detached:?}: {}",
            text(&out.stderr)
        );
        assert_clean(&oci, &b, &id);
    }
}

#[test]
fn poststop_hooks_run_after_a_foreground_run_ends() {
    if !root_or_skip() {
        return;
    }
    // runc runs poststop when it destroys the container, which a foreground `run` does itself
    // once the workload exits (nobody calls `delete` afterwards).
    let oci = Oci::new();
    let out = tempfile::tempdir().unwrap();
    let id = unique_id("poststop-run");
    let mut b = Bundle::sh(&id, "exit 4");
    b.edit(|c| c["hooks"] = json!({"poststop": [hook(out.path(), "poststop")]}));
    let (code, _, err) = oci.run_container(&b, &id);
    assert_eq!(code, 4, "{err}");
    let p = out.path().join("poststop.json");
    let s: Value = serde_json::from_slice(
        &std::fs::read(&p).unwrap_or_else(|e| panic!("poststop did not run: {e}; {err}")),
    )
    .unwrap();
    assert_eq!(s["id"], json!(id));
    assert_eq!(s["status"], json!("stopped"));
    assert_eq!(s["bundle"], json!(b.path()));
    assert_clean(&oci, &b, &id);
}

/// `sd-notify` (tests/helpers/sd_notify.c, built static once per test process) in the bundle's
/// /bin: busybox has no sd_notify client, and the READY under test must come from a process in
/// the container.
fn install_sd_notify(b: &Bundle) {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let bin = BUILT.get_or_init(|| {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helpers/sd_notify.c");
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sd-notify");
        // Built under a name of this process, then renamed: test processes may race.
        let tmp = bin.with_extension(std::process::id().to_string());
        let out = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&tmp)
            .arg(src)
            .output()
            .expect("run cc (the C compiler cargo links with)");
        assert!(
            out.status.success(),
            "cc -static {src} (libc6-dev has the static libc): {}",
            text(&out.stderr)
        );
        std::fs::rename(&tmp, &bin).unwrap();
        bin
    });
    std::fs::copy(bin, b.rootfs().join("bin/sd-notify")).unwrap();
}

#[test]
fn notify_socket_works_for_run_in_the_foreground_and_detached() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let dir = tempfile::tempdir().unwrap();
    let (host_sock, host) = bind_notify_socket(dir.path(), 30);

    // Foreground: READY reaches the host socket while the workload runs, with MAINPID = the
    // runtime's pid (runc: the foreground runtime stays the process systemd watches).
    let id = unique_id("notify-run");
    let b = Bundle::sh(
        &id,
        "echo $NOTIFY_SOCKET; [ -S $NOTIFY_SOCKET ] && echo socket-ok; sd-notify READY=1; \
         i=0; while [ ! -e /dev/shm/done ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
    );
    install_sd_notify(&b);
    let mut cmd = oci.cmd(&["run", "--bundle", b.path().to_str().unwrap(), &id]);
    let stdout = dir.path().join("run.stdout");
    cmd.env("NOTIFY_SOCKET", &host_sock)
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(dir.path().join("run.stderr")).unwrap());
    let mut run = cmd.spawn().unwrap();
    expect_ready(&host, run.id());
    oci.ok(&["exec", &id, "touch", "/dev/shm/done"]);
    assert!(run.wait().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(&stdout).unwrap(),
        "/run/notify/notify.sock\nsocket-ok\n"
    );
    assert_clean(&oci, &b, &id);

    // `run -d` returns only once READY was relayed, with MAINPID = the container's pid. The
    // workload sends READY when the test creates /tmp/go in its rootfs.
    let id = unique_id("notify-run-d");
    let b = Bundle::sh(
        &id,
        "i=0; while [ ! -e /tmp/go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
         sd-notify READY=1; sleep 30",
    );
    install_sd_notify(&b);
    let mut cmd = oci.cmd(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    cmd.env("NOTIFY_SOCKET", &host_sock)
        .stdout(std::fs::File::create(dir.path().join("d.stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("d.stderr")).unwrap());
    let mut run = cmd.spawn().unwrap();
    let relay = oci.state_dir(&id).join("notify/notify.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !relay.exists() {
        assert!(Instant::now() < deadline, "the relay socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Bound, the workload running, and `run -d` still waiting for READY.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        run.try_wait().unwrap().is_none(),
        "run -d returned before READY"
    );
    std::fs::write(b.rootfs().join("tmp/go"), "").unwrap();
    assert!(run.wait().unwrap().success());
    expect_ready(&host, oci.pid(&id));
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}

/// A `strata-oci exec` held under strace; waited for on drop (the delay ends by itself).
struct HeldExec(std::process::Child);

impl Drop for HeldExec {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_exec_process_is_not_dumpable_until_it_execs_the_workload() {
    if !root_or_skip() {
        return;
    }
    let strace = Command::new("strace").arg("-V").output();
    if !strata_testkit::require(
        strace.is_ok(),
        "needs strace to hold the exec process before its execve (scripts/deps.sh)",
    ) {
        return;
    }
    // Between its fork into the container's pid namespace and execve, the process `exec`
    // starts runs the runtime's code with the runtime's fds and environment. Container
    // processes (root, same uid, no CAP_SYS_PTRACE) must not read its /proc entries then.
    // The window is made long and deterministic by strace delaying that one execve (of a
    // path only the workload uses) by seconds.
    let oci = Oci::new();
    let id = unique_id("dumpable");
    let b = Bundle::sh(
        &id,
        "i=0; while [ ! -e /dev/shm/done ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done",
    );
    let probe = b.rootfs().join("strata-probe");
    std::fs::write(&probe, "#!/bin/sh\nexit 0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    oci.create_ok(&b, &id, &[]);
    oci.ok(&["start", &id]);
    let mut held = Command::new("strace");
    held.args(["-f", "-qq", "-o", "/dev/null", "-P", "/strata-probe"])
        .args(["-e", "trace=execve", "-e", "inject=execve:delay_enter=6s"])
        .arg(oci_bin())
        .arg("--root")
        .arg(oci.root.path())
        .args(["exec", &id, "/strata-probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Declared after `oci`, so dropped first: even when an assertion fails, the held exec
    // finishes (strace releases it after the delay) before the container is deleted, or its
    // still-traced process would outlive `delete` and keep the cgroup.
    let mut held = HeldExec(held.spawn().unwrap());
    let held = &mut held.0;
    // The held process: in the container's cgroup, still running strata-oci's code.
    let deadline = Instant::now() + Duration::from_secs(20);
    let nspid = loop {
        let pids: Vec<i32> =
            serde_json::from_str(&oci.ok(&["ps", "--format", "json", &id])).unwrap();
        let found = pids.iter().find_map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).ok()?;
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let ns = status.lines().find(|l| l.starts_with("NSpid:"))?;
            // In the container's pid namespace (the intermediate, also in the cgroup for a
            // moment, is not): "NSpid: <host pid> <container pid>".
            let ids: Vec<&str> = ns.split_whitespace().skip(1).collect();
            (comm.trim() == "strata-oci" && ids.len() == 2).then(|| ids[1].to_string())
        });
        if let Some(n) = found {
            break n;
        }
        assert!(Instant::now() < deadline, "the exec process never appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    let check = format!(
        "cat /proc/{n}/comm; \
         cat /proc/{n}/environ >/dev/null 2>&1 && echo environ=readable || echo environ=denied; \
         readlink /proc/{n}/exe >/dev/null 2>&1 && echo exe=readable || echo exe=denied; \
         readlink /proc/{n}/fd/0 >/dev/null 2>&1 && echo fd=readable || echo fd=denied; \
         cat /proc/1/environ >/dev/null 2>&1 && echo control=readable || echo control=denied",
        n = nspid
    );
    let out = oci.ok(&["exec", &id, "sh", "-c", &check]);
    assert!(
        held.try_wait().unwrap().is_none(),
        "the held exec finished before the check: {out}"
    );
    // The check ran while the process still was strata-oci (its comm), and the same probe
    // reads a dumpable container process (pid 1): only non-dumpability denies it.
    assert!(out.starts_with("strata-oci\n"), "{out}");
    assert!(out.contains("control=readable"), "{out}");
    assert!(
        out.contains("environ=denied") && out.contains("exe=denied") && out.contains("fd=denied"),
        "a container process read the exec process's /proc entries: {out}"
    );
    assert!(held.wait().unwrap().success());
    oci.ok(&["exec", &id, "touch", "/dev/shm/done"]);
    oci.ok(&["delete", "--force", &id]);
    assert_clean(&oci, &b, &id);
}

/// The host's notify socket `dir/notify.sock` (what systemd would listen on), bound, with a
/// receive timeout of `secs`.
fn bind_notify_socket(dir: &Path, secs: u64) -> (PathBuf, std::os::unix::net::UnixDatagram) {
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(secs)))
        .unwrap();
    (path, sock)
}

/// The host's notify socket receives READY=1, then MAINPID=`mainpid`.
fn expect_ready(host: &std::os::unix::net::UnixDatagram, mainpid: impl std::fmt::Display) {
    let mut buf = [0u8; 128];
    let n = recv_retrying(host, &mut buf);
    assert_eq!(&buf[..n], b"READY=1\n");
    let n = recv_retrying(host, &mut buf);
    assert_eq!(text(&buf[..n]), format!("MAINPID={mainpid}\n"));
}

/// `recv` on a socket with SO_RCVTIMEO, retried when a stop and continue of the test process
/// interrupts it (such sockets return EINTR even without a signal handler, signal(7)).
fn recv_retrying(sock: &std::os::unix::net::UnixDatagram, buf: &mut [u8]) -> usize {
    loop {
        match sock.recv(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("receiving on the notify socket: {e}"),
        }
    }
}
