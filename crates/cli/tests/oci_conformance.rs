//! Runtime-spec conformance of strata-oci with configs that runc or crun accept (issue 15),
//! driven as an engine drives it: seccomp profiles of the engines (with and without
//! noNewPrivileges), failures between `start` and the workload's execve, user namespaces with
//! ID mappings, root propagation, a bundle that is its own root, FIFO devices, and configs
//! without a mount namespace. Each test checks from inside the container what the config asked
//! for, and that nothing is left behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::{json, Value};

const DOCKER_CONFIG: &str = include_str!("../../container/src/seccomp/testdata/docker-config.json");
/// containerd 1.6.20's generated default (`ctr run --seccomp`), see testdata/README.md.
const CONTAINERD_PROFILE: &str =
    include_str!("../../container/src/seccomp/testdata/containerd-1.6-seccomp.json");
/// Podman 4.3.1's profile from containers-common 0.50 (`podman run`), see testdata/README.md.
const PODMAN_PROFILE: &str =
    include_str!("../../container/src/seccomp/testdata/podman-4.3-seccomp.json");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The syscalls a default-deny profile must allow for strata's init after its filter is in
/// place (no_new_privs false: set the ids and capabilities, report ready with write(2), wait
/// for `start`, exec) and for `sh -c 'echo ...'` from busybox-static. Recorded from a run, the
/// way a profile recorded from an application is made: no close_range, no sendto.
const MINIMAL_ALLOW: &[&str] = &[
    "access",
    "arch_prctl",
    "brk",
    "capget",
    "capset",
    "clock_nanosleep",
    "close",
    "execve",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fcntl",
    "fstat",
    "futex",
    "getcwd",
    "getrandom",
    "getpid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "ioctl",
    "lseek",
    "mmap",
    "mprotect",
    "munmap",
    "nanosleep",
    "newfstatat",
    "openat",
    "pread64",
    "prlimit64",
    "prctl",
    "read",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "set_robust_list",
    "set_tid_address",
    "rseq",
    "setgroups",
    "setresgid",
    "setresuid",
    "stat",
    "statx",
    "umask",
    "uname",
    "wait4",
    "write",
    "writev",
];

/// The engines' profiles (and the minimal one) without close_range, as an older engine or a
/// recorded profile has them.
fn profiles_without_close_range() -> Vec<(&'static str, Value)> {
    let docker: Value = serde_json::from_str(DOCKER_CONFIG).unwrap();
    let mut out = vec![
        ("docker-20.10", docker["linux"]["seccomp"].clone()),
        (
            "containerd-1.6",
            serde_json::from_str(CONTAINERD_PROFILE).unwrap(),
        ),
        ("podman-4.3", serde_json::from_str(PODMAN_PROFILE).unwrap()),
        (
            "minimal",
            json!({
                "defaultAction": "SCMP_ACT_ERRNO",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": MINIMAL_ALLOW, "action": "SCMP_ACT_ALLOW"}],
            }),
        ),
    ];
    for (_, p) in &mut out {
        remove_syscall(p, "close_range");
    }
    out
}

fn remove_syscall(profile: &mut Value, name: &str) {
    for rule in profile["syscalls"].as_array_mut().unwrap() {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| n != name);
        }
    }
}

/// Runs `b` as `id` with create + start, then waits for it and returns its stdout; panics
/// with the runtime's stderr if any step fails.
fn create_start_output(oci: &Oci, b: &Bundle, id: &str) -> String {
    let out = oci.create_ok(b, id, &[]);
    oci.ok(&["start", id]);
    wait_stopped(oci, id);
    let o = std::fs::read_to_string(out).unwrap();
    oci.ok(&["delete", id]);
    o
}

