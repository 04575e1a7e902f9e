//! Running an image that came from an oci-archive made by umoci and skopeo, not the built-in one.

mod cli_common;

use std::process::Command;

use cli_common::Sandbox;

fn run_tool(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn oci_archive_image(iso: &str) {
    let s = Sandbox::new(iso);
    let inspect: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", "busybox"])).unwrap();
    let layer = inspect[0]["LayerDirs"][0].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let lay = dir.path().join("layout");
    let lay = lay.to_str().unwrap();
    let img = format!("{lay}:t");
    run_tool("umoci", &["init", "--layout", lay]);
    run_tool("umoci", &["new", "--image", &img]);
    // One layer: the busybox tree plus a file of our own.
    let tree = dir.path().join("tree");
    run_tool("cp", &["-a", &layer, tree.to_str().unwrap()]);
    std::fs::write(tree.join("etc/marker"), "from the archive\n").unwrap();
    run_tool(
        "umoci",
        &[
            "insert",
            "--image",
            &img,
            &format!("{}/", tree.display()),
            "/",
        ],
    );
    run_tool(
        "umoci",
        &[
            "config",
            "--image",
            &img,
            "--config.entrypoint",
            "/bin/sh",
            "--config.cmd",
            "-c",
            "--config.cmd",
            "echo from-entrypoint; id -un",
            "--config.user",
            "user",
            "--config.workingdir",
            "/home",
            "--config.env",
            "GREETING=hi",
        ],
    );
    let archive = dir.path().join("img.tar");
    let archive = archive.to_str().unwrap();
    run_tool(
        "skopeo",
        &[
            "copy",
            "-q",
            &format!("oci:{img}"),
            &format!("oci-archive:{archive}:test/app:1"),
        ],
    );
    s.ok(&["load", "-i", archive]);
    // The image's entrypoint, cmd, user, workdir and env apply.
    assert_eq!(
        s.ok(&["run", "--rm", "test/app:1"]),
        "from-entrypoint\nuser\n"
    );
    assert_eq!(
        s.ok(&[
            "run",
            "--rm",
            "test/app:1",
            "-c",
            "echo $GREETING; pwd; cat /etc/marker"
        ]),
        "hi\n/home\nfrom the archive\n"
    );
    assert_eq!(
        s.ok(&[
            "run",
            "--rm",
            "-u",
            "root",
            "--entrypoint",
            "id",
            "test/app:1",
            "-u"
        ]),
        "0\n"
    );
    s.assert_nothing_left(&[]);
}

isolation_tests!(oci_archive_image);
