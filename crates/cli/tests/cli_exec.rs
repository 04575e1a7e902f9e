//! `strata exec` in a running container.

mod cli_common;

use cli_common::{text, Sandbox};

fn exec(iso: &str) {
    let s = Sandbox::new(iso);
    s.ok(&[
        "run",
        "-d",
        "--name",
        "e",
        "-e",
        "FROM_RUN=1",
        "busybox",
        "sleep",
        "1000",
    ]);
    s.eventually(10, "running", || s.inspect("e")["State"]["Running"] == true);
    assert_eq!(s.ok(&["exec", "e", "sh", "-c", "echo $FROM_RUN"]), "1\n");
    assert_eq!(
        s.ok(&[
            "exec",
            "-e",
            "X=2",
            "-w",
            "/etc",
            "e",
            "sh",
            "-c",
            "echo $X; pwd"
        ]),
        "2\n/etc\n"
    );
    assert_eq!(s.ok(&["exec", "-u", "user", "e", "id", "-un"]), "user\n");
    assert_eq!(
        s.ok(&["exec", "-u", "33:44", "e", "sh", "-c", "id -u; id -g"]),
        "33\n44\n"
    );
    assert_eq!(
        s.strata(&["exec", "e", "sh", "-c", "exit 5"]).status.code(),
        Some(5)
    );
    assert_eq!(
        s.strata(&["exec", "e", "no-such-cmd"]).status.code(),
        Some(127)
    );
    assert_eq!(
        s.strata(&["exec", "e", "/etc/passwd"]).status.code(),
        Some(126)
    );
    let o = s.strata_in(
        &["exec", "-i", "e", "sh", "-c", "cat; echo e >&2"],
        Some(b"in\n"),
    );
    assert_eq!(text(&o.stdout), "in\n");
    assert_eq!(text(&o.stderr), "e\n");
    // Without -i the process's stdin is at its end from the start.
    assert_eq!(s.ok(&["exec", "e", "sh", "-c", "cat; echo eof"]), "eof\n");
    // exec shares the container's filesystem and pid namespace.
    s.ok(&["exec", "e", "sh", "-c", "echo shared > /tmp/f"]);
    assert_eq!(s.ok(&["exec", "e", "cat", "/tmp/f"]), "shared\n");
    assert!(s.ok(&["exec", "e", "ps"]).contains("sleep 1000"));
    s.ok(&["kill", "e"]);
    s.ok(&["wait", "e"]);
    let (_, err) = s.fails(&["exec", "e", "true"]);
    assert!(err.contains("not running"), "{err}");
    let (_, err) = s.fails(&["exec", "nosuch", "true"]);
    assert!(err.contains("no such container"), "{err}");
    s.ok(&["rm", "e"]);
    s.assert_nothing_left(&[]);
}

isolation_tests!(exec);

/// Pids handed out so far in the pid namespace of the VM's jail (every UML address space is a
/// host process there): read from inside it, so the reading `cat` takes one pid too.
fn jail_last_pid(keeper: i32) -> i64 {
    let child = jail_init(keeper);
    let o = std::process::Command::new("nsenter")
        .arg(format!("--pid=/proc/{child}/ns/pid"))
        .args(["--", "cat", "/proc/sys/kernel/ns_last_pid"])
        .output()
        .unwrap();
    assert!(o.status.success(), "nsenter: {}", text(&o.stderr));
    text(&o.stdout).trim().parse().unwrap()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The VM keeper's jailed child: pid 1 of the jail's pid namespace.
fn jail_init(keeper: i32) -> i32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| {
            parent_of(pid) == Some(keeper)
                && std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.starts_with("NSpid:") && l.split_whitespace().count() == 3)
        })
        .expect("the keeper's jailed child (pid 1 of the jail's pid namespace)")
}

/// `Cpus_allowed_list` of every thread of every process under `top` (itself included).
fn cpu_lists_under(top: i32) -> Vec<(i32, String)> {
    let pids: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect();
    let under = |mut p: i32| loop {
        if p == top {
            return true;
        }
        match parent_of(p) {
            Some(q) if q > 1 => p = q,
            _ => return false,
        }
    };
    let mut out = Vec::new();
    for &pid in pids.iter().filter(|&&p| under(p)) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            if let Some(l) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
                let tid = t.file_name().to_str().unwrap().parse().unwrap();
                out.push((tid, l.split_whitespace().nth(1).unwrap_or("").to_string()));
            }
        }
    }
    out
}

/// A UML guest's kernel and user space are host processes that hand over to each other at
/// every guest system call and page fault: all of them (kernel, helper threads, one process per
/// guest address space) run on one host CPU, so no hand-over is a cross-CPU wake-up.
#[test]
fn a_uml_vm_runs_all_its_host_processes_on_one_cpu() {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let s = Sandbox::new("vm");
    s.ok(&["run", "-d", "--name", "c", "busybox", "sleep", "1000"]);
    s.eventually(10, "running", || s.inspect("c")["State"]["Running"] == true);
    assert_eq!(s.inspect("c")["Vm"]["Platform"], "uml");
    let keeper = s.inspect("c")["State"]["Pid"].as_i64().unwrap() as i32;
    let lists = cpu_lists_under(jail_init(keeper));
    // The jail's init, the kernel, its helper threads, the host processes of the guest's init
    // (the agent) and of `sleep`.
    assert!(lists.len() >= 5, "{lists:?}");
    let first = &lists[0].1;
    for (tid, l) in &lists {
        assert_eq!(
            l, first,
            "thread {tid} of the VM may run on {l}, others on {first}"
        );
    }
    if online > 1 {
        assert!(
            first.parse::<usize>().is_ok(),
            "the VM's host processes may run on CPUs {first}: expected one CPU"
        );
    }
    s.ok(&["rm", "-f", "c"]);
    s.assert_nothing_left(&[]);
}

/// A program found through $PATH is executed once, where it is: the misses before it are not
/// execve'd. In a UML guest each execve makes an address space, i.e. a host process, before it
/// looks the file up, so `true` under Docker's default PATH used to make six of them (five
/// killed at once) instead of one.
#[test]
fn an_exec_into_a_uml_vm_makes_one_address_space_for_a_program_found_in_path() {
    let s = Sandbox::new("vm");
    s.ok(&["run", "-d", "--name", "p", "busybox", "sleep", "1000"]);
    s.eventually(10, "running", || s.inspect("p")["State"]["Running"] == true);
    assert_eq!(s.inspect("p")["Vm"]["Platform"], "uml");
    let keeper = s.inspect("p")["State"]["Pid"].as_i64().unwrap() as i32;
    for cmd in ["true", "/bin/true"] {
        let before = jail_last_pid(keeper);
        s.ok(&["exec", "p", cmd]);
        let made = jail_last_pid(keeper) - before;
        // One for the program's address space, one for the second `cat`.
        assert_eq!(
            made, 2,
            "`exec p {cmd}` made {made} pids in the jail, expected 2"
        );
    }
    // The search still finds what is there and reports what is not.
    assert_eq!(
        s.ok(&["exec", "p", "sh", "-c", "echo $PATH"]).trim(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(
        s.strata(&["exec", "p", "no-such-cmd"]).status.code(),
        Some(127)
    );
    s.ok(&["rm", "-f", "p"]);
    s.assert_nothing_left(&[]);
}