fn wait_stopped(oci: &Oci, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while oci.status(id) != "stopped" {
        assert!(std::time::Instant::now() < deadline, "{id} did not stop");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn seccomp_profiles_without_close_range_run_with_and_without_no_new_privileges() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    for (name, profile) in profiles_without_close_range() {
        for nnp in [false, true] {
            let id = unique_id(&format!("sc-{name}-{nnp}"));
            let mut b = Bundle::sh(&id, "echo workload ran");
            b.edit(|c| {
                c["linux"]["seccomp"] = profile.clone();
                c["process"]["noNewPrivileges"] = json!(nnp);
            });
            let (code, out, err) = oci.run_container(&b, &id);
            assert_eq!(
                (code, out.as_str()),
                (0, "workload ran\n"),
                "run, {name} profile, noNewPrivileges {nnp}: {err}"
            );
            assert_clean(&oci, &b, &id);
            let out = create_start_output(&oci, &b, &id);
            assert_eq!(
                out, "workload ran\n",
                "create+start, {name} profile, noNewPrivileges {nnp}"
            );
            assert_clean(&oci, &b, &id);
            // `exec` applies the container's filter the same way.
            b.edit(|c| c["process"]["args"] = json!(["sleep", "60"]));
            oci.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
            let o = oci.run(&["exec", &id, "sh", "-c", "echo exec ran"]);
            assert_eq!(
                (o.status.code(), text(&o.stdout).as_str()),
                (Some(0), "exec ran\n"),
                "exec, {name} profile, noNewPrivileges {nnp}: {}",
                text(&o.stderr)
            );
            oci.ok(&["delete", "--force", &id]);
            assert_clean(&oci, &b, &id);
        }
    }
}

#[test]
fn a_failure_after_start_released_the_init_fails_start_and_run_with_its_cause() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    // Docker's profile without execve: the init's filter is in place (no_new_privs false)
    // and the workload's execve is refused, after `start` released the init.
    let mut profile =
        serde_json::from_str::<Value>(DOCKER_CONFIG).unwrap()["linux"]["seccomp"].clone();
    remove_syscall(&mut profile, "execve");
    let id = unique_id("late");
    let mut b = Bundle::sh(&id, "echo must not run");
    b.edit(|c| {
        c["linux"]["seccomp"] = profile.clone();
        c["process"]["noNewPrivileges"] = json!(false);
    });
    let out = oci.create_ok(&b, &id, &[]);
    let o = oci.run(&["start", &id]);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "start must fail: {err}");
    assert!(
        err.contains("exec") && err.contains("Operation not permitted"),
        "start must say why: {err}"
    );
    // `state` shows the container stopped, and why.
    let st: Value = serde_json::from_str(&oci.ok(&["state", &id])).unwrap();
    assert_eq!(st["status"], "stopped", "{st}");
    assert!(
        st["error"]
            .as_str()
            .is_some_and(|e| e.contains("Operation not permitted")),
        "{st}"
    );
    assert_eq!(std::fs::read_to_string(out).unwrap(), "");
    oci.ok(&["delete", &id]);
    assert_clean(&oci, &b, &id);

    // `run`: the same failure is the run's error, not a workload that exited 1.
    let (code, out, err) = oci.run_container(&b, &id);
    assert_ne!(code, 0);
    assert_eq!(out, "");
    assert!(
        err.contains("exec") && err.contains("Operation not permitted"),
        "run must say why: {err}"
    );
    assert_clean(&oci, &b, &id);

    // An init a profile kills before it could say anything: its wait status is the cause.
    let id = unique_id("killed");
    let mut b = Bundle::sh(&id, "echo must not run");
    let mut profile =
        serde_json::from_str::<Value>(DOCKER_CONFIG).unwrap()["linux"]["seccomp"].clone();
    for name in ["write", "sendto"] {
        remove_syscall(&mut profile, name);
    }
    profile["syscalls"]
        .as_array_mut()
        .unwrap()
        .push(json!({"names": ["write", "sendto"], "action": "SCMP_ACT_KILL_PROCESS"}));
    b.edit(|c| {
        c["linux"]["seccomp"] = profile.clone();
        c["process"]["noNewPrivileges"] = json!(false);
    });
    let (code, _, err) = oci.run_container(&b, &id);
    assert_ne!(code, 0);
    assert!(
        err.contains("SIGSYS") && err.contains("linux.seccomp"),
        "{err}"
    );
    assert_clean(&oci, &b, &id);

    // A failing startContainer hook (it runs after `start` released the init) fails start too.
    let id = unique_id("late-hook");
    let mut b = Bundle::sh(&id, "echo must not run");
    b.edit(|c| {
        c["hooks"] = json!({"startContainer": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo hook-says-no >&2; exit 3"]}
        ]});
    });
    oci.create_ok(&b, &id, &[]);
    let o = oci.run(&["start", &id]);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "start must fail: {err}");
    assert!(err.contains("hook-says-no"), "{err}");
    oci.ok(&["delete", &id]);
    assert_clean(&oci, &b, &id);
}

