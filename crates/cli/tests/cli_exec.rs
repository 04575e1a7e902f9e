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