#[test]
fn a_missing_or_non_executable_program_fails_create_and_run_like_runc() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("noexec");
    let mut b = Bundle::new(&id, &["/nonexistent"]);
    let want = "exec: \"/nonexistent\": stat /nonexistent: No such file or directory";
    let (code, out, err) = oci.run_container(&b, &id);
    assert_ne!(code, 0);
    assert!(out.is_empty() && err.contains(want), "{err}");
    assert_clean(&oci, &b, &id);
    let (ok, err, _) = oci.create(&b, &id, &[], &[]);
    assert!(!ok && err.contains(want), "{err}");
    assert_clean(&oci, &b, &id);
    b.edit(|c| c["process"]["args"] = json!(["/etc/passwd"]));
    let (code, _, err) = oci.run_container(&b, &id);
    assert_ne!(code, 0);
    assert!(
        err.contains("exec: \"/etc/passwd\"") && err.contains("Permission denied"),
        "{err}"
    );
    assert_clean(&oci, &b, &id);
}

/// A bundle in a fresh 0700 temp dir (as engines make them) whose rootfs belongs to the
/// mapped root, with a user namespace mapping container 0 to host 1000.
fn userns_bundle(id: &str, script: &str) -> Bundle {
    let mut b = Bundle::sh(id, script);
    std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let st = Command::new("chown")
        .args(["-R", "-h", "1000:1000"])
        .arg(b.rootfs())
        .status()
        .unwrap();
    assert!(st.success());
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
        // gid 5 (tty) is not mapped: devpts refuses it.
        for m in c["mounts"].as_array_mut().unwrap() {
            if let Some(o) = m["options"].as_array_mut() {
                o.retain(|o| !o.as_str().unwrap_or_default().starts_with("gid="));
            }
        }
    });
    b
}

const USERNS_PROBE: &str = "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map";

fn assert_mapped(out: &str) {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "0", "0", "1000", "1", "0", "1000", "1"],
        "ids and maps inside: {out}"
    );
}

/// A process in a new user namespace mapping 0 to host 1000 (written by us), for a config
/// that joins it by path. Killed on drop.
struct UsernsHolder(Child);

impl UsernsHolder {
    fn new() -> UsernsHolder {
        let child = Command::new("unshare")
            .args(["--user", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let ns = format!("/proc/{pid}/ns/user");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(&ns).ok() == std::fs::read_link("/proc/self/ns/user").ok() {
            assert!(std::time::Instant::now() < deadline, "unshare --user");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::fs::write(format!("/proc/{pid}/uid_map"), "0 1000 1\n").unwrap();
        std::fs::write(format!("/proc/{pid}/gid_map"), "0 1000 1\n").unwrap();
        UsernsHolder(child)
    }

    fn ns_path(&self) -> String {
        format!("/proc/{}/ns/user", self.0.id())
    }
}

impl Drop for UsernsHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn user_namespace_with_id_mappings_new_or_joined_by_path() {
    if !root_or_skip() {
        return;
    }
    // The state root is 0700 too (the default --root is).
    let oci = Oci::new();
    std::fs::set_permissions(oci.root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let id = unique_id("userns");
    let b = userns_bundle(&id, USERNS_PROBE);
    let (code, out, err) = oci.run_container(&b, &id);
    assert_eq!(code, 0, "run: {err}");
    assert_mapped(&out);
    assert_clean(&oci, &b, &id);
    assert_mapped(&create_start_output(&oci, &b, &id));
    assert_clean(&oci, &b, &id);

    // Joined by path: the namespace (and its maps) exist before create.
    let holder = UsernsHolder::new();
    let id = unique_id("userns-path");
    let mut b = userns_bundle(&id, USERNS_PROBE);
    b.edit(|c| {
        for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "user" {
                ns["path"] = json!(holder.ns_path());
            }
        }
    });
    let (code, out, err) = oci.run_container(&b, &id);
    assert_eq!(code, 0, "run: {err}");
    assert_mapped(&out);
    assert_clean(&oci, &b, &id);
    assert_mapped(&create_start_output(&oci, &b, &id));
    assert_clean(&oci, &b, &id);
}

/// The optional fields of the mount at `mount_point` in a mountinfo text ("shared:N",
/// "master:N", "unbindable"...).
fn propagation_of(mountinfo: &str, mount_point: &str) -> Vec<String> {
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(mount_point))
        .map(|l| {
            l.split(' ')
                .skip(6)
                .take_while(|f| *f != "-")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_else(|| panic!("no {mount_point} in {mountinfo}"))
}

/// Moves the rootfs's files into the bundle directory itself (0700, as engines make their
/// temp dirs) and sets root.path ".".
fn make_bundle_its_own_root(b: &mut Bundle) {
    std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(b.rootfs()).unwrap().flatten() {
        std::fs::rename(e.path(), b.path().join(e.file_name())).unwrap();
    }
    std::fs::remove_dir(b.rootfs()).unwrap();
    b.edit(|c| c["root"]["path"] = json!("."));
}

#[test]
fn every_root_propagation_mode_with_a_rootfs_dir_or_the_bundle_as_root() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for own_root in [false, true] {
        for mode in [
            "private",
            "rprivate",
            "slave",
            "rslave",
            "shared",
            "rshared",
            "unbindable",
            "runbindable",
        ] {
            let id = unique_id(&format!("prop-{mode}"));
            let mut b = Bundle::sh(&id, "cat /proc/self/mountinfo");
            if own_root {
                make_bundle_its_own_root(&mut b);
            }
            b.edit(|c| c["linux"]["rootfsPropagation"] = json!(mode));
            let (code, out, err) = oci.run_container(&b, &id);
            assert_eq!(code, 0, "{mode}, own root {own_root}: {err}");
            if own_root {
                // As an engine runs it: create, then start.
                // The kinds (shared, master, unbindable), not the peer group numbers.
                let kinds = |v: Vec<String>| -> Vec<String> {
                    v.iter()
                        .map(|f| f.split(':').next().unwrap().to_string())
                        .collect()
                };
                assert_eq!(
                    kinds(propagation_of(&create_start_output(&oci, &b, &id), "/")),
                    kinds(propagation_of(&out, "/")),
                    "{mode}: create+start and run differ"
                );
            }
            let root = propagation_of(&out, "/");
            let proc = propagation_of(&out, "/proc");
            let has = |v: &[String], p: &str| v.iter().any(|f| f.starts_with(p));
            let what = format!("{mode} (own root {own_root}): / {root:?}, /proc {proc:?}");
            match mode {
                "shared" | "rshared" => assert!(has(&root, "shared:"), "{what}"),
                "unbindable" | "runbindable" => assert!(has(&root, "unbindable"), "{what}"),
                "private" | "rprivate" => assert!(root.is_empty(), "{what}"),
                _ => assert!(!has(&root, "shared:"), "{what}"),
            }
            match mode {
                "rshared" => assert!(has(&proc, "shared:"), "{what}"),
                "runbindable" => assert!(has(&proc, "unbindable"), "{what}"),
                "rprivate" => assert!(proc.is_empty(), "{what}"),
                _ => {}
            }
            // Nothing of the container reached the host's mount table.
            let now = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(!now.contains(b.path().to_str().unwrap()), "{what}");
            assert_eq!(
                host_mounts
                    .lines()
                    .find(|l| l.split(' ').nth(4) == Some("/")),
                now.lines().find(|l| l.split(' ').nth(4) == Some("/")),
                "the host's / changed ({what})"
            );
            if own_root {
                assert!(!oci.state_dir(&id).exists(), "{what}");
            } else {
                assert_clean(&oci, &b, &id);
            }
        }
    }
}

#[test]
fn config_updates_after_create_do_not_affect_the_container() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let marks = tempfile::tempdir().unwrap();
    let hook = |name: &str| {
        json!({"path": "/bin/sh", "args": ["sh", "-c",
            format!("cat > {}/{name}", marks.path().display())]})
    };
    let id = unique_id("update");
    let mut b = Bundle::sh(&id, "echo created-config");
    make_bundle_its_own_root(&mut b);
    b.edit(|c| {
        c["hooks"] = json!({"poststart": [hook("poststart-created")],
                            "poststop": [hook("poststop-created")]});
    });
    let out = oci.create_ok(&b, &id, &[]);
    // The engine rewrites config.json after create: nothing of it may take effect.
    b.edit(|c| {
        c["process"]["args"] = json!(["sh", "-c", "echo updated-config"]);
        c["root"]["path"] = json!("/nonexistent");
        c["hooks"] = json!({"poststart": [hook("poststart-updated")],
                            "poststop": [hook("poststop-updated")]});
    });
    oci.ok(&["start", &id]);
    wait_stopped(&oci, &id);
    oci.ok(&["delete", &id]);
    assert_eq!(std::fs::read_to_string(out).unwrap(), "created-config\n");
    for (name, want) in [
        ("poststart-created", true),
        ("poststop-created", true),
        ("poststart-updated", false),
        ("poststop-updated", false),
    ] {
        assert_eq!(marks.path().join(name).exists(), want, "{name}");
    }
    assert!(!oci.state_dir(&id).exists());
}

#[test]
fn fifo_devices_are_created_without_a_device_cgroup_rule() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let fifo = json!([{"path": "/dev/strata-fifo", "type": "p", "fileMode": 0o640,
                       "uid": 0, "gid": 0}]);
    let probe = "test -p /dev/strata-fifo && stat -c '%a %u' /dev/strata-fifo";
    let id = unique_id("fifo");
    let mut b = Bundle::sh(&id, probe);
    b.edit(|c| c["linux"]["devices"] = fifo.clone());
    assert_eq!(oci.output_of(&b, &id), "640 0\n");
    assert_clean(&oci, &b, &id);
    // In a user namespace too (a FIFO needs no privilege, so it is made, not bound).
    let id = unique_id("fifo-userns");
    let mut b = userns_bundle(&id, probe);
    b.edit(|c| c["linux"]["devices"] = fifo.clone());
    assert_eq!(oci.output_of(&b, &id), "640 0\n");
    assert_clean(&oci, &b, &id);
}

#[test]
fn a_config_without_a_mount_namespace_is_refused_naming_the_field() {
    if !root_or_skip() {
        return;
    }
    let oci = Oci::new();
    let id = unique_id("nomnt");
    let mut b = Bundle::sh(&id, "echo must not run");
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "mount");
    });
    let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for cmd in ["run", "create"] {
        let o = oci.run(&[cmd, "--bundle", b.path().to_str().unwrap(), &id]);
        let err = text(&o.stderr);
        assert!(!o.status.success());
        assert!(text(&o.stdout).is_empty(), "{cmd}");
        assert!(
            err.contains("linux.namespaces")
                && err.contains("\"mount\"")
                && err.contains("host's mount namespace"),
            "{cmd}: {err}"
        );
        assert_clean(&oci, &b, &id);
    }
    assert_eq!(
        before.lines().count(),
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .count(),
        "the host's mount table changed"
    );
}
